"""Protocol 1 of a live session over WebSocket (docs/PROTOCOL.md): the messages, and their checks
against the served preset. numpy (+ Pillow for JPEG frames); the framing is `serve.wire`.

Every refusal is a `ProtocolError` with a typed `code` (ERRORS), a message naming what was expected
and what came, the unit it concerns (when known) and whether it ends the session.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import numpy as np

from unitio.jsonsafe import loads_bounded
from unitio.units import InputError, check_text_unit

from .wire import (
    CLIENT_UNIT,
    MAX_DEPTH,
    MAX_HEADER_BYTES,
    PREFIX,
    SERVER_UNIT,
    FrameError,
    pack,
    split,
    unpack,
)

PROTOCOL = 1
PATH = "/v1/session"
VIDEO_FORMATS = ("raw", "jpeg")
AUDIO_FORMATS = ("f32", "pcm16")
INPUT_KINDS = ("client", "missing", "rejected")
MAX_UNIT = 2**31 - 1

# code -> (ends the session, what it means); the WebSocket close code of a fatal one is in CLOSE_CODES
ERRORS = {
    "bad_hello": (True, "the first message was not a valid hello"),
    "unsupported_version": (True, "the hello or a frame names another protocol version"),
    "server_full": (True, "every slot of every replica is taken; try again later"),
    "bad_message": (False, "not a frame or control message of this protocol; dropped"),
    "too_large": (False, "a message over the size limit; dropped"),
    "bad_audio": (False, "the unit's audio is not one unit of PCM16 samples; the unit becomes filler"),
    "bad_video": (False, "the unit's frames are not the preset's count and size; the unit becomes filler"),
    "bad_text": (False, "the unit's text ids are not the preset's count or vocabulary; the unit becomes filler"),
    "late_unit": (False, "the unit's turn already went by (it was filled); dropped"),
    "duplicate_unit": (False, "this unit index was already received; dropped"),
    "unit_ahead": (False, "the unit is further ahead of the session than the limit; dropped"),
    "rate_limited": (False, "more messages than the rate limit allows; dropped"),
    "slow_client": (True, "the client acknowledged or read no output for too many units"),
    "idle_timeout": (True, "no unit and no end for too long (pings do not count)"),
    "session_too_long": (True, "the session reached its length limit (its last output and bye follow)"),
    "server_error": (True, "the replica failed; the session cannot go on"),
    "shutting_down": (True, "the server is stopping"),
}
CLOSE_CODES = {"server_full": 1013, "server_error": 1011, "shutting_down": 1001}  # other fatal ones: 1008


class ProtocolError(ValueError):
    """A typed refusal: `code` (a key of ERRORS), the message, the unit it concerns (or None)."""

    def __init__(self, code: str, message: str, unit: int | None = None) -> None:
        super().__init__(message)
        self.code, self.unit, self.fatal = code, unit, ERRORS[code][0]


@dataclass
class Limits:
    """What one session may do; sent to the client in `ready`."""

    max_units_ahead: int = 25  # units buffered ahead of the session's next step (4 s)
    burst_messages: int = 25  # the rate limit: a token bucket of this many messages...
    messages_per_unit: float = 2.0  # ...refilled at this many per unit of wall time
    max_session_units: int = 22_500  # 1 hour of 160 ms units
    idle_timeout_s: float = 10.0  # no unit and no end for this long ends the session (pings do not count)
    hello_timeout_s: float = 2.0  # the gate's deadline for the first message (serve/gate.py)
    max_unacked_units: int = 25  # outputs the client may leave unacknowledged (4 s; + 8 unsent) before slow_client

    def max_message_bytes(self, spec) -> int:
        """The largest binary message a client may send: prefix, header, PCM16 audio and raw frames."""
        return PREFIX.size + MAX_HEADER_BYTES + 2 * spec.samples_per_unit + jpeg_bytes(spec) * spec.frames_per_unit

    def as_dict(self, spec) -> dict:
        return {**self.__dict__, "max_message_bytes": self.max_message_bytes(spec), "max_text_bytes": MAX_HEADER_BYTES}


def frame_bytes(spec) -> int:
    """A raw frame's bytes: H x W x 3."""
    return spec.frame_height * spec.frame_width * 3


def jpeg_bytes(spec) -> int:
    """The most a JPEG frame may take: the raw size plus 4 KiB (headers and tables of a small frame)."""
    return frame_bytes(spec) + 4096


