"""The static KV cache: fixed-capacity tensors plus a length, and the append that happens outside steps.

Layout: k, v [n_layers, B, Hkv, capacity, D] with capacity = cache_units * tokens_per_unit, and
length [B] int64 = number of valid slots (always a prefix of the capacity). Unit j is written to slot
`cache_slot(j)`: the first `sink_units` units stay forever, later ones go round a ring of
`window_units` slots. Keys are stored with RoPE applied at their absolute position, so the order of the
slots does not matter to attention and the ring needs no re-rotation.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from unitio.names import FP8_E4M3_MAX
from unitio.units import cache_slot as shared_cache_slot
from unitio.units import write_unit

from .config import Preset


class KVCache(NamedTuple):
    k: torch.Tensor  # [n_layers, B, Hkv, capacity, D]
    v: torch.Tensor  # [n_layers, B, Hkv, capacity, D]
    length: torch.Tensor  # [B] int64, valid slots


def init_cache(p: Preset, batch: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> KVCache:
    """The empty cache of a session (zeros, length 0)."""
    shape = (p.n_layers, batch, p.n_kv_heads, p.cache_capacity, p.head_dim)
    return KVCache(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(batch, dtype=torch.int64, device=device))


def cache_slot(p: Preset, unit_index: int) -> int:
    """Unit slot (0 .. cache_units - 1) that unit `unit_index` is written to."""
    return shared_cache_slot(unit_index, p.sink_units, p.window_units)


def quantize_fp8(delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A delta [n_layers, B, Hkv, T, D] divided by its per-(layer, KV head) scale [n_layers, Hkv],
    saturated to E4M3's range, as float8_e4m3fn (what an FP8 cache stores)."""
    x = delta.float() / scale.float()[:, None, :, None, None]
    return x.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


def append_unit(p: Preset, cache: KVCache, k_delta: torch.Tensor, v_delta: torch.Tensor,
                unit_index: int, scales: torch.Tensor | None = None) -> KVCache:
    """Write one unit's delta ([n_layers, B, Hkv, T, D] each) into the cache in place; returns the cache.
    An FP8 cache quantizes it with `scales` [2, n_layers, Hkv] (Backbone.kv_cache_scales)."""
    t = p.tokens_per_unit
    if k_delta.shape[-2] != t or v_delta.shape != k_delta.shape:
        raise ValueError(f"KV delta must be [n_layers, B, Hkv, {t}, D]; got {tuple(k_delta.shape)} "
                         f"and {tuple(v_delta.shape)}")
    if cache.k.dtype == torch.float8_e4m3fn:
        if scales is None:
            raise ValueError("append_unit: an FP8 cache needs the K/V scales [2, n_layers, Hkv]")
        k_delta, v_delta = quantize_fp8(k_delta, scales[0]), quantize_fp8(v_delta, scales[1])
    write_unit(cache.k, cache.v, cache.length, unit_index, k_delta, v_delta, p.sink_units, p.window_units)
    return cache

