"""Load test of `streamer serve`: N concurrent clients on loopback, each streaming the
synthetic clip at real-time pace (unit k sent once it is complete) for T seconds, against one local
Ray Serve application. Per N: sessions that held real time (every unit answered, at most 1% late on
the server or filled because their input missed its tick), late and missing units, unit latency p50/p99
(unit sent -> its text back, as the client sees it), the server's batched step p50/p99 and the
replicas' resident memory.

    streamer build --preset tiny --backend ort --out /tmp/load/b1               # batch 1: solo rows
    streamer build --preset tiny --backend ort --batch 16 --out /tmp/load/b16   # 16 sessions per call
    python bench/serve_load.py --engines /tmp/load/b1 --clients 1,2,4,6,8 --seconds 20
    python bench/serve_load.py --engines /tmp/load/b16 --clients 4,8,12,16 --seconds 20
    python bench/serve_load.py --engines /tmp/load/b8 --replicas 2 --faults --clients 6 --seconds 24

`--flood IDLE` runs one round of N real clients while IDLE sockets (at most 1000) connect and never
say hello, each reopened as soon as the server closes it, and /health is polled every 0.25 s:

    python bench/serve_load.py --engines /tmp/load/b4 --clients 2 --flood 200 --seconds 20

`--faults` runs one round of N clients in which one client vanishes mid-stream (its socket aborted,
no "end") and reconnects as a new session, and one replica is killed (ray.kill) while sessions run on
both: it reports what the other sessions saw around each event, whether Serve brought the replica
back and new sessions open on it, and that sessions, slots and memory came back to where they were.

The clients run in this process (asyncio) beside the server on the same CPU: on a 2-core machine they
take a share of it, which the table's notes say. Prints markdown rows; --json FILE keeps everything.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serve.client import SessionClient  # noqa: E402
from serve.launch import deploy, free_port, start_ray, stop  # noqa: E402
from serve.rows import engine_batch  # noqa: E402
from unitio.media import SyntheticUnits  # noqa: E402


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def metric_values(base: str, name: str) -> list[float]:
    """Every sample of one Prometheus metric (all label sets) from /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        text = r.read().decode()
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")]


def wait_health(base: str, cond, timeout_s: float = 120.0) -> dict:
    """Poll /health until cond(health) holds; the last health either way."""
    deadline, h = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            h = http_json(base + "/health")
            if cond(h):
                return h
        except OSError:
            pass
        time.sleep(0.5)
    return h


def q(values, p: float) -> float:
    return float(np.quantile(np.asarray(values, np.float64), p)) if len(values) else float("nan")


class Run:
    """One client's session: its per-unit records (wall time out, step, lag, what the unit was made from)."""

    def __init__(self, name: str) -> None:
        self.name, self.units, self.stats, self.replica, self.error = name, [], None, None, None
        self.close_code: int | None = None

    def on_unit(self, u) -> None:
        if u.unit is not None:
            self.units.append((time.perf_counter(), u.timing.get("step_ms"), u.timing.get("lag_ms"), u.input))


async def one_session(url: str, name: str, units: list, delay_s: float, seed: int, abort_after_s: float | None = None,
                      runs: list | None = None) -> Run:
    """Wait delay_s, open a session, stream `units` at real-time pace; with abort_after_s, abort the socket
    then (no end, no close handshake: a vanished client) and return."""
    run = Run(name)
    if runs is not None:
        runs.append(run)
    await asyncio.sleep(delay_s)
    try:
        async with SessionClient(url, seed=seed) as c:
            run.replica = c.ready["replica"]
            task = asyncio.create_task(c.stream(units, len(units), run.on_unit))
            if abort_after_s is not None:
                done, _ = await asyncio.wait({task}, timeout=abort_after_s)
                if not done:
                    c.ws.transport.abort()
            run.stats = await task
            run.close_code = c.ws.close_code
    except Exception as e:  # a refused or broken session is a result here, not a crash of the load test
        run.error = f"{type(e).__name__}: {e}"
    return run


HELD_LATE = 0.01  # a session holds real time when every unit is answered and at most 1% were late or filled


def held(run: Run, unit_ms: float) -> bool:
    """Every unit sent was answered, no fatal error, and at most HELD_LATE of them late on the server
    (output out more than a unit after its tick was due) or filled because the input missed its tick."""
    s = run.stats
    return (s is not None and run.error is None and s.fatal is None and s.received == s.sent > 0
            and s.late_units + s.inputs.get("missing", 0) <= HELD_LATE * s.sent)


