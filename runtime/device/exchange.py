"""Named fixed-shape tensors in one byte buffer that two processes share: the two-process placement's
exchange of the KV delta (thinker -> performer) and y_k (performer -> thinker).

On a GPU the buffer is device memory, shared once by a CUDA IPC handle (the performer maps it; per
unit nothing but a 12-byte message crosses the pipe); on a CPU it is a POSIX shared-memory block. Both
give torch tensor views made once, double-buffered by unit parity. The handle is plain JSON (no
pickle): the IPC handle bytes in base64, or the shared-memory block's name.
"""
from __future__ import annotations

import base64
from multiprocessing import shared_memory

import numpy as np
import torch

from ..worker import Layout, attach_shm, close_shm, create_shm, slot_offsets
from .device import Device, torch_dtype


def _offsets(layout: Layout, n_slots: int) -> tuple[dict[tuple[int, str], int], int]:
    """The worker protocol's slot layout, with torch's element sizes (bfloat16 and float8 included)."""
    return slot_offsets(layout, n_slots, lambda dtype: torch.empty((), dtype=torch_dtype(dtype)).element_size())


class Exchange:
    """`n_slots` copies of `layout` in one buffer; `tensor(slot, name)` is a view of it."""

    def __init__(self, buffer: torch.Tensor, layout: Layout, n_slots: int, handle: dict, owner,
                 shm: shared_memory.SharedMemory | None = None) -> None:
        self.buffer, self.layout, self.n_slots, self.handle, self._shm = buffer, layout, n_slots, handle, shm
        self._owner = owner
        offsets, _ = _offsets(layout, n_slots)
        self._views = {}
        for (slot, name), off in offsets.items():
            shape, dtype = layout[name]
            dt = torch_dtype(dtype)
            n = int(np.prod(shape)) * torch.empty((), dtype=dt).element_size()
            self._views[slot, name] = buffer[off:off + n].view(dt).view(shape)

    @classmethod
    def create(cls, layout: Layout, device: Device, n_slots: int = 2) -> "Exchange":
        """A new zeroed buffer on `device` (this process frees it on close)."""
        _, nbytes = _offsets(layout, n_slots)
        if device.cuda:
            buffer = torch.zeros(nbytes, dtype=torch.uint8, device=device.torch)
            storage = buffer.untyped_storage()
            (dev, handle, size, offset, ref_handle, ref_offset, event_handle, event_sync) = storage._share_cuda_()
            info = {"kind": "cuda", "device": int(dev), "handle": base64.b64encode(handle).decode(), "size": int(size),
                    "offset": int(offset), "ref_handle": base64.b64encode(ref_handle).decode(),
                    "ref_offset": int(ref_offset), "event_handle": base64.b64encode(event_handle).decode(),
                    "event_sync": bool(event_sync), "nbytes": nbytes}
            return cls(buffer, layout, n_slots, info, owner=True)
        shm = create_shm(nbytes)
        buffer = torch.frombuffer(shm.buf, dtype=torch.uint8)
        buffer.zero_()
        return cls(buffer, layout, n_slots, {"kind": "shm", "name": shm.name, "nbytes": nbytes}, True, shm)

    @classmethod
    def attach(cls, handle: dict, layout: Layout, n_slots: int = 2) -> "Exchange":
        """The buffer another process created, from its `handle` (checked against `layout`)."""
        _, nbytes = _offsets(layout, n_slots)
        if handle.get("nbytes") != nbytes:
            raise ValueError(f"exchange: the layout needs {nbytes} bytes, the handle describes {handle.get('nbytes')}")
        if handle["kind"] == "cuda":
            b64 = base64.b64decode
            storage = torch.UntypedStorage._new_shared_cuda(
                handle["device"], b64(handle["handle"]), handle["size"], handle["offset"], b64(handle["ref_handle"]),
                handle["ref_offset"], b64(handle["event_handle"]), handle["event_sync"])
            typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.uint8, _internal=True)
            buffer = torch._utils._rebuild_tensor(typed, 0, (nbytes,), (1,))  # as torch.multiprocessing does
            return cls(buffer, layout, n_slots, handle, owner=False)
        shm = attach_shm(handle["name"])
        return cls(torch.frombuffer(shm.buf, dtype=torch.uint8), layout, n_slots, handle, False, shm)

    @property
    def name(self) -> str:
        return self.handle.get("name", f"cuda-ipc:{self.handle.get('device')}")

    def tensor(self, slot: int, name: str) -> torch.Tensor:
        return self._views[slot % self.n_slots, name]

    def close(self) -> None:
        """Drop the views and the buffer; the creating process also unlinks a shared-memory block."""
        self._views.clear()
        self.buffer = None
        if self._shm is not None:
            close_shm(self._shm, self._owner)
            self._shm = None
