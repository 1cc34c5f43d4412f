"""Benchmark: the Triton block-causal attention kernel against SDPA, FlexAttention and flash-attn on a GPU.

    python bench/attention.py [--check] [--write docs/BENCHMARKS.md] [--dtype bf16]

Shapes: one unit's queries (196 flow queries, 250 thinker-prefix queries) of the base (16/8 heads) and
large (28/4 heads) presets against caches of 1k, 4k, 16k and 32k keys plus the unit's own keys, D=128.
Every method computes the same thing (all valid cache keys and all local keys visible); SDPA and
flash-attn get the cache sliced to its valid length (the best case for them), FlexAttention a block
mask over the static capacity. Prints time, TFLOP/s and achieved HBM GB/s (bytes of K/V read + q/out).
`--check` first compares the kernel with the SDPA reference in fp32, fp16, bf16 and with an FP8 cache.
On a machine without a GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import sys

import torch

PRESETS = {"base": (16, 8), "large": (28, 4)}
CACHE_LENS = (1024, 4096, 16384, 32768)
QUERIES = {"flow": 196, "thinker": 250}
D = 128


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="check correctness in every dtype first")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--write", help="append the markdown table to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/attention.py needs an NVIDIA GPU (torch.cuda.is_available() is False); nothing to measure here.")
        return 0
    from triton.testing import do_bench

    import kernels.ops  # noqa: F401
    if args.check and not all(r["ok"] for r in check()):
        sys.exit("kernel check failed")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    methods = available_methods()
    rows = []
    for preset, (hq, hkv) in PRESETS.items():
        for kind, n_q in QUERIES.items():
            for n in CACHE_LENS:
                q, ck, cv, cl, lk, lv = inputs(1, hq, hkv, n_q, n, dtype)
                flops = 4 * hq * n_q * (n + n_q) * D
                bytes_moved = 2 * hkv * (n + n_q) * D * ck.element_size() + 2 * q.numel() * q.element_size()
                row = {"preset": preset, "queries": f"{kind} {n_q}", "keys": n}
                for name, fn in methods.items():
                    try:
                        ms = do_bench(fn(q, ck, cv, cl, lk, lv), warmup=25, rep=100)
                        row[name] = (ms, flops / ms / 1e9, bytes_moved / ms / 1e6)
                    except Exception as e:  # a backend that cannot run a shape is reported, not hidden
                        row[name] = str(e).splitlines()[0][:60]
                rows.append(row)
                print(format_row(row, methods), flush=True)
    table = markdown(rows, methods, dtype)
    print(table)
    if args.write:
        with open(args.write, "a") as f:
            f.write(table)
    return 0


def inputs(b, hq, hkv, n_q, cache_len, dtype, capacity=None):
    capacity = capacity or cache_len
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dtype, generator=g)  # noqa: E731
    return (r(b, hq, n_q, D), r(b, hkv, capacity, D), r(b, hkv, capacity, D),
            torch.full((b,), cache_len, device="cuda", dtype=torch.int64), r(b, hkv, n_q, D), r(b, hkv, n_q, D))


def available_methods():
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def triton_kernel(q, ck, cv, cl, lk, lv):
        return lambda: torch.ops.streamer.block_attention(q, ck, cv, cl, lk, lv, None, None, 0)

    def sdpa(backend):
        def make(q, ck, cv, cl, lk, lv):
            n = int(cl[0])
            k, v = torch.cat([ck[:, :, :n], lk], 2), torch.cat([cv[:, :, :n], lv], 2)

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

    methods = {"triton (ours)": triton_kernel, "sdpa flash": sdpa(SDPBackend.FLASH_ATTENTION),
               "sdpa efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION), "sdpa cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
               "flex (compiled)": flex}
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
        pass
    return methods


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
    ks, vs = ck.float().abs().amax(dim=(0, 2, 3)) / 448, cv.float().abs().amax(dim=(0, 2, 3)) / 448
    ck8 = (ck.float() / ks[None, :, None, None]).to(torch.float8_e4m3fn)
    cv8 = (cv.float() / vs[None, :, None, None]).to(torch.float8_e4m3fn)
    got = block_attention_triton(q, ck8, cv8, cl, lk, lv, ks, vs).float()
    err = (got - block_attention_reference(q, ck8, cv8, cl, lk, lv, ks, vs).float()).abs().max().item()
    rows.append({"case": "bf16 queries, FP8 E4M3 cache (per-head scales) Lq=196 keys=4096", "max_abs": err,
                 "tolerance": 3e-2, "ok": err <= 3e-2})
    for r in rows:
        print(f"check {r['case']}: max abs {r['max_abs']:.2e} ({'ok' if r['ok'] else 'FAILED'})")
    return rows


def format_row(row, methods) -> str:
    cells = [f"{row['preset']:5} {row['queries']:12} {row['keys']:6}"]
    for name in methods:
        r = row[name]
        cells.append(f"{name}: {r[0]:.3f} ms" if isinstance(r, tuple) else f"{name}: {r}")
    return " | ".join(cells)


def markdown(rows, methods, dtype) -> str:
    gpu = torch.cuda.get_device_name()
    peak = torch.cuda.get_device_properties(0)
    out = [f"\n### Attention kernel, {gpu}, {dtype}, torch {torch.__version__}\n",
           f"`python bench/attention.py` ({peak.multi_processor_count} SMs). Time in ms (TFLOP/s, GB/s).\n",
           "| preset | queries | keys | " + " | ".join(methods) + " |",
           "| --- | --- | ---: | " + " | ".join("---:" for _ in methods) + " |"]
    for row in rows:
        cells = []
        for name in methods:
            r = row[name]
            cells.append(f"{r[0]:.3f} ({r[1]:.0f}, {r[2]:.0f})" if isinstance(r, tuple) else f"n/a: {r}")
        out.append(f"| {row['preset']} | {row['queries']} | {row['keys']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
