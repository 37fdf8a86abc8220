"""The model's quality estimate in the viewer (issue 21): each structure's estimate in the structure
table, a visible flag on the ones below the model's review threshold, and those listed first."""

from __future__ import annotations

import pytest

from service.svc import nifti_bytes
from service.test_browser import ARTIFACTS, _contour, _sign_in, _upload, page, pytestmark  # noqa: F401  (the page fixture)


@pytest.fixture
def models_env(tmp_path, monkeypatch):
    """tiny-ct with a hand-made quality.json: Ball estimated 0.90 (no review), Box 0.30 or, when
    the untrained network draws nothing, 0 (review either way; threshold 0.6)."""
    from delineo.inference.quality import INPUTS, Calibrator, QualityEstimator, weights_digest
    from delineo.service.synthetic import tiny_model

    folder = tiny_model(tmp_path / "models" / "tiny-ct")
    n = len(INPUTS)
    calibrator = Calibrator(["Ball", "Box"], {}, {}, [0.0] * n, [1.0] * n, [0.0] * n + [0.4, -0.2], 0.5)
    QualityEstimator(calibrator, 0.6, [], {"weights_sha256": weights_digest(folder)}).save(folder)
    monkeypatch.setenv("DELINEO_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def test_flagged_structures_first_with_their_estimate(page, tmp_path):  # noqa: F811
    _sign_in(page)
    _upload(page, tmp_path, "quality.nii.gz", nifti_bytes(32))
    _contour(page)
    rows = page.locator("#structure-rows tr")
    assert rows.count() == 2
    # Box (second in the model) is flagged, so it comes first, with its estimate and a warning sign
    assert rows.nth(0).get_attribute("data-name") == "Box" and "flagged" in rows.nth(0).get_attribute("class")
    box = rows.nth(0).inner_text()
    assert "⚠" in box and "quality estimate" in box and ("Q 0.30" in box or "Q 0.00" in box)
    ball = rows.nth(1)
    assert ball.get_attribute("data-name") == "Ball" and "Q 0.90" in ball.inner_text() and "⚠" not in ball.inner_text()
    assert page.locator("#structure-rows tr[data-name=Box] .chip.quality.low").count() == 1
    assert page.locator("#structure-rows tr[data-name=Ball] .chip.quality.low").count() == 0
    page.screenshot(path=str(ARTIFACTS / "browser-quality.png"))
    assert not page.js_errors, page.js_errors
