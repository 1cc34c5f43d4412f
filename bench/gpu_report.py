"""gpu_check.json -> the markdown that goes into docs/BENCHMARKS.md: every section's status (a failed or
timed-out one with its error), the headline measured beside the plan with the definitions, the rest.
Standard library only (the parent process of bench/gpu_check.py does not import torch)."""
from __future__ import annotations

MEASURED_AS = (
    "Measured as the sum of the five phases' times, each from time stamps at its start and end (CUDA events "
    "on the phase's stream; on the CPU twin a marker its deferred stream runs). Hand-over: the performer's "
    "stream from taking unit k up to the solve's start (seed noise and unit index in; one-gpu shares the "
    "cache, the delta does not move); the performer's lag before it (thinker_step's end to the take-up) is "
    "shown apart, not summed. Step time: the wall time of one `step` call; cycle: from one "
    "step's return to the next. Steady state: the ring (sink + window units) is filled before the timed units.")
# the plan's stages behind each measured phase (hand-over: none; the plan counts no time for it)
PHASE_STAGES = {"encode": ("audio_enc", "video_enc"), "think": ("thinker_step",), "handover": (),
                "flow": ("flow_step",), "decode": ("audio_dec", "video_dec"), "performer_lag": ()}
KERNEL_METHODS = ("flash-attn",)  # columns shown even when the library is absent ("not installed")


