// delineo web page: the PACS panel (issue 38). Search a DICOMweb PACS an administrator configured
// by Patient ID or study date, contour a CT series from it (the server fetches it by WADO-RS into a
// new study and queues the usual job; the page then opens that study), store a study's results
// back in the PACS (STOW-RS), and, for administrators, configure the PACS. Independent of app.js:
// it opens a study through the address's #<id> (app.js follows it) and builds its own elements.

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const st = { user: null, pacs: [], storePoll: null, started: false };

async function api(path, opts = {}) {
  const headers = opts.json ? { "Content-Type": "application/json" } : {};
  const res = await fetch(path, { credentials: "same-origin", ...opts, headers, body: opts.json ? JSON.stringify(opts.json) : undefined });
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try { const j = await res.json(); if (j.detail) msg = typeof j.detail === "string" ? j.detail : j.detail.map((d) => d.msg).join("; "); } catch (_) {}
    const err = new Error(msg); err.status = res.status; throw err;
  }
  return res.status === 204 ? null : res.json();
}
const fmtDate = (d) => (d && /^\d{8}$/.test(d) ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d || "");
const enc = encodeURIComponent;

// ---- elements ------------------------------------------------------------------------------------
function build() {
  const css = document.createElement("link");
  css.rel = "stylesheet"; css.href = "/static/pacs.css";
  document.head.append(css);

  const panel = document.createElement("section");
  panel.id = "pacs-panel"; panel.className = "pacs-panel hidden";
  panel.innerHTML = `<details id="pacs-details" open>
    <summary>From the PACS</summary>
    <form id="pacs-search" class="pacs-search">
      <select id="pacs-select" aria-label="PACS"></select>
      <input id="pacs-patient" placeholder="Patient ID" aria-label="Patient ID" autocomplete="off">
      <input id="pacs-date" type="date" aria-label="Study date" title="Study date">
      <button id="pacs-search-btn" type="submit" class="primary">Search</button>
    </form>
    <p id="pacs-error" class="error small" role="alert"></p>
    <p id="pacs-note" class="muted small" aria-live="polite"></p>
    <ul id="pacs-results" class="pacs-results"></ul>
    <details id="pacs-admin" class="hidden">
      <summary class="small">PACS settings (administrators)</summary>
      <ul id="pacs-configured" class="pacs-configured"></ul>
      <form id="pacs-form" class="pacs-form">
        <input id="pacs-name" placeholder="Name, e.g. PACS" aria-label="PACS name" required>
        <input id="pacs-url" placeholder="http://pacs:8042/dicom-web" aria-label="DICOMweb URL" required>
        <select id="pacs-auth" aria-label="Authentication">
          <option value="basic">User name and password</option><option value="bearer">Bearer token</option><option value="none">None</option>
        </select>
        <div class="row" id="pacs-basic"><input id="pacs-user" placeholder="User name" aria-label="PACS user name" autocomplete="off">
          <input id="pacs-pass" type="password" placeholder="Password" aria-label="PACS password" autocomplete="new-password"></div>
        <input id="pacs-token" type="password" class="hidden" placeholder="Token" aria-label="PACS token" autocomplete="off">
        <p class="muted small">Kept on the server, never shown again; leave empty to keep the stored one.</p>
        <button type="submit">Save PACS</button>
      </form>
      <p id="pacs-admin-error" class="error small" role="alert"></p>
    </details>
  </details>`;
  ($("upload-error") || $("dropzone")).after(panel);

  const card = document.createElement("div");
  card.id = "pacs-store-card"; card.className = "card hidden";
  card.innerHTML = `<h3>Store to PACS</h3>
    <div class="row"><select id="pacs-store-select" aria-label="PACS to store in"></select>
      <button id="pacs-store-btn" type="button" class="primary">Store to PACS</button></div>
    <p id="pacs-store-note" class="muted small" aria-live="polite"></p>`;
  const send = $("send-card");
  if (send) send.after(card);

  $("pacs-search").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("pacs-results").addEventListener("click", (e) => { const b = e.target.closest("button[data-series]"); if (b) contour(b); });
  $("pacs-store-btn").addEventListener("click", store);
  $("pacs-auth").addEventListener("change", authFields);
  $("pacs-form").addEventListener("submit", (e) => { e.preventDefault(); saveConfig(); });
  $("pacs-configured").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-remove]"); if (b) removeConfig(b.dataset.remove);
    const ed = e.target.closest("button[data-edit]"); if (ed) editConfig(ed.dataset.edit);
  });
  window.addEventListener("hashchange", refreshStore);
}

