"""The PACS panel as a person uses it (issue 38, item 3): in headless Chromium an administrator
sets up a real Orthanc (DICOMweb, basic authentication) in the page, searches it by Patient ID,
contours the CT series found, and stores the results back; Orthanc then holds the RT Structure
Set in the CT's study. Screenshot in ``test-artifacts/``."""

from __future__ import annotations

import pytest

from dicom.orthanc import needs_orthanc, running_orthanc
from service.svc import dicom_available, free_port
from service.test_browser import ARTIFACTS, _sign_in, page, pytestmark  # noqa: F401  (the page fixture, Chromium's skip)
from service.test_pacs import PATIENT, _ct_in, _modalities
from waits import HANG_S


@pytest.fixture
def orthanc(tmp_path):
    with running_orthanc(tmp_path / "orthanc", free_port(), free_port()) as server:
        yield server


@needs_orthanc
@pytest.mark.skipif(not dicom_available(), reason="delineo.dicom is needed for the RT Structure Set")
@pytest.mark.timeout(900)
def test_search_contour_and_store_from_the_page(page, orthanc, tmp_path):
    ct = _ct_in(orthanc, tmp_path, size=32, slices=12)
    _sign_in(page)
    # no PACS yet: the administrator's settings are open; set one up
    page.wait_for_selector("#pacs-panel:not(.hidden) #pacs-admin:not(.hidden)", timeout=30000)
    page.fill("#pacs-name", "Orthanc")
    page.fill("#pacs-url", orthanc.dicomweb)
    page.select_option("#pacs-auth", "basic")
    page.fill("#pacs-user", orthanc.user)
    page.fill("#pacs-pass", orthanc.password)
    page.click("#pacs-form button[type=submit]")
    page.wait_for_selector("#pacs-configured li:has-text('Orthanc')", state="attached", timeout=30000)
    page.wait_for_selector("#pacs-note:has-text('saved')", timeout=30000)
    assert orthanc.password not in page.content()

    # search by Patient ID: the study and its CT series
    page.fill("#pacs-patient", PATIENT)
    page.click("#pacs-search-btn")
    page.wait_for_selector("#pacs-results li.study button[data-series]", timeout=60000)
    assert "12 images" in page.inner_text("#pacs-results") and "2026-01-01" in page.inner_text("#pacs-results")
    page.screenshot(path=str(ARTIFACTS / "browser-pacs-search.png"))

    # contour: the study opens and its job finishes with the structures shown
    page.click(f"#pacs-results button[data-series='{ct['series']}']")
    page.wait_for_selector("#study-view:not(.hidden)", timeout=60000)
    page.wait_for_selector("#job-state .chip.done", timeout=HANG_S * 1000)
    page.wait_for_function("() => document.querySelectorAll('#structure-rows tr').length === 2", timeout=HANG_S * 1000)
    assert "PACS" in page.inner_text("#pacs-note") or "Fetched 12 images" in page.inner_text("#pacs-note")

    # store back to the PACS
    page.wait_for_selector("#pacs-store-card:not(.hidden) #pacs-store-btn:not([disabled])", timeout=30000)
    page.click("#pacs-store-btn")
    page.wait_for_selector("#pacs-store-note:has-text('Stored 2 objects')", timeout=60000)
    page.screenshot(path=str(ARTIFACTS / "browser-pacs-stored.png"))
    held = _modalities(orthanc, ct["study"])
    assert len(held.get("RTSTRUCT", [])) == 1 and len(held.get("SEG", [])) == 1, {k: len(v) for k, v in held.items()}
    assert not page.js_errors, page.js_errors
