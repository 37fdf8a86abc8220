"""The one training loop, end to end on tiny synthetic data (2D and 3D, a few steps each)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import delineo.training.loop as loop
import delineo.training.weighting as weighting_mod
from delineo.errors import ConfigError, DelineoError, InputError
from delineo.models.registry import load_model
from delineo.training.loop import PackedLabel
from delineo.training import SampleWeighting, TrainConfig, UniformWeighting, build_weighting, register_weighting, train

pytestmark = pytest.mark.slow


def weights(folder):
    return load_file(str(folder / "weights.safetensors"))


def without_timing(history: list[dict]) -> list[dict]:
    """A history without the wall-clock fields (steps/s, voxels/s, seconds), which differ run to run."""
    return [{k: v for k, v in h.items() if k not in ("steps_per_s", "voxels_per_s", "train_seconds")} for h in history]


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- configs ------------------------------------------------------------------------------------


def test_config_from_dict_and_yaml(tmp_path, tiny_config, image_dataset):
    d = tiny_config(image_dataset.root, tmp_path)
    cfg = TrainConfig.from_dict(d)
    assert cfg.training.epochs == 3 and cfg.training.batch_size == 2
    assert cfg.data.train == str(image_dataset.root)
    assert cfg.network == {"channels": [4, 8, 16]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    assert TrainConfig.from_yaml(path) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_config_expands_delineo_data(tmp_path, tiny_config, image_dataset, monkeypatch):
    monkeypatch.setenv("DELINEO_DATA", str(image_dataset.root.parent))
    d = tiny_config(image_dataset.root, tmp_path)
    d["data"]["train"] = "${DELINEO_DATA}/xray"
    d["data"]["val"] = "${DELINEO_DATA}/xray"
    cfg = TrainConfig.from_dict(d)
    assert cfg.data.train == str(image_dataset.root) == cfg.data.val


@pytest.mark.parametrize(
    "where, key",
    [(None, "epochz"), ("data", "trian"), ("training", "learning_rate")],
)
def test_unknown_setting_is_config_error(tmp_path, tiny_config, image_dataset, where, key):
    d = tiny_config(image_dataset.root, tmp_path)
    (d if where is None else d[where])[key] = 1
    with pytest.raises(ConfigError, match=key):
        TrainConfig.from_dict(d)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=key) as exc:
        TrainConfig.from_yaml(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("missing", ["name", "output", "data"])
def test_missing_required_setting(tmp_path, tiny_config, image_dataset, missing):
    d = tiny_config(image_dataset.root, tmp_path)
    del d[missing]
    with pytest.raises(ConfigError, match=missing):
        TrainConfig.from_dict(d)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(InputError, match="does not exist") as exc:
        TrainConfig.from_yaml(tmp_path / "none.yaml")
    assert exc.value.path == tmp_path / "none.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="YAML") as exc:
        TrainConfig.from_yaml(bad)
    assert exc.value.path == bad
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        TrainConfig.from_yaml(lst)


@pytest.mark.parametrize(
    "section, key, value, match",
    [
        ("training", "optimizer", "lbfgs", "optimizer"),
        ("training", "schedule", "exp", "schedule"),
        ("training", "loss", "focal", "loss"),
        ("training", "patch_size", [30, 30], "multiple"),
        ("network", "spatial_dims", 3, "spatial_dims"),
        ("training", "weighting", {"kind": "nope"}, "weighting"),
    ],
)
def test_unusable_config_is_config_error(tmp_path, tiny_config, image_dataset, section, key, value, match):
    d = tiny_config(image_dataset.root, tmp_path)
    d[section][key] = value
    with pytest.raises(ConfigError, match=match):
        train(TrainConfig.from_dict(d))


def test_unknown_network_key_is_config_error(tmp_path, tiny_config, image_dataset):
    d = tiny_config(image_dataset.root, tmp_path)
    d["network"]["depth"] = 4
    with pytest.raises(ConfigError, match="depth"):
        train(TrainConfig.from_dict(d))


def test_images_of_different_sizes_need_a_patch_size(tmp_path, tiny_config, image_dataset):
    from PIL import Image as PILImage

    case = image_dataset.cases[0]
    for p in (image_dataset.image_path(case), *(image_dataset.mask_path(case, s) for s in image_dataset.structures)):
        PILImage.fromarray(np.zeros((48, 32), np.uint8)).save(p)
    d = tiny_config(image_dataset.root, tmp_path)
    with pytest.raises(ConfigError, match="patch_size"):
        train(TrainConfig.from_dict(d))
    d["training"]["patch_size"] = [32, 32]
    d["training"]["epochs"] = 1
    assert (train(TrainConfig.from_dict(d)) / "model.json").is_file()


def test_single_case_dataset_is_a_clear_error(tmp_path, tiny_config, image_dataset):
    for case in image_dataset.cases[1:]:
        image_dataset.image_path(case).unlink()
    with pytest.raises(DelineoError):
        train(TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path, epochs=1)))


def test_validation_without_any_contours(tmp_path, tiny_config, image_dataset):
    import shutil

    val = tmp_path / "val"
    (val / "images").mkdir(parents=True)
    for case in image_dataset.cases[:2]:
        shutil.copy(image_dataset.image_path(case), val / "images")
    d = tiny_config(image_dataset.root, tmp_path, epochs=1)
    d["data"]["val"] = str(val)
    # nothing to select a model on: refused up front, naming the folder
    with pytest.raises(ConfigError, match="no validation case"):
        train(TrainConfig.from_dict(d))


# ---- weighting strategies ----------------------------------------------------------------------


class PairwiseDummy(SampleWeighting):
    """A strategy that needs two samples per batch; puts all weight on the largest loss."""

    min_batch_size = 2

    def __init__(self, in_channels, n_structures, spatial_dims, sharpness=1.0):
        super().__init__()
        self.seen = (in_channels, n_structures, spatial_dims, sharpness)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, image, label, present, loss):
        return torch.softmax(self.scale * loss.detach() * 100, 0)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(weighting_mod, "_STRATEGIES", dict(weighting_mod._STRATEGIES))
    register_weighting("pairwise_dummy", PairwiseDummy)


def test_build_weighting(registry):
    w = build_weighting(None, in_channels=3, n_structures=2, spatial_dims=2)
    assert isinstance(w, UniformWeighting)
    loss = torch.tensor([0.3, 0.1, 0.7, 0.2])
    torch.testing.assert_close(w(None, None, None, loss), torch.full((4,), 0.25))
    d = build_weighting({"kind": "pairwise_dummy", "sharpness": 2.0}, in_channels=3, n_structures=2, spatial_dims=2)
    assert d.seen == (3, 2, 2, 2.0)
    assert float(d(None, None, None, loss).detach().sum()) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="pairwise_dummy"):  # lists what is available
        build_weighting({"kind": "qam2"}, in_channels=3, n_structures=2, spatial_dims=2)


def test_batch_smaller_than_strategy_minimum(tmp_path, tiny_config, image_dataset, registry):
    d = tiny_config(image_dataset.root, tmp_path, batch_size=1, weighting={"kind": "pairwise_dummy"})
    with pytest.raises(ConfigError, match="batch_size"):
        train(TrainConfig.from_dict(d))
    d["training"]["batch_size"] = 2
    d["training"]["epochs"] = 1
    out = train(TrainConfig.from_dict(d))
    assert (out / "model.json").is_file()
    ckpt = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    assert "scale" in ckpt["weighting"]  # the strategy's own parameters are checkpointed


# ---- training runs -----------------------------------------------------------------------------


def test_train_2d_writes_model_folder(tmp_path, tiny_config, image_dataset):
    d = tiny_config(image_dataset.root, tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    out = train(path, command="pytest train")
    assert out == tmp_path / "model"
    for name in ("model.json", "weights.safetensors", "training_curves.png", "history.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "model.json").read_text())
    assert meta["structures"] == ["disc", "square"]
    assert meta["network"]["spatial_dims"] == 2 and meta["network"]["out_channels"] == 2
    assert meta["network"]["channels"] == [4, 8, 16]
    assert meta["preprocess"] == d["preprocess"] and meta["postprocess"] == d["postprocess"]
    assert meta["inference"]["threshold"] == 0.5
    tr = meta["training"]
    assert tr["command"] == "pytest train" and tr["seed"] == 0 and tr["epochs"] == 3
    assert tr["data"]["n_train"] == 6 and tr["data"]["n_val"] == 2 and len(tr["data"]["val_cases"]) == 2
    assert tr["config"] == TrainConfig.from_dict(d).to_dict()
    assert 1 <= tr["best_epoch"] <= 3
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(math.isfinite(h["loss"]) and len(h["val_dice"]) == 2 for h in history)
    best = max(h["val_mean_dice"] for h in history)
    assert meta["validation"]["mean_dice_model_grid"] == pytest.approx(best)
    assert (tmp_path / "work" / "checkpoint.pt").is_file()
    bundle = load_model(out)  # loads back
    assert bundle.structures == ["disc", "square"]


def test_tiny_model_learns(trained_2d):
    history = json.loads((trained_2d / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    assert max(h["val_mean_dice"] for h in history) > 0.6


def test_reproducible_with_same_seed(tmp_path, tiny_config, image_dataset):
    a = train(TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path / "a", epochs=2, augment="default")))
    b = train(TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path / "b", epochs=2, augment="default")))
    assert same_weights(a, b)
    ha, hb = (json.loads((x / "history.json").read_text()) for x in (a, b))
    assert without_timing(ha) == without_timing(hb)
    c = train(TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path / "c", epochs=2, augment="default", seed=1)))
    assert not same_weights(a, c)


def test_finished_run_is_not_retrained(tmp_path, tiny_config, image_dataset, monkeypatch, capsys):
    cfg = TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path, epochs=2))
    out = train(cfg)
    before = (out / "weights.safetensors").read_bytes()
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("training step run although the checkpoint is complete")

    monkeypatch.setattr(loop, "deep_supervision_loss", no_training)
    assert train(TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path, epochs=2))) == out
    assert (out / "weights.safetensors").read_bytes() == before
    assert json.loads((out / "history.json").read_text()) == history
    # a different config does not reuse the checkpoint; resume=False neither
    with pytest.raises(AssertionError, match="checkpoint is complete"):
        train(TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path, epochs=2, lr=0.02)))
    assert "is for a different config (training.lr: 0.01 -> 0.02): not used, starting afresh" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="checkpoint is complete"):
        train(cfg, resume=False)


def _interrupt_after_first_epoch(monkeypatch):
    """Make the second validation raise, i.e. stop after epoch 1's checkpoint is written."""
    original = loop.validate
    calls = {"n": 0}

    def validate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", validate)


