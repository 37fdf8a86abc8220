"""The training campaign (issue 39): a schedule over the campaign's CPU hours, a tracked state that
another process resumes exactly, segments recorded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from delineo.errors import ConfigError, InputError
from delineo.training import campaign, loop
from delineo.training.config import TrainConfig
from delineo.training.loop import train
from conftest import write_case_dataset


def tiny_config_3d(data_root, out_root, **training) -> dict:
    """A small 3D U-Net on the synthetic CT cases (CPU); keywords go to ``training``."""
    return {
        "name": "tiny-campaign", "output": str(out_root / "model"), "work_dir": str(out_root / "work"),
        "data": {"train": str(data_root), "val_fraction": 0.25}, "network": {"channels": [4, 8, 16]},
        "preprocess": {"intensity": {"kind": "window", "low": -200, "high": 400}},
        "training": {"batch_size": 2, "device": "cpu", **training},
    }

SPEC = {"cpu_hours": 20, "warmup_cpu_hours": 0.25, "constant_until_cpu_hours": 16, "state": "s"}


def test_schedule_warms_up_holds_then_decays_to_zero():
    spec = campaign.campaign_spec(SPEC)
    assert campaign.lr_factor(0.0, spec) == pytest.approx(0.01)
    assert campaign.lr_factor(0.125, spec) == pytest.approx(0.505)
    assert campaign.lr_factor(0.25, spec) == campaign.lr_factor(10, spec) == campaign.lr_factor(15.99, spec) == 1.0
    assert campaign.lr_factor(18, spec) == pytest.approx(0.5)
    assert campaign.lr_factor(20, spec) == 0.0 and campaign.lr_factor(25, spec) == 0.0
    assert [campaign.phase(h, spec) for h in (0.1, 5, 17)] == ["warmup", "constant", "decay"]


def _history(dice_by_hour: dict[float, float | None]) -> dict:
    """A campaign ``state`` whose history validates (two structures) at the given CPU-hours; None: an
    epoch without validation."""
    return {"history": [{"epoch": 10 * (i + 1), "cpu_seconds": h * 3600, "lr": 5e-4,
                         **({} if d is None else {"val_dice": [d - 0.1, d + 0.1], "val_mean_dice": d})}
                        for i, (h, d) in enumerate(dice_by_hour.items())]}


def test_validation_points_name_the_structures_and_the_phase():
    spec = campaign.campaign_spec(SPEC)
    state = _history({0.1: 0.2, 5.0: None, 17.0: 0.6})
    pts = campaign.validation_points(state, ["PTV70", "Brainstem"], spec)
    assert [(p["epoch"], p["phase"], p["dice"]) for p in pts] == [
        (10, "warmup", {"PTV70": pytest.approx(0.1), "Brainstem": pytest.approx(0.3)}),
        (30, "decay", {"PTV70": pytest.approx(0.5), "Brainstem": pytest.approx(0.7)})]
    numbered = campaign.validation_points(state, None, since_epoch=10)  # a config that let the data name them; no spec
    assert [p["epoch"] for p in numbered] == [30] and list(numbered[0]["dice"]) == ["0", "1"] and "phase" not in numbered[0]


@pytest.mark.parametrize("curve, trend, best, flat", [
    # still rising across the last quarter (12.06-16 CPU-hours): +0.01 per CPU-hour
    ({10.0: 0.55, 12.5: 0.60, 13.5: 0.61, 14.5: 0.62, 15.5: 0.63}, 0.0394, 0.08, False),
    # a band around 0.62 before and inside it: flat
    ({10.0: 0.622, 12.5: 0.617, 13.5: 0.621, 14.5: 0.619, 15.5: 0.620}, None, -0.001, True),
    # the best inside far above the best before, though the line is level: not flat
    ({10.0: 0.60, 12.5: 0.62, 13.5: 0.61, 14.5: 0.61, 15.5: 0.62}, None, 0.02, False),
])
def test_the_last_quarter_of_the_constant_phase_is_judged_flat_only_below_0005(curve, trend, best, flat):
    spec = campaign.campaign_spec(SPEC)
    q = campaign.constant_phase_gain(campaign.validation_points(_history({**curve, 16.5: 0.7}), ["a", "b"], spec), spec)
    assert (q["from_cpu_hours"], q["to_cpu_hours"], q["validations"]) == (12.062, 16.0, 4)  # 16.5: decay, outside
    if trend is not None:
        assert q["trend_gain"] == pytest.approx(trend, abs=2e-3)
    else:
        assert abs(q["trend_gain"]) < 0.005
    assert q["best_gain"] == pytest.approx(best, abs=1e-4)
    assert q["flat"] is flat and q["complete"] is True
    assert campaign.constant_phase_gain(campaign.validation_points(_history({10.0: 0.6}), ["a", "b"], spec), spec) is None


@pytest.mark.parametrize("bad", [{"cpu_hours": 20}, {**SPEC, "constant_until_cpu_hours": 30}, {**SPEC, "decay": "step"}, {**SPEC, "x": 1}])
def test_bad_campaign_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        campaign.campaign_spec(bad)


def _config(tmp_path, data_root, hours=1.0):
    d = tiny_config_3d(
        data_root, tmp_path, epochs=100, steps_per_epoch=2, patch_size=[16, 16, 16],
        schedule="campaign", lr=0.01, val_every=2, threads=1, seed=5,
        campaign={"cpu_hours": hours, "warmup_cpu_hours": 0.0, "constant_until_cpu_hours": hours, "state": str(tmp_path / "state"),
                  "results": str(tmp_path / "results")},
    )
    return d


_RESUME = r"""
import json, sys
from delineo.training.config import TrainConfig
from delineo.training.loop import train
d = json.loads(open(sys.argv[1]).read())
train(TrainConfig.from_dict(d), resume=True)
"""


def _run_in_new_process(cfg_path):
    subprocess.run([sys.executable, "-c", _RESUME, str(cfg_path)], check=True, timeout=240, capture_output=True)


@pytest.mark.timeout(900)  # trains in this process and in fresh ones, each bounded at 240 s
def test_a_resumed_campaign_takes_the_same_next_steps_in_another_process(tmp_path):
    data = write_case_dataset(tmp_path / "cases")
    d = _config(tmp_path / "first", data.root)
    # first segment: 2 epochs, ended by a stop request after the second epoch (as make campaign-stop does)
    d["training"]["epochs"] = 2
    train(TrainConfig.from_dict(d))
    state_dir = tmp_path / "first" / "state"
    doc = json.loads((state_dir / "state.json").read_text())
    assert doc["state"]["epoch"] == 2 and len(doc["state"]["segments"]) == 1
    seg = doc["state"]["segments"][0]
    assert "CPU" in seg["hardware"] and seg["threads"] == 1 and seg["end_epoch"] == 2 and seg["precision"] in ("bf16", "fp32")
    for f in ("weights.safetensors", "moments.safetensors"):
        from safetensors.torch import load_file

        assert all(t.dtype in (torch.bfloat16, torch.int64, torch.float32) for t in load_file(str(state_dir / f)).values())
    assert not list(state_dir.glob("*.tmp"))

    # two copies of that committed state, each resumed by a fresh process on a fresh machine (no work_dir)
    histories = []
    for name in ("a", "b"):
        copy = tmp_path / name
        (copy / "state").mkdir(parents=True)
        for f in state_dir.iterdir():
            (copy / "state" / f.name).write_bytes(f.read_bytes())
        dd = _config(copy, data.root)
        dd["training"]["epochs"] = 4
        (copy / "cfg.json").write_text(json.dumps(dd))
        _run_in_new_process(copy / "cfg.json")
        out = json.loads((copy / "state" / "state.json").read_text())["state"]
        assert out["epoch"] == 4 and len(out["segments"]) == 2
        histories.append(out["history"])
    a, b = histories
    assert [h["loss"] for h in a[:2]] == [h["loss"] for h in doc["state"]["history"]]  # the first segment kept
    assert [h["loss"] for h in a[2:]] == [h["loss"] for h in b[2:]]  # the same next steps
    assert a[3]["val_dice"] == b[3]["val_dice"]
    curve = json.loads((tmp_path / "a" / "results" / "learning_curve.json").read_text())
    assert [p["epoch"] for p in curve["points"]] == [2, 4] and len(curve["segments"]) == 2


def test_the_campaign_ends_at_its_budget_and_a_resume_then_does_nothing(tmp_path, monkeypatch, capsys):
    data = write_case_dataset(tmp_path / "cases")
    d = _config(tmp_path, data.root, hours=1e-9)  # 3.6 microseconds: spent by the first epoch on any machine
    train(TrainConfig.from_dict(d))
    doc = json.loads((tmp_path / "state" / "state.json").read_text())
    assert doc["state"]["epoch"] == 1
    before = (tmp_path / "state" / "state.json").read_bytes()
    monkeypatch.setattr(loop, "_prepare_cases", lambda *a: pytest.fail("a complete campaign prepared its cases"))
    train(TrainConfig.from_dict(d))
    assert (tmp_path / "state" / "state.json").read_bytes() == before  # no new segment, nothing rewritten
    assert "the campaign is complete" in capsys.readouterr().err


def _saved_state(folder, seed: int):
    """A state of a tiny network after one Adam step, written by save_state."""
    torch.manual_seed(seed)
    net = torch.nn.Conv3d(1, 2, 3)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    net(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    opt.step()
    campaign.save_state(folder, net, opt, {"epoch": seed, "cpu_seconds": 3600.0 * seed}, torch.Generator(), {"name": "t"})
    return net, opt


def test_a_state_whose_tensors_are_not_those_of_its_json_is_refused(tmp_path):
    """A copy taken between save_state's renames (new weights, old state.json) must not resume."""
    net, opt = _saved_state(tmp_path / "a", 1)
    _saved_state(tmp_path / "b", 2)
    assert campaign.check_state(tmp_path / "a") == []
    (tmp_path / "a" / campaign.WEIGHTS).write_bytes((tmp_path / "b" / campaign.WEIGHTS).read_bytes())
    problems = campaign.check_state(tmp_path / "a")
    assert len(problems) == 1 and campaign.WEIGHTS in problems[0] and "sha256" in problems[0]
    with pytest.raises(InputError, match="weights.safetensors: not the file state.json was saved with"):
        campaign.load_state(tmp_path / "a", net, opt, torch.Generator())
    (tmp_path / "a" / campaign.MOMENTS).unlink()
    assert "cannot be read" in campaign.check_state(tmp_path / "a")[0]


