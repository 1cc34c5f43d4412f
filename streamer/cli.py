"""`streamer`: the deployment engineer's command line.

    streamer run       stream a clip (synthetic or WAV+MP4) through a session, write out.wav/out.mp4
    streamer presets   the presets' sizes and parameter counts
    streamer init-weights   a seeded random weights file for a preset (safetensors)
    streamer import-weights a weights file from local Qwen3 / Mimi / Wan2.1-VAE checkpoints
    streamer build     every stage to ONNX -> engines + manifest.json
    streamer verify    every engine against the torch reference
    streamer inspect   what an engine directory holds

Heavy imports (torch, model_src) happen inside the commands, so `streamer --help` is instant.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .units import InputError

console = Console(stderr=True, soft_wrap=True)  # progress and messages, never wrapped mid-message
out = Console(width=None if sys.stdout.isatty() else 160)  # tables (not squeezed to 80 columns in a pipe)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (InputError, ValueError, FileNotFoundError) as e:  # user-facing errors (WeightsError, ManifestError,
        # EngineInputError too): no traceback
        console.print("[bold red]error:[/]", escape(str(e)))
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="stream a clip through a session and write the output")
    _add_model_args(run)
    run.add_argument("--backend", default=None, choices=["torch", "ort", "aoti", "trt"],
                     help="torch (eager reference) or the engines' backend (default: torch, or the engines')")
    run.add_argument("--engines", type=Path, help="engine directory from `streamer build` (runs on the engines)")
    run.add_argument("--input", default="synthetic", help="'synthetic' or 'AUDIO.wav+VIDEO.mp4' (24 kHz mono, 25 fps)")
    run.add_argument("--units", type=int, default=None, help="units of 160 ms to stream (default: 50 synthetic, all of a file)")
    run.add_argument("--seed", type=int, default=0, help="seed of the synthetic input and the solver noise")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.set_defaults(func=cmd_run)

    presets = sub.add_parser("presets", help="list the presets with their sizes and parameter counts")
    presets.set_defaults(func=cmd_presets)

    init = sub.add_parser("init-weights", help="write seeded random weights for a preset")
    init.add_argument("--preset", default="tiny")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    init.set_defaults(func=cmd_init_weights)

    imp = sub.add_parser("import-weights", help="build a weights file from local upstream checkpoints "
                                                 "(Qwen3, Mimi, Wan2.1 VAE; safetensors only)")
    imp.add_argument("--preset", default="small")
    imp.add_argument("--qwen3", type=Path, help="transformers Qwen3 checkpoint folder -> backbone")
    imp.add_argument("--mimi", type=Path, help="transformers Mimi checkpoint (file or folder) -> audio VAE convs")
    imp.add_argument("--wan-vae", type=Path, help="diffusers AutoencoderKLWan checkpoint (file or folder) -> video VAE")
    imp.add_argument("--seed", type=int, default=0, help="seed of every part not imported")
    imp.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    imp.set_defaults(func=cmd_import_weights)

    build = sub.add_parser("build", help="export every stage to ONNX and build engines + manifest.json")
    _add_model_args(build)
    build.add_argument("--backend", default="ort", choices=["ort", "aoti", "trt"], help="engine backend (default: ort)")
    build.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                       help="engine precision (default: fp32; fp16/bf16 for trt)")
    build.add_argument("--out", type=Path, required=True, help="engine directory to write")
    build.set_defaults(func=cmd_build)

    verify = sub.add_parser("verify", help="check every engine against the torch reference")
    verify.add_argument("engines", type=Path, help="engine directory")
    verify.add_argument("--units", type=int, default=3, help="streamed units per stage (default 3)")
    verify.add_argument("--no-polygraphy", action="store_true", help="skip polygraphy's own comparison")
    verify.set_defaults(func=cmd_verify)

    inspect = sub.add_parser("inspect", help="show what an engine directory holds")
    inspect.add_argument("engines", type=Path, help="engine directory")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """--preset, --weights, --weights-seed: which model (shared by run and build)."""
    parser.add_argument("--preset", default=None,
                        help="tiny | small | base | large (default: the weights' preset, else tiny)")
    parser.add_argument("--weights", type=Path, help="safetensors weights (default: seeded random weights)")
    parser.add_argument("--weights-seed", type=int, default=0, help="seed of random weights (without --weights)")


def _load_system(preset_name: str | None, weights: Path | None, seed: int):
    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import load_weights, read_preset

    if weights is not None:
        preset = read_preset(weights)
        if preset_name is not None and preset_name != preset.name:
            raise ValueError(f"weights file {weights} was made for preset {preset.name!r}, "
                             f"but --preset {preset_name} was given")
        system = build_system(preset, seed=seed)
        load_weights(system, preset, weights)
        return system
    return build_system(get_preset(preset_name or "tiny"), seed=seed)


def _read_input(spec: str, preset, units: int | None, seed: int):
    from .media import read_video, read_wav, split_units, synthetic_input

    if spec == "synthetic":
        audio, frames = synthetic_input(preset, units or 50, seed)
    elif "+" in spec:
        wav, video = spec.split("+", 1)
        audio = read_wav(wav, preset.sample_rate)
        frames = read_video(video, preset.fps, preset.frame_height, preset.frame_width)
    else:
        raise InputError(f"--input: expected 'synthetic' or 'AUDIO.wav+VIDEO.mp4', got {spec!r}")
    return split_units(audio, frames, preset, units)


def _open_session(args):
    """(session, preset-like spec) for `run`: the torch reference, or the engines of --engines."""
    if args.engines is None:
        if args.backend not in (None, "torch"):
            raise ValueError(f"--backend {args.backend} needs --engines DIR (build them with `streamer build`)")
        from model_src.session import ReferenceSession

        system = _load_system(args.preset, args.weights, args.weights_seed)
        return ReferenceSession(system, seed=args.seed), system.preset
    from runtime.session import EngineSession

    if args.weights is not None:
        raise ValueError("--weights goes with the torch backend; engines carry the weights they were built with")
    session = EngineSession(args.engines, seed=args.seed, expect_preset=args.preset, threads=args.threads)
    backend = session.manifest["backend"]
    if args.backend not in (None, backend):
        raise ValueError(f"{args.engines} holds {backend} engines, but --backend {args.backend} was given")
    args.backend = backend
    return session, session.spec


def cmd_run(args) -> int:
    import numpy as np
    from rich.progress import Progress

    from .media import write_video, write_wav
    from .timing import summarize

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    session, p = _open_session(args)
    units = _read_input(args.input, p, args.units, args.seed)
    audio_out, frames_out, texts, rows = [], [], [], []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"streaming {len(units)} units ({p.name}, {args.backend or 'torch'})", total=len(units))
        for audio, frames in units:
            r = session.step(audio, frames)
            if r.audio is not None:
                audio_out.append(r.audio)
                frames_out.append(r.frames)
            texts.append({"unit": r.unit_index, "tokens": r.text_tokens.tolist()})
            rows.append(r.timings_ms)
            bar.advance(task)
    last_audio, last_frames = session.flush()
    audio_out.append(last_audio)
    frames_out.append(last_frames)

    args.out.mkdir(parents=True, exist_ok=True)
    write_wav(args.out / "out.wav", np.concatenate(audio_out), p.sample_rate)
    write_video(args.out / "out.mp4", np.concatenate(frames_out), p.fps)
    np.save(args.out / "out_audio.npy", np.concatenate(audio_out))  # unquantized, for comparing backends
    (args.out / "text.json").write_text(json.dumps(texts, indent=0))
    with open(args.out / "timings.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["unit", *rows[0]])
        writer.writeheader()
        for k, row in enumerate(rows):
            writer.writerow({"unit": k, **{s: f"{v:.3f}" for s, v in row.items()}})
    _print_timings(summarize(rows), p.unit_ms, len(rows))
    console.print(f"wrote {args.out}/out.wav, out.mp4, out_audio.npy, text.json, timings.csv")
    return 0


def _print_timings(summary: dict, unit_ms: float, n_units: int) -> None:
    table = Table(title=f"per-unit time over {n_units} units (ms)")
    for col in ("stage", "p50", "p90", "p99", "max", "mean"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, s in summary.items():
        table.add_row(stage, *(f"{s[c]:.2f}" for c in ("p50", "p90", "p99", "max", "mean")))
    out.print(table)
    rtf = summary["total"]["mean"] / unit_ms
    out.print(f"real-time factor {rtf:.3f} (mean unit time / {unit_ms:g} ms; below 1 keeps up)")


def cmd_presets(args) -> int:
    from model_src.config import PRESETS
    from model_src.model import parameter_count
    from model_src.system import build_system

    table = Table(title="presets")
    for col in ("preset", "layers", "hidden", "heads q/kv", "frame", "tokens/unit", "flow tokens",
                "cache (units / tokens)", "parameters"):
        table.add_column(col, justify="right")
    for name, p in PRESETS.items():
        n = parameter_count(build_system(p, device="meta"))
        table.add_row(name, str(p.n_layers), str(p.hidden), f"{p.n_heads}/{p.n_kv_heads}",
                      f"{p.frame_height}x{p.frame_width}", str(p.tokens_per_unit), str(p.flow_tokens),
                      f"{p.cache_units} / {p.cache_capacity}", f"{n:,}")
    out.print(table)
    return 0


def cmd_init_weights(args) -> int:
    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import save_weights

    p = get_preset(args.preset)
    save_weights(build_system(p, seed=args.seed), p, args.out)
    console.print(f"wrote {args.out} (preset {p.name}, seed {args.seed})")
    return 0


def cmd_build(args) -> int:
    from rich.progress import Progress

    from export.build import build
    from runtime.manifest import sha256

    system = _load_system(args.preset, args.weights, args.weights_seed)
    weights = ({"file": str(args.weights.resolve()), "sha256": sha256(args.weights)} if args.weights
               else {"seed": args.weights_seed})
    with Progress(console=console) as bar:
        task = bar.add_task(f"building {system.preset.name} ({args.backend}, {args.precision})", total=6)

        started: list[str] = []

        def on_stage(name: str) -> None:
            bar.update(task, description=f"exporting {name}", completed=len(started))
            started.append(name)

        manifest = build(system, args.out, args.backend, args.precision, weights, on_stage)
        bar.update(task, completed=6, description="done")
    console.print(f"wrote {len(manifest['stages'])} {args.backend} engines and manifest.json to {args.out}")
    return 0


def cmd_verify(args) -> int:
    from export.verify import verify

    results = verify(args.engines, units=args.units, polygraphy=not args.no_polygraphy)
    table = Table(title=f"{args.engines}: engines against the torch reference ({args.units} streamed units)")
    for col in ("stage", "max abs", "max rel", "tolerance", "tokens", "polygraphy", "result"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in results:
        table.add_row(r.stage, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.tolerance:.0e}",
                      "equal" if r.tokens_equal else "DIFFER",
                      {None: "-", True: "agrees", False: "DIFFERS"}[r.polygraphy], "[green]ok[/]" if r.ok else "[red]FAIL[/]")
    out.print(table)
    failed = [r.stage for r in results if not r.ok]
    if failed:
        console.print(f"[bold red]verify failed:[/] {', '.join(failed)}")
        return 1
    return 0


def cmd_inspect(args) -> int:
    from runtime.manifest import read_manifest

    m = read_manifest(args.engines)
    out.print(f"preset {m['preset']['name']}, backend {m['backend']} ({m['backend_library']}), precision "
              f"{m['precision']}, target {m['target']['device']} {m['target']['machine']}")
    out.print("versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    out.print(f"weights: {m['weights']}")
    table = Table(title="stages")
    for col in ("stage", "file", "inputs", "outputs"):
        table.add_column(col)
    for stage, info in m["stages"].items():
        fmt = lambda ts: "\n".join(f"{t['name']} {t['dtype']} {t['shape']}" for t in ts)  # noqa: E731
        table.add_row(stage, info["file"], fmt(info["inputs"]), fmt(info["outputs"]))
    out.print(table)
    files = Table(title="files")
    files.add_column("file")
    files.add_column("sha256")
    for f, digest in m["files"].items():
        files.add_row(f, digest)
    out.print(files)
    return 0


def cmd_import_weights(args) -> int:
    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import load_mimi_checkpoint, load_qwen3_checkpoint, load_wan_vae_checkpoint, save_weights

    p = get_preset(args.preset)
    system = build_system(p, seed=args.seed)
    parts = [("backbone", args.qwen3, lambda path: load_qwen3_checkpoint(system.model.backbone, path)),
             ("audio VAE convs", args.mimi, lambda path: load_mimi_checkpoint(system.audio_vae, path)),
             ("video VAE", args.wan_vae, lambda path: load_wan_vae_checkpoint(system.video_vae, path))]
    for what, path, load in parts:
        if path is not None:
            load(path)
        console.print(f"{what}: {path if path else f'random (seed {args.seed})'}")
    console.print("random: modality embeddings, latent projections, flow heads"
                  + (", audio latent head" if args.mimi else ""))
    save_weights(system, p, args.out)
    console.print(f"wrote {args.out} (preset {p.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
