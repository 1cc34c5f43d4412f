"""Rotary position embeddings (Qwen3's rotate-half convention), exact for very long sessions.

Positions grow without bound in a live session (252 tokens per 160 ms unit at the base preset: about
5.7 M after an hour). `position * inv_freq` in float32 loses the high-frequency angles long before that,
so the angle is computed as `hi * (2**12 * inv_freq mod 2 pi) + lo * inv_freq` with
`position = hi * 2**12 + lo`; the per-frequency constant is reduced in float64 once. For positions below
4096 this is exactly transformers' Qwen3 computation. Everything stays in int64/float32, so it exports.
"""
from __future__ import annotations

import math

import torch

_SPLIT_BITS = 12


def inv_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies, as transformers computes them."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rope_tables(head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inv_freq [D/2] float32, coarse [D/2] float32): coarse = (2**12 * inv_freq) mod 2 pi, in float64."""
    inv = inv_frequencies(head_dim, theta)
    coarse = torch.remainder(inv.double() * (1 << _SPLIT_BITS), 2 * math.pi).float()
    return inv, coarse


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, coarse: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, L] int64 -> (cos, sin), each [B, 1, L, D] float32, ready to broadcast over heads."""
    hi = torch.div(positions, 1 << _SPLIT_BITS, rounding_mode="floor")
    lo = positions - hi * (1 << _SPLIT_BITS)
    angle = hi[..., None].float() * coarse + lo[..., None].float() * inv_freq  # [B, L, D/2]
    angle = torch.cat([angle, angle], dim=-1)[:, None]
    return angle.cos(), angle.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, D] rotated by (cos, sin) [B, 1, L, D]; computed in x's dtype like transformers."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
