"""A file with a fixed-size header that describes everything written so far (WAV, .npy): after each
append the header is rewritten and the file flushed, so a reader sees a valid file at any moment."""
from __future__ import annotations

import os
from pathlib import Path


class GrowingFile:
    """Subclasses give `_header()` (always the same length) and call `_append(data)` after updating the
    counts the header reads; set those counts before calling `__init__`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "wb")
        self._file.write(self._header())
        self._file.flush()

    def _header(self) -> bytes:
        raise NotImplementedError

    def _append(self, data: bytes) -> None:
        """Write `data` at the end, then the header for the new length at the start; flush."""
        self._file.write(data)
        self._file.seek(0)
        self._file.write(self._header())
        self._file.seek(0, os.SEEK_END)
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
