"""delineo beside a real Orthanc: Orthanc routes a stable CT series to the DICOM node
(deploy/orthanc/route-to-delineo.lua), the node contours it and sends the RT Structure Set and SEG
back; checked through Orthanc's REST API. Nothing is mocked: Debian's Orthanc, the node, the model."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from delineo.data.io import Image, read_image
from delineo.dicom.node import DicomNode, NodeConfig
from delineo.dicom.rtstruct import read_rtstruct
from delineo.dicom.seg import read_seg
from delineo.dicom.series import read_series
from delineo.dicom.write_ct import write_ct_series
from delineo.metrics.segmentation import dice

from waits import LONG_HANG_S

from .orthanc import needs_orthanc, running_orthanc
from .test_node_import import free_port


def on_grid(mask: np.ndarray, affine: np.ndarray, shape, target_affine: np.ndarray) -> np.ndarray:
    """``mask`` (voxel -> patient mm by ``affine``) sampled at the voxel centres of a target grid
    (nearest voxel): two masks compared this way are compared in patient coordinates."""
    ijk = np.indices(shape).reshape(3, -1)
    src = np.rint((np.linalg.inv(affine) @ target_affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3]).astype(int)
    inside = np.all((src >= 0) & (src < np.array(mask.shape)[:, None]), axis=0)
    out = np.zeros(int(np.prod(shape)), bool)
    out[inside] = mask[src[0, inside], src[1, inside], src[2, inside]]
    return out.reshape(shape)


def study_results(orthanc, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    """The study's instances by modality, as read back from Orthanc (REST API)."""
    out: dict[str, list[pydicom.Dataset]] = {}
    for s in orthanc.series_of_study(study_uid):
        modality = s["MainDicomTags"].get("Modality")
        out.setdefault(modality, []).extend(pydicom.dcmread(io.BytesIO(orthanc.instance_file(i))) for i in s["Instances"])
    return out


def check_results_reference_the_ct(results: dict[str, list[pydicom.Dataset]], series, tmp_path: Path) -> dict[str, dict]:
    """One RTSTRUCT and one SEG in the CT's study, referencing its series, frame of reference and
    every image; returns their masks on the series' grid ``{"rtstruct": ..., "seg": ...}``."""
    assert len(results.get("RTSTRUCT", [])) == 1 and len(results.get("SEG", [])) == 1, {k: len(v) for k, v in results.items()}
    rt, seg = results["RTSTRUCT"][0], results["SEG"][0]
    for ds in (rt, seg):
        assert ds.StudyInstanceUID == series.study_instance_uid
        assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
    ref = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == series.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in ref.ContourImageSequence} == set(series.sop_instance_uids)
    seg_refs = seg.ReferencedSeriesSequence[0]
    assert seg_refs.SeriesInstanceUID == series.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in seg_refs.ReferencedInstanceSequence} <= set(series.sop_instance_uids)
    rt.save_as(tmp_path / "rt-from-orthanc.dcm")
    seg.save_as(tmp_path / "seg-from-orthanc.dcm")
    return {"rtstruct": read_rtstruct(tmp_path / "rt-from-orthanc.dcm", series), "seg": read_seg(tmp_path / "seg-from-orthanc.dcm", series)}


