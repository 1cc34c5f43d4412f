"""Block-causal attention of one unit's queries against a static KV cache plus local keys (Triton).

    out = softmax(q k^T * D**-0.5 + mask) v

q [B, Hq, Lq, D]; cache_k/v [B, Hkv, Cap, D], valid below cache_len [B] (a tensor: shapes never
change); local_k/v [B, Hkv, Ll, D], the unit's own keys (the last Lq of them belong to the queries,
earlier ones were computed earlier in the unit). GQA: Hq a multiple of Hkv. With `causal_tail = n`,
the last n local keys are token-causal (text_out): query i sees tail key j only if it is itself in
the tail and j <= i; every query sees every other local key and every valid cache key.

Flash-decoding: the cache is split into chunks that run as separate programs (so a long cache fills
the GPU even with few queries), each writing a partial output and its log-sum-exp; a second kernel
combines them. The query heads that share a KV head are folded into the row axis of one program, so
each K/V tile is loaded once per KV head. FP8 (E4M3) caches are read with per-KV-head scales.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .tiling import Geometry, Tiles, geometry, interpreter_geometry, launch_geometry

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@triton.jit
def _partial_kernel(Q, KC, VC, CACHE_LEN, KL, VL,
                    s_qb, s_qh, s_qm, s_kcb, s_kch, s_kcn, s_vcb, s_vch, s_vcn,
                    s_klb, s_klh, s_kln, s_vlb, s_vlh, s_vln, s_ob, s_oh, s_om, s_os, s_lb, s_lh, s_lm,
                    n_kv_heads, n_q, n_local, chunk, OP, LSEP,
                    SM_SCALE: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, N_SPLITS: tl.constexpr, CAUSAL_TAIL: tl.constexpr):
    """A float cache. Parameters in the order a TensorRT AOT plugin launches a kernel: inputs, int32
    scalars, outputs (then constexprs, compiled in)."""
    _partial_body(Q, KC, VC, CACHE_LEN, KL, VL, Q, Q, s_qb, s_qh, s_qm, s_kcb, s_kch, s_kcn, s_vcb, s_vch, s_vcn,
                  s_klb, s_klh, s_kln, s_vlb, s_vlh, s_vln, s_ob, s_oh, s_om, s_os, s_lb, s_lh, s_lm,
                  n_kv_heads, n_q, n_local, chunk, OP, LSEP,
                  SM_SCALE, GROUP, D, BLOCK_M, BLOCK_N, N_SPLITS, CAUSAL_TAIL, False)


@triton.jit
def _partial_kernel_fp8(Q, KC, VC, CACHE_LEN, KL, VL, KSCALE, VSCALE,
                        s_qb, s_qh, s_qm, s_kcb, s_kch, s_kcn, s_vcb, s_vch, s_vcn,
                        s_klb, s_klh, s_kln, s_vlb, s_vlh, s_vln, s_ob, s_oh, s_om, s_os, s_lb, s_lh, s_lm,
                        n_kv_heads, n_q, n_local, chunk, OP, LSEP,
                        SM_SCALE: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, N_SPLITS: tl.constexpr, CAUSAL_TAIL: tl.constexpr):
    """An FP8 E4M3 cache with per-KV-head scales KSCALE, VSCALE [Hkv] (float32)."""
    _partial_body(Q, KC, VC, CACHE_LEN, KL, VL, KSCALE, VSCALE, s_qb, s_qh, s_qm, s_kcb, s_kch, s_kcn, s_vcb, s_vch,
                  s_vcn, s_klb, s_klh, s_kln, s_vlb, s_vlh, s_vln, s_ob, s_oh, s_om, s_os, s_lb, s_lh, s_lm,
                  n_kv_heads, n_q, n_local, chunk, OP, LSEP,
                  SM_SCALE, GROUP, D, BLOCK_M, BLOCK_N, N_SPLITS, CAUSAL_TAIL, True)


@triton.jit
def _partial_body(Q, KC, VC, CACHE_LEN, KL, VL, KSCALE, VSCALE,
                  s_qb, s_qh, s_qm, s_kcb, s_kch, s_kcn, s_vcb, s_vch, s_vcn,
                  s_klb, s_klh, s_kln, s_vlb, s_vlh, s_vln, s_ob, s_oh, s_om, s_os, s_lb, s_lh, s_lm,
                  n_kv_heads, n_q, n_local, chunk, OP, LSEP,
                  sm_scale: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, N_SPLITS: tl.constexpr, CAUSAL_TAIL: tl.constexpr, FP8: tl.constexpr):
    pid_m, pid_bh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, kvh = pid_bh // n_kv_heads, pid_bh % n_kv_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # folded (query head in group, query) rows
    row_ok = rows < GROUP * n_q
    head = kvh * GROUP + rows // n_q
    qi = rows % n_q
    d = tl.arange(0, D)
    q = tl.load(Q + b * s_qb + head[:, None] * s_qh + qi[:, None] * s_qm + d[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    if split < N_SPLITS:  # a chunk of the cache, up to its valid length
        kscale, vscale = 1.0, 1.0
        if FP8:
            kscale = tl.load(KSCALE + kvh)
            vscale = tl.load(VSCALE + kvh)
        start = split * chunk
        end = tl.minimum(start + chunk, tl.load(CACHE_LEN + b).to(tl.int32))
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            ok = n < end
            k = tl.load(KC + b * s_kcb + kvh * s_kch + n[None, :] * s_kcn + d[:, None], mask=ok[None, :], other=0.0)
            v = tl.load(VC + b * s_vcb + kvh * s_vch + n[:, None] * s_vcn + d[None, :], mask=ok[:, None], other=0.0)
            if FP8:
                k = (k.to(tl.float32) * kscale).to(q.dtype)
                v = (v.to(tl.float32) * vscale).to(q.dtype)
            s = tl.dot(q, k) * sm_scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_i, l_i, acc = _online_softmax(s, v, m_i, l_i, acc)
    else:  # the local keys, with the token-causal tail
        q_pos = n_local - n_q + qi
        for n0 in tl.range(0, n_local, BLOCK_N, num_stages=1):  # a few tiles: not pipelined, no extra buffers
            n = n0 + tl.arange(0, BLOCK_N)
            ok = n < n_local
            k = tl.load(KL + b * s_klb + kvh * s_klh + n[None, :] * s_kln + d[:, None], mask=ok[None, :], other=0.0)
            v = tl.load(VL + b * s_vlb + kvh * s_vlh + n[:, None] * s_vln + d[None, :], mask=ok[:, None], other=0.0)
            s = tl.dot(q, k) * sm_scale
            visible = ok[None, :]
            if CAUSAL_TAIL > 0:
                tail_start = n_local - CAUSAL_TAIL
                in_tail = (n[None, :] >= tail_start)
                visible = visible & (~in_tail | ((q_pos[:, None] >= tail_start) & (n[None, :] <= q_pos[:, None])))
            s = tl.where(visible, s, float("-inf"))
            m_i, l_i, acc = _online_softmax(s, v, m_i, l_i, acc)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    lse = m_i + tl.log(l_i)  # -inf where this split saw no key
    base = b * s_ob + head * s_oh + qi * s_om + split * s_os
    tl.store(OP + base[:, None] + d[None, :], out, mask=row_ok[:, None])
    tl.store(LSEP + b * s_lb + head * s_lh + qi * s_lm + split, lse, mask=row_ok)


@triton.jit
def _online_softmax(s, v, m_i, l_i, acc):
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _combine_kernel(OP, LSEP, Q, n_rows, s_os, s_ls, OUT, D: tl.constexpr, SPLITS: tl.constexpr, ROWS: tl.constexpr):
    """Q is not read: it is an input so the plugin node's output takes q's dtype and shape."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # flattened (b, head, query)
    ok = rows < n_rows
    d = tl.arange(0, D)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    for sp in tl.static_range(SPLITS):
        m = tl.maximum(m, tl.load(LSEP + rows * s_ls + sp, mask=ok, other=0.0))
    acc = tl.zeros([ROWS, D], tl.float32)
    den = tl.zeros([ROWS], tl.float32)
    for sp in tl.static_range(SPLITS):
        w = tl.exp(tl.load(LSEP + rows * s_ls + sp, mask=ok, other=0.0) - m)
        acc += w[:, None] * tl.load(OP + rows[:, None] * s_os + sp * D + d[None, :], mask=ok[:, None], other=0.0)
        den += w
    tl.store(OUT + rows[:, None] * D + d[None, :], (acc / den[:, None]).to(OUT.dtype.element_ty), mask=ok[:, None])


