// delineo web front end: sign in, upload (drag and drop, progress), study list with live job
// states, NiiVue viewer with coloured structure overlays, downloads. No framework.
import { Viewer } from "/static/viewer.js";

const $ = (id) => document.getElementById(id);
const state = { user: null, studies: [], models: [], selected: null, detail: null, viewer: null, loadedFor: null, view: "axial", poll: null, missing: null };

// ---- HTTP ------------------------------------------------------------------------------------
async function api(path, opts = {}) {
  const headers = opts.json ? { "Content-Type": "application/json" } : {};
  const res = await fetch(path, { credentials: "same-origin", ...opts, headers: { ...headers, ...(opts.headers || {}) },
    body: opts.json ? JSON.stringify(opts.json) : opts.body });
  if (res.status === 401 && !path.startsWith("/api/auth/login")) { showLogin(); throw new Error("Please sign in again."); }
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try { const j = await res.json(); if (j.detail) msg = typeof j.detail === "string" ? j.detail : j.detail.map((d) => d.msg).join("; "); } catch (_) {}
    throw new Error(msg);
  }
  return res.status === 204 ? null : res.json();
}
function toast(msg, ms = 4000) { const t = $("toast"); t.textContent = msg; t.classList.remove("hidden"); clearTimeout(toast.t); toast.t = setTimeout(() => t.classList.add("hidden"), ms); }
const fmtDate = (s) => new Date(s).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
const fmtShort = (s) => new Date(s).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
const fmtSize = (b) => b > 1 << 20 ? `${(b / 2 ** 20).toFixed(1)} MB` : `${Math.max(1, Math.round(b / 1024))} kB`;
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const STAGES = { queued: "Waiting in the queue", starting: "Starting", read: "Reading the image", model: "Running the model",
  write: "Writing the contours", rtstruct: "Writing the RT Structure Set", seg: "Writing the DICOM SEG", done: "Done", failed: "Failed",
  "re-queued after an interruption": "Waiting in the queue again (the server was interrupted)" };
const stageText = (j) => STAGES[j.stage] || (j.state === "queued" ? STAGES.queued : "Working");

// ---- sign in -----------------------------------------------------------------------------------
function showLogin() {
  state.user = null; clearInterval(state.poll);
  $("app-view").classList.add("hidden"); $("userbox").classList.add("hidden"); $("login-view").classList.remove("hidden");
  $("login-user").focus();
}
async function showApp(user) {
  state.user = user;
  $("username").textContent = user.username + (user.is_admin ? " (admin)" : "");
  $("users-btn").classList.toggle("hidden", !user.is_admin);
  $("audit-link").classList.toggle("hidden", !user.is_admin);
  $("login-view").classList.add("hidden"); $("userbox").classList.remove("hidden"); $("app-view").classList.remove("hidden");
  state.models = await api("/api/models");
  renderNodeStudies().catch(() => {});
  await loadDestinations();
  await refreshStudies();
  clearInterval(state.poll);
  state.poll = setInterval(() => refreshStudies().catch(() => {}), 1500);
}
$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault(); $("login-error").textContent = "";
  try { showApp(await api("/api/auth/login", { method: "POST", json: { username: $("login-user").value.trim(), password: $("login-pass").value } })); $("login-pass").value = ""; }
  catch (err) { $("login-error").textContent = err.message; }
});
$("logout-btn").addEventListener("click", async () => { await api("/api/auth/logout", { method: "POST" }).catch(() => {}); location.hash = ""; showLogin(); });
// change your own password (POST /api/auth/password): the other sessions and tokens are revoked, this one stays
$("password-btn").addEventListener("click", () => { $("password-form").reset(); $("pw-error").textContent = ""; $("password-dialog").showModal(); $("pw-old").focus(); });
$("pw-cancel").addEventListener("click", () => $("password-dialog").close());
$("password-form").addEventListener("submit", async (e) => {
  e.preventDefault(); $("pw-error").textContent = "";
  if ($("pw-new").value !== $("pw-again").value) { $("pw-error").textContent = "The two new passwords differ."; return; }
  try {
    await api("/api/auth/password", { method: "POST", json: { old_password: $("pw-old").value, new_password: $("pw-new").value } });
    $("password-form").reset(); $("password-dialog").close(); toast("Password changed");
  } catch (err) { $("pw-error").textContent = err.message; }
});

// ---- upload ------------------------------------------------------------------------------------
function uploadFiles(files) {
  if (!files.length) return;
  $("upload-error").textContent = ""; $("upload-warning").classList.add("hidden");
  const form = new FormData();
  for (const { file, path } of files) form.append("files", file, path || file.name);
  const total = files.reduce((a, f) => a + f.file.size, 0);
  $("upload-label").textContent = files.length === 1 ? `Uploading ${files[0].file.name}` : `Uploading ${files.length} files`;
  $("upload-status").classList.remove("hidden"); $("upload-bar").style.width = "0%"; $("upload-pct").textContent = "";
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/studies");
  xhr.upload.onprogress = (e) => {
    const pct = Math.round(100 * e.loaded / (e.lengthComputable ? e.total : total));
    $("upload-bar").style.width = `${pct}%`; $("upload-pct").textContent = `${pct}% of ${fmtSize(total)}`;
    if (pct >= 100) $("upload-label").textContent = "Checking the images…";
  };
  xhr.onload = async () => {
    $("upload-status").classList.add("hidden");
    let body = {}; try { body = JSON.parse(xhr.responseText); } catch (_) {}
    if (xhr.status === 201) { toast(`Uploaded “${body.name}”`); showDuplicates(body); await refreshStudies(); select(body.id); }
    else if (xhr.status === 401) showLogin();
    else $("upload-error").textContent = body.detail ? `Upload refused: ${body.detail}` : `Upload failed (${xhr.status})`;
  };
  xhr.onerror = () => { $("upload-status").classList.add("hidden"); $("upload-error").textContent = "The upload was interrupted (connection lost or the file is larger than the server accepts)."; };
  xhr.send(form);
}
async function entriesToFiles(entry, prefix = "") {
  if (entry.isFile) return [{ file: await new Promise((ok, ko) => entry.file(ok, ko)), path: prefix + entry.name }];
  const reader = entry.createReader(); const out = [];
  for (;;) {
    const batch = await new Promise((ok, ko) => reader.readEntries(ok, ko));
    if (!batch.length) break;
    for (const e of batch) out.push(...await entriesToFiles(e, `${prefix}${entry.name}/`));
  }
  return out;
}
const dz = $("dropzone");
dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("over"); });
dz.addEventListener("dragleave", () => dz.classList.remove("over"));
dz.addEventListener("drop", async (e) => {
  e.preventDefault(); dz.classList.remove("over");
  const items = [...(e.dataTransfer.items || [])].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  let files = [];
  if (items.length) for (const it of items) files.push(...await entriesToFiles(it));
  else files = [...e.dataTransfer.files].map((f) => ({ file: f }));
  uploadFiles(files);
});
$("file-input").addEventListener("change", (e) => { uploadFiles([...e.target.files].map((f) => ({ file: f }))); e.target.value = ""; });
$("folder-input").addEventListener("change", (e) => { uploadFiles([...e.target.files].map((f) => ({ file: f, path: f.webkitRelativePath }))); e.target.value = ""; });

