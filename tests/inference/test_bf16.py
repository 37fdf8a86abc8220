"""bf16 autocast on the CPU against fp32, with the bundled hn-ct network on the shapes it really sees.

oneDNN has had wrong-result bugs in bf16 Conv3d on AVX512-BF16 CPUs (stride > 1 with an innermost
output of size 1), and ``delineo train`` uses bf16 wherever the CPU has it natively
(:func:`delineo.machine.bf16_available`). So the real network, on the training shape
(batch 2 of 64^3 patches) and on the inference shape (a whole OpenKBP CT on the model grid, about
125 x 125 x 154 voxels padded to the network's divisor), must give the same contours and nearly the
same gradients in bf16 as in fp32. ``hn-ct`` contours the body box only (``crop_foreground``), so the
Predictor's own shape is checked too: bf16 is its default on such a CPU. Skipped where the CPU has no native bf16 (training runs fp32 there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delineo.data.io import read_image
from delineo.data.orientation import to_orientation
from delineo.data.transforms import preprocess
from delineo.inference.predictor import Predictor, predict_probabilities
from delineo.machine import autocast_context, bf16_available
from delineo.models.registry import load_model
from delineo.training.losses import SegmentationLoss, deep_supervision_loss

pytestmark = pytest.mark.skipif(not bf16_available("cpu"), reason="this CPU has no native bf16 (oneDNN): training runs fp32")


@pytest.fixture(scope="module")
def hn_ct():
    return load_model("hn-ct", torch.device("cpu"))


def _ct_on_model_grid(bundle, real_data) -> torch.Tensor:
    """A real OpenKBP validation CT, brought to the model's orientation and grid: ``(1, X, Y, Z)``."""
    case = sorted((real_data("openkbp") / "validation").iterdir())[0]
    image, _ = to_orientation(read_image(case / "ct.nii.gz"), bundle.orientation)
    return preprocess(image.array[None], image.spacing_mm, bundle.preprocess)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, float(a.sum() + b.sum()))


def test_whole_volume_inference_bf16_matches_fp32(hn_ct, real_data):
    x = _ct_on_model_grid(hn_ct, real_data)
    assert min(x.shape[1:]) >= 100, x.shape  # the real inference shape, not a toy one
    fp32 = predict_probabilities(hn_ct.network, x[None], amp=False)[0]
    bf16 = predict_probabilities(hn_ct.network, x[None], amp=True)[0]
    assert torch.isfinite(bf16).all()
    assert float((fp32 - bf16).abs().mean()) < 2e-3
    for name, p32, p16 in zip(hn_ct.structures, fp32, bf16):
        m32, m16 = (p32 >= 0.5).numpy(), (p16 >= 0.5).numpy()
        if m32.sum() >= 50:  # structures this case has (PTV63 may be absent)
            assert _dice(m32, m16) >= 0.97, (name, _dice(m32, m16))


def test_predictor_default_on_the_body_box_matches_fp32(hn_ct, real_data):
    """What `delineo contour` runs by default (bf16, body box) against --fp32, on a whole real CT."""
    case = sorted((real_data("openkbp") / "validation").iterdir())[0]
    image = read_image(case / "ct.nii.gz")
    default, fp32 = Predictor(hn_ct, "cpu"), Predictor(hn_ct, "cpu", amp=False)
    assert default.amp and not fp32.amp  # hn-ct's model.json: precision bf16
    a, b = default.predict(image), fp32.predict(image)
    for name in hn_ct.structures:
        if b[name].sum() >= 50:
            assert _dice(a[name], b[name]) >= 0.97, (name, _dice(a[name], b[name]))


def test_training_step_gradients_bf16_match_fp32(hn_ct, real_data):
    """Batch 2 of 64^3 patches of a real CT with a contour-like label: the loss and every
    parameter's gradient agree between bf16 autocast and fp32 (cosine >= 0.95)."""
    x = _ct_on_model_grid(hn_ct, real_data)
    c = [s // 2 for s in x.shape[1:]]
    patch = x[:, c[0] - 40:c[0] + 24, c[1] - 32:c[1] + 32, c[2] - 32:c[2] + 32]
    batch = torch.stack([patch, torch.flip(patch, dims=[1])])  # (2, 1, 64, 64, 64)
    assert batch.shape == (2, 1, 64, 64, 64)
    with torch.no_grad():  # a plausible label: the fp32 network's own contours, slightly dilated
        label = (torch.sigmoid(hn_ct.network.eval()(batch)) > 0.3).to(torch.float32)
    present = torch.ones(2, label.shape[1], dtype=torch.bool)
    loss_fn = SegmentationLoss("dice_bce", batch_dice=True)
    net = hn_ct.network.train()
    grads, losses = [], []
    for amp in (False, True):
        net.zero_grad()
        with autocast_context("cpu", amp):
            loss = deep_supervision_loss(loss_fn, net(batch), label, present).mean()
        loss.backward()
        losses.append(float(loss))
        grads.append([p.grad.detach().flatten().clone() for p in net.parameters() if p.grad is not None])
    net.zero_grad()
    net.eval()
    assert abs(losses[0] - losses[1]) <= 0.02 * abs(losses[0]) + 1e-3, losses
    worst = min(float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)) for g32, g16 in zip(*grads) if g32.norm() > 0)
    assert worst >= 0.95, worst
