"""bench/gpu_check.py's headline: the preset (base) in bf16 with our kernel on the device path, one-gpu
placement, CUDA graphs, in steady state, measured, then beside the plan.

Steady state: `prime` units (default sink + window: the KV ring full) stream before the timed units, and
the cache fill when timing starts is reported. Each measurement goes to the JSON when it is taken
(`ctx.record`); the plan is computed afterwards.

Model-side latency: planning.budget.LATENCY_DEFINITION, the plan's (encode(u_k) + thinker_step(k) + KV
delta hand-over + flow solve(k) + decode(y_k), the critical path of one unit). Measured that way: a time stamp at each phase's start and end (CUDA events on the phase's
stream on a GPU; wall time on a CPU), the five phase times summed per unit. The step time (wall time
of one `step` call) and the cycle (step return to step return, the bench's own progress records taken
out) are reported beside it.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from bench.gpu_sections import NO_DATASHEET, Context, _system, gpu_key
from unitio.timing import percentiles

PHASES = ("encode", "think", "handover", "flow", "decode")
P99_SAMPLES = 200  # fewer timed units: no p99, the max instead (said in the JSON and the markdown)


def prime_units(p, requested: int | None) -> int:
    """Units streamed before timing: `requested`, or sink + window (the ring full: 16 at tiny, 128 at base)."""
    return p.sink_units + p.window_units if requested is None else requested


def summary(ms: list[float]) -> dict:
    """p50 / p90 / p99 / max / mean of `ms`; with fewer than P99_SAMPLES values p99 is None and `p99_note`
    says the max stands in for it."""
    if not len(ms):
        return {"n": 0}
    out = {"n": len(ms), **percentiles(ms)}
    if len(ms) < P99_SAMPLES:
        out["p99"] = None
        out["p99_note"] = f"{len(ms)} samples (< {P99_SAMPLES}): no p99, the max instead"
    return out


class _Stamp:
    t = float("nan")  # until its stream runs it


class PhaseClock:
    """Time stamps at phase boundaries, taken when the stream reaches them: a CUDA event with timing on the
    current stream on a GPU (read after the run); on the CPU twin's deferred streams a marker that notes the
    wall time when the stream runs it; wall time now where no stream is current."""

    def __init__(self, cuda: bool, current_stream=None) -> None:
        self.cuda, self.current_stream = cuda, current_stream

    def stamp(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        st, stream = _Stamp(), self.current_stream() if self.current_stream else None
        if hasattr(stream, "enqueue"):
            stream.enqueue(lambda: setattr(st, "t", time.perf_counter()))
        else:
            st.t = time.perf_counter()
        return st

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else 1000.0 * (b.t - a.t)


def instrument(s, clock: PhaseClock) -> dict[int, dict]:
    """Wrap the session's phases (thinker.encode, think, decode; the performer's solver.load and run) with
    time stamps, keyed by unit: {k: {"encode": (t0, t1), "think": ..., "handover_start": t, "flow": ...,
    "decode": ...}}. The decode of y_k runs in step(k + 1): keyed by the unit it decodes."""
    stamps: dict[int, dict] = {}
    thinker, solver = s.thinker, getattr(s.performer, "solver", None)
    if solver is None:
        raise RuntimeError(f"the performer of placement {s.placement} has no in-process solver to time")

    def wrap(obj, name: str, phase: str, unit) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            k, t0 = unit(), clock.stamp()
            r = inner(*args, **kwargs)
            stamps.setdefault(k, {})[phase] = (t0, clock.stamp())
            return r
        setattr(obj, name, timed)

    wrap(thinker, "encode", "encode", lambda: s.unit_index)
    wrap(thinker, "think", "think", lambda: s.unit_index)
    wrap(solver, "load", "load", lambda: s.unit_index)  # on the performer's stream, after it waited for the delta
    wrap(solver, "run", "flow", lambda: s.unit_index)
    wrap(thinker, "decode", "decode", lambda: s.decoded)
    return stamps


def phase_ms(stamps: dict, clock: PhaseClock, units: range) -> dict[str, list[float]]:
    """Per phase, the milliseconds of each unit in `units`; "latency" their sum (the definition above).
    Hand-over: the performer's stream from taking unit k up (its wait for the delta passed) to the solve's
    start: the seed noise and unit index copied in (one-gpu shares the cache: the delta does not move).
    "performer_lag" (not in the sum): thinker_step's end to that take-up; ~0 on a GPU, whose performer
    stream is idle then; on the CPU twin, which runs one stream at a time, it is the other stream's turn."""
    out = {p: [] for p in (*PHASES, "performer_lag", "latency")}
    for k in units:
        st = stamps.get(k, {})
        if not all(p in st for p in ("encode", "think", "load", "flow", "decode")):
            continue
        row = {"encode": clock.ms(*st["encode"]), "think": clock.ms(*st["think"]),
               "handover": clock.ms(st["load"][0], st["flow"][0]),
               "flow": clock.ms(*st["flow"]), "decode": clock.ms(*st["decode"])}
        lag = clock.ms(st["think"][1], st["load"][0])
        if not all(v == v for v in (*row.values(), lag)):
            continue  # a stamp its stream never ran
        for p, v in row.items():
            out[p].append(v)
        out["performer_lag"].append(lag)
        out["latency"].append(sum(row.values()))
    return out


