"""Attention of a block of queries against the static KV cache plus keys local to the block (GQA).

Two key sources, never concatenated (the cache can hold tens of thousands of keys and is not copied):
- the cache [B, Hkv, Cap, D], valid where `cache_valid` is True (a prefix of its slots);
- local keys [B, Hkv, Ll, D]: the unit's own keys (and, inside a unit, those computed before this
  block), visible where `local_mask` is True.
Grouped-query heads are handled by folding the query heads of one KV head into the query axis, so
K/V are never repeated. This is the contract of the Triton kernel in kernels/ as well.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ATTN_IMPLS = ("torch", "sdpa", "triton")
FP8_CACHE_TYPES = (torch.float8_e4m3fn,)


def attend(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, cache_len: torch.Tensor,
           local_k: torch.Tensor, local_v: torch.Tensor, local_mask: torch.Tensor | None,
           impl: str = "torch", k_scale: torch.Tensor | None = None,
           v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Masked softmax attention over cache + local keys.

    q [B, Hq, L, D] (Hq a multiple of Hkv); cache_k/v [B, Hkv, Cap, D] (Cap may be 0), valid below
    cache_len [B], in q's dtype or FP8 E4M3 with per-KV-head scales k_scale/v_scale [Hkv] (float32);
    local_k/v [B, Hkv, Ll, D]; local_mask bool [B|1, 1, L, Ll], or None when every query sees every
    local key (the streaming steps). Returns [B, Hq, L, D]; scale D ** -0.5.

    impl "torch": two matmuls (cache, local keys) + one float32 softmax here, the reference.
    impl "sdpa": `F.scaled_dot_product_attention` over the cache and local keys concatenated, with a
    boolean mask and `enable_gqa` (what a model without our kernel does; the baseline of `--attention sdpa`).
    impl "triton": the kernel `streamer::block_attention` (kernels/), for the streaming steps
    (local_mask None); an explicit local mask (the offline forward, a training path) runs in torch.
    """
    if impl == "triton" and local_mask is None:
        from kernels.ops import block_attention

        return block_attention(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale, v_scale, 0)
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attention impl must be one of {ATTN_IMPLS}, got {impl!r}")
    if cache_k.dtype in FP8_CACHE_TYPES:
        if k_scale is None or v_scale is None:
            raise ValueError("attend: an FP8 cache needs its per-KV-head k_scale and v_scale")
        cache_k, cache_v = dequantize(cache_k, k_scale, q.dtype), dequantize(cache_v, v_scale, q.dtype)
    cache_valid = (torch.arange(cache_k.shape[2], device=q.device)[None, :] < cache_len[:, None])[:, None, None]
    if local_mask is None:
        local_mask = torch.ones(1, 1, 1, local_k.shape[2], dtype=torch.bool, device=q.device)
    if impl == "sdpa":
        return _sdpa(q, cache_k, cache_v, cache_valid, local_k, local_v, local_mask)
    b, hq, n, d = q.shape
    hkv = local_k.shape[1]
    g = hq // hkv
    qg = q.reshape(b, hkv, g * n, d) * d**-0.5  # query heads of one KV head side by side

    def scores(k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = torch.matmul(qg, k.transpose(-1, -2)).float().view(b, hkv, g, n, k.shape[2])
        return s.masked_fill(~mask[:, :, None], float("-inf"))

    s = torch.cat([scores(cache_k, cache_valid), scores(local_k, local_mask)], dim=-1).softmax(-1)
    s = s.to(q.dtype).view(b, hkv, g * n, -1)
    cap = cache_k.shape[2]
    out = torch.matmul(s[..., :cap], cache_v) + torch.matmul(s[..., cap:], local_v)
    return out.view(b, hq, n, d)


def dequantize(cache: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """FP8 cache [B, Hkv, Cap, D] times its per-KV-head scale [Hkv] -> `dtype` (float32 arithmetic)."""
    return (cache.float() * scale.float()[None, :, None, None]).to(dtype)


def _sdpa(q, cache_k, cache_v, cache_valid, local_k, local_v, local_mask) -> torch.Tensor:
    """One SDPA call over [cache ++ local] keys with `enable_gqa` (K/V heads shared by their query heads, not
    repeated). The concatenation stays: a step receives the cache and its local keys as separate tensors and
    one SDPA call needs them contiguous (merging two calls by log-sum-exp needs aten's private, per-device
    ops); bench/attention.py times SDPA without it, on keys concatenated once outside the timed region."""
    b, _, n, _ = q.shape
    keys = torch.cat([cache_k, local_k], dim=2)
    values = torch.cat([cache_v, local_v], dim=2)
    mask = torch.cat([cache_valid.expand(b, 1, n, -1), local_mask.expand(b, 1, n, -1)], dim=-1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
