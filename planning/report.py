"""A plan as plain numbers (JSON-ready): what `streamer plan --json` writes and bench/gpu_check.py puts beside
its measurements. Standard library only (the GPU image has no rich)."""
from __future__ import annotations


def plan_json(plan) -> dict:
    """The plan (planning.budget.Plan) as a dict of plain numbers and strings."""
    return {"preset": plan.preset, "gpu": plan.gpu["name"], "precision": plan.precision, "placement": plan.placement,
            "stages": {s.cost.name: {"calls_per_unit": s.cost.calls_per_unit, "flops": s.cost.flops,
                                     "bytes": s.cost.bytes, "roofline_ms": s.roofline_ms, "bound": s.bound,
                                     "expected_ms": s.expected_ms, "ms_per_unit": s.per_unit_ms}
                       for s in plan.stages},
            "bytes_per_unit": plan.traffic, "host_path_bytes_per_unit": plan.host_path_traffic,
            "memory": plan.memory, "worker_ms": plan.worker_ms, "unit_ms": plan.unit_ms,
            "latency_ms": plan.latency_ms, "realtime": plan.realtime, "fits": plan.fits,
            "bottleneck": plan.bottleneck().cost.name}
