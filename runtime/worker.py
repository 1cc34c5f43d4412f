"""The one protocol between a session and its worker process (the host path's performer, the device
path's two-process performer).

The parent: `WorkerProcess.start(module, config)` starts `python -P -m module CONFIG_JSON` on one end of
a socket pair (runtime/child.py) and waits for its READY (which carries the warm-up milliseconds);
`send_unit(k)` asks for unit k; `receive(RESULT, k)` waits for the answer within a deadline. Every
failure raises `PerformerError` after the process is stopped, reaped and its buffer released: EOF on
the pipe (the process died: noticed at once), no answer before the deadline (hung; start-up included,
at 10x), an ERROR message (the child's traceback), or a message out of protocol. `close` asks the child
to STOP, then kills it; idempotent.

The child: `serve(conn, setup)` runs `setup` (load engines, attach the buffer), answers READY, then per
UNIT message the unit's work and RESULT (plus the bytes the work returns), until STOP or EOF; an
exception goes to the parent as ERROR with its traceback.

Messages are 12 bytes, (op, unit or milliseconds), plus an optional payload; tensors never cross the
pipe: they sit in double-buffered slots of a shared buffer laid out by `slot_offsets`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait

import numpy as np

from .child import start_child
from .order import PerformerError

UNIT, STOP, READY, RESULT, ERROR = 1, 2, 3, 4, 5
START_TIMEOUT_S = 120.0  # loading engines; a given `timeout_s` bounds start-up too, at 10x
MESSAGE = struct.Struct("<iq")  # (op, unit or milliseconds)
ALIGN = 256  # bytes; every array of a slot starts on a 256-byte boundary (friendly to DMA and SIMD)

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


def create_shm(nbytes: int) -> shared_memory.SharedMemory:
    """A new POSIX shared-memory block of `nbytes` (its creator unlinks it: `close_shm(shm, owner=True)`)."""
    return shared_memory.SharedMemory(create=True, size=nbytes)


def attach_shm(name: str) -> shared_memory.SharedMemory:
    """The block another process created, by name, left to its creator to unlink."""
    shm = shared_memory.SharedMemory(name=name)
    if sys.version_info < (3, 13):  # attaching registers the block with this process's resource
        # tracker, which would unlink it when this process exits (Python 3.13 has track=False)
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")
    return shm


def close_shm(shm: shared_memory.SharedMemory, owner: bool) -> None:
    """Close `shm`; its creator (`owner`) also unlinks it. A view still alive somewhere keeps the mapping
    until the process ends."""
    try:
        shm.close()
    except BufferError:  # a caller still holds a view; the block goes when the process does
        pass
    if owner:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


def check_worker_options(threads: int | None, timeout_s: float | None) -> None:
    """Refuse thread counts outside 1..cores and timeouts that are not positive and finite."""
    cores = len(os.sched_getaffinity(0))
    if threads is not None and not 1 <= threads <= cores:
        raise ValueError(f"threads: expected 1 to {cores} (the cores this process may use), got {threads}")
    if timeout_s is not None and not 0 < timeout_s < float("inf"):
        raise ValueError(f"performer timeout: expected a positive, finite number of seconds, got {timeout_s}")


class WorkerProcess:
    """The parent's handle on one worker process; `release` frees what the parent shares with it (called
    once, when the process is gone)."""

    def __init__(self, release: Callable[[], None] = lambda: None) -> None:
        self.process: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self._release: Callable[[], None] | None = release

    def start(self, module: str, config: dict, timeout_s: float | None) -> int:
        """Start the child process and wait for its READY (within 10x `timeout_s`: loading engines takes
        longer than a unit; START_TIMEOUT_S without one); returns the warm-up milliseconds it reports."""
        ours, theirs = socket.socketpair()
        self.process = start_child(module, {**config, "fd": theirs.fileno()}, theirs.fileno())
        theirs.close()
        self.conn = Connection(ours.detach())
        try:
            return self.receive(READY, None, 10 * timeout_s if timeout_s else START_TIMEOUT_S)[0]
        except BaseException:
            self.close()
            raise

    def send_unit(self, unit_index: int) -> None:
        """Ask for unit k (its inputs are in their slot already)."""
        try:
            self.conn.send_bytes(MESSAGE.pack(UNIT, unit_index))
        except OSError:  # broken pipe: the process is gone
            raise self.failed(f"performer process died (exit code {self._exit_code()})") from None

    def ready(self) -> bool:
        """Whether an answer has arrived (without waiting)."""
        return self.conn.poll(0)

    def receive(self, want_op: int, unit_index: int | None, timeout_s: float,
                payload_size: int | None = None) -> tuple[int, bytes]:
        """Wait for message `want_op` (of unit `unit_index`, where given) -> (its value, its payload, of
        `payload_size` bytes where given). PerformerError on EOF, ERROR, another message or the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if wait([self.conn], timeout=max(left, 0)):  # a message, or EOF when the process is gone
                try:
                    raw = self.conn.recv_bytes()
                except (EOFError, OSError):
                    raise self.failed(f"performer process died (exit code {self._exit_code()})") from None
                op, value = MESSAGE.unpack(raw[:MESSAGE.size])
                payload = raw[MESSAGE.size:]
                if op == ERROR:
                    raise self.failed("performer failed:\n" + payload.decode(errors="replace"))
                if op != want_op or (unit_index is not None and value != unit_index):
                    raise self.failed(f"performer protocol: expected op {want_op} unit {unit_index}, "
                                      f"got op {op} value {value}")
                if payload_size is not None and len(payload) != payload_size:
                    raise self.failed(f"performer protocol: a RESULT without its report ({len(payload)} bytes)")
                return value, payload
            if left <= 0:
                what = "starting" if want_op == READY else f"solving unit {unit_index}"
                raise self.failed(f"performer hung: no answer after {timeout_s:.1f} s {what}")

    def _exit_code(self) -> int | None:
        try:
            return self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return None

    def failed(self, message: str) -> PerformerError:
        """Stop the process at once and return the error to raise."""
        self.close(force=True)
        return PerformerError(message)

    def close(self, force: bool = False) -> None:
        """Stop the process (ask it, then kill it; `force`: kill at once), reap it, release the shared
        buffer. Idempotent."""
        if self.process is not None:
            if self.process.poll() is None and not force:
                try:
                    self.conn.send_bytes(MESSAGE.pack(STOP, 0))
                    self.process.wait(timeout=2.0)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if self.process.poll() is None:
                self.process.kill()  # also ends a stopped (SIGSTOP) process
                self.process.wait(timeout=5.0)
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        if self._release is not None:
            self._release()
            self._release = None


