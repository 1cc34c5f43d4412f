"""The commands about accuracy: `verify` (engines against the torch reference, per stage and per
session) and `calibrate` (record a calibration set; with --report, what INT8/FP8 cost)."""
from __future__ import annotations

from rich.table import Table

from .outputs import console, out, read_input


def verify(args) -> int:
    from export.verify import verify as verify_stages

    results = verify_stages(args.engines, units=args.units, polygraphy=not args.no_polygraphy)
    table = Table(title=f"{args.engines}: engines against the torch reference ({args.units} streamed units)")
    for col in ("stage", "precision", "max abs", "max rel", "cosine", "tolerance", "tokens", "polygraphy", "result"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in results:
        quantized = r.cosine is not None
        tokens = (f"{100 * r.tokens_equal_fraction:.0f}% equal" if r.tokens_equal_fraction is not None
                  else "-" if quantized else "equal" if r.tokens_equal else "DIFFER")
        table.add_row(r.stage, r.precision, f"{r.max_abs:.2e}", "-" if quantized else f"{r.max_rel:.2e}",
                      f"{r.cosine:.5f}" if quantized else "-",
                      f"cos >= {r.tolerance}" if quantized else f"rel <= {r.tolerance:.0e}", tokens,
                      {None: "-", True: "agrees", False: "DIFFERS"}[r.polygraphy], "[green]ok[/]" if r.ok else "[red]FAIL[/]")
    out.print(table)
    if args.session:
        d = session_against_torch(args.engines, args.session, args.seed)
        out.print(f"session of {d.units} units against torch fp32: text tokens differ {d.tokens_differ}/"
                  f"{d.tokens_total}, SNR of the latents {d.latents_snr_db:.1f} dB, audio {d.audio_snr_db:.1f} dB, "
                  f"frames {d.frames_snr_db:.1f} dB")
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
    from runtime.session import EngineSession

    with EngineSession(engines, seed=seed) as session:
        system = reference_system(session.manifest)
        units = read_input("synthetic", session.spec, n_units, seed)
        reference = EngineSession.in_process(*torch_parts(system), seed=seed)
        return session_diff(reference, session, units)


def calibrate(args, load_system) -> int:
    """`streamer calibrate`: stream the data through the reference, record every stage's inputs."""
    from rich.progress import Progress

    from calibration.record import record

    system = load_system(args.preset, args.weights, args.weights_seed)
    units = read_input(args.data, system.preset, args.units, args.seed)
    with Progress(console=console) as bar:
        task = bar.add_task(f"recording {len(units)} units ({system.preset.name})", total=len(units))
        path = record(system, units, args.seed, args.out, source=args.data,
                      on_unit=lambda k: bar.advance(task))
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): the inputs of every stage over "
                  f"{len(units)} units")
    return 0
