"""The KV cache as preallocated numpy buffers (sink units + a ring window), written one unit at a time
by `unitio.units.write_unit`, the append `model_src.kv_cache.append_unit` runs too (without torch here)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from unitio.units import write_unit


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
        write_unit(self.k, self.v, self.length, unit_index, k_delta, v_delta, self.spec.sink_units,
                   self.spec.window_units)

    def feeds(self) -> dict[str, np.ndarray]:
        return {"cache_k": self.k, "cache_v": self.v, "cache_len": self.length}
