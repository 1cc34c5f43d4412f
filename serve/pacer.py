"""The replica's clock: a thread that ticks the hub at t0 + n * unit, one batched step per tick.

A tick never starts before it is due. One that runs long makes the next ones start late (counted
`late_ticks`) and back to back until the schedule is caught up: units are never skipped, so a
session's unit k stays its client's unit k. A tick that raises stops the clock and marks the hub
failed, its sessions told so (server_error) wherever the tick failed: in the step (the hub did it) or
outside it (here). The replica then reports unhealthy, and Ray Serve replaces it.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("av_streamer.serve")


class Pacer:
    def __init__(self, hub) -> None:
        self.hub, self.unit_s = hub, hub.unit_s
        self._stop = threading.Event()
        self.ticks = 0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="avs-pacer", daemon=True)

    def start(self) -> "Pacer":
        self.thread.start()
        return self

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            due = t0 + self.ticks * self.unit_s
            wait = due - time.perf_counter()
            if wait > 0 and self._stop.wait(wait):
                break
            if time.perf_counter() - due > self.unit_s:
                with self.hub.lock:
                    self.hub.metrics.counters["late_ticks"] += 1
            try:
                self.hub.tick(due)
            except Exception as e:  # a failed step has already failed the hub; anything else fails it here
                self.error = f"{type(e).__name__}: {e}"
                log.exception("tick failed; the replica stops ticking")
                if not self.hub.failed:
                    try:  # tick holds no lock once it raised: fail takes it
                        self.hub.fail(f"a tick failed: {self.error}")
                    except Exception:
                        log.exception("failing the hub's sessions failed")
                return
            self.ticks += 1

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout_s)