function authFields() {
  const kind = $("pacs-auth").value;
  $("pacs-basic").classList.toggle("hidden", kind !== "basic");
  $("pacs-token").classList.toggle("hidden", kind !== "bearer");
}

// ---- the configured PACS -------------------------------------------------------------------------
async function load() {
  st.user = await api("/api/auth/me");
  st.pacs = await api("/api/pacs");
  const options = st.pacs.map((p) => `<option value="${esc(p.name)}">${esc(p.name)}</option>`).join("");
  for (const id of ["pacs-select", "pacs-store-select"]) {
    const keep = $(id).value; $(id).innerHTML = options; if (keep && st.pacs.some((p) => p.name === keep)) $(id).value = keep;
  }
  $("pacs-select").classList.toggle("hidden", st.pacs.length < 2);
  $("pacs-store-select").classList.toggle("hidden", st.pacs.length < 2);
  $("pacs-panel").classList.toggle("hidden", !st.pacs.length && !st.user.is_admin);
  $("pacs-search").classList.toggle("hidden", !st.pacs.length);
  $("pacs-note").textContent = st.pacs.length ? "" : "No PACS is set up yet: add one under PACS settings.";
  $("pacs-admin").classList.toggle("hidden", !st.user.is_admin);
  if (!st.pacs.length && st.user.is_admin) $("pacs-admin").open = true;
  $("pacs-configured").innerHTML = st.user.is_admin ? st.pacs.map((p) => `<li><span><strong>${esc(p.name)}</strong>
    <span class="url" title="${esc(p.url)}">${esc(p.url)} · ${esc(p.auth)}${p.username ? ` (${esc(p.username)})` : ""}</span></span>
    <span><button type="button" class="ghost small" data-edit="${esc(p.name)}">Edit</button>
    <button type="button" class="ghost danger small" data-remove="${esc(p.name)}">Remove</button></span></li>`).join("") : "";
  authFields();
  refreshStore();
}

async function saveConfig() {
  $("pacs-admin-error").textContent = "";
  const name = $("pacs-name").value.trim(); const auth = $("pacs-auth").value;
  const body = { url: $("pacs-url").value.trim(), auth };
  if (auth === "basic") { body.username = $("pacs-user").value.trim(); if ($("pacs-pass").value) body.password = $("pacs-pass").value; }
  if (auth === "bearer" && $("pacs-token").value.trim()) body.token = $("pacs-token").value.trim();
  try {
    await api(`/api/pacs/${enc(name)}`, { method: "PUT", json: body });
    for (const id of ["pacs-name", "pacs-url", "pacs-user", "pacs-pass", "pacs-token"]) $(id).value = "";
    await load();
    $("pacs-admin").open = false;
    $("pacs-note").textContent = `PACS “${name}” saved.`;
  } catch (err) { $("pacs-admin-error").textContent = err.message; }
}
function editConfig(name) {
  const p = st.pacs.find((x) => x.name === name); if (!p) return;
  $("pacs-name").value = p.name; $("pacs-url").value = p.url || ""; $("pacs-auth").value = p.auth || "none";
  $("pacs-user").value = p.username || ""; $("pacs-pass").value = ""; $("pacs-token").value = "";
  authFields();
}
async function removeConfig(name) {
  if (!confirm(`Remove the PACS “${name}”? Studies already fetched from it stay.`)) return;
  try { await api(`/api/pacs/${enc(name)}`, { method: "DELETE" }); await load(); }
  catch (err) { $("pacs-admin-error").textContent = err.message; }
}

