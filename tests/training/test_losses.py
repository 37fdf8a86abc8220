"""Losses that ignore unknown (not contoured) structures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from delineo.errors import ConfigError
from delineo.training.losses import SegmentationLoss, deep_supervision_loss


def batch(seed=0, shape=(8, 8)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, *shape, generator=g)
    target = (torch.rand(2, 3, *shape, generator=g) > 0.6).to(torch.uint8)
    present = torch.tensor([[True, False, True], [True, True, True]])
    return logits, target, present


@pytest.mark.parametrize("kind", ["dice", "dice_bce"])
def test_unknown_structure_does_not_change_the_loss(kind):
    loss = SegmentationLoss(kind)
    logits, target, present = batch()
    before = loss.per_sample(logits, target, present)
    changed = logits.clone()
    changed[0, 1] = 10 * torch.randn_like(changed[0, 1])  # sample 0, structure 1 is unknown
    target2 = target.clone()
    target2[0, 1] = 1 - target2[0, 1]
    after = loss.per_sample(changed, target2, present)
    torch.testing.assert_close(after, before)
    # ... but it does change the loss where the structure is known
    changed_known = logits.clone()
    changed_known[1, 1] += 3.0
    assert not torch.allclose(loss.per_sample(changed_known, target, present)[1], before[1])


@pytest.mark.parametrize("kind", ["dice", "dice_bce"])
def test_gradient_is_zero_for_unknown_structure(kind):
    loss = SegmentationLoss(kind)
    logits, target, present = batch(1)
    logits.requires_grad_(True)
    loss.per_sample(logits, target, present).sum().backward()
    assert torch.all(logits.grad[0, 1] == 0)
    assert logits.grad[0, 0].abs().sum() > 0 and logits.grad[0, 2].abs().sum() > 0
    assert logits.grad[1].abs().sum() > 0


def test_per_sample_is_mean_over_present_structures():
    loss = SegmentationLoss("dice_bce")
    logits, target, present = batch(2)
    per = loss.per_structure(logits, target)
    assert per.shape == (2, 3)
    out = loss.per_sample(logits, target, present)
    assert out.shape == (2,)
    torch.testing.assert_close(out[0], (per[0, 0] + per[0, 2]) / 2)
    torch.testing.assert_close(out[1], per[1].mean())
    # a sample with nothing contoured contributes 0 (not NaN)
    none = loss.per_sample(logits, target, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(none, torch.zeros(2))


def test_dice_vs_dice_bce_by_hand():
    logits, target, _ = batch(3)
    dice = SegmentationLoss("dice").per_structure(logits, target)
    both = SegmentationLoss("dice_bce").per_structure(logits, target)
    p, t = torch.sigmoid(logits), target.float()
    inter = (p * t).flatten(2).sum(2)
    soft_dice = 1 - (2 * inter + 1e-5) / (p.flatten(2).sum(2) + t.flatten(2).sum(2) + 1e-5)
    torch.testing.assert_close(dice, soft_dice)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").flatten(2).mean(2)
    torch.testing.assert_close(both, soft_dice + bce)


def test_perfect_prediction_has_low_loss():
    target = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
    target[..., 2:6, 2:6, 2:6] = 1
    logits = (target.float() * 2 - 1) * 20
    present = torch.ones(1, 1, dtype=torch.bool)
    assert SegmentationLoss("dice_bce").per_sample(logits, target, present).item() < 1e-3
    assert SegmentationLoss("dice").per_sample(-logits, target, present).item() > 0.99


def test_unknown_loss():
    with pytest.raises(ConfigError, match="focal"):
        SegmentationLoss("focal")


def test_deep_supervision_loss_tensor_is_plain_loss():
    loss = SegmentationLoss("dice")
    logits, target, present = batch(4)
    torch.testing.assert_close(deep_supervision_loss(loss, logits, target, present), loss.per_sample(logits, target, present))


def test_deep_supervision_loss_list_weights_and_downsampled_targets():
    loss = SegmentationLoss("dice_bce")
    logits, target, present = batch(5, shape=(16, 16))
    half = torch.randn(2, 3, 8, 8)
    quarter = torch.randn(2, 3, 4, 4)
    out = deep_supervision_loss(loss, [logits, half, quarter], target, present)
    assert out.shape == (2,)
    t_half = F.interpolate(target.float(), size=(8, 8), mode="nearest")
    t_quarter = F.interpolate(target.float(), size=(4, 4), mode="nearest")
    expected = (
        4 * loss.per_sample(logits, target, present)
        + 2 * loss.per_sample(half, t_half, present)
        + 1 * loss.per_sample(quarter, t_quarter, present)
    ) / 7
    torch.testing.assert_close(out, expected)
    # unknown structures are still ignored at every resolution
    half2 = half.clone()
    half2[0, 1] += 5
    torch.testing.assert_close(deep_supervision_loss(loss, [logits, half2, quarter], target, present)[0], out[0])


def test_batch_dice_is_one_loss_over_the_batch_and_ignores_unknown():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = (torch.rand(2, 2, 8, 8) > 0.5).float()
    present = torch.tensor([[True, False], [True, True]])
    loss = SegmentationLoss("dice", batch_dice=True)
    per = loss.per_sample(logits, target, present)
    assert per.shape == (2,) and float(per[0].detach()) == float(per[1].detach())
    # by hand: structure 0 over both samples, structure 1 over sample 1 only
    p = torch.sigmoid(logits.detach())
    d0 = 1 - (2 * (p[:, 0] * target[:, 0]).sum() + 1e-5) / (p[:, 0].sum() + target[:, 0].sum() + 1e-5)
    d1 = 1 - (2 * (p[1, 1] * target[1, 1]).sum() + 1e-5) / (p[1, 1].sum() + target[1, 1].sum() + 1e-5)
    assert torch.isclose(per[0], (d0 + d1) / 2, atol=1e-5)
    per.mean().backward()
    assert float(logits.grad[0, 1].abs().sum()) == 0.0
    with pytest.raises(ConfigError, match="batch_dice"):
        SegmentationLoss("gce", batch_dice=True)
