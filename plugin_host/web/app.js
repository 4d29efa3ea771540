// Tympan browser page: pads, parameter panel, match preview, kits, devices, status.
// Plain ES2020, no dependencies. Server text is always set with textContent.
"use strict";

(() => {
  // ---------------------------------------------------------------- helpers --
  const $ = (sel, root = document) => root.querySelector(sel);
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const STEPS = 1000;               // slider resolution
  const THROTTLE_MS = 100;          // ~10 PUTs per second per slider
  const NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];

  // Used only if GET /api/params fails, so the panel still renders.
  const FALLBACK_PARAMS = [
    { name: "f0", unit: "Hz", low: 40, high: 1000, scale: "log", description: "fundamental frequency" },
    { name: "tau", unit: "s", low: 0.07, high: 0.8, scale: "linear", description: "decay time" },
    { name: "p", unit: "", low: 1e-5, high: 0.2, scale: "log", description: "frequency-dependent damping" },
    { name: "D", unit: "", low: 1e-5, high: 0.3, scale: "log", description: "dispersion" },
    { name: "alpha", unit: "", low: 0, high: 1, scale: "linear", description: "aspect ratio" },
  ];

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c != null) e.append(c instanceof Node ? c : String(c));
    return e;
  }

  function noteName(n) {
    return Number.isInteger(n) ? `${NOTE_NAMES[((n % 12) + 12) % 12]}${Math.floor(n / 12) - 1}` : "";
  }

  function fmtNum(v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return "\u2014";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return v.toPrecision(3);
  }

  // Like Python's :g: 40, 1000, 0.07, 1e-5.
  function fmtShort(v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return "?";
    const a = Math.abs(v);
    if (a !== 0 && a < 1e-3) return v.toExponential(0).replace("e-", "e\u2212");
    return String(Number(v.toPrecision(3)));
  }

  function fmtParam(name, v) {
    const spec = S.specByName[name];
    const unit = spec && spec.unit ? ` ${spec.unit}` : "";
    return fmtNum(v) + (typeof v === "number" && Number.isFinite(v) ? unit : "");
  }

  function fmtDb(v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return "\u2014";
    return `${v > 0 ? "+" : ""}${v.toFixed(1)} dB`;
  }

  // ------------------------------------------------------------------ state --
  const S = {
    params: [],
    specByName: {},
    paramRows: {},
    kit: null,
    pads: new Map(),        // note -> PadOut
    padEls: new Map(),      // note -> button.pad
    padStates: new Map(),   // note -> {state, busy, scoring, progress, error, paramsJob, scoredJob}
    latestJob: new Map(),   // note -> newest job id seen
    selected: null,
    throttles: new Map(),   // "note:name" -> Throttle
    dragging: null,         // throttle key of the slider under the pointer
    matchToken: 0,
    matchPoll: null,
    previewData: null,      // {note, match}
    ws: null,
    wsDelay: 500,
    wsEverOpen: false,
    lastMidiCount: null,
    learning: null,
    audio: null,
    audioUrl: null,
    noAudioNoted: false,
    lastStatus: null,
    devices: null,
  };

  // -------------------------------------------------------------- messages --
  let msgTimer = null;
  function showMessage(text, kind = "error") {
    const m = $("#message");
    if (!m) return;
    m.textContent = String(text);
    m.dataset.kind = kind;
    m.setAttribute("role", kind === "error" ? "alert" : "status");
    clearTimeout(msgTimer);
    if (kind !== "error") {
      msgTimer = setTimeout(() => { if (m.textContent === String(text)) m.textContent = ""; }, 5000);
    }
  }

  function showError(err, context) {
    const text = (err && err.message) || String(err);
    showMessage(context ? `${context}: ${text}` : text, "error");
  }

  // ------------------------------------------------------------------- API --
  class ApiError extends Error {
    constructor(message, status) { super(message); this.name = "ApiError"; this.status = status; }
  }

  function formatDetail(d) {
    if (d == null) return "";
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map((x) => {
        if (x && typeof x === "object") {
          const loc = Array.isArray(x.loc) ? x.loc.filter((p) => p !== "body").join(".") : "";
          return [loc, x.msg].filter(Boolean).join(": ");
        }
        return String(x);
      }).join("; ");
    }
    if (typeof d === "object" && d.message) return String(d.message);
    try { return JSON.stringify(d); } catch (_) { return String(d); }
  }

  async function errorText(resp) {
    let detail = null;
    try {
      const body = await resp.clone().json();
      detail = body && typeof body === "object" && "detail" in body ? body.detail : null;
    } catch (_) { /* not JSON */ }
    if (detail == null) {
      try {
        const t = (await resp.text()).trim();
        if (t && t.length < 300 && !t.startsWith("<")) detail = t;
      } catch (_) { /* ignore */ }
    }
    return formatDetail(detail) || `${resp.status} ${resp.statusText || "error"}`;
  }

  // Returns parsed JSON for JSON responses, the Response otherwise; throws ApiError.
  async function api(method, path, { json, form } = {}) {
    const opts = { method, headers: {} };
    if (json !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(json);
    } else if (form) {
      opts.body = form;
    }
    let resp;
    try {
      resp = await fetch(path, opts);
    } catch (err) {
      throw new ApiError(`server unreachable (${(err && err.message) || err})`, 0);
    }
    if (!resp.ok) throw new ApiError(await errorText(resp), resp.status);
    const ct = resp.headers.get("content-type") || "";
    if (ct.includes("application/json")) {
      try { return await resp.json(); } catch (_) { throw new ApiError(`${method} ${path}: invalid JSON`, resp.status); }
    }
    return resp;
  }

  // --------------------------------------------------------------- throttle --
  // At most one request in flight per key, at most one per interval; the newest
  // pushed value is always sent eventually (so the final value always lands).
  class Throttle {
    constructor(send, interval = THROTTLE_MS) {
      this.send = send; this.interval = interval;
      this.value = undefined; this.has = false; this.inflight = false; this.last = 0; this.timer = null;
      this.sent = undefined;      // last value sent (reset when a send fails)
    }
    push(v) {
      // input + change events repeat the same value: send it once (one undo step).
      if (!this.has && v === this.sent) return;
      this.value = v; this.has = true; this.pump();
    }
    pump() {
      if (this.inflight || this.timer || !this.has) return;
      const wait = this.last + this.interval - performance.now();
      if (wait > 0) {
        this.timer = setTimeout(() => { this.timer = null; this.pump(); }, wait);
        return;
      }
      const v = this.value;
      this.has = false; this.inflight = true; this.last = performance.now(); this.sent = v;
      Promise.resolve()
        .then(() => this.send(v))
        .then((ok) => { if (ok === false && this.sent === v) this.sent = undefined; })
        .catch((e) => { this.sent = undefined; showError(e); })
        .finally(() => { this.inflight = false; this.pump(); });
    }
  }

  function throttleFor(note, name) {
    const key = `${note}:${name}`;
    let t = S.throttles.get(key);
    if (!t) {
      t = new Throttle(async (v) => {
        const body = name === "gain" ? { gain_db: v } : { params: { [name]: v } };
        try {
          const pad = await api("PUT", `/api/pads/${note}`, { json: body });
          updatePad(pad);
          return true;
        } catch (e) {
          showError(e, `Set ${name === "gain" ? "gain" : name}`);
          renderPanel(true);      // put the slider back where the server is
          return false;
        }
      });
      S.throttles.set(key, t);
    }
    return t;
  }

  // A slider keeps its local position while the user drags it or a newer value waits.
  function sliderIsLocal(note, name) {
    const key = `${note}:${name}`;
    const t = S.throttles.get(key);
    return S.dragging === key || (t != null && t.has);
  }

  // --------------------------------------------------------- slider mapping --
  function isLog(spec) { return spec.scale === "log" && spec.low > 0 && spec.high > 0; }

  function toPos(spec, v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return 0;
    let t;
    if (isLog(spec)) {
      const lo = Math.log10(spec.low), hi = Math.log10(spec.high);
      t = (Math.log10(Math.max(v, spec.low)) - lo) / (hi - lo);
    } else {
      t = (v - spec.low) / (spec.high - spec.low);
    }
    return Math.round(clamp(Number.isFinite(t) ? t : 0, 0, 1) * STEPS);
  }

  function fromPos(spec, pos) {
    const t = clamp(pos / STEPS, 0, 1);
    let v;
    if (isLog(spec)) {
      const lo = Math.log10(spec.low), hi = Math.log10(spec.high);
      v = 10 ** (lo + t * (hi - lo));
    } else {
      v = spec.low + t * (spec.high - spec.low);
    }
    v = clamp(Number(v.toPrecision(4)), spec.low, spec.high);
    // A range starting at 0 (alpha) excludes 0 itself: use the first step instead.
    if (!isLog(spec) && spec.low <= 0 && v <= spec.low) v = spec.low + (spec.high - spec.low) / STEPS;
    return v;
  }

  // -------------------------------------------------------------- pad grid --
  function padState(note) {
    let st = S.padStates.get(note);
    if (!st) {
      const pad = S.pads.get(note);
      st = { state: pad && pad.has_match ? "matched" : "idle", busy: false, scoring: false,
             progress: "", error: "", paramsJob: -1, scoredJob: -1, clearTimer: null };
      S.padStates.set(note, st);
    }
    return st;
  }

  function buildGrid() {
    const grid = $("#pads");
    grid.replaceChildren();
    S.padEls.clear();
    for (const pad of S.pads.values()) {
      const b = makePadEl(pad.note);
      S.padEls.set(pad.note, b);
      grid.append(b);
      renderPadEl(pad.note);
    }
    if (!S.pads.size) grid.append(el("p", { class: "empty-grid", text: "This kit has no pads." }));
  }

  function makePadEl(note) {
    const b = el("button", { type: "button", class: "pad", "data-note": note, "data-state": "idle",
                             "aria-pressed": "false" },
      el("span", { class: "pad-top" },
        el("span", { class: "pad-note" }),
        el("span", { class: "pad-led", "aria-hidden": "true" })),
      el("span", { class: "pad-name" }),
      el("span", { class: "pad-info" }),
      el("span", { class: "pad-progress", "aria-live": "polite" }));
    b.addEventListener("click", () => selectPad(note));
    b.addEventListener("dragenter", (e) => { e.preventDefault(); b.classList.add("dragover"); });
    b.addEventListener("dragover", (e) => {
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
      b.classList.add("dragover");
    });
    b.addEventListener("dragleave", () => b.classList.remove("dragover"));
    b.addEventListener("drop", (e) => {
      e.preventDefault();
      e.stopPropagation();
      b.classList.remove("dragover");
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (!file) { showMessage("Drop an audio file (wav, flac, aiff, …) on a pad.", "error"); return; }
      uploadSample(note, file);
    });
    return b;
  }

  function renderPadEl(note) {
    const b = S.padEls.get(note);
    const pad = S.pads.get(note);
    if (!b || !pad) return;
    const st = padState(note);
    if (st.state === "idle" && pad.has_match) st.state = "matched";
    $(".pad-note", b).textContent = `${pad.note} ${noteName(pad.note)}`;
    $(".pad-name", b).textContent = pad.name;
    $(".pad-info", b).textContent = pad.params ? fmtParam("f0", pad.params.f0) : "";
    $(".pad-progress", b).textContent = st.progress;
    b.classList.toggle("busy", st.busy);
    b.classList.toggle("scoring", st.scoring);
    b.classList.toggle("selected", S.selected === note);
    b.setAttribute("aria-pressed", String(S.selected === note));
    b.dataset.state = st.state;
    b.title = st.state === "error" && st.error ? `${pad.name}: ${st.error}` : `${pad.name} (note ${pad.note})`;
  }

  function setProgress(note, text, clearAfterMs) {
    const st = padState(note);
    clearTimeout(st.clearTimer);
    st.progress = text;
    if (clearAfterMs) {
      st.clearTimer = setTimeout(() => {
        if (st.progress === text) { st.progress = ""; renderPadEl(note); }
      }, clearAfterMs);
    }
    renderPadEl(note);
  }

  function updatePad(pad) {
    if (!pad || typeof pad !== "object" || !Number.isInteger(pad.note)) return;
    if (!S.pads.has(pad.note)) { refreshKit(); return; }
    S.pads.set(pad.note, pad);
    renderPadEl(pad.note);
    if (S.selected === pad.note) renderPanel();
  }

  function applyKit(kit) {
    if (!kit || !Array.isArray(kit.pads)) throw new ApiError("malformed kit from server", 0);
    S.kit = kit;
    S.pads = new Map(kit.pads.slice().sort((a, b) => a.note - b.note).map((p) => [p.note, p]));
    for (const note of [...S.padStates.keys()]) {
      const st = S.padStates.get(note);
      if (!S.pads.has(note) || !(st.busy || st.scoring)) S.padStates.delete(note);
    }
    $("#kit-name").textContent = kit.name || "";
    $("#kit-name").title = kit.file ? `Kit file: ${kit.file}` : "Unsaved kit";
    buildGrid();
    const keep = S.selected != null && S.pads.has(S.selected) ? S.selected : (S.pads.size ? S.pads.keys().next().value : null);
    S.selected = null;
    if (keep != null) selectPad(keep); else renderPanel(true);
  }

  async function refreshKit() {
    try {
      applyKit(await api("GET", "/api/kit"));
    } catch (e) {
      showError(e, "Load kit");
    }
  }

  // ------------------------------------------------------------- selection --
  function selectPad(note) {
    if (!S.pads.has(note)) return;
    const changed = S.selected !== note;
    S.selected = note;
    for (const [n, b] of S.padEls) {
      b.classList.toggle("selected", n === note);
      b.setAttribute("aria-pressed", String(n === note));
    }
    if (changed) {
      S.learning = null;
      renderPanel(true);
      const pad = S.pads.get(note);
      const st = padState(note);
      if (st.busy || st.scoring) setPreviewPending("Matching\u2026");
      else if (pad.has_match) loadMatch(note);
      else clearPreview("No match yet \u2014 drop a sample on this pad.");
    }
  }

  // ------------------------------------------------------------------ panel --
  function buildParamRows() {
    const box = $("#params");
    box.replaceChildren();
    S.paramRows = {};
    for (const spec of S.params) {
      const name = spec.name;
      const sliderId = `slider-${name}`;
      const range = `${fmtShort(spec.low)}\u2013${fmtShort(spec.high)}${spec.unit ? " " + spec.unit : ""}`;
      const label = el("label", { for: sliderId, class: "param-label", title: spec.description || name,
                                  text: name });
      const slider = el("input", { id: sliderId, type: "range", min: 0, max: STEPS, step: 1, value: 0,
                                   title: `${spec.description || name} (${range}${isLog(spec) ? ", log" : ""})` });
      const value = el("output", { class: "param-value", for: sliderId, text: "\u2014" });
      const learn = el("button", { type: "button", class: "learn", title: `MIDI learn: map a controller to ${name}`,
                                   "aria-label": `MIDI learn ${name}`, text: "Learn" });
      const desc = el("span", { class: "param-desc" },
                      el("span", { class: "param-desc-text", text: spec.description || "" }),
                      el("span", { class: "param-range", text: `${range}${isLog(spec) ? " \u00b7 log" : ""}` }));
      const row = el("div", { class: "param-row", id: `param-${name}`, "data-param": name },
                     label, slider, value, learn, desc);
      slider.addEventListener("pointerdown", () => { if (S.selected != null) S.dragging = `${S.selected}:${name}`; });
      slider.addEventListener("input", () => onParamSlider(name, false));
      slider.addEventListener("change", () => onParamSlider(name, true));
      learn.addEventListener("click", () => startLearn(name));
      S.paramRows[name] = { row, slider, value, learn, spec };
      box.append(row);
    }
  }

  function onParamSlider(name, final) {
    const note = S.selected;
    const r = S.paramRows[name];
    if (note == null || !r) return;
    const v = fromPos(r.spec, Number(r.slider.value));
    r.value.textContent = fmtParam(name, v);
    r.slider.setAttribute("aria-valuetext", fmtParam(name, v));
    if (final && S.dragging === `${note}:${name}`) S.dragging = null;
    throttleFor(note, name).push(v);
  }

  function onGainSlider(final) {
    const note = S.selected;
    if (note == null) return;
    const slider = $("#slider-gain");
    const v = clamp(Number(slider.value), -24, 12);
    $("#gain-value").textContent = fmtDb(v);
    if (final && S.dragging === `${note}:gain`) S.dragging = null;
    throttleFor(note, "gain").push(v);
  }

  // force: also move sliders the user is dragging (after a selection change or an error)
  function renderPanel(force = false) {
    const pad = S.selected != null ? S.pads.get(S.selected) : null;
    $("#panel").classList.toggle("empty", !pad);
    $("#panel-name").textContent = pad ? pad.name : "No pad selected";
    $("#panel-note").textContent = pad ? `note ${pad.note} \u00b7 ${noteName(pad.note)}` : "";
    for (const [name, r] of Object.entries(S.paramRows)) {
      const v = pad && pad.params ? pad.params[name] : undefined;
      r.slider.disabled = !pad;
      r.learn.disabled = !pad;
      if (!pad) { r.value.textContent = "\u2014"; continue; }
      if (force || !sliderIsLocal(pad.note, name)) {
        r.value.textContent = fmtParam(name, v);
        r.slider.value = String(toPos(r.spec, v));
        r.slider.setAttribute("aria-valuetext", fmtParam(name, v));
      }
    }
    const gs = $("#slider-gain");
    gs.disabled = !pad;
    if (pad && (force || !sliderIsLocal(pad.note, "gain"))) {
      gs.value = String(clamp(Number(pad.gain_db) || 0, -24, 12));
      $("#gain-value").textContent = fmtDb(pad.gain_db);
    } else if (!pad) {
      $("#gain-value").textContent = "\u2014";
    }
    $("#btn-undo").disabled = !pad || !pad.can_undo;
    $("#btn-play").disabled = !pad;
    $("#btn-play-browser").disabled = !pad;
    $("#btn-load-sample").disabled = !pad;
    renderLearn();
  }

  // ----------------------------------------------------------------- upload --
  async function uploadSample(note, file) {
    const pad = S.pads.get(note);
    if (!pad) return;
    selectPad(note);
    const st = padState(note);
    st.state = "busy"; st.busy = true; st.scoring = false; st.error = "";
    setProgress(note, "uploading\u2026");
    if (S.selected === note) setPreviewPending(`Matching ${file.name}\u2026`);
    const form = new FormData();
    form.append("file", file, file.name || "sample.wav");
    const query = $("#refine").checked ? "?refine=true&budget_ms=4000" : "";
    let res;
    try {
      res = await api("POST", `/api/pads/${note}/sample${query}`, { form });
    } catch (e) {
      st.state = "error"; st.busy = false; st.scoring = false; st.error = e.message;
      setProgress(note, "failed");
      showError(e, `Load "${file.name}" on ${pad.name}`);
      if (S.selected === note) clearPreview(`Match failed: ${e.message}`);
      return;
    }
    const match = (res && res.match) || {};
    const job = Number.isInteger(match.job) ? match.job : null;
    if (job != null) { bumpJob(note, job); st.paramsJob = Math.max(st.paramsJob, job); }
    st.state = "matched"; st.busy = false; st.error = "";
    const scoredAlready = job != null && st.scoredJob >= job;
    st.scoring = !scoredAlready;
    setProgress(note, scoredAlready ? "scored" : "scoring\u2026", scoredAlready ? 2000 : 0);
    if (res && res.pad) updatePad(res.pad); else renderPadEl(note);
    showMessage(`${pad.name} \u2190 ${match.source || file.name}: ${paramSummary(match.theta || (res.pad && res.pad.params))}`, "info");
    if (S.selected === note) {
      if (scoredAlready) loadMatch(note); else schedulePoll(note, S.matchToken);
    }
    await playPad(note);
  }

  function paramSummary(theta) {
    if (!theta || typeof theta !== "object") return "matched";
    return S.params.map((s) => `${s.name} ${fmtParam(s.name, theta[s.name])}`).join(", ");
  }

  function bumpJob(note, job) {
    if (job > (S.latestJob.get(note) ?? -Infinity)) S.latestJob.set(note, job);
  }

  // ------------------------------------------------------------------- play --
  async function playPad(note) {
    if (note == null) return;
    try {
      const r = await api("POST", `/api/pads/${note}/trigger?velocity=100`);
      if (r && r.played === false) {
        if (!S.noAudioNoted) {
          S.noAudioNoted = true;
          showMessage(`Server audio is off (${r.reason || "no output"}) \u2014 playing in the browser.`, "info");
        }
        await playInBrowser(note);
      }
    } catch (e) {
      showError(e, "Play");
    }
  }

  async function playInBrowser(note) {
    if (note == null) return;
    try {
      const resp = await api("GET", `/api/pads/${note}/render.wav?velocity=100`);
      const blob = await resp.blob();
      if (S.audio) { try { S.audio.pause(); } catch (_) { /* ignore */ } }
      if (S.audioUrl) URL.revokeObjectURL(S.audioUrl);
      S.audioUrl = URL.createObjectURL(blob);
      const a = new Audio(S.audioUrl);
      S.audio = a;
      await a.play();
    } catch (e) {
      if (e && e.name === "NotAllowedError") showMessage("The browser blocked playback \u2014 press Play.", "info");
      else if (e && e.name === "AbortError") { /* replaced by a newer hit */ }
      else showError(e, "Play in browser");
    }
  }

  async function undo() {
    const note = S.selected;
    if (note == null) return;
    try {
      updatePad(await api("POST", `/api/pads/${note}/undo`));
      renderPanel(true);
    } catch (e) {
      showError(e, "Undo");
    }
  }

  // ---------------------------------------------------------------- preview --
  const MAGMA = [
    [0.0, 0, 0, 4], [0.13, 28, 16, 68], [0.25, 79, 18, 123], [0.38, 129, 37, 129],
    [0.5, 181, 54, 122], [0.63, 229, 80, 100], [0.75, 251, 135, 97], [0.88, 254, 194, 135],
    [1.0, 252, 253, 191],
  ];
  const LUT = (() => {
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const t = i / 255;
      let k = 0;
      while (k < MAGMA.length - 2 && t > MAGMA[k + 1][0]) k++;
      const [t0, r0, g0, b0] = MAGMA[k], [t1, r1, g1, b1] = MAGMA[k + 1];
      const f = (t - t0) / (t1 - t0);
      lut[i * 3] = r0 + f * (r1 - r0);
      lut[i * 3 + 1] = g0 + f * (g1 - g0);
      lut[i * 3 + 2] = b0 + f * (b1 - b0);
    }
    return lut;
  })();

  function fitCanvas(c) {
    const r = c.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
    if (c.width !== w) c.width = w;
    if (c.height !== h) c.height = h;
    return c.getContext("2d");
  }

  function numArray(a) { return Array.isArray(a) ? a.map((x) => (typeof x === "number" && Number.isFinite(x) ? x : 0)) : []; }

  function wavePeak(part) {
    let peak = 0;
    if (part) for (const x of numArray(part.wave_max).concat(numArray(part.wave_min))) peak = Math.max(peak, Math.abs(x));
    return peak;
  }

  function drawWave(canvas, part, peak, color) {
    const ctx = fitCanvas(canvas);
    const W = canvas.width, H = canvas.height, mid = H / 2;
    ctx.fillStyle = "#0c0d10";
    ctx.fillRect(0, 0, W, H);
    ctx.strokeStyle = "rgba(255,255,255,0.08)";
    ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(0, mid + 0.5); ctx.lineTo(W, mid + 0.5); ctx.stroke();
    if (!part) return;
    const hi = numArray(part.wave_max), lo = numArray(part.wave_min);
    const n = Math.min(hi.length, lo.length);
    if (n < 2) return;
    const s = (0.92 * mid) / Math.max(peak, 1e-9);
    ctx.beginPath();
    for (let i = 0; i < n; i++) ctx.lineTo((i / (n - 1)) * W, mid - Math.max(hi[i], lo[i]) * s);
    for (let i = n - 1; i >= 0; i--) ctx.lineTo((i / (n - 1)) * W, mid - Math.min(hi[i], lo[i]) * s - 1);
    ctx.closePath();
    ctx.fillStyle = color;
    ctx.fill();
  }

  function drawSpec(canvas, spec) {
    const ctx = fitCanvas(canvas);
    const W = canvas.width, H = canvas.height;
    ctx.fillStyle = "#000004";
    ctx.fillRect(0, 0, W, H);
    if (!Array.isArray(spec) || !spec.length || !Array.isArray(spec[0])) return;
    const bins = spec.length;
    const frames = Math.max(...spec.map((r) => (Array.isArray(r) ? r.length : 0)));
    if (!frames) return;
    const off = document.createElement("canvas");
    off.width = frames; off.height = bins;
    const octx = off.getContext("2d");
    const img = octx.createImageData(frames, bins);
    const d = img.data;
    for (let b = 0; b < bins; b++) {
      const row = Array.isArray(spec[b]) ? spec[b] : [];
      const y = bins - 1 - b;                 // row 0 = lowest bin, drawn at the bottom
      for (let f = 0; f < frames; f++) {
        const raw = row[f];
        const v = typeof raw === "number" && Number.isFinite(raw) ? clamp(Math.round(raw), 0, 255) : 0;
        const o = (y * frames + f) * 4;
        d[o] = LUT[v * 3]; d[o + 1] = LUT[v * 3 + 1]; d[o + 2] = LUT[v * 3 + 2]; d[o + 3] = 255;
      }
    }
    octx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(off, 0, 0, W, H);
  }

  function paintPreview() {
    const data = S.previewData;
    const p = data && data.match && data.match.preview;
    const parts = [["preview-target", p && p.target, "rgba(94, 200, 230, 0.85)"],
                   ["preview-match", p && p.match, "rgba(245, 166, 35, 0.9)"]];
    const peak = p ? Math.max(wavePeak(p.target), wavePeak(p.match)) : 1;
    for (const [id, part, color] of parts) {
      const panel = document.getElementById(id);
      drawWave($("canvas.wave", panel), part, peak, color);
      drawSpec($("canvas.spec", panel), part ? part.spec : null);
      const dims = $(".preview-dims", panel);
      dims.textContent = p && Number.isFinite(p.seconds) && Number.isFinite(p.sr)
        ? `${p.seconds.toFixed(2)} s \u00b7 ${(p.sr / 1000).toPrecision(3)} kHz` : "";
    }
  }

  function setMeta(source, jtfs, mss) {
    $("#preview-source").textContent = source || "\u2014";
    $("#preview-source").title = source || "";
    $("#preview-jtfs").textContent = typeof jtfs === "number" ? fmtNum(jtfs) : "\u2014";
    $("#preview-mss").textContent = typeof mss === "number" ? fmtNum(mss) : "\u2014";
  }

  // Empty the preview (stale requests are ignored through matchToken); "pending"
  // marks a match on its way.
  function resetPreview(text, pending) {
    S.matchToken++;
    clearTimeout(S.matchPoll);
    S.previewData = null;
    $("#preview").dataset.ready = "false";
    $("#preview").classList.toggle("pending", pending);
    $("#preview-note").textContent = text || "";
    setMeta(null, null, null);
    paintPreview();
  }

  function setPreviewPending(text) { resetPreview(text, true); }

  function clearPreview(text) { resetPreview(text, false); }

  function schedulePoll(note, token) {
    clearTimeout(S.matchPoll);
    const open = S.ws && S.ws.readyState === WebSocket.OPEN;
    S.matchPoll = setTimeout(() => {
      if (S.selected === note && S.matchToken === token) loadMatch(note, true);
    }, open ? 3000 : 1000);
  }

  async function loadMatch(note, quiet = false) {
    if (!quiet) setPreviewPending("Loading match\u2026");
    const token = S.matchToken;
    let m;
    try {
      m = await api("GET", `/api/pads/${note}/match`);
    } catch (e) {
      if (token === S.matchToken && S.selected === note) {
        clearPreview("Could not load the match.");
        showError(e, "Load match");
      }
      return;
    }
    if (token !== S.matchToken || S.selected !== note || !m) return;
    if (m.status === "scored") {
      S.previewData = { note, match: m };
      $("#preview").classList.remove("pending");
      // Both stages: the encoder's fast estimate, then the default match that replaced it.
      const stages = m.fast_theta
        ? `Fast (encoder): ${paramSummary(m.fast_theta)}. Refined (${m.estimate || "search"}): ${paramSummary(m.theta)}.`
        : "";
      $("#preview-note").textContent = m.preview ? stages : "No preview available for this match.";
      setMeta(m.source, m.jtfs_distance, m.mss_distance);
      paintPreview();
      $("#preview").dataset.ready = "true";
    } else if (m.status === "pending") {
      $("#preview").dataset.ready = "false";
      $("#preview-note").textContent = "Matching\u2026";
      schedulePoll(note, token);
    } else if (m.status === "error") {
      clearPreview(`Match failed: ${m.message || "unknown error"}`);
    } else {
      clearPreview("No match yet \u2014 drop a sample on this pad.");
    }
  }

  // -------------------------------------------------------------- MIDI learn --
  async function startLearn(name) {
    const note = S.selected;
    if (note == null) return;
    try {
      await api("POST", "/api/midi-learn", { json: { param: name, pad: note, depth: 0.5 } });
      S.learning = name;
      renderLearn();
    } catch (e) {
      showError(e, "MIDI learn");
    }
  }

  function renderLearn() {
    for (const [name, r] of Object.entries(S.paramRows)) {
      const armed = S.learning === name;
      r.learn.textContent = armed ? "move a knob\u2026" : "Learn";
      r.learn.classList.toggle("armed", armed);
      r.learn.setAttribute("aria-pressed", String(armed));
    }
  }

  function onLearned(m) {
    S.learning = null;
    renderLearn();
    const where = Number.isInteger(m.pad) ? `pad ${m.pad}` : "all pads";
    showMessage(`MIDI CC ${m.cc} \u2192 ${m.param} (${where})`, "info");
  }

  // ------------------------------------------------------------ match events --
  function onMatchEvent(m) {
    const note = m.note;
    if (!Number.isInteger(note) || !S.pads.has(note)) return;
    const st = padState(note);
    const job = Number.isInteger(m.job) ? m.job : null;
    if (job != null) {
      if (job < (S.latestJob.get(note) ?? -Infinity)) return;   // an older, superseded job
      bumpJob(note, job);
    }
    switch (m.stage) {
      case "queued": {
        if (!st.busy) st.scoring = true;                           // started by another client
        const ahead = Number.isInteger(m.ahead) ? m.ahead
          : Number.isInteger(m.position) ? m.position - 1 : null;
        let text = "queued";
        if (ahead != null) text = ahead > 0 ? `queued (#${ahead + 1})` : "queued (next)";
        else if (m.message) text = `queued (${m.message})`;
        setProgress(note, text);
        if (S.selected === note && !$("#preview").classList.contains("pending")) setPreviewPending("Matching\u2026");
        break;
      }
      case "started":
        setProgress(note, "matching\u2026");
        break;
      case "params":
        if (job != null) st.paramsJob = Math.max(st.paramsJob, job);
        setProgress(note, "refining\u2026");
        break;
      case "refined":
        // Stage 2: the default match replaces the fast estimate (the pad message
        // carries the parameters); distances and pictures follow.
        setProgress(note, "refined, scoring\u2026");
        if (S.selected === note) showMessage(`Note ${note}: refined (${m.estimate || "search"})`, "info");
        break;
      case "scored":
        if (job != null) st.scoredJob = Math.max(st.scoredJob, job);
        st.scoring = false;
        if (!st.busy) st.state = "matched";
        setProgress(note, "scored", 2000);
        if (S.selected === note) loadMatch(note, true);
        break;
      case "error": {
        st.scoring = false;
        const text = m.message || "match failed";
        if (!st.busy) {
          // Params already on the pad: only the scoring failed.
          if (!(job != null && st.paramsJob >= job)) st.state = "error";
          st.error = text;
          showMessage(`Match on note ${note}: ${text}`, "error");
        }
        setProgress(note, "error");
        if (S.selected === note) clearPreview(`Match failed: ${text}`);
        break;
      }
      default:
        break;
    }
  }

  // ----------------------------------------------------------------- status --
  function midiText(bytes) {
    if (!Array.isArray(bytes) || !bytes.length) return "";
    const [s, a, b] = bytes;
    const ch = (s & 0x0f) + 1;
    switch (s & 0xf0) {
      case 0x90: return b === 0 ? `off ${a}` : `on ${a} v${b} ch${ch}`;
      case 0x80: return `off ${a} ch${ch}`;
      case 0xb0: return `CC${a}=${b} ch${ch}`;
      case 0xe0: return `bend ${((b << 7) | a) - 8192} ch${ch}`;
      case 0xc0: return `prog ${a} ch${ch}`;
      default: return bytes.map((x) => Number(x).toString(16).padStart(2, "0")).join(" ");
    }
  }

  function onStatus(s) {
    S.lastStatus = s;
    const set = (id, text) => { const e = document.getElementById(id); if (e) e.textContent = text; };
    set("st-voices", Number.isFinite(s.voices) ? String(s.voices) : "\u2013");
    set("st-cpu", Number.isFinite(s.cpu_load) ? `${(s.cpu_load * 100).toFixed(0)}%` : "\u2013");
    set("st-underflows", Number.isFinite(s.underflows) ? String(s.underflows) : "\u2013");
    document.getElementById("st-underflows").classList.toggle("warn", s.underflows > 0);
    set("st-latency", Number.isFinite(s.latency_ms) ? `${s.latency_ms.toFixed(1)} ms` : "\u2013");
    set("st-audio", s.audio ? "on" : "off");
    document.getElementById("st-audio").dataset.on = String(Boolean(s.audio));
    const midi = s.midi || {};
    set("st-midi", Number.isFinite(midi.received) ? String(midi.received) : "\u2013");
    set("st-midi-last", midiText(midi.last));
    document.getElementById("st-midi").title = midi.port ? `port: ${midi.port}` : "no MIDI port";
    if (Number.isFinite(midi.received)) {
      if (S.lastMidiCount != null && midi.received !== S.lastMidiCount) flashMidi();
      S.lastMidiCount = midi.received;
    }
    const w = s.worker || {};
    let state;
    if (!w.alive) state = "restarting";
    else if (!w.ready) state = w.restarts > 0 ? "restarting" : "starting";
    else if (w.queued > 0) state = `matching (${w.queued} queued)`;
    else state = "ready";
    const we = document.getElementById("st-worker");
    we.textContent = state;
    we.dataset.state = state.split(" ")[0];
    const restarting = state === "restarting" || state === "starting";
    set("st-worker-error", restarting && w.last_error ? w.last_error : "");
    we.title = [w.restarts ? `restarts: ${w.restarts}` : "", w.last_error ? `last error: ${w.last_error}` : ""]
      .filter(Boolean).join("\n");
  }

  let midiFlashTimer = null;
  function flashMidi() {
    const led = document.getElementById("midi-led");
    led.classList.add("on");
    clearTimeout(midiFlashTimer);
    midiFlashTimer = setTimeout(() => led.classList.remove("on"), 180);
  }

  function setConn(on) {
    const c = document.getElementById("st-conn");
    c.dataset.on = String(on);
    $(".st-text", c).textContent = on ? "connected" : "reconnecting\u2026";
    document.getElementById("status").classList.toggle("offline", !on);
  }

  // -------------------------------------------------------------- websocket --
  function connectWS() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}/api/ws`);
    } catch (_) {
      scheduleReconnect();
      return;
    }
    S.ws = ws;
    ws.onopen = () => {
      S.wsDelay = 500;
      setConn(true);
      if (S.wsEverOpen) { refreshKit(); loadDevices(); }   // catch up on what we missed
      S.wsEverOpen = true;
    };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      try { dispatch(m); } catch (e) { showError(e, "Update"); }
    };
    ws.onerror = () => { /* onclose follows */ };
    ws.onclose = () => {
      if (S.ws === ws) S.ws = null;
      setConn(false);
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    const delay = S.wsDelay;
    S.wsDelay = Math.min(S.wsDelay * 2, 10000);
    setTimeout(connectWS, delay + Math.random() * 250);
  }

  function dispatch(m) {
    if (!m || typeof m !== "object") return;
    switch (m.type) {
      case "status": onStatus(m); break;
      case "match": onMatchEvent(m); break;
      case "pad": updatePad(m.pad); break;
      case "kit": refreshKit(); loadKits(); break;
      case "learned": onLearned(m); break;
      default: break;
    }
  }

  // ------------------------------------------------------------------- kits --
  async function loadKits() {
    try {
      const k = await api("GET", "/api/kits");
      const sel = $("#kit-select");
      const names = Array.isArray(k.kits) ? k.kits : [];
      const prev = sel.value;
      sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
      if (!names.length) sel.append(el("option", { value: "", text: "(no saved kits)", disabled: true }));
      if (k.current && names.includes(k.current)) sel.value = k.current;
      else if (names.includes(prev)) sel.value = prev;
      sel.title = k.folder ? `Kits folder: ${k.folder}` : "";
      $("#kit-load").disabled = !names.length;
    } catch (e) {
      showError(e, "List kits");
    }
  }

  async function saveKit(ev) {
    ev.preventDefault();
    const name = $("#kit-save-name").value.trim();
    if (!name) { showMessage("Enter a name for the kit.", "error"); $("#kit-save-name").focus(); return; }
    try {
      const r = await api("POST", "/api/kits/save", { json: { name } });
      showMessage(`Saved kit "${r.name}" to ${r.file}`, "info");
      if (S.kit) { S.kit.name = r.name; S.kit.file = r.file; $("#kit-name").textContent = r.name; }
      await loadKits();
    } catch (e) {
      showError(e, "Save kit");
    }
  }

  async function loadKit() {
    const name = $("#kit-select").value;
    if (!name) { showMessage("Choose a kit to load.", "error"); return; }
    try {
      applyKit(await api("POST", "/api/kits/load", { json: { name } }));
      showMessage(`Loaded kit "${name}"`, "info");
      await loadKits();
    } catch (e) {
      showError(e, "Load kit");
    }
  }

  // ---------------------------------------------------------------- devices --
  function renderDevices(d) {
    S.devices = d;
    const a = (d && d.audio) || {};
    const asel = $("#audio-device");
    const devs = Array.isArray(a.devices) ? a.devices : [];
    const opts = [el("option", { value: "", text: "\u2014 off \u2014" })];
    const seen = new Set();
    for (const dev of devs) {
      if (!dev || typeof dev.name !== "string" || seen.has(dev.name)) continue;
      seen.add(dev.name);
      const extra = [dev.api, Number.isFinite(dev.channels) ? `${dev.channels} ch` : ""].filter(Boolean).join(", ");
      opts.push(el("option", { value: dev.name, text: extra ? `${dev.name} (${extra})` : dev.name }));
    }
    if (a.current && !seen.has(a.current)) opts.push(el("option", { value: a.current, text: a.current }));
    asel.replaceChildren(...opts);
    asel.value = a.current || "";
    asel.title = a.current ? `${a.current}${a.running ? " (running)" : " (stopped)"}` : "No audio output";

    const m = (d && d.midi) || {};
    const msel = $("#midi-port");
    const ports = Array.isArray(m.ports) ? m.ports.filter((p) => typeof p === "string") : [];
    const mopts = [el("option", { value: "", text: ports.length ? "\u2014 choose \u2014" : "(no MIDI ports)", disabled: true })];
    for (const p of ports) mopts.push(el("option", { value: p, text: p }));
    if (m.current && !ports.includes(m.current)) mopts.push(el("option", { value: m.current, text: m.current }));
    msel.replaceChildren(...mopts);
    msel.value = m.current || "";
    msel.title = m.current ? `MIDI input: ${m.current}` : "No MIDI input";
  }

  async function loadDevices() {
    try {
      renderDevices(await api("GET", "/api/devices"));
    } catch (e) {
      showError(e, "List devices");
    }
  }

  async function setAudioDevice() {
    const v = $("#audio-device").value;
    try {
      renderDevices(await api("PUT", "/api/devices/audio", { json: { device: v || null } }));
      showMessage(v ? `Audio output: ${v}` : "Audio output off", "info");
    } catch (e) {
      showError(e, "Audio device");
      await loadDevices();
    }
  }

  async function setMidiPort() {
    const v = $("#midi-port").value;
    if (!v) return;
    try {
      renderDevices(await api("PUT", "/api/devices/midi", { json: { port: v } }));
      showMessage(`MIDI input: ${v}`, "info");
    } catch (e) {
      showError(e, "MIDI port");
      await loadDevices();
    }
  }

  // ------------------------------------------------------------------- init --
  function bindStatic() {
    $("#message").addEventListener("click", () => { $("#message").textContent = ""; });
    $("#kit-save-form").addEventListener("submit", saveKit);
    $("#kit-load").addEventListener("click", loadKit);
    $("#audio-device").addEventListener("change", setAudioDevice);
    $("#midi-port").addEventListener("change", setMidiPort);
    $("#devices-refresh").addEventListener("click", loadDevices);
    $("#btn-play").addEventListener("click", () => playPad(S.selected));
    $("#btn-play-browser").addEventListener("click", () => playInBrowser(S.selected));
    $("#btn-undo").addEventListener("click", undo);
    $("#btn-load-sample").addEventListener("click", () => $("#sample-file").click());
    $("#sample-file").addEventListener("change", () => {
      const input = $("#sample-file");
      const file = input.files && input.files[0];
      if (file && S.selected != null) uploadSample(S.selected, file);
      input.value = "";
    });
    const gain = $("#slider-gain");
    gain.addEventListener("pointerdown", () => { if (S.selected != null) S.dragging = `${S.selected}:gain`; });
    gain.addEventListener("input", () => onGainSlider(false));
    gain.addEventListener("change", () => onGainSlider(true));
    window.addEventListener("pointerup", () => { S.dragging = null; });
    window.addEventListener("pointercancel", () => { S.dragging = null; });

    // Dropping on the panel loads the selected pad; anywhere else must not navigate away.
    const panel = $("#panel");
    panel.addEventListener("dragover", (e) => { e.preventDefault(); panel.classList.add("dragover"); });
    panel.addEventListener("dragleave", () => panel.classList.remove("dragover"));
    panel.addEventListener("drop", (e) => {
      e.preventDefault();
      panel.classList.remove("dragover");
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (file && S.selected != null) uploadSample(S.selected, file);
    });
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());

    let raf = 0;
    const repaint = () => { cancelAnimationFrame(raf); raf = requestAnimationFrame(paintPreview); };
    if (window.ResizeObserver) new ResizeObserver(repaint).observe($("#preview"));
    else window.addEventListener("resize", repaint);

    window.addEventListener("unhandledrejection", (e) => { e.preventDefault(); showError(e.reason); });
  }

  async function init() {
    bindStatic();
    connectWS();
    try {
      const params = await api("GET", "/api/params");
      if (!Array.isArray(params) || !params.length) throw new ApiError("malformed parameter list", 0);
      S.params = params;
    } catch (e) {
      S.params = FALLBACK_PARAMS;
      showError(e, "Load parameter ranges (using built-in defaults)");
    }
    S.specByName = Object.fromEntries(S.params.map((p) => [p.name, p]));
    buildParamRows();
    clearPreview("Select a pad.");
    await refreshKit();
    loadKits();
    loadDevices();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => { init().catch(showError); });
  else init().catch(showError);
})();
