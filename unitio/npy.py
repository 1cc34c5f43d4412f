"""A 1-D float32 .npy file written a chunk at a time, valid (header = length so far) after every write."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .growing import GrowingFile

_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER = 128  # magic + 2-byte length + the dict padded with spaces: room for any 1-D length


class NpyWriter(GrowingFile):
    """`write(x)` appends float32 values; the header's shape is rewritten and the file flushed each time,
    so `np.load` reads everything written so far at any moment."""

    def __init__(self, path: str | Path) -> None:
        self.count = 0
        super().__init__(path)

    def _header(self) -> bytes:
        body = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({self.count},), }}"
        pad = _HEADER - len(_MAGIC) - 2 - len(body) - 1
        return _MAGIC + (_HEADER - len(_MAGIC) - 2).to_bytes(2, "little") + (body + " " * pad + "\n").encode("latin1")

    def write(self, x: np.ndarray) -> None:
        data = np.ascontiguousarray(x, dtype="<f4").tobytes()
        self.count += int(np.size(x))
        self._append(data)

    _item_bytes = 4

    def _count(self) -> int:
        return self.count

    def _set_count(self, count: int) -> None:
        self.count = count
