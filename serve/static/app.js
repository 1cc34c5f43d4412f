// The browser side of protocol 1 (docs/PROTOCOL.md): camera + microphone -> units -> WebSocket; the
// model's audio is played and its frames drawn as they come back. Plain JS, no build step, nothing
// fetched from elsewhere. `window.avs` holds the numbers the page shows (the headless test reads it).
"use strict";

const avs = window.avs = {
  sent: 0, received: 0, media: 0, drawn: 0, missing: 0, rejected: 0, late: 0,
  errors: [], bye: null, ready: null, latText: [], latMedia: [], steps: [], running: false, status: "idle",
};
const $ = (id) => document.getElementById(id);
const enc = new TextEncoder(), dec = new TextDecoder();

// ---- framing: "AV", version 1, kind, uint32 LE header length, JSON header (space-padded), sections ----
function pack(kind, header, sections) {
  let h = enc.encode(JSON.stringify(header));
  const pad = (4 - ((8 + h.length) % 4)) % 4;
  const size = 8 + h.length + pad + sections.reduce((n, s) => n + s.byteLength, 0);
  const out = new Uint8Array(size), dv = new DataView(out.buffer);
  out[0] = 0x41; out[1] = 0x56; out[2] = 1; out[3] = kind.charCodeAt(0);
  dv.setUint32(4, h.length + pad, true);
  out.set(h, 8);
  out.fill(0x20, 8 + h.length, 8 + h.length + pad);
  let at = 8 + h.length + pad;
  for (const s of sections) { out.set(new Uint8Array(s.buffer || s, s.byteOffset || 0, s.byteLength), at); at += s.byteLength; }
  return out.buffer;
}

function unpack(buf) {
  const dv = new DataView(buf), b = new Uint8Array(buf);
  if (b.length < 8 || b[0] !== 0x41 || b[1] !== 0x56 || b[2] !== 1 || b[3] !== 0x52) throw new Error("not a server unit");
  const n = dv.getUint32(4, true);
  const header = JSON.parse(dec.decode(b.subarray(8, 8 + n)));
  let at = 8 + n;
  const take = (len) => { const s = buf.slice(at, at + len); at += len; return s; };
  const audio = header.audio ? take(header.audio) : null;
  const frames = (header.frames || []).map(take);
  return { header, audio, frames };
}

function pcm16(samples) {  // float [-1, 1] -> little-endian int16, sample = int16 / 32768
  const out = new ArrayBuffer(samples.length * 2), dv = new DataView(out);
  for (let i = 0; i < samples.length; i++) {
    dv.setInt16(2 * i, Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768))), true);
  }
  return out;
}

