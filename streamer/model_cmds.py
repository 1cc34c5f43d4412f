"""Which model a command runs: `streamer presets`, `init-weights`, `import-weights`, and the options and
loader every command that builds the torch model shares (--preset, --weights, --weights-seed ->
`load_system`). Heavy imports (torch, model_src) happen inside the functions."""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from . import args as types
from .outputs import console, out


def add_parsers(sub) -> None:
    """Register `presets`, `init-weights` and `import-weights`."""
    presets = sub.add_parser("presets", help="list the presets with their sizes and parameter counts")
    presets.set_defaults(func=cmd_presets)

    init = sub.add_parser("init-weights", help="write seeded random weights for a preset")
    init.add_argument("--preset", default="tiny")
    init.add_argument("--seed", type=types.seed, default=0)
    init.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    init.set_defaults(func=cmd_init_weights)

    imp = sub.add_parser("import-weights", help="build a weights file from local upstream checkpoints "
                                                 "(Qwen3, Mimi, Wan2.1 VAE; safetensors only)")
    imp.add_argument("--preset", default="small")
    imp.add_argument("--qwen3", type=Path, help="transformers Qwen3 checkpoint folder -> backbone")
    imp.add_argument("--mimi", type=Path, help="transformers Mimi checkpoint (file or folder) -> audio VAE convs")
    imp.add_argument("--wan-vae", type=Path, help="diffusers AutoencoderKLWan checkpoint (file or folder) -> video VAE")
    imp.add_argument("--seed", type=types.seed, default=0, help="seed of every part not imported")
    imp.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    imp.set_defaults(func=cmd_import_weights)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--preset, --weights, --weights-seed: which model (run, build, export, calibrate)."""
    parser.add_argument("--preset", default=None,
                        help="tiny | small | base | large (default: the weights' preset, else tiny)")
    parser.add_argument("--weights", type=Path,
                        help="safetensors weights (default: the trained weights shipped for tiny, else seeded random)")
    parser.add_argument("--weights-seed", type=types.seed, default=None,
                        help="seeded random weights instead (tiny's default is its shipped trained weights)")


def load_system(preset_name: str | None, weights: Path | None, seed: int | None):
    """The model: --weights FILE, else --weights-seed N (random), else the preset's shipped trained weights
    (tiny) or seed 0. Says which on the console; `system.weights_source` is what manifests record."""
    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import embedded_weights, load_weights, read_preset
    from runtime.manifest import sha256

    if weights is not None and seed is not None:
        raise ValueError("--weights and --weights-seed exclude each other (a file, or seeded random weights)")
    embedded = embedded_weights(preset_name or "tiny") if weights is None and seed is None else None
    if weights is not None or embedded is not None:
        path = weights if weights is not None else embedded
        preset = read_preset(path)
        if preset_name is not None and preset_name != preset.name:
            raise ValueError(f"weights file {path} was made for preset {preset.name!r}, "
                             f"but --preset {preset_name} was given")
        system = build_system(preset)
        load_weights(system, preset, path)
        system.weights_source = ({"embedded": preset.name, "sha256": sha256(path)} if weights is None
                                 else {"file": str(Path(path).resolve()), "sha256": sha256(path)})
    else:
        system = build_system(get_preset(preset_name or "tiny"), seed=seed or 0)
        system.weights_source = {"seed": seed or 0}
    console.print(f"weights: {describe_weights(system.weights_source)}")
    return system


def describe_weights(source: dict) -> str:
    """A manifest's / system's weights record in words."""
    if "embedded" in source:
        return f"embedded trained {source['embedded']} (sha256 {source['sha256'][:12]})"
    if "file" in source:
        return f"{source['file']} (sha256 {source.get('sha256', '?')[:12]})"
    if "seed" in source:
        return f"random, seed {source['seed']}"
    return "unrecorded"


def cmd_presets(args) -> int:
    """`streamer presets`: one row per preset, its sizes and parameter count (built on the meta device)."""
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
    """`streamer init-weights`: seeded random weights of --preset to --out (safetensors)."""
    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import save_weights

    p = get_preset(args.preset)
    save_weights(build_system(p, seed=args.seed), p, args.out)
    console.print(f"wrote {args.out} (preset {p.name}, seed {args.seed})")
    return 0


def cmd_import_weights(args) -> int:
    """`streamer import-weights`: the parts given from upstream checkpoints, the rest seeded random."""
    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import (
        load_mimi_checkpoint,
        load_qwen3_checkpoint,
        load_wan_vae_checkpoint,
        save_weights,
    )

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
