"""Serving live sessions, without Ray: the protocol's framing and typed errors, one
replica's hub ticked by hand (sessions in their rows equal solo sessions; a bad unit is filler and the
session goes on; ends without filler; the hub's own errors counted) and a connection on a fake socket
(pings hold no slot, an end is never rate limited, a client that does not read is ended)."""
from __future__ import annotations

import asyncio
import json
import struct
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


def test_health_before_any_unit_is_valid_json():
    """A fresh replica has no latencies yet: /health says null, not NaN (which JSON cannot carry)."""
    import time

    from serve.metrics import ReplicaMetrics, health, prometheus_text

    snap = ReplicaMetrics("r1", 4, "batched").snapshot()
    h = json.loads(json.dumps(health({"r1": snap}, time.time()), allow_nan=False))
    assert (h["replicas"], h["slots_free"], h["unit_latency_ms"]) == (1, 4, {"p50": None, "p99": None})
    assert 'avs_slots_free{replica="r1",rows="batched"} 4' in prometheus_text({"r1": snap})


# ---- one replica's hub, no Ray, no clock: ticks are called by hand ---------------------------------

def _solo(engines, seed: int, units) -> list:
    """What a solo sequential session gives for `units`: [(tokens, audio, frames) per step] + the flush."""
    from runtime.host.session import EngineSession

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


# ---- review fixes: a hub ticked by hand, a connection on a fake socket (no Ray) ----------------------

def _hub(engines=None, rows: int = 2, **limits):
    """A hub of 2 slots over `rows` solo rows of `engines` (None: no rows, for connections), no clock."""
    from serve.hub import SessionHub
    from serve.rows import open_rows

    r = open_rows(engines, rows, threads=1)[0] if engines else SimpleNamespace(spec=SPEC)
    return SessionHub(r, 2, r.spec, Limits(**limits), grace_s=0.0)


def _kind(m, spec=SPEC):
    """A server message -> (unit, input) or "final" of a server unit, a text's code or type, a close's code."""
    if isinstance(m, tuple):
        return m[1]
    if isinstance(m, str):
        return json.loads(m).get("code") or json.loads(m)["type"]
    u = decode_server_unit(m, spec)
    return "final" if u.final else (u.unit, u.input)


def _frames(spec, value: int = 90, size: int | None = None):
    return np.full((4, size or spec.frame_height, size or spec.frame_width, 3), value, np.uint8)


def _open(hub, *units) -> tuple:
    """A session on `hub` with `units` queued (silence, gray) -> (session, the _kind of each message to it)."""
    from serve.protocol import ClientUnit

    out = []
    s = hub.reserve(Hello(), lambda m: out.append(_kind(m, hub.spec)))
    for k in units:
        hub.put(s, ClientUnit(k, np.zeros(hub.spec.samples_per_unit, np.float32), _frames(hub.spec)), 0.0)
    return s, out


def test_the_hub_ends_sessions_without_filler_and_counts_its_own_errors(tiny_ort_engines, monkeypatch):
    from serve.pacer import Pacer

    hub = _hub(tiny_ort_engines)
    (a, out), (b, out_b) = _open(hub, 0, 1), _open(hub)
    hub.tick(1.0), hub.tick(1.16)
    hub.end(a, 1), hub.end(b, 3)  # a: after its unit 1 was stepped (no filler unit 2); b: sent no unit
    assert out_b == ["bye", 1000] and hub.tick(1.32) == 0 and not hub.sessions
    assert out == [(0, "client"), (1, "client"), "final", "bye", 1000]
    hub = _hub(tiny_ort_engines, rows=1, max_session_units=1)
    (a, out_a), (b, out_b) = _open(hub, 0), _open(hub, 0)
    hub.tick(1.0)  # a takes the only row and reaches the length limit at once; b finds no row
    _, out_c = _open(hub)
    hub.close()
    assert out_a == [(0, "client"), "session_too_long", "final", "bye", 1000] and out_c == ["shutting_down", 1001]
    assert out_b == ["server_full", 1013] and hub.metrics.counters["refused_full"] == 1
    assert dict(hub.metrics.errors) == {"session_too_long": 1, "server_full": 1, "shutting_down": 1}
    hub = _hub(tiny_ort_engines)
    a, out = _open(hub, 0)
    monkeypatch.setattr("serve.hub.encode_server_unit", lambda *a: 1 / 0)  # the tick fails after the step
    pacer = Pacer(hub).start()
    pacer.thread.join(5.0)
    assert pacer.error and hub.failed and not hub.sessions and out == ["server_error", 1011]
    assert dict(hub.metrics.errors) == {"server_error": 1}


def test_hello_wants_an_int_protocol_text_standard_json_and_frames_keep_their_code():
    from serve.protocol import parse_text, pong_message

    for text, code in [(json.dumps({"type": "hello", "protocol": p}), "unsupported_version") for p in (1.0, True)] + \
                      [(f'{{"type": "ping", "t": {c}}}', "bad_message") for c in ("NaN", "Infinity", "-Infinity")]:
        with pytest.raises(ProtocolError) as e:
            parse_text(text) if code == "bad_message" else parse_hello(text)
        assert e.value.code == code, text
    pongs = [json.loads(pong_message(t, 3), parse_constant=float.fromhex) for t in (1.5, 7, True, float("inf"), "x")]
    assert [p["t"] for p in pongs] == [1.5, 7, None, None, None]
    good = encode_server_unit(ServerUnit(0, [1, 2], None, None, None))
    with pytest.raises(ProtocolError) as e:
        decode_server_unit(good[:2] + b"\x02" + good[3:], SPEC)
    assert e.value.code == "unsupported_version"


