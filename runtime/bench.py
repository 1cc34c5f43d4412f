"""`streamer bench` / `streamer profile`: run a session on engines as fast as it goes and measure it.

Per mode or placement: per-unit time (between successive units done; p50/p90/p99), model-side latency
(unit k's input handed in -> unit k's output out), real-time factor, throughput, peak memory of each
process (and of the GPU), bytes per unit over the bus by direction (the transfer ledger), and the
spans of both workers (for the timeline PNG and the Chrome/Perfetto trace).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from unitio.growing import write_replacing
from unitio.timing import percentiles

from .order import UnitOutput


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
               threads: int | None = 1, warmup: int = 2, nvtx: bool = False, device: str | None = None,
               performer_device: str | None = None, trust: str | Path | None = None) -> dict:
    """Stream `units` through a fresh session of kind `mode` (a host-path mode or a device placement,
    runtime/open_session.py); the first `warmup` units are not counted. Returns the metrics, the bytes
    per unit and direction, the spans and the outputs (tokens, audio) for comparing modes."""
    from .manifest import read_manifest
    from .open_session import open_session

    peak_reset = reset_peak_rss()
    manifest = read_manifest(directory, trust=trust)
    with open_session(directory, mode, manifest, seed=seed, threads=threads, nvtx=nvtx, device=device,
                      performer_device=performer_device, trust=trust) as session:
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
        process = getattr(session.performer, "process", None)
        performer_peak = rss_bytes(process.pid) if process is not None else None
        spans = session.log.spans()
        bytes_per_unit = _bytes_per_unit(session, mode, warmup, len(units))
        extra = _device_facts(session)
    cycle = np.diff(done[warmup:]) * 1000.0
    counted = len(units) - warmup
    wall = done[-1] - done[warmup - 1] if warmup else done[-1] - handed_in[0]
    return {"mode": mode, "units": counted, "unit_ms": percentiles(cycle.tolist()),
            "latency_ms": percentiles(latency), "rtf": float(cycle.mean() / unit_ms),
            "units_per_s": counted / wall, "thinker_peak_rss": rss_bytes() if peak_reset else None,
            "performer_peak_rss": performer_peak, "bytes_per_unit": bytes_per_unit, **extra, "spans": spans,
            "tokens": np.stack(tokens), "audio": np.concatenate(audio)}


def _bytes_per_unit(session, mode: str, warmup: int, n_units: int) -> dict[str, float]:
    """Bytes per unit and direction over the counted units: the device path's ledger; on the host path
    nothing crosses a bus (pipelined: the delta and y_k cross processes through shared memory)."""
    ledger = getattr(session, "ledger", None)
    if ledger is not None:
        rows = list(ledger.units)[warmup:n_units]  # the steps of the counted units (not the flush)
        return {d: float(np.mean([r[d] for r in rows])) for d in ("h2d", "d2h", "d2d")}
    from .spec import delta_nbytes

    s = session.spec
    crossing = delta_nbytes(s) + 4 * int(np.prod(s.audio_latent_shape) + np.prod(s.video_latent_shape))
    return {"h2d": 0.0, "d2h": 0.0, "d2d": float(crossing if mode == "pipelined" else 0)}


def _device_facts(session) -> dict:
    """Device-path facts for the report: devices, CUDA graphs, peak GPU memory, placement notes."""
    if not hasattr(session, "ledger"):
        return {}
    facts = {"device": str(session.device), "cuda_graphs": bool(session.graphs),
             "notes": list(getattr(session.performer, "notes", []))}
    if session.device.cuda:
        import torch

        torch.cuda.synchronize(session.device.torch)
        facts["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated(session.device.torch))
        facts["gpu"] = torch.cuda.get_device_name(session.device.torch)
    return facts


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
    write_replacing(path, lambda tmp: fig.savefig(tmp, dpi=110))  # a planted link replaced, never followed
    plt.close(fig)
