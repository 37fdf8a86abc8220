"""Every control of the structure table in reach (issue 37, item 2): at 1366 x 768, 1600 x 1000
and 1920 x 1080 the review buttons (approve, needs work, correct) lie inside the structures card,
no name is cut, and the study search box and sort menu show their whole text. The structures have
long names, a quality chip, a warning and an 'edited' chip, as a head-and-neck set does."""

from __future__ import annotations

import json

import pytest

from service.svc import nifti_bytes
from service.test_browser import ARTIFACTS, _contour, _sign_in, _upload, page, pytestmark  # noqa: F401  (the page fixture)

NAMES = ["Brainstem_PRV03mm", "RightParotid"]
SIZES = [(1366, 768), (1600, 1000), (1920, 1080)]


@pytest.fixture
def models_env(tmp_path, monkeypatch):
    """tiny-ct with long structure names and a quality estimate (the second below the threshold)."""
    from delineo.inference.quality import INPUTS, Calibrator, QualityEstimator, weights_digest
    from delineo.service.synthetic import tiny_model

    folder = tiny_model(tmp_path / "models" / "tiny-ct")
    meta = json.loads((folder / "model.json").read_text())
    meta["structures"] = NAMES
    meta["roi_types"] = {NAMES[0]: "ORGAN", NAMES[1]: "ORGAN"}
    meta["postprocess"] = {"keep_largest": {NAMES[0]: 1, NAMES[1]: 1}}
    (folder / "model.json").write_text(json.dumps(meta))
    n = len(INPUTS)
    calibrator = Calibrator(NAMES, {}, {}, [0.0] * n, [1.0] * n, [0.0] * n + [0.4, -0.2], 0.5)
    QualityEstimator(calibrator, 0.6, [], {"weights_sha256": weights_digest(folder)}).save(folder)
    monkeypatch.setenv("DELINEO_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


PROBLEMS = """() => {
  const out = [];
  const card = document.querySelector('#structure-rows').closest('.card').getBoundingClientRect();
  const side = document.querySelector('.side').getBoundingClientRect();
  if (card.right > side.right + 0.5) out.push(`card ${card.right} past the panel ${side.right}`);
  if (card.right > window.innerWidth) out.push(`card past the window`);
  for (const b of document.querySelectorAll('#structure-rows button')) {
    const r = b.getBoundingClientRect();
    if (r.width === 0 || r.left < card.left || r.right > card.right || r.right > side.right)
      out.push(`${b.getAttribute('aria-label')}: ${Math.round(r.left)}..${Math.round(r.right)} outside ${Math.round(card.left)}..${Math.round(Math.min(card.right, side.right))}`);
  }
  for (const td of document.querySelectorAll('#structure-rows td.name')) {
    const r = td.getBoundingClientRect();
    if (td.scrollWidth > td.clientWidth + 1 || r.right > card.right) out.push(`name cut: ${td.textContent.trim()}`);
  }
  const t = document.querySelector('table.structures');
  if (t.getBoundingClientRect().right > card.right + 0.5) out.push('table wider than its card');
  const ctx = document.createElement('canvas').getContext('2d');
  const room = (el) => { const s = getComputedStyle(el); return el.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight); };
  const width = (el, text) => { const s = getComputedStyle(el); ctx.font = `${s.fontWeight} ${s.fontSize} ${s.fontFamily}`; return ctx.measureText(text).width; };
  const search = document.querySelector('#study-search');
  if (width(search, search.placeholder) > room(search) - 18) out.push(`search placeholder cut (${Math.round(width(search, search.placeholder))} px in ${room(search)})`);
  const sort = document.querySelector('#study-sort');
  for (const o of sort.options) if (width(sort, o.textContent) > room(sort) - 20) out.push(`sort option cut: ${o.textContent}`);
  return out;
}"""


def test_review_buttons_search_and_sort_fit_at_common_sizes(page, tmp_path):  # noqa: F811
    _sign_in(page)
    _upload(page, tmp_path, "layout.nii.gz", nifti_bytes(32))
    _contour(page)
    # a reviewer's 'needs work' adds a second warning to the flagged structure
    rows = page.locator("#structure-rows tr")
    assert rows.count() == 2
    page.click(f"#structure-rows tr[data-name='{NAMES[1]}'] button[data-review=needs_work]")
    page.wait_for_selector(f"#structure-rows tr[data-name='{NAMES[1]}'] button[data-review=needs_work].active", timeout=30000)
    found = {}
    for w, h in SIZES:
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_timeout(400)
        found[f"{w}x{h}"] = page.evaluate(PROBLEMS)
        page.screenshot(path=str(ARTIFACTS / f"layout-{w}x{h}.png"))
        # the buttons can be clicked where they are (nothing on top of them)
        b = page.locator(f"#structure-rows tr[data-name='{NAMES[0]}'] button[data-edit]")
        b.click(trial=True, timeout=5000)
    assert not any(found.values()), found
    assert not page.js_errors, page.js_errors
