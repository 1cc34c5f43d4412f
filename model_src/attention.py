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


def attend(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, cache_valid: torch.Tensor,
           local_k: torch.Tensor, local_v: torch.Tensor, local_mask: torch.Tensor) -> torch.Tensor:
    """Masked softmax attention over cache + local keys.

    q [B, Hq, L, D] (Hq a multiple of Hkv); cache_k/v [B, Hkv, Cap, D] (Cap may be 0);
    cache_valid bool [B, 1, 1, Cap]; local_k/v [B, Hkv, Ll, D]; local_mask bool [B|1, 1, L, Ll].
    Every query must see at least one key. Returns [B, Hq, L, D]; softmax in float32, scale D ** -0.5.
    """
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
