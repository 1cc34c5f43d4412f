"""A replica's numbers (counters, recent windows of unit latency and step time) and the Prometheus text
exposition (format 0.0.4) of every replica's last snapshot. stdlib + numpy."""
from __future__ import annotations

import os
import time
from collections import Counter, deque

import numpy as np

WINDOW = 512  # recent units whose latency the quantiles are computed over, per replica
STALE_S = 5.0  # a replica whose last snapshot is older than this is reported down
FORGET_S = 120.0  # ... and forgotten after this
QUANTILES = (0.5, 0.99)


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where unreadable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ReplicaMetrics:
    """What one replica counts; `snapshot()` is a plain dict (sent to the board once a second)."""

    def __init__(self, replica: str, slots: int, kind: str) -> None:
        self.replica, self.slots, self.kind = replica, slots, kind
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency_ms: deque[float] = deque(maxlen=WINDOW)
        self.step_ms: deque[float] = deque(maxlen=WINDOW)
        self.sessions = 0

    def snapshot(self) -> dict:
        return {"replica": self.replica, "kind": self.kind, "slots": self.slots, "sessions": self.sessions,
                "counters": dict(self.counters), "errors": dict(self.errors), "latency_ms": list(self.latency_ms),
                "step_ms": list(self.step_ms), "rss_bytes": rss_bytes(), "time": time.time()}


def quantiles(values, qs=QUANTILES) -> dict[float, float]:
    if not len(values):
        return {q: float("nan") for q in qs}
    a = np.asarray(values, np.float64)
    return {q: float(np.quantile(a, q)) for q in qs}


COUNTERS = {  # snapshot counter -> (metric, help)
    "units": ("avs_units_total", "Units stepped, all sessions."),
    "late_units": ("avs_late_units_total", "Units whose output left more than one unit after their tick was due."),
    "missing_units": ("avs_missing_units_total", "Units filled with silence and the last frame (no input in time)."),
    "rejected_units": ("avs_rejected_units_total", "Units filled because their input was malformed."),
    "late_inputs": ("avs_late_inputs_total", "Inputs that came after their unit was filled (dropped)."),
    "late_ticks": ("avs_late_ticks_total", "Ticks that began more than one unit after they were due."),
    "sessions_started": ("avs_sessions_started_total", "Sessions that received ready."),
    "sessions_ended": ("avs_sessions_ended_total", "Sessions that ended (any reason)."),
    "refused_full": ("avs_sessions_refused_total", "Sessions refused server_full: no free slot at hello, or no free row at start."),
}


def _line(name: str, labels: dict, value) -> str:
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    text = "NaN" if value != value else f"{value:.6g}"
    return f"{name}{{{lab}}} {text}" if lab else f"{name} {text}"


def prometheus_text(snapshots: dict[str, dict], now: float | None = None) -> str:
    """Every replica's last snapshot -> the Prometheus text format: gauges per replica, counters and the
    latency/step summaries (p50, p99 over each replica's recent window, and over all of them)."""
    now = time.time() if now is None else now
    live = {r: s for r, s in snapshots.items() if now - s["time"] <= STALE_S}
    out = []

    def block(name: str, kind: str, help_: str, rows: list[tuple[dict, float]]) -> None:
        out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
        out.extend(_line(name, labels, value) for labels, value in rows)

    block("avs_replica_up", "gauge", "1 while the replica reports, 0 when its reports stopped.",
          [({"replica": r}, float(r in live)) for r in sorted(snapshots)])
    for key, help_ in (("sessions", "Live sessions."), ("slots", "Session slots."),):
        block(f"avs_{key}", "gauge", help_, [({"replica": r, "rows": s["kind"]}, s[key]) for r, s in sorted(live.items())])
    block("avs_slots_free", "gauge", "Slots a new session can take.",
          [({"replica": r, "rows": s["kind"]}, s["slots"] - s["sessions"]) for r, s in sorted(live.items())])
    block("avs_replica_rss_bytes", "gauge", "Resident memory of the replica process.",
          [({"replica": r}, s["rss_bytes"]) for r, s in sorted(live.items())])
    for key, (name, help_) in COUNTERS.items():
        block(name, "counter", help_, [({"replica": r}, s["counters"].get(key, 0)) for r, s in sorted(snapshots.items())])
    block("avs_protocol_errors_total", "counter", "Typed errors sent to clients (by the connection or the hub), by code.",
          [({"replica": r, "code": c}, n) for r, s in sorted(snapshots.items()) for c, n in sorted(s["errors"].items())])
    for key, name, help_ in (("latency_ms", "avs_unit_latency_ms", "Server-side unit latency: input in to output out (ms)."),
                             ("step_ms", "avs_step_ms", "One batched step of all live sessions (ms).")):
        rows = []
        for labels, values in [({"replica": r}, s[key]) for r, s in sorted(live.items())] + \
                              [({"replica": "all"}, [v for s in live.values() for v in s[key]])]:
            rows += [({**labels, "quantile": str(q)}, v) for q, v in quantiles(values).items()]
        block(name, "summary", help_ + f" Quantiles over the last {WINDOW} units per replica.", rows)
    return "\n".join(out) + "\n"


def _finite(x: float) -> float | None:
    """JSON has no NaN: an empty window's quantile is null."""
    return x if x == x else None


def health(snapshots: dict[str, dict], now: float | None = None) -> dict:
    """A short JSON summary: ok (some replica reports, none failed or silent), replicas reporting,
    sessions, free slots, unit latency p50/p99."""
    now = time.time() if now is None else now
    live = [s for s in snapshots.values() if now - s["time"] <= STALE_S]
    lat = quantiles([v for s in live for v in s["latency_ms"]])
    return {"ok": bool(live) and all(s.get("ok", True) for s in live) and len(live) == len(snapshots),
            "replicas": len(live), "replicas_down": len(snapshots) - len(live),
            "sessions": sum(s["sessions"] for s in live), "slots": sum(s["slots"] for s in live),
            "slots_free": sum(s["slots"] - s["sessions"] for s in live),
            "unit_latency_ms": {"p50": _finite(lat[0.5]), "p99": _finite(lat[0.99])},  # null before any unit
            "late_units": sum(s["counters"].get("late_units", 0) for s in live)}
