"""The binary framing of protocol 1 (docs/PROTOCOL.md, "Binary messages"), byte by byte:

    offset  size  field
    0       2     magic b"AV"
    2       1     protocol version (1)
    3       1     kind: b"U" a client unit, b"R" a server unit
    4       4     H, the header's length in bytes: uint32, little-endian, 2 <= H <= MAX_HEADER_BYTES
    8       H     the header: one JSON object, UTF-8 (padded with spaces so 8 + H is a multiple of 4)
    8 + H   ...   the sections, back to back, in the order and with the byte lengths the header gives

Nothing is unpickled or evaluated: the header is JSON, the sections are raw bytes the protocol layer
reads as numbers. A message whose lengths do not add up exactly is refused (`FrameError`).
"""
from __future__ import annotations

import json
import struct

from unitio.jsonsafe import loads_bounded

MAGIC = b"AV"
VERSION = 1
CLIENT_UNIT, SERVER_UNIT = b"U", b"R"
PREFIX = struct.Struct("<2sBcI")  # magic, version, kind, header length: 8 bytes
MAX_HEADER_BYTES = 4096
MAX_DEPTH = 8  # JSON nesting a header or control message may have (the protocol's deepest is 2)


class FrameError(ValueError):
    """A binary message that is not a frame of this protocol: `.code` is "bad_message" (or
    "unsupported_version"), the message says what was expected and what came."""

    def __init__(self, message: str, code: str = "bad_message") -> None:
        super().__init__(message)
        self.code = code


def pack(kind: bytes, header: dict, sections: list[bytes]) -> bytes:
    """A frame: `header` (JSON-able dict) and the raw `sections` -> bytes (header padded to 4-byte alignment)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(PREFIX.size + len(text)) % 4)
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"frame header: expected at most {MAX_HEADER_BYTES} bytes, got {len(text)}")
    return b"".join([PREFIX.pack(MAGIC, VERSION, kind, len(text)), text, *sections])


def unpack(data: bytes, kind: bytes, max_bytes: int) -> tuple[dict, memoryview]:
    """bytes of one message -> (header dict, the rest as a memoryview), checking the prefix, the header's
    length and that it is a JSON object. Sizes are checked before anything is parsed."""
    if len(data) > max_bytes:
        raise FrameError(f"message of {len(data)} bytes: expected at most {max_bytes}", "too_large")
    if len(data) < PREFIX.size:
        raise FrameError(f"message of {len(data)} bytes: expected at least the {PREFIX.size}-byte prefix")
    magic, version, got_kind, size = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"magic: expected {MAGIC!r}, got {bytes(magic)!r}")
    if version != VERSION:
        raise FrameError(f"protocol version: expected {VERSION}, got {version}", "unsupported_version")
    if got_kind != kind:
        raise FrameError(f"kind: expected {kind!r}, got {got_kind!r}")
    if not 2 <= size <= MAX_HEADER_BYTES or PREFIX.size + size > len(data):
        raise FrameError(f"header length: expected 2 to {min(MAX_HEADER_BYTES, len(data) - PREFIX.size)} "
                         f"bytes, got {size}")
    try:
        header = loads_bounded(bytes(data[PREFIX.size:PREFIX.size + size]), MAX_HEADER_BYTES, MAX_DEPTH)
    except ValueError as e:
        raise FrameError(f"header: expected a UTF-8 JSON object, got an error: {e}") from None
    if not isinstance(header, dict):
        raise FrameError(f"header: expected a JSON object, got {type(header).__name__}")
    return header, memoryview(data)[PREFIX.size + size:]


def split(rest: memoryview, sizes: list[int]) -> list[memoryview]:
    """The sections of `rest` with the given byte lengths; their sum must be exactly len(rest)."""
    if sum(sizes) != len(rest):
        raise FrameError(f"sections: the header gives {sum(sizes)} bytes ({sizes}), the message holds {len(rest)}")
    out, at = [], 0
    for n in sizes:
        out.append(rest[at:at + n])
        at += n
    return out