def test_a_state_loads_back_exactly_and_a_damaged_one_is_named(tmp_path):
    """load_state restores the bf16-rounded weights and the moments; a damaged tensor file in a state
    written before the checksums (nothing to compare) is an InputError naming the folder, not a crash."""
    net, opt = _saved_state(tmp_path / "a", 1)
    torch.manual_seed(9)
    net2 = torch.nn.Conv3d(1, 2, 3)
    opt2 = torch.optim.Adam(net2.parameters(), 1e-3)
    state, config = campaign.load_state(tmp_path / "a", net2, opt2, torch.Generator())
    assert state["epoch"] == 1 and config == {"name": "t"}
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p.detach().to(torch.bfloat16).float(), q.detach())
    m = opt2.state_dict()["state"][0]
    assert float(m["step"]) == 1.0 and m["exp_avg"].shape == net.weight.shape
    doc = json.loads((tmp_path / "a" / campaign.STATE).read_text())
    del doc["sha256"]
    (tmp_path / "a" / campaign.STATE).write_text(json.dumps(doc))
    (tmp_path / "a" / campaign.WEIGHTS).write_bytes(b"\xff" * 40)
    with pytest.raises(InputError, match="campaign state cannot be read") as err:
        campaign.load_state(tmp_path / "a", net2, opt2, torch.Generator())
    assert str(tmp_path / "a") in str(err.value)
    assert campaign.saved_cpu_seconds(tmp_path / "a") == doc["state"].get("cpu_seconds", 0.0)
    for damaged in ("{\"state\": {\"epoch\": 1", "[1, 2]"):  # cut off mid-write; not a state
        (tmp_path / "a" / campaign.STATE).write_text(damaged)
        with pytest.raises(InputError, match="campaign state cannot be read") as err:
            campaign.saved_cpu_seconds(tmp_path / "a")
        assert str(tmp_path / "a" / campaign.STATE) in str(err.value)


