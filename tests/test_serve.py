"""The Ray Serve application of `streamer serve` end to end on tiny (a local Ray instance, batched
engines): `streamer client` gives `streamer run`'s outputs, bad messages get typed errors and the
session goes on, a full replica says so at once, health and metrics, and the page in headless Chromium
where it is installed. Nothing here is timed: clients send their units ahead (--lead), so no unit
depends on the machine's speed."""
from __future__ import annotations

import asyncio
import json
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest

from serve.protocol import (
    decode_server_unit,
    encode_client_unit,
    hello_message,
)

# ---- the Ray Serve application, end to end (a local Ray instance, one replica of 2 slots) -----------

AUDIO_TOL = 1e-5  # batched rows against `streamer run --sequential`: the batch's tolerance (tests/test_batch.py)


@pytest.fixture(scope="module")
def served(tiny_ort_engines, tiny_batch_engines):
    """The batched engines (B = 4, 2 slots taken) behind Serve; `engines` (batch 1) is what `run` compares with."""
    pytest.importorskip("ray.serve", reason="ray[serve] is a dependency of `streamer serve` (pip install -e .)")
    from serve.launch import deploy, free_port, start_ray, stop

    local = start_ray(num_cpus=2, object_store_mb=100)
    try:
        url = deploy({"engines": str(tiny_batch_engines), "threads": 1, "limits": {"idle_timeout_s": 30.0}},
                     replicas=1, slots=2, port=free_port())
        yield SimpleNamespace(http=url, ws=url.replace("http://", "ws://"), engines=tiny_ort_engines)
    finally:
        stop(local)


def _clip(engines, folder, units: int) -> str:
    """The synthetic conversation as AUDIO.wav+VIDEO.mp4 (what both `run` and `client` read the same way)."""
    from runtime.manifest import read_manifest
    from runtime.spec import unit_spec
    from training.conversation import ConversationUnits
    from unitio.media import write_video
    from unitio.wav import write_wav

    spec = unit_spec(read_manifest(engines))
    made = list(ConversationUnits(spec, units, 0))
    write_wav(folder / "in.wav", np.concatenate([a for a, _ in made]), spec.sample_rate)
    write_video(folder / "in.mp4", np.concatenate([f for _, f in made]), spec.fps)
    return f"{folder / 'in.wav'}+{folder / 'in.mp4'}"


def test_client_writes_the_outputs_of_streamer_run(served, tmp_path):
    from helpers import report

    from streamer.cli import main

    clip = _clip(served.engines, tmp_path, 6)
    assert main(["run", "--engines", str(served.engines), "--sequential", "--threads", "1", "--input", clip,
                 "--out", str(tmp_path / "run")]) == 0
    assert main(["client", "--url", served.ws, "--input", clip, "--lead", "10", "--out", str(tmp_path / "client")]) == 0
    run, client = tmp_path / "run", tmp_path / "client"
    for name in ("out.wav", "out.mp4", "out_audio.npy", "text.json", "text.jsonl", "timings.csv"):
        assert (client / name).is_file(), name
    assert json.loads((client / "text.json").read_text()) == json.loads((run / "text.json").read_text())
    want, got = np.load(run / "out_audio.npy"), np.load(client / "out_audio.npy")
    assert got.shape == want.shape == (6 * 3840,)
    report(f"serve round trip: 6 units, text equal, audio max |diff| {np.abs(got - want).max():.2e} (tolerance {AUDIO_TOL:g})")
    assert np.abs(got - want).max() <= AUDIO_TOL


