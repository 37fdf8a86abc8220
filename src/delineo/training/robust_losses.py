"""Published noise-robust baselines for training on noisy labels, usable in the one training loop.

Losses (``training.loss``; computed per structure ``(B, C)``; :class:`SegmentationLoss` averages
them over the structures present in each sample, so unknown structures are ignored):

- ``nr_dice``: noise-robust Dice loss (Wang et al. 2020), :func:`noise_robust_dice`.
- ``gce``: generalised cross-entropy (Zhang & Sabuncu 2018), :func:`generalized_cross_entropy`;
  ``dice_gce`` adds the soft Dice loss (as ``dice_bce`` does with BCE).

Sample weighting (``training.weighting: {kind: small_loss, ...}``):

- :class:`SmallLossWeighting`: small-loss sample selection, the selection rule of Co-teaching
  (Han et al. 2018), here with a single network.
- :class:`LossMixtureWeighting` (``kind: loss_gmm``): a two-component Gaussian mixture on every
  training sample's remembered loss gives its probability of a clean label, the label-division
  step of DivideMix (Li, Socher & Hoi 2020), here with a single network and without MixMatch.
- :class:`AgreementSelection` (``kind: agreement``): after a warm-up, keep only the training labels
  the network's own prediction agrees with (the audit's score, split by a mixture) and continue
  training on those: confident-learning-style pruning (Northcutt et al. 2021) within one run.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from delineo.errors import ConfigError
from delineo.training.weighting import SampleWeighting, register_weighting


def noise_robust_dice(probs: torch.Tensor, target: torch.Tensor, gamma: float = 1.5, eps: float = 1e-5) -> torch.Tensor:
    """Noise-robust Dice loss, per sample and structure.

    Wang, Liu, Li, Chen, Vercauteren, Ourselin, Zhang et al.: "A Noise-Robust Framework for
    Automatic Segmentation of COVID-19 Pneumonia Lesions From CT Images", IEEE TMI 39(8), 2020:
    ``L = sum |p - g|^gamma / (sum p^2 + sum g^2 + eps)`` with ``gamma`` in [1, 2] (1.5 in the
    paper): between Dice (gamma = 2) and a mean-absolute-error-like loss (gamma = 1), which is
    robust to label noise. probs (sigmoid outputs), target: ``(B, C, *sp)`` -> ``(B, C)``; 0 when
    the prediction equals the target.
    """
    p = probs.float().flatten(2)
    g = target.float().flatten(2)
    num = (p - g).abs().pow(gamma).sum(2)
    return num / (p.pow(2).sum(2) + g.pow(2).sum(2) + eps)


def generalized_cross_entropy(logits: torch.Tensor, target: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Generalised cross-entropy (binary, per voxel), averaged over voxels.

    Zhang & Sabuncu: "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy
    Labels", NeurIPS 2018: ``L = (1 - p_t^q) / q`` with ``p_t`` the probability of the labelled
    class; q -> 0 gives cross-entropy, q = 1 the (noise-robust) mean absolute error; 0.7 in the
    paper. logits, target: ``(B, C, *sp)`` -> ``(B, C)``.
    """
    x = logits.float()
    sign = target.float() * 2 - 1
    p_t_q = torch.exp(q * F.logsigmoid(sign * x))  # p_t^q, stable for large |logits|
    return ((1 - p_t_q) / q).flatten(2).mean(2)


