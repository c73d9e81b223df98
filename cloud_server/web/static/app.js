// Operator web view: talks only to this gateway's /api, sending the operator token with every request.
"use strict";

const TOKEN_KEY = "icmh-operator-token";
const REFRESH_MS = 3000;
const FEED_MAX = 100;
const $ = (sel, root = document) => root.querySelector(sel);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  cameras: [],
  camera: null,        // selected camera id
  feed: null,          // AbortController of the live stream
  timeline: null,      // pending timeline reload (timeout id)
  refresh: null,       // interval id
  live: {wanted: null, busy: false},
  frame: null,         // frame id in the inspector
  panes: [null, null], // last inspection reply per pane
};

class ApiError extends Error {
  constructor(status, code, detail) {
    super(`${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

async function api(path, options = {}) {
  const headers = {...(options.headers || {}), Authorization: `Bearer ${state.token}`};
  const response = await fetch(path, {...options, headers});
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    const error = new ApiError(response.status, body.error || `HTTP ${response.status}`, body.detail || "");
    if (response.status === 401) loggedOut(`token refused: ${error.message}`);
    throw error;
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();
const query = (params) => new URLSearchParams(params).toString();
const fmt = (value, digits = 3) => (value === null || value === undefined) ? "–" : Number(value).toFixed(digits);
const timeText = (ms) => ms ? new Date(ms).toLocaleTimeString() : "–";
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "class") node.className = value;
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

// ---- session -------------------------------------------------------------------------------------------------

async function login(token) {
  state.token = token;
  try {
    await loadCameras();
  } catch (error) {
    $("#login-error").textContent = `Log in failed: ${error.message}`;
    state.token = null;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#login-error").textContent = "";
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  $("#session").textContent = "logged in";
  state.refresh = setInterval(refresh, REFRESH_MS);
  if (state.cameras.length) selectCamera(state.camera || state.cameras[0].camera_id);
}

function loggedOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  clearInterval(state.refresh);
  if (state.feed) state.feed.abort();
  clearTimeout(state.timeline);
  Object.assign(state, {feed: null, camera: null, cameras: [], frame: null, panes: [null, null],
    live: {wanted: null, busy: false}});
  $("#feed").replaceChildren();
  $("#timeline").replaceChildren();
  $("#inspect-panel").hidden = true;
  $("#main").hidden = true;
  $("#logout").hidden = true;
  $("#session").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#token").value = "";
}

// ---- cameras -------------------------------------------------------------------------------------------------

async function loadCameras() {
  const reply = await getJson("/api/cameras");
  state.cameras = reply.cameras;
  const body = $("#cameras tbody");
  body.replaceChildren(...reply.cameras.map((c) => {
    const row = el("tr", {dataset: {camera: c.camera_id}, class: c.camera_id === state.camera ? "selected" : ""},
      el("td", {}, c.camera_id),
      el("td", {class: c.online ? "online" : "offline"}, c.online ? "online" : "offline"),
      el("td", {}, fmt(c.fps, 1)),
      el("td", {class: "bpp-base"}, fmt(c.bpp.base, 4)),
      el("td", {class: "bpp-residual"}, fmt(c.bpp.residual, 4)),
      el("td", {}, String(c.frames_stored)),
      el("td", {}, c.width ? `${c.width}×${c.height}` : "–"),
      el("td", {}, c.residual_mode));
    row.addEventListener("click", () => selectCamera(c.camera_id));
    return row;
  }));
  $("#cameras-error").textContent = reply.cameras.length ? "" : "no camera visible to this token";
}

async function refresh() {
  try {
    await loadCameras();
    $("#cameras-error").textContent = "";
  } catch (error) {
    $("#cameras-error").textContent = `cameras: ${error.message}`;
  }
  if (state.camera) loadTimeline();
}

function selectCamera(cameraId) {
  if (state.camera !== cameraId) {
    state.camera = cameraId;
    state.frame = null;
    $("#inspect-panel").hidden = true;
    $("#feed").replaceChildren();
    $("#live-caption").textContent = "waiting for detections…";
    subscribe(cameraId);
    const latest = state.cameras.find((c) => c.camera_id === cameraId);
    if (latest && latest.last_frame_id) {  // show the newest stored frame until results arrive
      state.live.wanted = latest.last_frame_id;
      pumpLive();
    }
  }
  for (const row of $("#cameras tbody").children) row.classList.toggle("selected", row.dataset.camera === cameraId);
  $("#live-camera").textContent = cameraId;
  const camera = state.cameras.find((c) => c.camera_id === cameraId);
  const config = camera ? camera.config : {};
  $("#base-rate").value = config.base_rate ?? "";
  $("#residual-rate").value = config.residual_rate ?? "";
  $("#target-kbps").value = config.target_kbps ?? "";
  $("#rates-result").textContent = "";
  loadTimeline();
}

// ---- live feed -----------------------------------------------------------------------------------------------

async function subscribe(cameraId) {
  if (state.feed) state.feed.abort();
  const controller = new AbortController();
  state.feed = controller;
  const status = $("#feed-status");
  while (!controller.signal.aborted) {
    status.textContent = "connecting…";
    try {
      const response = await api(`/api/detections?${query({camera: cameraId})}`, {signal: controller.signal});
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = JSON.parse(buffer.slice(0, newline));
          buffer = buffer.slice(newline + 1);
          if (line.open) status.textContent = "live: subscribed";
          if (line.result) onResult(line.result);
          if (line.error) throw new ApiError(line.status, line.error, line.detail);
        }
      }
      status.textContent = "live: the stream ended, reconnecting…";
    } catch (error) {
      if (controller.signal.aborted) return;
      status.textContent = `live: ${error.message}`;
      if (error.status === 401 || error.status === 403) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function detectionText(detections) {
  return detections.map((d) => `${d.class_name} ${d.confidence.toFixed(2)}`).join(", ") || "no detections";
}

function onResult(result) {
  if (result.camera_id !== state.camera) return;
  const item = el("li", {dataset: {frame: String(result.frame_id)}, class: result.error ? "error" : ""},
    el("button", {type: "button", class: "link", textContent: `#${result.frame_id}`}),
    ` ${timeText(result.capture_ms)} · ${result.error ? `ERROR ${result.error}` : detectionText(result.detections)}`);
  item.querySelector("button").addEventListener("click", () => openFrame(result.frame_id));
  const feed = $("#feed");
  feed.prepend(item);
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  state.live.wanted = result.frame_id;
  pumpLive();
  clearTimeout(state.timeline);
  state.timeline = setTimeout(loadTimeline, 300);  // one reload for a burst of results
}

async function pumpLive() {  // fetch the newest wanted frame; results arriving meanwhile only move the target
  if (state.live.busy || state.live.wanted === null) return;
  state.live.busy = true;
  const cameraId = state.camera;
  const frameId = state.live.wanted;
  state.live.wanted = null;
  try {
    const reply = await getJson(`/api/frame?${query({camera: cameraId, frame: frameId, quality: "machine"})}`);
    if (cameraId === state.camera) {
      const image = await loadImage(reply.png);
      const canvas = $("#live-canvas");
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(image, 0, 0);
      drawBoxes(context, reply.detections, 1);
      canvas.dataset.frame = String(frameId);
      $("#live-caption").textContent = `#${frameId} · machine quality · ` +
        `${plural(reply.detections.length, "detection")} · base ${reply.base_bytes} B ` +
        `(${fmt(reply.base_bpp, 4)} bpp) · ${detectionText(reply.detections)}`;
    }
  } catch (error) {
    $("#live-caption").textContent = `#${frameId}: ${error.message}`;
  } finally {
    state.live.busy = false;
  }
  pumpLive();
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the image could not be decoded"));
    image.src = src;
  });
}

