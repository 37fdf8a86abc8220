"""The noisy-label benchmark: grid of runs, clean-label evaluation, summary files, resume."""

from __future__ import annotations

import json

import pytest

import delineo.training.loop as loop
from delineo.cli import main
from delineo.cli import noise  # noqa: F401  (registers noise-benchmark)
from delineo.errors import ConfigError
from delineo.experiments import benchmark as bm

pytestmark = pytest.mark.slow


def base(tiny_config, image_dataset, tmp_path) -> dict:
    d = tiny_config(image_dataset.root, tmp_path / "unused", epochs=1, steps_per_epoch=2)
    d["training"]["weighting"] = None
    return d


def test_parsing():
    assert bm.parse_level("1-8") == (1, 8) and bm.parse_level(" 5 - 13 ") == (5, 13)
    for bad in ("8-1", "5", "a-b"):
        with pytest.raises(ConfigError, match="level"):
            bm.parse_level(bad)
    with pytest.raises(ConfigError, match="fraction"):
        bm.parse_fraction("1.5")
    m = bm.parse_method("qam:ocm_lambda=1+channels=[8,16]")
    assert m.training == {"weighting": {"kind": "qam", "ocm_lambda": 1, "channels": [8, 16]}}
    assert "ocm_lambda=1" in m.label
    assert bm.run_id(m, 0.75, (5, 13)) == "qam-ocm_lambda-1-channels-8-16-__a0.75__r5-13"
    assert bm.run_id(bm.parse_method("baseline"), None, None) == "baseline__clean"
    with pytest.raises(ConfigError, match="available"):
        bm.parse_method("coteach")
    with pytest.raises(ConfigError, match="no weighting"):
        bm.parse_method("nr_dice:gamma=2")
    assert set(bm.DEFAULT_METHODS) <= set(bm.METHODS)
    for name in bm.METHODS:  # the CLI help lists them all
        assert name in noise._METHODS_HELP


def test_make_config(tmp_path, tiny_config, image_dataset):
    b = base(tiny_config, image_dataset, tmp_path)
    cfg = bm.make_config(b, bm.parse_method("qam"), 0.5, (1, 8), data=image_dataset.root, run_dir=tmp_path / "r",
                         epochs=3, device="cpu", selection="last", noise_seed=None)
    t = cfg.training
    assert t.weighting == {"kind": "qam"} and t.epochs == 3 and t.val_every == 3
    assert t.label_noise == {"fraction": 0.5, "radius": [1, 8], "seed": 0}
    assert cfg.output == str(tmp_path / "r" / "model") and cfg.work_dir == str(tmp_path / "r" / "work")
    clean = bm.make_config(b, bm.parse_method("nr_dice"), None, None, data=image_dataset.root, run_dir=tmp_path / "c",
                           epochs=None, device=None, selection="best-val", noise_seed=7)
    assert clean.training.label_noise is None and clean.training.loss == "nr_dice" and clean.training.val_every == 1
    oracle = bm.make_config(b, bm.parse_method("oracle"), 0.75, (5, 13), data=image_dataset.root, run_dir=tmp_path / "o",
                            epochs=3, device="cpu", selection="last", noise_seed=None)
    assert oracle.training.label_noise == {"ignore_corrupted": True, "fraction": 0.75, "radius": [5, 13], "seed": 0}
    assert bm.METHODS["oracle"][1]["label_noise"] == {"ignore_corrupted": True}  # the table's template is not changed