def test_campaign_commit_commits_the_staged_state_it_checked(tmp_path):
    """benchmarks/campaign_commit.py stages the folder, checks the staged files belong together and
    names the staged epoch; a staged mismatch is staged again and, if it stays, not committed."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "campaign_commit.py"
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True).stdout  # noqa: E731
    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    folder = tmp_path / "results"
    _saved_state(folder / "state", 2)
    run = lambda: subprocess.run([sys.executable, str(script), "--folder", "results", "--tries", "2"],  # noqa: E731
                                 cwd=tmp_path, capture_output=True, text=True)
    r = run()
    assert r.returncode == 0, r.stderr
    assert git("log", "--format=%s").strip() == "hn-ct campaign: state at epoch 2, 2.00 CPU-hours"
    _saved_state(tmp_path / "other", 3)
    (folder / "state" / campaign.MOMENTS).write_bytes((tmp_path / "other" / campaign.MOMENTS).read_bytes())
    r = run()
    assert r.returncode == 1 and "no consistent state after 2 tries" in r.stderr
    assert len(git("log", "--format=%s").splitlines()) == 1


def test_a_segment_stopped_before_its_first_validation_on_a_new_machine_ends_cleanly(tmp_path, monkeypatch):
    """make campaign-stop on a machine that resumed from the committed state and has not validated yet
    (no model folder there): the state is saved and train returns (it used to fail reading model.json)."""
    data = write_case_dataset(tmp_path / "cases")
    d = _config(tmp_path / "first", data.root)
    d["training"]["epochs"] = 2
    train(TrainConfig.from_dict(d))
    fresh = tmp_path / "fresh"
    (fresh / "state").mkdir(parents=True)
    for f in (tmp_path / "first" / "state").iterdir():
        (fresh / "state" / f.name).write_bytes(f.read_bytes())
    dd = _config(fresh, data.root)
    dd["training"]["val_every"] = 10
    monkeypatch.setattr(campaign, "stop_requested", lambda: True)  # as SIGTERM during the first epoch
    train(TrainConfig.from_dict(dd))
    assert json.loads((fresh / "state" / "state.json").read_text())["state"]["epoch"] == 3
    assert not (fresh / "model" / "model.json").exists()


def _candidate_module(tmp_path, monkeypatch):
    """benchmarks/campaign_candidate.py with its paths in ``tmp_path`` and delineo's commands recorded."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "campaign_candidate", Path(__file__).resolve().parents[2] / "benchmarks" / "campaign_candidate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(mod, "BUNDLED", tmp_path / "models" / "hn-ct")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(mod, "_delineo", lambda *a, **k: calls.append(a))
    return mod, calls


