"""A file with a fixed-size header that describes everything written so far (WAV, .npy): after each
append the header is rewritten, so a reader sees a valid file at any moment.

The file is always new: created with O_CREAT | O_EXCL | O_NOFOLLOW, so a link or file planted at its
name is never followed or overwritten (the open fails, naming it). Writes go straight to the
descriptor (no buffer that a failed write, e.g. a full disk, would leave half-flushed), so `cut` can
bring the file back to a whole number of items."""
from __future__ import annotations

import os
from pathlib import Path

NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_new(path: str | Path, mode: str = "w", perms: int = 0o644):
    """Open a file that must not exist yet (no link followed, nothing truncated), created with `perms`
    (before the umask) -> a file object (text mode "w" by default, "wb" for bytes)."""
    fd = os.open(path, NEW_FILE, perms)
    return os.fdopen(fd, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"}))


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class GrowingFile:
    """Subclasses give `_header()` (always the same length), `_item_bytes`, `_count()` / `_set_count(n)`
    (the items the header counts), and call `_append(data)` after raising the count; set the count
    before `__init__`."""

    _item_bytes = 1

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, NEW_FILE, 0o644)
        self._end = 0
        header = self._header()
        _write_all(self._fd, header, 0)
        self._end = len(header)

    def _header(self) -> bytes:
        raise NotImplementedError

    def _count(self) -> int:
        raise NotImplementedError

    def _set_count(self, count: int) -> None:
        raise NotImplementedError

    def _append(self, data: bytes) -> None:
        """Write `data` at the end, then the header for the new length at the start."""
        _write_all(self._fd, data, self._end)
        self._end += len(data)
        _write_all(self._fd, self._header(), 0)

    def cut(self, count: int) -> None:
        """Keep only the first `count` items (a failed append may have left part of one, or a unit the
        other outputs lack): the file is cut to header + count items and the header rewritten."""
        count = min(count, self._count())
        self._set_count(count)
        header = self._header()
        self._end = len(header) + count * self._item_bytes
        os.ftruncate(self._fd, self._end)
        _write_all(self._fd, header, 0)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _process_umask() -> int:
    """This process's umask, read without changing it (os.umask(0) would open a window in which other
    threads create files world-writable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # no /proc: read once at import, with a mask that opens nothing meanwhile
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def write_replacing(path: str | Path, write) -> None:
    """Make `path` by `write(tmp)` into a new private file beside it (mkstemp: O_EXCL, same suffix, so
    a writer choosing the format by extension is not confused), then rename it over `path`: a link
    planted at `path` is replaced, never written through, and a crash never leaves half a file."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # the mode a plain open would have given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_replacing(path: str | Path, text: str) -> None:
    """`text` (UTF-8) written to `path` through `write_replacing`: a planted link is replaced, never followed."""
    write_replacing(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
