"""The web page as a person uses it: headless Chromium (Debian's, through Playwright) signs in,
uploads a synthetic CT, watches the job, sees the contours in the viewer, downloads results.
Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.svc import ADMIN_PASSWORD, dicom_available, dicom_series_zip, nifti_bytes
from waits import HANG_S

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (make system-deps)"),
]


@pytest.fixture
def page(tmp_path, live_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    from delineo.service.api import niivue_dist

    if niivue_dist() is None:
        pytest.skip("NiiVue is not installed (npm ci)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "chrome-profile"), executable_path=str(CHROMIUM), args=ARGS,
                                                   headless=True, viewport={"width": 1440, "height": 900}, accept_downloads=True)
        pg = ctx.pages[0] if ctx.pages else ctx.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.base_url = live_server.url
        pg.js_errors = errors
        yield pg
        ctx.close()


def _sign_in(page):
    page.goto(page.base_url + "/")
    page.fill("#login-user", "admin")
    page.fill("#login-pass", "wrong password")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:has-text('wrong user name or password')")
    page.fill("#login-pass", ADMIN_PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app-view:not(.hidden)")


def _upload_and_contour(page, tmp_path, name: str, data: bytes, shot: str):
    f = tmp_path / name
    f.write_bytes(data)
    page.set_input_files("#file-input", str(f))
    page.wait_for_selector("#study-view:not(.hidden)", timeout=30000)
    # the view switches to the new study once uploaded (a second upload must not act on the first study)
    stem = name.split(".")[0]
    page.wait_for_function(f"document.querySelector('#study-name').textContent.trim() === '{stem}'", timeout=30000)
    page.wait_for_function("document.querySelector('#contour-btn') && !document.querySelector('#contour-btn').disabled")
    page.click("#contour-btn")
    page.wait_for_selector("#job-state .chip.done", timeout=HANG_S * 1000)
    # the viewer has the CT and one overlay per structure
    page.wait_for_function("Number(document.querySelector('#gl').dataset.loaded || 0) >= 3", timeout=30000)
    # (a second upload replaces the first study's view: wait for this study's table, do not read the old one)
    page.wait_for_function("document.querySelectorAll('#structure-rows tr').length === 2", timeout=HANG_S * 1000)
    page.wait_for_timeout(500)
    assert page.locator("#structure-rows tr").count() == 2
    assert "cc" in page.inner_text("#structure-rows")
    page.screenshot(path=str(ARTIFACTS / f"{shot}.png"))
    page.click("#view-buttons button[data-view=multi]")
    page.select_option("#window-select", "400,1800")
    page.locator("#structure-rows tr .vis").first.uncheck()
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{shot}-multiplanar.png"))
    assert "{" not in page.inner_text("#study-view")  # no raw JSON on screen


def test_login_upload_view_download(page, tmp_path):
    _sign_in(page)
    _upload_and_contour(page, tmp_path, "phantom.nii.gz", nifti_bytes(32), "browser-nifti")
    with page.expect_download() as dl:
        page.click("#downloads a[data-kind=nifti]")
    saved = tmp_path / "masks.zip"
    dl.value.save_as(saved)
    import zipfile

    assert any(n.endswith("Ball.nii.gz") for n in zipfile.ZipFile(saved).namelist())
    assert page.locator("#downloads a[data-kind=rtstruct].disabled").count() == 1  # NIfTI upload: no RTSTRUCT
    if dicom_available():
        _upload_and_contour(page, tmp_path, "series.zip", dicom_series_zip(32, 12), "browser-dicom")
        with page.expect_download() as dl:
            page.click("#downloads a[data-kind=rtstruct]")
        rt = tmp_path / "rtstruct.dcm"
        dl.value.save_as(rt)
        import pydicom

        assert pydicom.dcmread(rt).Modality == "RTSTRUCT"
    assert not page.js_errors, page.js_errors
