"""Overview images and structure colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.axes
import numpy as np
import pytest

from delineo.contours.colors import STRUCTURE_COLORS, structure_color
from delineo.contours.overview import _ras_spacing, _slice, _to_ras, write_overview
from delineo.data.io import Image, grid_affine


def test_structure_colors():
    assert structure_color("PTV70") == STRUCTURE_COLORS["PTV70"]
    a = structure_color("MyOrgan", 2)
    assert a == structure_color("MyOrgan", 2)  # stable
    assert len(a) == 3 and all(0 <= v <= 255 for v in a)
    assert len({structure_color("X", i) for i in range(7)}) == 7  # index walks the palette


@pytest.fixture
def recorded(monkeypatch):
    """Record the arguments of every imshow / contour call made while drawing."""
    calls = {"imshow": [], "contour": []}
    imshow, contour = matplotlib.axes.Axes.imshow, matplotlib.axes.Axes.contour

    def rec_imshow(self, X, *a, **k):
        calls["imshow"].append((np.asarray(X), k))
        return imshow(self, X, *a, **k)

    def rec_contour(self, *a, **k):
        calls["contour"].append((np.asarray(a[0]), k))
        return contour(self, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", rec_imshow)
    monkeypatch.setattr(matplotlib.axes.Axes, "contour", rec_contour)
    return calls


def test_3d_overview_files_and_slices(tmp_path, shared_case_dataset, recorded):
    from delineo.data.io import read_image

    image = read_image(shared_case_dataset.ct_path("case00"))
    masks = {"Ball": shared_case_dataset.masks["case00"]["Ball"], "Empty": np.zeros(image.shape, bool)}
    paths = write_overview(image, masks, tmp_path, title="t")
    assert [p.name for p in paths] == ["overview.png", "overview_axial.png", "overview_coronal.png", "overview_sagittal.png"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    # the views go through the structure: Ball is outlined in each panel (3 in overview.png + 3 single views)
    assert len(recorded["contour"]) == 6
    assert recorded["imshow"][0][1]["vmin"] == pytest.approx(40 - 200) and recorded["imshow"][0][1]["vmax"] == pytest.approx(40 + 200)
    # aspect ratio of the voxels: axial (2x2 mm) 1, coronal/sagittal 3/2
    assert [k["aspect"] for _, k in recorded["imshow"][:3]] == pytest.approx([1.0, 1.5, 1.5])
    assert write_overview(image, masks, tmp_path / "single", per_view=False)[0].name == "overview.png"
    assert len(list((tmp_path / "single").iterdir())) == 1


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_2d_overview_default_window(tmp_path, recorded):
    img = np.full((16, 16), 100, np.uint8)
    img[0, 0], img[-1, -1] = 20, 250
    m = np.zeros((16, 16), bool)
    m[4:10, 4:10] = True
    paths = write_overview(Image(img, grid_affine((1.0, 1.0))), {"lung": m}, tmp_path)
    assert [p.name for p in paths] == ["overview.png"]
    kwargs = recorded["imshow"][0][1]
    assert (kwargs["vmin"], kwargs["vmax"]) == pytest.approx((20.0, 250.0))


def test_2d_overview_default_window_float(tmp_path, recorded):
    img = np.full((16, 16), 100.0)
    img[0, 0], img[-1, -1] = 20, 250
    write_overview(Image(img, grid_affine((1.0, 1.0))), {}, tmp_path)
    kwargs = recorded["imshow"][0][1]
    assert (kwargs["vmin"], kwargs["vmax"]) == pytest.approx((20.0, 250.0))


def test_radiological_orientation():
    """RAS volume with markers: patient right (+x) on the image left, anterior (+y) and superior (+z) on top."""
    vol = np.zeros((5, 6, 7))
    vol[4, 2, 3] = 1  # far right
    axial = _slice(vol, "axial", 3)
    assert axial.shape == (6, 5) and axial[6 - 1 - 2, 0] == 1  # first column
    vol = np.zeros((5, 6, 7))
    vol[2, 5, 3] = 1  # most anterior
    assert _slice(vol, "axial", 3)[0, 5 - 1 - 2] == 1  # top row
    vol = np.zeros((5, 6, 7))
    vol[2, 3, 6] = 1  # most superior
    assert _slice(vol, "coronal", 3)[0, 2] == 1 and _slice(vol, "sagittal", 2)[0, 6 - 1 - 3] == 1


def test_to_ras_handles_flipped_and_permuted_affines():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    flipped = np.diag([-3.9, -3.9, -2.5, 1.0])  # OpenKBP-like: indices run left, posterior, inferior
    ras = _to_ras(arr, flipped)
    np.testing.assert_array_equal(ras, arr[::-1, ::-1, ::-1])
    assert _ras_spacing(flipped) == pytest.approx([3.9, 3.9, 2.5])
    permuted = np.zeros((4, 4))
    permuted[1, 0], permuted[0, 1], permuted[2, 2], permuted[3, 3] = 2.0, 3.0, 4.0, 1.0  # voxel axis 0 -> world y
    assert _to_ras(arr, permuted).shape == (3, 2, 4)
    assert _ras_spacing(permuted) == pytest.approx([3.0, 2.0, 4.0])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_dashed_second_set_in_the_same_colour(tmp_path, recorded):
    img = np.full((16, 16), 100, np.uint8)
    given = np.zeros((16, 16), bool)
    given[4:10, 4:10] = True
    model = np.zeros((16, 16), bool)
    model[5:12, 5:12] = True
    write_overview(Image(img, grid_affine((1.0, 1.0))), {"lung": given}, tmp_path, dashed={"lung": model})
    (solid_mask, solid), (dashed_mask, dashed) = recorded["contour"]
    assert (solid_mask > 0.5).sum() == given.sum() and (dashed_mask > 0.5).sum() == model.sum()
    assert solid["linestyles"] == "solid" and dashed["linestyles"] == "dashed"
    assert np.allclose(solid["colors"][0], dashed["colors"][0])


def _hn_like(shape=(160, 160, 40), body=(30, 30, 12), spacing=(3.0, 3.0, 2.5)):
    """A small 'body' (soft tissue, 30 x 30 x 12 voxels) in a large field of view of air (-1000 HU)."""
    vol = np.full(shape, -1000.0, np.float32)
    lo = [(s - b) // 2 for s, b in zip(shape, body)]
    sl = tuple(slice(a, a + b) for a, b in zip(lo, body))
    vol[sl] = 40.0
    masks = {}
    names = ["Brainstem", "SpinalCord", "LeftParotid", "RightParotid", "Mandible", "Esophagus", "Larynx", "PTV70"]
    for i, n in enumerate(names):
        m = np.zeros(shape, bool)
        c = [a + b // 2 for a, b in zip(lo, body)]
        m[c[0] - 4 + i % 4: c[0] + i % 4, c[1] - 3: c[1] + 3, c[2] - 2: c[2] + 2] = True
        masks[n] = m
    return Image(vol, grid_affine(spacing)), masks, lo, body


@pytest.fixture
def saved_figures(monkeypatch):
    """The extents (display units) of every axes and legend of each figure write_overview saves."""
    import matplotlib.figure

    figures = []
    savefig = matplotlib.figure.Figure.savefig

    def spy(self, *a, **k):
        out = savefig(self, *a, **k)
        self.canvas.draw()
        r = self.canvas.get_renderer()
        legends = [*self.legends, *(ax.get_legend() for ax in self.axes if ax.get_legend() is not None)]
        figures.append({"axes": [ax.get_window_extent(r) for ax in self.axes if ax.get_visible() and ax.images],
                        "legends": [lg.get_window_extent(r) for lg in legends],
                        "figure": self.bbox})
        return out

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return figures


def test_legend_does_not_overlap_a_panel(tmp_path, saved_figures):
    image, masks, _, _ = _hn_like()
    review = {n: "(quality 0.41)" for n in ("Brainstem", "LeftParotid", "RightParotid")}
    write_overview(image, masks, tmp_path, title="a long title " * 3, review=review)
    assert len(saved_figures) == 4  # overview.png and the three single views
    for fig in saved_figures:
        assert fig["legends"]
        for legend in fig["legends"]:
            for ax in fig["axes"]:
                assert not legend.overlaps(ax), f"legend {legend} overlaps a panel {ax}"
            # the legend lies inside the figure: no label is cut at its edge
            assert legend.x0 >= fig["figure"].x0 - 1 and legend.x1 <= fig["figure"].x1 + 1


def test_panels_are_cropped_to_the_body(tmp_path, recorded):
    image, masks, lo, body = _hn_like()
    write_overview(image, masks, tmp_path, per_view=False)
    shown = [x.shape for x, _ in recorded["imshow"]]
    # display arrays are (rows, cols): axial (y, x), coronal (z, x), sagittal (z, y); the body box plus a
    # margin (10 mm: about 4 voxels of 3 mm, 4 of 2.5 mm), not the 160 x 160 x 40 grid
    bx, by, bz = body
    assert len(shown) == 3
    (ay, ax_), (cz, cx), (sz, sy) = shown
    for n, b in ((ax_, bx), (ay, by), (cx, bx), (sy, by)):
        assert b <= n <= b + 2 * 4 + 1, shown
    for n in (cz, sz):
        assert bz <= n <= bz + 2 * 4 + 1, shown
    # every structure is still outlined in each panel
    assert len(recorded["contour"]) == 3 * len(masks)


def test_crop_keeps_structures_outside_the_body_and_skips_non_ct(tmp_path, recorded):
    image, masks, lo, body = _hn_like()
    far = np.zeros(image.shape, bool)
    far[5:8, 80, 20] = True  # a structure in the air, far from the body, in the axial slice shown
    write_overview(image, {"Far": far}, tmp_path, per_view=False)
    (ay, ax_) = recorded["imshow"][0][0].shape
    assert ax_ >= 160 - 5 - (160 - body[0]) // 2  # reaches from the body to x = 5
    recorded["imshow"].clear()
    # an image with no value below 0 (not a CT in HU): nothing is cropped
    write_overview(Image(np.full((20, 22, 6), 100.0), grid_affine((1.0, 1.0, 1.0))), {}, tmp_path / "b", per_view=False)
    assert recorded["imshow"][0][0].shape == (22, 20)