// ---- study list --------------------------------------------------------------------------------
const STATE_ORDER = { running: 0, queued: 1, failed: 2, done: 3 };
function studyMatches(s, q) {
  if (!q) return true;
  const hay = [s.name, s.patient_id, s.model, s.study_date, s.kind, s.owner, s.latest_job?.state].filter(Boolean).join(" ").toLowerCase();
  return q.toLowerCase().split(/\s+/).every((w) => hay.includes(w));
}
function sortStudies(list, how) {
  const by = {
    "created-desc": (a, b) => b.created_at.localeCompare(a.created_at),
    "created-asc": (a, b) => a.created_at.localeCompare(b.created_at),
    "date-desc": (a, b) => (b.study_date || "").localeCompare(a.study_date || "") || b.created_at.localeCompare(a.created_at),
    "date-asc": (a, b) => (a.study_date || "9999").localeCompare(b.study_date || "9999") || a.created_at.localeCompare(b.created_at),
    "name-asc": (a, b) => a.name.localeCompare(b.name, undefined, { numeric: true, sensitivity: "base" }),
    "patient-asc": (a, b) => (a.patient_id || "~").localeCompare(b.patient_id || "~", undefined, { numeric: true }) || a.name.localeCompare(b.name),
    "state": (a, b) => (STATE_ORDER[a.latest_job?.state] ?? 4) - (STATE_ORDER[b.latest_job?.state] ?? 4) || b.created_at.localeCompare(a.created_at),
  }[how] || (() => 0);
  return [...list].sort(by);
}
function renderStudyList() {
  const ul = $("study-list");
  const q = $("study-search").value.trim();
  const shown = sortStudies(state.studies.filter((s) => studyMatches(s, q)), $("study-sort").value);
  $("study-count").textContent = state.studies.length ? (q ? `(${shown.length} of ${state.studies.length})` : `(${state.studies.length})`) : "";
  $("empty-list").classList.toggle("hidden", state.studies.length > 0);
  ul.innerHTML = shown.map((s) => {
    const j = s.latest_job;
    const chip = j ? `<span class="chip ${j.state}">${j.state === "running" ? `${Math.round(100 * j.progress)}%` : j.state}</span>` : `<span class="chip">not contoured</span>`;
    const bar = j && (j.state === "running" || j.state === "queued") ? `<div class="bar"><div style="width:${Math.round(100 * j.progress)}%"></div></div>` : "";
    const meta = [s.patient_id ? `<span class="pid" title="Patient ID">${esc(s.patient_id)}</span>` : "", s.study_date ? `<span title="Study date">${esc(s.study_date)}</span>` : `<span title="Uploaded">${fmtDate(s.created_at)}</span>`,
      s.model ? `<span class="model" title="Model">${esc(s.model)}</span>` : ""].filter(Boolean).join(" · ");
    return `<li data-id="${s.id}" class="${s.id === state.selected ? "selected" : ""}"><div class="name">${esc(s.name)}<span class="badge">${esc(s.kind)}</span></div>
      <div class="sub"><span class="meta">${meta}</span>${chip}</div>${bar}</li>`;
  }).join("") || (state.studies.length ? `<li class="none muted">No study matches “${esc(q)}”.</li>` : "");
}
// the same series (DICOM Series Instance UID) or file (NIfTI, PNG) uploaded before: the upload is kept, the earlier study linked
function showDuplicates(study) {
  const dups = study.duplicate_of || [], el = $("upload-warning");
  el.classList.toggle("hidden", !dups.length); if (!dups.length) return;
  const what = dups[0].match === "series" ? "This series (same Series Instance UID)" : "This file";
  el.innerHTML = `⚠ ${what} was uploaded before as ${dups.map((d) => `<a href="#${esc(d.id)}">${esc(d.name)}</a> (${fmtShort(d.created_at)})`).join(", ")}.
    The new copy “${esc(study.name)}” is a separate study, without the earlier one's results and reviews; delete it if it is not needed.`;
}
$("study-search").addEventListener("input", renderStudyList);
$("study-sort").addEventListener("change", () => { try { localStorage.setItem("delineo.sort", $("study-sort").value); } catch (_) {} renderStudyList(); });
try { const v = localStorage.getItem("delineo.sort"); if (v) $("study-sort").value = v; } catch (_) {}
async function refreshStudies() {
  state.studies = await api("/api/studies");
  renderStudyList();
  if (state.selected) {
    const s = state.studies.find((x) => x.id === state.selected);
    if (!s) await loadDetail();  // gone (a message), or another user's study an administrator opened
    else if (JSON.stringify(s.latest_job) !== JSON.stringify(state.detail?.latest_job)) await loadDetail();
  } else if (location.hash.length > 1 && state.missing !== location.hash.slice(1)) {
    select(location.hash.slice(1));  // not in the list: an administrator may still open it; otherwise a clear message
  }
}
window.addEventListener("hashchange", () => { const id = location.hash.slice(1); if (id && id !== state.selected) { state.missing = null; select(id); } });
function showMissing(id, message) {
  state.missing = id; state.selected = null; state.detail = null;
  $("study-view").classList.add("hidden"); $("no-study").classList.add("hidden");
  $("missing-study").classList.remove("hidden");
  $("missing-text").textContent = `There is no study “${id}” that you may open${message ? ` (${message})` : ""}. It may have been deleted, or it belongs to another user.`;
}
$("study-list").addEventListener("click", (e) => { const li = e.target.closest("li[data-id]"); if (li) select(li.dataset.id); });
async function select(id) {
  if (id !== state.selected) state.openJob = null;  // an earlier version opened in another study
  state.selected = id; location.hash = id;
  document.querySelectorAll("#study-list li").forEach((li) => li.classList.toggle("selected", li.dataset.id === id));
  await loadDetail();
}
async function loadDetail() {
  if (!state.selected) return;
  const id = state.selected;
  let d;
  try { d = await api(`/api/studies/${id}${state.openJob ? `?job=${state.openJob}` : ""}`); }
  catch (err) { if (/^(404|403)|no such study/i.test(err.message)) showMissing(id, err.message); else toast(err.message); return; }
  if (state.selected !== id) return;
  $("missing-study").classList.add("hidden");
  state.detail = d;
  state.reference = d.result_job ? await api(`/api/studies/${id}/reference`).catch(() => null) : null;
  if (state.selected !== id) return;
  renderStudy(d);
  renderReference(state.reference);
  refreshSends();
  refreshVersions();
}