def _report(mean: float) -> dict:
    s = {"dice": mean, "surface_dice_voxel": 0.5, "hd95_mm": 9.0, "n": 33}
    return {"mean_dice": mean, "structures": {"PTV70": s, "Brainstem": s}, "unions": {"any PTV": s},
            "seconds_per_case": 3.0, "precision": "bf16", "cases": [{"case": "pt_1"}]}


@pytest.mark.parametrize("mean, wins", [(0.709, False), (0.711, True)])
def test_a_candidate_is_bundled_only_at_least_001_above_the_bundled_model(tmp_path, monkeypatch, mean, wins):
    """The bundling rule: evaluate's mean Dice >= the bundled model's recorded figure + 0.01; a win
    with --bundle replaces models/hn-ct (renamed, quality refitted, card recorded); every candidate
    is recorded with its decision."""
    mod, calls = _candidate_module(tmp_path, monkeypatch)
    bundled = tmp_path / "models" / "hn-ct"
    bundled.mkdir(parents=True)
    (bundled / "weights.safetensors").write_bytes(b"old")
    (bundled / "model.json").write_text(json.dumps({"name": "hn-ct", "validation": {
        "mean_dice_model_grid": 0.68, "evaluated": {**_report(0.70), "hardware": "CPU: x"}}}))
    (tmp_path / "results" / "state").mkdir(parents=True)
    segments = [{"index": 0, "hardware": "CPU: A", "threads": 1, "precision": "fp32", "start_epoch": 0, "start_cpu_hours": 0.0,
                 "end_epoch": 30, "end_cpu_hours": 1.5},
                {"index": 1, "hardware": "CPU: B", "threads": 2, "precision": "bf16", "start_epoch": 30, "start_cpu_hours": 1.5,
                 "end_epoch": 60, "end_cpu_hours": 2.5}]
    (tmp_path / "results" / "state" / "state.json").write_text(json.dumps({
        "config": {"training": {"steps_per_epoch": 100, "campaign": {"cpu_hours": 20}}},
        "state": {"history": [{"epoch": 50, "cpu_seconds": 7200.0, "lr": 5e-4}], "segments": segments}}))
    cand = tmp_path / "runs" / "hn-ct-campaign" / "model"
    cand.mkdir(parents=True)
    (cand / "weights.safetensors").write_bytes(b"new")
    (cand / "model.json").write_text(json.dumps({"name": "hn-ct-campaign", "training": {"best_epoch": 50},
                                                 "validation": {"mean_dice_model_grid": 0.69}}))
    report = tmp_path / "runs" / "campaign-candidates" / "epoch-50" / "evaluate" / "validation.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps(_report(mean)))  # scored already: the script does not evaluate again
    (tmp_path / "val").mkdir()
    monkeypatch.setattr(sys, "argv", ["x", "--model", str(cand), "--data", str(tmp_path / "val"), "--bundle"])
    mod.main()
    rec = json.loads((tmp_path / "results" / "candidates.json").read_text())
    assert [r["epoch"] for r in rec] == [50] and rec[0]["cpu_hours"] == 2.0 and "cases" not in rec[0]["evaluated"]
    assert rec[0]["decision"] == ("bundled" if wins else "kept the bundled model")
    table = (tmp_path / "results" / "candidates.md").read_text()
    assert f"**{mean:.3f}**" in table and ">= 0.710" in table
    assert (bundled / "weights.safetensors").read_bytes() == (b"new" if wins else b"old")
    if wins:
        card = json.loads((bundled / "model.json").read_text())
        assert card["name"] == "hn-ct"
        camp = card["training"]["campaign"]  # the segments up to the bundled epoch, the last one cut there
        assert camp["steps"] == 5000 and camp["cpu_hours"] == 2.0
        assert [(s["hardware"], s["epochs"], s["cpu_hours"]) for s in camp["segments"]] == [("A", [1, 30], 1.5), ("B", [31, 50], 0.5)]
        assert [c[0] for c in calls] == ["quality-fit", "evaluate"] and "--model-card" in calls[1]
        assert not (tmp_path / "models" / "hn-ct.old").exists()
        with pytest.raises(SystemExit, match="bundled already"):  # judged again against itself, it must not be undone
            mod.main()
    else:
        assert calls == []


