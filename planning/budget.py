"""`streamer plan`: will a preset run in real time on a GPU, at a precision, in a placement?

Per stage: the kernels one call launches (planning/count.py, counted on meta tensors) against the GPU's
peaks (planning/gpus.toml). Kernels on one stream do not overlap, so a stage's time is the SUM over its
kernels of max(compute, memory) of that kernel (a GEMM, a fused attention, a fused elementwise chain),
each at its stated efficiency (planning/assumptions.py), plus the launch cost: outside CUDA graphs the
CPU issues one launch per `launch_us` and the GPU waits where a kernel is shorter than that; with
graphs, one replay per phase and a small per-kernel gap. The old figure, max(compute, memory) over the
whole stage, is kept as `whole_stage_ms` for comparison: the sum is never below it.

Per unit: the GPU time of each worker, the bus time, the host's launch time; the sustained time per
unit is the busiest of those resources; the model-side latency is LATENCY_DEFINITION. The memory of
each process against the GPU's, and the verdict with the first bottleneck. With `batch` B sessions per
call: weights read once per call, caches, codec states and activations per session, FLOPs times B.
Estimates, not measurements: `streamer bench` and bench/gpu_check.py measure.
"""
from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from model_src.config import Preset
from unitio.names import PLACEMENTS

from .assumptions import DATASHEET, GRAPHS_PER_UNIT, Figure, check_measured, figures_for
from .count import ELEMENT, StageCost, count_stages
from .ops import Kernel
from .traffic import host_path_traffic, unit_traffic

GPU_FILE = Path(__file__).with_name("gpus.toml")
REALTIME_GOAL_MS, LATENCY_GOAL_MS = 160.0, 100.0
LATENCY_DEFINITION = (
    "model-side latency of unit k = from the moment unit k's input is complete on the host (step(k) called) "
    "to the moment the decoded audio and frames of y_k are on the host: encode(u_k) + thinker_step(k) + KV "
    "delta hand-over + flow solve(k) + decode(y_k), the critical path of one unit")


def _toml() -> dict:
    return tomllib.loads(GPU_FILE.read_text())


def gpus() -> dict[str, dict]:
    """The GPU table, by key (h100, h200, a100, l40s, ...); the `measured` tables are not GPUs."""
    return {k: v for k, v in _toml().items() if k != "measured"}


def known_gpu(key: str) -> bool:
    """Whether planning/gpus.toml has a datasheet entry for `key`."""
    return key in gpus()


def measured_in_table() -> dict[str, dict]:
    """planning/gpus.toml's `[measured.<gpu>]` tables (checked), by GPU key."""
    table = _toml().get("measured", {})
    for gpu, figures in table.items():
        check_measured(gpu, figures, str(GPU_FILE))
    return table


@dataclass
class PartPlan:
    """Kernels of one part of a stage (e.g. thinker_step's prefix pass, its GEMMs), per call."""
    part: str
    kind: str
    kernels: int
    flops: float
    bytes: float
    roofline_ms: float  # sum over its kernels of max(compute, memory) at peak
    expected_ms: float  # the same at the stated efficiencies (no launch cost)
    bound: str


@dataclass
class StagePlan:
    cost: StageCost
    worker: str
    compute_ms: float  # whole stage, at peak
    memory_ms: float  # whole stage, at peak
    roofline_ms: float  # sum of per-kernel max(compute, memory) at peak
    kernel_ms: float  # the same at the stated efficiencies
    launch_ms: float  # per call: launch waits (no graphs) or graph replay + node gaps (graphs)
    parts: list[PartPlan] = field(default_factory=list)

    @property
    def whole_stage_ms(self) -> float:
        """The former figure: max(compute, memory) over the whole stage, at peak (a floor)."""
        return max(self.compute_ms, self.memory_ms)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"

    @property
    def expected_ms(self) -> float:
        """One call: the kernels at their efficiencies plus the launch cost."""
        return self.kernel_ms + self.launch_ms

    @property
    def per_unit_ms(self) -> float:
        return self.cost.calls_per_unit * self.expected_ms


