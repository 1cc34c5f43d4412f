"""Benchmark: each stage's time per 160 ms unit, engines against torch eager, side by side in one run.

    python bench/stages.py --engines DIR [--repeats 5] [--threads N]
    python bench/stages.py --engines INT8_DIR --baseline FP32_DIR   # two engine builds, side by side

Both run the stage's example inputs (the build's shapes); flow_step counts once per solver step, so
its per-unit time is `flow_steps` runs. Prints a markdown table for docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform

import torch

from export.verify import reference_system
from model_src.stages import make_stages
from runtime.host.engines import load_engines
from runtime.manifest import read_manifest
from unitio.timing import median_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--baseline", help="another engine directory of the same preset, timed instead of torch eager")
    ap.add_argument("--stages", help="comma-separated stages (default: all six)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = args.stages.split(",") if args.stages else None
    manifest = read_manifest(args.engines)
    system = reference_system(manifest)
    steps = system.preset.flow_steps
    base = read_manifest(args.baseline) if args.baseline else None
    base_name = f"{base['backend']} {base['precision']}" if base else "torch eager"
    this_name = f"{manifest['backend']} {manifest['precision']}"
    rows = []
    for spec in make_stages(system):
        if chosen and spec.name not in chosen:
            continue
        # one stage's engines at a time (two builds of the small preset do not fit in memory together)
        engines = load_engines(args.engines, threads=args.threads, stages=[spec.name])[1]
        baseline = load_engines(args.baseline, threads=args.threads, stages=[spec.name]) if args.baseline else None
        feeds = {k: v.numpy() for k, v in spec.example_inputs.items()}
        args_t = tuple(spec.example_inputs.values())

        def eager():
            with torch.no_grad():
                spec.module(*args_t)
        per_unit = steps if spec.name == "flow_step" else 1
        if baseline:
            eager = lambda: baseline[1][spec.name].run(feeds)  # noqa: E731
        t_torch = median_ms(eager, args.repeats) * per_unit
        t_engine = median_ms(lambda: engines[spec.name].run(feeds), args.repeats) * per_unit
        rows.append((spec.name, t_torch, t_engine))
        engines = baseline = None  # release this stage's engines before the next stage's load
        print(f"{spec.name}: {base_name} {t_torch:.1f} ms, {this_name} {t_engine:.1f} ms", flush=True)
    print(f"\n{manifest['preset']['name']} preset, {this_name} engines against {base_name}, {torch.get_num_threads()} "
          f"threads, {platform.machine()}, torch {torch.__version__}; median of {args.repeats}, ms per 160 ms unit\n")
    print(f"| stage | {base_name} | {this_name} | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, a, b in rows:
        print(f"| {name}{f' (x{steps})' if name == 'flow_step' else ''} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
