"""The CLI contract of the engine: train -> evaluate -> contour, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from delineo.cli import main


def _make_cases(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    zz, yy, xx = np.meshgrid(np.arange(16), np.arange(16), np.arange(16), indexing="ij")
    for i in range(n):
        c = rng.integers(6, 10, size=3)
        ball = ((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) <= 9
        ct = np.where(ball, 300, -800).astype(np.int16) + rng.integers(-20, 20, size=ball.shape).astype(np.int16)
        case = root / f"case{i}"
        (case / "segmentations").mkdir(parents=True)
        nib.save(nib.Nifti1Image(ct, affine), str(case / "ct.nii.gz"))
        nib.save(nib.Nifti1Image(ball.astype(np.uint8), affine), str(case / "segmentations" / "Ball.nii.gz"))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    data = _make_cases(tmp / "data")
    config = {
        "name": "tiny",
        "output": str(tmp / "model"),
        "work_dir": str(tmp / "run"),
        "data": {"train": str(data), "val_fraction": 0.25},
        "network": {"spatial_dims": 3, "channels": [4, 8, 16]},
        "preprocess": {"spacing_mm": [2.0, 2.0, 3.0], "intensity": {"kind": "window", "low": -1000, "high": 1000}},
        "postprocess": {"keep_largest": {"Ball": 1}},
        "training": {"epochs": 2, "batch_size": 2, "augment": "none", "lr": 0.01},
    }
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(cfg)]) == 0
    return tmp / "model", data


def test_train_writes_a_model_folder(trained):
    model, _ = trained
    meta = json.loads((model / "model.json").read_text())
    assert meta["structures"] == ["Ball"]
    assert meta["training"]["command"].startswith("delineo ") or meta["training"]["command"]
    assert (model / "weights.safetensors").is_file() and (model / "training_curves.png").is_file()


def test_evaluate_report_contract(trained, tmp_path):
    model, data = trained
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"model", "data", "structures", "cases", "seconds_per_case"}
    assert report["structures"]["Ball"]["n"] == 4
    assert {"dice", "hd95_mm", "n"} <= set(report["structures"]["Ball"])
    assert [c["case"] for c in report["cases"]] == [f"case{i}" for i in range(4)]
    assert (tmp_path / "r_dice.png").is_file()


def test_precision_switch_bf16_on_cpu(trained, tmp_path):
    """--bf16 runs the network under bfloat16 autocast (recorded in the report); the default on a
    CPU is fp32; the contours stay close to the fp32 ones."""
    model, data = trained
    reports = {}
    for flag in ([], ["--bf16"]):
        out = tmp_path / f"r{len(flag)}.json"
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(out), "--device", "cpu", *flag]) == 0
        reports[tuple(flag)] = json.loads(out.read_text())
    assert reports[()]["precision"] == "fp32" and reports[("--bf16",)]["precision"] == "bf16"
    assert abs(reports[()]["mean_dice"] - reports[("--bf16",)]["mean_dice"]) < 0.05
    out = tmp_path / "c"
    assert main(["contour", str(data / "case0" / "ct.nii.gz"), "-o", str(out), "--model", str(model), "--device", "cpu", "--bf16"]) == 0
    assert (out / "segmentations" / "Ball.nii.gz").is_file()


def test_overlap_is_recorded_and_a_bad_one_is_a_one_line_error(trained, tmp_path, capsys):
    """--overlap changes how the sliding window runs: the summary and the report say which was used
    (the model's 0.5 by default); an overlap of 1 or more, or one with saved contours, is refused."""
    model, data = trained
    meta = json.loads((model / "model.json").read_text())
    meta["inference"] = {**meta.get("inference", {}), "patch_size": [8, 8, 8]}  # a sliding window on the 16^3 cases
    shutil.copytree(model, tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    ct = str(data / "case0" / "ct.nii.gz")
    for flag, want in (([], 0.5), (["--overlap", "0.25"], 0.25)):
        out = tmp_path / f"c{len(flag)}"
        assert main(["contour", ct, "-o", str(out), "--model", str(tmp_path / "m"), "--device", "cpu", *flag]) == 0
        assert json.loads((out / "summary.json").read_text())["inference"] == {"precision": "fp32", "patch_size": [8, 8, 8], "overlap": want}
    r = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(data), "--out", str(r), "--device", "cpu", "--overlap", "0"]) == 0
    assert json.loads(r.read_text())["overlap"] == 0.0
    capsys.readouterr()
    assert main(["contour", ct, "-o", str(tmp_path / "bad"), "--model", str(tmp_path / "m"), "--overlap", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "overlap must be at least 0 and below 1, got 1" in err and len(err.splitlines()) == 1
    assert main(["evaluate", "--predictions", str(tmp_path), "--data", str(data), "--out", str(r), "--overlap", "0.25"]) == 2
    assert "--overlap runs a model" in capsys.readouterr().err


def test_evaluate_val_split_uses_recorded_cases(trained, tmp_path):
    model, data = trained
    out = tmp_path / "v.json"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(out), "--split", "val", "--model-card"]) == 0
    val_cases = json.loads((model / "model.json").read_text())["training"]["data"]["val_cases"]
    assert [c["case"] for c in json.loads(out.read_text())["cases"]] == val_cases
    assert "evaluated" in json.loads((model / "model.json").read_text())["validation"]