// ---- sending to a planning system ---------------------------------------------------------------
const SEND_STATES = { queued: "waiting", sending: "sending…", retrying: "retrying", sent: "sent", failed: "failed" };
async function refreshSends() {
  const d = state.detail; if (!d) return;
  const canSend = d.results.includes("rtstruct");
  $("send-btn").disabled = !canSend || !state.destinations?.length;
  $("send-note").textContent = !state.destinations?.length ? "No destination is set up: an administrator adds the planning system (AE@HOST:PORT)."
    : !canSend ? (d.kind === "dicom" ? "Contour the study first." : "Sending needs a DICOM study (an RT Structure Set is made for DICOM uploads).") : "Sends the RT Structure Set and SEG as they are now (corrections and reviews included).";
  let sends = [];
  try { sends = await api(`/api/studies/${d.id}/sends`); } catch (_) { return; }
  if (state.detail?.id !== d.id) return;
  $("send-list").innerHTML = sends.slice(0, 5).map((r) => `<li class="send ${r.state}" title="${esc(r.target)} · ${esc(r.files.join(", "))}">
    <span class="chip ${r.state === "sent" ? "done" : r.state === "failed" ? "failed" : "running"}">${SEND_STATES[r.state] || esc(r.state)}</span>
    <span>${esc(r.destination)}</span> <span class="muted">${fmtShort(r.created_at)} · ${esc(r.user)}${r.version ? ` · version ${r.version}` : ""}${r.attempts > 1 ? ` · ${r.attempts} attempts` : ""}</span>
    ${r.error && r.state !== "sent" ? `<div class="err small">${esc(r.error)}</div>` : ""}</li>`).join("");
  clearTimeout(state.sendPoll);
  if (sends.some((r) => ["queued", "sending", "retrying"].includes(r.state))) state.sendPoll = setTimeout(refreshSends, 1000);
}
async function loadDestinations() {
  state.destinations = await api("/api/send/destinations").catch(() => []);
  $("send-dest").innerHTML = state.destinations.map((x) => `<option value="${esc(x.name)}">${esc(x.name)} (${esc(x.target)})</option>`).join("") || `<option value="">no destination</option>`;
  $("dest-admin").classList.toggle("hidden", !state.user?.is_admin);
}
$("send-btn").addEventListener("click", async () => {
  const d = state.detail; const dest = $("send-dest").value; if (!d || !dest) return;
  $("send-btn").disabled = true;
  try { await api(`/api/studies/${d.id}/send?job=${d.result_job}`, { method: "POST", json: { destination: dest } }); }
  catch (err) { toast(err.message); }
  finally { await refreshSends(); }
});
$("dest-form").addEventListener("submit", async (e) => {
  e.preventDefault(); $("dest-error").textContent = "";
  try {
    await api(`/api/send/destinations/${encodeURIComponent($("dest-name").value.trim())}`, { method: "PUT", json: { address: $("dest-address").value.trim() } });
    $("dest-name").value = ""; $("dest-address").value = "";
    await loadDestinations(); await refreshSends();
  } catch (err) { $("dest-error").textContent = err.message; }
});