async def _session(url: str, send: list, first=None) -> tuple[list, list, int | None]:
    """Open a session (`first` replaces the hello), send `send` (bytes or str; a callable gets the spec),
    read until the server closes -> (server units, JSON messages, close code)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    units, texts = [], []
    async with connect(url + "/v1/session", max_size=1 << 24) as ws:
        await ws.send(first if first is not None else hello_message(0))
        ready = json.loads(await ws.recv())
        texts.append(ready)
        if ready["type"] == "ready":
            spec = SimpleNamespace(**ready["spec"])
            for m in send:
                await ws.send(m(spec) if callable(m) else m)
        try:
            async for msg in ws:
                units.append(decode_server_unit(msg, spec)) if isinstance(msg, bytes) else texts.append(json.loads(msg))
        except ConnectionClosed:
            pass
        return units, texts, ws.close_code


def _frames(spec, value: int = 90, size: int | None = None):
    return np.full((4, size or spec.frame_height, size or spec.frame_width, 3), value, np.uint8)


def test_bad_messages_get_typed_errors_and_the_session_goes_on(served):
    silence = np.zeros(3840, np.float32)
    send = [lambda s: encode_client_unit(0, silence, _frames(s)),
            lambda s: encode_client_unit(1, silence[:100], _frames(s)),  # bad_audio: unit 1 becomes filler
            b"\x00garbage",  # bad_message
            json.dumps({"type": "dance"}),  # bad_message
            lambda s: encode_client_unit(2, silence, _frames(s, size=s.frame_height + 1)),  # bad_video: filler
            lambda s: encode_client_unit(3, silence, _frames(s), video="jpeg"),
            lambda s: encode_client_unit(3, silence, _frames(s)),  # duplicate_unit
            json.dumps({"type": "end", "last_unit": 3})]
    units, texts, code = asyncio.run(_session(served.ws, send))
    errors = [(t["code"], t["unit"], t["fatal"]) for t in texts if t["type"] == "error"]
    assert errors == [("bad_audio", 1, False), ("bad_message", None, False), ("bad_message", None, False),
                      ("bad_video", 2, False), ("duplicate_unit", 3, False)]
    assert all("expected" in t["message"] for t in texts if t["type"] == "error")
    assert [(u.unit, u.input) for u in units[:4]] == [(0, "client"), (1, "rejected"), (2, "rejected"), (3, "client")]
    assert units[-1].final and units[-1].media == 3 and [u.media for u in units[:4]] == [None, 0, 1, 2]
    bye = texts[-1]
    assert (bye["type"], bye["units"], bye["rejected"], code) == ("bye", 4, 2, 1000)


def test_a_full_replica_refuses_at_once_and_a_bad_hello_is_refused(served):
    async def scenario():
        from websockets.asyncio.client import connect

        held = [await connect(served.ws + "/v1/session") for _ in range(2)]
        for ws in held:
            await ws.send(hello_message(0))
            assert json.loads(await ws.recv())["type"] == "ready"
        _, full, full_code = await _session(served.ws, [])
        _, bad, bad_code = await _session(served.ws, [], first=b"AV\x01U")
        for ws in held:  # ending before any unit: bye at once, the slots free again
            await ws.send(json.dumps({"type": "end", "last_unit": -1}))
            assert json.loads(await ws.recv())["type"] == "bye"
            await ws.close()
        return full, full_code, bad, bad_code

    full, full_code, bad, bad_code = asyncio.run(scenario())
    assert (full[0]["type"], full[0]["code"], full[0]["fatal"], full_code) == ("error", "server_full", True, 1013)
    assert (bad[0]["code"], bad[0]["fatal"], bad_code) == ("bad_hello", True, 1008)


def test_health_and_metrics_in_prometheus_text(served):
    import time

    silence = np.zeros(3840, np.float32)  # a session of its own: one good unit, one bad_audio
    asyncio.run(_session(served.ws, [lambda s: encode_client_unit(0, silence, _frames(s)),
                                     lambda s: encode_client_unit(1, silence[:10], _frames(s)),
                                     json.dumps({"type": "end", "last_unit": 1})]))
    with urllib.request.urlopen(served.http + "/health", timeout=30) as r:
        health = json.loads(r.read())
    assert r.status == 200 and health["ok"] and health["slots"] == 2
    text = ""
    for _ in range(50):  # the board hears from the replica once a second
        with urllib.request.urlopen(served.http + "/metrics", timeout=30) as r:
            text = r.read().decode()
        if 'code="bad_audio"' in text and not any(line.endswith(" 0") for line in text.splitlines()
                                                  if line.startswith("avs_units_total")):
            break  # the snapshot after that session
        time.sleep(0.2)
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    for name in ("avs_sessions", "avs_slots_free", "avs_units_total", "avs_late_units_total", "avs_step_ms",
                 "avs_unit_latency_ms", "avs_protocol_errors_total"):
        assert f"# TYPE {name} " in text, name
    assert any(k.startswith("avs_units_total") and v > 0 for k, v in samples.items())
    assert any(k.startswith("avs_unit_latency_ms") and 'quantile="0.99"' in k for k in samples)
    assert any('code="bad_audio"' in k and v >= 1 for k, v in samples.items())


def _reads_as_words(lines: list, vocabulary: set) -> bool:
    """Every transcript line is one or more words of the served vocabulary (no ids, no numbers)."""
    return bool(lines) and all(line and all(w in vocabulary for w in line.split()) for line in lines)


DENY_MEDIA = ("navigator.mediaDevices.getUserMedia = () => "
              "Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));")


class _DyingServer:
    """The page's files and /info on a port of its own, and a /v1/session that says ready, takes 3 units
    and then drops the connection as a killed server would (no close frame): what the page shows when the
    server stops under a live session. `stop()` closes the port: what Retry meets afterwards."""

    def __init__(self, info: dict) -> None:
        import threading
        from importlib import resources

        self.info, self.files = info, {
            "/": ("text/html", resources.files("serve").joinpath("static", "index.html").read_bytes()),
            **{f"/static/{n}": ("text/javascript", resources.files("serve").joinpath("static", n).read_bytes())
               for n in ("app.js", "capture-worklet.js")},
            "/info": ("application/json", json.dumps(info).encode())}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._open())
        self.ready.set()
        self.loop.run_forever()

    async def _open(self) -> None:
        from websockets.asyncio.server import serve
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        def route(connection, request):
            path = request.path.split("?")[0]
            if path == self.info["path"]:
                return None  # the WebSocket handshake
            if path not in self.files:
                return Response(404, "Not Found", Headers([("Content-Length", "0")]), b"")
            ctype, body = self.files[path]
            return Response(200, "OK", Headers([("Content-Type", ctype), ("Content-Length", str(len(body)))]), body)

        async def session(ws) -> None:
            await ws.recv()  # the hello
            await ws.send(json.dumps({"type": "ready", "protocol": 1, "session": "0123456789ab", "replica": "dying",
                                      "rows": "batched", "spec": self.info["spec"], "limits": self.info["limits"]}))
            for _ in range(3):
                await ws.recv()
            ws.transport.abort()  # no close frame: the browser sees 1006

        self.server = await serve(session, "127.0.0.1", 0, process_request=route)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_the_page_reads_as_a_demo(served, tmp_path):
    """What a person sees in headless Chromium (fake camera and microphone): the state in words, the
    model's words as a transcript, the meters moving, the face drawn; the diagnostics folded away; a new
    session's counters from 0; an unreachable server and a denied camera in words with what to do.
    AVS_PAGE_SHOTS=DIR keeps the screenshots (docs/img: docs/page.md)."""
    import base64
    import os
    from pathlib import Path

    from cdp import Chromium, find_chromium

    from training import conversation, spoken

    with urllib.request.urlopen(served.http + "/info", timeout=30) as r:
        info = json.loads(r.read())
    served_words = info["words"]
    want = {k: w for k, w in {**conversation.WORDS, **spoken.WORDS}.items() if k != conversation.SIL}
    assert {int(k): w for k, w in served_words.items() if w} == want and served_words[str(conversation.SIL)] == ""
    vocabulary = {w for w in served_words.values() if w}
    assert not _reads_as_words(["#10 #20"], vocabulary) and not _reads_as_words([], vocabulary)  # the check can fail
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it where it can); "
                    "the served words were checked")

    shots = tmp_path / "shots"
    shots.mkdir()
    browser = Chromium(exe, tmp_path / "profile")
    js = browser.evaluate

    def text(el: str) -> str:
        return js(f"document.getElementById('{el}').textContent")

    def shot(name: str) -> None:
        height = js("document.documentElement.scrollHeight")  # the whole page, diagnostics included when open
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                            clip={"x": 0, "y": 0, "width": 1040, "height": height, "scale": 1})["data"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        (shots / f"{name}.png").write_bytes(png)

    try:
        browser.open(served.http + "/")
        browser.call("Emulation.setDeviceMetricsOverride", width=1040, height=720, deviceScaleFactor=1, mobile=False)
        assert browser.wait_for("document.readyState === 'complete' && !!window.avs", 30)
        assert text("state") == "not started" and not js("document.getElementById('diagnostics').open")
        js("document.getElementById('start').click()", gesture=True)
        units = 40 if os.environ.get("AVS_PAGE_SHOTS") else 12  # the docs' screenshot: a few answers
        stats = browser.wait_for(f"window.avs.received >= {units} && window.avs.transcript.length >= 1 && window.avs", 60)
        assert stats, f"no words came back: {js('JSON.stringify(window.avs)')}"
        assert text("state") == "live" and stats["sent"] >= 12 and stats["media"] >= 11 and stats["drawn"] >= 5
        assert not stats["errors"]
        assert js("window.avsFacePixels()") > 0  # frames were drawn on the face canvas
        lines = js("[...document.querySelectorAll('#transcript .w')].map((e) => e.textContent)")
        assert _reads_as_words(lines, vocabulary), lines  # words, not token ids
        assert stats["micPeak"] > 0.35 and stats["voicePeak"] > 0.55, stats  # the fake beep is heard, the model speaks
        assert stats["heard"] >= 1 and text("hearing") in ("hearing you", "quiet")  # the flag said so at least once
        assert text("lat_text").endswith(" ms") and int(text("sent")) >= 12
        shot("page-live")
        js("document.getElementById('stop').click()", gesture=True)
        assert browser.wait_for("window.avs.bye && window.avs.state === 'ended' && window.avs.bye.reason", 30) == "end"
        assert text("state") == "session ended" and text("start") == "Start"
        js("document.getElementById('diagnostics').open = true")
        shot("page-ended")
        first = stats["sent"]

        js("document.getElementById('start').click()", gesture=True)  # a new session, counted from 0
        again = browser.wait_for("window.avs.state === 'live' && window.avs", 30)
        assert again and again["sent"] < first and again["errors"] == [] and again["bye"] is None
        js("document.getElementById('stop').click()", gesture=True)
        assert browser.wait_for("window.avs.state === 'ended'", 30)

        dying = _DyingServer(info)  # the server stops under a live session, then is gone
        try:
            browser.call("Page.navigate", url=dying.url + "/")
            assert browser.wait_for("document.readyState === 'complete' && !!window.avs && window.avs.state === 'idle'", 30)
            js("document.getElementById('start').click()", gesture=True)
            assert browser.wait_for("window.avs.state === 'stopped'", 30), js("JSON.stringify(window.avs)")
            assert text("state") == "server stopped: retry" and text("start") == "Retry" and "lost" in text("help")
            shot("page-stopped")
        finally:
            dying.stop()
        js("document.getElementById('start').click()", gesture=True)  # Retry with no server there
        assert browser.wait_for("window.avs.state === 'stopped' && window.avs.help.includes('does not answer')", 30)
        assert text("state") == "server stopped: retry" and "Retry" in text("help")

        browser.call("Page.addScriptToEvaluateOnNewDocument", source=DENY_MEDIA)  # a denied camera
        browser.call("Page.navigate", url=served.http + "/")
        assert browser.wait_for("document.readyState === 'complete' && !!window.avs && window.avs.state === 'idle'", 30)
        js("document.getElementById('start').click()", gesture=True)
        assert browser.wait_for("window.avs.state === 'denied'", 20), js("JSON.stringify(window.avs)")
        help_text = text("help")
        assert text("state") == "camera or microphone blocked" and "allow" in help_text and "Retry" in help_text
        assert "NotAllowedError" not in js("document.body.innerText")  # no raw browser error code
        shot("page-denied")
    finally:
        browser.close()
    if os.environ.get("AVS_PAGE_SHOTS"):  # 128 colours: a third of the size, the text as sharp
        from PIL import Image

        for png in shots.iterdir():
            Image.open(png).convert("RGB").quantize(128, dither=Image.Dither.NONE).save(
                Path(os.environ["AVS_PAGE_SHOTS"]) / png.name, optimize=True)
