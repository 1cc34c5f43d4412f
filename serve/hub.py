"""One replica's live sessions: slots, bounded inboxes, and one batched step of all of them per tick.

A session takes a slot at hello (`reserve`; server_full at once when none is free) and a row of the
batched runtime when its first input has waited `grace_s` (`tick`), so its unit k is stepped at tick
n0 + k, exactly once: with the client's unit k if it is in, else with filler (silence and the last
frame, as runtime/live.py does; counted `missing`). A unit that comes after its turn is dropped
(late_unit), one more than `max_units_ahead` ahead is refused (unit_ahead): the inbox is bounded. Nothing
here waits on a client: outputs go out through `deliver` (which must not block), so a slow or vanished
client never stalls the others. Thread-safe: the connections call in from the event loop, the pacer
thread calls `tick`. numpy + the runtime's unit checks only.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import numpy as np

from unitio.names import filler_frame
from unitio.units import InputError

from .metrics import ReplicaMetrics
from .protocol import (
    ClientUnit,
    Hello,
    Limits,
    ProtocolError,
    ServerUnit,
    encode_server_unit,
    error_message,
)
from .rows import check_row_inputs, full_errors

Deliver = Callable[[object], None]  # bytes (a frame), str (a JSON text message) or ("close", code)


class Session:
    """One client's session on this replica."""

    def __init__(self, hello: Hello, deliver: Deliver, spec) -> None:
        self.id, self.hello, self.deliver = uuid.uuid4().hex[:12], hello, deliver
        self.row: int | None = None  # its row in the batched runtime, once started
        self.next_unit = 0  # the next unit to step
        self.inbox: dict[int, tuple[ClientUnit | None, float]] = {}  # unit -> (input, or None if rejected; arrival)
        self.last_frame = filler_frame(spec)  # mid-gray, as live
        self.end_after: int | None = None  # the client's last unit, once it said "end"
        self.dropped = self.done = False
        self.acked: int | None = None  # the last output unit the client acknowledged
        self.stats: Counter[str] = Counter()

    def bye(self, reason: str) -> str:
        import json

        return json.dumps({"type": "bye", "session": self.id, "reason": reason, **{
            k: self.stats.get(k, 0) for k in ("units", "client", "missing", "rejected", "late_inputs", "late_units")}})


