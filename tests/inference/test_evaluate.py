"""evaluate(): the JSON report contract, presence-aware aggregation, the Dice box plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from delineo.errors import InputError
from delineo.inference.predictor import Predictor
from delineo.inference.evaluate import evaluate
from delineo.metrics.segmentation import dice, hd95
from delineo.models.networks import NetworkSpec, build_network
from delineo.models.registry import ModelBundle, save_model


class BallNet(nn.Module):
    """Channel "Ball": the normalised intensity above 0.5 (exactly the synthetic Ball with the
    window below); channel "Box": everything that is *not* the Ball (deliberately wrong)."""

    def __init__(self):
        super().__init__()
        self.spec = NetworkSpec(spatial_dims=3, out_channels=2, channels=[4, 8, 16])

    def forward(self, x):
        return torch.cat([(x - 0.5) * 40, (0.5 - x) * 40], dim=1)


@pytest.fixture
def predictor():
    meta = {"name": "ballnet", "structures": ["Ball", "Box"], "preprocess": {"intensity": {"kind": "window", "low": 150, "high": 300}}}
    return Predictor(ModelBundle(None, meta, BallNet()), "cpu")


def test_report_contract_and_values(tmp_path, shared_case_dataset, predictor):
    ds = shared_case_dataset
    out = tmp_path / "reports" / "eval.json"
    report = evaluate("ballnet", ds.root, out, predictor=predictor)
    assert out.is_file() and (tmp_path / "reports" / "eval_dice.png").is_file()
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(report))  # what is returned is what is written
    assert {"model", "data", "structures", "cases", "seconds_per_case"} <= set(on_disk)
    assert on_disk["model"] == "ballnet" and on_disk["data"] == str(ds.root)
    assert on_disk["seconds_per_case"] >= 0
    assert set(on_disk["structures"]) == {"Ball", "Box"}
    for name in ("Ball", "Box"):
        assert {"dice", "hd95_mm", "n"} <= set(on_disk["structures"][name])

    # Ball is segmented perfectly in every case
    ball = on_disk["structures"]["Ball"]
    assert ball["n"] == 4 and ball["dice"] == 1.0 and ball["hd95_mm"] == 0.0 and ball["n_distance_undefined"] == 0

    # Box is predicted as "not Ball": compute the expectation per case by hand, only where contoured
    box = on_disk["structures"]["Box"]
    assert box["n"] == 3  # case03 has no Box file
    expected = {c: dice(~ds.masks[c]["Ball"], ds.masks[c]["Box"]) for c in ds.cases if c != "case03"}
    assert box["dice"] == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
    expected_hd = [hd95(~ds.masks[c]["Ball"], ds.masks[c]["Box"], (2.0, 2.0, 3.0)) for c in expected]
    assert box["hd95_mm"] == pytest.approx(np.mean(expected_hd), abs=1e-4)

    assert [row["case"] for row in on_disk["cases"]] == ds.cases
    for row in on_disk["cases"]:
        assert {"dice", "hd95_mm"} <= set(row["Ball"])
        assert row["Ball"]["dice"] == 1.0
        if row["case"] == "case03":
            assert "Box" not in row  # not contoured: absent, not zero
        else:
            assert row["Box"]["dice"] == pytest.approx(expected[row["case"]], abs=1e-5)


def test_undefined_distances_are_null(tmp_path, shared_case_dataset, predictor):
    # threshold 1.01: nothing is predicted, so every distance is undefined
    empty = Predictor(predictor.bundle, "cpu", threshold=1.01)
    report = evaluate("x", shared_case_dataset.root, tmp_path / "r.json", predictor=empty)
    on_disk = json.loads((tmp_path / "r.json").read_text())  # valid JSON: no Infinity
    ball = on_disk["structures"]["Ball"]
    assert ball["dice"] == 0.0 and ball["hd95_mm"] is None and ball["n_distance_undefined"] == 4
    assert all(row["Ball"]["hd95_mm"] is None for row in on_disk["cases"])
    assert report["structures"]["Box"]["n_distance_undefined"] == 3


def test_case_subset_and_no_output_file(tmp_path, shared_case_dataset, predictor):
    report = evaluate("x", shared_case_dataset.root, None, predictor=predictor, cases=["case01", "case03"])
    assert [r["case"] for r in report["cases"]] == ["case01", "case03"]
    assert report["structures"]["Box"]["n"] == 1
    assert not list(tmp_path.iterdir())


def test_model_folder_with_no_matching_structures(tmp_path, shared_case_dataset):
    net = build_network(NetworkSpec(spatial_dims=3, out_channels=1, channels=[4, 8]))
    folder = save_model(tmp_path / "m", net, {"structures": ["Heart"]})
    with pytest.raises(InputError, match="Heart") as exc:
        evaluate(folder, shared_case_dataset.root, tmp_path / "r.json", device="cpu")
    assert exc.value.path == shared_case_dataset.root


def test_model_folder_and_extra_model_structures(tmp_path, shared_case_dataset):
    torch.manual_seed(0)
    net = build_network(NetworkSpec(spatial_dims=3, out_channels=3, channels=[4, 8, 16]))
    meta = {"structures": ["Ball", "Heart", "Box"], "preprocess": {"intensity": {"kind": "window", "low": -200, "high": 400}}}
    folder = save_model(tmp_path / "m", net, meta)
    out = tmp_path / "r.json"
    report = evaluate(str(folder), shared_case_dataset.root, out, device="cpu")
    assert report["model"] == str(folder)
    assert list(report["structures"]) == ["Ball", "Box"]  # Heart is not in the data
    for s in report["structures"].values():
        assert s["dice"] is None or 0 <= s["dice"] <= 1
    assert (tmp_path / "r_dice.png").stat().st_size > 1000


def test_evaluate_trained_2d(tmp_path, trained_2d, shared_image_dataset):
    report = evaluate(trained_2d, shared_image_dataset.root, tmp_path / "r.json", device="cpu")
    assert set(report["structures"]) == {"disc", "square"}
    assert report["structures"]["disc"]["n"] == len(shared_image_dataset.cases)
    assert report["mean_dice"] > 0.6
    assert math.isfinite(report["structures"]["square"]["hd95_mm"])


def _hand_dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_saved_predictions_are_scored_like_a_model(tmp_path, shared_case_dataset):
    """Another tool's contours on disk (<root>/<case>/segmentations/<ROI>.nii.gz): Ball shifted by one
    voxel, Box left out in one case (drawn empty: Dice 0 where the reference has it)."""
    import nibabel as nib

    ds = shared_case_dataset
    root = tmp_path / "other-tool"
    for case in ds.cases:
        folder = root / case / "segmentations"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.roll(ds.masks[case]["Ball"], 1, axis=0).astype(np.uint8), ds.affine), str(folder / "Ball.nii.gz"))
        if case != "case01":
            nib.save(nib.Nifti1Image(ds.masks[case]["Box"].astype(np.uint8), ds.affine), str(folder / "Box.nii.gz"))
    report = evaluate(None, ds.root, tmp_path / "r.json", predictions=root)
    by_case = {r["case"]: r for r in report["cases"]}
    for case in ds.cases:
        expected = _hand_dice(np.roll(ds.masks[case]["Ball"], 1, axis=0), ds.masks[case]["Ball"])
        assert by_case[case]["Ball"]["dice"] == pytest.approx(expected, abs=1e-6)
    assert by_case["case01"]["Box"]["dice"] == 0.0
    assert by_case["case00"]["Box"]["dice"] == 1.0
    assert "Box" not in by_case["case03"]  # no reference Box there: skipped, as for a model
    assert report["structures"]["Box"]["n"] == 3 and report["precision"].startswith("n/a")
    assert "quality" not in report


def test_saved_predictions_on_another_grid_name_the_file(tmp_path, shared_case_dataset):
    import nibabel as nib

    ds = shared_case_dataset
    root = tmp_path / "other-tool"
    for case in ds.cases:
        (root / case / "segmentations").mkdir(parents=True)
    flipped = ds.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])  # same world, other array order: not the case's grid
    bad = root / ds.cases[0] / "segmentations" / "Ball.nii.gz"
    nib.save(nib.Nifti1Image(ds.masks[ds.cases[0]]["Ball"][::-1].astype(np.uint8), flipped), str(bad))
    with pytest.raises(InputError, match="Ball.nii.gz"):
        evaluate(None, ds.root, None, predictions=root)
    with pytest.raises(InputError, match="no <case>/segmentations"):
        evaluate(None, ds.root, None, predictions=tmp_path / "other-tool" / ds.cases[1])


def test_unions_and_surface_dice_at_one_voxel(tmp_path, shared_case_dataset, predictor):
    """Ball + Box scored together ("both"): the predicted union (Ball | not Ball = everything) against
    the reference union, over the cases where either is contoured; surface Dice at one voxel (3 mm,
    the largest voxel dimension) reported beside the fixed tolerance, computed by hand here."""
    from delineo.metrics.segmentation import surface_dice

    ds = shared_case_dataset
    report = evaluate("ballnet", ds.root, None, predictor=predictor, unions={"both": ["Ball", "Box"]}, progress=False)
    assert set(report["structures"]) == {"Ball", "Box"}  # the union is not one of the model's structures
    both = report["unions"]["both"]
    assert both["members"] == ["Ball", "Box"] and both["n"] == 4
    ref = {c: ds.masks[c]["Ball"] | (ds.masks[c]["Box"] if c != "case03" else False) for c in ds.cases}  # case03: no Box file
    expected = [dice(np.ones_like(ref[c], bool), ref[c]) for c in ds.cases]
    assert both["dice"] == pytest.approx(np.mean(expected), abs=1e-5)
    box_voxel = [surface_dice(~ds.masks[c]["Ball"], ds.masks[c]["Box"], (2.0, 2.0, 3.0), 3.0) for c in ds.cases if c != "case03"]
    assert report["structures"]["Box"]["surface_dice_voxel"] == pytest.approx(np.mean(box_voxel), abs=1e-5)
    assert report["structures"]["Ball"]["surface_dice_voxel"] == 1.0
    with pytest.raises(InputError, match="Lung"):
        evaluate("ballnet", ds.root, None, predictor=predictor, unions={"x": ["Ball", "Lung"]}, progress=False)


def test_ptv_dose_levels_are_unioned_by_default(shared_case_dataset):
    meta = {"name": "ballnet", "structures": ["Ball", "Box"], "roi_types": {"Ball": "PTV", "Box": "PTV"},
            "preprocess": {"intensity": {"kind": "window", "low": 150, "high": 300}}}
    p = Predictor(ModelBundle(None, meta, BallNet()), "cpu")
    report = evaluate("ballnet", shared_case_dataset.root, None, predictor=p, progress=False)
    assert report["unions"]["any PTV"]["members"] == ["Ball", "Box"]


def test_organs_at_risk_mean_follows_the_roi_types(shared_case_dataset, predictor):
    """The organs-at-risk mean is over the structures of ROI type ORGAN, read from the model card
    (not guessed from names); a model with no target has none (its mean is mean_dice)."""
    meta = {"name": "ballnet", "structures": ["Ball", "Box"], "roi_types": {"Ball": "ptv"},  # Box: ORGAN by default
            "preprocess": {"intensity": {"kind": "window", "low": 150, "high": 300}}}
    report = evaluate("ballnet", shared_case_dataset.root, None, progress=False,
                      predictor=Predictor(ModelBundle(None, meta, BallNet()), "cpu"))
    assert report["structures"]["Ball"]["dice"] == 1.0 and report["structures"]["Box"]["dice"] < 0.9
    assert report["organs_at_risk_mean"] == pytest.approx(report["structures"]["Box"]["dice"])
    assert "any PTV" not in report["unions"]  # one PTV: nothing to unite
    assert evaluate("ballnet", shared_case_dataset.root, None, predictor=predictor, progress=False)["organs_at_risk_mean"] is None
