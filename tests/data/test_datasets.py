"""Both dataset layouts: discovery, presence flags (unknown vs empty), errors naming the file, splits."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from delineo.data.datasets import CaseFolderDataset, ImageFolderDataset, open_dataset, split_cases
from delineo.errors import InputError


# ---- case folders (3D) -------------------------------------------------------------------------


def test_case_folder_discovery(case_dataset):
    ds = open_dataset(case_dataset.root)
    assert isinstance(ds, CaseFolderDataset)
    assert ds.cases == case_dataset.cases
    assert ds.structures == ["Ball", "Box"]
    assert len(ds) == 4


def test_case_folder_sample(case_dataset):
    ds = open_dataset(case_dataset.root)
    s = ds[0]
    case = case_dataset.cases[0]
    assert s["case"] == case
    assert s["image"].dtype == np.float32 and s["image"].shape == (1, 16, 16, 16)
    assert s["label"].dtype == np.uint8 and s["label"].shape == (2, 16, 16, 16)
    assert s["present"].tolist() == [True, True]
    assert s["spacing_mm"] == (2.0, 2.0, 3.0)
    np.testing.assert_allclose(s["affine"], case_dataset.affine)
    assert s["path"] == str(case_dataset.ct_path(case))
    np.testing.assert_array_equal(s["label"][0], case_dataset.masks[case]["Ball"])
    np.testing.assert_array_equal(s["label"][1], case_dataset.masks[case]["Box"])
    # raw HU, not normalised
    assert s["image"][0][case_dataset.masks[case]["Ball"]].mean() > 250
    assert s["image"][0][~case_dataset.masks[case]["Ball"] & ~case_dataset.masks[case]["Box"]].mean() < -50


def test_missing_roi_file_is_unknown_not_empty(case_dataset):
    ds = open_dataset(case_dataset.root)
    i = ds.cases.index("case03")
    s = ds[i]
    assert s["present"].tolist() == [True, False]
    assert not s["label"][1].any()
    assert s["label"][0].any()
    assert ds.presence("case03").tolist() == [True, False]
    assert ds.presence("case00").tolist() == [True, True]


def test_empty_mask_file_is_present(case_dataset):
    p = case_dataset.seg_path("case01", "Box")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.uint8), case_dataset.affine), str(p))
    s = open_dataset(case_dataset.root)[1]
    assert s["case"] == "case01"
    assert s["present"].tolist() == [True, True]
    assert not s["label"][1].any()


def test_requested_structures_and_cases(case_dataset):
    ds = open_dataset(case_dataset.root, structures=["Box", "Ghost"], cases=["case02", "case00"])
    assert ds.cases == ["case00", "case02"]  # dataset order
    assert ds.structures == ["Box", "Ghost"]
    s = ds[0]
    assert s["present"].tolist() == [True, False]
    np.testing.assert_array_equal(s["label"][0], case_dataset.masks["case00"]["Box"])
    with pytest.raises(InputError, match="case99") as exc:
        open_dataset(case_dataset.root, cases=["case00", "case99"])
    assert exc.value.path == case_dataset.root


def test_structure_found_in_only_one_case_is_discovered(case_dataset):
    extra = case_dataset.seg_path("case02", "Tiny")
    m = np.zeros((16, 16, 16), np.uint8)
    m[1, 1, 1] = 1
    nib.save(nib.Nifti1Image(m, case_dataset.affine), str(extra))
    ds = open_dataset(case_dataset.root)
    assert ds.structures == ["Ball", "Box", "Tiny"]
    assert ds.presence("case00").tolist() == [True, True, False]
    assert ds.presence("case02").tolist() == [True, True, True]


def test_folder_without_ct_is_not_a_case(case_dataset):
    (case_dataset.root / "notes").mkdir()
    (case_dataset.root / "README.txt").write_text("hi")
    assert open_dataset(case_dataset.root).cases == case_dataset.cases


def test_corrupt_ct_names_the_file(case_dataset):
    p = case_dataset.ct_path("case01")
    p.write_bytes(b"\x1f\x8bgarbage" * 50)
    ds = open_dataset(case_dataset.root)
    with pytest.raises(InputError, match="not a readable NIfTI") as exc:
        ds[1]
    assert exc.value.path == p
    assert str(p) in str(exc.value)


def test_corrupt_mask_names_the_file(case_dataset):
    p = case_dataset.seg_path("case00", "Ball")
    p.write_bytes(b"garbage")
    with pytest.raises(InputError) as exc:
        open_dataset(case_dataset.root)[0]
    assert exc.value.path == p


def test_mask_shape_mismatch(case_dataset):
    p = case_dataset.seg_path("case00", "Box")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 15), np.uint8), case_dataset.affine), str(p))
    with pytest.raises(InputError, match="shape") as exc:
        open_dataset(case_dataset.root)[0]
    assert exc.value.path == p
    assert "ct.nii.gz" in str(exc.value) and "(16, 16, 15)" in str(exc.value)


def test_mask_affine_mismatch(case_dataset):
    p = case_dataset.seg_path("case00", "Box")
    aff = case_dataset.affine.copy()
    aff[2, 2] = 2.5  # different slice thickness, same shape
    nib.save(nib.Nifti1Image(case_dataset.masks["case00"]["Box"].astype(np.uint8), aff), str(p))
    with pytest.raises(InputError, match="affine") as exc:
        open_dataset(case_dataset.root)[0]
    assert exc.value.path == p


def test_mask_origin_mismatch(case_dataset):
    p = case_dataset.seg_path("case00", "Ball")
    aff = case_dataset.affine.copy()
    aff[0, 3] += 4.0
    nib.save(nib.Nifti1Image(case_dataset.masks["case00"]["Ball"].astype(np.uint8), aff), str(p))
    with pytest.raises(InputError, match="affine"):
        open_dataset(case_dataset.root)[0]


def test_non_binary_mask(case_dataset):
    p = case_dataset.seg_path("case02", "Ball")
    m = case_dataset.masks["case02"]["Ball"].astype(np.uint8)
    m[0, 0, 0] = 2
    nib.save(nib.Nifti1Image(m, case_dataset.affine), str(p))
    with pytest.raises(InputError, match="not binary") as exc:
        open_dataset(case_dataset.root)[2]
    assert exc.value.path == p
    assert "0, 1, 2" in str(exc.value)


def test_empty_dataset_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty dataset") as exc:
        open_dataset(tmp_path / "empty")
    assert exc.value.path == tmp_path / "empty"
    (tmp_path / "empty2" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="empty dataset"):
        open_dataset(tmp_path / "empty2")


def test_cases_without_any_masks(case_dataset):
    for case in case_dataset.cases:
        for roi in case_dataset.structures:
            case_dataset.seg_path(case, roi).unlink(missing_ok=True)
    with pytest.raises(InputError, match="no structures") as exc:
        open_dataset(case_dataset.root)
    assert exc.value.path == case_dataset.root


def test_nonexistent_folder(tmp_path):
    p = tmp_path / "nowhere"
    with pytest.raises(InputError, match="does not exist") as exc:
        open_dataset(p)
    assert exc.value.path == p
    with pytest.raises(InputError, match="does not exist"):
        CaseFolderDataset(p)
    with pytest.raises(InputError, match="does not exist"):
        ImageFolderDataset(p)


# ---- image folders (2D) ------------------------------------------------------------------------


def test_image_folder_discovery_and_sample(image_dataset):
    ds = open_dataset(image_dataset.root, pixel_spacing_mm=1.4)
    assert isinstance(ds, ImageFolderDataset)
    assert ds.cases == image_dataset.cases
    assert ds.structures == ["disc", "square"]
    s = ds[3]
    case = image_dataset.cases[3]
    assert s["image"].shape == (1, 32, 32) and s["image"].dtype == np.float32
    assert s["label"].shape == (2, 32, 32)
    assert s["present"].tolist() == [True, True]
    assert s["spacing_mm"] == (1.4, 1.4)
    np.testing.assert_array_equal(s["label"][0], image_dataset.masks[case]["disc"])
    np.testing.assert_array_equal(s["label"][1], image_dataset.masks[case]["square"])
    assert s["image"].max() > 200 and s["image"].min() < 60  # raw 0-255


def test_image_folder_missing_mask_is_unknown(image_dataset):
    image_dataset.mask_path("img02", "square").unlink()
    ds = open_dataset(image_dataset.root)
    s = ds[2]
    assert s["present"].tolist() == [True, False]
    assert not s["label"][1].any()


def test_image_folder_empty_mask_is_present(image_dataset):
    PILImage.fromarray(np.zeros((32, 32), np.uint8)).save(image_dataset.mask_path("img01", "disc"))
    s = open_dataset(image_dataset.root)[1]
    assert s["present"].tolist() == [True, True]
    assert not s["label"][0].any()


def test_image_folder_errors(image_dataset):
    bad_shape = image_dataset.mask_path("img00", "disc")
    PILImage.fromarray(np.zeros((32, 31), np.uint8)).save(bad_shape)
    with pytest.raises(InputError, match="shape") as exc:
        open_dataset(image_dataset.root)[0]
    assert exc.value.path == bad_shape

    grey = image_dataset.mask_path("img01", "disc")
    PILImage.fromarray(np.full((32, 32), 128, np.uint8)).save(grey)
    with pytest.raises(InputError, match="not binary") as exc:
        open_dataset(image_dataset.root)[1]
    assert exc.value.path == grey

    corrupt = image_dataset.image_path("img02")
    corrupt.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match="not a readable PNG") as exc:
        open_dataset(image_dataset.root)[2]
    assert exc.value.path == corrupt


def test_non_png_files_and_empty_class_folders_ignored(image_dataset):
    (image_dataset.root / "images" / "notes.txt").write_text("x")
    (image_dataset.root / "empty_class").mkdir()
    ds = open_dataset(image_dataset.root)
    assert ds.cases == image_dataset.cases
    assert ds.structures == ["disc", "square"]


# ---- splits --------------------------------------------------------------------------------------


def test_split_cases_deterministic_disjoint_complete():
    cases = [f"c{i:03d}" for i in range(40)]
    train, val = split_cases(cases, 0.25, seed=3)
    assert (train, val) == split_cases(list(reversed(cases)), 0.25, seed=3)  # order of input irrelevant
    assert len(val) == 10 and len(train) == 30
    assert not set(train) & set(val)
    assert sorted(train + val) == cases
    assert train == sorted(train) and val == sorted(val)
    assert split_cases(cases, 0.25, seed=4)[1] != val  # the seed matters


def test_split_cases_at_least_one_val_and_bad_fraction():
    assert len(split_cases(["a", "b", "c"], 0.01)[1]) == 1
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError):
            split_cases(["a", "b"], bad)
