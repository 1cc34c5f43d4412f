"""`streamer bench` / `streamer profile`: run a session on engines as fast as it goes and measure it.

Per mode: per-unit time (between successive units done; p50/p90/p99), model-side latency (unit k's
input handed in -> unit k's output out), real-time factor, throughput, peak memory of each process,
and the spans of both workers (for the timeline PNG and the Chrome/Perfetto trace).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from unitio.timing import percentiles

from .session import EngineSession, UnitOutput


def rss_bytes(pid: int | str = "self", field: str = "VmHWM") -> int | None:
    """A process's peak (VmHWM) or current (VmRSS) resident memory from /proc; None where there is no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bench_mode(directory: str | Path, mode: str, units: list[tuple[np.ndarray, np.ndarray]], seed: int = 0,
               threads: int | None = 1, warmup: int = 2, nvtx: bool = False) -> dict:
    """Stream `units` through a fresh session in `mode`; the first `warmup` units are not counted.
    Returns the metrics, the spans and the outputs (tokens, audio) for comparing modes."""
    peak_reset = reset_peak_rss()
    with EngineSession(directory, seed=seed, threads=threads, mode=mode, nvtx=nvtx) as session:
        unit_ms = session.spec.unit_ms
        done, latency, tokens, audio = [], [], [], []
        handed_in: dict[int, float] = {}

        def emitted(o) -> None:
            if o is not None:
                if o.unit_index >= warmup:
                    latency.append(1000.0 * (time.perf_counter() - handed_in[o.unit_index]))
                audio.append(o.audio)

        for k, (a, f) in enumerate(units):
            handed_in[k] = time.perf_counter()
            r = session.step(a, f)
            if r.audio is not None:  # (no early `decode_ready`: as fast as it goes, the critical path first)
                emitted(UnitOutput(k - 1, r.audio, r.frames))
            tokens.append(r.text_tokens)
            done.append(time.perf_counter())
        emitted(session.flush())
        performer_peak = (rss_bytes(session.performer.process.pid) if mode == "pipelined" else None)
        spans = session.log.spans()
    cycle = np.diff(done[warmup:]) * 1000.0
    counted = len(units) - warmup
    wall = done[-1] - done[warmup - 1] if warmup else done[-1] - handed_in[0]
    return {"mode": mode, "units": counted, "unit_ms": percentiles(cycle.tolist()),
            "latency_ms": percentiles(latency), "rtf": float(cycle.mean() / unit_ms),
            "units_per_s": counted / wall, "thinker_peak_rss": rss_bytes() if peak_reset else None,
            "performer_peak_rss": performer_peak, "spans": spans,
            "tokens": np.stack(tokens), "audio": np.concatenate(audio)}


def timeline_png(results: list[dict], path: str | Path, last_units: int = 6) -> None:
    """One panel per mode, a row per worker, a bar per span of the last `last_units` units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"encode": "tab:blue", "think": "tab:red", "transfer": "tab:gray", "append": "tab:gray",
              "solve": "tab:green", "decode": "tab:purple", "wait": "whitesmoke"}
    fig, axes = plt.subplots(len(results), 1, figsize=(12, 1.8 * len(results) + 0.8), squeeze=False)
    for ax, res in zip(axes[:, 0], results):
        spans = res["spans"]
        last = max(s[2] for s in spans)
        t_start = min(s[3] for s in spans if s[2] > last - last_units)
        keep = [s for s in spans if s[3] >= t_start and s[1] != "wait"]  # decodes of earlier units too
        for worker, stage, unit, t0, t1 in keep:
            row = 1 if worker == "thinker" else 0
            ax.broken_barh([(1000 * (t0 - t_start), 1000 * (t1 - t0))], (row - 0.4, 0.8), color=colors[stage])
        ax.set_yticks([0, 1], ["performer", "thinker"])
        ax.set_title(f"{res['mode']}: {res['unit_ms']['p50']:.1f} ms per unit (p50)", fontsize=10)
        ax.set_xlabel("ms")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for s, c in colors.items() if s != "wait"]
    fig.legend(handles, [s for s in colors if s != "wait"], loc="upper right", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)