def lower_component_probability(x: np.ndarray) -> np.ndarray | None:
    """Posterior of the lower-mean component of a two-component 1D Gaussian mixture fitted to ``x``
    ``(N,)`` (min-max normalised first, as in DivideMix); None when ``x`` has fewer than 4 values or
    no spread. For losses this is the clean-label probability; for agreement, pass ``-agreement``."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, dtype=np.float64)
    if x.size < 4 or float(x.max() - x.min()) < 1e-12:
        return None
    x = ((x - x.min()) / (x.max() - x.min()))[:, None]
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0).fit(x)
    return gmm.predict_proba(x)[:, int(np.argmin(gmm.means_[:, 0]))]


class SmallLossWeighting(SampleWeighting):
    """Small-loss sample selection: weight ``1/k`` on the ``k`` samples of the batch with the smallest
    loss, 0 on the others (gradients flow only through the kept samples' losses).

    Han, Yao, Yu, Niu, Xu, Hu, Tsang, Sugiyama: "Co-teaching: Robust Training of Deep Neural
    Networks with Extremely Noisy Labels", NeurIPS 2018. As there, the fraction dropped grows
    linearly from 0 to ``forget_rate`` over the first ``warmup_steps`` training steps (networks fit
    clean labels before noisy ones); ``k = max(1, round((1 - rate) * B))``. This is the single-network
    variant (each network selects its own samples) rather than the two-network exchange.

    loss ``(B,)`` -> weights ``(B,)``; the step counter is a buffer, so it is checkpointed.
    """

    min_batch_size = 2

    def __init__(self, in_channels: int, n_structures: int, spatial_dims: int, forget_rate: float = 0.25, warmup_steps: int = 500):
        super().__init__()
        if not 0 <= float(forget_rate) < 1:
            raise ConfigError(f"small_loss: forget_rate must be in [0, 1), got {forget_rate}")
        if int(warmup_steps) < 0:
            raise ConfigError(f"small_loss: warmup_steps must be >= 0, got {warmup_steps}")
        self.forget_rate = float(forget_rate)
        self.warmup_steps = int(warmup_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def current_rate(self) -> float:
        """Fraction of each batch dropped at the current step."""
        if self.warmup_steps == 0:
            return self.forget_rate
        return self.forget_rate * min(1.0, int(self.step) / self.warmup_steps)

    def forward(self, image, label, present, loss):
        b = loss.shape[0]
        k = max(1, min(b, int(math.floor((1 - self.current_rate()) * b + 0.5))))
        if self.training:
            self.step += 1
        keep = torch.argsort(loss.detach(), stable=True)[:k]
        w = torch.zeros_like(loss)
        w[keep] = 1.0 / k
        return w


class LossMixtureWeighting(SampleWeighting):
    """Clean-label probabilities from a two-component Gaussian mixture on per-sample losses.

    Li, Socher, Hoi: "DivideMix: Learning with Noisy Labels as Semi-supervised Learning", ICLR 2020
    (its label division, with one network and no MixMatch). Networks fit clean labels before they
    memorise wrong ones, so after a warm-up the samples with wrong labels are those whose loss stays
    high. Unlike small-loss selection, which drops a fixed share of every batch, this looks at the
    whole training set and needs no guess of the noise rate:

    - every sample's loss is remembered across epochs: an exponential moving average over its
      visits (``momentum``), which evens out the random augmentation;
    - from ``warmup_steps`` on, every ``refit_every`` steps, a two-component 1D Gaussian mixture
      (scikit-learn) is fitted to the remembered losses (min-max normalised, as in DivideMix); a
      sample's clean probability ``p_i`` is its posterior of the lower-loss component (1 before
      the first fit and for samples not yet seen);
    - weights ``w_i = p_i / B``: the batch loss estimates the loss over clean labels, so a batch of
      suspect labels barely moves the network (the weights then sum to less than 1).

    Caveat: on clean data the mixture still splits the losses, and the harder images get less
    weight. index ``(B,)`` (positions in the training set), loss ``(B,)`` -> weights ``(B,)``;
    the memory, probabilities and step count are buffers, so they are checkpointed.
    """

    tracks_samples = True

    def __init__(
        self, in_channels: int, n_structures: int, spatial_dims: int, warmup_steps: int = 100, refit_every: int = 20,
        momentum: float = 0.5,
    ):
        super().__init__()
        if int(warmup_steps) < 0 or int(refit_every) < 1:
            raise ConfigError(f"loss_gmm: warmup_steps must be >= 0 and refit_every >= 1, got {warmup_steps}, {refit_every}")
        if not 0 <= float(momentum) < 1:
            raise ConfigError(f"loss_gmm: momentum must be in [0, 1), got {momentum}")
        self.warmup_steps = int(warmup_steps)
        self.refit_every = int(refit_every)
        self.momentum = float(momentum)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.bind(0)

    def bind(self, n_samples: int) -> None:
        self.register_buffer("loss_memory", torch.full((n_samples,), float("nan")))
        self.register_buffer("clean_probability", torch.ones(n_samples))

    def refit(self) -> None:
        """Fit the mixture to the remembered losses and update :attr:`clean_probability`."""
        seen = ~torch.isnan(self.loss_memory)
        p = lower_component_probability(self.loss_memory[seen].double().cpu().numpy())
        if p is not None:
            self.clean_probability[seen] = torch.as_tensor(p, dtype=self.clean_probability.dtype, device=self.clean_probability.device)

    def forward(self, image, label, present, loss, index: torch.Tensor | None = None):
        b = loss.shape[0]
        if index is None or self.loss_memory.numel() == 0:
            return torch.full_like(loss, 1.0 / b)
        index = index.to(self.loss_memory.device).long()
        if self.training:
            new = loss.detach().float().to(self.loss_memory.device)
            old = self.loss_memory[index]
            self.loss_memory[index] = torch.where(torch.isnan(old), new, self.momentum * old + (1 - self.momentum) * new)
            self.step += 1
            s = int(self.step)
            if s >= self.warmup_steps and (s - self.warmup_steps) % self.refit_every == 0:
                self.refit()
        return (self.clean_probability[index] / b).to(device=loss.device, dtype=loss.dtype)


AGGREGATES = ("zscore", "mean")


def agreement(scores: torch.Tensor, present: torch.Tensor, aggregate: str = "zscore") -> torch.Tensor:
    """One agreement score per sample from per-structure scores ``(N, C)`` (Dice, or any measure
    where higher is closer) and ``present`` ``(N, C)`` -> ``(N,)`` (nan where nothing is contoured).

    ``mean``: the mean score over the contoured structures (the audit's: mean Dice). ``zscore``: each
    structure's score standardised over the samples that contour it, then averaged, so that a
    structure every label agrees with less (small, thin: clavicles) does not decide the ranking.
    """
    d = scores.double()
    p = present.bool() & ~torch.isnan(d)
    if aggregate == "zscore":
        n = p.sum(0).clamp_min(1)
        mean = torch.where(p, d, 0.0).sum(0) / n
        sd = (torch.where(p, (d - mean) ** 2, 0.0).sum(0) / n).sqrt()
        d = (d - mean) / sd.clamp_min(1e-6)
    elif aggregate != "mean":
        raise ConfigError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    count = p.sum(1)
    total = torch.where(p, d, 0.0).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan"))).float()


class AgreementSelection(SampleWeighting):
    """Train on the labels the network agrees with: confident-learning-style pruning in one run.

    After ``warmup_epochs`` of plain training the loop scores every training label by the
    network's agreement with it: the prediction, without augmentation, vs the given label, per
    structure, combined by :func:`agreement` (by default each structure's score standardised
    over the training set, then averaged). ``score: dice`` (the default) measures it by Dice:
    ``dice: soft`` (the default) of the probabilities, ``hard`` of the thresholded prediction,
    which early in training, while a structure's probabilities stay below the threshold, rates an
    empty (eroded-away) label as perfect and so keeps exactly the wrong ones. ``score: surface``
    measures it by the mean surface distance between the thresholded prediction and the label, on
    a log scale (:func:`delineo.metrics.segmentation.label_agreement`): an eroded or dilated
    contour lies as far from the prediction on a wide lung as on a thin clavicle, where Dice
    forgives the lung's shift and punishes the clavicle's model error. A network fits the consensus shape
    before it memorises individual errors, so wrong labels disagree. A two-component Gaussian
    mixture on the agreements (scikit-learn) gives each label's probability of belonging to the
    high-agreement component; labels with probability >= ``threshold`` are kept (DivideMix's
    division of the training set), or, with ``keep_fraction``, the best-agreeing share of them.
    Training then continues on the kept labels only: each batch's loss is the mean over its kept
    samples (a batch with none is skipped: all weights 0). ``rescore_every`` > 0 re-scores and
    re-selects every so many epochs; 0 selects once.

    Northcutt, Jiang, Chuang: "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR
    70, 2021 (pruning by the model's out-of-sample agreement; here in-sample, during training, and
    with a mixture instead of per-class thresholds); Li, Socher, Hoi, DivideMix, ICLR 2020 (the
    mixture). index ``(B,)``, loss ``(B,)`` -> weights ``(B,)``; the scores and the selection are
    buffers, so they are checkpointed.
    """

    tracks_samples = True
    MAX_SELECTIONS = 64

    def __init__(
        self, in_channels: int, n_structures: int, spatial_dims: int, warmup_epochs: int = 10, rescore_every: int = 0,
        threshold: float = 0.5, keep_fraction: float | None = None, aggregate: str = "zscore", dice: str = "soft",
        score: str = "dice",
    ):
        super().__init__()
        if int(warmup_epochs) < 1 or int(rescore_every) < 0:
            raise ConfigError(f"agreement: warmup_epochs must be >= 1 and rescore_every >= 0, got {warmup_epochs}, {rescore_every}")
        if not 0 < float(threshold) < 1:
            raise ConfigError(f"agreement: threshold must be in (0, 1), got {threshold}")
        if keep_fraction is not None and not 0 < float(keep_fraction) <= 1:
            raise ConfigError(f"agreement: keep_fraction must be in (0, 1], got {keep_fraction}")
        if aggregate not in AGGREGATES:
            raise ConfigError(f"agreement: aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        self.aggregate = aggregate
        if dice not in ("soft", "hard"):
            raise ConfigError(f"agreement: dice must be 'soft' or 'hard', got {dice!r}")
        self.dice = dice
        if score not in ("dice", "surface"):
            raise ConfigError(f"agreement: score must be 'dice' or 'surface', got {score!r}")
        self.score = score
        self.warmup_epochs = int(warmup_epochs)
        self.rescore_every = int(rescore_every)
        self.threshold = float(threshold)
        self.keep_fraction = None if keep_fraction is None else float(keep_fraction)
        self.bind(0)

    @property
    def agreement_measure(self) -> str:
        if self.score == "surface":
            return "surface"
        return "soft_dice" if self.dice == "soft" else "dice"

    def bind(self, n_samples: int) -> None:
        self.register_buffer("agreement", torch.full((n_samples,), float("nan")))
        self.register_buffer("kept", torch.ones(n_samples, dtype=torch.bool))
        self.register_buffer("selected_at_epoch", torch.full((), -1, dtype=torch.long))
        # (epoch before which it selected, labels kept) of the first MAX_SELECTIONS selections; -1: none
        self.register_buffer("selections", torch.full((self.MAX_SELECTIONS, 2), -1, dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the selection history existed: resume with an empty history
        state_dict.setdefault(prefix + "selections", torch.full((self.MAX_SELECTIONS, 2), -1, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def wants_scores(self, epoch: int) -> bool:
        if epoch < self.warmup_epochs:
            return False
        if epoch == self.warmup_epochs:
            return True
        return self.rescore_every > 0 and (epoch - self.warmup_epochs) % self.rescore_every == 0

    def set_scores(self, scores: torch.Tensor, present: torch.Tensor, epoch: int) -> None:
        scores = agreement(scores, present, self.aggregate).to(self.agreement.device)
        self.agreement.copy_(scores)
        known = ~torch.isnan(scores)
        kept = torch.ones_like(self.kept)
        x = scores[known].double().cpu().numpy()
        if self.keep_fraction is not None:
            n_keep = max(1, int(round(self.keep_fraction * x.size)))
            order = np.argsort(-x, kind="stable")
            keep_known = np.zeros(x.size, bool)
            keep_known[order[:n_keep]] = True
        else:
            p = lower_component_probability(-x)  # the high-agreement component
            keep_known = np.ones(x.size, bool) if p is None else p >= self.threshold
        kept[known] = torch.as_tensor(keep_known, device=kept.device)
        self.kept.copy_(kept)
        self.selected_at_epoch.fill_(int(epoch))
        free = (self.selections[:, 0] < 0).nonzero()
        if len(free):
            self.selections[int(free[0])] = torch.as_tensor([int(epoch), int(kept.sum())])
        print(f"agreement selection before epoch {epoch + 1}: kept {int(kept.sum())}/{kept.numel()} training labels "
              f"(agreement of the kept >= {float(scores[kept & known].min()) if (kept & known).any() else float('nan'):.3f})",
              file=sys.stderr, flush=True)

    def record(self, cases: list[str]) -> dict[str, Any] | None:
        if int(self.selected_at_epoch) < 0:
            return None
        kept = self.kept.tolist()
        return {
            "kind": "agreement", "score": self.agreement_measure, "aggregate": self.aggregate, "selected_before_epoch": int(self.selected_at_epoch) + 1,
            "n_kept": int(sum(kept)), "n_train": len(kept),
            "history": [{"selected_before_epoch": int(e) + 1, "n_kept": int(k)} for e, k in self.selections.tolist() if e >= 0],
            "agreement": {c: (None if math.isnan(a) else round(a, 4)) for c, a in zip(cases, self.agreement.tolist())},
            "dropped_cases": [c for c, k in zip(cases, kept) if not k],
        }

    def forward(self, image, label, present, loss, index: torch.Tensor | None = None):
        b = loss.shape[0]
        if index is None or self.kept.numel() == 0 or int(self.selected_at_epoch) < 0:
            return torch.full_like(loss, 1.0 / b)
        keep = self.kept[index.to(self.kept.device).long()].to(device=loss.device, dtype=loss.dtype)
        return keep / keep.sum().clamp_min(1.0)


register_weighting("small_loss", SmallLossWeighting)
register_weighting("loss_gmm", LossMixtureWeighting)
register_weighting("agreement", AgreementSelection)
