"""Ctrl-C and SIGTERM while a session streams: each raises in the main thread (KeyboardInterrupt,
`Terminated`), but never in the middle of writing a unit to disk, so the outputs can be finalised.

    with stop_signals():           # SIGINT/SIGTERM raise here (previous handlers restored after)
        for unit in units:
            r = session.step(...)
            with outputs.writing():  # a signal arriving in here waits until the unit is written
                outputs.add(...)
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report them


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: no `except Exception` swallows it)."""


class _State:
    depth = 0  # > 0 while a unit is being written
    pending: int | None = None


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"terminated (signal {signum})")


def _handler(signum: int, frame) -> None:
    if _State.depth > 0:
        _State.pending = signum  # raised when the write finishes
        return
    _raise(signum)


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT -> KeyboardInterrupt, SIGTERM -> Terminated, deferred inside `deferred()`. Only in the main
    thread (elsewhere signals cannot be handled; it does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _State.depth, _State.pending = 0, None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives inside is raised when the block ends (after the write it protects)."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0 and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            _raise(signum)
