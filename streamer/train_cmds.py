"""`streamer train` (the three training stages, training/trainer.py) and `streamer eval` (task metrics of
held-out synthetic conversations through the torch reference or any engine directory).

`eval --engines` runs on the torch-free runtime: this module imports only numpy and rich at the top, and
the conversation and its metrics are numpy only."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.table import Table

from unitio.growing import write_text_replacing

from .model_cmds import describe_weights, load_system
from .outputs import console, out


def add_parsers(sub) -> None:
    """Register `train` and `eval`."""
    train = sub.add_parser("train", help="train the tiny model: codecs (a), backbone (b), distillation (c)")
    train.add_argument("--preset", help="the preset to train (tiny: the tone task, the default; tiny-speech: the "
                                        "spoken one); stages b and c default to the preset of the file they start from")
    train.add_argument("--stage", default="all", choices=["a", "b", "c", "all"], help="which stage (default: all three)")
    train.add_argument("--out", type=Path, required=True, help="folder for checkpoints, weights and loss curves")
    train.add_argument("--init", type=Path, help="weights to start from (default: the previous stage's output in --out; "
                                                  "stage a: seeded random)")
    train.add_argument("--resume", action="store_true", help="continue each stage from its checkpoint in --out")
    train.add_argument("--steps", type=int, help="steps of the stage (default per stage: a 1000 video steps (+ --audio-steps), b 500, c 80 over the distillation rounds)")
    train.add_argument("--batch", type=int, help="global batch, split over torchrun's processes")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--conversations", type=int, help="training conversations of stages b/c (default 64)")
    train.add_argument("--units", type=int, help="units per training conversation (default 32)")
    train.add_argument("--codecs", default="audio,video", help="stage a: which codecs to train (default audio,video)")
    train.add_argument("--audio-steps", type=int, help="stage a: steps of the audio loop (default 1500)")
    train.add_argument("--video-from", help="stage a: start the video VAE from this weights file's (tiny-speech "
                                            "default: the shipped tiny weights, shipped:tiny)")
    train.add_argument("--semantic", type=float, help="stage a: weight of the audio latents' log-mel term (tiny-speech "
                       "default 1: the backbone hears words across voices; tiny 0)")
    train.add_argument("--heard-weight", type=float, help="stage b: weight of the training-only heard-word term "
                       "(tiny-speech default 0.5; tiny 0)")
    train.add_argument("--in-noise", type=float, help="stage b: scale of the per-conversation perturbation of the "
                       "user's audio latents (training/trainer.py perturb_heard; tiny-speech default 0.2; tiny 0)")
    train.add_argument("--reinit", action="store_true", help="stage a with --init: restart the trained codecs from seeded weights")
    train.add_argument("--seed", type=int, default=0, help="seed of the batches and of every random draw")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default 1)")
    train.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 100)")
    train.set_defaults(func=train_command)

    ev = sub.add_parser("eval", help="task metrics of held-out synthetic conversations (torch or engines)")
    ev.add_argument("--preset", help="torch reference of this preset's shipped weights (default tiny; tiny-speech: "
                                     "the spoken conversation)")
    ev.add_argument("--weights", type=Path, help="torch reference with these weights (default: the preset's shipped ones)")
    ev.add_argument("--weights-seed", type=int, default=None, help="torch reference with seeded random weights")
    ev.add_argument("--engines", type=Path, help="an engine directory (runtime, no torch)")
    ev.add_argument("--steps", type=int, help="torch only: flow solver steps (default: the weights' flow_steps)")
    ev.add_argument("--units", type=int, default=48, help="units per conversation (default 48)")
    ev.add_argument("--seed", type=int, default=None, help="first held-out conversation (default 100000)")
    ev.add_argument("--conversations", type=int, default=8, help="conversations, seeds SEED.. (default 8)")
    ev.add_argument("--threads", type=int, default=None, help="CPU threads (torch, or per engine)")
    ev.add_argument("--json", type=Path, help="write the metrics here as JSON")
    ev.set_defaults(func=eval_command)


def train_command(args) -> int:
    from dataclasses import replace

    import torch

    from model_src.config import get_preset
    from training.trainer import init_world, stage_a, stage_b, stage_c, stage_defaults

    # one thread per process by default: on shared or busy cores, two OpenMP threads that wait on each
    # other were measured 5-30x slower per step than one (docs/decisions.md)
    torch.set_num_threads(args.threads or 1)
    world = init_world()
    args.out.mkdir(parents=True, exist_ok=True)
    stages = ["a", "b", "c"] if args.stage == "all" else [args.stage]
    if args.init is not None and len(stages) > 1:
        raise ValueError("--init goes with one --stage (each later stage starts from the one before)")
    for name, value in (("steps", args.steps), ("batch", args.batch), ("conversations", args.conversations),
                        ("units", args.units)):
        if value is not None and value < 1:
            raise ValueError(f"--{name}: expected a positive number, got {value}")
    if args.batch is not None and args.batch % world.size:
        raise ValueError(f"--batch {args.batch} must be a multiple of the {world.size} processes")
    preset = training_preset(args, stages[0])
    times = {}
    for stage in stages:
        cfg = stage_defaults(preset, stage)
        changes = {k: getattr(args, k) for k in ("steps", "batch", "lr", "conversations", "units") if getattr(args, k) is not None}
        if args.checkpoint_every:
            changes["checkpoint_every"] = args.checkpoint_every
        if stage == "a":
            codecs = tuple(c for c in args.codecs.split(",") if c)
            if not codecs or set(codecs) - {"audio", "video"}:
                raise ValueError(f"--codecs: expected audio, video or audio,video, got {args.codecs!r}")
            changes.update(codecs=codecs, reinit=args.reinit)
            if args.audio_steps is not None:
                changes["audio_steps"] = args.audio_steps
            if args.video_from is not None:
                changes["video_from"] = args.video_from
        for flag, field, for_stage, what, hi in (("--semantic", "semantic", "a", "weight", 100),
                                                 ("--heard-weight", "heard_weight", "b", "weight", 100),
                                                 ("--in-noise", "in_noise", "b", "scale", 2)):
            value = getattr(args, field)
            if stage == for_stage and value is not None:
                if not 0 <= value <= hi:
                    raise ValueError(f"{flag}: expected a {what} in [0, {hi}], got {value}")
                changes[field] = value
        cfg = replace(cfg, seed=args.seed, **changes)
        if cfg.batch % world.size:
            raise ValueError(f"batch {cfg.batch} must be a multiple of the {world.size} processes")
        t0 = time.perf_counter()
        run = {"a": stage_a, "b": stage_b, "c": stage_c}[stage]
        if stage == "a":
            stage_a(args.out, cfg, world, args.resume, args.init, preset)
        else:
            run(args.out, cfg, world, args.resume, args.init)
        times[stage] = time.perf_counter() - t0
    if world.main:
        console.print("training time: " + ", ".join(f"stage {s} {t / 60:.1f} min" for s, t in times.items())
                      + f" ({world.size} process{'es' if world.size > 1 else ''})")
        from unitio.growing import write_replacing

        write_replacing(args.out / f"times_{'_'.join(stages)}.json", lambda tmp: Path(tmp).write_text(json.dumps(times)))
    if world.size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def training_preset(args, first_stage: str) -> str:
    """The preset a training run trains: --preset, else (stages b, c) the preset of the file the stage
    starts from, else tiny. A --preset that differs from that file's is refused."""
    from model_src.config import get_preset
    from model_src.weights import read_preset
    from training.trainer import OUTPUTS

    named = get_preset(args.preset).name if args.preset else None
    previous = {"b": "a", "c": "b"}  # the stage whose output a later stage starts from
    start = args.init if args.init is not None else (args.out / OUTPUTS[previous[first_stage]] if first_stage != "a" else None)
    if first_stage != "a" and start is not None and start.is_file():
        found = read_preset(start).name
        if named and named != found:
            raise ValueError(f"--preset {named}: stage {first_stage} starts from {start}, weights of preset {found!r}")
        return found
    return named or "tiny"