// ---- search and contour --------------------------------------------------------------------------
async function search() {
  const name = $("pacs-select").value; if (!name) return;
  $("pacs-error").textContent = ""; $("pacs-note").textContent = "Searching…"; $("pacs-results").innerHTML = "";
  const params = new URLSearchParams();
  if ($("pacs-patient").value.trim()) params.set("patient_id", $("pacs-patient").value.trim());
  if ($("pacs-date").value) params.set("study_date", $("pacs-date").value);
  $("pacs-search-btn").disabled = true;
  try {
    const found = await api(`/api/pacs/${enc(name)}/studies?${params}`);
    $("pacs-note").textContent = found.length ? `${found.length} stud${found.length === 1 ? "y" : "ies"} found` : "No study matches.";
    $("pacs-results").innerHTML = found.map((s) => {
      const ct = s.series.filter((x) => x.modality === "CT");
      const other = s.series.filter((x) => x.modality !== "CT").map((x) => x.modality).filter(Boolean);
      const rows = ct.map((x) => `<div class="series"><span>${esc(x.description || "CT")} <span class="muted">(${x.instances ?? "?"} images)</span></span>
        <button type="button" data-study="${esc(s.study_uid)}" data-series="${esc(x.series_uid)}" title="Fetch this series and contour it">Contour</button></div>`).join("");
      return `<li class="study"><div><strong>${esc(s.patient_id)}</strong> · ${esc(fmtDate(s.study_date))}${s.patient_name ? ` · ${esc(s.patient_name)}` : ""}</div>
        <div class="muted small">${esc(s.description || "")}${other.length ? ` · also ${esc([...new Set(other)].join(", "))}` : ""}</div>
        ${rows || `<div class="muted small">No CT series in this study.</div>`}</li>`;
    }).join("");
  } catch (err) { $("pacs-note").textContent = ""; $("pacs-error").textContent = err.message; }
  finally { $("pacs-search-btn").disabled = false; }
}

async function contour(button) {
  const name = $("pacs-select").value;
  $("pacs-error").textContent = "";
  document.querySelectorAll("#pacs-results button[data-series]").forEach((b) => { b.disabled = true; });
  button.textContent = "Fetching…";
  $("pacs-note").textContent = "Fetching the series from the PACS…";
  try {
    const r = await api(`/api/pacs/${enc(name)}/contour`, { method: "POST", json: { study_uid: button.dataset.study, series_uid: button.dataset.series } });
    $("pacs-note").textContent = `Fetched ${r.instances} images into “${r.study.name}”; contouring.`;
    button.textContent = "Queued";
    location.hash = r.study.id;  // app.js opens the new study and follows its job
  } catch (err) { $("pacs-error").textContent = err.message; button.textContent = "Contour"; }
  finally { document.querySelectorAll("#pacs-results button[data-series]").forEach((b) => { b.disabled = false; }); }
}

// ---- store back ----------------------------------------------------------------------------------
async function refreshStore() {
  clearTimeout(st.storePoll);
  const card = $("pacs-store-card"); if (!card) return;
  const id = location.hash.slice(1);
  card.classList.toggle("hidden", !st.pacs.length || !id);
  if (!st.pacs.length || !id) return;
  let d;
  try { d = await api(`/api/studies/${enc(id)}`); } catch (_) { card.classList.add("hidden"); return; }
  if (location.hash.slice(1) !== id) return;
  const ready = d.results.includes("rtstruct");
  $("pacs-store-btn").disabled = !ready;
  if (!ready) {
    $("pacs-store-note").textContent = d.kind === "dicom" ? "Contour the study first." : "Storing needs a DICOM study (an RT Structure Set is made for DICOM studies).";
    if (d.kind === "dicom") st.storePoll = setTimeout(refreshStore, 2000);
  } else if (!$("pacs-store-note").dataset.done) {
    $("pacs-store-note").textContent = "Stores the RT Structure Set and SEG as they are now in the CT's study on the PACS.";
  }
  $("pacs-store-note").dataset.done = "";
}

async function store() {
  const id = location.hash.slice(1); const name = $("pacs-store-select").value; if (!id || !name) return;
  $("pacs-store-btn").disabled = true; $("pacs-store-note").textContent = "Storing…";
  try {
    const r = await api(`/api/studies/${enc(id)}/store-pacs`, { method: "POST", json: { pacs: name } });
    $("pacs-store-note").textContent = `Stored ${r.stored.length} object${r.stored.length === 1 ? "" : "s"} (${r.files.join(", ")}) in ${r.pacs}.`;
    $("pacs-store-note").dataset.done = "1";
  } catch (err) { $("pacs-store-note").textContent = `Not stored: ${err.message}`; }
  finally { $("pacs-store-btn").disabled = false; }
}

// ---- start once signed in (app.js shows #app-view) ------------------------------------------------
function maybeStart() {
  const view = $("app-view");
  if (!view || view.classList.contains("hidden")) { st.started = false; return; }
  if (st.started) return;
  st.started = true;
  load().catch(() => { st.started = false; });
}
build();
new MutationObserver(maybeStart).observe($("app-view"), { attributes: true, attributeFilter: ["class"] });
maybeStart();
