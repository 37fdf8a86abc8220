// The image viewer: NiiVue with the CT and one overlay per structure, drawn as a planning system
// draws them (outlines by default, or filled at an opacity; transparent where a structure is
// absent; the CT's window untouched), radiological convention by default, zoom and pan, the value
// under the cursor, and NiiVue's drawing tools to correct one structure at a time.
let NV = null;
async function niivue() {
  if (NV) return NV;
  try { NV = await import("/vendor/niivue/index.js"); }
  catch (_) { throw new Error("NiiVue is not installed on the server (run `npm ci`)."); }
  return NV;
}

const PREFS_KEY = "delineo.viewer";
export function loadPrefs() {
  let p = {};
  try { p = JSON.parse(localStorage.getItem(PREFS_KEY) || "{}"); } catch (_) {}
  return { radiological: p.radiological !== false, mode: p.mode === "filled" ? "filled" : "outline", opacity: Number.isFinite(p.opacity) ? p.opacity : 0.4 };
}
export function savePrefs(p) { try { localStorage.setItem(PREFS_KEY, JSON.stringify(p)); } catch (_) {} }

/** Voxels of `mask` (native order, dims nx, ny, nz) on the edge of the structure: inside, with a
 * neighbour outside in the plane that does not contain axis `skip` (0..2), or in 3D (skip = -1). */
export function edgeOf(mask, nx, ny, nz, skip) {
  const out = new Uint8Array(mask.length);
  const sx = 1, sy = nx, sz = nx * ny;
  const useX = skip !== 0, useY = skip !== 1, useZ = skip !== 2;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      let i = z * sz + y * sy;
      for (let x = 0; x < nx; x++, i++) {
        if (!mask[i]) continue;
        if ((useX && (x === 0 || !mask[i - sx] || x === nx - 1 || !mask[i + sx])) ||
            (useY && (y === 0 || !mask[i - sy] || y === ny - 1 || !mask[i + sy])) ||
            (useZ && (z === 0 || !mask[i - sz] || z === nz - 1 || !mask[i + sz]))) out[i] = 1;
      }
    }
  }
  return out;
}

/** [first, last + 1] linear index of a mask's voxels ([0, 0] when empty). */
function maskRange(mask) {
  let a = 0, z = mask.length;
  while (a < z && !mask[a]) a++;
  while (z > a && !mask[z - 1]) z--;
  return [a, z];
}