def _resume_matches_uninterrupted(tmp_path, tiny_config, image_dataset, monkeypatch, augment):
    full = train(TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path / "full", epochs=3, augment=augment)))
    cfg = tiny_config(image_dataset.root, tmp_path / "cut", epochs=3, augment=augment)
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig.from_dict(cfg))
    assert torch.load(tmp_path / "cut" / "work" / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    resumed = train(TrainConfig.from_dict(cfg))
    h_full = json.loads((full / "history.json").read_text())
    h_resumed = json.loads((resumed / "history.json").read_text())
    assert [h["epoch"] for h in h_resumed] == [1, 2, 3]
    assert without_timing(h_resumed) == without_timing(h_full)
    assert same_weights(full, resumed)


def test_interrupted_run_resumes_exactly(tmp_path, tiny_config, image_dataset, monkeypatch):
    _resume_matches_uninterrupted(tmp_path, tiny_config, image_dataset, monkeypatch, "none")


def test_interrupted_run_with_augmentation_resumes_exactly(tmp_path, tiny_config, image_dataset, monkeypatch):
    _resume_matches_uninterrupted(tmp_path, tiny_config, image_dataset, monkeypatch, "default")


def test_label_noise_is_recorded(tmp_path, tiny_config, image_dataset):
    d = tiny_config(image_dataset.root, tmp_path, epochs=1, label_noise={"fraction": 0.5, "radius": [1, 2], "seed": 3})
    meta = json.loads((train(TrainConfig.from_dict(d)) / "model.json").read_text())
    records = meta["training"]["label_noise"]
    assert len(records) == 6
    assert sum(r["corrupted"] for r in records) == 3
    assert all(min(r["dice_vs_clean"]) < 1 for r in records if r["corrupted"])


def test_ignore_corrupted_leaves_only_clean_labels(tmp_path, tiny_config, image_dataset, monkeypatch):
    """The noise benchmark's oracle: corrupted samples reach the loss with no structure contoured."""
    import delineo.training.loop as loop

    seen: dict[str, list[bool]] = {}
    real_step = loop.training_step

    def spy(network, weighting, loss_fn, optimizer, batch, *args):
        for case, present in zip(batch["case"], batch["present"]):
            seen[case] = present.tolist()
        return real_step(network, weighting, loss_fn, optimizer, batch, *args)

    monkeypatch.setattr(loop, "training_step", spy)
    d = tiny_config(image_dataset.root, tmp_path, epochs=1,
                    label_noise={"fraction": 0.5, "radius": [1, 2], "seed": 3, "ignore_corrupted": True})
    meta = json.loads((train(TrainConfig.from_dict(d)) / "model.json").read_text())
    corrupted = {r["case"]: r["corrupted"] for r in meta["training"]["label_noise"]}
    assert set(seen) == set(corrupted) and sum(corrupted.values()) == 3
    for case, present in seen.items():
        assert any(present) != corrupted[case], case


def test_deep_supervision_and_residual_train(tmp_path, tiny_config, image_dataset):
    d = tiny_config(image_dataset.root, tmp_path, epochs=1, loss="dice", optimizer="sgd", schedule="poly")
    d["network"] = {"channels": [4, 8, 16, 16], "residual": True, "squeeze_excitation": True, "deep_supervision": True}
    out = train(TrainConfig.from_dict(d))
    assert load_model(out).spec.deep_supervision


def tiny_config_3d(data_root, out_root, *, data=None, network=None, preprocess=None, inference=None, **training) -> dict:
    """A 1-epoch config of a small 3D U-Net on the synthetic CT cases (window -200..400 HU, batch 2, CPU);
    the keyword sections are merged into the defaults, other keywords go to ``training``."""
    return {
        "name": "tiny3d",
        "output": str(out_root / "model"),
        "work_dir": str(out_root / "work"),
        "data": {"train": str(data_root), "val_fraction": 0.25, **(data or {})},
        "network": network or {"channels": [4, 8]},
        "preprocess": {"intensity": {"kind": "window", "low": -200, "high": 400}, **(preprocess or {})},
        "inference": inference or {},
        "training": {"epochs": 1, "batch_size": 2, "device": "cpu", **training},
    }


def test_train_3d_with_patches_and_missing_roi(tmp_path, case_dataset):
    d = tiny_config_3d(case_dataset.root, tmp_path, network={"channels": [4, 8, 16]}, inference={"patch_size": [16, 16, 16]},
                       epochs=2, patch_size=[16, 16, 16], lr=0.01, schedule="cosine_restarts", cycle_epochs=1, optimizer="adamw")
    out = train(TrainConfig.from_dict(d))
    meta = json.loads((out / "model.json").read_text())
    assert meta["structures"] == ["Ball", "Box"]
    assert meta["network"]["spatial_dims"] == 3
    assert meta["inference"]["patch_size"] == [16, 16, 16]
    data = meta["training"]["data"]
    assert data["n_train"] + data["n_val"] == 4 and data["n_val"] == 1
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2
    # validation Dice counts only contoured structures: a NaN would mean the missing Box leaked in
    for h in history:
        assert all(math.isfinite(v) for v in h["val_dice"])
    assert (out / "training_curves.png").is_file()


def test_train_3d_resampled_and_explicit_cases(tmp_path, case_dataset):
    d = tiny_config_3d(case_dataset.root, tmp_path, preprocess={"spacing_mm": [4.0, 4.0, 6.0]},
                       data={"train_cases": ["case00", "case01", "case03"], "val_fraction": 0.34, "structures": ["Box"]})
    out = train(TrainConfig.from_dict(d))
    meta = json.loads((out / "model.json").read_text())
    assert meta["structures"] == ["Box"]
    assert set(meta["training"]["data"]["val_cases"]) <= {"case00", "case01", "case03"}
    assert meta["training"]["data"]["n_train"] == 2


def _strict_json(path):
    def reject(token):
        raise ValueError(f"{path.name} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=reject)


def test_model_json_is_strict_json_when_val_lacks_a_structure(tmp_path, case_dataset):
    d = tiny_config_3d(case_dataset.root, tmp_path, data={"split_seed": 1})  # val = case03, which has no Box
    out = train(TrainConfig.from_dict(d))
    assert json.loads((out / "model.json").read_text())["training"]["data"]["val_cases"] == ["case03"]
    _strict_json(out / "history.json")
    _strict_json(out / "model.json")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_and_predict_on_cuda_with_amp(tmp_path, tiny_config, image_dataset):
    from delineo.data.io import read_image
    from delineo.inference.predictor import Predictor

    out = train(TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path, epochs=2, device="cuda", amp=True)))
    assert json.loads((out / "model.json").read_text())["training"]["device"].startswith("cuda")
    predictor = Predictor(str(out), "cuda")
    assert predictor.amp
    masks = predictor.predict(read_image(image_dataset.image_path(image_dataset.cases[0])))
    assert masks["disc"].shape == (32, 32)


