// The browser side of protocol 1 (docs/PROTOCOL.md; docs/page.md shows the page): camera + microphone ->
// units -> WebSocket; the model's voice is played, its face drawn and its words written as they come back.
// Plain JS, no build step, nothing fetched from elsewhere. `window.avs` holds what the page shows (the
// headless test reads it): `state` (idle, connecting, live, ending, ended, stopped, denied, error), the
// transcript, the meters' levels and this session's counters.
"use strict";

const fresh = () => ({
  sent: 0, received: 0, media: 0, drawn: 0, missing: 0, rejected: 0, late: 0, errors: [], bye: null, ready: null,
  latText: [], latMedia: [], steps: [], transcript: [], micLevel: 0, voiceLevel: 0, micPeak: 0, voicePeak: 0,
  spoke: 0, heard: 0,
});
const avs = window.avs = { ...fresh(), running: false, state: "idle", status: "not started", help: "", sessions: 0 };
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

function pcm16(samples) {  // float [-1, 1] -> little-endian int16, sample = int16 / 32768
  const out = new ArrayBuffer(samples.length * 2), dv = new DataView(out);
  for (let i = 0; i < samples.length; i++) {
    dv.setInt16(2 * i, Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768))), true);
  }
  return out;
}

const p50 = (a) => { if (!a.length) return NaN; const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
const recent = (a, v, n = 100) => { a.push(v); if (a.length > n) a.shift(); };

// ---- what a person reads: the state, and what to do when something went wrong ----
const STATES = { idle: "not started", connecting: "connecting ...", live: "live", ending: "ending ...", ended: "session ended",
                 stopped: "server stopped: retry", denied: "camera or microphone blocked", error: "stopped: retry" };

const MEDIA_HELP = {  // getUserMedia's errors, by DOMException name
  NotAllowedError: "The browser was not allowed to use the camera and microphone. Click the camera icon in the address bar (or open the site's settings), allow both for this page, then press Retry.",
  SecurityError: "The browser does not let this page use the camera and microphone. Open it over https, or as http://localhost on the server's machine, then press Retry.",
  NotFoundError: "No camera or no microphone was found. Plug one in (or enable it in the system settings), then press Retry.",
  NotReadableError: "The camera or the microphone is in use by another program (or another tab). Close it there, then press Retry.",
  OverconstrainedError: "The camera cannot give the picture this page asks for. Try another camera, then press Retry.",
  AbortError: "The camera or the microphone stopped while starting. Press Retry.",
};

const CLOSE_HELP = {  // the server's fatal error codes (docs/PROTOCOL.md section 6)
  server_full: ["error", "The server is busy: every session slot is taken. Press Retry in a moment."],
  shutting_down: ["stopped", "The server is stopping. Press Retry once it is running again."],
  server_error: ["stopped", "The model on the server failed. Its log says why; press Retry once it is restarted."],
  idle_timeout: ["error", "The server heard nothing from this page for a while and ended the session (a paused or hidden tab?). Press Retry."],
  slow_client: ["error", "This page fell behind reading the model's answers (a busy computer or a slow network). Press Retry."],
  session_too_long: ["ended", "The session reached the server's longest session. Press Start for a new one."],
  unsupported_version: ["error", "This page and the server speak different protocol versions: reload the page."],
  bad_hello: ["error", "The server did not accept this page's greeting: reload the page."],
};

function setState(state, help = "") {
  avs.state = state;
  avs.status = STATES[state];
  avs.help = help;
  const el = $("state");
  el.dataset.state = state;
  el.textContent = STATES[state];
  $("help").textContent = help;
  $("help").hidden = !help;
  const retry = ["stopped", "denied", "error"].includes(state);
  $("start").textContent = retry ? "Retry" : "Start";
  $("start").disabled = ["connecting", "live", "ending"].includes(state);
  $("stop").disabled = state !== "live";
}

// ---- the transcript: text ids -> words (the server's /info `words`); a run of speaking units is one line ----
let words = {};

// ---- what the served model does, in words: the tone model (tiny) or the speech model (tiny-speech) ----
const ABOUT = {
  "tiny-speech": 'The served <code>tiny-speech</code> model hears words: ask <i>red?</i>, <i>green?</i> or '
    + '<i>blue?</i> while you hold a card of a colour in the middle of the picture, lower it, and listen: it '
    + 'says <i>yes</i> when your word names the card\'s colour, else the card\'s colour.',
};
function describeModel(name) {  // static strings only: nothing from the server is written as HTML
  if (Object.prototype.hasOwnProperty.call(ABOUT, name)) $("about").innerHTML = `(${ABOUT[name]})`;
}
fetch("/info", { cache: "no-store" }).then((r) => (r.ok ? r.json() : null)).then((i) => i && describeModel(i.spec.name)).catch(() => {});
const say = (id) => (id in words ? words[id] : `#${id}`);  // an id the server has no word for stays visible as one

function heardText(s, h) {
  const said = (h.text || []).filter((id) => id !== s.spec.text_pad_id).map(say).filter((w) => w !== "");
  const last = s.line;
  if (!said.length) { s.line = null; return; }
  const group = said.join(" ");
  if (last && last.unit === h.unit - 1) {  // the same utterance goes on
    last.unit = h.unit;
    if (group === last.group) return;
    last.group = group;
    for (const w of said) if (w !== last.words[last.words.length - 1]) last.words.push(w);  // "red red" is one "red"
  } else {
    s.line = { unit: h.unit, group, words: said.filter((w, i) => w !== said[i - 1]), at: (h.unit * s.spec.unit_ms) / 1000 };
    avs.spoke += 1;
  }
  writeLine(s.line);
}

function writeLine(line) {
  const box = $("transcript");
  if (!line.li) {
    if (box.firstElementChild && box.firstElementChild.classList.contains("empty")) box.textContent = "";
    line.li = document.createElement("li");
    line.li.innerHTML = '<span class="t"></span><span class="w"></span>';
    line.li.firstChild.textContent = `${Math.floor(line.at / 60)}:${(line.at % 60).toFixed(1).padStart(4, "0")}`;
    box.appendChild(line.li);
    avs.transcript.push("");
  }
  const text = line.words.join(" ");
  line.li.lastChild.textContent = text;
  avs.transcript[avs.transcript.length - 1] = text;
  box.scrollTop = box.scrollHeight;
}

// ---- the meters: loudness per unit (dBFS -60..0 -> 0..1) and the last 50 units as bars ----
const level = (x) => { let e = 0; for (let i = 0; i < x.length; i++) e += x[i] * x[i]; const rms = Math.sqrt(e / Math.max(1, x.length)); return Math.max(0, Math.min(1, (20 * Math.log10(rms + 1e-9) + 60) / 60)); };
const ON = { mic: 0.35, voice: 0.55 };  // -39 dBFS: a voice, not a quiet room; -27 dBFS: the model's voice, not its hiss
const history = { mic_wave: [], voice_wave: [] };

function showLevel(which, v, keep = true) {  // keep: add v to the bars (false: reset the meter only)
  const mic = which === "mic";
  $(mic ? "mic_level" : "voice_level").value = v;
  const flag = $(mic ? "hearing" : "speaking"), on = v >= ON[which];
  flag.textContent = mic ? (on ? "hearing you" : "quiet") : (on ? "speaking" : "silent");
  flag.classList.toggle("on", on);
  if (mic) { avs.micLevel = v; avs.micPeak = Math.max(avs.micPeak, v); if (on) avs.heard += 1; }
  else { avs.voiceLevel = v; avs.voicePeak = Math.max(avs.voicePeak, v); }
  const name = mic ? "mic_wave" : "voice_wave", bars = history[name], c = $(name), g = c.getContext("2d");
  if (keep) bars.push(v);
  if (bars.length > 50) bars.shift();
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = mic ? "#0b57d0" : "#0d6b2f";
  const w = c.width / 50;
  bars.forEach((b, i) => { const hgt = Math.max(1, b * c.height); g.fillRect(i * w, (c.height - hgt) / 2, w - 1, hgt); });
}

function clearPage() {
  Object.assign(avs, fresh());
  $("transcript").innerHTML = '<li class="empty">nothing yet</li>';
  history.mic_wave.length = 0; history.voice_wave.length = 0;
  showLevel("mic", 0, false); showLevel("voice", 0, false);
  const face = $("face"); face.getContext("2d").clearRect(0, 0, face.width, face.height);
  $("text").textContent = "";
  $("session").textContent = "-";
  render();
}

let session = null;

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
  if (session) stopMedia(session);
  clearPage();
  setState("connecting");
  try {
    session = await openSession();
  } catch (e) {
    if (session) stopMedia(session);
    if (e.state) setState(e.state, e.help);
    else setState("error", `Could not start: ${e.message || e}. Press Retry.`);
  }
}