// ---- reference contours ------------------------------------------------------------------------
const REF_COLOR = [255, 230, 0];
// a reference structure is drawn dashed in the colour of the result's structure of its name (as
// planning systems draw a second set); yellow only when the result has no such structure
const normName = (n) => String(n).toLowerCase().replace(/[\s_-]+/g, "");
function refColor(name) { const s = state.detail?.structures?.find((x) => normName(x.name) === normName(name)); return s ? s.color : REF_COLOR; }
const refLayer = (r) => `${r} (reference)`;
const fmtNum = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
function renderReference(ref) {
  const has = !!(ref && ref.present);
  $("reference-table").classList.toggle("hidden", !has);
  $("reference-info").innerHTML = has
    ? `<span class="swatch dashed" style="border-color:var(--muted)"></span> dashed, in each structure's colour · ${esc(ref.source)} · ${ref.structures.length} structures · ${esc(ref.user)}, ${fmtShort(ref.at)}`
    : "Compare with a clinician's contours: upload an RT Structure Set or NIfTI masks (one per structure).";
  const hidden = state.refHidden || (state.refHidden = new Set());
  const tick = (r) => r ? `<input type="checkbox" class="ref-vis" data-ref="${esc(r)}" ${hidden.has(r) ? "" : "checked"} aria-label="show the reference ${esc(r)}"><span class="swatch dashed" style="border-color:rgb(${refColor(r)})"></span>` : "";
  $("reference-rows").innerHTML = has ? ref.metrics.map((m) => m.structure && m.reference
    ? `<tr><td>${tick(m.reference)}${esc(m.structure)}</td><td class="num">${fmtNum(m.dice, 3)}</td><td class="num">${fmtNum(m.hd95_mm, 1)}</td><td class="num">${fmtNum(m.surface_dice, 3)}</td></tr>`
    : `<tr class="muted"><td>${tick(m.reference)}${esc(m.structure || m.reference)}</td><td colspan="3">${m.structure ? "not in the reference" : "only in the reference"}</td></tr>`).join("") : "";
}
$("reference-input").addEventListener("change", async (e) => {
  const d = state.detail; const files = [...e.target.files]; e.target.value = "";
  if (!d || !files.length) return;
  $("reference-error").textContent = "";
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  try {
    $("reference-info").textContent = "Reading the reference and comparing…";
    state.reference = await api(`/api/studies/${d.id}/reference`, { method: "POST", body: form });
    renderReference(state.reference);
    state.loadedFor = null; renderStudy(d);  // load the reference into the viewer
  } catch (err) { $("reference-error").textContent = `Reference refused: ${err.message}`; renderReference(state.reference); }
});
function referenceVisibility() {
  const shownNow = {}; const all = $("reference-show").checked; const hidden = state.refHidden || new Set();
  for (const L of state.viewer?.layers || []) if (L.reference) shownNow[L.name] = all && !hidden.has(L.refName);
  return shownNow;
}
$("reference-show").addEventListener("change", () => state.viewer?.setVisibleMany(referenceVisibility()));
$("reference-rows").addEventListener("change", (e) => {
  const cb = e.target.closest("input.ref-vis"); if (!cb) return;
  const hidden = state.refHidden || (state.refHidden = new Set());
  if (cb.checked) hidden.delete(cb.dataset.ref); else hidden.add(cb.dataset.ref);
  state.viewer?.setVisibleMany(referenceVisibility());
});

// ---- study view --------------------------------------------------------------------------------
function renderStudy(d) {
  $("no-study").classList.toggle("hidden", !!d); $("study-view").classList.toggle("hidden", !d);
  if (d) $("missing-study").classList.add("hidden");
  if (!d) return;
  $("study-name").textContent = d.name;
  const i = d.info || {};
  const parts = [d.kind === "dicom" ? `DICOM ${i.modality || ""} series, ${i.slices} slices` : d.kind === "png" ? "X-ray image (PNG)" : "NIfTI volume"];
  if (i.shape) parts.push(i.shape.join(" × ") + " voxels");
  const spacing = i.spacing_mm || d.dicom_geometry?.spacing_mm;
  if (spacing) parts.push(spacing.map((v) => +Number(v).toFixed(2)).join(" × ") + " mm voxels");
  if (d.patient_id) parts.unshift(`Patient ID ${d.patient_id}`);
  if (d.study_date) parts.push(`study date ${d.study_date}`);
  parts.push(fmtSize(d.size_bytes), `uploaded ${fmtDate(d.created_at)}`);
  if (state.user.is_admin && d.owner !== state.user.username) parts.push(`owner ${d.owner}`);
  $("study-meta").textContent = parts.join(" · ");
  renderModels(d);
  renderJob(d.latest_job);
  renderStructures(d.structures);
  for (const a of document.querySelectorAll("#downloads a")) {
    const ok = d.results.includes(a.dataset.kind);
    a.classList.toggle("disabled", !ok);
    a.href = ok ? `/api/studies/${d.id}/results/${a.dataset.kind}${state.openJob ? `?job=${d.result_job}` : ""}` : "#";
    a.setAttribute("download", "");
  }
  const noDicom = d.results.length && !d.results.includes("rtstruct");
  $("download-note").textContent = !d.results.length ? "Results appear here when contouring is done." :
    noDicom ? (d.kind === "dicom" ? "RT Structure Set and SEG need the DICOM writer on the server." : "RT Structure Set and SEG are made for DICOM uploads.") : "";
  // the viewer shows the latest finished job's result (kept while a new job runs) and reloads
  // only when that changes
  const job = d.structures.length ? d.result_job : null;
  const key = `${d.id}:${job || "-"}:${state.reference?.at || ""}`;
  if (state.loadedFor !== key) {
    state.loadedFor = key;
    loadViewer(d, job).catch((err) => { state.loadedFor = null; $("viewer-msg").textContent = `The viewer could not load the images: ${err.message}`; });
  }
}
function renderModels(d) {
  const dims = d.info?.dims || 3;
  const fitting = state.models.filter((m) => m.spatial_dims === dims);
  const sel = $("model-select"); const prev = sel.value;
  sel.innerHTML = fitting.map((m) => `<option value="${esc(m.name)}">${esc(m.name)}</option>`).join("") || `<option value="">no ${dims}D model installed</option>`;
  if (fitting.some((m) => m.name === prev)) sel.value = prev;
  renderPicks();
  const busy = d.latest_job && ["queued", "running"].includes(d.latest_job.state);
  $("contour-btn").disabled = !fitting.length || busy;
  $("contour-btn").textContent = d.latest_job ? "Contour again" : "Contour";
}
function renderPicks() {
  const m = state.models.find((x) => x.name === $("model-select").value);
  $("structure-picks").innerHTML = m ? m.structures.map((s) => `<label><input type="checkbox" checked value="${esc(s.name)}"><span class="swatch" style="background:rgb(${s.color})"></span>${esc(s.name)}</label>`).join("") : "";
  pickSummary();
}
function pickSummary() {
  const all = [...document.querySelectorAll("#structure-picks input")];
  const n = all.filter((c) => c.checked).length;
  $("picks-summary").textContent = !all.length ? "Structures" : n === all.length ? `All ${all.length} structures` : `${n} of ${all.length} structures`;
}
$("structure-picks").addEventListener("change", pickSummary);
$("model-select").addEventListener("change", renderPicks);
function renderJob(j) {
  const el = $("job-state");
  if (!j) { el.innerHTML = `<span class="muted">Not contoured yet.</span>`; return; }
  if (j.state === "failed") { el.innerHTML = `<div class="err">Contouring failed: ${esc(j.error || "unknown error")}</div>`; return; }
  if (j.state === "done") {
    const secs = j.started_at && j.finished_at ? ` in ${((new Date(j.finished_at) - new Date(j.started_at)) / 1000).toFixed(1)} s` : "";
    el.innerHTML = `<span class="chip done">done</span> <span class="muted">${esc(j.model)}${secs}, ${fmtDate(j.finished_at)}</span>`; return;
  }
  el.innerHTML = `<div class="row"><span>${esc(stageText(j))}…</span><span class="muted">${Math.round(100 * j.progress)}%</span></div><div class="bar"><div style="width:${Math.round(100 * j.progress)}%"></div></div>`;
}
$("contour-btn").addEventListener("click", async () => {
  const d = state.detail; if (!d) return;
  const all = [...document.querySelectorAll("#structure-picks input")];
  const chosen = all.filter((c) => c.checked).map((c) => c.value);
  if (!chosen.length) { toast("Choose at least one structure."); return; }
  const body = { model: $("model-select").value, structures: chosen.length === all.length ? null : chosen };
  try {
    $("contour-btn").disabled = true;
    try { await api(`/api/studies/${d.id}/jobs`, { method: "POST", json: body }); }
    catch (err) {
      // the server names corrected or reviewed structures the job would replace: ask first
      if (!/corrected or reviewed/.test(err.message)) throw err;
      if (!await askReplace(err.message)) { $("contour-btn").disabled = false; return; }
      await api(`/api/studies/${d.id}/jobs`, { method: "POST", json: { ...body, confirm_replace: true } });
    }
    state.openJob = null;
    await refreshStudies(); await loadDetail();
  } catch (err) { toast(err.message); $("contour-btn").disabled = false; }
});
function askReplace(message) {
  const m = /replace structures that were corrected or reviewed: (.*?)\. Send/.exec(message);
  $("replace-text").textContent = `Contouring again replaces ${m ? m[1] : "structures that were corrected or reviewed"}; their corrections and reviews are not carried into the new version.`;
  const dlg = $("replace-dialog");
  return new Promise((resolve) => {
    const done = (ok) => { $("replace-ok").onclick = $("replace-cancel").onclick = dlg.oncancel = null; dlg.close(); resolve(ok); };
    $("replace-ok").onclick = () => done(true);
    $("replace-cancel").onclick = () => done(false);
    dlg.oncancel = (e) => { e.preventDefault(); done(false); };
    dlg.showModal();
  });
}