@dataclass
class Plan:
    preset: str
    gpu_key: str
    gpu: dict
    precision: str
    placement: str
    graphs: bool
    batch: int
    figures: dict[str, Figure]
    stages: list[StagePlan]
    traffic: dict[str, int]
    host_path_traffic: dict[str, int]
    memory: dict[str, dict[str, float]]  # process -> {weights, caches, states, workspace, total} bytes
    worker_ms: dict[str, float] = field(default_factory=dict)
    resources_ms: dict[str, float] = field(default_factory=dict)  # per unit, each resource's busy time
    latency_parts_ms: dict[str, float] = field(default_factory=dict)
    bus_ms: float = 0.0
    unit_ms: float = 0.0  # sustained: the busiest resource per unit
    latency_ms: float = 0.0  # LATENCY_DEFINITION

    @property
    def realtime(self) -> bool:
        return self.unit_ms <= REALTIME_GOAL_MS and self.fits

    @property
    def fits(self) -> bool:
        return all(m["total"] <= self.gpu["memory_gib"] * 2**30 for m in self.memory_per_gpu().values())

    @property
    def launches_per_unit(self) -> int:
        return sum(s.cost.calls_per_unit * s.cost.launches for s in self.stages)

    def memory_per_gpu(self) -> dict[str, dict[str, float]]:
        if self.placement == "two-gpu":
            return self.memory
        total = {k: sum(m[k] for m in self.memory.values()) for k in next(iter(self.memory.values()))}
        return {"gpu": total}

    def bottleneck(self) -> StagePlan:
        return max(self.stages, key=lambda s: s.per_unit_ms)

    def assumptions(self) -> list[tuple[str, str, str]]:
        """(figure, value, source) for every assumption this plan used, datasheet peaks first."""
        g = self.gpu
        rows = [(f"{g['name']} peaks", f"bf16 {g['tflops_bf16']} / fp8 {g['tflops_fp8']} / tf32 {g['tflops_tf32']} / "
                 f"fp32 {g['tflops_fp32']} TFLOP/s, HBM {g['hbm_gbps']} GB/s, PCIe {g['pcie_gbps']} GB/s, "
                 f"NVLink {g['nvlink_gbps']} GB/s, {g['memory_gib']} GiB", f"{DATASHEET}: {g['source']}")]
        shown = ("gemm", "attention", "codec", "memory", "bus", "kernel_gap_us",
                 "graph_launch_us" if self.graphs else "launch_us")
        for key in shown:
            f = self.figures[key]
            value = f"{f.value:.0%} {f.unit}" if f.unit.startswith("of ") else f"{f.value:g} {f.unit}"
            rows.append((f.what, value, f.source))
        rows += [("precision " + self.precision, _precision_note(self.precision), "export/options.py, docs/QUANTIZATION.md"),
                 ("elementwise work", "memory traffic only; a chain between two GEMM/attention kernels is one fused "
                  "kernel", "what TensorRT and Inductor do with pointwise chains (planning/ops.py)"),
                 ("KV cache", "full capacity read by every attention call (steady state of a long session)",
                  "the ring's size (sink + window units)"),
                 ("model-side latency", LATENCY_DEFINITION, "shared with bench/gpu_check.py")]
        return rows


def _precision_note(precision: str) -> str:
    return {"fp8": "GEMM weights FP8 at FP8 peak (LM head bf16); KV cache FP8 (bytes at 1 byte); attention "
                   "computes in bf16 (FLOPs at bf16 peak); activations bf16",
            "fp32": "plain FP32 cores for every transformer FLOP", "bf16": "weights, cache, activations bf16",
            "fp16": "weights, cache, activations fp16"}[precision]


def _peak_tflops(k: Kernel, gpu: dict, precision: str) -> float:
    if k.codec:
        return gpu["tflops_tf32"]
    if precision == "fp32":
        return gpu["tflops_fp32"]
    if k.kind == "gemm" and precision == "fp8" and not k.lm_head:
        return gpu["tflops_fp8"]
    return gpu["tflops_bf16"]  # attention computes in bf16 even over an FP8 cache


def kernel_ms(k: Kernel, gpu: dict, precision: str, figures: dict[str, Figure] | None, batch: int = 1) -> tuple[float, float]:
    """(compute ms, memory ms) of one kernel for `batch` sessions; at peak when figures is None."""
    eff = "codec" if k.codec and k.flops else {"gemm": "gemm", "attention": "attention"}.get(k.kind)
    c_eff = figures[eff].value if figures and eff else 1.0
    m_eff = figures["memory"].value if figures else 1.0
    flops = batch * k.flops
    nbytes = k.weight_bytes + batch * (k.bytes - k.weight_bytes)
    compute = 1e3 * flops / (_peak_tflops(k, gpu, precision) * 1e12 * c_eff) if flops else 0.0
    return compute, 1e3 * nbytes / (gpu["hbm_gbps"] * 1e9 * m_eff)