def route_through_orthanc(tmp_path: Path, ct_files: list[Path], model: str) -> tuple[dict, list[str]]:
    """Orthanc (deploy/orthanc config and Lua script) <-> a DICOM node; the CT is stored in Orthanc
    by its REST API, and this waits until the study holds an RTSTRUCT and a SEG.
    Returns the study's instances by modality and the node's and Orthanc's log lines."""
    node_port, http_port, dicom_port = free_port(), free_port(), free_port()
    study_uid = pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID
    with running_orthanc(tmp_path / "orthanc", http_port, dicom_port, node=("DELINEO", "127.0.0.1", node_port), stable_age=2) as orthanc:
        cfg = NodeConfig(storage=tmp_path / "node", port=node_port, host="127.0.0.1", allowed_ae=["ORTHANC"],
                         forward=("ORTHANC", "127.0.0.1", dicom_port), idle_seconds=1.0, model=model, device="cpu",
                         retry_initial_s=0.5, poll_s=0.2)
        node = DicomNode(cfg).start()
        try:
            orthanc.upload(ct_files)
            deadline = time.monotonic() + LONG_HANG_S
            while True:
                modalities = {s["MainDicomTags"].get("Modality") for s in orthanc.series_of_study(study_uid)}
                if {"RTSTRUCT", "SEG"} <= modalities:
                    break
                assert time.monotonic() < deadline, f"no RTSTRUCT and SEG in Orthanc: {modalities}; node: {node.events}\n" \
                    + orthanc.log.read_text()[-3000:]
                time.sleep(0.5)
            results = study_results(orthanc, study_uid)
        finally:
            node.stop()
        logs = orthanc.log.read_text()
    return results, logs


@needs_orthanc
def test_orthanc_routes_a_stable_ct_to_the_node_and_gets_rtstruct_and_seg(tmp_path, ct_dir, tiny_ct_model):
    files = sorted(ct_dir.glob("*.dcm"))
    results, orthanc_log = route_through_orthanc(tmp_path, files, str(tiny_ct_model))
    series = read_series(ct_dir)
    masks = check_results_reference_the_ct(results, series, tmp_path)
    assert len(results["CT"]) == len(files)
    # the Lua script's own log line: routed once, by OnStableSeries
    assert orthanc_log.count("delineo: sending stable CT series " + series.series_instance_uid) == 1
    assert set(masks["seg"]) == {"PTV70", "Mandible"} and all(m.any() for m in masks["seg"].values())


@needs_orthanc
@pytest.mark.data
@pytest.mark.timeout(1500)  # two hn-ct inferences of a whole CT on a loaded CPU, each wait bounded (waits.py)
def test_orthanc_round_trip_of_a_real_ct_equals_the_nifti_path(tmp_path, real_data):
    """A development CT (OpenKBP) through Orthanc and the node with the bundled hn-ct model: the
    contours that come back equal those of `delineo contour ct.nii.gz` in patient coordinates."""
    from delineo import api

    case = sorted(p for p in real_data("openkbp/validation").iterdir() if (p / "ct.nii.gz").is_file())[0]
    image = read_image(case / "ct.nii.gz")
    files = write_ct_series(Image(np.rint(image.array), image.affine), tmp_path / "ct", patient_id=f"OKBP-{case.name}",
                            patient_name=f"OpenKBP^{case.name}")
    results, _ = route_through_orthanc(tmp_path, files, "hn-ct")
    series = read_series(tmp_path / "ct")
    masks = check_results_reference_the_ct(results, series, tmp_path)

    nifti = api.contour(case / "ct.nii.gz", tmp_path / "nifti-path", model="hn-ct", device="cpu", overview=False)
    seg_dice, rt_dice = {}, {}
    for name, s in nifti["structures"].items():
        ref = read_image(s["file"])
        expected = on_grid(ref.array > 0.5, ref.affine, series.image.shape, series.image.affine)
        assert expected.sum() == (ref.array > 0.5).sum(), name  # the same voxels: the grids coincide
        if s["empty"]:
            assert name not in masks["seg"] or not masks["seg"][name].any(), name
            continue
        seg_dice[name] = dice(masks["seg"][name], expected)
        rt_dice[name] = dice(masks["rtstruct"][name], expected)
    print("Dice to the NIfTI path, SEG:", seg_dice, "RTSTRUCT:", rt_dice)
    assert len(seg_dice) >= 3, nifti["structures"]
    assert min(seg_dice.values()) >= 0.999, seg_dice
    # the structure set's polygons, read back onto the CT's grid (measured: 1.000 for all ten hn-ct structures)
    assert min(rt_dice.values()) >= 0.999, rt_dice
