"""The performer: receives unit k's KV delta, appends it to its own cache, solves y_k, sends y_k back.

Two forms behind one interface (`submit(k, k_delta, v_delta)`, `result(k) -> (y_audio, y_video)`):

- `LocalPerformer`: in the thinker's process, solving inside `submit` (the sequential reference).
- `PerformerProcess`: a second process (`python -m runtime.host.performer`); tensors travel through a
  double-buffered shared-memory block (`SharedSlots`), the pipe carries only
  8-byte messages (op, unit). Death is noticed at once (EOF on the pipe), a hang after
  `timeout_s` (start-up included); either raises `PerformerError`, and the process is stopped and
  reaped. The process never imports from the working directory (runtime/child.py).
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
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..child import start_child
from .kv_cache import KVBuffers
from .solver import FlowSolver
from ..spec import exchange_layout
from ..trace import SpanLog
from .transport import SharedSlots

UNIT, STOP, READY, RESULT, ERROR = 1, 2, 3, 4, 5
START_TIMEOUT_S = 120.0  # loading engines; a given `timeout_s` bounds start-up too, at 10x
MESSAGE = struct.Struct("<iq")  # (op, unit or milliseconds)


def send_failure(conn: Connection) -> None:
    """In a performer process's `except`: the current traceback to the thinker as an ERROR message
    (nothing if the pipe is already gone)."""
    try:
        conn.send_bytes(MESSAGE.pack(ERROR, 0) + traceback.format_exc().encode())
    except OSError:
        pass


class PerformerError(RuntimeError):
    """The performer process died, hung or failed; the session cannot go on."""


class LocalPerformer:
    """The performer's work done in place, in order: the sequential mode. Shares the thinker's cache."""

    def __init__(self, solver: FlowSolver, cache: KVBuffers, log: SpanLog) -> None:
        self.solver, self.cache, self.log = solver, cache, log
        self._unit, self._y = -1, (None, None)

    def submit(self, unit_index: int, k_delta: np.ndarray, v_delta: np.ndarray) -> None:
        # the thinker has already written the delta into the shared cache: nothing to append
        with self.log("solve", unit_index, "performer"):
            self._y = self.solver.solve(unit_index, self.cache)
        self._unit = unit_index

    def ready(self, unit_index: int) -> bool:
        return self._unit >= unit_index

    def result(self, unit_index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._unit != unit_index:
            raise PerformerError(f"result of unit {unit_index} asked, the last solved is {self._unit}")
        return self._y

    def close(self) -> None:
        pass


class PerformerProcess:
    """The thinker's handle on a performer process for the engines in `directory`."""

    def __init__(self, directory: str | Path, spec: SimpleNamespace, seed: int, log: SpanLog,
                 threads: int | None = 1, core: int | None = None, timeout_s: float | None = None,
                 trust: str | Path | None = None) -> None:
        self.log = log
        self.slots = SharedSlots.create(exchange_layout(spec), n_slots=2)
        config = {"directory": str(Path(directory).resolve()), "shm": self.slots.name, "seed": seed,
                  "threads": threads, "core": core, "trust": str(trust) if trust else None}
        warm_ms = self._start("runtime.host.performer", config, timeout_s)
        # a hang: no result within `timeout_s`, by default 10x a warm solve (at least 2 s)
        self.timeout_s = timeout_s or max(2.0, 10 * spec.flow_steps * warm_ms / 1000.0)

    def _start(self, module: str, config: dict, timeout_s: float | None) -> int:
        """Start the child process and wait for its READY (within 10x `timeout_s`: loading engines takes
        longer than a solve; START_TIMEOUT_S without one); returns the warm-up milliseconds it reports."""
        ours, theirs = socket.socketpair()
        self.process = start_child(module, {**config, "fd": theirs.fileno()}, theirs.fileno())
        theirs.close()
        self.conn = Connection(ours.detach())
        try:
            return self._receive(READY, None, timeout_s=10 * timeout_s if timeout_s else START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def submit(self, unit_index: int, k_delta: np.ndarray, v_delta: np.ndarray) -> None:
        """Copy unit k's delta into its slot and tell the performer (returns at once)."""
        t0 = time.perf_counter()
        self.slots.view(unit_index, "k_delta")[...] = k_delta
        self.slots.view(unit_index, "v_delta")[...] = v_delta
        self._send(UNIT, unit_index)
        self.log.add("thinker", "transfer", unit_index, t0, time.perf_counter())

    def ready(self, unit_index: int) -> bool:
        """Whether y_k has arrived (without waiting)."""
        return self.conn.poll(0)

    def result(self, unit_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Wait for y_k -> (audio, video latents): views of the shared slot, valid until unit k + 2 is submitted."""
        self._receive(RESULT, unit_index, self.timeout_s)
        spans = self.slots.view(unit_index, "spans")
        self.log.add("performer", "append", unit_index, spans[0], spans[1])
        self.log.add("performer", "solve", unit_index, spans[2], spans[3])
        return self.slots.view(unit_index, "y_audio"), self.slots.view(unit_index, "y_video")

    def _send(self, op: int, unit_index: int) -> None:
        try:
            self.conn.send_bytes(MESSAGE.pack(op, unit_index))
        except OSError:  # broken pipe: the process is gone
            raise self._failed(f"performer process died (exit code {self._exit_code()})") from None

    def _receive(self, want_op: int, unit_index: int | None, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if wait([self.conn], timeout=max(left, 0)):  # a message, or EOF when the process is gone
                try:
                    raw = self.conn.recv_bytes()
                except (EOFError, OSError):
                    raise self._failed(f"performer process died (exit code {self._exit_code()})") from None
                op, value = MESSAGE.unpack(raw[:MESSAGE.size])
                self._last_payload = raw[MESSAGE.size:]  # what a message carries after its header
                if op == ERROR:
                    raise self._failed("performer failed:\n" + raw[MESSAGE.size:].decode(errors="replace"))
                if op != want_op or (unit_index is not None and value != unit_index):
                    raise self._failed(f"performer protocol: expected op {want_op} unit {unit_index}, "
                                       f"got op {op} value {value}")
                return value
            if left <= 0:
                what = "starting" if want_op == READY else f"solving unit {unit_index}"
                raise self._failed(f"performer hung: no answer after {timeout_s:.1f} s {what}")

    def _exit_code(self) -> int | None:
        try:
            return self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return None

    def _failed(self, message: str) -> PerformerError:
        self.close(force=True)
        return PerformerError(message)

    def close(self, force: bool = False) -> None:
        """Stop the process (ask it, then kill it; `force`: kill at once), reap it, free the shared memory.
        Idempotent."""
        if self.process.poll() is None and not force:
            try:
                self.conn.send_bytes(MESSAGE.pack(STOP, 0))
                self.process.wait(timeout=2.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.process.poll() is None:
            self.process.kill()  # also ends a stopped (SIGSTOP) process
            self.process.wait(timeout=5.0)
        if not self.conn.closed:
            self.conn.close()
        self.slots.close()


def performer_main(directory: str, shm_name: str, conn: Connection, seed: int, threads: int | None,
                   core: int | None, trust: str | None = None) -> None:
    """The performer process: load flow_step, then per UNIT message append + solve + answer RESULT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the thinker, which stops us
    if core is not None:
        os.sched_setaffinity(0, {core})
    slots = None
    try:
        from .engines import load_engines
        from ..spec import unit_spec

        manifest, engines = load_engines(directory, threads=threads, stages=["flow_step"], trust=trust)
        spec = unit_spec(manifest)
        slots = SharedSlots.attach(shm_name, exchange_layout(spec), n_slots=2)
        cache = KVBuffers(spec)
        solver = FlowSolver(engines["flow_step"], spec, seed)
        conn.send_bytes(MESSAGE.pack(READY, int(np.ceil(solver.warm_up(cache)))))
        while True:
            try:
                op, k = MESSAGE.unpack(conn.recv_bytes())
            except EOFError:  # the thinker is gone
                return
            if op == STOP:
                return
            t0 = time.perf_counter()
            cache.append(k, slots.view(k, "k_delta"), slots.view(k, "v_delta"))
            t1 = time.perf_counter()
            ya, yv = solver.solve(k, cache)
            slots.view(k, "y_audio")[...] = ya
            slots.view(k, "y_video")[...] = yv
            slots.view(k, "spans")[:] = (t0, t1, t1, time.perf_counter())
            conn.send_bytes(MESSAGE.pack(RESULT, k))
    except Exception:  # noqa: BLE001 - every failure goes to the thinker, with its traceback
        send_failure(conn)
    finally:
        if slots is not None:
            slots.close()


if __name__ == "__main__":  # started by PerformerProcess with its JSON config
    cfg = json.loads(sys.argv[1])
    performer_main(cfg["directory"], cfg["shm"], Connection(cfg["fd"]), cfg["seed"], cfg["threads"],
                   cfg["core"], cfg.get("trust"))