@pytest.mark.timeout(600)
def test_a_cooldown_branch_anneals_a_copy_to_zero_and_leaves_the_campaign_alone(tmp_path, monkeypatch):
    """benchmarks/campaign_cooldown.py: the branch resumes a copy of the campaign's state, its
    learning rate falls from the peak to zero over the CPU-hours asked for, it writes its own model
    (the copied best is cleared), and the campaign's state is not touched."""
    import hashlib
    import importlib.util
    from pathlib import Path

    import yaml

    data = write_case_dataset(tmp_path / "cases")
    d = _config(tmp_path / "camp", data.root, hours=1.0)
    d["training"]["epochs"] = 2
    train(TrainConfig.from_dict(d))
    state = tmp_path / "camp" / "state"
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in state.iterdir()}
    start_h = json.loads((state / "state.json").read_text())["state"]["cpu_seconds"] / 3600
    d["training"]["epochs"] = 100
    (tmp_path / "camp.yaml").write_text(yaml.safe_dump(d))

    spec = importlib.util.spec_from_file_location(
        "campaign_cooldown", Path(__file__).resolve().parents[2] / "benchmarks" / "campaign_cooldown.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setattr(mod, "RUNS", tmp_path / "runs" / "campaign-cooldown")
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results")
    hours = 4e-4  # 1.4 CPU-seconds: a few of these tiny epochs
    monkeypatch.setattr(sys, "argv", ["x", "--config", str(tmp_path / "camp.yaml"), "--cpu-hours", str(hours)])
    mod.main()

    branch = tmp_path / "runs" / "campaign-cooldown" / "epoch-2"
    cfg = yaml.safe_load((branch / "config.yaml").read_text())
    camp = cfg["training"]["campaign"]
    assert camp["constant_until_cpu_hours"] == pytest.approx(start_h) and camp["cpu_hours"] == pytest.approx(start_h + hours)
    assert cfg["name"] == "hn-ct-cooldown-2" and cfg["network"] == d["network"] and cfg["data"] == d["data"]
    out = json.loads((branch / "state" / "state.json").read_text())["state"]
    new = out["history"][2:]
    assert len(new) >= 2 and out["cpu_seconds"] >= (start_h + hours) * 3600
    lrs = [h["lr"] for h in new]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] <= 0.01 and lrs[-1] < 0.01 * 0.5  # from the peak down towards zero
    assert len(out["segments"]) == 2
    assert json.loads((branch / "model" / "model.json").read_text())["training"]["best_epoch"] > 2
    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in state.iterdir()} == before
    summary = json.loads((tmp_path / "results" / "cooldowns.json").read_text())
    assert [r["run"] for r in summary] == ["hn-ct-cooldown-2"] and summary[0]["from_epoch"] == 2
    assert [v["epoch"] for v in summary[0]["validations"]] == [h["epoch"] for h in new if h.get("val_mean_dice") is not None]
    assert summary[0]["campaign_best_before"]["epoch"] == 2 and summary[0]["campaign_same_span"] == []
    assert "| branch | " in (tmp_path / "results" / "cooldowns.md").read_text()
    with pytest.raises(SystemExit, match="exists"):  # one branch per epoch: a second start is refused
        mod.main()