def summarize(runs: list[Run], unit_ms: float) -> dict:
    stats = [r.stats for r in runs if r.stats is not None]
    lat = [v for s in stats for v in s.latency_ms]
    step = [u[1] for r in runs for u in r.units if u[1] is not None]
    return {"sessions": len(runs), "held": sum(held(r, unit_ms) for r in runs),
            "units": sum(s.received for s in stats), "sent": sum(s.sent for s in stats),
            "late_units": sum(s.late_units for s in stats), "missing": sum(s.inputs.get("missing", 0) for s in stats),
            "errors": [r.error for r in runs if r.error] + [s.fatal.get("code") for s in stats if s.fatal],
            "latency_ms": {"p50": q(lat, 0.5), "p99": q(lat, 0.99)}, "step_ms": {"p50": q(step, 0.5), "p99": q(step, 0.99)}}


async def load_round(url: str, spec, n: int, seconds: float) -> list[Run]:
    units_per = max(1, int(seconds * 1000 / spec.unit_ms))
    clips = [list(SyntheticUnits(spec, units_per, seed=i)) for i in range(n)]
    stagger = spec.unit_ms / 1000.0 / n  # real clients are not in step with each other or with the ticks
    return list(await asyncio.gather(*[one_session(url, f"c{i}", clips[i], i * stagger, seed=i) for i in range(n)]))


MAX_FLOOD = 1000  # idle sockets a flood round may hold open at once
FLOOD_ADDRESSES = 8  # the flood comes from 127.0.0.2-9 (other hosts, as far as the server can tell)


async def _idlers(url: str, idle: int, seconds: float) -> tuple[int, int]:
    """`idle` sockets from 127.0.0.2-9 that connect and never say hello, each reopened when the server
    closes it (after a refusal, a second later), for `seconds` -> (opened, refused)."""
    from websockets.asyncio.client import connect

    opened, refused, deadline = [0], [0], time.monotonic() + seconds

    async def idler(i: int) -> None:
        source = (f"127.0.0.{2 + i % FLOOD_ADDRESSES}", 0)  # the flood's own addresses; real clients: 127.0.0.1
        while time.monotonic() < deadline:
            try:
                async with connect(url + "/v1/session", open_timeout=10, ping_interval=None, local_addr=source) as ws:
                    opened[0] += 1
                    with contextlib.suppress(Exception):  # held until the server pushes it out
                        await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
            except Exception:  # refused (too many new sockets from this address): try again in a second
                refused[0] += 1
                await asyncio.sleep(1.0)

    await asyncio.gather(*[idler(i) for i in range(idle)], return_exceptions=True)
    return opened[0], refused[0]


def flood_child(url: str, idle: int, seconds: float, conn) -> None:
    """The flood in a process of its own (not sharing this one's CPU time and GIL with the real clients)."""
    conn.send(asyncio.run(_idlers(url, idle, seconds)))


async def flood_round(base: str, url: str, spec, n: int, idle: int, seconds: float) -> dict:
    """N real clients (from 127.0.0.1) for `seconds` while `idle` sockets (from 8 other loopback
    addresses, in a child process) connect and never say hello, each one the server closes opened again
    as an attacker would, and /health is polled every 0.25 s: what the real clients held, how fast
    /health answered, how many idle sockets were opened and refused in all."""
    import multiprocessing

    idle = min(idle, MAX_FLOOD)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=flood_child, args=(url, idle, seconds + 4.0, theirs), daemon=True)
    child.start()
    stop, health_ms, health_bad = asyncio.Event(), [], [0]

    async def poll_health() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                await asyncio.to_thread(http_json, base + "/health")
            except Exception:
                health_bad[0] += 1
            health_ms.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.25)

    await asyncio.sleep(3.0)  # the flood is up before the real clients come
    poller = asyncio.create_task(poll_health())
    runs = await asyncio.wait_for(load_round(url, spec, n, seconds), seconds + 60)
    stop.set()
    await poller
    opened, refused = await asyncio.to_thread(lambda: ours.recv() if ours.poll(30) else (-1, -1))
    child.join(10)
    return {"idle": idle, "idle_opened": opened, "idle_refused": refused, "runs": runs,
            "health_ms": {"p50": q(health_ms, 0.5), "p99": q(health_ms, 0.99), "max": max(health_ms or [float("nan")])},
            "health_failed": health_bad[0], "health_polls": len(health_ms)}


def row(label: str, n: int, s: dict, rss_mib: float) -> str:
    late = 100.0 * s["late_units"] / max(1, s["units"])
    return (f"| {label} | {n} | {s['held']}/{s['sessions']} | {s['units']} | {s['late_units']} ({late:.1f}%) | {s['missing']} "
            f"| {s['latency_ms']['p50']:.0f} / {s['latency_ms']['p99']:.0f} | {s['step_ms']['p50']:.1f} / {s['step_ms']['p99']:.1f} "
            f"| {rss_mib:.0f} |")