def _launch_ms(times: list[float], kernels: list[Kernel], graphs: bool, graphs_per_call: float,
               figures: dict[str, Figure]) -> float:
    """Extra time of one call beyond its kernels' sum: a GPU-side gap per kernel either way; with graphs,
    this call's share of its phase's graph replay; without, the CPU issues a launch every launch_us and
    the GPU starts a kernel once it is launched and the one before has finished (the queue starts empty
    at each call: the device path waits on each phase)."""
    gap = figures["kernel_gap_us"].value / 1e3
    if graphs:
        return graphs_per_call * figures["graph_launch_us"].value / 1e3 + sum(k.launches for k in kernels) * gap
    launch, issued, done = figures["launch_us"].value / 1e3, 0.0, 0.0
    for t, k in zip(times, kernels):
        issued += k.launches * launch
        done = max(done, issued) + t + k.launches * gap
    return done - sum(times)


def plan_stage(c: StageCost, gpu: dict, precision: str, figures: dict[str, Figure], graphs: bool,
               batch: int = 1) -> StagePlan:
    """One stage's times per call (see the module's docstring)."""
    peak = [kernel_ms(k, gpu, precision, None, batch) for k in c.kernels]
    eff = [kernel_ms(k, gpu, precision, figures, batch) for k in c.kernels]
    times = [max(t) for t in eff]
    parts: dict[tuple[str, str], PartPlan] = {}
    for k, pk, t in zip(c.kernels, peak, times):
        part = parts.setdefault((k.part, k.kind), PartPlan(k.part, k.kind, 0, 0.0, 0.0, 0.0, 0.0, "memory"))
        part.kernels += k.launches
        part.flops += batch * k.flops
        part.bytes += k.weight_bytes + batch * (k.bytes - k.weight_bytes)
        part.roofline_ms += max(pk)
        part.expected_ms += t
    for part in parts.values():
        part.bound = "compute" if part.flops and part.flops / part.bytes > _ridge(part, gpu, precision) else "memory"
    worker = "performer" if c.name == "flow_step" else "thinker"
    launch = _launch_ms(times, c.kernels, graphs, GRAPHS_PER_UNIT.get(c.name, 0) / c.calls_per_unit, figures)
    return StagePlan(c, worker, sum(p[0] for p in peak), sum(p[1] for p in peak), sum(max(p) for p in peak),
                     sum(times), launch, list(parts.values()))


def _ridge(part: PartPlan, gpu: dict, precision: str) -> float:
    probe = Kernel(part.part, part.kind, 1.0, 1.0, codec=part.part == "codec")
    return _peak_tflops(probe, gpu, precision) * 1e12 / (gpu["hbm_gbps"] * 1e9)


def resolve_gpu(gpu_key: str) -> dict:
    """The datasheet entry of `gpu_key`, or a ValueError listing the known keys."""
    table = gpus()
    if gpu_key not in table:
        raise ValueError(f"unknown GPU {gpu_key!r}; planning/gpus.toml has {sorted(table)} "
                         "(add a datasheet entry there to plan another GPU)")
    return table[gpu_key]


def make_plan(p: Preset, gpu_key: str, precision: str = "bf16", placement: str = "one-gpu", *,
              graphs: bool = True, batch: int = 1, measured: dict[str, dict] | None = None,
              costs: list[StageCost] | None = None) -> Plan:
    """The plan of preset `p` on `gpu_key`. graphs: the device path's CUDA graphs (False: every kernel
    launched); batch: sessions per engine call; measured: {gpu key: figures} replacing the defaults (by
    default gpus.toml's [measured.*] tables); costs: count_stages(p, precision), to reuse a count."""
    gpu = resolve_gpu(gpu_key)
    if precision == "fp8" and not gpu["tflops_fp8"]:
        raise ValueError(f"{gpu['name']} has no FP8 tensor cores: plan it at bf16 or fp16")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}: expected one of {list(PLACEMENTS)}")
    if batch < 1:
        raise ValueError(f"batch {batch}: expected at least 1 session per call")
    measured = measured_in_table() if measured is None else measured
    figures = figures_for(measured.get(gpu_key))
    costs = costs if costs is not None else count_stages(p, precision)
    stages = [plan_stage(c, gpu, precision, figures, graphs, batch) for c in costs]
    traffic = {k: batch * v for k, v in unit_traffic(p, placement, precision).items()}
    plan = Plan(p.name, gpu_key, gpu, precision, placement, graphs, batch, figures, stages, traffic,
                dict(_host_path(p, precision)), _memory(p, costs, precision, placement, batch))
    _timeline(plan)
    return plan


