"""The viewer, round 2 (issue 37), as a dosimetrist uses it in headless Chromium: 'Contour again'
keeps what people did (versions, a question before replacing corrected or reviewed structures,
open and restore an earlier version); + / - zoom about the view's centre, per view; the time to
the first contours and per toggle (logged)."""

from __future__ import annotations

import pytest

from service.svc import nifti_bytes
from service.test_browser import ARTIFACTS, _contour, _sign_in, _upload, page, pytestmark  # noqa: F401  (the page fixture)
from waits import HANG_S


def _review(page, name, state):
    page.click(f"#structure-rows tr[data-name='{name}'] button[data-review={state}]")
    page.wait_for_selector(f"#structure-rows tr[data-name='{name}'] button[data-review={state}].active", timeout=30000)


def test_contour_again_keeps_reviews_asks_and_restores(page, tmp_path):  # noqa: F811
    _sign_in(page)
    _upload(page, tmp_path, "versions.nii.gz", nifti_bytes(24))
    _contour(page)
    first = page.get_attribute("#gl", "data-job")
    _review(page, "Ball", "approved")
    _review(page, "Box", "needs_work")
    page.wait_for_selector("#version-list li[data-job].current")
    assert page.locator("#version-list li[data-job]").count() == 1

    # contour Box again only: the page asks first (Box was reviewed); Cancel starts nothing
    page.click("#picks-summary")
    page.uncheck("#structure-picks input[value=Ball]")
    page.click("#contour-btn")
    page.wait_for_selector("#replace-dialog[open]", timeout=30000)
    text = page.inner_text("#replace-text")
    assert "Box (needs work)" in text and "Ball" not in text, text
    page.screenshot(path=str(ARTIFACTS / "versions-ask.png"))
    page.click("#replace-cancel")
    page.wait_for_selector("#replace-dialog:not([open])", state="attached")
    page.wait_for_timeout(500)
    assert page.locator("#job-state .chip.done").count() == 1 and page.get_attribute("#gl", "data-job") == first
    assert page.locator("#version-list li[data-job]").count() == 1
    # ... and on confirmation Box is contoured again; Ball keeps its approval
    page.click("#contour-btn")
    page.wait_for_selector("#replace-dialog[open]", timeout=30000)
    page.click("#replace-ok")
    page.wait_for_function(f"() => document.querySelector('#gl').dataset.job && document.querySelector('#gl').dataset.job !== '{first}'",
                           timeout=HANG_S * 1000)
    second = page.get_attribute("#gl", "data-job")
    page.wait_for_function("() => document.querySelectorAll('#version-list li[data-job]').length === 2", timeout=30000)
    assert page.locator("#structure-rows tr").count() == 2, "the subset job replaced the whole set"
    assert page.locator("#structure-rows tr[data-name=Ball] button[data-review=approved].active").count() == 1
    assert page.locator("#structure-rows tr[data-name=Box] button.active").count() == 0
    assert page.get_attribute("#version-list li[data-job].current", "data-job") == second
    assert "1 of 2 approved" in page.inner_text("#review-note")

    # open the earlier version: read only, its own reviews, in the viewer
    page.click(f"#version-list li[data-job='{first}'] button[data-open]")
    page.wait_for_selector("#version-banner:not(.hidden)", timeout=30000)
    page.wait_for_function(f"() => document.querySelector('#gl').dataset.job === '{first}'", timeout=30000)
    assert page.locator("#structure-rows tr[data-name=Box] button[data-review=needs_work].active").count() == 1
    assert page.locator("#structure-rows tr[data-name=Box] button[data-review=needs_work]:disabled").count() == 1
    page.screenshot(path=str(ARTIFACTS / "versions-open.png"))
    # restore it: current again, with its reviews
    page.click("#version-banner button[data-restore]")
    page.wait_for_selector("#version-banner.hidden", state="attached", timeout=30000)
    page.wait_for_function(f"() => document.querySelector('#version-list li.current')?.dataset.job === '{first}'", timeout=30000)
    assert page.locator("#structure-rows tr[data-name=Box] button[data-review=needs_work].active:not(:disabled)").count() == 1
    assert page.get_attribute("#gl", "data-job") == first
    # a whole new set would replace Ball (approved) and Box (needs work): asked again
    page.click("#picks-summary")
    page.check("#structure-picks input[value=Ball]")
    page.click("#contour-btn")
    page.wait_for_selector("#replace-dialog[open]", timeout=30000)
    assert "Ball (approved)" in page.inner_text("#replace-text")
    page.click("#replace-cancel")
    assert not page.js_errors, page.js_errors