// ---- versions: every job's result is kept; open or restore an earlier one ----------------------
async function refreshVersions() {
  const d = state.detail; if (!d) return;
  let list = [];
  try { list = await api(`/api/studies/${d.id}/versions`); } catch (_) { return; }
  if (state.detail?.id !== d.id) return;
  state.versions = list;
  $("no-versions").classList.toggle("hidden", list.length > 0);
  const shown = d.result_job;
  $("version-list").innerHTML = list.map((v, i) => {
    const what = v.requested ? `${v.requested.map(esc).join(", ")} contoured again` : `${v.structures.length} structures`;
    const work = [v.approved ? `${v.approved} approved` : "", v.needs_work ? `${v.needs_work} needs work` : "", v.edited ? `${v.edited} edited` : ""].filter(Boolean).join(", ");
    return `<li data-job="${esc(v.job)}" class="${v.job === shown ? "shown" : ""}${v.current ? " current" : ""}">
      <div class="vrow"><span><strong>${list.length - i}</strong> · ${fmtShort(v.finished_at || v.created_at)}</span>${v.current ? '<span class="chip done">current</span>' : ""}</div>
      <div class="muted small">${esc(v.model)} · ${what}${work ? ` · ${work}` : ""}</div>
      <div class="vbuttons">${v.job === shown ? "" : `<button type="button" class="mini" data-open>Open</button>`}${v.current ? "" : `<button type="button" class="mini" data-restore>Restore</button>`}</div></li>`;
  }).join("");
  const opened = state.openJob && list.find((v) => v.job === state.openJob && !v.current);
  $("version-banner").classList.toggle("hidden", !opened);
  $("version-banner").innerHTML = opened ? `Showing version ${list.length - list.indexOf(opened)} (${fmtShort(opened.finished_at)}), not the current one: read only. <button type="button" class="mini" data-restore="${esc(opened.job)}">Restore it</button> <button type="button" class="mini" data-current>Back to current</button>` : "";
}
async function openVersion(job) {
  const cur = state.versions?.find((v) => v.current);
  state.openJob = cur && cur.job === job ? null : job;
  await loadDetail();
}
async function restoreVersion(job) {
  const d = state.detail; if (!d) return;
  try { await api(`/api/studies/${d.id}/versions/${job}/restore`, { method: "POST" }); state.openJob = null; await loadDetail(); toast("Version restored: it is the current one again"); }
  catch (err) { toast(err.message); }
}
for (const el of [$("version-list"), $("version-banner")]) el.addEventListener("click", (e) => {
  const b = e.target.closest("button"); if (!b) return;
  const job = b.dataset.restore || b.closest("li[data-job]")?.dataset.job;
  if (b.dataset.current !== undefined) openVersion(null);
  else if (b.dataset.restore !== undefined) restoreVersion(job);
  else if (b.dataset.open !== undefined) openVersion(job);
});
$("delete-btn").addEventListener("click", async () => {
  const d = state.detail; if (!d || !confirm(`Delete “${d.name}” and all its results?`)) return;
  try { await api(`/api/studies/${d.id}`, { method: "DELETE" }); state.selected = null; state.detail = null; location.hash = ""; renderStudy(null); await refreshStudies(); toast("Study deleted"); }
  catch (err) { toast(err.message); }
});

