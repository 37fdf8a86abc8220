"""Ablation runner: cumulative overrides, train + evaluate each step, resume, summary files."""

from __future__ import annotations

import json

import pytest
import yaml

from delineo.cli import main
from delineo.errors import ConfigError, InputError
from delineo.experiments.ablation import apply_overrides, load_ablation, results_markdown, run_ablation, seed_spread

pytestmark = pytest.mark.slow


TWO_STEPS = [{"name": "U-Net", "set": {"training.loss": "bce"}}, {"name": "Res-UNet", "set": {"network.residual": True}}]


def write_ablation(tmp_path, tiny_config, image_dataset, steps: list[dict]) -> None:
    """``tmp_path/abl.yaml``: the given steps on a 1-epoch, 2-step base config (``base.yaml``)."""
    base = tiny_config(image_dataset.root, tmp_path / "unused", epochs=1, steps_per_epoch=2)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "steps": steps}))


def test_overrides_are_dotted_and_copied():
    base = {"training": {"loss": "dice"}, "network": {"channels": [4, 8]}}
    out = apply_overrides(base, {"training.loss": "bce", "network.residual": True})
    assert out == {"training": {"loss": "bce"}, "network": {"channels": [4, 8], "residual": True}}
    assert base["training"]["loss"] == "dice"
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides({"training": 3}, {"training.loss": "x"})


def test_seed_spread_is_reported_for_steps_with_two_seeds():
    rows = [{"step": "A", "seed": 3, "mean_dice": 0.48, "dice": {"PTV70": 0.5}, "n_val": 2},
            {"step": "B", "seed": 3, "mean_dice": 0.43, "dice": {"PTV70": 0.4}, "n_val": 2},
            {"step": "A", "seed": 4, "mean_dice": 0.45, "dice": {"PTV70": 0.5}, "n_val": 2, "extra_seed": True},
            {"step": "B", "seed": 4, "mean_dice": 0.47, "dice": {"PTV70": 0.4}, "n_val": 2, "extra_seed": True}]
    spread = seed_spread(rows)
    assert spread == {"A": {"mean_dice_by_seed": {"3": 0.48, "4": 0.45}, "spread": 0.03},
                      "B": {"mean_dice_by_seed": {"3": 0.43, "4": 0.47}, "spread": 0.04}}
    assert seed_spread(rows[:2]) == {}  # one seed each: nothing to report
    md = results_markdown({"steps": rows, "step_order": ["A", "B"], "seed_spread": spread})
    assert "A: 0.480 (seed 3), 0.450 (seed 4), spread 0.030" in md and "B: 0.430 (seed 3), 0.470 (seed 4), spread 0.040" in md
    # the second seed's row is compared with the step before trained with the same seed
    assert "| B (seed 4) | 0.400 | 0.470 | +0.020 |" in md and "| B | 0.400 | 0.430 | -0.050 |" in md


