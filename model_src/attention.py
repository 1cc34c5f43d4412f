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


ATTN_IMPLS = ("torch", "triton")


def attend(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, cache_len: torch.Tensor,
           local_k: torch.Tensor, local_v: torch.Tensor, local_mask: torch.Tensor | None,
           impl: str = "torch") -> torch.Tensor:
    """Masked softmax attention over cache + local keys.

    q [B, Hq, L, D] (Hq a multiple of Hkv); cache_k/v [B, Hkv, Cap, D] (Cap may be 0), valid below
    cache_len [B]; local_k/v [B, Hkv, Ll, D]; local_mask bool [B|1, 1, L, Ll], or None when every
    query sees every local key (the streaming steps). Returns [B, Hq, L, D]; scale D ** -0.5.

    impl "torch": matmul + float32 softmax here. impl "triton": the kernel `streamer::block_attention`
    (kernels/), for the streaming steps (local_mask None); an explicit local mask (the offline
    forward, a training path) always runs here in torch.
    """
    if impl == "triton" and local_mask is None:
        from kernels.ops import block_attention

        return block_attention(q, cache_k, cache_v, cache_len, local_k, local_v, None, None, 0)
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attention impl must be one of {ATTN_IMPLS}, got {impl!r}")
    cache_valid = (torch.arange(cache_k.shape[2], device=q.device)[None, :] < cache_len[:, None])[:, None, None]
    if local_mask is None:
        local_mask = torch.ones(1, 1, 1, local_k.shape[2], dtype=torch.bool, device=q.device)
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
