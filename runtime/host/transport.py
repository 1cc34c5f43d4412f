"""Fixed-shape arrays in one shared-memory block, double-buffered: how the KV delta and the latents
move between the thinker and performer processes without pickling or allocating per unit.

    layout = {"k_delta": ((L, 1, Hkv, T, D), "float32"), ...}
    slots = SharedSlots.create(layout, n_slots=2)       # thinker: owns the block
    twin = SharedSlots.attach(slots.name, layout, 2)     # performer: the same memory
    slots.view(k % 2, "k_delta")[...] = delta            # one memcpy; the view is made once

This is the host path's transport (CPU engines). On a GPU the device path keeps the cache on the
device and moves only the delta (runtime/device/performer.py, runtime/device/exchange.py).
"""
from __future__ import annotations

import sys
from multiprocessing import shared_memory

import numpy as np

ALIGN = 256  # bytes; every array starts on a 256-byte boundary (friendly to DMA and SIMD)

Layout = dict[str, tuple[tuple[int, ...], str]]


def slot_offsets(layout: Layout, n_slots: int, itemsize=lambda dtype: np.dtype(dtype).itemsize
                 ) -> tuple[dict[tuple[int, str], int], int]:
    """({(slot, name): byte offset}, total bytes) of `n_slots` copies of `layout`, each array ALIGN-aligned;
    `itemsize(dtype name)` gives an element's bytes (numpy's by default; the device exchange passes torch's,
    which knows bfloat16 and float8)."""
    offsets, pos = {}, 0
    for slot in range(n_slots):
        for name, (shape, dtype) in layout.items():
            offsets[slot, name] = pos
            nbytes = int(np.prod(shape)) * itemsize(dtype)
            pos += -(-nbytes // ALIGN) * ALIGN
    return offsets, max(pos, ALIGN)


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
        shm = shared_memory.SharedMemory(create=True, size=nbytes)
        np.frombuffer(shm.buf, np.uint8)[:] = 0
        return cls(shm, layout, n_slots, owner=True)

    @classmethod
    def attach(cls, name: str, layout: Layout, n_slots: int = 2) -> SharedSlots:
        """The block another process created, by name (its creator alone unlinks it)."""
        shm = shared_memory.SharedMemory(name=name)
        if sys.version_info < (3, 13):  # attaching registers the block with this process's resource
            # tracker, which would unlink it when this process exits (Python 3.13 has track=False)
            from multiprocessing import resource_tracker

            resource_tracker.unregister(shm._name, "shared_memory")
        return cls(shm, layout, n_slots, owner=False)

    @property
    def name(self) -> str:
        return self.shm.name

    def view(self, slot: int, name: str) -> np.ndarray:
        """The array `name` of slot `slot % n_slots` (a view: writing it writes the shared memory)."""
        return self._views[slot % self.n_slots, name]

    def close(self) -> None:
        """Drop the views, close; the creating process also unlinks the block."""
        self._views.clear()
        try:
            self.shm.close()
        except BufferError:  # a caller still holds a view; the block goes when the process does
            pass
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
