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


def test_the_page_streams_camera_and_microphone_and_draws_the_face(served, tmp_path):
    from cdp import Chromium, find_chromium

    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it where it can)")
    browser = Chromium(exe, tmp_path / "profile")
    try:
        browser.open(served.http + "/")
        assert browser.wait_for("document.readyState === 'complete' && !!window.avs", 30)
        browser.evaluate("document.getElementById('start').click()", gesture=True)
        stats = browser.wait_for("window.avs.received >= 5 && window.avs.drawn >= 5 && window.avs", 60)
        assert stats, f"no units came back: {browser.evaluate('JSON.stringify(window.avs)')}"
        assert stats["sent"] >= 5 and stats["media"] >= 4 and not stats["errors"]
        assert browser.evaluate("window.avsFacePixels()") > 0  # frames were drawn on the face canvas
        assert browser.evaluate("document.getElementById('lat_text').textContent").endswith(" ms")
        browser.evaluate("document.getElementById('stop').click()", gesture=True)
        assert browser.wait_for("window.avs.bye && window.avs.bye.reason", 30) == "end"
    finally:
        browser.close()