const p50 = (a) => { if (!a.length) return NaN; const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
const recent = (a, v, n = 100) => { a.push(v); if (a.length > n) a.shift(); };

let session = null;

function setStatus(text, error = false) {
  avs.status = text;
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function render() {
  $("sent").textContent = avs.sent;
  $("received").textContent = avs.received;
  $("drawn").textContent = avs.drawn;
  const ms = (v) => (Number.isNaN(v) ? "-" : `${v.toFixed(0)} ms`);
  $("lat_text").textContent = ms(p50(avs.latText));
  $("lat_media").textContent = ms(p50(avs.latMedia));
  $("step").textContent = ms(p50(avs.steps));
  $("filled").textContent = `${avs.missing} / ${avs.rejected}`;
  $("late").textContent = avs.late;
  $("errors").textContent = avs.errors.length;
}

async function start() {
  $("start").disabled = true;
  try {
    session = await openSession();
    $("stop").disabled = false;
  } catch (e) {
    setStatus(`could not start: ${e.message || e}`, true);
    $("start").disabled = false;
  }
}

async function openSession() {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    throw new Error("this page needs a secure origin (https, or http://localhost) for the camera and microphone");
  }
  const info = await (await fetch("/info")).json();
  const spec = info.spec, W = spec.frame_width, H = spec.frame_height;
  setStatus("asking for the camera and microphone ...");
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false }, video: { width: 320, height: 240 } });
  const s = { spec, media, unit: 0, acked: -1, ended: false, sentAt: new Map(), frames: [], playhead: 0, queue: [], timers: [] };
  $("camera").srcObject = media;
  const face = $("face"); face.width = W; face.height = H;

  // camera: a frame every 40 ms, scaled to the preset's size (the last 4 go with each unit)
  const grab = document.createElement("canvas"); grab.width = W; grab.height = H;
  const g = grab.getContext("2d", { willReadFrequently: true });
  s.timers.push(setInterval(() => {
    const video = $("camera");
    if (video.readyState < 2) return;
    g.drawImage(video, 0, 0, W, H);
    const rgba = g.getImageData(0, 0, W, H).data, rgb = new Uint8Array(W * H * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
    s.frames.push(rgb);
    if (s.frames.length > spec.frames_per_unit) s.frames.shift();
  }, 1000 / spec.fps));

  // the model's face: one frame every 40 ms from what has come back
  const f = face.getContext("2d"), image = f.createImageData(W, H);
  s.timers.push(setInterval(() => {
    const rgb = s.queue.shift();
    if (!rgb) return;
    for (let i = 0, j = 0; j < rgb.length; i += 4, j += 3) { image.data[i] = rgb[j]; image.data[i + 1] = rgb[j + 1]; image.data[i + 2] = rgb[j + 2]; image.data[i + 3] = 255; }
    f.putImageData(image, 0, 0);
    avs.drawn += 1;
  }, 1000 / spec.fps));

  // the socket
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${info.path}`);
  ws.binaryType = "arraybuffer";
  s.ws = ws;
  await new Promise((resolve, reject) => {
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", protocol: 1, seed: 0, audio_out: "f32", video_out: "raw" }));
    ws.onerror = () => reject(new Error("the WebSocket could not connect"));
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === "ready") { avs.ready = m; resolve(); } else reject(new Error(`${m.code}: ${m.message}`));
    };
  });
  ws.onmessage = (ev) => onMessage(s, ev.data);
  ws.onclose = (ev) => { stopMedia(s); avs.running = false; setStatus(avs.bye ? `session ended (${avs.bye.reason})` : `connection closed (${ev.code})`, !avs.bye); };

  // the microphone at the preset's rate, cut into units by the worklet; each unit is sent when complete
  const ctx = s.ctx = new AudioContext({ sampleRate: spec.sample_rate });
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  const node = new AudioWorkletNode(ctx, "capture", { processorOptions: { unit: spec.samples_per_unit } });
  const mute = ctx.createGain(); mute.gain.value = 0;
  ctx.createMediaStreamSource(media).connect(node).connect(mute).connect(ctx.destination);
  node.port.onmessage = (ev) => sendUnit(s, ev.data);
  await ctx.resume();
  avs.running = true;
  setStatus(`live: session ${avs.ready.session} on replica ${avs.ready.replica} (${spec.name}, ${avs.ready.rows})`);
  return s;
}

function sendUnit(s, samples) {
  if (s.ended || s.ws.readyState !== WebSocket.OPEN) return;
  const spec = s.spec, n = spec.frame_height * spec.frame_width * 3;
  const frames = [];
  for (let i = 0; i < spec.frames_per_unit; i++) frames.push(s.frames[i] || s.frames[s.frames.length - 1] || new Uint8Array(n).fill(128));
  const k = s.unit++;
  const now = performance.now();
  s.sentAt.set(k, now);
  const header = { unit: k, audio: samples.length * 2, video: "raw", frames: frames.map((x) => x.byteLength), t: now, ack: s.acked };
  s.ws.send(pack("U", header, [pcm16(samples), ...frames]));
  avs.sent += 1;
  render();
}

function onMessage(s, data) {
  if (typeof data === "string") {
    const m = JSON.parse(data);
    if (m.type === "error") { avs.errors.push(m); if (m.fatal) setStatus(`${m.code}: ${m.message}`, true); }
    else if (m.type === "bye") avs.bye = m;
    render();
    return;
  }
  const { header: h, audio, frames } = unpack(data);
  const now = performance.now();
  if (h.unit !== null) {
    avs.received += 1;
    s.acked = h.unit;
    if (s.sentAt.has(h.unit)) recent(avs.latText, now - s.sentAt.get(h.unit));
    if (h.input === "missing") avs.missing += 1;
    if (h.input === "rejected") avs.rejected += 1;
    if (h.timing && h.timing.step_ms !== undefined) {
      recent(avs.steps, h.timing.step_ms);
      if (h.timing.lag_ms + h.timing.step_ms > s.spec.unit_ms) avs.late += 1;
    }
    const line = `unit ${h.unit}: text ${JSON.stringify(h.text)}${h.input !== "client" ? ` (${h.input})` : ""}`;
    const box = $("text"); box.textContent = (line + "\n" + box.textContent).split("\n").slice(0, 6).join("\n");
  }
  if (audio) {
    avs.media += 1;
    if (s.sentAt.has(h.media)) { recent(avs.latMedia, now - s.sentAt.get(h.media)); s.sentAt.delete(h.media); }
    play(s, new Float32Array(audio));
    for (const fr of frames) s.queue.push(new Uint8Array(fr));
    while (s.queue.length > 3 * s.spec.frames_per_unit) s.queue.shift();  // never fall behind the voice
  }
  render();
}

function play(s, samples) {
  const ctx = s.ctx;
  if (!ctx) return;
  const buf = ctx.createBuffer(1, samples.length, s.spec.sample_rate);
  buf.copyToChannel(samples, 0);
  const node = ctx.createBufferSource();
  node.buffer = buf;
  node.connect(ctx.destination);
  if (s.playhead < ctx.currentTime + 0.02) s.playhead = ctx.currentTime + 0.06;  // a small jitter buffer
  node.start(s.playhead);
  s.playhead += buf.duration;
}

function stopMedia(s) {
  for (const t of s.timers) clearInterval(t);
  s.timers = [];
  for (const track of s.media.getTracks()) track.stop();
  if (s.ctx && s.ctx.state !== "closed") s.ctx.close();
  $("start").disabled = false;
  $("stop").disabled = true;
}

function stop() {
  if (!session) return;
  $("stop").disabled = true;
  session.ended = true;
  if (session.ws.readyState === WebSocket.OPEN) session.ws.send(JSON.stringify({ type: "end", last_unit: session.unit - 1 }));
  setStatus("ending: the last units and the final output ...");
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
window.avsFacePixels = () => {  // the sum of the face canvas's RGB (the test checks frames were drawn)
  const c = $("face"), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let sum = 0; for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];
  return sum;
};