class SessionHub:
    """The sessions of one replica over `rows` (the batched interface of serve/rows.py)."""

    def __init__(self, rows, slots: int, spec, limits: Limits | None = None, grace_s: float = 0.04,
                 replica: str = "local", kind: str = "unbatched") -> None:
        self.rows, self.slots, self.spec, self.limits = rows, slots, spec, limits or Limits()
        self.grace_s, self.unit_s = grace_s, spec.unit_ms / 1000.0
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self.metrics = ReplicaMetrics(replica, slots, kind)
        self.failed: str | None = None  # why the runtime cannot go on (the replica reports unhealthy)
        self._full = full_errors()
        self._silence = np.zeros(spec.samples_per_unit, np.float32)

    # ---- called by the connections -------------------------------------------------------------

    def reserve(self, hello: Hello, deliver: Deliver) -> Session:
        """A slot for a new session, or ProtocolError server_full at once."""
        with self.lock:
            if self.failed:
                raise ProtocolError("server_error", f"this replica cannot run sessions: {self.failed}")
            if len(self.sessions) >= self.slots:
                self.metrics.counters["refused_full"] += 1
                raise ProtocolError("server_full", f"all {self.slots} session slots of this replica are taken")
            s = Session(hello, deliver, self.spec)
            self.sessions[s.id] = s
            self.metrics.sessions = len(self.sessions)
            self.metrics.counters["sessions_started"] += 1
            return s

    def put(self, s: Session, unit: ClientUnit, arrived: float) -> None:
        """A decoded unit from the client (arrival: perf_counter seconds); ProtocolError when it cannot be used."""
        k = unit.unit
        with self.lock:
            if unit.ack is not None:
                if unit.ack > s.next_unit - 1:  # output not yet made cannot have been read: a forged ack
                    raise ProtocolError("bad_message", f"unit {k}: ack {unit.ack} is past the last unit output "
                                        f"({s.next_unit - 1}); expected an ack of output received", k)
                s.acked = max(s.acked if s.acked is not None else -1, unit.ack)
                behind = s.next_unit - 1 - s.acked
                if behind > self.limits.max_unacked_units:
                    raise ProtocolError("slow_client", f"the client acknowledged output through unit {s.acked}, "
                                        f"{behind} units behind (at most {self.limits.max_unacked_units})", k)
            self._check_index(s, k)
            s.inbox[k] = (unit, arrived)

    def reject(self, s: Session, k: int, arrived: float) -> None:
        """Unit k came malformed: its turn gets filler, counted `rejected` (ignored if k cannot be queued)."""
        with self.lock:
            try:
                self._check_index(s, k)
            except ProtocolError:
                return
            s.inbox[k] = (None, arrived)

    def _check_index(self, s: Session, k: int) -> None:
        if k < s.next_unit:
            s.stats["late_inputs"] += 1
            self.metrics.counters["late_inputs"] += 1
            raise ProtocolError("late_unit", f"unit {k}: expected unit {s.next_unit} or later (unit {k}'s turn went "
                                             f"by: it was filled with silence and the last frame)", k)
        if k in s.inbox:
            raise ProtocolError("duplicate_unit", f"unit {k}: expected each unit index once, got unit {k} again", k)
        if k >= s.next_unit + self.limits.max_units_ahead:
            raise ProtocolError("unit_ahead", f"unit {k}: expected at most {self.limits.max_units_ahead - 1} units "
                                              f"ahead of the session's next unit {s.next_unit}", k)
        if s.end_after is not None and k > s.end_after:
            raise ProtocolError("bad_message", f"unit {k}: expected no unit after the end the client announced "
                                               f"(unit {s.end_after})", k)

    def end(self, s: Session, last_unit: int) -> None:
        """The client sent its last unit: units through `last_unit` are stepped, then the last output and bye
        (at the next tick's start when they were all stepped already). A session that has not started and has
        no unit queued gets bye at once."""
        with self.lock:
            s.end_after = max(last_unit, s.next_unit - 1)
            if s.row is None and not s.done and (not s.inbox or s.end_after < s.next_unit):
                self._finish(s, "end", flush=False)  # never started and nothing to step: bye at once

    def drop(self, s: Session) -> None:
        """The client is gone: its row is freed at the next tick (at once if it has none)."""
        with self.lock:
            s.dropped = True
            if s.row is None:
                self._remove(s)

    def count_error(self, code: str) -> None:
        """One more typed error `code` sent to a client (avs_protocol_errors_total)."""
        with self.lock:
            self.metrics.errors[code] += 1

    def _send_error(self, s: Session, e: ProtocolError) -> None:
        """Under the lock: deliver the typed error `e` to `s` and count it."""
        self.metrics.errors[e.code] += 1
        s.deliver(error_message(e))

    # ---- called by the pacer -------------------------------------------------------------------

    def tick(self, due: float) -> int:
        """One unit for every started session (`due`: this tick's scheduled perf_counter time). Returns
        the rows stepped."""
        with self.lock:
            self._leave_dropped()
            self._finish_ended()
            self._start_waiting(due)
            active = [s for s in self.sessions.values() if s.row is not None and not s.done]
            inputs, kinds, arrivals = {}, {}, {}
            for s in active:
                got, arrived = s.inbox.pop(s.next_unit, (None, None))
                if got is not None:
                    inputs[s.row], kinds[s.id], arrivals[s.id] = (got.audio, got.frames, got.text), "client", (arrived, got.t)
                    s.last_frame = got.frames[-1]
                else:
                    inputs[s.row], kinds[s.id] = self._filler(s), "rejected" if arrived is not None else "missing"
        if not active:
            return 0
        started = time.perf_counter()
        results = self._step(inputs, active, kinds)
        step_ms = 1000.0 * (time.perf_counter() - started)
        messages = []
        with self.lock:
            self.metrics.step_ms.append(step_ms)
            for s in active:
                messages.append((s, self._output(s, results[s.row], kinds[s.id], arrivals.get(s.id), started, due, step_ms, len(active))))
            if time.perf_counter() - due > self.unit_s:
                self.metrics.counters["late_units"] += len(active)
                for s in active:
                    s.stats["late_units"] += 1
        for s, msg in messages:
            if not s.dropped:
                s.deliver(msg)
        with self.lock:
            for s in active:
                if s.done or s.dropped:
                    continue
                if s.end_after is not None and s.next_unit > s.end_after:
                    self._finish(s, "end")
                elif s.next_unit >= self.limits.max_session_units:
                    self._send_error(s, ProtocolError("session_too_long", f"the session reached "
                                                      f"{self.limits.max_session_units} units (the limit)"))
                    self._finish(s, "session_too_long")
        return len(active)

    def _filler(self, s: Session) -> tuple:
        return self._silence, np.repeat(s.last_frame[None], self.spec.frames_per_unit, 0), None

    def _start_waiting(self, due: float) -> None:
        for s in self.sessions.values():
            if s.row is None and not s.dropped and not s.done and s.inbox:
                if min(a for _, a in s.inbox.values()) <= due - self.grace_s:
                    try:
                        s.row = self.rows.join(s.hello.seed)
                    except self._full as e:
                        self.metrics.counters["refused_full"] += 1
                        self._send_error(s, ProtocolError("server_full", f"no free row: {e}"))
                        s.deliver(("close", 1013))
                        s.done = True

    def _finish_ended(self) -> None:
        """Sessions whose announced last unit was already stepped (their `end` came after it) end now,
        before this tick steps them once more."""
        for s in [s for s in self.sessions.values() if s.row is not None and not s.done and not s.dropped]:
            if s.end_after is not None and s.next_unit > s.end_after:
                self._finish(s, "end")

    def _leave_dropped(self) -> None:
        for s in [s for s in self.sessions.values() if s.dropped or (s.done and s.row is None)]:
            self._remove(s)

    def _remove(self, s: Session) -> None:
        if s.row is not None:
            self.rows.leave(s.row)
            s.row = None
        if self.sessions.pop(s.id, None) is not None:
            self.metrics.counters["sessions_ended"] += 1
        self.metrics.sessions = len(self.sessions)

    def _step(self, inputs: dict, active: list[Session], kinds: dict) -> dict:
        """rows.step; a row whose input the runtime refuses gets filler (rejected) and the step is retried.
        Any other failure ends every session of this replica (server_error) and marks it failed."""
        try:
            try:
                return self.rows.step(inputs)
            except InputError:
                for s in active:
                    try:
                        check_row_inputs(self.spec, {s.row: inputs[s.row]})
                    except InputError:
                        inputs[s.row], kinds[s.id] = self._filler(s), "rejected"
                return self.rows.step(inputs)
        except Exception as e:
            self.fail(f"the runtime failed: {type(e).__name__}: {e}")
            raise

    def _output(self, s: Session, r, kind: str, arrival, started: float, due: float, step_ms: float, n: int) -> bytes:
        k = s.next_unit
        s.next_unit += 1
        s.stats["units"] += 1
        s.stats[kind] += 1
        self.metrics.counters["units"] += 1
        if kind != "client":
            self.metrics.counters[f"{kind}_units"] += 1
        timing = {"step_ms": round(step_ms, 3), "lag_ms": round(1000.0 * (started - due), 3), "rows": n}
        if arrival is not None:
            timing["wait_ms"] = round(1000.0 * (started - arrival[0]), 3)
        msg = encode_server_unit(ServerUnit(k, [int(x) for x in r.text_tokens], k - 1 if r.audio is not None else None,
                                            r.audio, r.frames, kind, arrival[1] if arrival else None, timing),
                                 s.hello.audio_out, s.hello.video_out)
        if arrival is not None:
            self.metrics.latency_ms.append(1000.0 * (time.perf_counter() - arrival[0]))
        return msg

    def _finish(self, s: Session, reason: str, flush: bool = True) -> None:
        """The last unit's output (when the session stepped any), bye, close; the row and slot are freed."""
        if flush and s.row is not None and s.next_unit > 0:
            audio, frames = self.rows.flush(s.row)
            s.deliver(encode_server_unit(ServerUnit(None, None, s.next_unit - 1, audio, frames, final=True),
                                         s.hello.audio_out, s.hello.video_out))
        s.deliver(s.bye(reason))
        s.deliver(("close", 1000))
        s.done = True
        self._remove(s)

    def fail(self, why: str) -> None:
        """The runtime cannot go on: every session gets server_error and is closed; new ones are refused."""
        with self.lock:
            self.failed = why
            for s in list(self.sessions.values()):
                if not s.done and not s.dropped:
                    self._send_error(s, ProtocolError("server_error", why))
                    s.deliver(("close", 1011))
                s.done = True
                try:
                    self._remove(s)
                except Exception:  # the runtime is broken: the slot goes, whatever its row does
                    self.sessions.pop(s.id, None)

    def close(self) -> None:
        """Shutting down: every session is told so and closed; the rows are freed."""
        with self.lock:
            for s in list(self.sessions.values()):
                if not s.done and not s.dropped:
                    self._send_error(s, ProtocolError("shutting_down", "the server is stopping"))
                    s.deliver(("close", 1001))
                s.done = True
                self._remove(s)
