"""PyTorch reference for kernels/attention.py: SDPA on the concatenated keys with an explicit mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def local_visibility(n_q: int, n_local: int, causal_tail: int, device=None) -> torch.Tensor:
    """bool [Lq, Ll]: which local keys each query sees (the last Lq local keys are the queries' own)."""
    q_pos = n_local - n_q + torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_local, device=device)[None, :]
    if causal_tail == 0:
        return torch.ones(n_q, n_local, dtype=torch.bool, device=device)
    tail_start = n_local - causal_tail
    return (j < tail_start) | ((q_pos >= tail_start) & (j <= q_pos))


def dequantize_cache(cache: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """An FP8 cache [B, Hkv, Cap, D] times its per-KV-head scale [Hkv] -> `dtype`; others just cast."""
    if scale is None:
        return cache.to(dtype)
    return (cache.float() * scale.float()[None, :, None, None]).to(dtype)


def block_attention_reference(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale=None, v_scale=None,
                              causal_tail: int = 0) -> torch.Tensor:
    """Same contract as `kernels.attention.block_attention_triton`, computed with SDPA."""
    b, hq, n_q, _ = q.shape
    hkv, cap, n_local = cache_k.shape[1], cache_k.shape[2], local_k.shape[2]
    keys = torch.cat([dequantize_cache(cache_k, k_scale, q.dtype), local_k], dim=2)
    values = torch.cat([dequantize_cache(cache_v, v_scale, q.dtype), local_v], dim=2)
    cache_ok = (torch.arange(cap, device=q.device)[None, :] < cache_len[:, None])[:, None, None, :]
    local_ok = local_visibility(n_q, n_local, causal_tail, q.device)[None, None]
    mask = torch.cat([cache_ok.expand(b, 1, n_q, cap), local_ok.expand(b, 1, n_q, n_local)], dim=-1)
    group = hq // hkv
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
