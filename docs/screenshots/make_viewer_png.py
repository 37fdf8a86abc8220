"""Make docs/screenshots/viewer.png: a real head-and-neck CT (OpenKBP validation, never copied
into the repository) contoured by the bundled hn-ct model in the web page, outlines on, at
1400x900 in Debian's Chromium.

    .venv/bin/python docs/screenshots/make_viewer_png.py [../shared/data/openkbp/validation/pt_201/ct.nii.gz]
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CT = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared/data/openkbp/validation/pt_201/ct.nii.gz")
OUT = ROOT / "docs/screenshots/viewer.png"
PASSWORD = "screenshot-password"


def main() -> None:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from delineo.service.api import create_app
    from delineo.service.config import Settings

    home = Path(tempfile.mkdtemp(prefix="delineo-shot-"))
    app = create_app(Settings(home=home, admin_password=PASSWORD, device="cpu"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url + "/")
        page.fill("#login-user", "admin")
        page.fill("#login-pass", PASSWORD)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#app-view:not(.hidden)")
        page.set_input_files("#file-input", str(CT))
        page.wait_for_selector("#study-view:not(.hidden)", timeout=120000)
        page.evaluate("() => { const s = document.querySelector('#model-select'); s.value = 'hn-ct'; s.dispatchEvent(new Event('change')); }")
        page.wait_for_function("() => !document.querySelector('#contour-btn').disabled", timeout=300000)
        page.click("#contour-btn", timeout=180000)
        page.wait_for_selector("#job-state .chip.done", timeout=1800000)
        page.wait_for_function("() => Number(document.querySelector('#gl').dataset.loaded || 0) >= 5", timeout=120000)
        page.wait_for_timeout(1000)
        page.click("#structure-rows tr[data-name='LeftParotid'] td.name")
        page.wait_for_timeout(800)
        page.mouse.move(0, 0)
        page.screenshot(path=str(OUT))
        browser.close()
    server.should_exit = True
    print(OUT)


if __name__ == "__main__":
    main()