def test_train_3d_with_batch_dice_foreground_patches_and_head_bias(tmp_path, case_dataset):
    d = tiny_config_3d(case_dataset.root, tmp_path, network={"channels": [4, 8, 16], "head_bias": -3.0}, steps_per_epoch=3,
                       patch_size=[16, 16, 16], foreground_oversample=1.0, batch_dice=True, loss="dice_bce")
    out = train(TrainConfig.from_dict(d))
    meta = json.loads((out / "model.json").read_text())
    assert meta["network"]["head_bias"] == -3.0
    assert meta["training"]["config"]["training"]["batch_dice"] is True


def test_foreground_oversampling_centres_patches_on_structures():
    import torch

    from delineo.data.transforms import training_augmentation

    label = torch.zeros(1, 64, 64, 64, dtype=torch.uint8)
    label[0, 50:54, 50:54, 50:54] = 1  # a small structure in one corner
    image = torch.zeros(1, 64, 64, 64)
    fg = training_augmentation(3, [16, 16, 16], "none", foreground=1.0)
    fg.set_random_state(seed=0)
    hits = 0
    for _ in range(10):
        out = fg({"image": image, "label": label})
        out = out[0] if isinstance(out, list) else out
        assert tuple(out["image"].shape) == (1, 16, 16, 16)
        hits += int(out["label"].sum() > 0)
    assert hits == 10  # every patch holds some of the structure (random crops would rarely)


