"""Benchmark: the Triton block-causal attention kernel against SDPA, FlexAttention and flash-attn on a GPU.

    python bench/attention.py [--check] [--dtype bf16] [--gpu KEY] [--json out.json] [--write FILE] [--dry-run]

Shapes: one unit's queries (196 flow queries, 252 thinker queries) of the base (16/8 heads) and large
(28/4 heads) presets against caches of 1k, 4k, 16k and 32k keys plus the unit's own keys, D=128. Every
method computes the same thing (all valid cache keys and all local keys visible). Our kernel is timed with
a bf16 cache and with an FP8 E4M3 cache (per-KV-head scales): same FLOPs, half the cache bytes.

The SDPA baselines get the fairest form a single SDPA call allows: K/V = [valid cache ++ local keys]
concatenated once, outside the timed region, into one contiguous buffer (the layout an SDPA-based server
keeps, appending each unit's keys in place), no mask, `enable_gqa=True` (K/V heads shared, not repeated).
The other form, two calls (cache, local keys) merged by log-sum-exp, adds a launch and a combine pass and
needs aten's private LSE-returning ops, so it would be the weaker baseline. FlexAttention gets a block mask
over the static capacity; flash-attn (where installed) the same contiguous keys.

Per method: ms, TFLOP/s and % of the GPU's dense bf16 peak (planning/gpus.toml: at these shapes the work
is ~390 FLOP per byte of K/V, compute-bound, so % of peak is the figure), and GB/s of K/V + q/out traffic.
`--check` first compares the kernel with the SDPA reference in fp32, fp16, bf16 and with an FP8 cache.
`--dry-run`: on the CPU, the same code at a tiny shape (our kernel in Triton's interpreter, SDPA's math
backend, wall-clock timing), priced against `--gpu` (default h100): it exercises the logic, measures nothing.
Without a GPU and without --dry-run it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this repo's packages, from anywhere and without an install (never the cwd)

from unitio.timing import median_ms  # noqa: E402

PRESETS = {"base": (16, 8), "large": (28, 4)}
CACHE_LENS = (1024, 4096, 16384, 32768)
QUERIES = {"flow": 196, "thinker": 252}
D = 128
DRY_SHAPES = [("tiny", 4, 2, "flow", 8, 96)]  # (preset, Hq, Hkv, kind, queries, cache keys), head dim 32 there
OURS, OURS_FP8 = "triton (ours)", "triton (ours), FP8 cache"


def gpu_shapes() -> list[tuple]:
    return [(p, hq, hkv, k, n_q, n) for p, (hq, hkv) in PRESETS.items() for k, n_q in QUERIES.items() for n in CACHE_LENS]


def datasheet(key: str | None) -> dict | None:
    """The planning/gpus.toml entry `key` (None: no entry)."""
    from planning.budget import gpus

    return gpus().get(key) if key else None


def inputs(b, hq, hkv, n_q, cache_len, dtype, capacity=None, device="cuda", d=D):
    """(q, cache_k, cache_v, cache_len, local_k, local_v), random, cache valid below cache_len."""
    capacity = capacity or cache_len
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, dtype=dtype, generator=g)  # noqa: E731
    return (r(b, hq, n_q, d), r(b, hkv, capacity, d), r(b, hkv, capacity, d),
            torch.full((b,), cache_len, device=device, dtype=torch.int64), r(b, hkv, n_q, d), r(b, hkv, n_q, d))


def fp8_cache(ck, cv):
    """The cache in FP8 E4M3 with per-KV-head scales: (ck8, cv8, k_scale, v_scale)."""
    from unitio.names import FP8_E4M3_MAX

    ks, vs = (c.float().abs().amax(dim=(0, 2, 3)) / FP8_E4M3_MAX for c in (ck, cv))
    return ((ck.float() / ks[None, :, None, None]).to(torch.float8_e4m3fn),
            (cv.float() / vs[None, :, None, None]).to(torch.float8_e4m3fn), ks, vs)


def available_methods(dry_run: bool = False) -> dict:
    """name -> make(q, ck, cv, cl, lk, lv) -> a no-argument call (its set-up done outside the call), or a
    string saying why the method cannot run here."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import kernels.ops  # noqa: F401  (registers the op)
    from kernels.attention import interpreted

    def triton_kernel(q, ck, cv, cl, lk, lv):
        return lambda: torch.ops.streamer.block_attention(q, ck, cv, cl, lk, lv, None, None, 0)

    def triton_fp8(q, ck, cv, cl, lk, lv):
        ck8, cv8, ks, vs = fp8_cache(ck, cv)
        return lambda: torch.ops.streamer.block_attention(q, ck8, cv8, cl, lk, lv, ks, vs, 0)

    def sdpa(backend):
        def make(q, ck, cv, cl, lk, lv):
            n = int(cl[0])
            k, v = torch.cat([ck[:, :, :n], lk], 2), torch.cat([cv[:, :, :n], lv], 2)  # once, not timed

            def run():
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            return run
        return make

    def flex(q, ck, cv, cl, lk, lv):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        cap = ck.shape[2]
        k, v = torch.cat([ck, lk], 2), torch.cat([cv, lv], 2)

        def visible(b, h, q_idx, kv_idx):
            return (kv_idx < cl[b]) | (kv_idx >= cap)
        mask = create_block_mask(visible, q.shape[0], None, q.shape[2], k.shape[2], device="cuda")
        compiled = torch.compile(flex_attention, dynamic=False)
        return lambda: compiled(q, k, v, block_mask=mask, enable_gqa=True)

    ours_runs = not dry_run or interpreted()
    why = "the Triton kernel needs a GPU or TRITON_INTERPRET=1"
    methods = {OURS: triton_kernel if ours_runs else why, OURS_FP8: triton_fp8 if ours_runs else why}
    if dry_run:
        methods["sdpa math"] = sdpa(SDPBackend.MATH)
        return methods
    methods.update({"sdpa flash": sdpa(SDPBackend.FLASH_ATTENTION), "sdpa efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
                    "sdpa cudnn": sdpa(SDPBackend.CUDNN_ATTENTION), "flex (compiled)": flex})
    try:
        from flash_attn import flash_attn_func

        def fa(q, ck, cv, cl, lk, lv):
            n = int(cl[0])
            k = torch.cat([ck[:, :, :n], lk], 2).transpose(1, 2)
            v = torch.cat([cv[:, :, :n], lv], 2).transpose(1, 2)
            qt = q.transpose(1, 2)
            return lambda: flash_attn_func(qt, k, v)
        methods["flash-attn"] = fa
    except ImportError:
        methods["flash-attn"] = "not installed"
    return methods


