"""Noisy-label training: QAM + OCM weighting, and the noise-robust baselines (losses, small-loss)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import delineo.training.weighting as weighting_mod
from delineo.errors import ConfigError
from delineo.training import TrainConfig, build_weighting, train
from delineo.training.losses import SegmentationLoss
from delineo.training.qam import QualityAwareWeighting
from delineo.training.robust_losses import (
    AgreementSelection,
    LossMixtureWeighting,
    agreement,
    SmallLossWeighting,
    generalized_cross_entropy,
    noise_robust_dice,
)


def inputs(b=6, c=2, shape=(16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 1, *shape, generator=g)
    label = (torch.rand(b, c, *shape, generator=g) > 0.5).to(torch.uint8)
    present = torch.ones(b, c, dtype=torch.bool)
    return image, label, present


def qam(ocm_lambda=2.0, c=2, dims=2, **kw):
    return QualityAwareWeighting(in_channels=1 + c, n_structures=c, spatial_dims=dims, ocm_lambda=ocm_lambda, channels=(4, 8), **kw)


# ---- QAM + OCM ---------------------------------------------------------------------------------


def test_starts_uniform_and_weights_sum_to_one():
    image, label, present = inputs()
    w = qam()(image, label, present, torch.rand(6))
    assert w.shape == (6,)
    torch.testing.assert_close(w, torch.full((6,), 1 / 6))  # zero-initialised head: plain training at first


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_ocm_bounds_the_weight_ratio(lam):
    torch.manual_seed(0)
    image, label, present = inputs(b=8)
    m = qam(lam)
    torch.nn.init.normal_(m.net.head.weight, 0, 1000.0)  # huge raw scores
    with torch.no_grad():
        w = m(image, label, present, torch.rand(8))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert bool((w > 0).all())
    assert float(w.max() / w.min()) <= math.exp(2 * lam) * (1 + 1e-4)
    raw = qam(None)
    raw.load_state_dict(m.state_dict())
    with torch.no_grad():
        w_raw = raw(image, label, present, torch.rand(8))
    assert float(w_raw.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(w_raw.max() / w_raw.min().clamp_min(1e-30)) > math.exp(2 * lam)  # without OCM: unbounded


def test_gradients_reach_the_qam_through_the_weighted_loss():
    image, label, present = inputs()
    m = qam()
    losses = torch.linspace(0.1, 0.9, 6, requires_grad=True)  # stands for the segmentation network's L_i
    (m(image, label, present, losses) * losses).sum().backward()
    assert m.net.head.weight.grad.abs().sum() > 0  # zero-initialised head: only it moves on the first step
    torch.testing.assert_close(losses.grad, torch.full((6,), 1 / 6))  # the network's samples weigh w_i
    torch.nn.init.normal_(m.net.head.weight, 0, 0.1)
    m.zero_grad()
    (m(image, label, present, losses) * losses).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_joint_training_lowers_the_weight_of_high_loss_samples_up_to_the_bound():
    torch.manual_seed(0)
    image, label, present = inputs(b=4)
    losses = torch.tensor([1.0, 0.1, 0.1, 0.1])  # sample 0: a label the network cannot fit
    m = qam(1.0)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        (m(image, label, present, losses) * losses).sum().backward()
        opt.step()
    w = m(image, label, present, losses).detach()
    assert w[0] < 0.2 < w[1:].min()
    assert float(w.max() / w.min()) <= math.exp(2.0) * (1 + 1e-4)


def test_3d_and_options():
    image, label, present = inputs(b=2, c=3, shape=(8, 8, 8))
    m = qam(c=3, dims=3, convs_per_block=2, downsample=2)
    w = m(image, label, present, torch.rand(2))
    assert w.shape == (2,) and float(w.detach().sum()) == pytest.approx(1.0)
    assert m.score(image, label).shape == (2,)
    with pytest.raises(ConfigError, match="ocm_lambda"):
        qam(-1.0)
    with pytest.raises(ConfigError, match="in_channels"):
        QualityAwareWeighting(in_channels=2, n_structures=2, spatial_dims=2)


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry without the lazily imported strategies, as in a fresh process."""
    monkeypatch.setattr(weighting_mod, "_STRATEGIES", {"uniform": weighting_mod.UniformWeighting})