def test_noise_benchmark_writes_results_and_resumes(tmp_path, tiny_config, image_dataset, monkeypatch):
    import yaml

    cfg_path = tmp_path / "base.yaml"
    cfg_path.write_text(yaml.safe_dump(base(tiny_config, image_dataset, tmp_path)))
    out = tmp_path / "bench"
    args = ["noise-benchmark", "--data", str(image_dataset.root), "--out", str(out), "--methods", "baseline,qam",
            "--fractions", "0.5", "--levels", "1-2", "--epochs", "1", "--device", "cpu", "--base-config", str(cfg_path)]
    calls = []
    real_train = loop.train
    monkeypatch.setattr(bm, "train", lambda *a, **k: calls.append(a[0].name) or real_train(*a, **k))
    monkeypatch.setattr(bm, "DEFAULT_KEEP", ((0.5, (1, 2)),))  # keep this grid's noisy runs, as for 0.75 / 5-13
    assert main(args) == 0
    assert len(calls) == 4  # 2 methods x (clean + 1 condition)
    results = json.loads((out / "results.json").read_text())
    assert {r["run"] for r in results["runs"]} == {"baseline__clean", "qam__clean", "baseline__a0.5__r1-2", "qam__a0.5__r1-2"}
    assert results["structures"] == ["disc", "square"]
    assert "validation cases held out" in results["test"]["description"]
    for r in results["runs"]:
        assert set(r["dice"]) == {"disc", "square"} and 0 <= r["avg"] <= 1 and r["n_test"] == 2
        assert r["epochs"] == 1 and r["seconds_per_epoch"] >= 0
        run = out / "runs" / r["run"]
        assert (run / "model" / "model.json").is_file() and (run / "evaluation.json").is_file()
        kept = r["fraction"] == 0.5
        assert (run / "model" / "weights.safetensors").is_file() == kept
        assert (run / "work" / "checkpoint.pt").is_file() == kept
        assert (r["model"] is not None) == kept
    noisy = [r for r in results["runs"] if r["fraction"] == 0.5]
    assert all(r["noise"]["n_corrupted"] == 3 and r["noise"]["n_train"] == 6 for r in noisy)
    cost = results["cost_per_epoch"]
    assert set(cost) == {"baseline", "qam"} and cost["qam"]["seconds_per_epoch"] >= 0
    rows = [{"method": m, "fraction": None, "level": None, "seconds_per_epoch": s, "hardware": "cpu"} for m, s in [("baseline", 2.0), ("qam", 3.0)]]
    assert bm.cost_per_epoch(rows)["qam"]["relative_to_baseline"] == pytest.approx(1.5)
    md = (out / "results.md").read_text()
    assert "| noise | level | method | disc | square | avg |" in md
    assert "| none | - | baseline |" in md and "| 50% | 1-2 | QAM+OCM |" in md
    assert (out / "results.png").stat().st_size > 1000

    # a second call trains nothing and reproduces the files; a wider grid only trains what is new
    before = (out / "results.json").read_text()
    calls.clear()
    assert main(args) == 0
    assert calls == []
    assert json.loads((out / "results.json").read_text())["runs"] == json.loads(before)["runs"]
    (out / "runs" / "qam__clean" / "result.json").unlink()  # as if interrupted after training
    assert main(args) == 0
    assert calls == ["noise-qam__clean"]
    # a method added on noisy labels only: one new run; the table keeps the earlier clean rows
    calls.clear()
    wider = [*args, "--clean-methods", "baseline,qam"]
    wider[wider.index("baseline,qam")] = "baseline,qam,nr_dice"
    assert main(wider) == 0
    assert calls == ["noise-nr_dice__a0.5__r1-2"]
    results = json.loads((out / "results.json").read_text())
    assert results["clean"] == ["baseline", "qam"] and len(results["runs"]) == 5
    assert "| 50% | 1-2 | noise-robust Dice |" in (out / "results.md").read_text()
    # a narrower sitting (one method, no clean runs) trains nothing; its report still lists every finished run
    calls.clear()
    narrow = [*args, "--no-clean"]
    narrow[narrow.index("baseline,qam")] = "baseline"
    assert main(narrow) == 0
    assert calls == []
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 5 and results["clean"] == ["baseline", "qam"]
    assert [m["method"] for m in results["methods"]] == ["baseline", "qam", "nr_dice"]  # METHODS order
    assert "| 50% | 1-2 | noise-robust Dice |" in (out / "results.md").read_text()
    assert main([*args, "--clean-methods", "gce"]) == 2  # not among the methods run


