"""The U-Net family: 2D/3D, plain/residual/SE, deep supervision."""

from __future__ import annotations

import pytest
import torch

from delineo.models.networks import NetworkSpec, SegUNet, build_network, count_parameters


def test_seed_baseline_defaults():
    spec = NetworkSpec()
    assert spec.channels == [16, 32, 64, 96, 128]
    assert spec.divisor == 16
    assert (spec.residual, spec.squeeze_excitation, spec.deep_supervision) == (False, False, False)
    assert spec.norm == "instance"
    assert NetworkSpec().channels is not spec.channels  # no shared mutable default


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("residual, se", [(False, False), (True, False), (True, True), (False, True)])
def test_output_shapes(dims, residual, se):
    spec = NetworkSpec(spatial_dims=dims, out_channels=3, channels=[4, 8, 16], residual=residual, squeeze_excitation=se)
    net = build_network(spec)
    shape = (16,) * dims
    x = torch.rand(2, 1, *shape)
    net.train()
    assert tuple(net(x).shape) == (2, 3, *shape)
    net.eval()
    with torch.no_grad():
        assert tuple(net(x).shape) == (2, 3, *shape)


def test_variants_differ_in_parameters():
    base = dict(spatial_dims=2, channels=[4, 8, 16])
    n_plain = count_parameters(build_network(base))
    n_res = count_parameters(build_network({**base, "residual": True}))
    n_se = count_parameters(build_network({**base, "residual": True, "squeeze_excitation": True}))
    assert n_plain < n_res < n_se


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels, n_outputs", [([4, 8, 16], 2), ([4, 8, 16, 32], 3), ([4, 8, 8, 8, 8, 8], 4)])
def test_deep_supervision(dims, channels, n_outputs):
    spec = NetworkSpec(spatial_dims=dims, out_channels=2, channels=channels, deep_supervision=True)
    net = SegUNet(spec)
    side = 2 * spec.divisor  # the bottom level must have more than one voxel (instance norm)
    x = torch.rand(1, 1, *(side,) * dims)
    net.train()
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == n_outputs  # full + at most 3 auxiliary heads
    for k, o in enumerate(outs):
        assert tuple(o.shape) == (1, 2, *(side // 2**k,) * dims)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (1, 2, *(side,) * dims)


def test_deep_supervision_off_returns_tensor_in_train_mode():
    net = SegUNet(NetworkSpec(channels=[4, 8, 16]))
    net.train()
    assert isinstance(net(torch.rand(1, 1, 8, 8)), torch.Tensor)


def test_backward_pass():
    net = SegUNet(NetworkSpec(spatial_dims=3, channels=[4, 8, 16], residual=True, squeeze_excitation=True, deep_supervision=True))
    outs = net(torch.rand(2, 1, 8, 8, 8))
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_from_dict_round_trip_and_unknown_keys():
    spec = NetworkSpec(spatial_dims=3, out_channels=4, channels=[4, 8], residual=True, dropout=0.1)
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="chanels"):
        NetworkSpec.from_dict({"chanels": [4, 8]})
    with pytest.raises(ValueError, match="unknown network settings"):
        build_network({"spatial_dims": 2, "depth": 5})


def test_needs_two_levels():
    with pytest.raises(ValueError, match="2 resolution levels"):
        SegUNet(NetworkSpec(channels=[8]))
