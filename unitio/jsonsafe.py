"""JSON from untrusted bytes, bounded: size checked before decoding, nesting depth checked by a linear
scan before `json.loads` ever recurses, and the decoder's own RecursionError / MemoryError turned into
the ValueError every caller already refuses with. stdlib only.
"""
from __future__ import annotations

import json

DEFAULT_MAX_DEPTH = 64


def nesting_depth(text: str, stop_above: int | None = None) -> int:
    """The deepest bracket nesting of `text` counting only `[`/`{` outside JSON strings (escapes
    honoured); a linear scan with no recursion. Stops early once the depth passes `stop_above`."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def loads_bounded(data: str | bytes, max_bytes: int | None, max_depth: int = DEFAULT_MAX_DEPTH,
                  parse_constant=None) -> object:
    """Parse JSON `data` (str or UTF-8 bytes) of at most `max_bytes` bytes (None: the caller bounded the
    size) and at most `max_depth` nested arrays/objects; gives the decoded object. `parse_constant` is
    json.loads's (e.g. to refuse NaN/Infinity). Raises ValueError with a clear message on a size or depth
    beyond the bounds, bad UTF-8, bad JSON, or the decoder running out of stack or memory."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"expected JSON of at most {max_bytes} bytes, got {size}")
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"expected UTF-8 JSON, got undecodable bytes at offset {e.start}") from None
    else:
        text = data
    depth = nesting_depth(text, stop_above=max_depth)
    if depth > max_depth:
        raise ValueError(f"expected JSON nested at most {max_depth} deep, got more than {max_depth}")
    try:
        return json.loads(text, parse_constant=parse_constant)
    except RecursionError:
        raise ValueError(f"expected JSON nested at most {max_depth} deep, the decoder ran out of stack "
                         "(RecursionError)") from None
    except MemoryError:
        raise ValueError(f"JSON of {size} bytes exhausted memory while decoding (MemoryError)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"expected valid JSON, got {e.msg} at line {e.lineno} column {e.colno}") from None