def test_test_data_folder_and_bad_arguments(tmp_path, tiny_config, image_dataset):
    from conftest import write_image_dataset

    test = write_image_dataset(tmp_path / "test", n_cases=3, seed=5)
    res = bm.run_benchmark(image_dataset.root, tmp_path / "b", test_data=test.root, methods=["small_loss"], fractions=[],
                           levels=[], base_config=base(tiny_config, image_dataset, tmp_path), log=lambda m: None)
    (row,) = res["runs"]
    assert row["n_test"] == 3 and row["test_cases"] == test.cases and row["method"] == "small_loss"
    assert str(test.root) in res["test"]["description"]
    assert main(["noise-benchmark", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert main(["noise-benchmark", "--data", str(image_dataset.root), "--out", str(tmp_path / "x"), "--levels", "9-1"]) == 2
    assert main(["noise-benchmark", "--data", str(image_dataset.root), "--out", str(tmp_path / "x"), "--methods", "nope"]) == 2


def test_training_seed_and_noise_seed(tmp_path, tiny_config, image_dataset):
    out = tmp_path / "replicate"
    args = ["noise-benchmark", "--data", str(image_dataset.root), "--out", str(out), "--methods", "baseline", "--no-clean",
            "--fractions", "0.5", "--levels", "1-2", "--epochs", "1", "--device", "cpu", "--seed", "3", "--noise-seed", "0"]
    bm_base = tmp_path / "base.yaml"
    import yaml

    bm_base.write_text(yaml.safe_dump(base(tiny_config, image_dataset, tmp_path)))
    assert main([*args, "--base-config", str(bm_base)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 3 and results["noise_seed"] == 0
    assert results["runs"][0]["seed"] == 3 and results["runs"][0]["noise"]["seed"] == 0
    assert "training seed 3, label-noise seed 0." in (out / "results.md").read_text()
    meta = json.loads((out / "runs" / "baseline__a0.5__r1-2" / "model" / "model.json").read_text())
    cfg = meta["training"]["config"]["training"]
    assert cfg["seed"] == 3 and cfg["label_noise"]["seed"] == 0


def _write_results(folder, seed, runs, test_cases=("a", "b"), epochs=20):
    """A noise-benchmark output folder with finished runs: (method, fraction, avg, clavicle Dice)."""
    rows = []
    for method, fraction, avg, clav in runs:
        level = None if fraction is None else "5-13"
        rows.append({
            "run": bm.run_id(bm.parse_method(method), fraction, None if fraction is None else (5, 13)),
            "method": method, "label": bm.parse_method(method).label, "fraction": fraction, "level": level,
            "radius": None if fraction is None else [5, 13], "dice": {"lung": 0.9, "clavicle": clav}, "avg": avg,
            "test_cases": list(test_cases), "epochs": epochs, "noise": {"seed": 0},
        })
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"seed": seed, "noise_seed": 0, "runs": rows}))
    return folder


def test_replicate_summary_pools_seeds_and_pairs_with_the_baseline(tmp_path):
    s0 = _write_results(tmp_path / "s0", 0, [("baseline", 0.75, 0.70, 0.4), ("qam", 0.75, 0.78, 0.6), ("baseline", None, 0.92, 0.8)])
    s1 = _write_results(tmp_path / "s1", 1, [("baseline", 0.75, 0.80, 0.5), ("qam", 0.75, 0.79, 0.7)])
    s2 = _write_results(tmp_path / "s2", 2, [("baseline", 0.75, 0.75, 0.3), ("qam", 0.75, 0.80, 0.5)])
    summary = bm.replicate_summary([s0, s1, s2])
    rows = {(r["method"], r["fraction"]): r for r in summary["rows"]}
    assert [(r["method"], r["fraction"]) for r in summary["rows"]] == [("baseline", None), ("baseline", 0.75), ("qam", 0.75)]
    q = rows[("qam", 0.75)]
    assert q["seeds"] == [0, 1, 2] and q["avg_mean"] == pytest.approx(0.79)
    assert q["avg_sd"] == pytest.approx(0.01) and q["dice_mean"]["clavicle"] == pytest.approx(0.6)
    p = q["paired_vs_baseline"]
    assert p["diff_per_seed"] == pytest.approx([0.08, -0.01, 0.05]) and p["mean"] == pytest.approx(0.04)
    assert p["better"] == 2 and p["n"] == 3
    lo, hi = p["ci95"]  # t(0.975, 2) = 4.303; sd of the differences 0.0458
    assert lo == pytest.approx(0.04 - 4.303 * 0.04583 / 3 ** 0.5, abs=1e-3) and hi == pytest.approx(0.04 + 4.303 * 0.04583 / 3 ** 0.5, abs=1e-3)
    assert rows[("baseline", None)]["avg_sd"] is None and rows[("baseline", 0.75)]["paired_vs_baseline"] is None
    md = bm.replicate_markdown(summary)
    assert "| 75% | 5-13 | QAM+OCM | 3 | 0.900 | 0.600 | 0.790 ± 0.010 | 0: 0.780, 1: 0.790, 2: 0.800 | +0.040 [" in md
    assert "| 2/3 |" in md and "label-noise seed(s) 0" in md

    out = tmp_path / "summary"
    assert main(["noise-summary", str(s0), str(s1), str(s2), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["rows"] == json.loads(json.dumps(summary["rows"]))
    assert (out / "summary.md").read_text() == md


def test_replicate_summary_refuses_what_is_not_a_replicate(tmp_path):
    from delineo.errors import InputError

    s0 = _write_results(tmp_path / "s0", 0, [("baseline", 0.75, 0.70, 0.4)])
    again = _write_results(tmp_path / "again", 0, [("baseline", 0.75, 0.71, 0.4)])
    with pytest.raises(InputError, match="training seed 0 is also in"):
        bm.replicate_summary([s0, again])
    other = _write_results(tmp_path / "other", 1, [("baseline", 0.75, 0.7, 0.4)], test_cases=("c",))
    with pytest.raises(InputError, match="other cases or trained for other epochs"):
        bm.replicate_summary([s0, other])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no results.json"):
        bm.replicate_summary([s0, tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    with pytest.raises(InputError, match="not a noise-benchmark results file"):
        bm.replicate_summary([tmp_path / "bad"])
    assert main(["noise-summary", str(s0), str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_selection_record_counts_corrupted_labels_among_kept_and_dropped():
    noise = [{"case": c, "corrupted": c in ("b", "c")} for c in "abcd"]
    record = {"dropped_cases": ["c", "d"], "n_kept": 2, "n_train": 4, "selected_before_epoch": 11}
    assert bm._selection_record(record, noise) == {"n_kept": 2, "n_train": 4, "selected_before_epoch": 11,
                                                   "corrupted_among_kept": 1, "corrupted_among_dropped": 1}
    assert bm._selection_record(None, noise) is None
    assert bm._selection_record(record, []) == {"n_kept": 2, "n_train": 4, "selected_before_epoch": 11}
    row = {"run": "agreement__a0.5__r1-2", "method": "agreement", "label": "agreement selection", "fraction": 0.5, "level": "1-2",
           "radius": [1, 2], "dice": {"disc": 0.9}, "avg": 0.9, "selection": bm._selection_record(record, noise)}
    md = bm.results_markdown({"structures": ["disc"], "runs": [row], "methods": [{"method": "agreement", "label": "agreement selection"}],
                              "data": "d", "test": {"description": "t"}, "selection": "last", "epochs": 2, "base_config": "b", "seed": 0, "noise_seed": 0,
                              "cost_per_epoch": {}})
    assert "- agreement selection, 50%, 1-2 px: kept 2/4 from epoch 11: 1 of the kept and 1 of the dropped were corrupted\n" in md
    # a re-scoring selection lists every selection it made
    record["history"] = [{"selected_before_epoch": 6, "n_kept": 3}, {"selected_before_epoch": 11, "n_kept": 2}]
    row["selection"] = bm._selection_record(record, noise)
    assert row["selection"]["history"] == record["history"]
    md = bm.results_markdown({"structures": ["disc"], "runs": [row], "methods": [{"method": "agreement", "label": "agreement selection"}],
                              "data": "d", "test": {"description": "t"}, "selection": "last", "epochs": 2, "base_config": "b", "seed": 0, "noise_seed": 0,
                              "cost_per_epoch": {}})
    assert "were corrupted (kept at each selection: 3 from epoch 6, 2 from epoch 11)" in md


def test_clean_runs_leave_out_the_oracle():
    assert bm.clean_method_specs(["baseline", "oracle", "qam"], None) == ["baseline", "qam"]
    assert bm.clean_method_specs(["baseline", "oracle"], ["baseline"]) == ["baseline"]
    with pytest.raises(ConfigError, match="oracle differs from the baseline only on noisy labels"):
        bm.clean_method_specs(["baseline", "oracle"], ["oracle"])
    with pytest.raises(ConfigError, match="clean methods qam are not among"):
        bm.clean_method_specs(["baseline"], ["qam"])


def test_oracle_row_is_never_the_best_of_its_condition():
    def row(method, label, avg):
        return {"run": f"{method}__a0.75__r5-13", "method": method, "label": label, "fraction": 0.75, "level": "5-13",
                "radius": [5, 13], "dice": {"disc": avg}, "avg": avg}

    md = bm.results_markdown({"structures": ["disc"], "runs": [row("baseline", "baseline", 0.8), row("oracle", "oracle", 0.9)],
                              "methods": [{"method": "baseline", "label": "baseline"}, {"method": "oracle", "label": "oracle"}],
                              "data": "d", "test": {"description": "t"}, "selection": "last", "epochs": 2, "base_config": "b",
                              "seed": 0, "noise_seed": 0, "cost_per_epoch": {}})
    assert "| baseline | 0.800 | **0.800** |" in md and "| oracle | 0.900 | 0.900 |" in md
    assert "oracle rows are a reference" in md
    assert bm.is_reference("oracle") and not bm.is_reference("qam:ocm_lambda=0.5")


def test_plot_styles_are_distinct_and_fixed_per_method():
    """Every method keeps one style in every panel, and no two of more than ten methods share one
    (the report has eleven methods; matplotlib's default cycle repeats after ten and restarts per panel)."""
    methods = [f"m{i}" for i in range(13)]
    styles = bm.method_styles(methods)
    keys = {(s["color"], s["marker"], s["linestyle"]) for s in styles.values()}
    assert len(keys) == len(methods)
    assert bm.method_styles(methods[:3]) == {m: styles[m] for m in methods[:3]}