@pytest.mark.parametrize("kind, cls", [("qam", QualityAwareWeighting), ("qam_ocm", QualityAwareWeighting), ("small_loss", SmallLossWeighting)])
def test_build_weighting_finds_the_strategies(fresh_registry, kind, cls):
    w = build_weighting({"kind": kind}, in_channels=3, n_structures=2, spatial_dims=2)
    assert isinstance(w, cls) and w.min_batch_size == 2
    with pytest.raises(ConfigError, match=kind):
        build_weighting({"kind": kind, "no_such_option": 1}, in_channels=3, n_structures=2, spatial_dims=2)
    with pytest.raises(ConfigError, match="qam"):  # the lazy ones are listed as available
        build_weighting({"kind": "nope"}, in_channels=3, n_structures=2, spatial_dims=2)


def test_qam_needs_batches_of_two(tmp_path, tiny_config, image_dataset):
    d = tiny_config(image_dataset.root, tmp_path, epochs=1, batch_size=1, weighting={"kind": "qam"})
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        train(TrainConfig.from_dict(d))


@pytest.mark.slow
def test_train_with_qam_end_to_end(tmp_path, tiny_config, image_dataset):
    d = tiny_config(image_dataset.root, tmp_path, epochs=1, weighting={"kind": "qam", "ocm_lambda": 1.5, "channels": [4, 8]},
                    label_noise={"fraction": 0.5, "radius": [1, 2], "seed": 0})
    out = train(TrainConfig.from_dict(d))
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["config"]["training"]["weighting"]["kind"] == "qam"
    assert math.isfinite(json.loads((out / "history.json").read_text())[0]["loss"])
    ckpt = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    assert any(k.startswith("net.") for k in ckpt["weighting"])  # the QAM is checkpointed ...
    assert not any(k.startswith("net.") for k in load_file(str(out / "weights.safetensors")))  # ... not exported


# ---- noise-robust baselines --------------------------------------------------------------------


def batch(seed=0, shape=(8, 8)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, *shape, generator=g)
    target = (torch.rand(2, 3, *shape, generator=g) > 0.6).to(torch.uint8)
    present = torch.tensor([[True, False, True], [True, True, True]])
    return logits, target, present


ROBUST = ["nr_dice", "gce", "dice_gce"]


@pytest.mark.parametrize("kind", ROBUST)
def test_robust_loss_is_zero_on_perfect_prediction(kind):
    _, target, present = batch()
    target[0, 0] = 0  # an empty (but contoured) structure too
    logits = (target.float() * 2 - 1) * 40
    loss = SegmentationLoss(kind).per_sample(logits, target, present)
    assert loss.shape == (2,)
    assert float(loss.abs().max()) < 1e-4


@pytest.mark.parametrize("kind", ROBUST)
def test_robust_loss_is_finite_and_positive(kind):
    logits, target, present = batch(1)
    for scale in (1.0, 1e4):
        x = (logits * scale).requires_grad_(True)
        loss = SegmentationLoss(kind).per_sample(x, target, present)
        assert torch.isfinite(loss).all() and bool((loss > 0).all())
        loss.sum().backward()
        assert torch.isfinite(x.grad).all()
    empty = torch.zeros_like(target)
    assert torch.isfinite(SegmentationLoss(kind).per_sample(logits, empty, present)).all()


@pytest.mark.parametrize("kind", ROBUST)
def test_robust_loss_ignores_unknown_structures(kind):
    loss = SegmentationLoss(kind)
    logits, target, present = batch(2)
    before = loss.per_sample(logits, target, present)
    changed, target2 = logits.clone(), target.clone()
    changed[0, 1] = 10 * torch.randn_like(changed[0, 1])  # sample 0, structure 1 is unknown
    target2[0, 1] = 1 - target2[0, 1]
    torch.testing.assert_close(loss.per_sample(changed, target2, present), before)
    x = logits.clone().requires_grad_(True)
    loss.per_sample(x, target, present).sum().backward()
    assert torch.all(x.grad[0, 1] == 0) and x.grad[1, 1].abs().sum() > 0