def _body(page):
    """The patient on the canvas: (centre x, centre y as fractions of the canvas, fraction of
    the canvas covered): grey pixels brighter than the black background."""
    import numpy as np

    from service.test_browser import _canvas

    img = _canvas(page)
    grey = (np.abs(img[..., 0] - img[..., 1]) < 12) & (np.abs(img[..., 1] - img[..., 2]) < 12) & (img.mean(axis=2) > 20)
    ys, xs = np.nonzero(grey)
    if not len(xs):
        return float("nan"), float("nan"), 0.0
    return xs.mean() / img.shape[1], ys.mean() / img.shape[0], float(grey.mean())


def test_zoom_buttons_keep_the_patient_centred_per_view(page, tmp_path):  # noqa: F811
    """Item 3: from the fitted view, + and - zoom about the view's centre (the patient stays in
    the middle and fills more or less of it); the zoom stays with its view: coronal and sagittal
    show the patient fitted, and axial has its zoom back."""
    import gzip

    import nibabel as nib
    import numpy as np

    page.set_viewport_size({"width": 1366, "height": 768})
    _sign_in(page)
    # a patient off the middle of a wide field of view (as on a planning CT's couch), so that the
    # fitted view is zoomed and panned
    ct = np.full((64, 64, 40), -1000, np.int16)
    ct[30:60, 6:34, 4:36] = -100
    ct[40:50, 14:24, 10:30] = 1000
    data = gzip.compress(nib.Nifti1Image(ct, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes(), compresslevel=1)
    _upload(page, tmp_path, "zoom.nii.gz", data)
    _contour(page)
    for cb in page.locator("#structure-rows .vis").all():
        cb.uncheck()
    page.evaluate("() => { const nv = window.delineoViewer.nv; nv.opts.crosshairWidth = 0; nv.drawScene(); }")
    x0, y0, a0 = _body(page)
    assert abs(x0 - 0.5) < 0.1 and abs(y0 - 0.5) < 0.1 and a0 > 0.1, (x0, y0, a0)
    page.click("#zoom-in")
    x1, y1, a1 = _body(page)
    page.screenshot(path=str(ARTIFACTS / "zoom-in.png"))
    assert abs(x1 - 0.5) < 0.1 and abs(y1 - 0.5) < 0.1, f"one + moved the patient to ({x1:.2f}, {y1:.2f})"
    assert a1 > 1.2 * a0, (a0, a1)
    page.click("#zoom-in")
    x2, y2, a2 = _body(page)
    assert a2 > a1 and abs(x2 - 0.5) < 0.1 and abs(y2 - 0.5) < 0.1, f"two + : ({x2:.2f}, {y2:.2f}) covering {a2:.2f}"
    for _ in range(3):
        page.click("#zoom-out")
    x3, y3, a3 = _body(page)
    assert a3 < a0 and abs(x3 - 0.5) < 0.1 and abs(y3 - 0.5) < 0.1, f"- : ({x3:.2f}, {y3:.2f}) covering {a3:.2f}"
    page.click("#zoom-in")
    page.click("#zoom-in")
    zoomed = _body(page)
    # coronal and sagittal: fitted as on their own (what Reset gives there), not the axial zoom
    for view in ("coronal", "sagittal"):
        page.click(f"#view-buttons button[data-view={view}]")
        shown = _body(page)
        page.click("#zoom-reset")
        fitted = _body(page)
        assert shown[2] > 0.05 and abs(shown[2] - fitted[2]) < 0.02 and abs(shown[0] - fitted[0]) < 0.03, (view, shown, fitted)
    page.click("#view-buttons button[data-view=axial]")
    back = _body(page)
    assert abs(back[2] - zoomed[2]) < 0.02, ("the axial zoom was not kept", zoomed, back)
    assert not page.js_errors, page.js_errors


# ---- speed (item 4) -------------------------------------------------------------------------------

GOAL_LOAD_S, GOAL_TOGGLE_S = 3.0, 0.3
N_STRUCTURES = 10


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _study_with_structures(live_server, size=128, n=N_STRUCTURES) -> str:
    """An uploaded 128^3 CT (the size of an OpenKBP head-and-neck case) with a finished job of
    ``n`` structures (written as a job's result, without running a model)."""
    import gzip
    import json
    import urllib.request

    import nibabel as nib
    import numpy as np

    from delineo.service.models import Job, utcnow

    ctx = live_server.server.config.app.state.ctx
    affine = np.diag([1.2, 1.2, 2.5, 1.0])
    ct = np.full((size, size, size), -1000, np.int16)
    zz, yy, xx = np.meshgrid(*[np.arange(size)] * 3, indexing="ij")
    body = (xx - size / 2) ** 2 / (0.42 * size) ** 2 + (yy - size / 2) ** 2 / (0.36 * size) ** 2 < 1
    ct[body.transpose(2, 1, 0)] = 40
    # upload through the API as the page does (a session of its own)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    from service.svc import ADMIN_PASSWORD

    req = urllib.request.Request(live_server.url + "/api/auth/login", data=json.dumps({"username": "admin", "password": ADMIN_PASSWORD}).encode(),
                                 headers={"Content-Type": "application/json", "Origin": live_server.url})
    opener.open(req).read()
    data = gzip.compress(nib.Nifti1Image(ct, affine).to_bytes(), compresslevel=1)
    boundary = "----delineo"
    body_bytes = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"speed.nii.gz\"\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(live_server.url + "/api/studies", data=body_bytes, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Origin": live_server.url})
    sid = json.loads(opener.open(req).read())["id"]
    with ctx.db.session() as s:
        job = Job(study_id=sid, model="tiny-ct", state="done", stage="done", progress=1.0, finished_at=utcnow(), started_at=utcnow())
        s.add(job)
        s.flush()
        job_id = job.id
        s.commit()
    out = ctx.storage.results_dir(sid, job_id)
    (out / "segmentations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = {}
    for k in range(n):
        c = rng.uniform(0.3, 0.7, 3) * size
        r = rng.uniform(0.05, 0.15, 3) * size
        m = (((np.indices((size, size, size)).transpose(1, 2, 3, 0) - c) / r) ** 2).sum(-1) < 1
        name = f"Structure{k + 1:02d}"
        nib.save(nib.Nifti1Image(m.astype(np.uint8), affine), str(out / "segmentations" / f"{name}.nii.gz"))
        rows[name] = {"volume_cc": round(float(m.sum()) * 1.2 * 1.2 * 2.5 / 1000, 3), "roi_type": "ORGAN", "empty": False, "flags": []}
    (out / "summary.json").write_text(json.dumps({"structures": rows}))
    return sid


def test_time_to_first_contours_and_per_toggle(page, tmp_path, live_server):  # noqa: F811
    """Item 4: a 128^3 CT with 10 structures in headless Chromium with software rendering
    (SwiftShader): time from choosing the study to the contours drawn, and per structure toggle,
    view switch and window change. Logged (and written to test-artifacts/viewer-timing.json)."""
    import json
    import time

    page.set_viewport_size({"width": 1600, "height": 1000})
    sid = _study_with_structures(live_server)
    _sign_in(page)
    page.wait_for_selector(f"#study-list li[data-id='{sid}']")
    sync = """async () => { await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      const gl = window.delineoViewer.nv.gl; const px = new Uint8Array(4); gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px); }"""
    t_click = page.evaluate("() => performance.now()")
    t0 = time.perf_counter()
    page.click(f"#study-list li[data-id='{sid}']")
    page.wait_for_function(f"() => Number(document.querySelector('#gl').dataset.loaded || 0) === {N_STRUCTURES + 1}", timeout=300000, polling=50)
    page.evaluate(sync)
    load_s = time.perf_counter() - t0
    page.screenshot(path=str(ARTIFACTS / "viewer-10-structures.png"))
    stats = page.evaluate("() => window.delineoViewer.stats || {}")
    # when each request the page made after the click started and ended (ms after the click)
    requests = page.evaluate(f"""() => performance.getEntriesByType('resource').filter((e) => e.startTime >= {t_click})
      .map((e) => [e.name.replace(location.origin, '').split('?')[0], Math.round(e.startTime - {t_click}), Math.round(e.responseEnd - {t_click})])""")

    def timed(action: str) -> float:
        return page.evaluate(f"""async () => {{ const t = performance.now(); {action};
          await ({sync})(); return (performance.now() - t) / 1000; }}""")

    toggles, parts, per_toggle = [], [], []
    for k in range(4):
        before = page.evaluate("() => window.delineoViewer.stats.updates")
        toggles.append(timed(f"document.querySelectorAll('#structure-rows .vis')[{k}].click()"))
        per_toggle.append(page.evaluate("() => window.delineoViewer.stats.updates") - before)
        parts.append(page.evaluate("() => window.delineoViewer.stats.last"))
    redraw = [timed("window.delineoViewer.nv.drawScene()") for _ in range(3)]
    views = [timed("document.querySelector('#view-buttons button[data-view=coronal]').click()"),
             timed("document.querySelector('#view-buttons button[data-view=axial]').click()")]
    windows = [timed("(() => { const s = document.querySelector('#window-select'); s.value = '400,1800'; s.dispatchEvent(new Event('change')); })()")]
    result = {"cpu": cpu_name(), "renderer": "SwiftShader (headless Chromium, --use-angle=swiftshader)", "ct": [128, 128, 128],
              "structures": N_STRUCTURES, "load_s": round(load_s, 3), "toggle_s": [round(x, 3) for x in toggles], "toggle_parts": parts,
              "texture_updates_per_toggle": per_toggle, "redraw_only_s": [round(x, 3) for x in redraw],
              "view_s": [round(x, 3) for x in views], "window_s": [round(x, 3) for x in windows], "texture_updates_on_load": stats.get("updates"),
              "viewer_load_ms": stats.get("ms"), "requests_ms": requests}
    result["goal"] = {"load_s": GOAL_LOAD_S, "toggle_s": GOAL_TOGGLE_S, "met": load_s <= GOAL_LOAD_S and max(toggles) <= GOAL_TOGGLE_S}
    try:
        result["load_average"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    print("viewer timing:", json.dumps(result))
    (ARTIFACTS / "viewer-timing.json").write_text(json.dumps(result, indent=1) + "\n")
    # the structure of the cost: two texture updates to load (the CT, one overlay for all the
    # structures), one per toggle (it was one per structure, each redoing every layer)
    assert stats.get("updates") == 2 and per_toggle == [1, 1, 1, 1], result
    # the goals (3 s, 0.3 s) hold on an idle machine; the CI machine is shared with training runs,
    # so the test bounds the time at ten times the goal (before: 60-220 s and 2-8 s) and logs it
    assert load_s <= 10 * GOAL_LOAD_S, result
    assert sorted(toggles)[len(toggles) // 2] <= 10 * GOAL_TOGGLE_S, result
    assert not page.js_errors, page.js_errors


def test_reference_contours_in_their_colours_dashed_each_toggled(page, tmp_path):  # noqa: F811
    """Item 6: a reference structure is drawn in the colour of the result's structure of its name,
    dashed, and has a tick box of its own (the whole set still has 'Show')."""
    _sign_in(page)
    _upload(page, tmp_path, "reference.nii.gz", nifti_bytes(32))
    _contour(page)
    sid = page.evaluate("() => location.hash.slice(1)")
    masks = tmp_path / "clinician.zip"
    masks.write_bytes(page.request.get(f"{page.base_url}/api/studies/{sid}/results/nifti").body())
    page.set_input_files("#reference-input", str(masks))
    page.wait_for_selector("#reference-table:not(.hidden)", timeout=60000)
    page.wait_for_function("() => Number(document.querySelector('#gl').dataset.loaded || 0) >= 5", timeout=60000)
    layers = page.evaluate("""() => window.delineoViewer.layers.map((L) => ({ name: L.name, color: Array.from(L.color),
                                    reference: L.reference, dashed: !!L.dashed, visible: L.visible }))""")
    result = {L["name"]: L for L in layers if not L["reference"]}
    refs = {L["name"]: L for L in layers if L["reference"]}
    assert sorted(refs) == ["Ball (reference)", "Box (reference)"], layers
    for name, L in refs.items():
        assert L["dashed"] and L["color"] == result[name.split(" ")[0]]["color"], (name, L, result)
    # its own tick box: hiding the Box reference leaves the Ball reference and the result shown
    assert page.locator("#reference-rows input.ref-vis").count() == 2
    page.uncheck("#reference-rows input.ref-vis[data-ref=Box]")
    page.wait_for_function("() => !window.delineoViewer.layers.find((L) => L.name === 'Box (reference)').visible", timeout=10000)
    shown = page.evaluate("() => Object.fromEntries(window.delineoViewer.layers.map((L) => [L.name, L.visible]))")
    assert shown == {"Ball": True, "Box": True, "Ball (reference)": True, "Box (reference)": False}, shown
    page.screenshot(path=str(ARTIFACTS / "viewer-reference-dashed.png"))
    # 'Show' hides them all, and showing them again keeps Box's own choice
    page.uncheck("#reference-show")
    page.check("#reference-show")
    shown = page.evaluate("() => Object.fromEntries(window.delineoViewer.layers.map((L) => [L.name, L.visible]))")
    assert shown["Ball (reference)"] and not shown["Box (reference)"], shown
    assert not page.js_errors, page.js_errors


def test_dicom_study_shows_patient_coordinates_and_instance_number(page, tmp_path):  # noqa: F811
    """Item 7: for a DICOM study the readout gives DICOM patient coordinates (LPS, labelled) and
    the Instance Number of the image under the cross-hair; the study details give the voxel spacing."""
    import re

    from service.svc import dicom_available, dicom_series_zip

    if not dicom_available():
        pytest.skip("delineo.dicom is not importable")
    _sign_in(page)
    _upload(page, tmp_path, "series.zip", dicom_series_zip(32, 12))  # 2 x 2 mm pixels, 3 mm apart, instance k+1 at z = 3k
    _contour(page)
    assert "2 × 2 × 3 mm voxels" in page.inner_text("#study-meta"), page.inner_text("#study-meta")
    for frac in ([0.3, 0.6, 0.25], [0.7, 0.4, 0.8]):
        ras = page.evaluate(f"""() => {{ const nv = window.delineoViewer.nv; nv.scene.crosshairPos = {frac}; nv.drawScene();
                                         nv.createOnLocationChange(); return Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3); }}""")
        page.wait_for_function("() => /LPS/.test(document.querySelector('#cursor-info').textContent)", timeout=10000)
        text = page.inner_text("#cursor-info")
        m = re.search(r"(-?[\d.]+), (-?[\d.]+), (-?[\d.]+) mm \(DICOM LPS\).*instance (\d+)", text)
        assert m, text
        x, y, z, instance = float(m[1]), float(m[2]), float(m[3]), int(m[4])
        assert abs(x + ras[0]) < 0.06 and abs(y + ras[1]) < 0.06 and abs(z - ras[2]) < 0.06, (text, ras)
        assert instance == round(z / 3) + 1, text
    assert not page.js_errors, page.js_errors


def test_access_log_links_readable_on_the_dark_background(page):  # noqa: F811
    """Item 9 (the last point): the access log's links were the browser's default blue on the dark page."""
    _sign_in(page)
    page.goto(page.base_url + "/audit")
    page.wait_for_selector("h1:has-text('Access log')")
    colours = page.evaluate("() => [...document.querySelectorAll('a')].map((a) => getComputedStyle(a).color)")
    assert colours and not any(c in ("rgb(0, 0, 238)", "rgb(85, 26, 139)") for c in colours), colours

    def luminance(css):
        import re

        r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css)[:3])
        f = lambda c: c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4  # noqa: E731
        return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b)

    back = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    for c in colours:
        hi, lo = sorted([luminance(c), luminance(back)], reverse=True)
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, (c, back)
    assert not page.js_errors, page.js_errors