def tensor_bytes(s, result) -> dict[str, int]:
    """Bytes one unit must move, counted from the tensors themselves (not the ledger's or the plan's
    formula): h2d the unit's audio, uint8 frames, text ids and unit index as the session stages them plus
    the solver's seed noise and unit index; d2h the tokens, waveform and frames the step returned; d2d the
    delta appended in the cache's dtype and y_k copied to the thinker."""
    t, solver = s.thinker, s.performer.solver
    noise = sum(x.numel() * x.element_size() for x in solver.noise_host[0])
    h2d = sum(x.numel() * x.element_size() for x in t.host_in.values()) + noise
    d2h = result.text_tokens.nbytes + result.audio.nbytes + result.frames.nbytes
    append = 2 * t.think_out["k_delta"].numel() * s.cache.k.element_size()
    d2d = append + solver.y_audio.numel() * 4 + solver.y_video.numel() * 4
    return {"h2d": int(h2d), "d2h": int(d2h), "d2d": int(d2d)}


def _memory() -> dict:
    if not torch.cuda.is_available():
        return {"note": "no CUDA device: not measured"}
    free, total = torch.cuda.mem_get_info()
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "device_used_gib": (total - free) / 2**30}  # the CUDA context and other processes included


def headline(ctx: Context) -> dict:
    """Stream `ctx.prime` + `ctx.units` units through DeviceSession on torch stage modules; record setup,
    cache fill, step and cycle times, per-phase times and model-side latency, ledger bytes against the
    tensors' bytes, peak memory; then the plan beside them. Returns the whole dict."""
    from calibration.torch_engines import torch_device_parts
    from runtime.device.session import DeviceSession
    from unitio.media import split_units, synthetic_input

    t0 = time.perf_counter()
    system = _system(ctx, "triton")
    p = system.preset
    attention = system.model.backbone.layers[0].self_attn.attn_impl
    cuda = ctx.device.startswith("cuda")
    prime = prime_units(p, ctx.prime)
    from planning.budget import LATENCY_DEFINITION

    ctx.record("latency_definition", LATENCY_DEFINITION)  # defined once, with the plan
    ctx.record("setup", {"preset": p.name, "precision": ctx.precision, "attention": attention, "placement": "one-gpu",
                         "device": ctx.device, "units": ctx.units, "prime_units": prime})
    parts = torch_device_parts(system, ctx.device)
    audio, frames = synthetic_input(p, prime + ctx.units, 0)
    units = split_units(audio, frames, p, prime + ctx.units)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with DeviceSession(None, engines=parts, device=ctx.device, seed=0, graphs=True) as s:
        ctx.record("setup_s", round(time.perf_counter() - t0, 1))
        ctx.record("cuda_graphs", s.graphs)
        clock = PhaseClock(cuda, getattr(s.device, "current_stream", None))
        stamps = instrument(s, clock)
        step_ms, done, results, skew = [], [], [], 0.0  # skew: the progress records' own time, out of the cycle
        for k, (a, f) in enumerate(units):
            if k == prime:
                capacity = s.cache.units * s.spec.unit_tokens
                filled = int(s.cache.length[0])
                ctx.record("cache_fill", {"tokens": filled, "capacity": capacity, "fraction": filled / capacity,
                                          "primed_units": prime})
            t_step = time.perf_counter()
            r = s.step(a, f)
            t_done = time.perf_counter()
            done.append(t_done - skew)
            step_ms.append(1000.0 * (t_done - t_step))
            if k >= prime and r.audio is not None:
                results.append(r)
            if k >= prime and (k - prime + 1) % 50 == 0:
                ctx.record("progress", {"timed_units": k - prime + 1, "step_ms": summary(step_ms[prime:])})
                skew += time.perf_counter() - t_done
        s.flush()
        s.device.synchronize()
        ledger = [dict(row) for row in list(s.ledger.units)[prime:prime + ctx.units]]
        counted = tensor_bytes(s, results[-1]) if results else {}
    ctx.record("step_ms", summary(step_ms[prime:]))
    ctx.record("cycle_ms", summary((np.diff(done[max(0, prime - 1):]) * 1000.0).tolist()))  # one per timed unit
    phases = phase_ms(stamps, clock, range(prime, prime + ctx.units))
    ctx.record("phase_ms", {ph: summary(v) for ph, v in phases.items() if ph != "latency"})
    ctx.record("latency_ms", summary(phases["latency"]))
    per_unit = {d: float(np.mean([r[d] for r in ledger])) for d in ("h2d", "d2h", "d2d")}
    ctx.record("bytes_per_unit", per_unit)
    ctx.record("bytes_check", {d: {"ledger": per_unit[d], "tensors": counted.get(d),
                                   "equal": per_unit[d] == counted.get(d)} for d in per_unit})
    ctx.record("memory", _memory())
    print(f"  steady state ({prime} units primed, cache {int(100 * filled / capacity)} % full): step p50 "
          f"{summary(step_ms[prime:]).get('p50', float('nan')):.1f} ms; latency p50 "
          f"{summary(phases['latency']).get('p50', float('nan')):.1f} ms", flush=True)
    key = ctx.plan_gpu or gpu_key()
    if key is None:
        name = torch.cuda.get_device_name() if cuda else "no GPU"
        ctx.record("plan", {"skipped": f"{name}: {NO_DATASHEET} in planning/gpus.toml (not priced as another GPU)"})
    else:
        from planning.budget import make_plan
        from planning.report import plan_json

        ctx.record("plan", {"gpu_key": key, **plan_json(make_plan(p, key, ctx.precision, "one-gpu"))})
    return {}