def test_bad_ablation_files(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("steps: []\n")
    with pytest.raises(InputError, match="base"):
        load_ablation(p)
    (tmp_path / "b.yaml").write_text("name: x\n")
    p.write_text("base: b.yaml\nsteps: [{name: a}, {name: A}]\n")
    with pytest.raises(InputError, match="same name"):
        load_ablation(p)


def test_ablation_trains_each_step_and_resumes(tmp_path, tiny_config, image_dataset):
    write_ablation(tmp_path, tiny_config, image_dataset, TWO_STEPS + [{"name": "+ Dice loss", "set": {"training.loss": "dice_bce"}}])
    out = tmp_path / "out"
    assert main(["ablation", str(tmp_path / "abl.yaml"), "--out", str(out), "--device", "cpu"]) in (0, None)
    res = json.loads((out / "results.json").read_text())
    steps = res["steps"]
    assert [s["step"] for s in steps] == ["U-Net", "Res-UNet", "+ Dice loss"]
    assert steps[0]["loss"] == "bce" and not steps[0]["network"]["residual"]
    assert steps[1]["network"]["residual"] and steps[2]["network"]["residual"] and steps[2]["loss"] == "dice_bce"
    assert all(0 <= s["mean_dice"] <= 1 and s["n_val"] == 2 for s in steps)
    md = (out / "results.md").read_text()
    assert "| + Dice loss |" in md and "Δ mean" in md and (out / "results.png").is_file()
    # a second call skips finished steps (no training)
    import delineo.experiments.ablation as abl

    def boom(*a, **k):
        raise AssertionError("retrained a finished step")

    orig = abl.train
    abl.train = boom
    try:
        assert main(["ablation", str(tmp_path / "abl.yaml"), "--out", str(out), "--device", "cpu"]) in (0, None)
    finally:
        abl.train = orig


def test_results_are_written_after_each_step_and_on_report_only(tmp_path, tiny_config, image_dataset, monkeypatch):
    write_ablation(tmp_path, tiny_config, image_dataset, TWO_STEPS)
    out = tmp_path / "out"
    assert main(["ablation", str(tmp_path / "abl.yaml"), "--out", str(out), "--report-only"]) in (0, None)
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == [] and res["not_run"] == ["U-Net", "Res-UNet"]

    import delineo.experiments.ablation as abl

    real_train, calls = abl.train, []

    def interrupted(*a, **k):  # the second step is cut off
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return real_train(*a, **k)

    monkeypatch.setattr(abl, "train", interrupted)
    with pytest.raises(RuntimeError, match="power cut"):
        run_ablation(tmp_path / "abl.yaml", out, device="cpu")
    res = json.loads((out / "results.json").read_text())
    assert [s["step"] for s in res["steps"]] == ["U-Net"] and res["not_run"] == ["Res-UNet"]
    assert "Not run yet: Res-UNet." in (out / "results.md").read_text()

    # finishing the last step writes the results once, not again at the end
    writes = []
    real_write = abl._write_results
    monkeypatch.setattr(abl, "_write_results", lambda *a, **k: writes.append(len(a[6])) or real_write(*a, **k))
    monkeypatch.setattr(abl, "train", real_train)
    res = run_ablation(tmp_path / "abl.yaml", out, device="cpu")
    assert writes == [2] and [s["step"] for s in res["steps"]] == ["U-Net", "Res-UNet"]
    writes.clear()
    run_ablation(tmp_path / "abl.yaml", out, device="cpu")  # nothing to train: written once at the end
    assert writes == [2]


def test_only_trains_the_named_steps_with_the_changes_before_them(tmp_path, tiny_config, image_dataset, capsys):
    write_ablation(tmp_path, tiny_config, image_dataset, TWO_STEPS)
    out = tmp_path / "out"
    assert main(["ablation", str(tmp_path / "abl.yaml"), "--out", str(out), "--device", "cpu", "--only", "Res-UNet"]) in (0, None)
    res = json.loads((out / "results.json").read_text())
    assert [s["step"] for s in res["steps"]] == ["Res-UNet"] and res["not_run"] == ["U-Net"]
    assert res["steps"][0]["loss"] == "bce" and res["steps"][0]["network"]["residual"]
    assert "| Res-UNet |" in (out / "results.md").read_text() and " | - |" in (out / "results.md").read_text()  # no Δ: U-Net not run
    assert main(["ablation", str(tmp_path / "abl.yaml"), "--out", str(out), "--only", "ResUNet"]) == 2
    assert "no step named 'ResUNet'" in capsys.readouterr().err


def test_cpu_budget_common_overrides_and_a_second_seed(tmp_path, tiny_config, image_dataset):
    base = tiny_config(image_dataset.root, tmp_path / "unused", epochs=1, steps_per_epoch=2, init_weights="no-such-model")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"base": "base.yaml", "budget_cpu_hours": 0.0002,  # 0.72 CPU-seconds: a few epochs
            "set": {"training.init_weights": None, "training.epochs": 200, "training.schedule": "poly"}, "steps": TWO_STEPS}
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    res = run_ablation(tmp_path / "abl.yaml", out, device="cpu")  # init_weights overridden: no bundled model is read
    assert res["budget_cpu_hours"] == 0.0002
    for s in res["steps"]:
        b = s["budget"]
        assert b["ended_by"] == "budget" and b["cpu_seconds_used"] >= 0.72 and 1 <= b["epochs_done"] < 200
        assert s["epochs"] == b["epochs_done"] and s["seed"] == 0
    md = (out / "results.md").read_text()
    assert "0.0002 CPU-hours" in md and "ended by budget" in md and "HD95" in md
    # learning curves on the budget's clock: validated at least where the budget ended
    curves = res["curves"]
    assert set(curves) == {"01-u-net", "02-res-unet"} and (out / "learning_curves.png").is_file()
    for c in curves.values():
        assert c["clock"] == "cpu" and c["cpu_hours"][-1] >= 0.0002 and c["cpu_hours"] == sorted(c["cpu_hours"])
        assert c["last_quarter_gain"] == round(c["mean_dice_model_grid"][-1] - next(
            d for h, d in zip(c["cpu_hours"], c["mean_dice_model_grid"]) if h >= 0.75 * c["cpu_hours"][-1]), 4)
    assert "Still climbing?" in md and "01-u-net:" in md
    # a second seed for one step, beside the first runs
    res = run_ablation(tmp_path / "abl.yaml", out, device="cpu", seed=7, only=["Res-UNet"], threads=2)
    assert [(s["step"], s["seed"]) for s in res["steps"]] == [("U-Net", 0), ("Res-UNet", 0), ("Res-UNet", 7)]
    assert res["steps"][2]["hardware"].endswith("torch 2 threads")  # --threads (the tests run torch on 1) reaches the step's training
    assert (out / "runs" / "02-res-unet-seed7" / "result.json").is_file() and res["not_run"] == []
    md = (out / "results.md").read_text()
    assert "| Res-UNet (seed 7) |" in md and set(res["seed_spread"]) == {"Res-UNet"}
    assert "Training seeds" in md and f"Res-UNet: {res['steps'][1]['mean_dice']:.3f} (seed 0), " in md
    # more budget: the finished steps are kept (a step is finished once evaluated)
    run_ablation(tmp_path / "abl.yaml", out, device="cpu", budget_cpu_hours=1.0, train_missing=False)