def send_failure(conn: Connection) -> None:
    """In a worker's `except`: the current traceback to the parent as an ERROR message (nothing if the
    pipe is already gone)."""
    try:
        conn.send_bytes(MESSAGE.pack(ERROR, 0) + traceback.format_exc().encode())
    except OSError:
        pass


Setup = Callable[[ExitStack], tuple[int, Callable[[int], bytes]]]


def serve(conn: Connection, setup: Setup) -> None:
    """The worker's side: `setup(stack)` -> (warm-up milliseconds, work(k) -> payload bytes), registering
    on `stack` what to close at the end; READY; then per UNIT message work(k) and RESULT + its payload,
    until STOP or EOF (the parent is gone). Any exception goes to the parent as ERROR, with its traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us
    with ExitStack() as stack:
        try:
            warm_ms, work = setup(stack)
            conn.send_bytes(MESSAGE.pack(READY, warm_ms))
            while True:
                try:
                    op, k = MESSAGE.unpack(conn.recv_bytes()[:MESSAGE.size])
                except EOFError:  # the parent is gone
                    return
                if op == STOP:
                    return
                payload = work(k)
                conn.send_bytes(MESSAGE.pack(RESULT, k) + payload)
        except Exception:  # noqa: BLE001 - every failure goes to the parent, with its traceback
            send_failure(conn)


def worker_main(main: Callable[[dict, Connection], None]) -> None:
    """`python -m <worker module> CONFIG_JSON`: `main(config, the connection on config["fd"])`."""
    config = json.loads(sys.argv[1])
    main(config, Connection(config["fd"]))
