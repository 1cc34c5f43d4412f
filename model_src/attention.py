"""Attention of a block of queries against past keys plus the block's own keys (GQA).

This is the one place the backbone calls attention, so the Triton kernel (kernels/) can replace
SDPA behind `attn_impl` without touching the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked softmax attention with grouped-query heads.

    q [B, Hq, Lq, D]; k, v [B, Hkv, Lk, D] with Hq a multiple of Hkv; mask bool, broadcastable to
    [B, 1, Lq, Lk], True where a query may attend a key (every query must see at least one key).
    Returns [B, Hq, Lq, D]. Scale is D ** -0.5 (Qwen3).
    """
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
