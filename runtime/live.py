"""Live mode: one unit per 160 ms of wall time, whatever the input does.

Unit k's input is complete at t0 + (k + 1) * unit; the loop waits for it at most `grace_s` past
that. Missing input becomes silence and the last frame seen (counted as `missing`); input that comes
after its unit was given up is dropped (counted as `late`); a unit the session starts more than one
unit behind its due time counts as `behind`. While it waits, the previous unit's output goes out as
soon as the performer has it (`decode_ready`), so the model-side latency is input-in to output-out.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from unitio.names import filler_frame
from unitio.units import InputError

from .order import UnitOutput


class LiveInput:
    """Units of user input as they arrive: a capture thread calls `put(k, audio, frames)`."""

    def __init__(self) -> None:
        self._units: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
        self._cond = threading.Condition()
        self._next = 0  # units below this were given up or taken
        self.late = 0

    def put(self, unit_index: int, audio: np.ndarray, frames: np.ndarray) -> None:
        with self._cond:
            if unit_index < self._next:
                self.late += 1  # its unit already went by with filler
                return
            self._units[unit_index] = (audio, frames, time.perf_counter())
            self._cond.notify_all()

    def wait(self, unit_index: int, timeout_s: float) -> bool:
        """Whether unit k is in, waiting at most `timeout_s`."""
        with self._cond:
            return self._cond.wait_for(lambda: unit_index in self._units, timeout=max(timeout_s, 0.0))

    def take(self, unit_index: int) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(audio, frames, arrival time) of unit k, or None if it is not in; forgets every unit <= k."""
        with self._cond:
            self._next = unit_index + 1
            got = self._units.pop(unit_index, None)
            for k in [k for k in self._units if k < self._next]:
                del self._units[k]
            return got


def replay(units: list[tuple[np.ndarray, np.ndarray]], source: LiveInput, unit_s: float, t0: float,
           drop: set[int] = frozenset()) -> threading.Thread:
    """Feed recorded units into `source` as a microphone/camera would: unit k at t0 + (k + 1) * unit_s
    (units in `drop` never come). Returns the started daemon thread."""
    def feed() -> None:
        for k, (audio, frames) in enumerate(units):
            time.sleep(max(0.0, t0 + (k + 1) * unit_s - time.perf_counter()))
            if k not in drop:
                source.put(k, audio, frames)

    thread = threading.Thread(target=feed, name="live-input", daemon=True)
    thread.start()
    return thread


@dataclass
class LiveStats:
    units: int = 0
    missing: int = 0  # units replaced by silence / the last frame
    late: int = 0  # inputs that came after their unit was given up
    rejected: int = 0  # inputs that failed the unit checks (replaced by filler)
    behind: int = 0  # units started more than one unit after their input was due
    latency_ms: list[float] = field(default_factory=list)  # per unit: input complete -> its output out
    tokens: list[np.ndarray] = field(default_factory=list)


def run_live(session, source: LiveInput, n_units: int, emit: Callable[[UnitOutput], None],
             t0: float, grace_s: float = 0.02) -> LiveStats:
    """Stream `n_units` units through `session` (either path's: runtime/open_session.py) paced to wall time
    from `t0` (perf_counter seconds); `emit` gets every unit's output in order. Never waits for input more than `grace_s` past its due time."""
    s, stats = session.spec, LiveStats()
    unit_s = s.unit_ms / 1000.0
    arrival: dict[int, float] = {}
    silence = np.zeros(s.samples_per_unit, np.float32)
    last_frames = filler_frame(s, s.frames_per_unit)

    def filler() -> tuple[np.ndarray, np.ndarray]:  # silence and the last frame seen, held
        return silence, np.repeat(last_frames[-1:], s.frames_per_unit, 0)

    def out(o: UnitOutput | None) -> None:
        if o is not None:
            stats.latency_ms.append(1000.0 * (time.perf_counter() - arrival.pop(o.unit_index)))
            emit(o)

    for k in range(n_units):
        due = t0 + (k + 1) * unit_s
        while not source.wait(k, 0.0) and time.perf_counter() < due + grace_s:
            out(session.decode_ready())  # the previous unit's output, as soon as it is solved
            source.wait(k, min(0.002, due + grace_s - time.perf_counter()))
        got = source.take(k)
        if got is None:
            stats.missing += 1
            (audio, frames), arrival[k] = filler(), due + grace_s
        else:
            audio, frames, arrival[k] = got
        if time.perf_counter() > due + unit_s:
            stats.behind += 1
        try:
            r = session.step(audio, frames)
            last_frames = frames
        except InputError:  # a malformed unit from the capture side: filler instead, never a stall
            stats.rejected += 1
            r = session.step(*filler())
        stats.tokens.append(r.text_tokens)
        if r.audio is not None:
            out(UnitOutput(k - 1, r.audio, r.frames))
        stats.units += 1
    out(session.flush())
    stats.late = source.late
    return stats