def _num(x, fmt: str = ".1f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and x == x else "-"


def _tail(d: dict | None) -> str:
    """p99, or the max and why when there are too few samples for a p99."""
    if not d or "p50" not in d:
        return "-"
    return _num(d["p99"]) if d.get("p99") is not None else f"max {_num(d['max'])} (n = {d['n']}, no p99)"


def _status_lines(sections: dict) -> list[str]:
    lines = ["| section | status | seconds | error |", "| --- | --- | ---: | --- |"]
    for name, sec in sections.items():
        err = str(sec.get("error", "") or sec.get("skipped", "")).replace("|", "/").replace("\n", " ")[:300]
        if sec.get("build_rc") not in (None, 0):
            err += f"; build rc {sec['build_rc']}: `{str(sec.get('build_error', ''))[-300:].strip()}`".replace("\n", " ")
        lines.append(f"| {name} | {sec.get('status', '?').upper() if sec.get('status') in ('failed', 'timed out') else sec.get('status', '?')} "
                     f"| {_num(sec.get('seconds'))} | {err} |")
    return lines + [""]


# the plan's latency parts behind each measured phase (a phase's stamps hold its copies in or out too)
PHASE_PARTS = {"encode": ("input h2d", "encode"), "think": ("thinker_step",), "handover": ("KV delta hand-over",),
               "flow": ("flow solve",), "decode": ("decode", "output d2h")}


def _plan_phase(plan: dict, phase: str) -> float | None:
    """The plan's milliseconds for a measured phase: its latency parts, else its stages' per-unit sum."""
    parts, stages = plan.get("latency_parts_ms", {}), plan.get("stages", {})
    if parts and phase in PHASE_PARTS and all(n in parts for n in PHASE_PARTS[phase]):
        return sum(parts[n] for n in PHASE_PARTS[phase])
    names = PHASE_STAGES.get(phase, ())
    if not names or not all(n in stages for n in names):
        return None
    return sum(stages[n].get("ms_per_unit", float("nan")) for n in names)


def headline_lines(ses: dict) -> list[str]:
    """The headline's table: measured beside planned, with the definitions."""
    setup, plan = ses.get("setup", {}), ses.get("plan", {})
    fill = ses.get("cache_fill", {})
    lines = [f"#### Headline: {setup.get('preset')} {setup.get('precision')}, attention {setup.get('attention')}, "
             f"{setup.get('placement')}, CUDA graphs {ses.get('cuda_graphs')}, on {setup.get('device')}", "",
             f"Definition (planning.budget.LATENCY_DEFINITION, the plan's): {ses.get('latency_definition', '-')}. "
             + MEASURED_AS, "",
             f"Cache when timing started: {fill.get('tokens', '-')} of {fill.get('capacity', '-')} tokens "
             f"({_num(100 * fill['fraction'], '.0f') if 'fraction' in fill else '-'} % full) after "
             f"{fill.get('primed_units', '-')} primed units; {setup.get('units')} timed units; setup "
             f"{_num(ses.get('setup_s'))} s.", ""]
    if "skipped" in plan:
        lines += [f"Plan: {plan['skipped']}.", ""]
    elif plan:
        lines += [f"Plan: `streamer plan --preset {plan.get('preset')} --gpu {plan.get('gpu_key')} --precision "
                  f"{plan.get('precision')}` ({plan.get('gpu')}).", ""]
    lines += ["| ms | measured p50 | measured p99 | planned |", "| --- | ---: | ---: | ---: |"]
    rows = [("step time per unit", ses.get("step_ms"), plan.get("unit_ms")), ("cycle per unit", ses.get("cycle_ms"), None),
            ("model-side latency", ses.get("latency_ms"), plan.get("latency_ms"))]
    progress = ses.get("progress", {})
    if "step_ms" not in ses and progress:  # cut short: what the last progress record holds
        rows[0] = (f"step time per unit (the first {progress['timed_units']} timed units only: cut short)",
                   progress.get("step_ms"), plan.get("unit_ms"))
    for label, d, planned in rows:
        lines.append(f"| {label} | {_num((d or {}).get('p50'))} | {_tail(d)} | {_num(planned)} |")
    for phase, d in ses.get("phase_ms", {}).items():
        label = "performer lag (not summed)" if phase == "performer_lag" else \
            f"phase {phase} (plan: {' + '.join(PHASE_PARTS.get(phase, PHASE_STAGES.get(phase, ())))})"
        lines.append(f"| {label} | {_num(d.get('p50'))} "
                     f"| {_tail(d)} | {_num(_plan_phase(plan, phase), '.2f')} |")
    b, check, pb = ses.get("bytes_per_unit", {}), ses.get("bytes_check", {}), plan.get("bytes_per_unit", {})
    if b:
        lines += ["", "| bytes per unit | ledger | the tensors' own bytes | equal | planned (formula) |",
                  "| --- | ---: | ---: | --- | ---: |"]
        for d in ("h2d", "d2h", "d2d"):
            c = check.get(d, {})
            lines.append(f"| {d} | {_num(b.get(d), ',.0f')} | {_num(c.get('tensors'), ',.0f')} | {c.get('equal', '-')} "
                         f"| {_num(pb.get(d), ',.0f')} |")
    mem = ses.get("memory", {})
    if mem:
        planned = sum(m.get("total", 0) for m in plan.get("memory", {}).values()) / 2**30 if plan.get("memory") else None
        lines += ["", f"Memory (GiB): peak allocated {_num(mem.get('peak_allocated_gib'), '.2f')}, peak reserved "
                      f"{_num(mem.get('peak_reserved_gib'), '.2f')}, device in use {_num(mem.get('device_used_gib'), '.2f')}"
                      f"{' (' + mem['note'] + ')' if 'note' in mem else ''}; planned {_num(planned, '.2f')}."]
    return lines + [""]


def _kernel_lines(kt: dict, env: dict) -> list[str]:
    methods = list(dict.fromkeys(m for r in kt["rows"] for m in r if m not in ("preset", "queries", "keys")))
    methods += [m for m in KERNEL_METHODS if m not in methods]
    lines = ["", "| preset | queries | keys | " + " | ".join(methods) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in methods) + " |"]
    for r in kt["rows"]:
        cells = []
        for m in methods:
            v = r.get(m)
            if isinstance(v, dict) and "ms" in v:  # (bench/kernel_sections.py: TFLOP/s, % of dense bf16 peak)
                pct = f", {v['peak_pct']:.0f} % peak" if v.get("peak_pct") is not None else ""
                extra = f" ({v['tflops']:.0f} TFLOP/s{pct})" if "tflops" in v else ""
                cells.append(f"{v['ms']:.3f}{extra}")
            elif isinstance(v, dict) and "skipped" in v:
                cells.append(v["skipped"])
            elif isinstance(v, dict):
                cells.append("error")
            else:
                absent = str(env.get("flash_attn", "not installed")).startswith("not ")
                cells.append("not installed" if m == "flash-attn" and absent else "n/a")
        lines.append(f"| {r['preset']} | {r['queries']} | {r['keys']} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    """The report of one gpu_check.json (partial ones too: a section still running shows as such)."""
    s = results.get("sections", {})
    env = s.get("env", {})
    gpu = env.get("gpu") or ("no GPU: dry run on the CPU" if results.get("dry_run") else "no GPU")
    lines = [f"### GPU check: {gpu} ({results.get('started', '')})", "",
             f"`{results.get('command', '')}`, deadline {_num(results.get('deadline_s'), '.0f')} s from the "
             f"process start, {_num(results.get('seconds'))} s used.", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, triton {env.get('triton')}, {env.get('sms', '?')} SMs, "
             f"planning/gpus.toml entry: {env.get('plan_key', '-')}, MPS {'on' if env.get('mps') else 'off'}, CUDA_HOME "
             f"{env.get('cuda_home')}, nvcc {env.get('nvcc')}, g++ {env.get('gxx')}, flash-attn {env.get('flash_attn')}.", ""]
    if results.get("no_cuda"):
        lines += [f"**No CUDA device**: {results['no_cuda']}", ""]
    lines += _status_lines(s)
    ses = s.get("session", {})
    if "setup" in ses:
        lines += headline_lines(ses)
    k = s.get("kernel_check", {})
    if "rows" in k:
        lines += ["Kernel against the SDPA reference: " + ("all within tolerance" if k.get("ok") else "FAILED") + "; "
                  + "; ".join(f"{r['case']} {r['max_abs']:.1e}" for r in k["rows"] if "196" in r["case"]), ""]
    sa = s.get("stage_attention", {})
    if "speedup" in sa:
        lines += ["| stage (ms per call) | triton (ours) | sdpa | sdpa / triton |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {n} | {sa['triton'][n]:.2f} | {sa['sdpa'][n]:.2f} | {sa['speedup'][n]:.2f}x |" for n in sa["triton"]]
        lines += ["", sa["note"]] if sa.get("note") else []
    kt = s.get("kernel_timing", {})
    if kt.get("rows"):
        lines += _kernel_lines(kt, env)
        if kt.get("goal_196x16k_speedup"):
            lines += ["", "At 196 x 16k, time of each method / ours: " + ", ".join(
                f"{m} {v:.2f}x" for m, v in kt["goal_196x16k_speedup"].items())]
    f8 = s.get("fp8_flow", {})
    if "speedup" in f8:
        lines += ["", f"FP8 flow_step ({f8['linears_fp8']} linears on torch._scaled_mm): {f8['fp8_ms']:.2f} ms against "
                      f"bf16 {f8['bf16_ms']:.2f} ms ({f8['speedup']:.2f}x), latent cosine {f8['latent_cosine']:.4f}"]
    en = s.get("engines", {})
    if "one-gpu" in en and "two-process" in en:
        lines += ["", f"tiny AOTInductor CUDA engines (built in {en['build_s']} s): one-gpu "
                      f"{_num(en['one-gpu']['unit_ms'].get('p50'))} ms, two-process "
                      f"{_num(en['two-process']['unit_ms'].get('p50'))} ms per unit; bitwise equal {en.get('bitwise_equal')}"]
    return "\n".join(lines) + "\n"