def test_robust_losses_by_hand():
    logits, target, _ = batch(3)
    p, g = torch.sigmoid(logits), target.float()
    nr = ((p - g).abs() ** 1.5).flatten(2).sum(2) / ((p**2).flatten(2).sum(2) + (g**2).flatten(2).sum(2) + 1e-5)
    torch.testing.assert_close(SegmentationLoss("nr_dice").per_structure(logits, target), nr)
    p_t = torch.where(target.bool(), p, 1 - p)
    torch.testing.assert_close(generalized_cross_entropy(logits, target), ((1 - p_t**0.7) / 0.7).flatten(2).mean(2))
    # q -> 0 is cross-entropy; gamma = 2 is a squared-error Dice
    bce = F.binary_cross_entropy_with_logits(logits, g, reduction="none").flatten(2).mean(2)
    torch.testing.assert_close(generalized_cross_entropy(logits, target, q=1e-4), bce, rtol=1e-3, atol=1e-3)
    assert noise_robust_dice(p, target, gamma=2.0).shape == (2, 3)


def test_small_loss_keeps_the_smallest_losses_after_warm_up():
    w = SmallLossWeighting(in_channels=3, n_structures=2, spatial_dims=2, forget_rate=0.5, warmup_steps=2)
    losses = torch.tensor([0.9, 0.1, 0.5, 0.2], requires_grad=True)
    torch.testing.assert_close(w(None, None, None, losses), torch.full((4,), 0.25))  # step 0: keep all
    w(None, None, None, losses)  # step 1: drop 25% -> 3 kept
    out = w(None, None, None, losses)  # step 2 and on: drop 50%
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, 0.0, 0.5]))
    (out * losses).sum().backward()
    assert losses.grad[0] == 0 and losses.grad[1] == 0.5
    assert int(w.state_dict()["step"]) == 3  # checkpointed with the loop's weighting state
    w.eval()
    w(None, None, None, losses)
    assert int(w.step) == 3  # evaluation does not advance the schedule
    with pytest.raises(ConfigError, match="forget_rate"):
        SmallLossWeighting(in_channels=3, n_structures=2, spatial_dims=2, forget_rate=1.0)


# ---- loss mixture (DivideMix's label division) -----------------------------------------------


def loss_gmm(n=20, **kw):
    w = LossMixtureWeighting(in_channels=3, n_structures=2, spatial_dims=2, **kw)
    w.bind(n)
    return w


