"""The administrators' view of the DICOM node's outbox in the web page (issue 18), in headless
Chromium under the service's Content-Security-Policy (the ``page`` fixture fails on violations)."""

from __future__ import annotations

import json
import time

from service.test_browser import _sign_in, page, pytestmark  # noqa: F401  (fixture)


def test_users_dialog_shows_undeliverable_dicom_results(page, settings):  # noqa: F811
    entry = settings.home / "dicom-node" / "outbox" / "1.2.840.99"
    entry.mkdir(parents=True)
    (entry / "state.json").write_text(json.dumps({"series": "1.2.840.99", "attempts": 57, "next_try": time.time() + 300,
                                                  "received_at": time.time() - 2 * 86400, "undeliverable": True,
                                                  "last_error": "no association with TPS@10.0.0.5:104"}))
    _sign_in(page)
    page.click("#users-btn")
    page.wait_for_selector("#node-status:not(.hidden) strong:has-text('1 NOT DELIVERED')", timeout=30000)
    assert "1.2.840.99" in page.inner_text("#node-status") and "TPS@10.0.0.5:104" in page.inner_text("#node-status")
    page.click("#user-rows button.revoke")  # the administrator signs themselves out everywhere but here
    page.wait_for_selector("#toast:has-text('revoked')")
    assert not page.js_errors, page.js_errors
