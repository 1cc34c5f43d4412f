"""gpu_check.json -> the markdown that goes into docs/BENCHMARKS.md (measured beside planned)."""
from __future__ import annotations


def _ms(d: dict | None, key: str = "p50") -> str:
    return f"{d[key]:.1f}" if d and key in d and d[key] == d[key] else "-"


def markdown(results: dict) -> str:
    s = results.get("sections", {})
    env = s.get("env", {})
    lines = [f"### GPU check: {env.get('gpu', 'no GPU')} ({results.get('started', '')})", "",
             f"`{results.get('command', '')}`: torch {env.get('torch')}, CUDA {env.get('cuda')}, triton "
             f"{env.get('triton')}, {env.get('sms', '?')} SMs, MPS {'on' if env.get('mps') else 'off'}.", ""]
    for name, sec in s.items():
        if "error" in sec or "skipped" in sec:
            lines.append(f"- {name}: {'FAILED ' + sec['error'] if 'error' in sec else 'skipped: ' + sec['skipped']}")
    k = s.get("kernel_check", {})
    if "rows" in k:
        lines += ["", "Kernel against the SDPA reference: " + ("all within tolerance" if k["ok"] else "FAILED") + "; "
                  + "; ".join(f"{r['case']} {r['max_abs']:.1e}" for r in k["rows"] if "196" in r["case"]), ""]
    ses = s.get("session", {})
    if "unit_ms" in ses:
        plan = ses.get("plan", {})
        b, pb = ses["bytes_per_unit"], plan.get("bytes_per_unit", {})
        lines += [f"#### {ses['preset']} {ses['precision']}, attention {ses['attention']}, {ses['placement']}, CUDA graphs "
                  f"{ses['cuda_graphs']}, {ses['units']} units", "",
                  "| | measured | planned (`streamer plan`) |", "| --- | ---: | ---: |",
                  f"| per unit p50 / p99 (ms) | {_ms(ses['unit_ms'])} / {_ms(ses['unit_ms'], 'p99')} | "
                  f"{plan.get('unit_ms', float('nan')):.1f} |",
                  f"| model-side latency p50 / p99 (ms) | {_ms(ses['latency_ms'])} / {_ms(ses['latency_ms'], 'p99')} | "
                  f"{plan.get('latency_ms', float('nan')):.1f} |",
                  f"| h2d / d2h per unit (MB) | {b['h2d'] / 1e6:.3f} / {b['d2h'] / 1e6:.3f} | "
                  f"{pb.get('h2d', 0) / 1e6:.3f} / {pb.get('d2h', 0) / 1e6:.3f} |",
                  f"| on the device per unit (MB) | {b['d2d'] / 1e6:.1f} | {pb.get('d2d', 0) / 1e6:.1f} |",
                  f"| peak GPU memory (GiB) | {ses.get('gpu_peak_gib') or 0:.1f} | "
                  f"{sum(m['total'] for m in plan.get('memory', {}).values()) / 2**30:.1f} |", ""]
        for stage, st in plan.get("stages", {}).items():
            lines.append(f"- plan {stage}: {st['expected_ms']:.2f} ms per call x {st['calls_per_unit']} ({st['bound']}-bound)")
    sa = s.get("stage_attention", {})
    if "speedup" in sa:
        lines += ["", "| stage (ms per call) | triton (ours) | sdpa | sdpa / triton |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {n} | {sa['triton'][n]:.2f} | {sa['sdpa'][n]:.2f} | {sa['speedup'][n]:.2f}x |" for n in sa["triton"]]
    kt = s.get("kernel_timing", {})
    if "rows" in kt:
        methods = [m for m in kt["rows"][0] if m not in ("preset", "queries", "keys")]
        lines += ["", "| preset | queries | keys | " + " | ".join(methods) + " |",
                  "| --- | --- | ---: | " + " | ".join("---:" for _ in methods) + " |"]
        for r in kt["rows"]:
            cells = [(f"{r[m]['ms']:.3f} ({100 * r[m]['hbm_fraction']:.0f} % HBM)" if "ms" in r.get(m, {}) else
                      ("n/a" if m not in r else "error")) for m in methods]
            lines.append(f"| {r['preset']} | {r['queries']} | {r['keys']} | " + " | ".join(cells) + " |")
        lines += ["", "At 196 x 16k, time of each method / ours: " + ", ".join(
            f"{k} {v:.2f}x" for k, v in kt.get("goal_196x16k_speedup", {}).items())]
    f8 = s.get("fp8_flow", {})
    if "speedup" in f8:
        lines += ["", f"FP8 flow_step ({f8['linears_fp8']} linears on torch._scaled_mm): {f8['fp8_ms']:.2f} ms against "
                      f"bf16 {f8['bf16_ms']:.2f} ms ({f8['speedup']:.2f}x), latent cosine {f8['latent_cosine']:.4f}"]
    en = s.get("engines", {})
    if "one-gpu" in en:
        lines += ["", f"tiny AOTInductor CUDA engines (built in {en['build_s']} s): one-gpu {_ms(en['one-gpu']['unit_ms'])} ms, "
                      f"two-process {_ms(en['two-process']['unit_ms'])} ms per unit; bitwise equal {en['bitwise_equal']}"]
    return "\n".join(lines) + "\n"
