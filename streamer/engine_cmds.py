"""`streamer run --engines`: a session on built engines (the host path, or the device path with
--placement), outputs streamed to disk. `bench` and `profile` are in bench_cmds.py."""
from __future__ import annotations

import time

from .outputs import check_out_dir, console, print_timings, read_input, stream_session
from unitio.timing import percentiles


def session_kind(args, manifest: dict) -> str:
    """What runs the engines: --placement (the device path), --sequential, or the engines' default
    (one-gpu for GPU engines, pipelined for CPU ones)."""
    from runtime.open_session import default_how

    if getattr(args, "placement", None):
        if getattr(args, "sequential", False):
            raise ValueError("--sequential is a host-path mode; it does not go with --placement")
        return args.placement
    if getattr(args, "sequential", False):
        return "sequential"
    return default_how(manifest)


def _session(args, manifest: dict, mode: str):
    """The session of kind `mode` on --engines (its manifest already checked); the runtime checks the
    directory again as it loads it (its signature too, with --trust), in every process."""
    from runtime.open_session import open_session

    if getattr(args, "weights", None) is not None:
        raise ValueError("--weights goes with the torch backend; engines carry the weights they were built with")
    session = open_session(args.engines, mode, manifest, seed=args.seed, threads=args.threads,
                           performer_timeout_s=getattr(args, "performer_timeout", None),
                           device=getattr(args, "device", None), performer_device=getattr(args, "performer_device", None),
                           expect_preset=getattr(args, "preset", None), trust=getattr(args, "trust", None))
    backend = manifest["backend"]
    if getattr(args, "backend", None) not in (None, backend):
        session.close()
        raise ValueError(f"{args.engines} holds {backend} engines, but --backend {args.backend} was given")
    args.backend = backend
    return session


def run_engines(args) -> int:
    """`streamer run --engines DIR`: paced to wall time with --live, else as fast as it goes. --out, the
    manifest (its signature with --trust) and the input are checked before the performer starts; the
    outputs are streamed to disk unit by unit and finalised on Ctrl-C, SIGTERM or a performer fault."""
    from runtime.manifest import read_manifest
    from runtime.spec import unit_spec

    check_out_dir(args.out)
    manifest = read_manifest(args.engines, getattr(args, "preset", None), trust=args.trust)
    units = read_input(args.input, unit_spec(manifest), args.units, args.seed, args.fit)
    mode = session_kind(args, manifest)
    with _session(args, manifest, mode) as session:
        p = session.spec
        if not args.live:
            media = lambda o: None if o is None else (o.audio, o.frames)  # noqa: E731
            stream = stream_session(session.step, lambda: media(session.flush()), units, args.out, p,
                                    f"({p.name}, {args.backend}, {mode})")
            print_timings(stream.timing_summary(), p.unit_ms, stream.units)
            return 0
        stats = _run_live(session, units, args.out, mode)
    lat = percentiles(stats.latency_ms)
    console.print(f"model-side latency p50 {lat['p50']:.1f} / p90 {lat['p90']:.1f} / p99 {lat['p99']:.1f} ms; "
                  f"missing input {stats.missing}, late {stats.late}, rejected {stats.rejected}, "
                  f"units behind {stats.behind}")
    return 0


class _TextTap:
    """The session as `run_live` drives it, with each unit's text written to the stream as it is made."""

    def __init__(self, session, stream) -> None:
        self._session, self._stream = session, stream

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def step(self, *a, **kw):
        from .signals import deferred

        r = self._session.step(*a, **kw)
        with deferred():
            self._stream.add_text(r.unit_index, r.text_tokens)
        return r


def _run_live(session, units, folder, mode: str):
    """--live: units replayed at wall-clock pace into `run_live`; outputs streamed as they go out."""
    from runtime.live import LiveInput, replay, run_live

    from .outputs import OutputStream
    from .signals import deferred, stop_signals

    p, stream, complete = session.spec, OutputStream(folder, session.spec), False

    def emit(o) -> None:
        with deferred():
            stream.add_media(o.audio, o.frames)

    with stop_signals():
        try:
            source, t0 = LiveInput(), time.perf_counter()
            replay(units, source, p.unit_ms / 1000.0, t0)
            console.print(f"live: {len(units)} units paced at {p.unit_ms:g} ms ({mode})")
            stats = run_live(_TextTap(session, stream), source, len(units), emit, t0)
            complete = True
        finally:
            with deferred():
                stream.close(complete)
    return stats
