"""The performer: receives unit k's KV delta, appends it to its own cache, solves y_k, sends y_k back.

Two forms behind one interface (runtime/order.py `Performer`: `submit(k, k_delta, v_delta)`,
`result(k) -> (y_audio, y_video)`):

- `LocalPerformer`: in the thinker's process, solving inside `submit` (the sequential reference).
- `PerformerProcess`: a second process (`python -m runtime.host.performer`) on the one worker protocol
  (runtime/worker.py: start, deadlines, failure, shutdown); tensors travel through a double-buffered
  shared-memory block (`SharedSlots`), the pipe carries only 12-byte messages (op, unit).
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..order import PerformerError
from ..trace import SpanLog
from ..worker import RESULT, WorkerProcess, serve, worker_main
from .kv_cache import KVBuffers
from .solver import FlowSolver
from .transport import SharedSlots, pipelined_slot_layout


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
        self.slots = SharedSlots.create(pipelined_slot_layout(spec), n_slots=2)
        self.worker = WorkerProcess(release=self.slots.close)
        config = {"directory": str(Path(directory).resolve()), "shm": self.slots.name, "seed": seed,
                  "threads": threads, "core": core, "trust": str(trust) if trust else None}
        warm_ms = self.worker.start("runtime.host.performer", config, timeout_s)
        # a hang: no result within `timeout_s`, by default 10x a warm solve (at least 2 s)
        self.timeout_s = timeout_s or max(2.0, 10 * spec.flow_steps * warm_ms / 1000.0)

    @property
    def process(self):
        return self.worker.process

    def submit(self, unit_index: int, k_delta: np.ndarray, v_delta: np.ndarray) -> None:
        """Copy unit k's delta into its slot and tell the performer (returns at once)."""
        t0 = time.perf_counter()
        self.slots.view(unit_index, "k_delta")[...] = k_delta
        self.slots.view(unit_index, "v_delta")[...] = v_delta
        self.worker.send_unit(unit_index)
        self.log.add("thinker", "transfer", unit_index, t0, time.perf_counter())

    def ready(self, unit_index: int) -> bool:
        """Whether y_k has arrived (without waiting)."""
        return self.worker.ready()

    def result(self, unit_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Wait for y_k -> (audio, video latents): views of the shared slot, valid until unit k + 2 is submitted."""
        self.worker.receive(RESULT, unit_index, self.timeout_s)
        spans = self.slots.view(unit_index, "spans")
        self.log.add("performer", "append", unit_index, spans[0], spans[1])
        self.log.add("performer", "solve", unit_index, spans[2], spans[3])
        return self.slots.view(unit_index, "y_audio"), self.slots.view(unit_index, "y_video")

    def close(self, force: bool = False) -> None:
        """Stop the process (ask it, then kill it; `force`: kill at once), reap it, free the shared memory.
        Idempotent."""
        self.worker.close(force)


def performer_main(cfg: dict, conn) -> None:
    """The performer process: load flow_step, then per UNIT message append + solve + answer RESULT."""

    def setup(stack: ExitStack):
        from ..spec import unit_spec
        from .engines import load_engines

        if cfg["core"] is not None:
            os.sched_setaffinity(0, {cfg["core"]})
        manifest, engines = load_engines(cfg["directory"], threads=cfg["threads"], stages=["flow_step"],
                                         trust=cfg.get("trust"))
        spec = unit_spec(manifest)
        slots = SharedSlots.attach(cfg["shm"], pipelined_slot_layout(spec), n_slots=2)
        stack.callback(slots.close)
        cache = KVBuffers(spec)
        solver = FlowSolver(engines["flow_step"], spec, cfg["seed"])

        def work(k: int) -> bytes:
            t0 = time.perf_counter()
            cache.append(k, slots.view(k, "k_delta"), slots.view(k, "v_delta"))
            t1 = time.perf_counter()
            ya, yv = solver.solve(k, cache)
            slots.view(k, "y_audio")[...] = ya
            slots.view(k, "y_video")[...] = yv
            slots.view(k, "spans")[:] = (t0, t1, t1, time.perf_counter())
            return b""
        return int(np.ceil(solver.warm_up(cache))), work

    serve(conn, setup)


if __name__ == "__main__":  # started by PerformerProcess with its JSON config
    worker_main(performer_main)
