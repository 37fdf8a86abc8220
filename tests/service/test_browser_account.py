"""Issue 37 item 9, through the page in headless Chromium: change your password from the account
menu; a second upload of the same file warns and links the earlier study; administrators see
where the DICOM node's series went (they are not studies of the page)."""

from __future__ import annotations

import json

from service.svc import ADMIN_PASSWORD, nifti_bytes
from service.test_browser import ARTIFACTS, _sign_in, _upload, page, pytestmark  # noqa: F401  (the page fixture)


def test_change_password_from_the_account_menu(page):  # noqa: F811
    _sign_in(page)
    page.click("#password-btn")
    page.wait_for_selector("#password-dialog[open]")
    page.fill("#pw-old", ADMIN_PASSWORD)
    page.fill("#pw-new", "a-new-password-1")
    page.fill("#pw-again", "a-new-password-2")
    page.click("#password-form button[type=submit]")
    page.wait_for_selector("#pw-error:has-text('differ')")
    page.fill("#pw-old", "not the password")
    page.fill("#pw-again", "a-new-password-1")
    page.click("#password-form button[type=submit]")
    page.wait_for_selector("#pw-error:has-text('current password is wrong')")
    page.fill("#pw-old", ADMIN_PASSWORD)
    page.fill("#pw-new", "a-new-password-1")
    page.fill("#pw-again", "a-new-password-1")
    page.click("#password-form button[type=submit]")
    page.wait_for_selector("#password-dialog:not([open])", state="attached")
    page.wait_for_selector("#toast:has-text('Password changed')")
    assert page.request.get(page.base_url + "/api/auth/me").status == 200  # this session stays
    page.click("#logout-btn")
    page.wait_for_selector("#login-view:not(.hidden)")
    page.fill("#login-user", "admin")
    page.fill("#login-pass", ADMIN_PASSWORD)  # the old one no longer works
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:has-text('wrong user name or password')")
    page.fill("#login-pass", "a-new-password-1")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app-view:not(.hidden)")
    assert not page.js_errors, page.js_errors


def test_second_upload_of_the_same_file_warns_and_links_the_first(page, tmp_path):  # noqa: F811
    _sign_in(page)
    data = nifti_bytes(16, seed=7)
    _upload(page, tmp_path, "first.nii.gz", data)
    first = page.evaluate("() => location.hash.slice(1)")
    assert page.locator("#upload-warning").is_hidden()
    _upload(page, tmp_path, "second.nii.gz", data)
    warning = page.locator("#upload-warning")
    warning.wait_for(state="visible", timeout=30000)
    assert "uploaded before as first" in warning.inner_text(), warning.inner_text()
    assert page.locator("#study-list li[data-id]").count() == 2  # the upload is kept
    page.screenshot(path=str(ARTIFACTS / "duplicate-upload.png"))
    page.click(f"#upload-warning a[href='#{first}']")
    page.wait_for_function("() => document.querySelector('#study-name').textContent.trim() === 'first'", timeout=30000)
    _upload(page, tmp_path, "other.nii.gz", nifti_bytes(16, seed=8))  # another image: no warning
    assert page.locator("#upload-warning").is_hidden()
    assert not page.js_errors, page.js_errors


def test_administrators_see_where_dicom_node_series_went(page, settings):  # noqa: F811
    done = settings.home / "dicom-node" / "done" / "1.2.826.0.1.1" / "1.2.826.0.1.1.42"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"model": "hn-ct", "structures": {
        "Brainstem": {"review": True, "quality": 0.4}, "Mandible": {"review": False}}}))
    (done / "received.json").write_text(json.dumps({"images": 128, "contoured_at": "2026-12-06T08:00:00+00:00",
                                                    "sop_instance_uids": []}))
    _sign_in(page)
    box = page.locator("#node-studies")
    box.wait_for(state="visible", timeout=30000)
    text = box.inner_text()
    assert "not studies in this list" in text and str(settings.home / "dicom-node") in text, text
    assert "dicom-node --status" in text and "1.1.42" in text and "128 images" in text and "1 to review" in text, text
    assert "hn-ct" in text and "2 structures" in text
    page.screenshot(path=str(ARTIFACTS / "node-studies.png"))
    # a user who is not an administrator does not see it
    r = page.request.post(page.base_url + "/api/users", data={"username": "plain", "password": "plain-user-pw-1"})
    assert r.status == 201, r.text()
    page.click("#logout-btn")
    page.wait_for_selector("#login-view:not(.hidden)")
    page.fill("#login-user", "plain")
    page.fill("#login-pass", "plain-user-pw-1")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app-view:not(.hidden)")
    page.wait_for_timeout(500)
    assert page.locator("#node-studies").is_hidden()
    assert not page.js_errors, page.js_errors
