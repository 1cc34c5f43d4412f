"""Many sessions on one set of batched engines (`streamer build --batch B`): one engine call per stage
advances every live session by one unit.

Each of the B rows is an independent session at its own unit: its own slots of the KV cache and its
valid length, its own codec states, unit index and seed noise; rows never read each other (the model
has no cross-row operation). A session joins at a unit boundary into a free row, whose state is reset
(`join`); it leaves by freeing the row (`leave`), after `flush` gave it its last unit's media. Empty
rows ride along with zero input and their outputs are dropped (Moshi's `exec_mask`, without a mask
input: their state is reset when a session next joins). So joining and leaving change nothing in the
other rows' outputs, and a row's outputs are a solo session's with the same seed (to the float
tolerance of another batch size's kernels; bitwise where the backend is row-independent).

Runs on the device path (runtime/device/, assembled by runtime/device/stack.py as a solo session is),
with the state resident where the engines run: "cpu" with ONNX Runtime engines (CI, the CPU server),
"cuda" with TensorRT or AOTInductor ones, one-gpu placement, CUDA graphs on a GPU.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from unitio.names import STAGES, filler_frame
from unitio.units import InputError, UnitResult, check_audio_unit, check_frames_unit, check_text_unit

from ..engine import check_finite
from .device import Device
from .performer import SharedCachePerformer
from .stack import DeviceStack, load_parts


class RowsFull(ValueError):
    """Every row of the batch holds a live session."""


class BatchedSession(DeviceStack):
    def __init__(self, directory: str | Path | None, device: str = "cpu", seed: int = 0, threads: int | None = None,
                 trust: str | Path | None = None, graphs: bool | None = None,
                 engines: tuple[dict, dict, dict] | None = None) -> None:
        """engines: (manifest, {stage: DeviceEngine}, initial_state) given directly instead of a directory
        (torch stage modules in process: calibration.torch_engines.torch_device_parts(..., batch=B))."""
        self.seed = seed
        dev = Device(device)
        loaded, initial = self._assemble(dev, engines if engines is not None else
                                         load_parts(directory, dev, STAGES, threads, trust=trust, graphs=graphs))
        self.rows = self.cache.rows
        self._start(SharedCachePerformer(loaded["flow_step"], self.spec, self.device, self.cache, self.ledger, seed),
                    graphs)
        self.live: dict[int, int] = {}  # row -> the row's next unit index
        self.seeds = [seed] * self.rows
        self._last_frames = filler_frame(self.spec, self.rows, self.spec.frames_per_unit)
        self._submitted = False  # a solve is in flight (its y not yet handed to the thinker)

    # --- rows ------------------------------------------------------------------------------------------
    def live_rows(self) -> list[int]:
        return sorted(self.live)

    def join(self, seed: int = 0) -> int:
        """A free row for a new session (its seed noise from `seed`), its state reset; RowsFull if none."""
        free = [r for r in range(self.rows) if r not in self.live]
        if not free:
            raise RowsFull(f"all {self.rows} rows of this batch hold a live session")
        row = free[0]
        with self.device.use(self.stream):
            self.cache.reset_row(row)
            self.thinker.reset_row(row)
        self.live[row], self.seeds[row] = 0, seed
        return row

    def leave(self, row: int) -> None:
        """Free `row` (nothing else changes; its last unit's media is `flush(row)`'s, asked before)."""
        self._check_row(row)
        del self.live[row]

    # --- one unit of every live row ----------------------------------------------------------------------
    def step(self, inputs: dict[int, tuple]) -> dict[int, UnitResult]:
        """{row: (audio [S] float32, frames [F, H, W, 3] uint8, text_in [n] or None)} for every live row ->
        {row: the row's text for its unit k and its audio/frames of unit k - 1 (None at its unit 0)}.
        A bad input raises InputError naming the row; no row's state has changed then."""
        s = self.spec
        if set(inputs) != set(self.live):
            raise InputError(f"batch step: expected input for the live rows {self.live_rows()}, got {sorted(inputs)}")
        audio = np.zeros((self.rows, s.samples_per_unit), np.float32)
        frames = self._last_frames.copy()
        text = np.full((self.rows, s.text_in_tokens), s.text_pad_id, np.int64)
        for row, unit in inputs.items():
            a, f, t = (tuple(unit) + (None,))[:3]
            try:
                audio[row] = check_audio_unit(a, s)
                frames[row] = check_frames_unit(f, s)
                text[row] = check_text_unit(t, s.text_in_tokens, s.vocab_size, s.text_pad_id)
            except InputError as e:
                raise InputError(f"row {row}: {e}") from None
        started = time.perf_counter()
        units = [self.live.get(r, 0) for r in range(self.rows)]
        first = [r for r, k in self.live.items() if k == 0]  # rows at their first unit: no y_(k-1) yet
        d = self.device
        with d.use(self.stream):
            self.thinker.encode(audio, frames, text, units)
            self._receive()
            for row in first:  # a fresh session's y_(-1) is zero, whatever the row held
                self.thinker.prev_audio[row].zero_()
                self.thinker.prev_video[row].zero_()
            self.thinker.think()
            self.thinker.tokens_out()
            d.record(self.delta_ready, self.stream)
        self.thinker.commit()
        self.performer.submit(units, None, None, self.delta_ready, seeds=self.seeds)
        self._submitted = True
        with d.use(self.stream):
            self.thinker.decode()  # every row's y_(k-1); rows at their unit 0 decoded zeros: reset them
            for row in first:
                self.thinker.reset_row(row, decoders_only=True)
            d.record(self.out_ready, self.stream)
        d.sync(self.out_ready)
        self._last_frames[list(inputs)] = frames[list(inputs)]
        host = self.thinker.host_out
        tokens, wave, video = host["tokens"].numpy(), host["wave"].numpy(), host["frames"].numpy()
        ms = {"total": 1000.0 * (time.perf_counter() - started)}
        out = {}
        for row in inputs:
            k = self.live[row]
            media = k > 0
            if media:
                check_finite("audio_dec", k - 1, {"wave": wave[row]})
            out[row] = UnitResult(k, tokens[row].copy(), wave[row].copy() if media else None,
                                  video[row].copy() if media else None, dict(ms))
            self.live[row] = k + 1
        self.ledger.unit_done()
        return out

    def flush(self, row: int) -> tuple[np.ndarray, np.ndarray] | None:
        """`row`'s last unit decoded (audio [S], frames [F, H, W, 3]) without advancing any row's decoder
        state (the ping-pong's other set is written and not taken); None if the row never stepped."""
        self._check_row(row)
        if self.live[row] == 0:
            return None
        d = self.device
        with d.use(self.stream):
            self._receive()
            self.thinker.decode(advance=False)
            d.record(self.out_ready, self.stream)
        d.sync(self.out_ready)
        host = self.thinker.host_out
        return host["wave"].numpy()[row].copy(), host["frames"].numpy()[row].copy()

    def __enter__(self) -> "BatchedSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _receive(self) -> None:
        """The last solve's y (every row) into the thinker's buffers; idempotent until the next solve."""
        if not self._submitted:
            return
        self._take_y(self.performer.last_unit)

    def _check_row(self, row: int) -> None:
        if row not in self.live:
            raise ValueError(f"row {row} holds no live session (live: {self.live_rows()})")