def test_contour_writes_masks_on_input_grid(trained, tmp_path):
    model, data = trained
    out = tmp_path / "out"
    assert main(["contour", str(data / "case0" / "ct.nii.gz"), "-o", str(out), "--model", str(model), "--device", "cpu"]) == 0
    ct = nib.load(str(data / "case0" / "ct.nii.gz"))
    mask = nib.load(str(out / "segmentations" / "Ball.nii.gz"))
    assert mask.shape == ct.shape and np.allclose(mask.affine, ct.affine)
    summary = json.loads((out / "summary.json").read_text())
    assert "volume_cc" in summary["structures"]["Ball"]
    assert (out / "overview.png").is_file()


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["contour", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing.nii.gz" in err and "does not exist" in err and "Traceback" not in err
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    assert main(["contour", str(bad), "-o", str(tmp_path / "o"), "--model", "nonexistent-model"]) == 2
    assert "bad.nii.gz" in capsys.readouterr().err


def test_unknown_model_names_the_bundled_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DELINEO_MODELS", str(tmp_path))
    img = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(img))
    assert main(["contour", str(img), "-o", str(tmp_path / "o"), "--model", "nope"]) == 2
    assert "no bundled model" in capsys.readouterr().err


def test_usage_error_is_not_a_crash(capsys):
    assert main(["contour"]) == 2  # missing INPUT: click's usage error, exit code 2
    assert "Traceback" not in capsys.readouterr().err


def test_ctrl_c_is_exit_code_130_not_success(tmp_path, monkeypatch):
    """An interrupted command must not look like a finished one to a script (typer returns 130)."""
    import delineo.experiments.ablation as ablation

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablation, "run_ablation", interrupted)
    assert main(["ablation", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "o")]) == 130


def test_bench_contour_reports_stages_and_slow_path(trained, tmp_path):
    model, data = trained
    out = tmp_path / "bench.json"
    rc = main(["bench-contour", str(data / "case0" / "ct.nii.gz"), "--model", str(model), "--device", "cpu",
               "--repeat", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["seconds"]) == {"read", "preprocess", "model", "postprocess", "write"}
    assert all(v >= 0 for v in report["seconds"].values()) and report["peak_rss_mb"] > 0
    assert report["slow_path"]["speedup_total"] > 0
    assert set(report["slow_path"]["dice_fast_vs_slow"]) == {"Ball"}


def test_evaluate_saved_contours_matches_the_model_run(trained, tmp_path):
    """contour each case to files, then score the files: the same Dice as evaluating the model directly."""
    model, data = trained
    preds = tmp_path / "preds"
    for case in sorted(p.name for p in data.iterdir()):
        assert main(["contour", str(data / case / "ct.nii.gz"), "-o", str(preds / case), "--model", str(model), "--device", "cpu"]) == 0
    assert main(["evaluate", "--predictions", str(preds), "--data", str(data), "-o", str(tmp_path / "saved.json")]) == 0
    assert main(["evaluate", "--model", str(model), "--data", str(data), "-o", str(tmp_path / "model.json"), "--device", "cpu"]) == 0
    saved = json.loads((tmp_path / "saved.json").read_text())
    direct = json.loads((tmp_path / "model.json").read_text())
    for a, b in zip(saved["cases"], direct["cases"]):
        assert a["case"] == b["case"] and a["Ball"]["dice"] == pytest.approx(b["Ball"]["dice"], abs=1e-6)


def test_evaluate_needs_a_model_or_predictions(tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path)]) == 2
    assert "--predictions" in capsys.readouterr().err


def test_an_unexpected_error_reaches_the_user_as_itself_and_an_abort_exits_1(monkeypatch):
    """main() tells a programming error from a click/typer one: the error itself propagates (it used
    to be replaced by an AttributeError from looking up click's Abort in typer's vendored click)."""
    import typer

    import delineo.cli as cli

    def boom(**_):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["models"])

    def abort(**_):
        raise typer.Abort()

    monkeypatch.setattr(cli, "app", abort)
    assert cli.main(["models"]) == 1
