"""Serving live sessions (issue 15): the protocol's framing and typed errors, one replica's hub (sessions
in their rows equal solo sessions; a bad unit is filler and the session goes on), and the Ray Serve
application end to end on tiny (a local Ray instance): `streamer client` gives `streamer run`'s outputs,
bad messages get typed errors, a full replica says so at once, health and metrics, and the page in
headless Chromium where it is installed. Nothing here is timed: clients send their units ahead (--lead),
so no unit depends on the machine's speed."""
from __future__ import annotations

import asyncio
import json
import struct
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.protocol import (
    ERRORS,
    Hello,
    Limits,
    ProtocolError,
    ServerUnit,
    decode_client_unit,
    decode_server_unit,
    encode_client_unit,
    encode_server_unit,
    hello_message,
    parse_hello,
)
from serve.wire import CLIENT_UNIT, pack

SPEC = SimpleNamespace(name="t", sample_rate=24000, samples_per_unit=3840, fps=25, frames_per_unit=4, frame_height=8,
                       frame_width=8, unit_ms=160.0, text_in_tokens=2, text_out_tokens=2, vocab_size=512, text_pad_id=0)


def _unit(k: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    audio = (rng.integers(-32768, 32768, SPEC.samples_per_unit) / 32768.0).astype(np.float32)
    return audio, rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)


def _code(data: bytes) -> tuple[str, int | None]:
    with pytest.raises(ProtocolError) as e:
        decode_client_unit(data, SPEC, Limits())
    assert e.value.code in ERRORS and str(e.value)
    return e.value.code, e.value.unit


# ---- the protocol --------------------------------------------------------------------------------

def test_units_round_trip_exactly_and_jpeg_frames_decode():
    audio, frames = _unit()
    u = decode_client_unit(encode_client_unit(7, audio, frames, text=[3, 4], t=12.5, ack=5), SPEC, Limits())
    assert (u.unit, u.t, u.ack, list(u.text)) == (7, 12.5, 5, [3, 4])
    assert np.array_equal(u.audio, audio) and np.array_equal(u.frames, frames)  # PCM16 is exact for int16/32768
    j = decode_client_unit(encode_client_unit(8, audio, frames, video="jpeg"), SPEC, Limits())
    assert j.frames.shape == frames.shape and np.abs(j.frames.astype(int) - frames).mean() < 60
    s = decode_server_unit(encode_server_unit(ServerUnit(3, [1, 2], 2, audio, frames, "client", 1.0, {"step_ms": 2.0})), SPEC)
    assert (s.unit, s.text, s.media, s.input, s.timing) == (3, [1, 2], 2, "client", {"step_ms": 2.0})
    assert np.array_equal(s.audio, audio) and np.array_equal(s.frames, frames)
    assert len(encode_server_unit(ServerUnit(None, None, 3, audio, frames, final=True))) % 4 == 0


def test_bad_units_get_typed_errors_naming_the_unit():
    audio, frames = _unit()
    good = encode_client_unit(4, audio, frames)
    assert _code(b"XX" + good[2:]) == ("bad_message", None)
    assert _code(good[:2] + b"\x02" + good[3:]) == ("unsupported_version", None)
    assert _code(good[:6]) == ("bad_message", None)
    assert _code(good + b"\x00" * 100_000) == ("too_large", None)
    assert _code(good[:-5]) == ("bad_message", 4)  # the sections do not add up
    assert _code(encode_client_unit(4, audio[:100], frames)) == ("bad_audio", 4)
    assert _code(encode_client_unit(4, audio, frames[:3])) == ("bad_video", 4)
    assert _code(encode_client_unit(4, audio, np.zeros((4, 8, 9, 3), np.uint8))) == ("bad_video", 4)
    assert _code(encode_client_unit(4, audio, np.zeros((4, 16, 16, 3), np.uint8), video="jpeg")) == ("bad_video", 4)
    assert _code(encode_client_unit(4, audio, frames, text=[1, 9999])) == ("bad_text", 4)
    header = {"unit": 4, "audio": 7680, "video": "jpeg", "frames": [10, 10, 10, 10]}
    assert _code(pack(CLIENT_UNIT, header, [b"\x00" * 7680, *[b"not a jpeg" for _ in range(4)]])) == ("bad_video", 4)
    assert _code(pack(CLIENT_UNIT, {"unit": -1}, [])) == ("bad_message", None)
    assert _code(struct.pack("<2sBcI", b"AV", 1, b"U", 9) + b"[1,2,3]  ") == ("bad_message", None)
    for text, code in (("{", "bad_hello"), ('{"type": "end"}', "bad_hello"), ('{"type": "hello"}', "unsupported_version"),
                       (json.dumps({"type": "hello", "protocol": 1, "video_out": "png"}), "bad_hello")):
        with pytest.raises(ProtocolError) as e:
            parse_hello(text)
        assert e.value.code == code and e.value.fatal
    assert parse_hello(hello_message(5, "pcm16", "jpeg")) == Hello(5, "pcm16", "jpeg")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 30_000))
def test_any_bytes_give_a_protocol_error_or_a_unit(junk, cut):
    """Fuzz: truncations and splices of a valid unit, and random bytes, never raise anything but ProtocolError."""
    good = encode_client_unit(1, *_unit())
    for data in (junk, good[:cut] + junk, good[:8] + junk + good[8:], junk[:8] + good[8:]):
        try:
            decode_client_unit(data, SPEC, Limits())
        except ProtocolError as e:
            assert e.code in ERRORS


