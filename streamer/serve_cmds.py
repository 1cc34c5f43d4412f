"""`streamer serve` (the Ray Serve application of serve/) and `streamer client` (one live session over
the WebSocket protocol, its outputs written as `streamer run` writes them). Heavy imports (ray,
websockets) happen inside the commands."""
from __future__ import annotations

import argparse
import asyncio
import signal
import time
from pathlib import Path

from . import args as types
from .outputs import check_out_dir, console, read_input


def add_parsers(sub) -> None:
    serve = sub.add_parser("serve", help="serve live sessions over WebSocket (Ray Serve; the page at /)")
    serve.add_argument("--engines", type=Path, required=True, help="engine directory (`streamer build`; --batch B batches)")
    serve.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on (default 127.0.0.1)")
    serve.add_argument("--port", type=types.int_in(0, 65535), default=8000, help="port (default 8000)")
    serve.add_argument("--max-sessions", type=types.int_in(1, 1024), default=None,
                       help="sessions per replica (default: the engines' batch B, or 4 for batch-1 CPU engines)")
    serve.add_argument("--replicas", type=types.int_in(1, 4096), default=None,
                       help="replicas, each one batched runtime (default: one per GPU for GPU engines, else 1)")
    serve.add_argument("--address", default=None, metavar="RAY_ADDRESS",
                       help="join this Ray cluster (e.g. auto, or HOST:6379) instead of starting a local instance "
                            "(requires Ray's token authentication: RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    serve.add_argument("--listen", default=None, metavar="HOST",
                       help="start a Ray cluster other nodes may join on this address (default: a local instance "
                            "with every Ray port on 127.0.0.1); turns Ray's token authentication on")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="a web page origin (e.g. https://example.org) allowed to open sessions besides the "
                            "server's own; repeat for more, '*' for any (default: same origin only)")
    serve.add_argument("--max-per-address", type=types.int_in(1, 4096), default=16,
                       help="sessions one client address may hold at once (default 16)")
    serve.add_argument("--threads", type=types.threads, default=1, help="CPU threads per engine (default 1)")
    serve.add_argument("--rows", default="auto", choices=["auto", "batched", "unbatched"],
                       help="batched runtime (engines of batch B) or B solo sessions (batch-1 engines); default auto")
    serve.add_argument("--grace-ms", type=types.int_in(0, 1000), default=40,
                       help="a session starts at the first tick its first unit has waited this long for (default 40)")
    serve.add_argument("--max-session-s", type=types.int_in(1, 7 * 86400), default=3600,
                       help="the longest a session may run (default 3600 s)")
    serve.add_argument("--idle-timeout-s", type=types.seconds, default=10.0,
                       help="a session that sends no unit (or end) for this long is closed; pings do not count (default 10 s)")
    serve.add_argument("--num-cpus", type=types.int_in(1, 4096), default=None,
                       help="CPUs of the local Ray instance (default: this machine's)")
    types.add_trust_arg(serve)
    serve.set_defaults(func=cmd_serve)

    client = sub.add_parser("client", help="stream a clip to `streamer serve` at real-time pace and write what comes back")
    client.add_argument("--url", required=True, help="ws://HOST:PORT (the session path /v1/session is added)")
    client.add_argument("--input", default="synthetic", help="'synthetic' or 'AUDIO.wav+VIDEO.mp4' at the served preset's rates")
    client.add_argument("--units", type=types.units, default=None, help="units of 160 ms (default: 50 synthetic, all of a file)")
    client.add_argument("--seed", type=types.seed, default=0, help="seed of the synthetic input and the session's solver noise")
    client.add_argument("--video", default="raw", choices=["raw", "jpeg"], help="how frames travel (default raw)")
    client.add_argument("--lead", type=types.int_in(0, 24), default=0,
                        help="send units this many units ahead of real time (default 0: each when it is complete)")
    types.add_fit_args(client)
    client.add_argument("--out", type=Path, required=True, help="output folder (the files of `streamer run`)")
    client.set_defaults(func=cmd_client)


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the engines (and their signature), start or join Ray, deploy, serve until Ctrl-C/SIGTERM."""
    import ray

    from serve.launch import check_port, deploy, start_ray, stop, stop_sessions
    from serve.protocol import PATH, Limits
    from serve.rows import engine_batch

    from .signals import stop_signals

    engines = args.engines.resolve()
    trust = str(args.trust.resolve()) if args.trust else None
    batch, manifest = engine_batch(engines, trust)  # refuses a bad or unsigned directory before Ray starts
    cuda = manifest["target"]["device"] == "cuda"
    if args.max_sessions and batch > 1 and args.max_sessions > batch:
        raise ValueError(f"--max-sessions {args.max_sessions}: the engines of {engines} were built for {batch} "
                         f"sessions; expected at most {batch}")
    slots = args.max_sessions or (batch if batch > 1 else 4)
    if not args.address:
        check_port(args.host, args.port)
    from runtime.spec import unit_spec

    unit_ms = unit_spec(manifest).unit_ms
    limits = Limits(max_session_units=int(args.max_session_s * 1000 / unit_ms), idle_timeout_s=args.idle_timeout_s)
    config = {"engines": str(engines), "threads": args.threads, "trust": trust, "rows": args.rows,
              "grace_ms": args.grace_ms, "limits": limits.__dict__}
    if args.address and args.listen:
        raise ValueError("--address and --listen: expected one of them (join a cluster, or start one to be joined)")
    with stop_signals():
        local = start_ray(args.address, args.num_cpus, listen=args.listen, say=console.print)
        try:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            if cuda and gpus == 0:
                raise ValueError(f"{engines} holds engines for a CUDA GPU; the Ray cluster has no GPU")
            replicas = args.replicas or (gpus if cuda else 1)
            gate = {"allow_origins": tuple(args.allow_origin), "max_sessions_per_address": args.max_per_address}
            url = deploy(config, replicas, slots, args.host, args.port, 1.0 if cuda else 0.0,
                         0.0 if cuda else float(args.threads), gate)
            kind = "batched" if batch > 1 and args.rows != "unbatched" else "unbatched"
            where = ("a joined cluster" if not local else
                     f"a Ray cluster on {args.listen} others may join" if args.listen not in (None, "127.0.0.1", "localhost")
                     else "a local Ray instance")
            console.print(f"serving {manifest['preset']['name']} ({manifest['backend']}, {kind}): {replicas} replica(s) "
                          f"x {slots} sessions, on {where}")
            ws = url.replace("http://", "ws://")
            console.print(f"  page     {url}/\n  session  {ws}{PATH}\n  metrics  {url}/metrics   health {url}/health\n"
                          f"Ctrl-C stops.")
            with stop_signals():  # again: ray.init put its own (aborting) handlers in front of ours
                while True:
                    time.sleep(1.0)
        finally:
            told = stop_sessions()  # shutting_down and close 1001 to every session, before Ray goes down
            console.print(f"stopping ... ({told} live session(s) told shutting_down)")
            stop(local)


def cmd_client(args: argparse.Namespace) -> int:
    """One session at real-time pace; outputs streamed to --out unit by unit (kept on a fault or Ctrl-C)."""
    from serve.client import session_url

    session_url(args.url)  # a bad URL is refused before anything else
    check_out_dir(args.out)
    stats = asyncio.run(_client(args))
    from unitio.timing import percentiles

    lat = percentiles(stats.latency_ms) if stats.latency_ms else {"p50": float("nan"), "p99": float("nan")}
    inputs = ", ".join(f"{k} {v}" for k, v in sorted(stats.inputs.items()))
    console.print(f"sent {stats.sent} units, received {stats.received} ({inputs}); unit latency p50 {lat['p50']:.1f} / "
                  f"p99 {lat['p99']:.1f} ms (sent -> its text back); late units {stats.late_units}; "
                  f"errors {len(stats.errors)}")
    for e in stats.errors[:10]:
        console.print(f"  error {e.get('code')} (unit {e.get('unit')}): {e.get('message')}")
    if stats.fatal is not None:
        raise ValueError(f"the server ended the session: {stats.fatal.get('code')}: {stats.fatal.get('message')}")
    return 0


async def _client(args: argparse.Namespace):
    import numpy as np

    from serve.client import SessionClient

    from .outputs import OutputStream
    from .signals import Terminated

    task, terminated = asyncio.current_task(), []
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: (terminated.append(1), task.cancel()))
    async with SessionClient(args.url, seed=args.seed, video=args.video) as c:
        units = read_input(args.input, c.spec, args.units, args.seed, args.fit)
        console.print(f"session {c.ready['session']} on replica {c.ready['replica']} ({c.spec.name}, {c.ready['rows']}): "
                      f"{len(units)} units at real-time pace")
        stream, complete = OutputStream(args.out, c.spec), False

        def on_unit(u) -> None:
            if u.unit is not None:
                stream.add_text(u.unit, np.asarray(u.text, np.int64))
                t = u.timing
                stream.add_timings({f"server_{k[:-3]}": t[k] for k in ("wait_ms", "step_ms", "lag_ms") if k in t})
            if u.audio is not None:
                stream.add_media(u.audio, u.frames)

        try:
            stats = await c.stream(units, len(units), on_unit, lead=args.lead)
            complete = stats.fatal is None
            return stats
        except asyncio.CancelledError:
            if terminated:
                raise Terminated("terminated (SIGTERM)") from None
            raise
        finally:
            stream.close(complete)