def interpreted() -> bool:
    """Whether Triton runs in its CPU interpreter (TRITON_INTERPRET=1), which wants the largest tiles."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def plan_launch(q: torch.Tensor, cache_k: torch.Tensor, tiles: tuple | None = None) -> Geometry:
    """The launch for these inputs: on a GPU `launch_geometry` (the table the ONNX export and the TensorRT
    plugins use too), under the interpreter `interpreter_geometry`; `tiles` = (BLOCK_M, BLOCK_N, target
    programs[, warps, stages]) overrides both (tests)."""
    b, hq, n_q, d = q.shape
    hkv, cap = cache_k.shape[1], cache_k.shape[2]
    if tiles is not None:
        block_m, block_n, target, *rest = tiles
        return geometry(b, hq, hkv, n_q, cap, Tiles(block_m, block_n, *(rest or (4, 3))), target)
    if interpreted():
        return interpreter_geometry(b, hq, hkv, n_q, cap)
    return launch_geometry(b, hq, hkv, n_q, d, cap, fp8=cache_k.dtype in FP8_DTYPES)


def block_attention_triton(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, cache_len: torch.Tensor,
                           local_k: torch.Tensor, local_v: torch.Tensor, k_scale: torch.Tensor | None = None,
                           v_scale: torch.Tensor | None = None, causal_tail: int = 0,
                           launch=lambda kernel: kernel, tiles: tuple | None = None) -> torch.Tensor:
    """Launch the two kernels (arguments as in the module docstring); returns [B, Hq, Lq, D] in q's dtype.

    `launch` wraps each kernel before launching (the torch custom op passes `wrap_triton`); `tiles`
    overrides the launch geometry (`plan_launch`).
    """
    b, hq, n_q, d = q.shape
    g = plan_launch(q, cache_k, tiles)
    partial = torch.empty(b, hq, n_q, g.splits + 1, d, device=q.device, dtype=torch.float32)
    lse = torch.empty(b, hq, n_q, g.splits + 1, device=q.device, dtype=torch.float32)
    launch_partial(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale, v_scale, causal_tail, partial, lse,
                   g.block_m, g.block_n, g.chunk, launch, num_warps=g.num_warps, num_stages=g.num_stages)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous, whatever q's strides
    launch_combine(partial, lse, q, out, launch)
    return out


def launch_partial(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale, v_scale, causal_tail: int,
                   partial: torch.Tensor, lse: torch.Tensor, block_m: int, block_n: int, chunk: int,
                   launch=lambda kernel: kernel, num_warps: int = 4, num_stages: int = 3) -> None:
    """The first kernel: partial [B, Hq, Lq, S + 1, D] and lse [B, Hq, Lq, S + 1] (float32), S cache chunks
    of `chunk` slots and the local keys last (the TensorRT JIT plugin launches it alone too)."""
    b, hq, n_q, d = q.shape
    hkv, n_local = cache_k.shape[1], local_k.shape[2]
    group, splits = hq // hkv, partial.shape[3] - 1
    fp8 = cache_k.dtype in FP8_DTYPES
    strides = (q.stride(0), q.stride(1), q.stride(2), cache_k.stride(0), cache_k.stride(1), cache_k.stride(2),
               cache_v.stride(0), cache_v.stride(1), cache_v.stride(2), local_k.stride(0), local_k.stride(1),
               local_k.stride(2), local_v.stride(0), local_v.stride(1), local_v.stride(2),
               partial.stride(0), partial.stride(1), partial.stride(2), partial.stride(3),
               lse.stride(0), lse.stride(1), lse.stride(2))
    scales = (k_scale, v_scale) if fp8 else ()
    kernel = _partial_kernel_fp8 if fp8 else _partial_kernel
    launch(kernel)[(triton.cdiv(group * n_q, block_m), b * hkv, splits + 1)](
        q, cache_k, cache_v, cache_len, local_k, local_v, *scales, *strides, hkv, n_q, n_local, chunk, partial, lse,
        SM_SCALE=d**-0.5, GROUP=group, D=d, BLOCK_M=block_m, BLOCK_N=block_n, N_SPLITS=splits,
        CAUSAL_TAIL=causal_tail, num_warps=num_warps, num_stages=num_stages)


def launch_combine(partial: torch.Tensor, lse: torch.Tensor, q: torch.Tensor, out: torch.Tensor,
                   launch=lambda kernel: kernel) -> None:
    """The second kernel: the partials weighted by their log-sum-exps -> out [B, Hq, Lq, D] (contiguous)."""
    b, hq, n_q, parts, d = partial.shape
    n_rows = b * hq * n_q
    rows = triton.next_power_of_2(n_rows) if interpreted() else 16
    launch(_combine_kernel)[(triton.cdiv(n_rows, rows),)](partial, lse, q, n_rows, partial.stride(2), lse.stride(2), out,
                                                          D=d, SPLITS=parts, ROWS=rows)
