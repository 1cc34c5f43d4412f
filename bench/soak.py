"""Soak: a simulated one-hour session (22,500 units of 160 ms) on tiny engines, pipelined, as fast as it
goes, sampling both processes' resident memory, open files and shared-memory mappings every N units.

    streamer build --preset tiny --backend ort --out /tmp/soak_engines
    nice -n 10 python bench/soak.py --engines /tmp/soak_engines --units 22500 --every 500 --csv soak.csv

The input is the synthetic clip made one unit at a time (`unitio.media.SyntheticUnits`), so nothing
held by this script grows either. Prints a markdown table (docs/BENCHMARKS.md holds one) and each
column's change from unit `--from` (default 100) to the end; exits 1 if RSS grew more than
`--max-growth-mib` or a count changed.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.bench import rss_bytes  # noqa: E402
from runtime.host.session import EngineSession  # noqa: E402
from unitio.media import SyntheticUnits  # noqa: E402

COLUMNS = ("unit", "elapsed_s", "ms_per_unit", "thinker_rss_mib", "performer_rss_mib", "thinker_fds", "performer_fds",
           "thinker_shm_maps", "performer_shm_maps", "dev_shm_entries")


def open_fds(pid: int | str) -> int:
    """Open file descriptors of a process (entries of /proc/PID/fd): the least of 3 looks 2 ms apart, so a
    file some library holds open for a moment does not count; a leak stays and does."""
    counts = []
    for _ in range(3):
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.002)
    return min(counts)


def shm_maps(pid: int | str) -> int:
    """Distinct /dev/shm files a process has mapped."""
    with open(f"/proc/{pid}/maps") as f:
        return len({line.split(None, 5)[-1].strip() for line in f if "/dev/shm/" in line})


def sample(k: int, t0: float, window_ms: float, performer: int) -> dict:
    mib = lambda b: round(b / 2**20, 2)
    return {"unit": k, "elapsed_s": round(time.perf_counter() - t0, 1), "ms_per_unit": round(window_ms, 2),
            "thinker_rss_mib": mib(rss_bytes("self", "VmRSS")), "performer_rss_mib": mib(rss_bytes(performer, "VmRSS")),
            "thinker_fds": open_fds("self"), "performer_fds": open_fds(performer),
            "thinker_shm_maps": shm_maps("self"), "performer_shm_maps": shm_maps(performer),
            "dev_shm_entries": len(os.listdir("/dev/shm"))}


def soak(engines: Path, units: int, every: int, seed: int = 0) -> list[dict]:
    """Stream `units` synthetic units through a pipelined session (1 thread per worker); a row every `every`."""
    rows, checkpoints = [], {100, units} | set(range(every, units + 1, every))
    with EngineSession(engines, seed=seed, threads=1, mode="pipelined") as session:
        performer = session.performer.process.pid
        t0 = last_t = time.perf_counter()
        last_k = 0
        for k, (audio, frames) in enumerate(SyntheticUnits(session.spec, units, seed), start=1):
            session.step(audio, frames)
            if k in checkpoints:
                now = time.perf_counter()
                rows.append(sample(k, t0, 1000 * (now - last_t) / (k - last_k), performer))
                last_t, last_k = now, k
                print(" ".join(f"{c}={rows[-1][c]}" for c in COLUMNS), flush=True)
        session.flush()
    return rows


def table(rows: list[dict], show_every: int) -> str:
    """Markdown table of the rows at unit 100, every `show_every` units, and the last."""
    keep = [r for r in rows if r["unit"] == 100 or r["unit"] % show_every == 0 or r is rows[-1]]
    head = ("unit", "elapsed s", "ms/unit", "thinker RSS MiB", "performer RSS MiB", "open files (thinker / performer)",
            "shm maps (thinker / performer)", "/dev/shm entries")
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---:" for _ in head) + " |"]
    for r in keep:
        lines.append(f"| {r['unit']:,} | {r['elapsed_s']:.0f} | {r['ms_per_unit']:.1f} | {r['thinker_rss_mib']:.1f} | "
                     f"{r['performer_rss_mib']:.1f} | {r['thinker_fds']} / {r['performer_fds']} | "
                     f"{r['thinker_shm_maps']} / {r['performer_shm_maps']} | {r['dev_shm_entries']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", type=Path, required=True, help="tiny engine directory (`streamer build --preset tiny`)")
    ap.add_argument("--units", type=int, default=22_500, help="units of 160 ms (default 22,500: one hour)")
    ap.add_argument("--every", type=int, default=500, help="sample every N units (default 500)")
    ap.add_argument("--show-every", type=int, default=2500, help="table rows every N units (default 2,500)")
    ap.add_argument("--from", dest="start", type=int, default=100, help="growth is measured from this unit (default 100)")
    ap.add_argument("--max-growth-mib", type=float, default=2.0, help="RSS growth that fails the soak (default 2 MiB)")
    ap.add_argument("--csv", type=Path, help="write every sample here")
    args = ap.parse_args(argv)
    if args.units < 101 or args.every < 1:
        ap.error(f"expected --units > 100 and --every >= 1, got {args.units} and {args.every}")
    print(f"soak: {args.units:,} units of {args.engines} (pipelined, 1 thread per worker) on {platform.machine()} "
          f"{platform.processor() or ''}, {os.cpu_count()} cores, python {platform.python_version()}", flush=True)
    rows = soak(args.engines, args.units, args.every)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    print(table(rows, args.show_every))
    first = next(r for r in rows if r["unit"] >= args.start)
    after = [r for r in rows if r["unit"] >= args.start]
    growth = {c: max(r[c] for r in after) - first[c] for c in COLUMNS[3:]}
    print(f"from unit {first['unit']} to {rows[-1]['unit']}: " + ", ".join(f"{c} +{v:g}" for c, v in growth.items()))
    bad = (growth["thinker_rss_mib"] > args.max_growth_mib or growth["performer_rss_mib"] > args.max_growth_mib
           or any(growth[c] for c in COLUMNS[5:9]))
    print("FLAT" if not bad else "GREW")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
