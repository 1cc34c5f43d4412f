"""Per-stage wall-clock timing of one unit, and summaries over a session."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


class StageTimer:
    """`with timer("stage"): ...` records milliseconds per stage; `.ms` gives them plus "total" (so far)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._start = time.perf_counter()

    @property
    def ms(self) -> dict[str, float]:
        return {**self.stages, "total": 1000.0 * (time.perf_counter() - self._start)}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + 1000.0 * (time.perf_counter() - t0)


def percentiles(x) -> dict[str, float]:
    """p50/p90/p99/max/mean of the values `x` (NaN for all of them when there are none)."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"), float("nan"))
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def median_ms(fn, repeats: int) -> float:
    """Median milliseconds of `repeats` calls of `fn()`, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - t0))
    return float(np.median(times))


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-unit timing rows -> {stage: {"p50", "p90", "p99", "max", "mean"}} in milliseconds (a stage's
    numbers over the units that have it)."""
    out = {}
    stages = list(dict.fromkeys(name for row in rows for name in row))  # first-seen order; "total" last
    stages.sort(key=lambda name: name == "total")
    for stage in stages:
        out[stage] = percentiles([r[stage] for r in rows if stage in r])
    return out