def eval_command(args) -> int:
    from rich.progress import Progress

    from training.data import HELD_OUT_SEED
    from training.metrics import evaluate, misses, thresholds

    if args.engines is not None and (args.weights is not None or args.weights_seed is not None or args.steps or args.preset):
        raise ValueError("--engines runs the engines' own weights, preset and solver steps: drop "
                         "--preset/--weights/--weights-seed/--steps")
    if args.units < 8 or args.conversations < 1:
        raise ValueError(f"eval: expected --units >= 8 and --conversations >= 1, got {args.units} and {args.conversations}")
    first = HELD_OUT_SEED if args.seed is None else args.seed
    seeds = range(first, first + args.conversations)
    if args.engines is not None:
        from runtime.manifest import read_manifest
        from runtime.host.session import EngineSession
        from runtime.spec import unit_spec

        manifest = read_manifest(args.engines)
        spec, label = unit_spec(manifest), f"engines {args.engines} ({manifest['backend']}, {manifest['precision']})"
        weights = f"weights {describe_weights(manifest['weights'])}, {spec.flow_steps} solver steps"
        make = lambda seed: EngineSession(args.engines, seed=seed, threads=args.threads, mode="sequential")
    else:
        import torch

        from model_src.session import ReferenceSession

        if args.threads:
            torch.set_num_threads(args.threads)
        system = load_system(args.preset, args.weights, args.weights_seed)
        if args.steps is not None:
            if args.steps < 1:
                raise ValueError(f"--steps: expected >= 1, got {args.steps}")
            system.preset = system.preset.replace(flow_steps=args.steps)
        spec, label = system.preset, "torch fp32"
        weights = f"weights {describe_weights(system.weights_source)}, {spec.flow_steps} solver steps"
        make = lambda seed: ReferenceSession(system, seed=seed)
    console.print(f"eval: {label}; {weights}; conversations {first}..{first + args.conversations - 1} of {args.units} units")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("streaming held-out conversations", total=args.conversations * args.units)
        m = evaluate(make, spec, seeds, args.units, on_unit=lambda: bar.advance(task))
    print_metrics(m, f"{label}: task metrics of {args.conversations} held-out conversations", spec)
    if args.json:
        write_text_replacing(args.json, json.dumps({"label": label, "weights": weights, "seeds": list(seeds), "units": args.units,
                                         "metrics": m}, indent=1))
    below = misses(m, thresholds(spec))
    if below:
        console.print("off the shipped weights' thresholds: " + "; ".join(below))
    return 0


