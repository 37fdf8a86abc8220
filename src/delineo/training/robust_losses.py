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
"""

from __future__ import annotations

import math

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
        from sklearn.mixture import GaussianMixture

        seen = ~torch.isnan(self.loss_memory)
        x = self.loss_memory[seen].double().cpu().numpy()
        if x.size < 4 or float(x.max() - x.min()) < 1e-12:
            return
        x = ((x - x.min()) / (x.max() - x.min()))[:, None]
        gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0).fit(x)
        p = gmm.predict_proba(x)[:, int(np.argmin(gmm.means_[:, 0]))]
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


register_weighting("small_loss", SmallLossWeighting)
register_weighting("loss_gmm", LossMixtureWeighting)
