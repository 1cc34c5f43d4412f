"""`streamer plan --markdown`: docs/BENCHMARKS.md's plan tables, one row per preset x GPU x precision:
a single session (with and without CUDA graphs) and sessions per GPU (the largest real-time batch)
against the goal of 4 real-time base sessions per H100 in bf16 and 8 in FP8."""
from __future__ import annotations

from .outputs import out

GOAL = {("base", "h100", "bf16"): 4, ("base", "h100", "fp8"): 8}  # sessions per GPU


def print_tables(presets: list[str], gpu_keys: list[str], precisions: list[str], placement: str, graphs: bool,
                 measured: dict | None) -> int:
    """Print the two markdown tables; returns the exit code (0)."""
    from model_src.config import get_preset
    from planning.batch import max_batch
    from planning.budget import make_plan

    single = ["| preset | GPU | precision | thinker_step | flow_step (xN) | codecs | launches + gaps | per unit (graphs) "
              "| per unit (no graphs) | latency | real time | memory (GiB) | kernels/unit | first bottleneck |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    batched = ["| preset | GPU | precision | sessions per GPU (B max) | per unit at B max | latency at B max "
               "| memory at B max (GiB) | goal | on paper |",
               "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name in presets:
        p = get_preset(name)
        for gpu in gpu_keys:
            for precision in precisions:
                plan = make_plan(p, gpu, precision, placement, graphs=graphs, measured=measured)
                other = make_plan(p, gpu, precision, placement, graphs=not graphs, measured=measured)
                with_graphs, without = (plan, other) if graphs else (other, plan)
                by = {s.cost.name: s for s in plan.stages}
                codecs = sum(by[n].per_unit_ms for n in ("audio_enc", "video_enc", "audio_dec", "video_dec"))
                launch = sum(s.cost.calls_per_unit * s.launch_ms for s in plan.stages)
                memory = max(m["total"] for m in plan.memory_per_gpu().values()) / 2**30
                single.append(f"| {name} | {plan.gpu['name']} | {precision} | {by['thinker_step'].per_unit_ms:.1f} | "
                              f"{by['flow_step'].per_unit_ms:.1f} | {codecs:.1f} | {launch:.1f} | "
                              f"{with_graphs.unit_ms:.1f} | {without.unit_ms:.1f} | {plan.latency_ms:.1f} | "
                              f"{'yes' if plan.realtime else 'no'} | {memory:.1f} | {plan.launches_per_unit} | "
                              f"{plan.bottleneck().cost.name} |")
                b_max, best = max_batch(p, gpu, precision, placement, graphs=graphs, measured=measured)
                goal = GOAL.get((name, gpu, precision))
                verdict = "" if goal is None else ("met" if b_max >= goal else "not met")
                if best is None:
                    batched.append(f"| {name} | {plan.gpu['name']} | {precision} | 0 | | | | {goal or ''} | {verdict} |")
                    continue
                mem = max(m["total"] for m in best.memory_per_gpu().values()) / 2**30
                batched.append(f"| {name} | {plan.gpu['name']} | {precision} | {b_max} | {best.unit_ms:.1f} | "
                               f"{best.latency_ms:.1f} | {mem:.1f} | {goal or ''} | {verdict} |")
    out.print("\n".join(single), markup=False, soft_wrap=True)
    out.print("")
    out.print("\n".join(batched), markup=False, soft_wrap=True)
    return 0