/** World mm (RAS) -> voxel indices in the file's own order, from the NIfTI affine. */
function mm2native(vol, mm) {
  if (!vol._inv) {
    const A = vol.hdr.affine;
    const m = [[A[0][0], A[0][1], A[0][2]], [A[1][0], A[1][1], A[1][2]], [A[2][0], A[2][1], A[2][2]]];
    const det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    const inv = [
      [(m[1][1] * m[2][2] - m[1][2] * m[2][1]) / det, (m[0][2] * m[2][1] - m[0][1] * m[2][2]) / det, (m[0][1] * m[1][2] - m[0][2] * m[1][1]) / det],
      [(m[1][2] * m[2][0] - m[1][0] * m[2][2]) / det, (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / det, (m[0][2] * m[1][0] - m[0][0] * m[1][2]) / det],
      [(m[1][0] * m[2][1] - m[1][1] * m[2][0]) / det, (m[0][1] * m[2][0] - m[0][0] * m[2][1]) / det, (m[0][0] * m[1][1] - m[0][1] * m[1][0]) / det]];
    vol._inv = { inv, t: [A[0][3], A[1][3], A[2][3]] };
  }
  const { inv, t } = vol._inv;
  const p = [mm[0] - t[0], mm[1] - t[1], mm[2] - t[2]];
  return [0, 1, 2].map((r) => inv[r][0] * p[0] + inv[r][1] * p[1] + inv[r][2] * p[2]);
}

export class Viewer {
  constructor(canvas, { onLocation } = {}) {
    this.canvas = canvas;
    this.onLocation = onLocation || (() => {});
    this.nv = null;
    this.layers = [];        // [{name, color, vol, mask (0/1 native), visible}]
    this.prefs = loadPrefs();
    this.view = "axial";
    this.editing = null;     // {name, layer}
  }

  async init() {
    if (this.nv) return this.nv;
    const { Niivue, DRAG_MODE } = await niivue();
    this.DRAG_MODE = DRAG_MODE;
    const nv = new Niivue({
      backColor: [0, 0, 0, 1], crosshairColor: [0.22, 0.74, 0.97, 0.6], crosshairWidth: 0.3, crosshairWidthUnit: "percent", show3Dcrosshair: false,
      isColorbar: false, dragAndDropEnabled: false, isOrientCube: false, multiplanarForceRender: false, loadingText: "",
      isRadiologicalConvention: this.prefs.radiological, isOrientationTextVisible: true, showAllOrientationMarkers: true,
      isNearestInterpolation: false, fontMinPx: 15, multiplanarPadPixels: 4,
      dragMode: DRAG_MODE.contrast, logLevel: "error", maxDrawUndoBitmaps: 32,
    });
    await nv.attachToCanvas(this.canvas);
    nv.onLocationChange = (loc) => this._location(loc);
    // the value under the mouse pointer (NiiVue reports the cross-hair's only on a click)
    let pending = null;
    this.canvas.addEventListener("mousemove", (e) => {
      pending = e;
      requestAnimationFrame(() => { if (pending) { this._hover(pending); pending = null; } });
    });
    this.nv = nv;
    return nv;
  }

  /** Load the CT and the structures' masks. `masks`: [{name, url, color: [r, g, b]}].
   *
   * Speed (issue 37): NiiVue redoes every layer's 3D texture whenever anything changes, so one
   * layer per structure made each toggle cost N texture passes and a load N^2/2. The masks are
   * read without being added to the scene, and drawn as ONE colour overlay (RGBA, composed here:
   * where structures overlap, their colours are mixed), so a load costs two texture updates (CT,
   * overlay) and a toggle one (the overlay). */
  async load({ ctUrl, masks, window: range, is2d }) {
    const nv = await this.init();
    const { NVImage } = await niivue();
    this.cancelEdit();
    this.viewZoom = {};  // a new image: every view fitted again
    const t0 = performance.now(); const ms = () => Math.round(performance.now() - t0);
    this.stats = { updates: 0, ms: {} };
    this.overlay = null; this._drawn = null; this._sum = null;
    const ct = { url: ctUrl, name: "ct.nii.gz", colormap: "gray", ...(range ? { cal_min: range[0], cal_max: range[1] } : {}) };
    const [, ...vols] = await Promise.all([
      nv.loadVolumes([ct]),
      ...masks.map((s) => NVImage.loadFromUrl({ url: s.url, name: `${s.name}.nii.gz` })),
    ]);
    this.stats.updates++; this.stats.ms.read = ms();
    if (range) { const v = this.ct; v.cal_min = range[0]; v.cal_max = range[1]; }
    this.is2d = !!is2d;
    this.layers = masks.map((s, i) => {
      const vol = vols[i];
      const mask = new Uint8Array(vol.img.length);
      for (let k = 0; k < mask.length; k++) mask[k] = vol.img[k] > 0.5 ? 1 : 0;
      return { name: s.name, color: s.color, vol, mask, visible: true, reference: !!s.reference, refName: s.refName, dashed: !!s.dashed, edges: {} };
    });
    this.fitted = true;
    this.view = this.is2d ? "axial" : this.view;
    const types = { axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal, multi: nv.sliceTypeMultiplanar };
    nv.setSliceType(types[this.view]);
    if (vols.length) {
      // the one overlay: the first mask's grid, four bytes (RGBA) a voxel
      const o = vols[0].clone();
      o.hdr.datatypeCode = 2304; o.hdr.numBitsPerVoxel = 32; o.hdr.scl_slope = 1; o.hdr.scl_inter = 0;
      o.img = new Uint8Array(vols[0].img.length * 4);
      o.name = "structures"; o.opacity = 1; o.colormap = "gray";
      this.overlay = o;
      this._compose(); this.stats.ms.compose = ms();
      nv.addVolume(o);  // one texture update for the overlay (and the CT's window)
      this.stats.updates++; this.stats.ms.overlay = ms();
    } else {
      nv.updateGLVolume(); this.stats.updates++;
    }
    this.fit(); this.stats.ms.fit = ms();
    return 1 + masks.length;
  }

  get ct() { return this.nv?.volumes?.[0] || null; }

  setWindow(range) {
    const v = this.ct; if (!v) return;
    if (range) { v.cal_min = range[0]; v.cal_max = range[1]; }
    else { v.cal_min = v.robust_min ?? v.global_min; v.cal_max = v.robust_max ?? v.global_max; }
    // the CT's layer only (the overlay's texture is unchanged)
    this._refreshLayer(0);
  }
  /** Redo one layer's texture (0: the CT, 1: the structures' overlay) and draw; the whole scene
   * (every layer) when NiiVue's internals differ from what this expects. */
  _refreshLayer(i) {
    const nv = this.nv; const vol = nv.volumes[i]; if (!vol) return;
    this.stats = this.stats || { updates: 0 };
    this.stats.updates++;
    try {
      if (i === 0 && nv.volumes.length > 1) throw new Error("the overlay is blended with the CT's texture");
      nv.refreshLayers(vol, i);
      nv.drawScene();
    } catch (_) { nv.updateGLVolume(); }
  }

  /** The axis (0..2, native order) across the current view's slices, or -1 for several views. */
  _sliceAxis(vol) {
    const ras = { axial: 2, coronal: 1, sagittal: 0 }[this.view];
    if (ras === undefined || !vol.permRAS) return -1;
    return Math.abs(vol.permRAS[ras]) - 1;
  }

  /** What the overlay shows: each structure's voxels (filled) or edge (outline, in the plane on
   * screen), mixed where they overlap, at the fill opacity. Returns false when nothing changed. */
  _compose() {
    const o = this.overlay; if (!o) return false;
    const filled = this.prefs.mode !== "outline";
    const shown = this.layers.filter((L) => L.visible && !(this.editing && this.editing.layer === L));
    const key = JSON.stringify([filled, filled ? this.prefs.opacity : 1, shown.map((L) => L.name), filled && !shown.some((L) => L.dashed) ? -1 : this._sliceAxis(o), this._maskVersion || 0]);
    if (key === this._drawn) return false;
    this._drawn = key;
    const n = o.img.length / 4;
    // only the voxels between the first and last of the structures (and of what was drawn before)
    if (!this._sum || this._sum.length !== 3 * n) { this._sum = new Uint16Array(3 * n); this._count = new Uint8Array(n); this._range = [0, n]; }
    const sum = this._sum, count = this._count, img = o.img;
    let [lo, hi] = this._range;
    sum.fill(0, 3 * lo, 3 * hi); count.fill(0, lo, hi); img.fill(0, 4 * lo, 4 * hi);
    lo = n; hi = 0;
    for (const L of shown) {
      // a dashed set (reference contours) is always drawn as a dashed outline
      const src = L.dashed ? this._dashes(L) : filled ? L.mask : this._edges(L);
      const [a, z] = L.range || (L.range = maskRange(L.mask));
      if (a >= z) continue;
      lo = Math.min(lo, a); hi = Math.max(hi, z);
      const [r, g, b] = L.color;
      for (let i = a; i < z; i++) if (src[i]) { const j = 3 * i; sum[j] += r; sum[j + 1] += g; sum[j + 2] += b; count[i]++; }
    }
    if (lo > hi) lo = hi = 0;
    this._range = [lo, hi];
    const alpha = Math.round(255 * (filled ? this.prefs.opacity : 1));
    for (let i = lo; i < hi; i++) {
      const c = count[i]; if (!c) continue;
      const j = 3 * i, k = 4 * i;
      img[k] = sum[j] / c; img[k + 1] = sum[j + 1] / c; img[k + 2] = sum[j + 2] / c; img[k + 3] = alpha;
    }
    return true;
  }
  /** The outline in dashes: edge voxels in runs of three, three left out (along each row). */
  _dashes(L) {
    const v = L.vol; const nx = v.hdr.dims[1], ny = v.hdr.dims[2];
    const axis = Math.max(1, v.hdr.dims[3]) === 1 ? 2 : this._sliceAxis(v);
    const key = `d${axis}`;
    if (!L.edges[key]) {
      const e = this._edges(L); const out = new Uint8Array(e.length);
      for (let i = 0; i < e.length; i++) if (e[i]) {
        const x = i % nx, y = Math.floor(i / nx) % ny, z = Math.floor(i / (nx * ny));
        // the two coordinates in the plane on screen
        const [a, b] = axis === 0 ? [y, z] : axis === 1 ? [x, z] : [x, y];
        if (Math.floor((a + b) / 3) % 2 === 0) out[i] = 1;
      }
      L.edges[key] = out;
    }
    return L.edges[key];
  }
  _edges(L) {
    const v = L.vol;
    const [nx, ny, nz] = [v.hdr.dims[1], v.hdr.dims[2], Math.max(1, v.hdr.dims[3])];
    const axis = nz === 1 ? 2 : this._sliceAxis(v);
    if (!L.edges[axis]) L.edges[axis] = edgeOf(L.mask, nx, ny, nz, axis);
    return L.edges[axis];
  }

  /** Draw the overlay for the current mode, view, visibility and opacity: one texture update,
   * none when nothing changed. */
  refreshOverlays() {
    const nv = this.nv; if (!nv || !this.overlay) return;
    const t0 = performance.now();
    if (!this._compose()) return;
    const t1 = performance.now();
    this._refreshLayer(1);
    if (this.stats) this.stats.last = { compose_ms: Math.round(t1 - t0), texture_ms: Math.round(performance.now() - t1) };
  }

  setMode(mode) { this.prefs.mode = mode; savePrefs(this.prefs); this.refreshOverlays(); }
  setFillOpacity(x) { this.prefs.opacity = x; savePrefs(this.prefs); this.refreshOverlays(); }
  setVisible(name, on) { const L = this.layers.find((l) => l.name === name); if (L) { L.visible = on; this.refreshOverlays(); } }
  /** Several structures shown or hidden at once ({name: bool}): one update. */
  setVisibleMany(map) { for (const L of this.layers) if (L.name in map) L.visible = !!map[L.name]; this.refreshOverlays(); }
  setRadiological(on) { this.prefs.radiological = on; savePrefs(this.prefs); this.nv?.setRadiologicalConvention(on); }

  setView(view) {
    const nv = this.nv;
    // zoom and pan belong to a view: keep the one left (when the user changed it), fit or restore the next
    if (nv && this.view !== view) this._keepViewZoom();
    this.view = view;
    if (!nv) return;
    const types = { axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal, multi: nv.sliceTypeMultiplanar };
    nv.setSliceType(types[view]);
    this.refreshOverlays();
    const kept = this.viewZoom?.[view];
    if (kept) { this.fitted = false; nv.setPan2Dxyzmm([...kept]); this._thinCrosshair(kept[3]); }
    else if (this.fitted || this.ct) this.fit();
  }
  _keepViewZoom() {
    const nv = this.nv; if (!nv || !this.ct) return;
    this.viewZoom = this.viewZoom || {};
    const p = [...nv.scene.pan2Dxyzmm];
    const f = this._fitPan;
    if (f && p.every((x, k) => Math.abs(x - f[k]) < 1e-6)) delete this.viewZoom[this.view];
    else this.viewZoom[this.view] = p;
  }

  /** Move the cross-hair to the middle of a structure (the centroid of its voxels, on a voxel of it). */
  goToStructure(name) {
    const nv = this.nv; const L = this.layers.find((l) => l.name === name);
    if (!nv || !L) return false;
    const d = L.vol.hdr.dims; const nx = d[1], ny = d[2];
    let n = 0, sx = 0, sy = 0, sz = 0;
    for (let i = 0; i < L.mask.length; i++) if (L.mask[i]) { n++; sx += i % nx; sy += Math.floor(i / nx) % ny; sz += Math.floor(i / (nx * ny)); }
    if (!n) return false;
    let c = [sx / n, sy / n, sz / n].map(Math.round);
    if (!L.mask[c[0] + c[1] * nx + c[2] * nx * ny]) {  // a concave shape: the nearest voxel of it on the centroid's slice
      let best = null, bd = Infinity;
      for (let i = 0; i < L.mask.length; i++) if (L.mask[i]) {
        const p = [i % nx, Math.floor(i / nx) % ny, Math.floor(i / (nx * ny))];
        const dd = (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 + 4 * (p[2] - c[2]) ** 2;
        if (dd < bd) { bd = dd; best = p; }
      }
      c = best;
    }
    // native voxel -> mm (the mask's affine) -> the scene's fraction
    const A = L.vol.hdr.affine;
    const mm = [0, 1, 2].map((r) => A[r][0] * c[0] + A[r][1] * c[1] + A[r][2] * c[2] + A[r][3]);
    nv.scene.crosshairPos = nv.mm2frac(mm);
    nv.drawScene();
    nv.createOnLocationChange();
    return true;
  }

  // ---- zoom and pan ---------------------------------------------------------------------------
  get zoomFactor() { return this.nv ? this.nv.scene.pan2Dxyzmm[3] : 1; }
  /** Zoom about the middle of the view: the point shown there stays there (a scene point x is
   * drawn at x * zoom + pan, the scene's centre fixed). */
  zoom(factor) {
    const nv = this.nv; if (!nv) return;
    const p = nv.scene.pan2Dxyzmm;
    const z = Math.min(12, Math.max(0.5, p[3] * factor));
    const [smn, smx] = nv.sceneExtentsMinMax(true);
    const pan = [0, 1, 2].map((k) => { const c = (smn[k] + smx[k]) / 2; return c - (c - p[k]) * (z / p[3]); });
    this.fitted = false;
    nv.setPan2Dxyzmm([pan[0], pan[1], pan[2], z]);
    this._thinCrosshair(z);
  }
  resetView() {
    const nv = this.nv; if (!nv) return;
    if (this.viewZoom) delete this.viewZoom[this.view];
    this.fit();
    if (this.ct && !this.editing) this.setWindow(this.lastWindow ?? null);
  }

  /** The body's bounding box in world mm (voxels above -500 HU; the whole volume when none). */
  _bodyBox(axis = -1, index = 0) {
    const v = this.ct; if (!v) return null;
    const key = `${axis}:${index}`;
    v._body = v._body || {};
    if (v._body[key]) return v._body[key];
    const d = v.hdr.dims; const nx = d[1], ny = d[2], nz = Math.max(1, d[3]);
    const slope = v.hdr.scl_slope || 1, inter = v.hdr.scl_inter || 0;
    const raw = (-500 - inter) / slope;
    let lo = [nx, ny, nz], hi = [-1, -1, -1];
    const img = v.img;
    for (let z = 0, i = 0; z < nz; z++) for (let y = 0; y < ny; y++) for (let x = 0; x < nx; x++, i++) {
      if ((axis < 0 || [x, y, z][axis] === index) && (slope > 0 ? img[i] > raw : img[i] < raw)) {
        if (x < lo[0]) lo[0] = x; if (x > hi[0]) hi[0] = x;
        if (y < lo[1]) lo[1] = y; if (y > hi[1]) hi[1] = y;
        if (z < lo[2]) lo[2] = z; if (z > hi[2]) hi[2] = z;
      }
    }
    if (hi[0] < 0) { lo = [0, 0, 0]; hi = [nx - 1, ny - 1, nz - 1]; }
    const A = v.hdr.affine;
    const mn = [Infinity, Infinity, Infinity], mx = [-Infinity, -Infinity, -Infinity];
    for (const cx of [lo[0] - 0.5, hi[0] + 0.5]) for (const cy of [lo[1] - 0.5, hi[1] + 0.5]) for (const cz of [lo[2] - 0.5, hi[2] + 0.5]) {
      for (let r = 0; r < 3; r++) {
        const w = A[r][0] * cx + A[r][1] * cy + A[r][2] * cz + A[r][3];
        mn[r] = Math.min(mn[r], w); mx[r] = Math.max(mx[r], w);
      }
    }
    v._body[key] = { mn, mx };
    return v._body[key];
  }

  /** Zoom so that the body fills the view (a CT's field of view is often much wider than the
   * patient), centred on it. */
  fit() {
    const nv = this.nv; if (!nv || !this.ct) return;
    this.fitted = true;
    // axial: the body on the slice shown (the shoulders of a lower slice would leave a head small);
    // other views: the whole body
    let body = this._bodyBox();
    if (this.view === "axial" && this.ct.permRAS && !this.is2d) {
      const axis = Math.abs(this.ct.permRAS[2]) - 1;
      const idx = Math.round(mm2native(this.ct, nv.frac2mm(nv.scene.crosshairPos))[axis]);
      const slice = this._bodyBox(axis, idx);
      if (slice.mx[0] - slice.mn[0] > 20 && slice.mx[1] - slice.mn[1] > 20) body = { mn: [slice.mn[0], slice.mn[1], body.mn[2]], mx: [slice.mx[0], slice.mx[1], body.mx[2]] };
    }
    const [smn, smx] = nv.sceneExtentsMinMax(true);
    const full = [0, 1, 2].map((k) => smx[k] - smn[k]);
    const ext = [0, 1, 2].map((k) => Math.max(1e-3, body.mx[k] - body.mn[k]));
    const axes = { axial: [0, 1], coronal: [0, 2], sagittal: [1, 2] }[this.view] || [0, 1, 2];
    let zoom = Math.min(...axes.map((k) => full[k] / ext[k])) * 0.92;
    if (this.is2d) zoom = 1;
    zoom = Math.min(8, Math.max(1, zoom));
    const pan = [0, 1, 2].map((k) => (zoom === 1 ? 0 : (smn[k] + smx[k]) / 2 - ((body.mn[k] + body.mx[k]) / 2) * zoom));
    nv.setPan2Dxyzmm([pan[0], pan[1], pan[2], zoom]);
    this._fitPan = [...nv.scene.pan2Dxyzmm];
    this._thinCrosshair(zoom);
  }
  /** Keep the cross-hair about 1-2 screen pixels wide whatever the zoom (its width is in mm). */
  _thinCrosshair(zoom) {
    const nv = this.nv; if (!nv) return;
    nv.opts.crosshairWidth = 0.3 / Math.max(zoom, 1);
    nv.crosshairs3D = null;
    nv.drawScene();
  }
  /** Left-drag: "pan" moves the image, "window" (default) adjusts window/level as a right-drag does. */
  setDrag(mode) {
    const nv = this.nv; if (!nv) return;
    nv.opts.dragMode = mode === "pan" ? this.DRAG_MODE.pan : this.DRAG_MODE.contrast;
  }

  _hover(e) {
    const nv = this.nv; const ct = this.ct; if (!nv || !ct) return;
    const dpr = nv.uiData?.dpr || window.devicePixelRatio || 1;
    const rect = this.canvas.getBoundingClientRect();
    let frac;
    try { frac = nv.canvasPos2frac([(e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr]); } catch (_) { return; }
    if (!frac || frac[0] < 0 || frac.some((f) => !Number.isFinite(f) || f < 0 || f > 1)) return;
    const mm = nv.frac2mm(frac);
    const vox = ct.mm2vox(mm);
    const value = ct.getValue(vox[0], vox[1], vox[2]);
    const back = nv.back;
    const rv = nv.frac2vox ? nv.frac2vox(frac) : vox;
    this._location({ mm, vox: rv, values: [{ value }], hover: true }, back);
  }

  _location(loc) {
    const vals = loc.values || [];
    const ct = vals[0];
    const inside = this.layers.filter((L) => {
      if (!loc.mm) return false;
      const d = L.vol.hdr.dims;
      const [x, y, z] = mm2native(L.vol, loc.mm).map((q) => Math.round(q));
      if (x < 0 || y < 0 || z < 0 || x >= d[1] || y >= d[2] || z >= Math.max(1, d[3])) return false;
      return L.mask[x + y * d[1] + z * d[1] * d[2]] > 0;
    }).map((L) => L.name);
    const back = this.nv.back;
    const vox = loc.vox || [0, 0, 0];
    const slice = back ? { axial: [vox[2], back.dimsRAS[3]], coronal: [vox[1], back.dimsRAS[2]], sagittal: [vox[0], back.dimsRAS[1]] }[this.view] : null;
    this.onLocation({ value: ct ? ct.value : null, mm: loc.mm, vox, slice, inside });
  }

  // ---- editing (NiiVue's drawing layer) -------------------------------------------------------
  startEdit(name) {
    const nv = this.nv; const L = this.layers.find((l) => l.name === name);
    if (!nv || !L) return false;
    this.cancelEdit();
    this.editing = { name, layer: L };
    // the drawing layer starts as the structure's mask (value 1 = this structure's colour)
    L.vol.img.set(L.mask);
    nv.loadDrawing(L.vol);
    const c = L.color;
    nv.drawLut = nv.drawLut || {};
    if (nv.drawLut.lut) { nv.drawLut.lut[4] = c[0]; nv.drawLut.lut[5] = c[1]; nv.drawLut.lut[6] = c[2]; nv.drawLut.lut[7] = 255; }
    nv.setDrawOpacity(0.55);
    this.refreshOverlays();
    this.tool("brush");
    nv.refreshDrawing(true);
    return true;
  }
  tool(kind) {
    const nv = this.nv; if (!nv || !this.editing) return;
    if (kind === "none") { nv.setDrawingEnabled(false); return; }
    nv.setDrawingEnabled(true);
    nv.setPenValue(kind === "eraser" ? 0 : 1, false);
  }
  setPenSize(px) { if (this.nv) this.nv.opts.penSize = px; }
  undo() { if (this.nv && this.editing) this.nv.drawUndo(); }
  interpolate() {
    const nv = this.nv; if (!nv || !this.editing) return;
    const types = { axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal };
    nv.interpolateMaskSlices(undefined, undefined, { useIntensityGuided: false, sliceType: types[this.view] ?? nv.sliceTypeAxial });
  }
  /** NIfTI bytes (gzip) of the edited mask on the CT's grid; keeps the edit in the overlay. */
  async finishEdit() {
    const nv = this.nv; if (!nv || !this.editing) return null;
    // an uncompressed NIfTI of the drawing, in the CT's own voxel order (NiiVue reorients it back)
    const bytes = await nv.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });
    if (!(bytes instanceof Uint8Array)) return null;
    const L = this.editing.layer;
    const offset = Math.round(new DataView(bytes.buffer, bytes.byteOffset).getFloat32(108, true));
    const voxels = bytes.subarray(offset);
    if (voxels.length === L.mask.length) for (let k = 0; k < L.mask.length; k++) L.mask[k] = voxels[k] > 0 ? 1 : 0;
    L.edges = {}; L.range = null; this._maskVersion = (this._maskVersion || 0) + 1;
    this.cancelEdit();
    return bytes;
  }
  cancelEdit() {
    const nv = this.nv; if (!nv || !this.editing) { this.editing = null; return; }
    nv.setDrawingEnabled(false);
    nv.closeDrawing();
    this.editing = null;
    this.refreshOverlays();
  }
}