METRIC_ROWS = [("task", "task score (mean of the five below)", "{:.3f}"), ("text", "text: answer + silence tokens", "{:.3f}"),
               ("tone", "tone: right answer frequency", "{:.3f}"), ("face", "face: right colour", "{:.3f}"),
               ("turn", "turn-taking (balanced accuracy)", "{:.3f}"), ("sync", "face/audio sync (correlation)", "{:.3f}"),
               ("sync_answer", "  sync within answers", "{:.3f}"), ("semitone_error", "  median tone error (semitones)", "{:.2f}"),
               ("barge_in_units", "barge-in -> silence (units)", "{:.2f}"), ("overlap", "both speak (fraction of units)", "{:.3f}"),
               ("answer_latency_units", "question end -> answer (units)", "{:.2f}"), ("answered", "questions answered", "{:.3f}")]


SPOKEN_ROWS = [("task", "task score (mean of the five below)", "{:.3f}"), ("text", "text: answer word + silence tokens", "{:.3f}"),
               ("words", "words: the recognizer hears the right answer", "{:.3f}"), ("face", "face: colour shown", "{:.3f}"),
               ("turn", "turn-taking (balanced accuracy)", "{:.3f}"), ("sync", "face/audio sync (correlation)", "{:.3f}"),
               ("word_answers", "  complete answers scored", "{:.0f}"),
               ("barge_in_units", "barge-in -> silence (units)", "{:.2f}"), ("overlap", "both speak (fraction of units)", "{:.3f}"),
               ("unasked", "speaking unasked (fraction of idle units)", "{:.3f}"),
               ("unasked_long", "  in long pauses (8+ idle units)", "{:.3f}"),
               ("answer_latency_units", "question end -> answer (units)", "{:.2f}"), ("answered", "questions answered", "{:.3f}")]


def print_metrics(m: dict, title: str, spec=None) -> None:
    """The metrics of `m` as a table, with the thresholds of the task of `spec` (default: tones)."""
    from training.metrics import LOWER_IS_BETTER, THRESHOLDS, thresholds

    limits = thresholds(spec) if spec is not None else THRESHOLDS
    rows = SPOKEN_ROWS if "words" in m else METRIC_ROWS
    table = Table(title=title)
    for col in ("metric", "value", "threshold"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, name, fmt in rows:
        limit = limits.get(key)
        rule = "" if limit is None else (f"<= {limit:g}" if key in LOWER_IS_BETTER else f">= {limit:g}")
        table.add_row(name, fmt.format(m[key]), rule)
    out.print(table)