// ---- structures table --------------------------------------------------------------------------
function flagsOf(s) {
  const f = [...(s.flags || [])];
  if (s.review && s.review.state === "needs_work") f.push(`needs work (${s.review.user})`);
  if (s.quality?.review) f.push(`quality estimate ${Number(s.quality.quality).toFixed(2)} below the review threshold`);
  return f;
}
function renderStructures(rows) {
  $("no-structures").classList.toggle("hidden", rows.length > 0);
  const readOnly = !!state.openJob;  // an earlier version: look, restore, but do not change it
  const editable = (state.detail?.info?.dims || 3) === 3 && !readOnly;
  // flagged first: failed anatomy checks or "needs work", then a quality estimate below the model's threshold
  const rank = (x) => (x.flags.length > (x.s.quality?.review ? 1 : 0) ? 0 : x.s.quality?.review ? 1 : 2);
  const sorted = rows.map((s, i) => ({ s, i, flags: flagsOf(s) })).sort((a, b) => rank(a) - rank(b) || a.i - b.i);
  $("structure-rows").innerHTML = sorted.map(({ s, flags }) => {
    const r = s.review;
    const who = r ? ` title="${esc(`${r.state === "approved" ? "Approved" : "Needs work"}: ${r.user}, ${fmtShort(r.at)}${r.note ? ` (${r.note})` : ""}`)}"` : "";
    return `<tr data-name="${esc(s.name)}" class="${flags.length ? "flagged" : ""}">
    <td><input type="checkbox" class="vis" checked aria-label="show ${esc(s.name)}"></td>
    <td class="name" title="Go to ${esc(s.name)}"><span class="swatch" style="background:rgb(${s.color})"></span><span>${esc(s.name)}</span>${s.edited ? '<span class="chip edited" title="corrected in delineo">edited</span>' : ""}${s.quality ? `<span class="chip quality${s.quality.review ? " low" : ""}" title="quality estimate: the Dice this contour would have against an expert's, estimated by the model${s.quality.review ? " (below its review threshold: check first)" : ""}">Q ${Number(s.quality.quality).toFixed(2)}</span>` : ""}${flags.length ? `<span class="flag" title="${esc(flags.join("; "))}">⚠ ${esc(flags[0])}</span>` : ""}</td>
    <td class="num">${s.empty ? '<span class="muted">empty</span>' : `${s.volume.toFixed(s.volume < 10 ? 2 : s.volume < 100 ? 1 : 0)} ${esc(s.unit)}`}</td>
    <td class="review"${who}>
      <button type="button" class="mini ok ${r?.state === "approved" ? "active" : ""}" data-review="approved" aria-label="approve ${esc(s.name)}" title="Approved"${readOnly ? " disabled" : ""}>✓</button><button type="button" class="mini bad ${r?.state === "needs_work" ? "active" : ""}" data-review="needs_work" aria-label="${esc(s.name)} needs work" title="Needs work"${readOnly ? " disabled" : ""}>✗</button>${editable ? `<button type="button" class="mini" data-edit aria-label="correct ${esc(s.name)}" title="Correct with brush and eraser">✎</button>` : ""}
    </td></tr>`;
  }).join("");
  const reviewed = rows.filter((s) => s.review);
  const note = $("review-note");
  note.classList.toggle("hidden", !rows.length);
  note.textContent = !rows.length ? "" : reviewed.length === rows.length && rows.every((s) => s.review.state === "approved")
    ? `All ${rows.length} structures approved; the RT Structure Set is marked APPROVED.`
    : `${rows.filter((s) => s.review?.state === "approved").length} of ${rows.length} approved` + (state.detail?.edit_version ? ` · version ${state.detail.set_version || state.detail.edit_version} (the model's original: ?original=true)` : "");
}
$("structure-rows").addEventListener("click", async (e) => {
  const tr = e.target.closest("tr"); if (!tr) return;
  const name = tr.dataset.name; const d = state.detail;
  const rb = e.target.closest("button[data-review]");
  if (rb && d) {
    const current = d.structures.find((s) => s.name === name)?.review?.state;
    const next = current === rb.dataset.review ? null : rb.dataset.review;
    try { await api(`/api/studies/${d.id}/reviews/${encodeURIComponent(name)}?job=${d.result_job}`, { method: "PUT", json: { state: next } }); await loadDetail(); }
    catch (err) { toast(err.message); }
    return;
  }
  if (e.target.closest("button[data-edit]")) { startEdit(name); return; }
  if (e.target.closest("td.name")) state.viewer?.goToStructure(name);
});
$("structure-rows").addEventListener("change", (e) => {
  const tr = e.target.closest("tr"); if (!tr || !e.target.classList.contains("vis")) return;
  tr.classList.toggle("off", !e.target.checked);
  state.viewer?.setVisible(tr.dataset.name, e.target.checked);
});