def spec_info(spec) -> dict:
    """The numbers a client needs (sent in `ready`): sizes of a unit in and out, and the preset's name."""
    keys = ("name", "sample_rate", "samples_per_unit", "fps", "frames_per_unit", "frame_height", "frame_width",
            "unit_ms", "text_in_tokens", "text_out_tokens", "vocab_size", "text_pad_id")
    return {k: getattr(spec, k) for k in keys}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ---- control messages (JSON text frames) ---------------------------------------------------------

@dataclass
class Hello:
    seed: int = 0
    audio_out: str = "f32"
    video_out: str = "raw"


def parse_text(text: str) -> dict:
    """A text frame -> its JSON object with a string "type" (bad_message otherwise)."""
    if len(text.encode()) > MAX_HEADER_BYTES:
        raise ProtocolError("too_large", f"text message: expected at most {MAX_HEADER_BYTES} bytes, got {len(text.encode())}")
    try:
        msg = strict_json(text)
    except ValueError as e:
        raise ProtocolError("bad_message", f"text message: expected a JSON object, got an error: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", f"text message: expected a JSON object with a string \"type\", got {text[:80]!r}")
    return msg


def strict_json(text: str) -> object:
    """Standard JSON (no NaN/Infinity) nested at most MAX_DEPTH deep -> the object; ValueError otherwise
    (unitio.jsonsafe: the depth scanned before parsing, so a deep nest never reaches the recursive decoder;
    callers bound the size)."""
    return loads_bounded(text, None, MAX_DEPTH, parse_constant=_no_constant)


def _no_constant(name: str):
    raise ValueError(f"expected standard JSON, got the non-standard constant {name}")


def parse_hello(text: str) -> Hello:
    """The first message: {"type": "hello", "protocol": 1, "seed": int, "audio_out": "f32"|"pcm16",
    "video_out": "raw"|"jpeg"} (all but type and protocol optional)."""
    try:
        msg = parse_text(text)
    except ProtocolError as e:
        raise ProtocolError("bad_hello", str(e)) from None
    if msg["type"] != "hello":
        raise ProtocolError("bad_hello", f"first message: expected type \"hello\", got {msg['type']!r}")
    if not _is_int(msg.get("protocol")) or msg["protocol"] != PROTOCOL:
        raise ProtocolError("unsupported_version", f"hello: expected protocol {PROTOCOL}, got {msg.get('protocol')!r}")
    hello = Hello()
    seed = msg.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise ProtocolError("bad_hello", f"hello: seed: expected an integer in [0, 2^63), got {seed!r}")
    hello.seed = seed
    for key, allowed in (("audio_out", AUDIO_FORMATS), ("video_out", VIDEO_FORMATS)):
        value = msg.get(key, getattr(hello, key))
        if value not in allowed:
            raise ProtocolError("bad_hello", f"hello: {key}: expected one of {list(allowed)}, got {value!r}")
        setattr(hello, key, value)
    return hello


def hello_message(seed: int = 0, audio_out: str = "f32", video_out: str = "raw") -> str:
    return json.dumps({"type": "hello", "protocol": PROTOCOL, "seed": seed, "audio_out": audio_out,
                       "video_out": video_out})


def ready_message(session: str, replica: str, spec, limits: Limits, rows: str) -> str:
    return json.dumps({"type": "ready", "protocol": PROTOCOL, "session": session, "replica": replica,
                       "rows": rows, "spec": spec_info(spec), "limits": limits.as_dict(spec)})


def error_message(e: ProtocolError) -> str:
    return json.dumps({"type": "error", "code": e.code, "fatal": e.fatal, "unit": e.unit, "message": str(e)})


def pong_message(t, next_unit: int) -> str:
    """A ping's `t` and the session's next unit -> the pong; `t` is echoed only when it is a finite int
    or float (not a bool), else null."""
    ok = _is_int(t) or (isinstance(t, float) and math.isfinite(t))
    return json.dumps({"type": "pong", "t": t if ok else None, "next_unit": next_unit})


def end_unit(msg: dict) -> int:
    """{"type": "end", "last_unit": k}: the client sent its last unit, k (-1: none)."""
    last = msg.get("last_unit")
    if not _is_int(last) or not -1 <= last <= MAX_UNIT:
        raise ProtocolError("bad_message", f"end: last_unit: expected an integer >= -1, got {last!r}")
    return last


# ---- audio and frames ----------------------------------------------------------------------------

