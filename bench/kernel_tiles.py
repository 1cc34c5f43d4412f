"""The attention kernel's tiles at the GPU shapes, measured without a GPU: registers, spills, shared memory.

    python bench/kernel_tiles.py [--shapes base-flow-bf16,...] [--sweep] [--candidates 64x64x8x2,...]
                                 [--sweep-at large-flow-fp8,...] [--json out.json] [--write docs/BENCHMARKS.md]

For every GPU shape (base and large, flow 196 and thinker 252 queries, bf16 and FP8 E4M3 cache, the
presets' 32,256-slot cache, D=128) the partial kernel is compiled with `kernels.aot.compile_partial` at
the launch `kernels.aot.launch_geometry` gives (the one the torch op, the ONNX nodes and the TensorRT
plugins use), assembled for sm_90a with the ptxas-blackwell inside the triton wheel, and its report
read: registers, spills, shared memory, programs per SM (kernels/ptxas.py), grid. The goal: no spills
and at least 2 programs per SM; exit status 1 where a chosen config misses it.
`--sweep` compiles candidate tiles (query tiles 64/128, key tiles 64/128, 4/8 warps, 2-4 stages) at each
(preset, cache) flow shape and names the rule's choice (no spills, >= 2 programs per SM, then the
largest tile, the deepest pipeline, the most warps); exit 1 too if it is not what kernels/tiling.py holds.
Needs no GPU; runs with TRITON_INTERPRET unset (it is removed here).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this repo's packages, from anywhere and without an install (never the cwd)
os.environ.pop("TRITON_INTERPRET", None)  # the compiler, not the interpreter (read when triton.jit runs)

HEADS = {"base": (16, 8), "large": (28, 4)}
QUERIES = {"flow": 196, "thinker": 252}
CACHES = {"bf16": "bfloat16", "fp8": "float8_e4m3fn"}
CAPACITY, D = 32256, 128
CANDIDATES = [(m, n, w, s) for m, n, w, s in itertools.product((64, 128), (64, 128), (4, 8), (2, 3, 4))]


def shapes() -> dict[str, tuple]:
    """name -> (preset, stage, q heads, kv heads, queries, cache dtype name)."""
    return {f"{p}-{k}-{c}": (p, k, *HEADS[p], n_q, dt) for p in HEADS for k, n_q in QUERIES.items()
            for c, dt in CACHES.items()}


def measure(shape: tuple, tiles=None) -> dict:
    """Compile and assemble the partial kernel for `shape` at `tiles` (block_m, block_n, warps, stages), or at
    the launch geometry when None; returns a row with its resources and whether it meets the goal."""
    from kernels.aot import compile_partial, launch_geometry
    from kernels.ptxas import assemble
    from kernels.tiling import Tiles, geometry

    preset, stage, hq, hkv, n_q, cache = shape
    if tiles is None:
        g = launch_geometry(1, hq, hkv, n_q, D, CAPACITY, fp8=cache != "bfloat16")
    else:
        g = geometry(1, hq, hkv, n_q, CAPACITY, Tiles(*tiles))
    launch = compile_partial((1, hq, n_q, D), (1, hkv, CAPACITY, D), n_q, "bfloat16", cache, 0, g)
    r = assemble(launch.ptx, launch.name, launch.block, launch.shared)
    return {"shape": f"{preset} {stage} {n_q} q, {'FP8' if cache != 'bfloat16' else 'bf16'} cache",
            "config": f"{g.block_m}x{g.block_n}, {g.num_warps} warps, {g.num_stages} stages",
            "tiles": [g.block_m, g.block_n, g.num_warps, g.num_stages], "registers": r.registers,
            "spill_bytes": r.spills, "shared_kib": r.shared / 1024, "threads": r.threads,
            "programs_per_sm": r.programs_per_sm, "grid": list(launch.grid),
            "ok": r.spills == 0 and r.programs_per_sm >= 2}


def choose(rows: list[dict]) -> list[int] | None:
    """The rule: no spills and >= 2 programs per SM, then the largest tile, deepest pipeline, most warps."""
    ok = [r for r in rows if r["ok"]]
    if not ok:
        return None
    m, n, w, s = max((r["tiles"] for r in ok), key=lambda t: (t[0] * t[1], t[3], t[2]))
    return [m, n, w, s]


def markdown(rows: list[dict]) -> str:
    out = ["| shape | config (q x key tile, warps, stages) | registers | spills (B) | shared (KiB) | "
           "programs / SM | grid |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        out.append(f"| {r['shape']} | {r['config']} | {r['registers']} | {r['spill_bytes']} | {r['shared_kib']:.0f} | "
                   f"{r['programs_per_sm']} | {' x '.join(map(str, r['grid']))} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", help="comma-separated names (default: all): " + ", ".join(shapes()))
    ap.add_argument("--sweep", action="store_true", help="also sweep candidate tiles at the flow shapes")
    ap.add_argument("--candidates", help="sweep only these, as MxNxWARPSxSTAGES (e.g. 64x64x8x2)")
    ap.add_argument("--sweep-at", help="sweep at these shapes only (default: the flow shapes of --shapes)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--write", help="append the markdown table to this file")
    args = ap.parse_args(argv)
    from kernels.ptxas import ptxas_path
    from kernels.tiling import gpu_tiles

    if ptxas_path() is None:
        print("bench/kernel_tiles.py: ptxas-blackwell is not in the installed triton wheel; nothing to measure")
        return 2
    table = shapes()
    names = args.shapes.split(",") if args.shapes else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown shape(s) {unknown}: expected some of {list(table)}")
    chosen = [measure(table[n]) for n in names]
    for r in chosen:
        print(f"{r['shape']}: {r['config']}: {r['registers']} registers, {r['spill_bytes']} B spilled, "
              f"{r['shared_kib']:.0f} KiB shared, {r['programs_per_sm']} programs/SM, grid {r['grid']}"
              f"{'' if r['ok'] else '  <- misses the goal'}", flush=True)
    result = {"chosen": chosen, "sweep": {}}
    mismatch = []
    if args.sweep:
        candidates = [tuple(int(x) for x in c.split("x")) for c in args.candidates.split(",")] if args.candidates \
            else CANDIDATES
        at = args.sweep_at.split(",") if args.sweep_at else [n for n in names if "-flow-" in n]
        if any(n not in table for n in at):
            ap.error(f"--sweep-at {at}: expected some of {list(table)}")
        for n in at:
            rows = [measure(table[n], c) for c in candidates]
            for r in rows:
                print(f"  sweep {n} {r['config']}: {r['registers']} reg, {r['spill_bytes']} B spilled, "
                      f"{r['shared_kib']:.0f} KiB, {r['programs_per_sm']}/SM {'ok' if r['ok'] else '-'}", flush=True)
            pick = choose(rows)
            _, _, hq, hkv, _, cache = table[n]
            held = gpu_tiles(hq // hkv, D, cache != "bfloat16")
            held = [held.block_m, held.block_n, held.num_warps, held.num_stages]
            result["sweep"][n] = {"rows": rows, "rule_choice": pick, "table": held}
            print(f"  {n}: the rule picks {pick}; kernels/tiling.py holds {held}")
            if args.candidates is None and pick != held:
                mismatch.append(n)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    text = markdown(chosen)
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write(text)
    failed = [r["shape"] for r in chosen if not r["ok"]]
    if failed or mismatch:
        print(f"goal missed: {failed}; table differs from the rule's choice: {mismatch}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
