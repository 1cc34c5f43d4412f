"""Spans of work (worker, stage, unit, start, end) in a preallocated ring, so a session of any length
keeps flat memory; the source of per-unit timings, the bench timeline and the Chrome/Perfetto trace.
Times are `time.perf_counter()` seconds: CLOCK_MONOTONIC on Linux, the same clock in every process."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from unitio.growing import write_text_replacing

WORKERS = ("thinker", "performer")
STAGES = ("encode", "think", "transfer", "append", "solve", "decode", "wait")


class SpanLog:
    """The last `capacity` spans. `with log("think", k): ...` on the thinker; `add` for spans timed elsewhere."""

    def __init__(self, capacity: int = 200_000, nvtx: bool = False) -> None:
        self.rows = np.zeros(capacity, [("worker", "u1"), ("stage", "u1"), ("unit", "i8"), ("t0", "f8"), ("t1", "f8")])
        self.rows.fill(0)  # written once now (np.zeros' pages are only mapped): resident memory is flat from the
        # first unit, not growing by 5 MB until the ring first wraps (~12,000 units; bench/soak.py showed it)
        self.count = 0
        self._nvtx = None
        if nvtx:
            import torch

            self._nvtx = torch.cuda.nvtx

    def add(self, worker: str, stage: str, unit: int, t0: float, t1: float) -> None:
        self.rows[self.count % len(self.rows)] = (WORKERS.index(worker), STAGES.index(stage), unit, t0, t1)
        self.count += 1

    @contextmanager
    def __call__(self, stage: str, unit: int, worker: str = "thinker") -> Iterator[None]:
        if self._nvtx is not None:
            self._nvtx.range_push(f"{worker}.{stage}[{unit}]")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(worker, stage, unit, t0, time.perf_counter())
            if self._nvtx is not None:
                self._nvtx.range_pop()

    def spans(self) -> list[tuple[str, str, int, float, float]]:
        """Kept spans, oldest first, as (worker, stage, unit, t0, t1)."""
        n = len(self.rows)
        idx = range(self.count - min(self.count, n), self.count)
        return [(WORKERS[r["worker"]], STAGES[r["stage"]], int(r["unit"]), float(r["t0"]), float(r["t1"]))
                for r in (self.rows[i % n] for i in idx)]

    def stage_ms(self, first: int, worker: str | None = None) -> dict[str, float]:
        """Milliseconds per stage of the spans added since span number `first` (of `worker`, or all)."""
        out: dict[str, float] = {}
        for i in range(max(first, self.count - len(self.rows)), self.count):
            r = self.rows[i % len(self.rows)]
            if worker is None or WORKERS[r["worker"]] == worker:
                name = STAGES[r["stage"]]
                out[name] = out.get(name, 0.0) + 1000.0 * (r["t1"] - r["t0"])
        return out

def write_chrome_trace(spans: list[tuple[str, str, int, float, float]], path: str | Path) -> None:
    """Spans -> a Chrome trace-event JSON (open in ui.perfetto.dev or chrome://tracing): one track per worker."""
    t_start = min((s[3] for s in spans), default=0.0)
    events = [{"name": "thread_name", "ph": "M", "pid": 1, "tid": i, "args": {"name": w}}
              for i, w in enumerate(WORKERS)]
    for worker, stage, unit, t0, t1 in spans:
        events.append({"name": stage, "cat": worker, "ph": "X", "pid": 1, "tid": WORKERS.index(worker),
                       "ts": 1e6 * (t0 - t_start), "dur": 1e6 * (t1 - t0), "args": {"unit": unit}})
    write_text_replacing(path, json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))  # a planted link replaced
