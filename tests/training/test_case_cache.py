"""The preprocessed-case cache of long runs: the same items as preprocessing afresh, and a change
of files or preprocessing misses."""

from __future__ import annotations

import os

import numpy as np
import torch

from delineo.data.datasets import open_dataset
from delineo.training.loop import PreparedCases

SPEC = {"orientation": "LPI", "spacing_mm": [3.0, 3.0, 3.0], "intensity": {"kind": "window", "low": -200, "high": 400}}


def test_cached_items_equal_fresh_ones_and_changes_miss(case_dataset, tmp_path):
    ds = open_dataset(case_dataset.root, orientation="LPI")
    cache = tmp_path / "cache"
    fresh = PreparedCases(ds, SPEC, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == len(ds)
    again = PreparedCases(ds, SPEC, cache_dir=cache)
    for a, b in zip(fresh.items, again.items):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"].tensor(), b["label"].tensor())
        assert a["label"].tensor().dtype == torch.uint8 and a["label"].tensor().shape[0] == len(ds.structures)
        assert torch.equal(a["present"], b["present"]) and a["case"] == b["case"]
        assert np.allclose(a["spacing_mm"], b["spacing_mm"])
    # what the training loop reads: the masks unpacked, equal to preprocessing them afresh
    from delineo.data.transforms import preprocess_labels

    first = ds[0]
    assert torch.equal(again[0]["label"], preprocess_labels(first["label"], first["spacing_mm"], SPEC))
    # another preprocessing, or a file that changed, is not served from the cache
    PreparedCases(ds, {**SPEC, "spacing_mm": [2.0, 2.0, 2.0]}, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2 * len(ds)
    ct = case_dataset.ct_path(case_dataset.cases[0])
    os.utime(ct, ns=(ct.stat().st_atime_ns, ct.stat().st_mtime_ns + 10**9))
    PreparedCases(ds, SPEC, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2 * len(ds) + 1


def test_a_named_cache_folder_is_shared_by_runs(tmp_path, tiny_config, image_dataset):
    """``training.cache_cases: <folder>``: runs with other work folders read and write one cache."""
    from delineo.training.config import TrainConfig
    from delineo.training.loop import train

    shared = tmp_path / "shared-cases"
    for run in ("a", "b"):
        cfg = tiny_config(image_dataset.root, tmp_path / run, epochs=1, steps_per_epoch=1, cache_cases=str(shared))
        cfg["work_dir"] = str(tmp_path / f"work-{run}")
        train(TrainConfig.from_dict(cfg))
        assert not (tmp_path / f"work-{run}" / "cases").exists()
    # training and validation cases of one dataset, written once, read by the second run
    assert 0 < len(list(shared.glob("*.npz"))) <= len(image_dataset.cases)


def test_a_checkpoint_from_before_a_new_option_still_resumes():
    """An option added after a checkpoint was written (absent there, None now) is not a config change."""
    from delineo.training.loop import _config_changes

    saved = {"data": {"train": "x"}, "training": {"lr": 0.001}}
    assert not _config_changes(saved, {"data": {"train": "x", "exclude_contours": None}, "training": {"lr": 0.001}})
    assert _config_changes(saved, {"data": {"train": "x", "exclude_contours": {"audit": "a.csv"}}, "training": {"lr": 0.001}})
    assert _config_changes(saved, {"data": {"train": "x"}, "training": {"lr": 0.002}})


def test_a_config_change_is_named_by_its_setting():
    """What differs between a saved config and the current one is listed setting by setting (the
    campaign's resume note names them), nested keys joined by dots."""
    from delineo.training.loop import _config_changes

    saved = {"training": {"threads": 1, "lr": 0.0005, "campaign": {"cpu_hours": 20}}, "name": "hn"}
    now = {"training": {"threads": 2, "lr": 0.0005, "campaign": {"cpu_hours": 20}, "new_option": None}, "name": "hn"}
    assert _config_changes(saved, now) == ["training.threads: 1 -> 2"]
    assert _config_changes(saved, {**now, "name": "other", "network": {"deep_supervision": True}}) == [
        "name: 'hn' -> 'other'", "network: None -> {'deep_supervision': True}", "training.threads: 1 -> 2"]
    assert _config_changes(saved, saved) == []


def test_a_long_list_of_changes_is_cut_and_counted():
    from delineo.training.loop import _config_changes, _list_changes

    changes = _config_changes({f"k{i:02d}": 1 for i in range(11)}, {f"k{i:02d}": 2 for i in range(11)})
    assert _list_changes(changes).endswith("k07: 1 -> 2 (and 3 more)")
    assert _list_changes(changes[:2]) == "k00: 1 -> 2; k01: 1 -> 2"