def window(runs: list[Run], t0: float, t1: float, unit_ms: float = 160.0) -> dict:
    """Units answered in [t0, t1) by these sessions: how many, late (server) and missing."""
    us = [u for r in runs for u in r.units if t0 <= u[0] < t1]
    late = sum(1 for _, step, lag, _ in us if step is not None and lag is not None and lag + step > unit_ms)
    return {"units": len(us), "late": late, "missing": sum(1 for u in us if u[3] == "missing")}


def replica_names() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#Replica#" in a["name"]}


def replicas_running_after(t_kill: float, before: set[str], want: int, timeout_s: float = 180.0) -> float | None:
    """Seconds from the kill until a new replica (an actor name not in `before`) is up and Serve reports
    `want` replicas RUNNING (None: not within timeout_s)."""
    from ray import serve as ray_serve

    from serve.app import APP_NAME

    while time.perf_counter() - t_kill < timeout_s:
        if replica_names() - before:
            states = ray_serve.status().applications[APP_NAME].deployments["Replica"].replica_states
            if states.get("RUNNING", 0) >= want and sum(states.values()) == states.get("RUNNING", 0):
                return round(time.perf_counter() - t_kill, 1)
        time.sleep(0.2)
    return None


async def fault_round(base: str, url: str, spec, n: int, seconds: float) -> dict:
    """One client vanishes at T/4 and comes back; one replica is killed at T/2 (see the module doc)."""
    import ray

    units_per = max(8, int(seconds * 1000 / spec.unit_ms))
    clips = [list(SyntheticUnits(spec, units_per, seed=i)) for i in range(n)]
    stagger, runs = spec.unit_ms / 1000.0 / n, []
    await asyncio.gather(*[one_session(url, f"warm{i}", clips[i][:12], i * stagger, seed=i) for i in range(n)])
    wait_health(base, lambda h: h.get("sessions", 1) == 0, 60)
    await asyncio.sleep(1.5)  # the replicas' next reports
    rss_before = metric_values(base, "avs_replica_rss_bytes")  # after a warm-up round: arenas and caches made
    started = time.perf_counter()
    tasks = [asyncio.create_task(one_session(url, f"c{i}", clips[i], i * stagger, seed=i, runs=runs,
                                             abort_after_s=seconds / 4 if i == 0 else None)) for i in range(n)]
    await asyncio.sleep(seconds / 4 + 0.3)
    t_vanish = started + seconds / 4
    rest = clips[0][int(units_per * 3 / 4):]
    tasks.append(asyncio.create_task(one_session(url, "c0-again", rest, 0.2, seed=100, runs=runs)))
    await asyncio.sleep(seconds / 2 - (time.perf_counter() - started))
    by_replica: dict[str, list[str]] = {}
    for r in runs:
        if r.replica and r.stats is None:
            by_replica.setdefault(r.replica, []).append(r.name)
    victim = max(by_replica, key=lambda k: len(by_replica[k])) if by_replica else None
    t_kill, killed, before = time.perf_counter(), None, replica_names()
    if victim is not None:
        for a in ray.util.list_named_actors(all_namespaces=True):
            if victim in a["name"] and "Replica" in a["name"]:
                ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
                killed = a["name"]
    back = asyncio.get_running_loop().run_in_executor(None, replicas_running_after, t_kill, before, len(rss_before))
    done = await asyncio.gather(*tasks)
    others = [r for r in done if r.replica != victim and r.name not in ("c0",)]
    on_victim = [r for r in done if r.replica == victim]
    u = spec.unit_ms / 1000.0
    report = {
        "clients": n, "seconds": seconds, "vanished_at_s": round(t_vanish - started, 2),
        "killed_replica": killed, "killed_at_s": round(t_kill - started, 2),
        "sessions_on_killed_replica": [r.name for r in on_victim],
        "they_saw": sorted({(r.error or (f"socket closed ({r.close_code}) after {r.stats.received} of {r.stats.sent} "
                                          f"units, no bye") if r.stats.bye is None else "bye") for r in on_victim}),
        "others_before_vanish": window(others, started + 1.0, t_vanish),
        "others_around_vanish": window(others, t_vanish, t_vanish + 10 * u),
        "others_around_kill": window(others, t_kill, t_kill + 10 * u),
        "others_after_kill": window(others, t_kill + 10 * u, time.perf_counter()),
        "reconnected": next((r.error or f"{r.stats.received}/{r.stats.sent} units" for r in done if r.name == "c0-again"), None),
    }
    report["replica_back_s"] = await back
    wait_health(base, lambda h: h.get("replicas", 0) >= len(rss_before) and h.get("sessions", 1) == 0, 180)
    again = await asyncio.gather(*[one_session(url, f"new{i}", clips[i][:12], i * stagger, seed=i) for i in range(n)])
    report["new_sessions_after"] = f"{sum(held(r, spec.unit_ms) for r in again)}/{n} held real time for 12 units"
    h = wait_health(base, lambda h: h.get("sessions", 1) == 0 and h.get("slots_free") == h.get("slots"), 60)
    report["after"] = {k: h.get(k) for k in ("replicas", "sessions", "slots", "slots_free")}
    report["rss_mib_before"] = [round(v / 2**20) for v in rss_before]
    report["rss_mib_after"] = [round(v / 2**20) for v in metric_values(base, "avs_replica_rss_bytes")]
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, required=True, help="engine directory (batch 1: solo rows; --batch B: batched)")
    p.add_argument("--clients", default="1,2,4", help="comma-separated N to run, each a round of N concurrent clients")
    p.add_argument("--seconds", type=float, default=20.0, help="each client streams this long (default 20)")
    p.add_argument("--replicas", type=int, default=1, help="replicas (default 1)")
    p.add_argument("--max-sessions", type=int, default=None, help="slots per replica (default: max N, at most the batch)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per replica's engines (default 1)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--faults", action="store_true", help="the disconnect / reconnect / killed-replica round instead")
    p.add_argument("--flood", type=int, default=0, metavar="IDLE",
                   help=f"a flood round instead: IDLE idle sockets (at most {MAX_FLOOD}) that never say hello, "
                        f"reopened when closed, beside N real clients (the first of --clients)")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    args = p.parse_args()

    ns = [int(x) for x in args.clients.split(",")]
    batch, manifest = engine_batch(args.engines)
    slots = args.max_sessions or (min(max(ns), batch) if batch > 1 else max(ns))
    if args.faults:
        slots = args.max_sessions or (batch if batch > 1 else max(ns))
    kind = "batched" if batch > 1 else "unbatched"
    label = f"{manifest['preset']['name']} {kind} (B={batch})" if batch > 1 else f"{manifest['preset']['name']} {kind}"
    local = start_ray(None, args.num_cpus)
    out = {"engines": str(args.engines), "kind": kind, "batch": batch, "replicas": args.replicas, "slots": slots,
           "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs", "rounds": []}
    try:
        t = time.perf_counter()
        base = deploy({"engines": str(args.engines.resolve()), "threads": args.threads}, args.replicas, slots,
                      port=free_port(), cpus_per_replica=float(args.threads))
        url = base.replace("http://", "ws://")
        wait_health(base, lambda h: h.get("replicas", 0) >= args.replicas, 120)
        info = http_json(base + "/info")
        spec = argparse.Namespace(**info["spec"])
        print(f"# {label}: {args.replicas} replica(s) x {slots} slots, up in {time.perf_counter() - t:.0f} s; "
              f"{out['machine']}; clients in this process", flush=True)
        if args.flood:
            f = asyncio.run(flood_round(base, url, spec, ns[0], args.flood, args.seconds))
            s = summarize(f.pop("runs"), spec.unit_ms)
            out["flood"] = {**f, **s}
            print("| engines | idle sockets (opened / refused in all) | clients | held real time | late units | missing "
                  "| latency p50 / p99 ms | /health p50 / p99 / max ms (failed) |\n| --- | ---: | ---: | ---: | ---: "
                  "| ---: | ---: | ---: |")
            h = f["health_ms"]
            print(f"| {label} | {f['idle']} ({f['idle_opened']} / {f['idle_refused']}) | {ns[0]} | {s['held']}/{s['sessions']} "
                  f"| {s['late_units']} | {s['missing']} | {s['latency_ms']['p50']:.0f} / {s['latency_ms']['p99']:.0f} "
                  f"| {h['p50']:.0f} / {h['p99']:.0f} / {h['max']:.0f} ({f['health_failed']} of {f['health_polls']}) |")
        elif args.faults:
            report = asyncio.run(fault_round(base, url, spec, ns[0], args.seconds))
            print(json.dumps(report, indent=1))
            out["faults"] = report
        else:
            print("| engines | clients | held real time | units | late units | missing | latency p50 / p99 ms "
                  "| step p50 / p99 ms | replica RSS MiB |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for n in ns:
                if n > slots * args.replicas:
                    print(f"skip N={n}: more than the {slots * args.replicas} slots", flush=True)
                    continue
                runs = asyncio.run(load_round(url, spec, n, args.seconds))
                s = summarize(runs, spec.unit_ms)
                wait_health(base, lambda h: h.get("sessions", 1) == 0, 60)
                rss = max(metric_values(base, "avs_replica_rss_bytes") or [0.0]) / 2**20
                out["rounds"].append({"clients": n, **s, "replica_rss_mib": rss})
                print(row(label, n, s, rss), flush=True)
            holding = [r["clients"] for r in out["rounds"] if r["held"] == r["sessions"]]
            out["largest_real_time"] = max(holding) if holding else 0
            print(f"largest N holding real time: {out['largest_real_time']}")
    finally:
        stop(local)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
