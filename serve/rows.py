"""What a replica steps: B rows of sessions behind one interface (the batched runtime's contract).

    rows.join(seed) -> row      a free row, its state fresh (RowsFull when none)
    rows.leave(row)             frees it
    rows.step({row: (audio, frames, text)}) -> {row: UnitResult}   one unit for every live row
    rows.flush(row) -> (audio, frames)                             the row's last unit's output

`open_rows` picks the batched runtime (`runtime.device.batch.BatchedSession`) for engines built with
`streamer build --batch B` (B > 1), and `SoloRows` for batch-1 engines: B independent sequential
sessions on one loaded engine set, stepped one after the other (the unbatched side of
bench/serve_load.py). numpy + runtime only.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from runtime.engine import load_initial_state
from runtime.host.engines import load_engines
from runtime.manifest import read_manifest
from runtime.host.session import EngineSession
from runtime.spec import unit_spec
from unitio.units import (
    InputError,
    UnitResult,
    check_audio_unit,
    check_frames_unit,
    check_text_unit,
)


class RowsFull(ValueError):
    """Every row holds a session."""


def full_errors() -> tuple[type, ...]:
    """The RowsFull classes to catch: ours, and the batched runtime's where it is in use (never imported
    here: it imports torch, which the unbatched rows do not need)."""
    batch = sys.modules.get("runtime.device.batch")
    return (RowsFull, batch.RowsFull) if batch is not None else (RowsFull,)


def check_row_inputs(spec, inputs: dict) -> dict:
    """{row: (audio, frames, text)} -> the same, checked (InputError naming the row at the first bad one)."""
    out = {}
    for row, (audio, frames, text) in inputs.items():
        try:
            out[row] = (check_audio_unit(audio, spec), check_frames_unit(frames, spec),
                        check_text_unit(text, spec.text_in_tokens, spec.vocab_size, spec.text_pad_id))
        except InputError as e:
            raise InputError(f"row {row}: {e}") from None
    return out


class SoloRows:
    """The batched interface over `rows` independent sequential sessions sharing one loaded engine set:
    `step` runs them one after the other. A row's outputs are bitwise those of `streamer run
    --sequential` with the same engines, input and seed."""

    def __init__(self, directory: str | Path, rows: int, seed: int = 0, threads: int | None = None,
                 trust: str | Path | None = None) -> None:
        if not 1 <= rows <= 1024:
            raise ValueError(f"rows: expected 1 to 1024 sessions, got {rows}")
        self.manifest, self.engines = load_engines(directory, None, threads, trust=trust)
        self.initial = load_initial_state(directory, self.manifest)
        self.spec, self.rows = unit_spec(self.manifest), rows
        self._sessions: dict[int, EngineSession] = {}

    def join(self, seed: int = 0) -> int:
        free = [r for r in range(self.rows) if r not in self._sessions]
        if not free:
            raise RowsFull(f"all {self.rows} rows hold a session")
        self._sessions[free[0]] = EngineSession.in_process(self.manifest, self.engines, self.initial, seed)
        return free[0]

    def leave(self, row: int) -> None:
        session = self._sessions.pop(row, None)
        if session is not None:
            session.close()

    def live_rows(self) -> list[int]:
        return sorted(self._sessions)

    def step(self, inputs: dict[int, tuple]) -> dict[int, UnitResult]:
        """One unit for every live row (all checked first: a bad one raises InputError naming its row,
        and no row has stepped)."""
        if set(inputs) != set(self._sessions):
            raise ValueError(f"step: expected inputs for the live rows {self.live_rows()}, got {sorted(inputs)}")
        checked = check_row_inputs(self.spec, inputs)
        started = time.perf_counter()
        out = {row: self._sessions[row].step(*checked[row]) for row in sorted(checked)}
        total = 1000.0 * (time.perf_counter() - started)
        for r in out.values():
            r.timings_ms["batch"] = total
        return out

    def flush(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        o = self._sessions[row].flush()
        return o.audio, o.frames

    def close(self) -> None:
        for row in list(self._sessions):
            self.leave(row)


def engine_batch(directory: str | Path, trust: str | Path | None = None) -> tuple[int, dict]:
    """(B, manifest): the rows the engines of `directory` were built for (the cache's batch axis)."""
    manifest = read_manifest(directory, trust=trust)
    return int(unit_spec(manifest).cache_shape[1]), manifest


def open_rows(directory: str | Path, slots: int | None, threads: int | None = None,
              trust: str | Path | None = None, kind: str = "auto"):
    """(rows, "batched" | "unbatched", slots): the batched runtime for engines of batch B > 1 (slots <= B),
    else `slots` solo sessions (default 4). kind: "auto", "batched" or "unbatched" (refused where it cannot be)."""
    if kind not in ("auto", "batched", "unbatched"):
        raise ValueError(f"rows kind: expected auto, batched or unbatched, got {kind!r}")
    batch, manifest = engine_batch(directory, trust)
    device = "cuda" if manifest["target"]["device"] == "cuda" else "cpu"
    if batch > 1 and kind != "unbatched":
        from runtime.device.batch import (
            BatchedSession,  # torch (the device path): imported before any engine loads
        )

        if slots is not None and slots > batch:
            raise ValueError(f"--max-sessions {slots}: the engines of {directory} were built for {batch} sessions "
                             f"(`streamer build --batch {batch}`); expected at most {batch}")
        rows = BatchedSession(directory, device=device, threads=threads, trust=trust)
        return rows, "batched", slots or rows.rows
    if kind == "batched":
        raise ValueError(f"{directory}: engines of batch 1 cannot run batched; build them with "
                         f"`streamer build --batch B`")
    if batch > 1:
        raise ValueError(f"{directory}: engines built for {batch} sessions run batched; the unbatched rows "
                         f"want engines of batch 1 (`streamer build` without --batch)")
    if device == "cuda":
        raise ValueError(f"{directory}: engines for a CUDA GPU of batch 1; serving them wants batched engines "
                         f"(`streamer build --batch B`)")
    rows = SoloRows(directory, slots or 4, threads=threads, trust=trust)
    return rows, "unbatched", rows.rows