def test_xray_png_still_shows_its_structures(page, tmp_path, service_models):  # noqa: F811
    """The one-overlay viewer (item 4) with a one-slice image: a chest X-ray PNG contoured by the
    bundled 2D model loads, its structures can be hidden and shown, nothing breaks."""
    import io

    import numpy as np
    from PIL import Image

    if not (service_models / "cxr-jsrt").exists():
        pytest.skip("the bundled cxr-jsrt model is not present")
    yy, xx = np.mgrid[0:256, 0:256]
    lungs = (((xx - 80) / 45) ** 2 + ((yy - 130) / 80) ** 2 < 1) | (((xx - 176) / 45) ** 2 + ((yy - 130) / 80) ** 2 < 1)
    img = np.where(lungs, 40, 200).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    _sign_in(page)
    f = tmp_path / "chest.png"
    f.write_bytes(buf.getvalue())
    page.set_input_files("#file-input", str(f))
    page.wait_for_function("() => document.querySelector('#study-name').textContent.trim() === 'chest'", timeout=30000)
    page.wait_for_function("() => !document.querySelector('#contour-btn').disabled")
    page.click("#contour-btn")
    page.wait_for_selector("#job-state .chip.done", timeout=HANG_S * 1000)
    page.wait_for_function("() => Number(document.querySelector('#gl').dataset.loaded || 0) >= 2", timeout=60000)
    info = page.evaluate("() => ({ n: window.delineoViewer.layers.length, depth: window.delineoViewer.overlay.hdr.dims[3], updates: window.delineoViewer.stats.updates })")
    assert info["n"] >= 1 and info["depth"] == 1 and info["updates"] == 2, info
    for cb in page.locator("#structure-rows .vis").all():
        cb.uncheck()
    for cb in page.locator("#structure-rows .vis").all():
        cb.check()
    page.screenshot(path=str(ARTIFACTS / "viewer-xray.png"))
    assert not page.js_errors, page.js_errors