// ---- corrections (NiiVue's drawing tools) ------------------------------------------------------
function startEdit(name) {
  const v = state.viewer; if (!v || !v.startEdit(name)) { toast("The viewer is not ready."); return; }
  state.editing = name;
  $("edit-name").textContent = name; $("edit-bar").classList.remove("hidden");
  if (state.view === "multi") setView("axial");
  v.setPenSize(Number($("pen-size").value));
  setTool("brush");
  state.viewer.goToStructure(name);
}
function setTool(tool) {
  state.viewer?.tool(tool);
  $("edit-tools").querySelectorAll("button").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
}
function endEdit() { state.editing = null; $("edit-bar").classList.add("hidden"); }
$("edit-tools").addEventListener("click", (e) => { const b = e.target.closest("button"); if (b) setTool(b.dataset.tool); });
$("pen-size").addEventListener("input", (e) => state.viewer?.setPenSize(Number(e.target.value)));
$("edit-undo").addEventListener("click", () => state.viewer?.undo());
$("edit-interp").addEventListener("click", () => { try { state.viewer?.interpolate(); } catch (err) { toast(`Interpolation: ${err.message}`); } });
$("edit-cancel").addEventListener("click", () => { state.viewer?.cancelEdit(); endEdit(); });
$("edit-save").addEventListener("click", async () => {
  const d = state.detail; const name = state.editing; if (!d || !name) return;
  $("edit-save").disabled = true;
  try {
    const bytes = await state.viewer.finishEdit();
    if (!bytes) throw new Error("nothing to save");
    const res = await fetch(`/api/studies/${d.id}/masks/${encodeURIComponent(name)}.nii?job=${d.result_job}`, {
      method: "PUT", credentials: "same-origin", headers: { "Content-Type": "application/octet-stream" }, body: bytes });
    if (!res.ok) { let m = `${res.status}`; try { m = (await res.json()).detail || m; } catch (_) {} throw new Error(m); }
    const out = await res.json();
    toast(`Saved ${name} in version ${out.set_version || out.version}`);
    endEdit();
    await loadDetail();
  } catch (err) { toast(`The correction was not saved: ${err.message}`); }
  finally { $("edit-save").disabled = false; }
});

// ---- viewer ------------------------------------------------------------------------------------
function windowRange() {
  const v = $("window-select").value;
  if (v === "auto") return null;
  const [level, width] = v.split(",").map(Number);
  return [level - width / 2, level + width / 2];
}
function viewer() {
  if (!state.viewer) {
    state.viewer = new Viewer($("gl"), { onLocation: showLocation });
    window.delineoViewer = state.viewer;  // for the browser tests and the console
  }
  return state.viewer;
}
function showLocation(loc) {
  const parts = [];
  if (loc.value !== null && loc.value !== undefined && !(state.detail?.info?.dims === 2)) parts.push(`<strong>${Math.round(loc.value)} HU</strong>`);
  // a DICOM study: the planning system's patient coordinates (LPS: x and y of RAS negated) and the
  // Instance Number of the image the point lies on; otherwise the NIfTI's RAS millimetres
  const g = state.detail?.kind === "dicom" ? state.detail.dicom_geometry : null;
  if (loc.mm && g) {
    const p = [-loc.mm[0], -loc.mm[1], loc.mm[2]];
    parts.push(`<span title="DICOM patient coordinates (LPS), as planning systems show them">${p.map((v) => (Math.abs(v) < 0.05 ? 0 : v).toFixed(1)).join(", ")} mm (DICOM LPS)</span>`);
    const at = p[0] * g.normal[0] + p[1] * g.normal[1] + p[2] * g.normal[2];
    let best = null;
    for (const [pos, n] of g.slices) if (!best || Math.abs(pos - at) < Math.abs(best[0] - at)) best = [pos, n];
    const half = (g.spacing_mm?.[2] || 1) / 2 + 0.01;
    if (best && Math.abs(best[0] - at) <= half) parts.push(`<span title="DICOM Instance Number of this image">instance ${best[1]}</span>`);
  } else if (loc.mm) parts.push(`<span title="NIfTI world coordinates (RAS)">${Array.from(loc.mm).slice(0, 3).map((v) => v.toFixed(1)).join(", ")} mm (RAS)</span>`);
  if (loc.slice) parts.push(`slice ${Math.round(loc.slice[0]) + 1} / ${loc.slice[1]}`);
  if (loc.inside.length) parts.push(`in ${loc.inside.map(esc).join(", ")}`);
  $("cursor-info").innerHTML = parts.join(" · ");
}
async function loadViewer(d, job) {
  const v = viewer();
  $("viewer-msg").textContent = "Loading images…";
  const is2d = (d.info?.dims || 3) === 2;
  const range = is2d ? null : windowRange();
  v.lastWindow = range;
  const shown = job ? d.structures : [];
  const ref = job && state.reference?.present ? state.reference.structures : [];
  const n = await v.load({
    ctUrl: `/api/studies/${d.id}/volume/ct.nii.gz`, window: range, is2d,
    masks: [...shown.map((s) => ({ name: s.name, color: s.color, url: `/api/studies/${d.id}/masks/${encodeURIComponent(s.name)}.nii.gz?job=${job}` })),
      ...ref.map((r) => ({ name: refLayer(r), refName: r, color: refColor(r), reference: true, dashed: true, url: `/api/studies/${d.id}/reference/masks/${encodeURIComponent(r)}.nii.gz` }))],
  });
  if (state.detail?.id !== d.id) return;  // another study was chosen meanwhile
  // every tick box at once: one overlay update (issue 37)
  const shownNow = {};
  Object.assign(shownNow, referenceVisibility());
  document.querySelectorAll("#structure-rows tr").forEach((tr) => { shownNow[tr.dataset.name] = tr.querySelector(".vis").checked; });
  v.setVisibleMany(shownNow);
  $("view-buttons").querySelectorAll("button").forEach((b) => { b.disabled = is2d && b.dataset.view !== "axial"; });
  $("window-select").disabled = is2d;
  setView(is2d ? "axial" : state.view);
  $("viewer-msg").textContent = "";
  $("gl").dataset.loaded = String(n);
  $("gl").dataset.job = job || "";
  if (state.editing) endEdit();
}
function setView(view) {
  state.view = view;
  if (state.viewer) state.viewer.setView(view);
  $("view-buttons").querySelectorAll("button").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
}
$("view-buttons").addEventListener("click", (e) => { const b = e.target.closest("button"); if (b) setView(b.dataset.view); });
$("window-select").addEventListener("change", () => { const r = windowRange(); if (state.viewer) { state.viewer.lastWindow = r; state.viewer.setWindow(r); } });
$("zoom-in").addEventListener("click", () => state.viewer?.zoom(1.25));
$("zoom-out").addEventListener("click", () => state.viewer?.zoom(0.8));
$("zoom-reset").addEventListener("click", () => { state.viewer?.resetView(); });
$("pan-btn").addEventListener("click", () => {
  const on = !$("pan-btn").classList.contains("active");
  $("pan-btn").classList.toggle("active", on); $("pan-btn").setAttribute("aria-pressed", String(on));
  state.viewer?.setDrag(on ? "pan" : "window");
});
$("mode-buttons").addEventListener("click", (e) => {
  const b = e.target.closest("button"); if (!b) return;
  viewer().setMode(b.dataset.mode); renderModeButtons();
});
$("fill-opacity").addEventListener("input", (e) => viewer().setFillOpacity(Number(e.target.value)));
$("radiological").addEventListener("change", (e) => viewer().setRadiological(e.target.checked));
function renderModeButtons() {
  const p = viewer().prefs;
  $("mode-buttons").querySelectorAll("button").forEach((b) => b.classList.toggle("active", b.dataset.mode === p.mode));
  $("fill-opacity").disabled = p.mode !== "filled";
  $("fill-opacity").value = String(p.opacity);
  $("radiological").checked = p.radiological;
}
renderModeButtons();