def test_batch_dice_needs_uniform_weighting(tmp_path, tiny_config, image_dataset):
    d = tiny_config(image_dataset.root, tmp_path, batch_dice=True, weighting={"kind": "qam"})
    with pytest.raises(ConfigError, match="batch_dice"):
        train(TrainConfig.from_dict(d))


def test_init_weights_starts_from_a_trained_model(tmp_path, tiny_config, image_dataset, trained_2d):
    """training.init_weights loads the weights (lr 0 keeps them) and the model card records the source."""
    cfg = tiny_config(image_dataset.root, tmp_path / "ft", epochs=1, steps_per_epoch=2, lr=0.0, init_weights=str(trained_2d))
    out = train(TrainConfig.from_dict(cfg))
    start, result = load_file(str(trained_2d / "weights.safetensors")), load_file(str(out / "weights.safetensors"))
    assert all(torch.equal(start[k], result[k]) for k in start)
    init = json.loads((out / "model.json").read_text())["training"]["init_weights"]
    assert init["model"] == str(trained_2d) and len(init["weights_sha256"]) == 64 and init["epochs"] == 6

    # deep supervision added to a model trained without it: its layers load, the auxiliary heads start fresh
    cfg = tiny_config(image_dataset.root, tmp_path / "ds", epochs=1, steps_per_epoch=2, lr=0.0, init_weights=str(trained_2d))
    cfg["network"] = {**cfg.get("network", {}), "deep_supervision": True}
    result = load_file(str(train(TrainConfig.from_dict(cfg)) / "weights.safetensors"))
    assert all(torch.equal(start[k], result[k]) for k in start)
    assert any(k.startswith("aux_heads.") for k in result) and not any(k.startswith("aux_heads.") for k in start)

    cfg = tiny_config(image_dataset.root, tmp_path / "bad", epochs=1, init_weights=str(trained_2d))
    cfg["network"] = {"channels": [4, 8, 32]}
    with pytest.raises(ConfigError, match="init_weights .* do not fit"):
        train(TrainConfig.from_dict(cfg))
    cfg = tiny_config(image_dataset.root, tmp_path / "missing", epochs=1, init_weights=str(tmp_path / "nowhere"))
    with pytest.raises(InputError):
        train(TrainConfig.from_dict(cfg))


