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


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-unit timing rows -> {stage: {"p50", "p90", "p99", "max", "mean"}} in milliseconds (a stage's
    numbers over the units that have it)."""
    out = {}
    stages = list(dict.fromkeys(name for row in rows for name in row))  # first-seen order; "total" last
    stages.sort(key=lambda name: name == "total")
    for stage in stages:
        x = np.array([r[stage] for r in rows if stage in r])
        out[stage] = {"p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
                      "p99": float(np.percentile(x, 99)), "max": float(x.max()), "mean": float(x.mean())}
    return out