const failure = (state, help) => Object.assign(new Error(help), { state, help });

async function openSession() {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    throw failure("denied", MEDIA_HELP.SecurityError);
  }
  let info;
  try {
    const r = await fetch("/info", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    info = await r.json();
  } catch (e) {
    const why = e instanceof TypeError ? "" : ` (${e.message})`;  // a network failure's text is the browser's, not the user's
    throw failure("stopped", `The server does not answer${why}. Start it (streamer serve) and press Retry.`);
  }
  words = info.words || {};
  describeModel(info.spec.name);
  const spec = info.spec, W = spec.frame_width, H = spec.frame_height;
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false }, video: { width: 320, height: 240 } });
  } catch (e) {
    throw failure("denied", MEDIA_HELP[e.name] || `The camera or the microphone could not start (${e.name || e}). Press Retry.`);
  }
  const s = session = { spec, media, unit: 0, acked: -1, ended: false, sentAt: new Map(), frames: [], playhead: 0, queue: [], timers: [], pending: new Set(), line: null };
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
    ws.onclose = () => reject(failure("stopped", "The server closed the connection before the session began. Press Retry."));
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === "ready") { avs.ready = m; resolve(); return; }
      avs.errors.push(m);
      const [state, help] = CLOSE_HELP[m.code] || ["error", `The server refused the session: ${m.message}`];
      reject(failure(state, help));
    };
  });
  ws.onmessage = (ev) => onMessage(s, ev.data);
  ws.onclose = (ev) => onClose(s, ev);

  // the microphone at the preset's rate, cut into units by the worklet; each unit is sent when complete
  const ctx = s.ctx = new AudioContext({ sampleRate: spec.sample_rate });
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  const node = new AudioWorkletNode(ctx, "capture", { processorOptions: { unit: spec.samples_per_unit } });
  const mute = ctx.createGain(); mute.gain.value = 0;
  ctx.createMediaStreamSource(media).connect(node).connect(mute).connect(ctx.destination);
  node.port.onmessage = (ev) => sendUnit(s, ev.data);
  await ctx.resume();
  avs.running = true;
  avs.sessions += 1;
  $("session").textContent = `${avs.ready.session} on ${avs.ready.replica} (${spec.name}, ${avs.ready.rows})`;
  setState("live");
  return s;
}