def _converse(script, stuck: bool = False, **limits):
    """A Connection on a fake socket playing hello, then `script` (texts; a float: a pause), then waiting
    for close; `stuck`: sends after the first (ready), and close, never return -> (hub, sent, close code)."""
    import itertools
    from unittest.mock import AsyncMock

    from serve.connection import Connection

    async def go():
        hub, sent, code, shut, it = _hub(**limits), [], [], asyncio.Event(), itertools.chain([hello_message(0)], script)

        async def receive():
            for m in it:
                if not isinstance(m, float):
                    return {"type": "websocket.receive", "text": m}
                await asyncio.sleep(m)
            await shut.wait()
            return {"type": "websocket.disconnect"}

        async def send_text(text):
            await (asyncio.Event().wait() if stuck and sent else asyncio.sleep(0))
            sent.append(_kind(text))

        async def close(c, reason=None):
            code.append(c), shut.set()
            await (asyncio.Event().wait() if stuck else asyncio.sleep(0))
        ws = AsyncMock(receive=receive, send_text=send_text, close=close)
        await asyncio.wait_for(Connection(ws, hub).run("r", "unbatched"), 5.0)
        return hub, sent, code
    return asyncio.run(go())


def test_pings_hold_no_slot_an_end_is_never_rate_limited_and_a_client_not_reading_is_ended():
    import itertools

    ping = json.dumps({"type": "ping", "t": 1})
    hub, sent, code = _converse(itertools.cycle([0.05, ping]), idle_timeout_s=0.4)  # pings only: idle all the same
    assert (sent[0], sent[-1], code, hub.sessions) == ("ready", "idle_timeout", [1008], {})
    _, sent, code = _converse([ping] * 3 + [json.dumps({"type": "end", "last_unit": -1})], burst_messages=2,
                              messages_per_unit=0.01)
    assert (sent, code) == (["ready", "pong", "pong", "rate_limited", "bye"], [1000])
    hub, sent, code = _converse([ping] * 20, stuck=True, max_unacked_units=4, burst_messages=99)  # > 4 + 8 unsent
    assert (sent, code, hub.sessions, hub.metrics.errors["slow_client"]) == (["ready"], [1008], {}, 1)


# ---- bounded JSON and Ray's token ------------------------------------------------------------------

def test_deep_json_is_a_typed_error_in_every_parser(monkeypatch):
    import serve.protocol as protocol

    deep = "[" * 2000 + "]" * 2000  # within 4 KB, past json's recursion limit
    for parse, code in ((protocol.parse_text, "bad_message"), (parse_hello, "bad_hello")):
        with pytest.raises(ProtocolError) as e:
            parse(deep)
        assert e.value.code == code and "nested" in str(e.value)
    body = ('{"unit":3,"x":' + "[" * 1900 + "]" * 1900 + "}").encode()
    body += b" " * (-(8 + len(body)) % 4)
    assert _code(struct.pack("<2sBcI", b"AV", 1, b"U", len(body)) + body) == ("bad_message", None)
    assert protocol.parse_text('{"type": "ping", "t": [[[1]]]}')["type"] == "ping"  # shallow nesting is fine
    # without the depth scan the decoder's own RecursionError / MemoryError are still the typed refusal
    monkeypatch.setattr("unitio.jsonsafe.nesting_depth", lambda text, stop_above=None: 0)
    with pytest.raises(ProtocolError) as e:
        protocol.parse_text("[" * 100_000)
    assert e.value.code == "too_large"
    with pytest.raises(ProtocolError) as e:
        protocol.parse_text(deep)
    assert e.value.code == "bad_message" and "RecursionError" in str(e.value)


def test_the_ray_token_file_is_made_private_and_reachable_clusters_need_it(tmp_path, monkeypatch):
    import os

    from serve.raynet import require_token

    path = tmp_path / "ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(ValueError, match="expected a token"):  # joining: the cluster's token must be there
        require_token(reachable=True, create=False)
    assert "created" in require_token(reachable=True) and os.stat(path).st_mode & 0o777 == 0o600
    assert len(path.read_text()) == 64 and os.stat(path.parent).st_mode & 0o077 == 0
    os.chmod(path, 0o644)  # the bug: a token readable by every user of the machine
    assert "tightened" in require_token(reachable=False) and os.stat(path).st_mode & 0o777 == 0o600
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")  # never followed
    with pytest.raises(ValueError, match="symlink"):
        require_token(reachable=False)
    assert not (tmp_path / "elsewhere").exists()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ValueError, match="RAY_AUTH_MODE=token"):
        require_token(reachable=True)
    assert "disabled" in require_token(reachable=False)  # a local instance may opt out: loopback only


def test_an_ack_of_output_not_yet_made_is_refused_and_changes_nothing():
    """A client may not ack past the last unit output (a forged ack would keep slow_client from ever
    firing while it never reads): bad_message, its unit not queued, the ack it had kept."""
    from serve.protocol import Hello

    hub = _hub()
    s = hub.reserve(Hello(seed=0), lambda m: None)
    with pytest.raises(ProtocolError) as e:
        hub.put(s, SimpleNamespace(unit=0, ack=10**6), 0.0)
    assert (e.value.code, e.value.fatal) == ("bad_message", False) and "past the last unit output" in str(e.value)
    assert s.acked is None and not s.inbox
