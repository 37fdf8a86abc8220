"""Sample-weighting strategies that plug into the one training loop.

A strategy sees the batch and the per-sample losses and returns weights ``(B,)`` (they sum to 1,
or to less when a strategy discounts a whole batch); the loop minimises ``sum_i w_i * L_i``. A
strategy may have parameters of its own (e.g. a quality-awareness network); they are trained by
the same optimiser and loss. A strategy that remembers each training sample across epochs sets
``tracks_samples``: the loop then calls :meth:`SampleWeighting.bind` with the size of the training
set and passes each batch's sample indices. A strategy that judges each training label by the
network's own prediction answers :meth:`SampleWeighting.wants_scores`: before such an epoch the
loop scores every training sample (agreement of the prediction with the given label per structure,
without augmentation, by the strategy's :attr:`SampleWeighting.agreement_measure`) and hands the
scores to :meth:`SampleWeighting.set_scores`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
from torch import nn

from delineo.errors import ConfigError


class SampleWeighting(nn.Module):
    """Base class. Subclasses implement :meth:`forward`."""

    #: smallest batch the strategy can weight (batch-softmax strategies need 2)
    min_batch_size = 1
    #: True: the loop calls :meth:`bind` and passes ``index=`` (the samples' positions in the training set)
    tracks_samples = False
    #: for :meth:`set_scores`: the measure of agreement (``delineo.metrics.segmentation.AGREEMENT_MEASURES``:
    #: ``dice``, ``soft_dice``, ``surface``)
    agreement_measure = "dice"

    def bind(self, n_samples: int) -> None:
        """Size per-sample state for a training set of ``n_samples`` (called before a checkpoint is loaded)."""

    def wants_scores(self, epoch: int) -> bool:
        """Whether the loop should score every training sample before ``epoch`` (0-based)."""
        return False

    def set_scores(self, scores: torch.Tensor, present: torch.Tensor, epoch: int) -> None:
        """Agreement of every training sample with its label, computed before ``epoch``: ``scores``
        ``(N, C)`` of the prediction vs the given label per structure (higher: closer), ``present``
        ``(N, C)`` bool (the structure is contoured)."""

    def record(self, cases: list[str]) -> dict[str, Any] | None:
        """What the strategy decided about the training samples (``cases``: their ids in index
        order), for the model card; None when there is nothing to say."""
        return None

    def forward(self, image: torch.Tensor, label: torch.Tensor, present: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """image ``(B, 1, *sp)``, label ``(B, C, *sp)`` as given (possibly noisy), present ``(B, C)``,
        per-sample loss ``(B,)`` -> weights ``(B,)`` summing to 1 (at most 1). Strategies with
        ``tracks_samples`` also take ``index`` ``(B,)`` (long)."""
        raise NotImplementedError


class UniformWeighting(SampleWeighting):
    """Plain training: every sample weighs 1/B (the mean loss)."""

    def forward(self, image, label, present, loss):
        return torch.full_like(loss, 1.0 / loss.shape[0])


_STRATEGIES: dict[str, Callable[..., SampleWeighting]] = {"uniform": UniformWeighting}

#: strategies defined in modules imported on first use: kind -> (module, class name)
_LAZY: dict[str, tuple[str, str]] = {
    "qam": ("delineo.training.qam", "QualityAwareWeighting"),
    "qam_ocm": ("delineo.training.qam", "QualityAwareWeighting"),
    "small_loss": ("delineo.training.robust_losses", "SmallLossWeighting"),
    "loss_gmm": ("delineo.training.robust_losses", "LossMixtureWeighting"),
    "agreement": ("delineo.training.robust_losses", "AgreementSelection"),
}


def register_weighting(name: str, factory: Callable[..., SampleWeighting]) -> None:
    """Make a strategy available to configs as ``weighting: {kind: name, ...}``."""
    _STRATEGIES[name] = factory


def build_weighting(spec: dict[str, Any] | None, *, in_channels: int, n_structures: int, spatial_dims: int) -> SampleWeighting:
    """Build from a config block ``{"kind": ..., **options}`` (None -> uniform)."""
    spec = dict(spec or {"kind": "uniform"})
    kind = spec.pop("kind", "uniform")
    if kind not in _STRATEGIES and kind in _LAZY:  # importing the module registers it
        module, name = _LAZY[kind]
        _STRATEGIES.setdefault(kind, getattr(importlib.import_module(module), name))
    if kind not in _STRATEGIES:
        raise ConfigError(f"unknown weighting {kind!r} (available: {', '.join(sorted(set(_STRATEGIES) | set(_LAZY)))})")
    factory = _STRATEGIES[kind]
    if kind == "uniform":
        return factory(**spec)
    try:
        return factory(in_channels=in_channels, n_structures=n_structures, spatial_dims=spatial_dims, **spec)
    except TypeError as exc:  # an unknown or missing option
        raise ConfigError(f"weighting {kind!r}: {exc}") from exc