function drawBoxes(context, detections, scale) {
  context.lineWidth = Math.max(2, 2 * scale);
  context.font = `${Math.round(12 * scale)}px sans-serif`;
  context.textBaseline = "bottom";
  for (const d of detections) {
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    context.strokeStyle = "#00e676";
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${d.class_name} ${d.confidence.toFixed(2)}`;
    const width = context.measureText(label).width + 6;
    context.fillStyle = "#00e676";
    context.fillRect(x1, Math.max(0, y1 - 16 * scale), width, 16 * scale);
    context.fillStyle = "#000";
    context.fillText(label, x1 + 3, Math.max(16 * scale, y1) - 2);
  }
}

// ---- timeline ------------------------------------------------------------------------------------------------

async function loadTimeline() {
  const cameraId = state.camera;
  try {
    const reply = await getJson(`/api/frames?${query({camera: cameraId, limit: 60})}`);
    if (cameraId !== state.camera) return;
    const frames = reply.frames.slice().reverse();  // oldest left
    $("#timeline").replaceChildren(...frames.map((f) => {
      const cell = el("button", {
        type: "button", dataset: {frame: String(f.frame_id)},
        class: ["frame", f.detected ? (f.detection_count ? "hit" : "empty") : "pending",
          f.frame_id === state.frame ? "selected" : ""].join(" ").trim(),
        title: `frame ${f.frame_id} · ${timeText(f.capture_ms)} · ` +
          `base ${f.base_bytes} B (${fmt(f.base_bpp, 4)} bpp)` +
          ` · ${f.detected ? plural(f.detection_count, "detection") : "waiting for the detector"}`,
      }, el("span", {class: "id"}, String(f.frame_id)), el("span", {class: "count"},
        f.detected ? String(f.detection_count) : "…"));
      cell.addEventListener("click", () => openFrame(f.frame_id));
      return cell;
    }));
    $("#timeline-error").textContent = frames.length ? "" : "no frames stored yet";
  } catch (error) {
    $("#timeline-error").textContent = `timeline: ${error.message}`;
  }
}

// ---- inspector -----------------------------------------------------------------------------------------------

function openFrame(frameId) {
  state.frame = frameId;
  state.panes = [null, null];
  $("#inspect-panel").hidden = false;
  $("#inspect-frame").textContent = `#${frameId} of ${state.camera}`;
  for (const cell of $("#timeline").children) cell.classList.toggle("selected", cell.dataset.frame === String(frameId));
  for (const pane of document.querySelectorAll(".pane")) loadPane(pane);
}

async function loadPane(pane) {
  const index = Number(pane.dataset.pane);
  const quality = $(".quality", pane).value;
  const [cameraId, frameId] = [state.camera, state.frame];
  const image = $("img", pane);
  pane.dataset.state = "loading";
  $(".info", pane).textContent = `${quality}: loading…`;
  $(".error", pane).textContent = "";
  const start = performance.now();
  try {
    // "human, sharpest": the residual at rate 1, coded for this view by an edge that kept the captured frame
    const params = quality === "human-sharpest" ? {quality: "human", rate: 1} : {quality};
    const reply = await getJson(`/api/frame?${query({camera: cameraId, frame: frameId, ...params})}`);
    if (cameraId !== state.camera || frameId !== state.frame) return;
    await new Promise((resolve) => { image.onload = resolve; image.onerror = resolve; image.src = reply.png; });
    const total = performance.now() - start;
    state.panes[index] = reply;
    const f = reply.frame;
    const parts = [`${reply.quality}`, `${f.width}×${f.height}`,
      `base ${reply.base_bytes} B (${fmt(reply.base_bpp, 4)} bpp)`];
    if (reply.quality === "human") {
      parts.push(`residual ${reply.residual_bytes} B (${fmt(reply.residual_bpp, 4)} bpp, R ${fmt(reply.residual_rate, 2)})`);
    }
    if (reply.lossless_bytes) parts.push(`lossless ${reply.lossless_bytes} B (${fmt(reply.lossless_bpp, 4)} bpp)`);
    parts.push(f.detected ? plural(reply.detections.length, "detection") : "detector pending");
    parts.push(`inspection ${reply.cloud_ms.toFixed(0)} ms at the cloud, ${total.toFixed(0)} ms in the browser`);
    $(".info", pane).textContent = parts.join(" · ");
    pane.dataset.state = "ok";
    pane.dataset.quality = reply.quality;
  } catch (error) {
    image.removeAttribute("src");
    state.panes[index] = null;
    $(".info", pane).textContent = `${quality}: not shown`;
    $(".error", pane).textContent = error.status === 403 ? `refused by the cloud: ${error.message}` : error.message;
    pane.dataset.state = "error";
  }
  drawPaneBoxes(pane);
  updateSlider();
}

function drawPaneBoxes(pane) {
  const reply = state.panes[Number(pane.dataset.pane)];
  const canvas = $("canvas.boxes", pane);
  const context = canvas.getContext("2d");
  if (!reply) {
    context.clearRect(0, 0, canvas.width, canvas.height);
    return;
  }
  canvas.width = reply.frame.width;
  canvas.height = reply.frame.height;
  if ($("#show-boxes").checked) drawBoxes(context, reply.detections, 1);
}

function updateSlider() {
  const sliding = $("#compare-mode").value === "slider";
  $("#panes").classList.toggle("sliding", sliding);
  $("#slider-view").hidden = !sliding;
  if (!sliding) return;
  const [left, right] = state.panes;
  for (const [id, reply] of [["#slider-left", left], ["#slider-right", right]]) {
    if (reply) $(id).src = reply.png;
    else $(id).removeAttribute("src");
  }
  $("#slider-right").style.clipPath = `inset(0 0 0 ${$("#slider").value}%)`;
  $("#slider-line").style.left = `${$("#slider").value}%`;
}

// ---- rates (admin) -------------------------------------------------------------------------------------------

async function applyRates(event) {
  event.preventDefault();
  const body = {camera: state.camera};
  for (const [id, name] of [["#base-rate", "base_rate"], ["#residual-rate", "residual_rate"],
    ["#target-kbps", "target_kbps"]]) {
    if ($(id).value !== "") body[name] = Number($(id).value);
  }
  const result = $("#rates-result");
  result.className = "";
  try {
    const response = await api("/api/config", {method: "POST", body: JSON.stringify(body),
      headers: {"Content-Type": "application/json"}});
    const reply = await response.json();
    const settings = Object.entries(reply.config).map(([k, v]) => `${k} ${v}`).join(", ");
    result.textContent = `${reply.camera_id}: ${settings} (${reply.delivered ? "sent to the edge" :
      "edge offline: applied when it connects"})`;
    result.className = "ok";
  } catch (error) {
    result.textContent = error.status === 403 ? `refused by the cloud: ${error.message}` : error.message;
    result.className = "error";
  }
}

// ---- wiring --------------------------------------------------------------------------------------------------

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  login($("#token").value.trim());
});
$("#logout").addEventListener("click", () => loggedOut());
$("#rates-form").addEventListener("submit", applyRates);
$("#compare-mode").addEventListener("change", updateSlider);
$("#slider").addEventListener("input", updateSlider);
$("#show-boxes").addEventListener("change", () => document.querySelectorAll(".pane").forEach(drawPaneBoxes));
for (const pane of document.querySelectorAll(".pane")) {
  $(".quality", pane).addEventListener("change", () => { if (state.frame !== null) loadPane(pane); });
}
if (state.token) login(state.token);
