"""The web page as a person uses it: headless Chromium (Debian's, through Playwright) signs in,
uploads a synthetic CT, watches the job, sees the contours in the viewer, downloads results.
Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.svc import ADMIN_PASSWORD, dicom_available, dicom_series_zip, nifti_bytes, storage_scp
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
        # the page must work under the service's Content-Security-Policy (issue 18): a blocked
        # script, worker, WebAssembly module, style or request shows up as a console error
        # (third-party images, such as ReDoc's logo from its CDN, are meant to be blocked)
        csp: list[str] = []
        pg.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text
              and not ("Loading the image 'http" in m.text and "img-src" in m.text) else None)
        pg.base_url = live_server.url
        pg.js_errors = errors
        yield pg
        ctx.close()
        assert not csp, f"blocked by the Content-Security-Policy: {csp}"


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
    page.wait_for_function(f"() => document.querySelector('#study-name').textContent.trim() === '{stem}'", timeout=30000)
    page.wait_for_function("() => document.querySelector('#contour-btn') && !document.querySelector('#contour-btn').disabled")
    page.click("#contour-btn")
    page.wait_for_selector("#job-state .chip.done", timeout=HANG_S * 1000)
    # the viewer has the CT and one overlay per structure
    page.wait_for_function("() => Number(document.querySelector('#gl').dataset.loaded || 0) >= 3", timeout=30000)
    # (a second upload replaces the first study's view: wait for this study's table, do not read the old one)
    page.wait_for_function("() => document.querySelectorAll('#structure-rows tr').length === 2", timeout=HANG_S * 1000)
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
        # the study list: the owner sees the Patient ID and the study date; search finds by either
        assert "SYNTH001" in page.inner_text("#study-list") and "2026-01-01" in page.inner_text("#study-list")
        page.fill("#study-search", "synth001")
        page.wait_for_function("() => document.querySelectorAll('#study-list li[data-id]').length === 1")
        page.fill("#study-search", "")
    assert not page.js_errors, page.js_errors


# ---- the viewer as a dosimetrist uses it (issue 22) ----------------------------------------------

def _lateral_ct(size: int = 32) -> tuple[bytes, "object"]:
    """A synthetic CT (-100 HU body, air at -1000 HU outside) with a bright 1000 HU block only on
    the patient's LEFT. RAS+ world: +x points to the patient's left->right? No guessing: the test
    asks nibabel which way the first axis points and puts the block on the side named 'L'."""
    import gzip

    import nibabel as nib
    import numpy as np

    ct = np.full((size, size, size), -1000, np.int16)
    ct[3:-3, 3:-3, :] = -100
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-size, -size, -1.5 * size]
    codes = nib.aff2axcodes(affine)
    assert codes == ("R", "A", "S")  # axis 0 increases towards the patient's Right: the left is at low indices
    left = slice(5, 11)  # the patient's left
    ct[left, 10:22, 8:24] = 1000
    return gzip.compress(nib.Nifti1Image(ct, affine).to_bytes(), compresslevel=1), codes


def _canvas(page):
    import io

    import numpy as np
    from PIL import Image

    page.wait_for_timeout(250)
    return np.asarray(Image.open(io.BytesIO(page.locator("#gl").screenshot())).convert("RGB")).astype(np.int16)


def _bright_columns(img, level=230):
    """Mean column (0..1 across the canvas) of near-white pixels (the 1000 HU block), and their count."""
    import numpy as np

    bright = (img.min(axis=2) >= level)
    ys, xs = np.nonzero(bright)
    return (xs.mean() / img.shape[1] if len(xs) else float("nan")), int(bright.sum())


def _upload(page, tmp_path, name, data):
    f = tmp_path / name
    f.write_bytes(data)
    page.set_input_files("#file-input", str(f))
    stem = name.split(".")[0]
    page.wait_for_function(f"() => document.querySelector('#study-name').textContent.trim() === '{stem}'", timeout=30000)


def _contour(page, n_structures=2):
    page.wait_for_function("() => document.querySelector('#contour-btn') && !document.querySelector('#contour-btn').disabled")
    page.click("#contour-btn")
    page.wait_for_selector("#job-state .chip.done", timeout=HANG_S * 1000)
    page.wait_for_function(f"() => Number(document.querySelector('#gl').dataset.loaded || 0) >= {1 + n_structures}", timeout=30000)
    page.wait_for_timeout(300)


def test_viewer_overlays_orientation_zoom_fit(page, tmp_path):
    """Structures do not darken the CT outside them (outline and filled); the patient's left is on
    the screen's right (radiological) and moves with the setting; zoom enlarges, reset restores; the
    viewer fits 1366x768 without scrolling; the cursor shows HU."""
    import numpy as np

    page.set_viewport_size({"width": 1366, "height": 768})
    _sign_in(page)
    data, _ = _lateral_ct()
    _upload(page, tmp_path, "lateral.nii.gz", data)
    _contour(page)
    # a structure with voxels, shown in the middle of its extent
    name = page.evaluate("""() => { const v = window.delineoViewer; const L = v.layers.find((l) => l.mask.some((x) => x));
                                    return L ? L.name : null; }""")
    assert name, "the tiny model returned only empty structures"
    assert page.evaluate(f"window.delineoViewer.goToStructure({name!r})")
    page.wait_for_timeout(300)

    # -- overlays keep the CT's brightness outside the structure
    shown = _canvas(page)
    assert page.evaluate("window.delineoViewer.prefs.mode") == "outline"
    page.screenshot(path=str(ARTIFACTS / "viewer-outline.png"))
    for cb in page.locator("#structure-rows .vis").all():
        cb.uncheck()
    hidden = _canvas(page)
    diff = np.abs(shown - hidden).max(axis=2)
    changed = float((diff > 8).mean())
    assert 0.0005 < changed < 0.15, f"outline mode changed {changed:.1%} of the canvas"
    assert np.median(diff) == 0
    assert shown.mean() > 0.9 * hidden.mean(), (shown.mean(), hidden.mean())
    for cb in page.locator("#structure-rows .vis").all():
        cb.check()
    page.click("#mode-buttons button[data-mode=filled]")
    filled = _canvas(page)
    page.screenshot(path=str(ARTIFACTS / "viewer-filled.png"))
    diff = np.abs(filled - hidden).max(axis=2)
    assert float((diff > 8).mean()) > 0.0005  # the filled structure shows
    assert np.median(diff) == 0, "filled mode changes the CT outside the structures"
    page.click("#mode-buttons button[data-mode=outline]")

    # -- radiological convention: the block on the patient's left is on the screen's right
    for cb in page.locator("#structure-rows .vis").all():
        cb.uncheck()
    page.evaluate("() => { const nv = window.delineoViewer.nv; nv.scene.crosshairPos = [0.5, 0.5, 0.5]; nv.drawScene(); }")
    assert page.is_checked("#radiological")
    col, n_bright = _bright_columns(_canvas(page))
    assert n_bright > 100 and col > 0.55, f"radiological axial view: the patient's left at {col:.2f} of the width"
    page.click("#view-buttons button[data-view=coronal]")
    col_cor, _ = _bright_columns(_canvas(page))
    assert col_cor > 0.55, f"radiological coronal view: the patient's left at {col_cor:.2f}"
    page.click("#view-buttons button[data-view=axial]")
    page.uncheck("#radiological")
    col_neuro, _ = _bright_columns(_canvas(page))
    assert col_neuro < 0.45, f"neurological axial view: the patient's left at {col_neuro:.2f}"
    page.check("#radiological")
    page.wait_for_timeout(200)

    # -- zoom in enlarges the image, reset restores it
    _, before = _bright_columns(_canvas(page))
    page.click("#zoom-in")
    page.click("#zoom-in")
    _, zoomed = _bright_columns(_canvas(page))
    assert zoomed > 1.3 * before, (before, zoomed)
    page.click("#zoom-reset")
    _, reset = _bright_columns(_canvas(page))
    assert abs(reset - before) < 0.1 * before, (before, reset)

    # -- HU under the mouse pointer (no click): on the 1000 HU block
    box = page.locator("#gl").bounding_box()
    img = _canvas(page)
    ys, xs = np.nonzero(img.min(axis=2) >= 230)
    scale = box["width"] / img.shape[1]
    page.mouse.move(box["x"] + float(np.median(xs)) * scale, box["y"] + float(np.median(ys)) * scale)
    page.wait_for_function("() => /1000 HU/.test(document.querySelector('#cursor-info').textContent)", timeout=10000)
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)  # the body on the patient's right
    page.wait_for_function("() => /-100 HU/.test(document.querySelector('#cursor-info').textContent)", timeout=10000)

    # -- fits the window: no page scrolling at 1366x768, the whole canvas on screen
    assert page.evaluate("document.scrollingElement.scrollHeight <= window.innerHeight + 1")
    assert box["y"] + box["height"] <= 768 and box["height"] >= 300, box
    page.screenshot(path=str(ARTIFACTS / "viewer-1366x768.png"))
    assert not page.js_errors, page.js_errors


def test_contour_again_keeps_viewer_and_unknown_study(page, tmp_path):
    """'Contour again' keeps the previous result on screen while the new job runs and then shows
    the new one (it used to request masks with ?job=null); an unknown study id gets a message."""
    _sign_in(page)
    _upload(page, tmp_path, "again.nii.gz", nifti_bytes(24))
    _contour(page)
    first = page.get_attribute("#gl", "data-job")
    assert first
    messages = []
    page.click("#contour-btn")
    for _ in range(40):
        messages.append(page.inner_text("#viewer-msg"))
        if page.locator("#job-state .chip.done").count() and page.get_attribute("#gl", "data-job") not in ("", first):
            break
        page.wait_for_timeout(150)
    page.wait_for_function(f"() => document.querySelector('#gl').dataset.job && document.querySelector('#gl').dataset.job !== '{first}'",
                           timeout=HANG_S * 1000)
    assert not any("could not load" in m for m in messages), messages
    assert "could not load" not in page.inner_text("#viewer-msg")
    page.wait_for_timeout(300)
    assert "rtstruct" not in page.inner_text("#job-state")
    # the study list: search and sort
    _upload(page, tmp_path, "zeta.nii.gz", nifti_bytes(16, seed=1))
    page.select_option("#study-sort", "name-asc")
    page.wait_for_function("() => [...document.querySelectorAll('#study-list li[data-id] .name')].map((e) => e.firstChild.textContent).join() === 'again,zeta'")
    page.select_option("#study-sort", "created-desc")
    page.wait_for_function("() => [...document.querySelectorAll('#study-list li[data-id] .name')].map((e) => e.firstChild.textContent).join() === 'zeta,again'")
    page.fill("#study-search", "zet")
    page.wait_for_function("() => document.querySelectorAll('#study-list li[data-id]').length === 1")
    assert "(1 of 2)" in page.inner_text("#study-count")
    page.fill("#study-search", "")
    # an unknown id in the address
    page.goto(page.base_url + "/#0123456789abcdef0123456789abcdef")
    page.wait_for_selector("#missing-study:not(.hidden)", timeout=15000)
    assert "0123456789abcdef" in page.inner_text("#missing-text")
    assert not page.js_errors, page.js_errors


def test_api_docs_render_from_local_files(page):
    """Swagger UI (/api/docs) and ReDoc (/api/redoc) render the API's operations with nothing
    fetched from outside this server."""
    from urllib.parse import urlparse

    outside: list[str] = []
    host = urlparse(page.base_url).netloc
    page.on("request", lambda r: outside.append(r.url) if urlparse(r.url).netloc not in (host, "") and not r.url.startswith(("data:", "blob:")) else None)
    page.goto(page.base_url + "/api/docs")
    page.wait_for_selector(".opblock", timeout=30000)
    assert page.locator(".opblock").count() >= 10
    assert "/api/studies" in page.inner_text("#swagger-ui")
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"))
    page.goto(page.base_url + "/api/redoc")
    page.wait_for_selector("h2:has-text('Start Job')", timeout=30000)
    page.screenshot(path=str(ARTIFACTS / "api-redoc.png"))
    assert not outside, outside
    assert not page.js_errors, page.js_errors


def test_edit_with_brush_shows_in_rt_structure_set(page, tmp_path):
    """Brush strokes on a structure, saved as a new version, are in the downloaded RT Structure
    Set (the model's original is kept); approving every structure marks the set APPROVED."""
    import io

    import pydicom

    from service.svc import dicom_available, dicom_series_zip

    if not dicom_available():
        pytest.skip("delineo.dicom is not importable")
    _sign_in(page)
    _upload(page, tmp_path, "series.zip", dicom_series_zip(32, 12))
    _contour(page)
    name = page.locator("#structure-rows tr").first.get_attribute("data-name")
    page.click(f"#structure-rows tr[data-name='{name}'] button[data-edit]")
    page.wait_for_selector("#edit-bar:not(.hidden)")
    page.fill("#pen-size", "6")
    page.dispatch_event("#pen-size", "input")
    box = page.locator("#gl").bounding_box()
    # a stroke across the upper left of the image, away from the middle
    x0, y0 = box["x"] + box["width"] * 0.38, box["y"] + box["height"] * 0.2
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 12):
        page.mouse.move(x0 + k * box["width"] * 0.01, y0 + k * box["height"] * 0.008)
    page.mouse.up()
    page.wait_for_timeout(200)
    page.screenshot(path=str(ARTIFACTS / "viewer-edit.png"))
    page.click("#edit-save")
    page.wait_for_selector("#edit-bar.hidden", state="attached", timeout=30000)
    page.wait_for_selector(f"#structure-rows tr[data-name='{name}'] .chip.edited", timeout=30000)
    sid = page.evaluate("() => location.hash.slice(1)")

    def rtstruct(original=False):
        r = page.request.get(f"{page.base_url}/api/studies/{sid}/results/rtstruct" + ("?original=true" if original else ""))
        assert r.ok, r.text()
        return pydicom.dcmread(io.BytesIO(r.body()))

    def points(ds):
        number = {str(r.ROIName): int(r.ROINumber) for r in ds.StructureSetROISequence}[name]
        rc = next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == number)
        return sum(len(c.ContourData) for c in rc.get("ContourSequence", []))

    edited, original = rtstruct(), rtstruct(original=True)
    assert points(edited) != points(original), "the brush stroke is not in the RT Structure Set"
    # approve every structure from the table
    for tr in page.locator("#structure-rows tr").all():
        n = tr.get_attribute("data-name")
        page.click(f"#structure-rows tr[data-name='{n}'] button[data-review=approved]")
        page.wait_for_selector(f"#structure-rows tr[data-name='{n}'] button[data-review=approved].active", timeout=30000)
    page.wait_for_function("() => /approved/.test(document.querySelector('#review-note').textContent)")
    assert rtstruct().ApprovalStatus == "APPROVED"
    page.screenshot(path=str(ARTIFACTS / "viewer-approved.png"))
    # compare with a reference: the model's original RT Structure Set, uploaded from the page
    ref = tmp_path / "clinician.dcm"
    ref.write_bytes(page.request.get(f"{page.base_url}/api/studies/{sid}/results/rtstruct?original=true").body())
    page.set_input_files("#reference-input", str(ref))
    page.wait_for_selector("#reference-table:not(.hidden)", timeout=60000)
    assert "clinician.dcm" in page.inner_text("#reference-info")
    # the viewer shows the reference too (CT + 2 structures + 2 reference structures)
    page.wait_for_function("() => Number(document.querySelector('#gl').dataset.loaded || 0) >= 5", timeout=30000)
    table = page.inner_text("#reference-rows")
    assert name in table and ("1.000" in table or "0.9" in table), table
    page.screenshot(path=str(ARTIFACTS / "viewer-reference.png"))
    # send to the planning system: an administrator adds the destination, the state shows "sent"
    tps = storage_scp()
    try:
        page.click("#dest-admin summary")
        page.fill("#dest-name", "TPS")
        page.fill("#dest-address", tps["address"])
        page.click("#dest-form button[type=submit]")
        page.wait_for_function("() => document.querySelector('#send-dest').value === 'TPS'")
        page.click("#send-btn")
        page.wait_for_selector("#send-list li.sent", timeout=60000)
        assert sorted(str(ds.Modality) for ds in tps["received"]) == ["RTSTRUCT", "SEG"]
        assert tps["received"][0].get("ApprovalStatus", "APPROVED") == "APPROVED"
    finally:
        tps["server"].shutdown()
    page.screenshot(path=str(ARTIFACTS / "viewer-sent.png"))
    assert not page.js_errors, page.js_errors


def test_access_log_link_for_administrators_only(page):
    _sign_in(page)  # one failed sign-in first: a login-failed row
    link = page.locator("#audit-link")
    assert link.is_visible() and link.inner_text() == "Access log"
    link.click()
    page.wait_for_selector("h1:has-text('Access log')")
    assert "login-failed" in page.inner_text("table.audit")
    # a user who is not an administrator does not get the link
    page.goto(page.base_url + "/")
    page.wait_for_selector("#app-view:not(.hidden)")
    r = page.request.post(page.base_url + "/api/users", data={"username": "plain", "password": "plain-user-pw-1"})
    assert r.status == 201, r.text()
    page.click("#logout-btn")
    page.wait_for_selector("#login-view:not(.hidden)")
    # the page shows the sign-in form whatever the answer: the session must really be over (the
    # page's POST passed the Origin check, issue 36 item 10)
    assert page.request.get(page.base_url + "/api/auth/me").status == 401
    page.fill("#login-user", "plain")
    page.fill("#login-pass", "plain-user-pw-1")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app-view:not(.hidden)")
    assert page.locator("#audit-link").is_hidden() and page.locator("#users-btn").is_hidden()
    assert not page.js_errors, page.js_errors