def test_budget_resumes_and_stops_where_it_was_spent(tmp_path, tiny_config, image_dataset):
    import delineo.training.loop as loop
    from delineo.training import TrainConfig

    cfg = TrainConfig.from_dict(tiny_config(image_dataset.root, tmp_path, epochs=500, steps_per_epoch=2, schedule="poly"))
    out = loop.train(cfg, budget_cpu_hours=0.0002)
    meta = json.loads((out / "model.json").read_text())
    done = meta["training"]["budget"]["epochs_done"]
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == done < 500 and hist[-1]["cpu_seconds"] >= 0.72 and "val_mean_dice" in hist[-1]
    assert hist[-1]["lr"] < cfg.training.lr * 0.9  # poly decayed over the budget, not over 500 epochs
    # run again with the same budget: nothing more to train
    loop.train(cfg, budget_cpu_hours=0.0002)
    assert len(json.loads((out / "history.json").read_text())) == done


def test_independent_steps_keep_weights_and_compare_with_the_base(tmp_path, tiny_config, image_dataset):
    """``cumulative: false``: each step's change on the base alone (a recipe comparison), Δ against
    the first step; ``keep_weights: true`` keeps each step's weights and checkpoint."""
    base = tiny_config(image_dataset.root, tmp_path / "unused", epochs=1, steps_per_epoch=2)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    steps = [{"name": "base", "set": {}}, {"name": "bce", "set": {"training.loss": "bce"}},
             {"name": "residual", "set": {"network.residual": True}}]
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "cumulative": False, "keep_weights": True, "steps": steps}))
    out = tmp_path / "out"
    assert main(["ablation", str(tmp_path / "abl.yaml"), "--out", str(out), "--device", "cpu"]) in (0, None)
    res = json.loads((out / "results.json").read_text())
    by = {s["step"]: s for s in res["steps"]}
    assert by["bce"]["loss"] == "bce" and not by["bce"]["network"].get("residual")
    assert by["residual"]["network"]["residual"] and by["residual"]["loss"] == base["training"].get("loss", "dice_bce")
    assert (out / "runs" / "03-residual" / "model" / "weights.safetensors").is_file()
    assert list((out / "runs" / "03-residual" / "work").glob("checkpoint.pt*"))
    md = (out / "results.md").read_text()
    assert "against the first step (base)" in md
    row = md.split("| residual |")[1].splitlines()[0]
    delta = float(row.strip().rstrip("|").split("|")[-1])
    assert delta == pytest.approx(by["residual"]["mean_dice"] - by["base"]["mean_dice"], abs=1.5e-3)


def test_a_campaign_step_stopped_on_request_is_resumed_not_skipped(tmp_path, tiny_config, image_dataset, monkeypatch):
    """A step with a campaign schedule stopped by SIGTERM (``make campaign-stop``) ends with its state
    saved and no result.json: the next run resumes it instead of counting it finished."""
    from delineo.training import campaign

    base = tiny_config(image_dataset.root, tmp_path / "unused", epochs=50, steps_per_epoch=2)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    state = tmp_path / "state"
    camp = {"cpu_hours": 1e-9, "warmup_cpu_hours": 0.0, "constant_until_cpu_hours": 1e-9, "state": str(state),
            "results": str(tmp_path / "curve")}
    spec = {"base": "base.yaml", "set": {"training.schedule": "campaign", "training.campaign": camp},
            "steps": [{"name": "A", "set": {}}]}
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    monkeypatch.setattr(campaign, "stop_requested", lambda: True)  # as if SIGTERM came during the first epoch
    run_ablation(tmp_path / "abl.yaml", out, device="cpu")
    assert json.loads((state / "state.json").read_text())["state"]["epoch"] == 1
    assert not (out / "runs" / "01-a" / "result.json").exists()
    monkeypatch.undo()
    res = run_ablation(tmp_path / "abl.yaml", out, device="cpu")
    assert (out / "runs" / "01-a" / "result.json").is_file() and [s["step"] for s in res["steps"]] == ["A"]
    assert json.loads((state / "state.json").read_text())["state"]["epoch"] == 1  # its budget was spent: resumed, nothing more
