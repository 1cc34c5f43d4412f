"""`streamer plan`: will a preset run in real time on a GPU, at a precision, in a placement?

Per stage: the counted FLOPs and bytes (planning/count.py) against the GPU's peaks (planning/gpus.toml)
-> a roofline time (the larger of compute and memory time: a floor) and an expected time (the roofline
over stated efficiencies: EFFICIENCY below). Per unit: the GPU time of each worker, the model-side
latency, the bytes over the bus (the transfer ledger's formula, planning/traffic.py), the memory of
each process against the GPU's, and the verdict with the first bottleneck. Estimates, not
measurements: `streamer bench` and bench/gpu_check.py measure.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from model_src.config import Preset

from .count import ELEMENT, StageCost, count_stages
from .traffic import host_path_traffic, unit_traffic

GPU_FILE = Path(__file__).with_name("gpus.toml")
# achieved / peak, for the expected time: dense GEMMs of these sizes reach ~60 % of peak tensor FLOP/s,
# streaming kernels ~80 % of peak HBM bandwidth (FlashAttention-3 and vLLM report numbers in this range on
# H100); the roofline column assumes 100 % of both
EFFICIENCY = {"compute": 0.6, "memory": 0.8, "bus": 0.8}
REALTIME_GOAL_MS, LATENCY_GOAL_MS = 160.0, 100.0


def gpus() -> dict[str, dict]:
    """The GPU table, by key (h100, h200, a100, l40s, ...)."""
    return tomllib.loads(GPU_FILE.read_text())


@dataclass
class StagePlan:
    cost: StageCost
    compute_ms: float  # per call, at peak
    memory_ms: float  # per call, at peak
    worker: str

    @property
    def roofline_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"

    @property
    def expected_ms(self) -> float:
        return max(self.compute_ms / EFFICIENCY["compute"], self.memory_ms / EFFICIENCY["memory"])

    @property
    def per_unit_ms(self) -> float:
        return self.cost.calls_per_unit * self.expected_ms


@dataclass
class Plan:
    preset: str
    gpu: dict
    precision: str
    placement: str
    stages: list[StagePlan]
    traffic: dict[str, int]
    host_path_traffic: dict[str, int]
    memory: dict[str, dict[str, float]]  # process -> {weights, caches, states, workspace, total} bytes
    worker_ms: dict[str, float] = field(default_factory=dict)
    bus_ms: float = 0.0
    unit_ms: float = 0.0
    latency_ms: float = 0.0

    @property
    def realtime(self) -> bool:
        return self.unit_ms <= REALTIME_GOAL_MS and self.fits

    @property
    def fits(self) -> bool:
        return all(m["total"] <= self.gpu["memory_gib"] * 2**30 for m in self.memory_per_gpu().values())

    def memory_per_gpu(self) -> dict[str, dict[str, float]]:
        if self.placement == "two-gpu":
            return self.memory
        total = {k: sum(m[k] for m in self.memory.values()) for k in next(iter(self.memory.values()))}
        return {"gpu": total}

    def bottleneck(self) -> StagePlan:
        return max(self.stages, key=lambda s: s.per_unit_ms)


def make_plan(p: Preset, gpu_key: str, precision: str = "bf16", placement: str = "one-gpu") -> Plan:
    table = gpus()
    if gpu_key not in table:
        raise ValueError(f"unknown GPU {gpu_key!r}; planning/gpus.toml has {sorted(table)}")
    gpu = table[gpu_key]
    if precision == "fp8" and not gpu["tflops_fp8"]:
        raise ValueError(f"{gpu['name']} has no FP8 tensor cores: plan it at bf16 or fp16")
    costs = count_stages(p, precision)
    stages = []
    for c in costs:
        peak = gpu["tflops_fp8" if c.compute == "fp8" else "tflops_tf32" if c.compute == "tf32" else "tflops_bf16"]
        if c.compute == "fp32":
            peak = gpu["tflops_fp32"]
        stages.append(StagePlan(c, 1e3 * c.flops / (peak * 1e12), 1e3 * c.bytes / (gpu["hbm_gbps"] * 1e9),
                                "performer" if c.name == "flow_step" else "thinker"))
    plan = Plan(p.name, gpu, precision, placement, stages, unit_traffic(p, placement, precision),
                host_path_traffic(p, precision), _memory(p, costs, precision, placement))
    _timeline(plan)
    return plan


def _timeline(plan: Plan) -> None:
    """GPU time per worker per unit, the bus time, the sustained time per unit and the latency."""
    by = {s.cost.name: s for s in plan.stages}
    work = {w: sum(s.per_unit_ms for s in plan.stages if s.worker == w) for w in ("thinker", "performer")}
    gpu = plan.gpu
    t = plan.traffic
    host_bw = EFFICIENCY["bus"] * gpu["pcie_gbps"] * 1e9
    peer_bw = EFFICIENCY["bus"] * (gpu["nvlink_gbps"] or gpu["pcie_gbps"]) * 1e9
    plan.bus_ms = 1e3 * ((t["h2d"] + t["d2h"]) / host_bw + t.get("peer", 0) / peer_bw)
    critical = (by["audio_enc"].per_unit_ms + by["video_enc"].per_unit_ms + by["thinker_step"].per_unit_ms
                + by["flow_step"].per_unit_ms + by["audio_dec"].per_unit_ms + by["video_dec"].per_unit_ms)
    if plan.placement == "two-gpu":  # each GPU does its worker's share; the slower one sets the pace
        plan.worker_ms = work
        plan.unit_ms = max(work.values()) + plan.bus_ms
    else:  # one GPU does everything (two processes time-slice it, at best overlap with MPS)
        plan.worker_ms = {"gpu": work["thinker"] + work["performer"]}
        plan.unit_ms = plan.worker_ms["gpu"] + plan.bus_ms
    plan.latency_ms = critical + plan.bus_ms


def _memory(p: Preset, costs: list[StageCost], precision: str, placement: str) -> dict[str, dict[str, float]]:
    """Bytes each process holds on its GPU: weights, KV cache, codec states (two ping-pong sets), workspace
    (twice the largest activation: a floor, the allocator and libraries add to it)."""
    from model_src.model import parameter_count
    from model_src.system import build_system

    system = build_system(p, device="meta")
    transformer = parameter_count(system.model) * ELEMENT[precision]
    codecs = (parameter_count(system.audio_vae) + parameter_count(system.video_vae)) * 4
    cache = 2 * p.n_layers * p.n_kv_heads * p.cache_capacity * p.head_dim * ELEMENT[precision]
    states = 2 * sum(c.state_bytes for c in costs)
    workspace = 2 * max(c.largest_activation for c in costs)

    def process(weights, caches, state) -> dict[str, float]:
        return {"weights": weights, "caches": caches, "states": state, "workspace": workspace,
                "total": weights + caches + state + workspace}

    if placement == "one-gpu":
        return {"thinker+performer": process(transformer + codecs, cache, states)}
    return {"thinker": process(transformer + codecs, cache, states), "performer": process(transformer, cache, 0.0)}