def wall_ms(fn) -> float:
    """Median wall-clock ms of 3 calls of `fn` after one warm-up call (the CPU dry run)."""
    return median_ms(fn, 3)


def cost(hq: int, hkv: int, n_q: int, n: int, d: int, cache_bytes: int, act_bytes: int = 2) -> tuple[int, int]:
    """(FLOPs, bytes) of one call: QK^T and PV over n cache + n_q local keys; K/V read once per KV head
    (cache at `cache_bytes` per element), q read and out written."""
    flops = 4 * hq * n_q * (n + n_q) * d
    moved = 2 * hkv * d * (n * cache_bytes + n_q * act_bytes) + 2 * hq * n_q * d * act_bytes
    return flops, moved


def measure(shapes, methods: dict, timer, peak_tflops: float | None, dtype=torch.bfloat16, device="cuda", d=D,
            skip=lambda name, shape: False, on_row=None) -> list[dict]:
    """One row per shape: {preset, queries, keys, method: {ms, tflops, peak_pct, gbps} | {error} | {skipped}}."""
    rows = []
    for shape in shapes:
        preset, hq, hkv, kind, n_q, n = shape
        args = inputs(1, hq, hkv, n_q, n, dtype, device=device, d=d)
        row = {"preset": preset, "queries": f"{kind} {n_q}", "keys": n}
        for name, make in methods.items():
            if isinstance(make, str):
                row[name] = {"skipped": make}
                continue
            if skip(name, shape):
                continue
            flops, moved = cost(hq, hkv, n_q, n, d, 1 if name == OURS_FP8 else args[1].element_size())
            try:
                ms = timer(make(*args))
            except Exception as e:  # noqa: BLE001 - a backend that cannot run a shape is reported, not hidden
                row[name] = {"error": str(e).splitlines()[0][:120] if str(e) else type(e).__name__}
                continue
            tflops = flops / (ms * 1e-3) / 1e12
            row[name] = {"ms": ms, "tflops": tflops, "gbps": moved / (ms * 1e-3) / 1e9,
                         "peak_pct": 100 * tflops / peak_tflops if peak_tflops else None}
        rows.append(row)
        print(format_row(row), flush=True)
        if on_row:
            on_row(rows)
    return rows


def format_row(row) -> str:
    cells = [f"{row['preset']:5} {row['queries']:12} {row['keys']:6}"]
    for name, r in row.items():
        if isinstance(r, dict):
            cells.append(f"{name}: {r['ms']:.3f} ms, {r['tflops']:.0f} TFLOP/s" if "ms" in r
                         else f"{name}: {r.get('error') or r.get('skipped')}")
    return " | ".join(cells)