def noisy_losses(index: torch.Tensor, noisy: set[int], seed: int) -> torch.Tensor:
    """Clean samples ~0.2, noisy ones ~0.8, with jitter (as augmentation gives)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.8 if int(i) in noisy else 0.2 for i in index])
    return base + 0.05 * torch.randn(len(index), generator=g)


def test_loss_gmm_is_uniform_in_warm_up_then_weights_down_high_loss_samples():
    w = loss_gmm(20, warmup_steps=10, refit_every=5)
    noisy = {1, 4, 7, 12, 18}
    order = torch.arange(20)
    for step in range(10):  # two passes over the 20 samples in batches of 4: the warm-up
        index = order[(step * 4) % 20: (step * 4) % 20 + 4]
        out = w(None, None, None, noisy_losses(index, noisy, step), index=index)
        if step < 9:
            torch.testing.assert_close(out, torch.full((4,), 0.25))
    p = w.clean_probability
    assert all(float(p[i]) < 0.05 for i in noisy) and all(float(p[i]) > 0.95 for i in range(20) if i not in noisy)
    index = torch.tensor([0, 1, 2, 4])
    out = w(None, None, None, noisy_losses(index, noisy, 99), index=index)
    assert float(out[0]) == pytest.approx(0.25, abs=0.02) and float(out[1]) < 0.02 and float(out.sum()) < 0.6
    assert not torch.isnan(w.loss_memory).any()


def test_loss_gmm_state_is_checkpointed_and_eval_does_not_update_it():
    w = loss_gmm(8, warmup_steps=2, refit_every=1)
    for step in range(4):
        index = torch.tensor([2 * step % 8, (2 * step + 1) % 8])
        w(None, None, None, noisy_losses(index, {3}, step), index=index)
    state = {k: v.clone() for k, v in w.state_dict().items()}
    assert set(state) == {"step", "loss_memory", "clean_probability"} and int(state["step"]) == 4
    again = loss_gmm(8)
    again.load_state_dict(state)
    torch.testing.assert_close(again.clean_probability, w.clean_probability)
    w.eval()
    w(None, None, None, torch.tensor([5.0, 5.0]), index=torch.tensor([0, 1]))
    torch.testing.assert_close(w.loss_memory, state["loss_memory"])
    assert int(w.step) == 4
    # without indices (e.g. a caller that does not track samples) every sample weighs 1/B
    torch.testing.assert_close(w(None, None, None, torch.tensor([0.1, 0.9])), torch.tensor([0.5, 0.5]))


def test_loss_gmm_options_and_registry(fresh_registry):
    w = build_weighting({"kind": "loss_gmm", "warmup_steps": 3}, in_channels=3, n_structures=2, spatial_dims=2)
    assert isinstance(w, LossMixtureWeighting) and w.tracks_samples and w.warmup_steps == 3
    with pytest.raises(ConfigError, match="momentum"):
        loss_gmm(momentum=1.0)
    with pytest.raises(ConfigError, match="refit_every"):
        loss_gmm(refit_every=0)


@pytest.mark.slow
def test_train_with_loss_gmm_sees_every_training_sample(tmp_path, tiny_config, image_dataset):
    d = tiny_config(image_dataset.root, tmp_path, epochs=2, weighting={"kind": "loss_gmm", "warmup_steps": 1, "refit_every": 1},
                    label_noise={"fraction": 0.5, "radius": [1, 2], "seed": 0})
    out = train(TrainConfig.from_dict(d))
    n_train = json.loads((out / "model.json").read_text())["training"]["data"]["n_train"]
    ckpt = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)["weighting"]
    assert ckpt["loss_memory"].shape == (n_train,) and not torch.isnan(ckpt["loss_memory"]).any()
    assert ckpt["clean_probability"].shape == (n_train,) and int(ckpt["step"]) >= 2


# ---- agreement selection (confident-learning-style pruning) ---------------------------------


def selection(n=10, **kw):
    w = AgreementSelection(in_channels=3, n_structures=2, spatial_dims=2, **kw)
    w.bind(n)
    return w


def test_agreement_selection_trains_on_every_label_until_it_scores_them():
    w = selection(10, warmup_epochs=3, aggregate="mean")
    assert [w.wants_scores(e) for e in range(6)] == [False, False, False, True, False, False]
    index = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(w(None, None, None, torch.rand(4), index=index), torch.full((4,), 0.25))
    # clean labels agree ~0.9, wrong ones ~0.6; case 9 has nothing contoured (nan): kept
    scores = torch.tensor([0.91, 0.62, 0.90, 0.58, 0.93, 0.89, 0.60, 0.92, 0.88, 0.0])
    present = torch.ones(10, 2, dtype=torch.bool)
    present[9] = False
    w.set_scores(torch.stack([scores, scores], 1), present, 3)
    assert torch.isnan(w.agreement[9])
    assert w.kept.tolist() == [True, False, True, False, True, True, False, True, True, True]
    assert int(w.selected_at_epoch) == 3
    out = w(None, None, None, torch.rand(4), index=index)  # mean over the kept samples of the batch
    torch.testing.assert_close(out, torch.tensor([0.5, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(w(None, None, None, torch.rand(2), index=torch.tensor([1, 3])), torch.zeros(2))  # none kept: skipped
    again = selection(10)
    again.load_state_dict(w.state_dict())  # the selection is checkpointed
    assert again.kept.tolist() == w.kept.tolist() and int(again.selected_at_epoch) == 3
    older = {k: v for k, v in w.state_dict().items() if k != "selections"}  # a checkpoint from before the history
    again = selection(10)
    again.load_state_dict(older)
    assert again.kept.tolist() == w.kept.tolist() and again.record([str(i) for i in range(10)])["history"] == []


def test_agreement_selection_keep_fraction_and_rescoring():
    w = selection(8, warmup_epochs=1, rescore_every=2, keep_fraction=0.25)
    assert [w.wants_scores(e) for e in range(6)] == [False, True, False, True, False, True]
    dice = torch.tensor([0.5, 0.9, 0.7, 0.95, 0.1, 0.2, 0.3, 0.4])[:, None].repeat(1, 2)
    w.set_scores(dice, torch.ones(8, 2, dtype=torch.bool), 1)
    assert w.kept.nonzero().flatten().tolist() == [1, 3]
    w.keep_fraction = 0.5
    w.set_scores(dice, torch.ones(8, 2, dtype=torch.bool), 3)  # re-scored: every selection is recorded
    record = w.record([f"c{i}" for i in range(8)])
    assert record["history"] == [{"selected_before_epoch": 2, "n_kept": 2}, {"selected_before_epoch": 4, "n_kept": 4}]
    assert record["n_kept"] == 4 and record["selected_before_epoch"] == 4 and record["score"] == "soft_dice"
    # without an index (a caller that does not track samples): uniform
    torch.testing.assert_close(w(None, None, None, torch.rand(2)), torch.tensor([0.5, 0.5]))
    with pytest.raises(ConfigError, match="warmup_epochs"):
        selection(warmup_epochs=0)
    with pytest.raises(ConfigError, match="keep_fraction"):
        selection(keep_fraction=0.0)
    with pytest.raises(ConfigError, match="threshold"):
        selection(threshold=1.0)
    with pytest.raises(ConfigError, match="aggregate"):
        selection(aggregate="median")
    with pytest.raises(ConfigError, match="dice"):
        selection(dice="fuzzy")
    with pytest.raises(ConfigError, match="score"):
        selection(score="hausdorff")
    assert [selection().agreement_measure, selection(dice="hard").agreement_measure] == ["soft_dice", "dice"]
    assert selection(score="surface", dice="hard").agreement_measure == "surface"
    built = build_weighting({"kind": "agreement", "warmup_epochs": 4}, in_channels=3, n_structures=2, spatial_dims=2)
    assert isinstance(built, AgreementSelection) and built.tracks_samples and built.warmup_epochs == 4


def test_agreement_zscore_lets_every_structure_count():
    # structure 0 (large) separates the wrong labels (rows 2, 3) only slightly; structure 1 (small)
    # varies widely for every label. The plain mean ranks by structure 1; the z-score by both.
    dice = torch.tensor([[0.97, 0.55], [0.97, 0.80], [0.92, 0.65], [0.92, 0.70], [0.97, 0.75], [0.97, 0.85]])
    present = torch.ones(6, 2, dtype=torch.bool)
    mean = agreement(dice, present, "mean")
    torch.testing.assert_close(mean, dice.mean(1))
    assert int(mean.argmin()) == 0
    z = agreement(dice, present, "zscore")
    assert set(torch.argsort(z)[:2].tolist()) == {2, 3}
    # a structure not contoured in a sample is left out of that sample's score; none contoured: nan
    present[1, 1] = False
    present[4] = False
    z = agreement(dice, present, "zscore")
    assert torch.isnan(z[4]) and not torch.isnan(z[[0, 1, 2, 3, 5]]).any()
    with pytest.raises(ConfigError, match="aggregate"):
        agreement(dice, present, "max")


@pytest.mark.slow
@pytest.mark.parametrize("score, measure", [("dice", "soft_dice"), ("surface", "surface")])
def test_train_with_agreement_selection_scores_every_training_label(tmp_path, tiny_config, image_dataset, score, measure):
    d = tiny_config(image_dataset.root, tmp_path, epochs=2, weighting={"kind": "agreement", "warmup_epochs": 1, "score": score},
                    label_noise={"fraction": 0.5, "radius": [1, 2], "seed": 0})
    out = train(TrainConfig.from_dict(d))
    n_train = json.loads((out / "model.json").read_text())["training"]["data"]["n_train"]
    ckpt = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)["weighting"]
    assert ckpt["agreement"].shape == (n_train,) and not torch.isnan(ckpt["agreement"]).any()
    assert abs(float(ckpt["agreement"].mean())) < 1e-4  # z-scores average 0 over the training set
    assert int(ckpt["selected_at_epoch"]) == 1 and 1 <= int(ckpt["kept"].sum()) <= n_train
    record = json.loads((out / "model.json").read_text())["training"]["weighting_record"]
    assert record["score"] == measure and record["selected_before_epoch"] == 2 and record["n_kept"] == int(ckpt["kept"].sum()) and record["n_train"] == n_train
    assert len(record["agreement"]) == n_train and len(record["dropped_cases"]) == n_train - record["n_kept"]
    assert record["history"] == [{"selected_before_epoch": 2, "n_kept": record["n_kept"]}]
