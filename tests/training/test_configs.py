"""The training configs shipped in configs/ parse, and their network, loss, schedule and weighting build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from delineo.models.networks import NetworkSpec
from delineo.training import TrainConfig
from delineo.experiments.ablation import apply_overrides, load_ablation
from delineo.settings import read_yaml_mapping
from delineo.training.loop import _scheduler, build_training_parts

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# An ablation file (a base config and its steps) is told by its `steps` key, not by its name.
ABLATIONS = {p.name for p in CONFIGS.glob("*.yaml") if "steps" in read_yaml_mapping(p)}


def build(cfg: TrainConfig) -> None:
    n = len(cfg.data.structures)
    spec = NetworkSpec.from_dict({"spatial_dims": 2, "in_channels": 1, "out_channels": n, **cfg.network})
    network, weighting, loss_fn, optimizer = build_training_parts(cfg, spec, torch.device("cpu"), n_samples=4)
    # a campaign's schedule follows the CPU time it has spent (here none)
    _scheduler(cfg, optimizer, total_steps=10, steps_per_epoch=5, budget_used=(lambda: 0.0) if cfg.training.campaign else None)
    x = torch.zeros(1, 1, *([2 * spec.divisor] * spec.spatial_dims))
    out = network.eval()(x)
    assert (out[0] if isinstance(out, (list, tuple)) else out).shape[1] == n


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in ABLATIONS))
def test_training_config_builds(name):
    cfg = TrainConfig.from_yaml(CONFIGS / name)
    assert cfg.data.structures and cfg.name
    build(cfg)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_step_builds(name):
    base, steps = load_ablation(CONFIGS / name)
    cumulative = read_yaml_mapping(CONFIGS / name).get("cumulative", True)
    config = base
    for step in steps:
        config = apply_overrides(config if cumulative else base, step["set"])
        build(TrainConfig.from_dict(config, where=f"{name}: {step['name']}"))
