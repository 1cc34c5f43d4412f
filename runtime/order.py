"""What both sessions share: a unit's decoded output, the order in which outputs leave, and the
interfaces a session's performer offers (the host path's and the device path's).

    UnitOutput      audio [samples_per_unit] float32, frames [F, H, W, 3] uint8 of one unit
    StreamOrder     at the next step, early by `decode_ready`, or at `flush`; a context manager
    Performer       the host path's performer (runtime/host/performer.py)
    DevicePerformer the device path's (runtime/device/performer.py, runtime/device/process.py)
    PerformerError  the performer died, hung or failed: the session cannot go on
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class PerformerError(RuntimeError):
    """The performer process died, hung or failed; the session cannot go on."""


@dataclass
class UnitOutput:
    """Decoded output of one unit: audio [samples_per_unit] float32, frames [F, H, W, 3] uint8."""

    unit_index: int
    audio: np.ndarray
    frames: np.ndarray


class Performer(Protocol):
    """The host path's performer: `submit` unit k's KV delta (numpy [L, 1, Hkv, T, D]), `result(k)` -> y_k
    (audio [1, C, Ta], video [1, C, Tv, h, w] latents)."""

    def submit(self, unit_index: int, k_delta: np.ndarray, v_delta: np.ndarray) -> None: ...

    def ready(self, unit_index: int) -> bool: ...

    def result(self, unit_index: int) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class DevicePerformer(Protocol):
    """The device path's performer. `capturable`: whether its phase (the flow_step engine's N calls) may be
    captured as a CUDA graph, which the session checks with the thinker's before any capture; `capture`
    replaces the solve by its graph, `reset` gives its own state a fresh stream again after the capture's
    warm-up. `submit(k, k_delta, v_delta, delta_ready)` enqueues the solve of unit k once `delta_ready`
    (an event) is reached; `result(k)` -> (y_audio, y_video, event) on the thinker's device, valid once
    the event is reached; `ready(k)`: whether y_k is there, without waiting."""

    placement: str
    capturable: bool

    def capture(self) -> None: ...

    def reset(self) -> None: ...

    def submit(self, unit_index: Any, k_delta: Any, v_delta: Any, delta_ready: Any) -> None: ...

    def ready(self, unit_index: int) -> bool: ...

    def result(self, unit_index: int) -> tuple[Any, Any, Any]: ...

    def close(self) -> None: ...


class StreamOrder:
    """What both sessions share (runtime/host/session.py, runtime/device/session.py): the order in which
    a unit's output leaves (at the next step, early by `decode_ready`, or at `flush`), and closing as a
    context manager. Subclasses keep `unit_index`, `received`, `decoded`, `performer` and `_decode_through`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def decode_ready(self) -> UnitOutput | None:
        """If the last submitted unit's y has arrived and is not decoded yet, decode it now (live mode:
        output goes out before the next input is in); otherwise None, without waiting."""
        k = self.unit_index - 1
        if k < self.decoded or not (self.received >= k or self.performer.ready(k)):
            return None
        return self._decode_through(k)

    def flush(self) -> UnitOutput | None:
        """Wait for and decode the last unit's latents (None if `decode_ready` already gave them)."""
        if self.unit_index == 0:
            raise RuntimeError("flush() before any unit was streamed: there is nothing to decode")
        return self._decode_through(self.unit_index - 1)