function onClose(s, ev) {
  stopMedia(s);
  if (s !== session) return;  // an earlier session's socket closing late
  avs.running = false;
  const fatal = [...avs.errors].reverse().find((m) => m.fatal);
  if (avs.bye && avs.bye.reason === "end") setState("ended");
  else if (fatal && CLOSE_HELP[fatal.code]) setState(...CLOSE_HELP[fatal.code]);
  else if (fatal) setState("error", `The server ended the session: ${fatal.message}`);
  else if (ev.code === 1001 || ev.code === 1006 || ev.code === 1011) setState("stopped", "The connection to the server was lost (it stopped, or the network went down). Press Retry once it is back.");
  else setState("error", `The connection closed unexpectedly (code ${ev.code}). Press Retry.`);
}

function sendUnit(s, samples) {
  if (s.ended || s.ws.readyState !== WebSocket.OPEN) return;
  showLevel("mic", level(samples));
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
    if (m.type === "error") avs.errors.push(m);
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
    heardText(s, h);
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
  const v = level(samples);  // the voice meter moves when this unit is heard, not when it arrives
  const t = setTimeout(() => { s.pending.delete(t); showLevel("voice", v); }, Math.max(0, (s.playhead - ctx.currentTime) * 1000));
  s.pending.add(t);
  s.playhead += buf.duration;
}

function stopMedia(s) {
  for (const t of s.timers) clearInterval(t);
  for (const t of s.pending) clearTimeout(t);
  s.timers = []; s.pending.clear();
  for (const track of s.media.getTracks()) track.stop();
  if (s.ctx && s.ctx.state !== "closed") s.ctx.close();
  $("camera").srcObject = null;
  showLevel("mic", 0, false); showLevel("voice", 0, false);
}

function stop() {
  if (!session) return;
  session.ended = true;
  if (session.ws.readyState === WebSocket.OPEN) session.ws.send(JSON.stringify({ type: "end", last_unit: session.unit - 1 }));
  setState("ending");
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
setState("idle");
window.avsFacePixels = () => {  // the sum of the face canvas's RGB (the test checks frames were drawn)
  const c = $("face"), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let sum = 0; for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];
  return sum;
};