def test_a_cooldown_candidate_is_recorded_under_its_run_and_its_card_says_so(tmp_path, monkeypatch):
    """A branch's epoch is judged by the same rule, keyed by (run, epoch) beside the campaign's own
    epoch of the same number, with its CPU-hours from its own state; bundled, its card records the decay."""
    mod, calls = _candidate_module(tmp_path, monkeypatch)
    bundled = tmp_path / "models" / "hn-ct"
    bundled.mkdir(parents=True)
    (bundled / "model.json").write_text(json.dumps({"name": "hn-ct", "validation": {
        "mean_dice_model_grid": 0.68, "evaluated": {**_report(0.70), "hardware": "CPU: x"}}}))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "candidates.json").write_text(json.dumps([{  # the campaign's own epoch 60, judged before
        "epoch": 60, "cpu_hours": 3.0, "model_grid_mean": 0.69, "evaluated": _report(0.705), "threshold": 0.71,
        "decision": "kept the bundled model", "hardware": "A"}]))
    branch = tmp_path / "runs" / "campaign-cooldown" / "epoch-50"
    (branch / "state").mkdir(parents=True)
    (branch / "state" / "state.json").write_text(json.dumps({
        "config": {"training": {"steps_per_epoch": 100, "campaign": {"cpu_hours": 2.5, "constant_until_cpu_hours": 2.0}}},
        "state": {"history": [{"epoch": 60, "cpu_seconds": 9000.0, "lr": 1e-6}], "segments": [
            {"hardware": "CPU: A", "threads": 2, "precision": "bf16", "start_epoch": 0, "start_cpu_hours": 0.0, "end_epoch": 50, "end_cpu_hours": 2.0},
            {"hardware": "CPU: B", "threads": 1, "precision": "bf16", "start_epoch": 50, "start_cpu_hours": 2.0, "end_epoch": 60, "end_cpu_hours": 2.5}]}}))
    (branch / "model").mkdir()
    (branch / "model" / "weights.safetensors").write_bytes(b"cooled")
    (branch / "model" / "model.json").write_text(json.dumps({"name": "hn-ct-cooldown-50", "training": {"best_epoch": 60},
                                                            "validation": {"mean_dice_model_grid": 0.70}}))
    report = tmp_path / "runs" / "campaign-candidates" / "hn-ct-cooldown-50-epoch-60" / "evaluate" / "validation.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps(_report(0.72)))
    (tmp_path / "val").mkdir()
    monkeypatch.setattr(sys, "argv", ["x", "--model", str(branch / "model"), "--state", str(branch / "state"),
                                      "--data", str(tmp_path / "val"), "--bundle"])
    mod.main()
    rec = json.loads((tmp_path / "results" / "candidates.json").read_text())
    assert [(r.get("run"), r["epoch"]) for r in rec] == [(None, 60), ("hn-ct-cooldown-50", 60)]
    assert rec[1]["cpu_hours"] == 2.5 and rec[1]["decision"] == "bundled"
    assert "| 60 (hn-ct-cooldown-50) | 2.50 |" in (tmp_path / "results" / "candidates.md").read_text()
    card = json.loads((bundled / "model.json").read_text())["training"]["campaign"]
    assert card["cooldown"]["from_cpu_hours"] == 2.0 and card["cooldown"]["to_cpu_hours"] == 2.5
    assert [s["epochs"] for s in card["segments"]] == [[1, 50], [51, 60]]
    assert (bundled / "weights.safetensors").read_bytes() == b"cooled"
