"""Sessions per GPU: the largest batch B (sessions per engine call) that holds real time and fits memory,
and how many GPUs serve N concurrent sessions (planning/budget.make_plan with `batch`)."""
from __future__ import annotations

import math

from model_src.config import Preset

from .budget import Plan, make_plan
from .count import count_stages

B_LIMIT = 4096  # the search stops here


def max_batch(p: Preset, gpu_key: str, precision: str = "bf16", placement: str = "one-gpu", *,
              graphs: bool = True, measured: dict | None = None) -> tuple[int, Plan | None]:
    """(B_max, its plan): the largest B whose plan is real time (sustained <= 160 ms per unit) and fits
    the GPU's memory; (0, None) when even one session does not. Doubling, then bisection (the time
    and memory grow with B)."""
    costs = count_stages(p, precision)

    def plan(b: int) -> Plan:
        return make_plan(p, gpu_key, precision, placement, graphs=graphs, batch=b, measured=measured, costs=costs)

    first = plan(1)
    if not first.realtime:
        return 0, None
    good, bad = 1, 2
    while bad <= B_LIMIT and plan(bad).realtime:
        good, bad = bad, 2 * bad
    bad = min(bad, B_LIMIT + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if plan(mid).realtime else (good, mid)
    return good, plan(good)


def gpus_for(sessions: int, b_max: int, placement: str = "one-gpu") -> int:
    """GPUs of one kind that serve `sessions` concurrent sessions at B_max sessions per GPU (two per
    group in the two-gpu placement); a ValueError when no session runs in real time."""
    if sessions < 1:
        raise ValueError(f"--sessions {sessions}: expected at least 1")
    if b_max < 1:
        raise ValueError("not even one session runs in real time on this GPU: no number of them serves "
                         f"{sessions} sessions")
    return math.ceil(sessions / b_max) * (2 if placement == "two-gpu" else 1)
