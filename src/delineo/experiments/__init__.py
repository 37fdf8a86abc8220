"""Studies built on the training loop: the noisy-label benchmark (``benchmark.py``, ``delineo
noise-benchmark``), the label audit (``audit.py``, ``delineo audit``) and the recipe ablation
(``ablation.py``, ``delineo ablation``). They sit above :mod:`delineo.training` (which never imports
them) and write their results under ``benchmarks/results/``."""