// ---- users (administrators) --------------------------------------------------------------------
async function renderUsers() {
  const users = await api("/api/users");
  $("user-rows").innerHTML = users.map((u) => `<tr><td>${esc(u.username)}</td><td>${u.is_admin ? "administrator" : "user"}</td><td>${fmtDate(u.created_at)}</td>
    <td><button type="button" class="ghost small revoke" data-id="${u.id}" title="End all sessions and revoke all API tokens of ${esc(u.username)}">Sign out everywhere</button></td></tr>`).join("");
  renderNodeStatus().catch(() => {});
}
// the DICOM node's outbox (issue 18): results the planning system has not received are shown here
async function renderNodeStatus() {
  const st = await api("/api/dicom-node"); const el = $("node-status");
  el.classList.toggle("hidden", !st.exists); if (!st.exists) return;
  const waiting = st.outbox.length, bad = st.undeliverable;
  const rows = st.outbox.filter((o) => o.undeliverable).map((o) => `<li>series ${esc(o.series)}: ${o.attempts} attempts over ${Math.round(o.waiting_s / 60)} min${o.last_error ? ` (${esc(o.last_error)})` : ""}</li>`).join("");
  el.innerHTML = `<h3>DICOM node</h3><p class="${bad ? "error" : "muted"}">${st.done} series contoured · ${waiting} result(s) waiting to be sent${bad ? ` · <strong>${bad} NOT DELIVERED</strong>` : ""} · ${st.failed.length} failed</p>${rows ? `<ul class="error">${rows}</ul>` : ""}`;
}
// series the DICOM node received (make run: delineo serve --dicom-port) are contoured and sent by the
// node, not made studies here: say so to administrators, where the results are, and list them read only
async function renderNodeStudies() {
  const el = $("node-studies");
  if (!state.user?.is_admin) { el.classList.add("hidden"); return; }
  const st = await api("/api/dicom-node");
  el.classList.toggle("hidden", !st.exists); if (!st.exists) return;
  const rows = (st.contoured || []).map((r) => `<li title="${esc(r.folder)}">${r.contoured_at ? fmtShort(r.contoured_at) : "?"} · series …${esc(r.series.slice(-12))} · ${r.images ?? "?"} images · ${esc(r.model || "?")} · ${r.structures} structures${r.review ? `, <span class="flag">⚠ ${r.review} to review</span>` : ""}${r.outbox ? ` · <strong class="${r.outbox === "undeliverable" ? "error" : ""}">${r.outbox === "undeliverable" ? "NOT DELIVERED" : "waiting to be sent"}</strong>` : ""}</li>`).join("");
  el.innerHTML = `<h3>DICOM node <span class="muted">(administrators)</span></h3>
    <p class="muted">Series received on the DICOM port are contoured and sent on by the node; they are not studies in this list.
    Results (RT Structure Set, SEG, overview): <code>${esc(st.storage)}/done/</code>. State: <code>${esc(st.status_command)}</code></p>
    <p class="muted">${st.done} series contoured · ${st.outbox.length} waiting to be sent · ${st.failed.length} failed</p>${rows ? `<ul class="node-list">${rows}</ul>` : ""}`;
}
setInterval(() => { if (state.user?.is_admin) renderNodeStudies().catch(() => {}); }, 30000);
$("user-rows").addEventListener("click", async (e) => {
  const b = e.target.closest("button.revoke"); if (!b) return;
  try { const r = await api(`/api/users/${b.dataset.id}/sessions`, { method: "DELETE" }); toast(`${r.revoked} session(s) and token(s) revoked`); }
  catch (err) { toast(err.message); }
});
$("users-btn").addEventListener("click", async () => { await renderUsers(); $("users-dialog").showModal(); });
$("users-close").addEventListener("click", () => $("users-dialog").close());
$("user-form").addEventListener("submit", async (e) => {
  e.preventDefault(); $("user-error").textContent = "";
  try {
    await api("/api/users", { method: "POST", json: { username: $("new-user").value.trim(), password: $("new-pass").value, is_admin: $("new-admin").checked } });
    $("new-user").value = ""; $("new-pass").value = ""; $("new-admin").checked = false; await renderUsers(); toast("User added");
  } catch (err) { $("user-error").textContent = err.message; }
});

// ---- start -------------------------------------------------------------------------------------
api("/api/auth/me").then(showApp).catch(() => showLogin());
