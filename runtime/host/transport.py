"""Fixed-shape arrays in one shared-memory block, double-buffered: how the KV delta and the latents
move between the thinker and performer processes without pickling or allocating per unit.

    layout = pipelined_slot_layout(spec)                 # {"k_delta": ((L, 1, Hkv, T, D), "float32"), ...}
    slots = SharedSlots.create(layout, n_slots=2)        # thinker: owns the block
    twin = SharedSlots.attach(slots.name, layout, 2)     # performer: the same memory
    slots.view(k % 2, "k_delta")[...] = delta            # one memcpy; the view is made once

This is the host path's transport (CPU engines). On a GPU the device path keeps the cache on the
device and moves only the delta (runtime/device/performer.py, runtime/device/exchange.py).
"""
from __future__ import annotations

from multiprocessing import shared_memory
from types import SimpleNamespace

import numpy as np

from ..worker import Layout, attach_shm, close_shm, create_shm, slot_offsets


def pipelined_slot_layout(spec: SimpleNamespace) -> Layout:
    """One slot of the pipelined mode's block: thinker -> performer the KV delta, performer -> thinker the
    clean latents y_k and its span times (append start/end, solve start/end; perf_counter seconds)."""
    return {"k_delta": (spec.delta_shape, spec.cache_dtype), "v_delta": (spec.delta_shape, spec.cache_dtype),
            "y_audio": (spec.audio_latent_shape, "float32"), "y_video": (spec.video_latent_shape, "float32"),
            "spans": ((4,), "float64")}


class SharedSlots:
    """`n_slots` copies of `layout` in one shared-memory block; `view(slot, name)` is a numpy array on it."""

    def __init__(self, shm: shared_memory.SharedMemory, layout: Layout, n_slots: int, owner: bool) -> None:
        self.shm, self.layout, self.n_slots, self.owner = shm, layout, n_slots, owner
        offsets, self.nbytes = slot_offsets(layout, n_slots)
        self._views = {key: np.ndarray(layout[key[1]][0], np.dtype(layout[key[1]][1]), shm.buf, off)
                       for key, off in offsets.items()}

    @classmethod
    def create(cls, layout: Layout, n_slots: int = 2) -> SharedSlots:
        """A new zeroed block (this process unlinks it on close)."""
        _, nbytes = slot_offsets(layout, n_slots)
        shm = create_shm(nbytes)
        np.frombuffer(shm.buf, np.uint8)[:] = 0
        return cls(shm, layout, n_slots, owner=True)

    @classmethod
    def attach(cls, name: str, layout: Layout, n_slots: int = 2) -> SharedSlots:
        """The block another process created, by name (its creator alone unlinks it)."""
        return cls(attach_shm(name), layout, n_slots, owner=False)

    @property
    def name(self) -> str:
        return self.shm.name

    def view(self, slot: int, name: str) -> np.ndarray:
        """The array `name` of slot `slot % n_slots` (a view: writing it writes the shared memory)."""
        return self._views[slot % self.n_slots, name]

    def close(self) -> None:
        """Drop the views, close; the creating process also unlinks the block."""
        self._views.clear()
        close_shm(self.shm, self.owner)
