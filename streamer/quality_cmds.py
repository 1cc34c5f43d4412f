"""The commands about accuracy: `verify` (engines against the torch reference, per stage and per
session) and `calibrate` (record a calibration set for int8/fp8 builds)."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from . import args as types
from .model_cmds import add_model_args, load_system
from .outputs import console, out, read_input
from .trust_cmds import trusted


def add_parsers(sub) -> None:
    """Register `verify` and `calibrate`."""
    verify_ = sub.add_parser("verify", help="check every engine against the torch reference")
    verify_.add_argument("engines", type=Path, help="engine directory")
    verify_.add_argument("--units", type=types.int_in(1, 1000), default=3, help="streamed units per stage (default 3)")
    verify_.add_argument("--no-polygraphy", action="store_true", help="skip polygraphy's own comparison")
    verify_.add_argument("--session", type=types.int_in(0, types.MAX_UNITS), default=0, metavar="N",
                         help="also stream N synthetic units through engines and torch: token diff, audio/frames SNR")
    verify_.add_argument("--seed", type=types.seed, default=0, help="seed of the inputs")
    types.add_trust_arg(verify_)
    verify_.set_defaults(func=verify)

    cal = sub.add_parser("calibrate", help="record every stage's real inputs over a stream (for int8/fp8 builds)")
    add_model_args(cal)
    cal.add_argument("--data", default="synthetic", help="'synthetic', 'AUDIO.wav+VIDEO.mp4', or a folder of NAME.wav + NAME.mp4 pairs")
    cal.add_argument("--units", type=types.units, default=32, help="units of 160 ms to record (default 32)")
    cal.add_argument("--seed", type=types.seed, default=0, help="seed of the synthetic input and the solver noise")
    types.add_fit_args(cal)
    cal.add_argument("--out", type=Path, required=True, help="calibration .safetensors to write")
    cal.set_defaults(func=calibrate)


def verify(args) -> int:
    """`streamer verify`: the signature first (--trust), then every stage and, with --session N, a session."""
    trusted(args)
    from export.verify import verify as verify_stages

    results = verify_stages(args.engines, units=args.units, polygraphy=not args.no_polygraphy)
    table = Table(title=f"{args.engines}: engines against the torch reference ({args.units} streamed units)")
    for col in ("stage", "precision", "max abs", "max rel", "cosine", "tokens", "tolerance", "polygraphy", "result"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in results:
        tokens = "-" if r.tokens_equal_fraction is None else f"{100 * r.tokens_equal_fraction:.0f}% equal"
        limit = (f"rel <= {r.limit.max_rel:.0e}" if r.limit.max_rel is not None else f"cos >= {r.limit.min_cosine}") \
            + (f", tokens >= {100 * r.limit.min_tokens:.0f}%" if r.tokens_equal_fraction is not None else "")
        table.add_row(r.stage, r.precision, f"{r.max_abs:.2e}", "-" if r.max_rel != r.max_rel else f"{r.max_rel:.2e}",
                      f"{r.cosine:.5f}", tokens, limit, {None: "-", True: "agrees", False: "DIFFERS"}[r.polygraphy],
                      "[green]ok[/]" if r.ok else "[red]FAIL[/]")
    out.print(table)
    for precision, limit in sorted({(r.precision, r.limit) for r in results}, key=lambda x: x[0]):
        out.print(f"[dim]{precision}: {limit.reason}[/]")
    if args.session:
        d = session_against_torch(args.engines, args.session, args.seed)
        snr_floor = min(r.limit.min_snr_db for r in results)
        out.print(f"session of {d.units} units against torch fp32: text tokens differ {d.tokens_differ}/"
                  f"{d.tokens_total}, SNR of the latents {d.latents_snr_db:.1f} dB (>= {snr_floor:.0f} dB accepted), "
                  f"audio {d.audio_snr_db:.1f} dB, frames {d.frames_snr_db:.1f} dB")
        if d.latents_snr_db < snr_floor:
            console.print(f"[bold red]verify failed:[/] session latents SNR {d.latents_snr_db:.1f} dB < {snr_floor:.0f} dB")
            return 1
    failed = [r.stage for r in results if not r.ok]
    if failed:
        console.print(f"[bold red]verify failed:[/] {', '.join(failed)}")
        return 1
    return 0


def session_against_torch(engines, n_units: int, seed: int):
    """Stream the same synthetic input through the engines and through the torch fp32 modules (the same
    runtime unit path on both) -> calibration.accuracy.SessionDiff."""
    from calibration.accuracy import session_diff
    from calibration.torch_engines import torch_parts
    from export.verify import reference_system
    from runtime.manifest import read_manifest
    from runtime.open_session import default_how, open_session
    from runtime.host.session import EngineSession

    manifest = read_manifest(engines)
    how = "sequential" if default_how(manifest) == "pipelined" else default_how(manifest)  # GPU: the device path
    with open_session(engines, how, manifest, seed=seed) as session:
        system = reference_system(session.manifest)
        units = read_input("synthetic", session.spec, n_units, seed)
        reference = EngineSession.in_process(*torch_parts(system), seed=seed)
        return session_diff(reference, session, units)


def calibrate(args) -> int:
    """`streamer calibrate`: stream the data through the reference, record every stage's inputs."""
    from rich.progress import Progress

    from calibration.record import record

    from runtime.manifest import sha256

    system = load_system(args.preset, args.weights, args.weights_seed)
    units = read_input(args.data, system.preset, args.units, args.seed, args.fit)
    weights = getattr(system, "weights_source", None) or (
        {"file": str(args.weights.resolve()), "sha256": sha256(args.weights)} if args.weights else {"seed": args.weights_seed})
    with Progress(console=console) as bar:
        task = bar.add_task(f"recording {len(units)} units ({system.preset.name})", total=len(units))
        path = record(system, units, args.seed, args.out, source=args.data,
                      on_unit=lambda k: bar.advance(task), weights=weights)
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): the inputs of every stage over "
                  f"{len(units)} units")
    return 0