def _timeline(plan: Plan) -> None:
    """Per unit: each worker's GPU time, the bus, the host's launches; the sustained time and the latency."""
    by = {s.cost.name: s for s in plan.stages}
    work = {w: sum(s.per_unit_ms for s in plan.stages if s.worker == w) for w in ("thinker", "performer")}
    gpu, t, f = plan.gpu, plan.traffic, plan.figures
    host_bw = f["bus"].value * gpu["pcie_gbps"] * 1e9
    peer_bw = f["bus"].value * (gpu["nvlink_gbps"] or gpu["pcie_gbps"]) * 1e9
    hbm = f["memory"].value * gpu["hbm_gbps"] * 1e9
    plan.bus_ms = 1e3 * ((t["h2d"] + t["d2h"]) / host_bw + t.get("peer", 0) / peer_bw)
    if plan.graphs:
        host = sum(GRAPHS_PER_UNIT.values()) * f["graph_launch_us"].value / 1e3
    else:
        host = plan.launches_per_unit * f["launch_us"].value / 1e3
    append = 1e3 * 2 * t["d2d"] / hbm  # the delta appended into the ring (read + write) and y_k handed over
    work["thinker"] += append
    if plan.placement == "two-gpu":  # each GPU does its worker's share; the slower one sets the pace
        plan.worker_ms = work
        plan.resources_ms = {"thinker GPU": work["thinker"], "performer GPU": work["performer"],
                             "PCIe": 1e3 * (t["h2d"] + t["d2h"]) / host_bw, "GPU-GPU link": 1e3 * t["peer"] / peer_bw}
    else:  # one GPU does everything (two processes time-slice it, at best overlap with MPS)
        plan.worker_ms = {"gpu": work["thinker"] + work["performer"]}
        plan.resources_ms = {"GPU": plan.worker_ms["gpu"], "PCIe": 1e3 * (t["h2d"] + t["d2h"]) / host_bw}
    plan.resources_ms["host launches"] = host
    plan.unit_ms = max(plan.resources_ms.values())
    handover = append + 1e3 * t.get("peer", 0) / peer_bw  # on the device; and over the GPU-GPU link
    plan.latency_parts_ms = {
        "input h2d": 1e3 * t["h2d"] / host_bw, "encode": by["audio_enc"].per_unit_ms + by["video_enc"].per_unit_ms,
        "thinker_step": by["thinker_step"].per_unit_ms, "KV delta hand-over": handover,
        "flow solve": by["flow_step"].per_unit_ms, "decode": by["audio_dec"].per_unit_ms + by["video_dec"].per_unit_ms,
        "output d2h": 1e3 * t["d2h"] / host_bw}
    plan.latency_ms = sum(plan.latency_parts_ms.values())


_host_path = functools.lru_cache(maxsize=8)(host_path_traffic)


@functools.lru_cache(maxsize=8)
def _parameters(p: Preset) -> tuple[int, int]:
    """(transformer parameters, codec parameters) of preset p."""
    from model_src.model import parameter_count

    from .count import meta_system

    system = meta_system(p)
    return parameter_count(system.model), parameter_count(system.audio_vae) + parameter_count(system.video_vae)


def _memory(p: Preset, costs: list[StageCost], precision: str, placement: str,
            batch: int = 1) -> dict[str, dict[str, float]]:
    """Bytes each process holds on its GPU: weights (once), and per session the KV cache, codec states (two
    ping-pong sets) and workspace (twice the largest activation: a floor, the allocator and libraries add)."""
    transformer_params, codec_params = _parameters(p)
    transformer, codecs = transformer_params * ELEMENT[precision], codec_params * 4
    cache = batch * 2 * p.n_layers * p.n_kv_heads * p.cache_capacity * p.head_dim * ELEMENT[precision]
    states = batch * 2 * sum(c.state_bytes for c in costs)
    workspace = batch * 2 * max(c.largest_activation for c in costs)

    def process(weights, caches, state) -> dict[str, float]:
        return {"weights": weights, "caches": caches, "states": state, "workspace": workspace,
                "total": weights + caches + state + workspace}

    if placement == "one-gpu":
        return {"thinker+performer": process(transformer + codecs, cache, states)}
    return {"thinker": process(transformer + codecs, cache, states), "performer": process(transformer, cache, 0.0)}
