"""A plan as plain numbers (JSON-ready): what `streamer plan --json` writes and bench/gpu_check.py puts beside
its measurements. Standard library only (the GPU image has no rich)."""
from __future__ import annotations


def plan_json(plan, batch: dict | None = None) -> dict:
    """The plan (planning.budget.Plan) as a dict of plain numbers and strings; `batch` (the --batch /
    --sessions answer: b_max, sessions, gpus) is added under "batch" when given."""
    from .budget import LATENCY_DEFINITION

    out = {"preset": plan.preset, "gpu": plan.gpu["name"], "gpu_key": plan.gpu_key, "precision": plan.precision,
           "placement": plan.placement, "graphs": plan.graphs, "sessions_per_call": plan.batch,
           "stages": {s.cost.name: {"calls_per_unit": s.cost.calls_per_unit, "flops": s.cost.flops,
                                    "bytes": s.cost.bytes, "kernels": s.cost.launches,
                                    "whole_stage_ms": s.whole_stage_ms, "roofline_ms": s.roofline_ms,
                                    "bound": s.bound, "launch_ms": s.launch_ms, "expected_ms": s.expected_ms,
                                    "ms_per_unit": s.per_unit_ms,
                                    "parts": [{"part": q.part, "kind": q.kind, "kernels": q.kernels, "flops": q.flops,
                                               "bytes": q.bytes, "roofline_ms": q.roofline_ms,
                                               "expected_ms": q.expected_ms, "bound": q.bound} for q in s.parts]}
                      for s in plan.stages},
           "bytes_per_unit": plan.traffic, "host_path_bytes_per_unit": plan.host_path_traffic,
           "memory": plan.memory, "worker_ms": plan.worker_ms, "resources_ms": plan.resources_ms,
           "unit_ms": plan.unit_ms, "latency_ms": plan.latency_ms, "latency_parts_ms": plan.latency_parts_ms,
           "latency_definition": LATENCY_DEFINITION, "launches_per_unit": plan.launches_per_unit,
           "realtime": plan.realtime, "fits": plan.fits, "bottleneck": plan.bottleneck().cost.name,
           "assumptions": [{"figure": f, "value": v, "source": s} for f, v, s in plan.assumptions()]}
    if batch is not None:
        out["batch"] = batch
    return out