def to_pcm16(audio: np.ndarray) -> bytes:
    """float32 samples in [-1, 1] -> little-endian int16 bytes; sample = int16 / 32768, so 16-bit WAV
    samples (read as int16 / 32768) go through exactly."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype("<i2").tobytes()


def from_pcm16(data) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float32) / np.float32(32768.0)


def encode_frames(frames: np.ndarray, fmt: str, quality: int = 90) -> list[bytes]:
    """uint8 [F, H, W, 3] -> one bytes per frame: raw RGB rows, or JPEG."""
    if fmt == "raw":
        return [np.ascontiguousarray(f).tobytes() for f in frames]
    from PIL import Image

    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(f), "RGB").save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def decode_frame(data, fmt: str, spec, unit: int | None, i: int) -> np.ndarray:
    """One frame's bytes -> uint8 [H, W, 3]; a JPEG's size is read from its header before it is decoded."""
    h, w = spec.frame_height, spec.frame_width
    if fmt == "raw":
        if len(data) != h * w * 3:
            raise ProtocolError("bad_video", f"unit {unit} frame {i}: expected {h * w * 3} bytes of raw RGB "
                                             f"({h}x{w}x3), got {len(data)}", unit)
        return np.frombuffer(data, np.uint8).reshape(h, w, 3)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(data)), formats=["JPEG"]) as im:
            if im.size != (w, h):
                raise ProtocolError("bad_video", f"unit {unit} frame {i}: expected a {h}x{w} (height x width) "
                                                 f"JPEG, got {im.size[1]}x{im.size[0]}", unit)
            return np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, ProtocolError):
            raise
        raise ProtocolError("bad_video", f"unit {unit} frame {i}: expected a JPEG image, got an error: {e}", unit) from None


# ---- client units --------------------------------------------------------------------------------

@dataclass
class ClientUnit:
    unit: int
    audio: np.ndarray  # [samples_per_unit] float32
    frames: np.ndarray  # [F, H, W, 3] uint8
    text: np.ndarray | None = None  # [text_in_tokens] int64
    t: float | None = None  # the client's clock (ms), echoed back
    ack: int | None = None  # the last server unit the client has received


def encode_client_unit(unit: int, audio: np.ndarray, frames: np.ndarray, video: str = "raw", text=None,
                       t: float | None = None, ack: int | None = None) -> bytes:
    """One unit of user input -> a binary message (audio as PCM16, frames raw or JPEG)."""
    pcm = to_pcm16(audio)
    parts = encode_frames(frames, video)
    header = {"unit": unit, "audio": len(pcm), "video": video, "frames": [len(p) for p in parts]}
    if text is not None:
        header["text"] = [int(x) for x in text]
    if t is not None:
        header["t"] = t
    if ack is not None:
        header["ack"] = ack
    return pack(CLIENT_UNIT, header, [pcm, *parts])


def decode_client_unit(data: bytes, spec, limits: Limits) -> ClientUnit:
    """A client's binary message -> ClientUnit, every field checked against the preset. Errors after the
    unit index is known name it (the unit then becomes filler, "rejected")."""
    try:
        header, rest = unpack(data, CLIENT_UNIT, limits.max_message_bytes(spec))
    except FrameError as e:
        raise ProtocolError(e.code, str(e)) from None
    k = header.get("unit")
    if not _is_int(k) or not 0 <= k <= MAX_UNIT:
        raise ProtocolError("bad_message", f"unit header: unit: expected an integer in [0, {MAX_UNIT}], got {k!r}")
    n_audio, fmt, sizes = header.get("audio"), header.get("video"), header.get("frames")
    if n_audio != 2 * spec.samples_per_unit:
        raise ProtocolError("bad_audio", f"unit {k}: audio: expected {2 * spec.samples_per_unit} bytes "
                                         f"({spec.samples_per_unit} PCM16 samples at {spec.sample_rate} Hz), got {n_audio!r}", k)
    if fmt not in VIDEO_FORMATS:
        raise ProtocolError("bad_video", f"unit {k}: video: expected one of {list(VIDEO_FORMATS)}, got {fmt!r}", k)
    top = frame_bytes(spec) if fmt == "raw" else jpeg_bytes(spec)
    if (not isinstance(sizes, list) or len(sizes) != spec.frames_per_unit
            or not all(_is_int(n) and (n == top if fmt == "raw" else 1 <= n <= top) for n in sizes)):
        want = f"{top} each (raw {spec.frame_height}x{spec.frame_width}x3)" if fmt == "raw" else f"1 to {top} each"
        raise ProtocolError("bad_video", f"unit {k}: frames: expected {spec.frames_per_unit} byte lengths, "
                                         f"{want}, got {str(sizes)[:80]}", k)
    t, ack = header.get("t"), header.get("ack")
    if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)):
        raise ProtocolError("bad_message", f"unit {k}: t: expected a finite number of ms, got {t!r}", k)
    if ack is not None and (not _is_int(ack) or not -1 <= ack <= MAX_UNIT):
        raise ProtocolError("bad_message", f"unit {k}: ack: expected an integer >= -1, got {ack!r}", k)
    text = header.get("text")
    if text is not None:
        if not isinstance(text, list) or not all(_is_int(x) for x in text):
            raise ProtocolError("bad_text", f"unit {k}: text: expected a list of {spec.text_in_tokens} integer ids, "
                                            f"got {str(text)[:80]}", k)
        try:
            text = check_text_unit(np.array(text, np.int64), spec.text_in_tokens, spec.vocab_size, spec.text_pad_id)
        except (InputError, OverflowError) as e:
            raise ProtocolError("bad_text", f"unit {k}: {e}", k) from None
    try:
        audio_bytes, *frame_parts = split(rest, [n_audio, *sizes])
    except FrameError as e:
        raise ProtocolError("bad_message", f"unit {k}: {e}", k) from None
    frames = np.stack([decode_frame(p, fmt, spec, k, i) for i, p in enumerate(frame_parts)])
    return ClientUnit(k, from_pcm16(audio_bytes), frames, text, t, ack)


# ---- server units --------------------------------------------------------------------------------

@dataclass
class ServerUnit:
    unit: int | None  # the unit whose text this is (None in the final message)
    text: list[int] | None
    media: int | None  # the unit whose audio and frames this carries (None: none yet)
    audio: np.ndarray | None  # [samples_per_unit] float32
    frames: np.ndarray | None  # [F, H, W, 3] uint8
    input: str | None = None  # what unit `unit` was made from: client, missing (filler) or rejected (filler)
    t: float | None = None  # the client's "t" of unit `unit`, echoed
    timing: dict = field(default_factory=dict)
    final: bool = False


def encode_server_unit(u: ServerUnit, audio_out: str = "f32", video_out: str = "raw") -> bytes:
    audio = b""
    if u.audio is not None:
        audio = to_pcm16(u.audio) if audio_out == "pcm16" else np.asarray(u.audio, "<f4").tobytes()
    parts = encode_frames(u.frames, video_out) if u.frames is not None else []
    header = {"unit": u.unit, "text": u.text, "media": u.media, "audio": len(audio), "audio_format": audio_out,
              "video": video_out, "frames": [len(p) for p in parts], "input": u.input, "t": u.t,
              "timing": u.timing, "final": u.final}
    return pack(SERVER_UNIT, header, [audio, *parts])


def decode_server_unit(data: bytes, spec, max_bytes: int = 64 << 20) -> ServerUnit:
    """A server's binary message -> ServerUnit (what a client reads; checked, never trusted)."""
    try:
        h, rest = unpack(data, SERVER_UNIT, max_bytes)
        sizes = h.get("frames") or []
        if not _is_int(h.get("audio")) or not isinstance(sizes, list) or not all(_is_int(n) for n in sizes):
            raise FrameError(f"server unit: expected integer section sizes, got audio={h.get('audio')!r} frames={sizes!r}")
        audio_bytes, *frame_parts = split(rest, [h["audio"], *sizes])
    except FrameError as e:
        raise ProtocolError(e.code, str(e)) from None
    audio = frames = None
    if h["audio"]:
        audio = from_pcm16(audio_bytes) if h.get("audio_format") == "pcm16" else np.frombuffer(audio_bytes, "<f4").copy()
        if audio.shape != (spec.samples_per_unit,):
            raise ProtocolError("bad_message", f"server unit: expected {spec.samples_per_unit} samples, got {audio.shape}")
    if frame_parts:
        frames = np.stack([decode_frame(p, h.get("video", "raw"), spec, h.get("media"), i) for i, p in enumerate(frame_parts)])
    return ServerUnit(h.get("unit"), h.get("text"), h.get("media"), audio, frames, h.get("input"), h.get("t"),
                      h.get("timing") or {}, bool(h.get("final")))