def markdown(rows, title: str, peak_note: str) -> str:
    methods = list(dict.fromkeys(m for r in rows for m, v in r.items() if isinstance(v, dict)))
    out = [f"\n### {title}\n", f"Time in ms (TFLOP/s, % of {peak_note}, GB/s of K/V + q/out).\n",
           "| preset | queries | keys | " + " | ".join(methods) + " |",
           "| --- | --- | ---: | " + " | ".join("---:" for _ in methods) + " |"]
    for row in rows:
        cells = []
        for name in methods:
            r = row.get(name, {"skipped": "not run at this shape"})
            if "ms" in r:
                pct = f"{r['peak_pct']:.0f} %" if r["peak_pct"] is not None else "n/a"
                cells.append(f"{r['ms']:.3f} ({r['tflops']:.0f}, {pct}, {r['gbps']:.0f})")
            else:
                cells.append(f"n/a: {r.get('error') or r.get('skipped')}")
        out.append(f"| {row['preset']} | {row['queries']} | {row['keys']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def check() -> list[dict]:
    """The kernel against the SDPA reference on the GPU, in every dtype and with an FP8 cache; returns one
    row per case ({"case", "max_abs", "tolerance", "ok"})."""
    from kernels.attention import block_attention_triton
    from kernels.reference import block_attention_reference

    rows = []
    for dtype, tol in ((torch.float32, 2e-3), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        for n_q, n, tail in ((1, 1000, 0), (7, 100, 2), (196, 16384, 0), (64, 0, 2)):
            q, ck, cv, cl, lk, lv = inputs(2, 16, 8, n_q, n, dtype, capacity=n + 37)
            want = block_attention_reference(q.float(), ck.float(), cv.float(), cl, lk.float(), lv.float(),
                                             causal_tail=tail)
            err = (block_attention_triton(q, ck, cv, cl, lk, lv, causal_tail=tail).float() - want).abs().max().item()
            rows.append({"case": f"{str(dtype).removeprefix('torch.')} Lq={n_q} keys={n} tail={tail}",
                         "max_abs": err, "tolerance": tol, "ok": err <= tol})
    q, ck, cv, cl, lk, lv = inputs(1, 16, 8, 196, 4096, torch.bfloat16)
    ck8, cv8, ks, vs = fp8_cache(ck, cv)
    got = block_attention_triton(q, ck8, cv8, cl, lk, lv, ks, vs).float()
    err = (got - block_attention_reference(q, ck8, cv8, cl, lk, lv, ks, vs).float()).abs().max().item()
    rows.append({"case": "bf16 queries, FP8 E4M3 cache (per-head scales) Lq=196 keys=4096", "max_abs": err,
                 "tolerance": 3e-2, "ok": err <= 3e-2})
    for r in rows:
        print(f"check {r['case']}: max abs {r['max_abs']:.2e} ({'ok' if r['ok'] else 'FAILED'})")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="check correctness in every dtype first")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--gpu", help="planning/gpus.toml entry to price against (default: this GPU's; h100 on --dry-run)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--write", help="append the markdown table to this file")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (interpreter): the logic only")
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported (triton.jit reads it)
    elif not torch.cuda.is_available():
        print("bench/attention.py needs an NVIDIA GPU (torch.cuda.is_available() is False); nothing to measure here.")
        return 0
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    if args.dry_run:
        key, device, shapes, d, timer = args.gpu or "h100", "cpu", DRY_SHAPES, 32, wall_ms
        dtype = torch.float32  # the interpreter's tl.dot is wrong on bf16 (tests/test_kernels.py)
        title = "Attention kernel, dry run on the CPU (tiny shape, interpreter): logic only, no measurement"
    else:
        from triton.testing import do_bench

        from bench.gpu_sections import datasheet_key

        key, device, shapes, d = args.gpu or datasheet_key(torch.cuda.get_device_name()), "cuda", gpu_shapes(), D
        timer = lambda fn: do_bench(fn, warmup=25, rep=100)  # noqa: E731
        title = f"Attention kernel, {torch.cuda.get_device_name()}, {dtype}, torch {torch.__version__}"
        if args.check and not all(r["ok"] for r in check()):
            sys.exit("kernel check failed")
    entry = datasheet(key)
    peak = entry["tflops_bf16"] if entry else None
    note = f"the dense bf16 peak of {entry['name']}, {peak:.0f} TFLOP/s" if entry else \
        f"peak: no datasheet entry for {key or (torch.cuda.get_device_name() if not args.dry_run else '?')}"
    print(f"priced against {note}")
    rows = measure(shapes, available_methods(args.dry_run), timer, peak, dtype=dtype, device=device, d=d)
    table = markdown(rows, title, note)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": key, "peak_tflops_bf16": peak, "rows": rows}, f, indent=1)
    if args.write:
        with open(args.write, "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