# ---- one replica's hub, no Ray, no clock: ticks are called by hand ---------------------------------

def _solo(engines, seed: int, units) -> list:
    """What a solo sequential session gives for `units`: [(tokens, audio, frames) per step] + the flush."""
    from runtime.session import EngineSession

    with EngineSession(engines, seed=seed, mode="sequential", threads=1) as s:
        out = [s.step(a, f) for a, f in units]
        last = s.flush()
    return [(list(r.text_tokens), r.audio, r.frames) for r in out] + [(None, last.audio, last.frames)]


def _media(messages, spec) -> list:
    units = [decode_server_unit(m, spec) for m in messages if isinstance(m, bytes)]
    return [(u.text, u.audio, u.frames, u.input) for u in units]


def test_sessions_in_rows_equal_solo_sessions_and_bad_input_becomes_filler(tiny_ort_engines):
    from serve.hub import SessionHub
    from serve.rows import open_rows
    from unitio.media import SyntheticUnits

    rows, kind, slots = open_rows(tiny_ort_engines, 2, threads=1)
    spec, limits = rows.spec, Limits()
    assert (kind, slots) == ("unbatched", 2)
    hub = SessionHub(rows, slots, spec, limits, grace_s=0.0)
    got = {"a": [], "b": []}
    a, b = hub.reserve(Hello(seed=0), got["a"].append), hub.reserve(Hello(seed=5), got["b"].append)
    with pytest.raises(ProtocolError) as full:
        hub.reserve(Hello(), got["a"].append)
    assert full.value.code == "server_full" and full.value.fatal

    def wire(units):  # what the server sees of them: PCM16 audio
        return [(decode_client_unit(encode_client_unit(k, au, fr), spec, limits)) for k, (au, fr) in enumerate(units)]

    ua, ub = wire(SyntheticUnits(spec, 6, 1)), wire(SyntheticUnits(spec, 5, 2))
    for u in ua:
        if u.unit == 2:  # malformed: the unit becomes filler, counted rejected
            with pytest.raises(ProtocolError) as e:
                decode_client_unit(encode_client_unit(2, u.audio[:10], u.frames), spec, limits)
            assert (e.value.code, e.value.unit, e.value.fatal) == ("bad_audio", 2, False)
            hub.reject(a, 2, 0.0)
        elif u.unit != 4:  # unit 4 never comes: missing
            hub.put(a, u, 0.0)
    for unit, code in ((ua[0], "duplicate_unit"), (SimpleNamespace(unit=limits.max_units_ahead, ack=None), "unit_ahead")):
        with pytest.raises(ProtocolError) as e:
            hub.put(a, unit, 0.0)
        assert (e.value.code, e.value.fatal) == (code, False)
    hub.end(a, 5)
    hub.tick(100.0)  # a starts alone; b joins a unit later, mid-stream
    for u in ub:
        hub.put(b, u, 0.0)
    hub.end(b, 4)
    for n in range(1, 8):
        hub.tick(100.0 + n * 0.16)
    with pytest.raises(ProtocolError) as e:  # after its turn went by
        hub.put(a, ua[0], 0.0)
    assert (e.value.code, e.value.fatal) == ("late_unit", False)
    assert not hub.sessions and rows.live_rows() == []  # both rows and slots are free again

    want_b = _solo(tiny_ort_engines, 5, [(u.audio, u.frames) for u in ub])
    got_b = _media(got["b"], spec)
    assert len(got_b) == len(want_b) == 6 and [x[3] for x in got_b[:5]] == ["client"] * 5
    for (t, au, fr, _), (wt, wau, wfr) in zip(got_b, want_b):  # bitwise: the same engines, input and seed
        assert t == wt and (au is None) == (wau is None)
        assert au is None or (np.array_equal(au, wau) and np.array_equal(fr, wfr))
    filler = np.repeat(ua[1].frames[-1:], 4, 0), np.repeat(ua[3].frames[-1:], 4, 0)
    fed_a = [(u.audio, u.frames) for u in ua[:2]] + [(np.zeros(3840, np.float32), filler[0]), (ua[3].audio, ua[3].frames),
                                                     (np.zeros(3840, np.float32), filler[1]), (ua[5].audio, ua[5].frames)]
    got_a, want_a = _media(got["a"], spec), _solo(tiny_ort_engines, 0, fed_a)
    assert [x[3] for x in got_a[:6]] == ["client", "client", "rejected", "client", "missing", "client"]
    assert all(t == wt and (au is None or np.array_equal(au, wau)) for (t, au, _, _), (wt, wau, _) in zip(got_a, want_a))
    bye = json.loads([m for m in got["a"] if isinstance(m, str)][-1])
    assert (bye["type"], bye["units"], bye["client"], bye["rejected"], bye["missing"]) == ("bye", 6, 4, 1, 1)
    assert got["a"][-1] == ("close", 1000)


# ---- the Ray Serve application, end to end (a local Ray instance, one replica of 2 slots) -----------

AUDIO_TOL = 1e-5  # unbatched rows are bitwise `streamer run --sequential` (measured 0); batched rows: the runtime's


@pytest.fixture(scope="module")
def served(tiny_ort_engines):
    pytest.importorskip("ray.serve", reason="ray[serve] is a dependency of `streamer serve` (pip install -e .)")
    from serve.launch import deploy, free_port, start_ray, stop

    local = start_ray(num_cpus=2, object_store_mb=100)
    try:
        url = deploy({"engines": str(tiny_ort_engines), "threads": 1, "limits": {"idle_timeout_s": 30.0}},
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