class ConstantLogits(torch.nn.Module):
    """A stand-in network: the same logit everywhere, for every structure."""

    def __init__(self, logit: float, n: int = 2):
        super().__init__()
        self.logit, self.n = logit, n
        self.spec = type("Spec", (), {"divisor": 1})()

    def forward(self, x):
        return torch.full((x.shape[0], self.n, *x.shape[2:]), self.logit)


def test_case_agreement_hard_and_soft_dice():
    from delineo.training.loop import case_agreement

    label = torch.zeros(2, 8, 8, dtype=torch.uint8)
    label[0] = 1  # structure 0 fills the image, structure 1 is empty (e.g. eroded away)
    cases = type("Cases", (), {"items": [{"image": torch.zeros(1, 8, 8), "label": PackedLabel.of(label), "present": torch.tensor([True, True]),
                                          "spacing_mm": (1.0, 1.0)}]})()
    args = ({}, torch.device("cpu"), False)
    hard, present = case_agreement(ConstantLogits(0.0), cases, *args)  # p = 0.5: predicted everywhere
    assert present.tolist() == [[True, True]]
    torch.testing.assert_close(hard, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    soft, _ = case_agreement(ConstantLogits(0.0), cases, *args, "soft_dice")  # 2 * 32 / (32 + 64)
    torch.testing.assert_close(soft, torch.tensor([[2 / 3, 0.0]], dtype=torch.float64))
    # an undecided network (p = 0.27 everywhere) predicts nothing: hard Dice rates the empty label
    # perfect and the full one 0; the soft Dice of the empty label stays 0
    hard, _ = case_agreement(ConstantLogits(-1.0), cases, *args)
    torch.testing.assert_close(hard, torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    soft, _ = case_agreement(ConstantLogits(-1.0), cases, *args, "soft_dice")
    assert float(soft[0, 1]) == 0.0 and 0.4 < float(soft[0, 0]) < 0.45
    with pytest.raises(ValueError, match="surface_dice"):
        case_agreement(ConstantLogits(0.0), cases, *args, "surface_dice")


def test_case_agreement_passes_each_case_s_voxel_size_to_the_surface_measure():
    from delineo.training.loop import case_agreement

    label = torch.zeros(1, 16, 16, dtype=torch.uint8)
    label[0, 4:12, 4:12] = 1  # the network (p = 0.5 everywhere) predicts the whole image: 4 px beyond the label on average
    items = [{"image": torch.zeros(1, 16, 16), "label": PackedLabel.of(label), "present": torch.tensor([True]), "spacing_mm": (v, v)} for v in (1.0, 2.0)]
    s, _ = case_agreement(ConstantLogits(0.0, n=1), type("Cases", (), {"items": items})(), {}, torch.device("cpu"), False, "surface")
    assert float(s[0, 0]) - float(s[1, 0]) == pytest.approx(np.log(2.0))  # twice the distance in mm
