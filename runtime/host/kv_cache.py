"""The KV cache as preallocated numpy buffers (sink units + a ring window), written one unit at a time.
The same arithmetic as `model_src.kv_cache.append_unit`, without torch."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from unitio.units import cache_slot


class KVBuffers:
    """cache_k / cache_v [L, 1, Hkv, capacity, D] and cache_len [1] (int64): the thinker_step/flow_step inputs."""

    def __init__(self, spec: SimpleNamespace) -> None:
        self.spec = spec
        self.k = np.zeros(spec.cache_shape, np.dtype(spec.cache_dtype))
        self.v = np.zeros_like(self.k)
        self.k.fill(0)  # touch every page now: no first-write page faults in the unit loop, and the
        self.v.fill(0)  # session's memory is at its final size from unit 0
        self.length = np.zeros((1,), np.int64)
        self.units = spec.sink_units + spec.window_units

    def append(self, unit_index: int, k_delta: np.ndarray, v_delta: np.ndarray) -> None:
        """Write unit `unit_index`'s keys/values [L, 1, Hkv, tokens_per_unit, D] into its slot (in place)."""
        t = self.spec.unit_tokens
        start = cache_slot(unit_index, self.spec.sink_units, self.spec.window_units) * t
        self.k[..., start:start + t, :] = k_delta
        self.v[..., start:start + t, :] = v_delta
        self.length[0] = min(unit_index + 1, self.units) * t

    def feeds(self) -> dict[str, np.ndarray]:
        return {"cache_k": self.k, "cache_v": self.v, "cache_len": self.length}
