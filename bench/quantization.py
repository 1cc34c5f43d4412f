"""What INT8 / FP8 cost in accuracy, per stage and per session: writes docs/QUANTIZATION.md's tables.

    python bench/quantization.py --preset tiny [--cal-units 16] [--session-units 50] [--write docs/QUANTIZATION.md]
        [--int8-engines DIR] [--weights FILE]

Per stage (held-out real inputs: a stream with another seed than the calibration's): modelopt's
simulated quantization of each stage against fp32 torch (cosine of the worst output, max abs error),
for INT8 (max and SmoothQuant calibration), FP8 E4M3, and the codecs quantized the same way (to show
why they stay fp32). Per session (`--session-units` synthetic units, same input and seed): text tokens
that differ and the SNR of audio and frames, for the FP8-simulated transformer stages, the FP8 KV cache
(per-head scales) and, with --int8-engines, the INT8 ONNX Runtime engines themselves.

Every input is a conversation of the preset's task (training/tasks.py): the tone conversation for tiny,
the spoken one for tiny-speech (calibrated there on a training conversation, seed 1000000, so on training
voices; measured on held-out voices). `--write` replaces the preset's marked section (`markers()`:
tiny's `<!-- quantization tables: start/end -->`, any other preset's `<!-- quantization PRESET: start/end -->`)
and refuses, before anything runs, a file without them.
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ itself, from anywhere and without an install (never the cwd)

from bench.marked import replace_marked  # noqa: E402
from calibration.accuracy import THRESHOLDS, session_diff, stage_error
from calibration.quantize import fp8_roundtrip, import_modelopt, kv_scales, quant_config, quantize_stage
from calibration.record import load_calibration, record, stage_feeds
from calibration.torch_engines import TorchStageEngine, torch_parts
from model_src.config import get_preset
from model_src.stages import make_stages
from model_src.system import build_system
from runtime.engine import Engine
from runtime.host.session import EngineSession

START, END = "<!-- quantization tables: start -->", "<!-- quantization tables: end -->"  # tiny's section


def markers(preset_name: str) -> tuple[str, str]:
    """(start, end) markers of the preset's section of docs/QUANTIZATION.md."""
    if preset_name == "tiny":
        return START, END
    return f"<!-- quantization {preset_name}: start -->", f"<!-- quantization {preset_name}: end -->"


def replace_section(doc: str, text: str, path: Path, preset_name: str) -> str:
    """`doc` with the preset's marked section (markers included) replaced by `text`; raises SystemExit
    naming the markers where `doc` lacks them (or has them out of order)."""
    return replace_marked(doc, text, path, *markers(preset_name), f"preset {preset_name!r}'s tables")


class Fp8CacheEngine(Engine):
    """Feeds the wrapped stage an FP8 E4M3 round trip of its KV cache (per layer/head scales)."""

    def __init__(self, inner: Engine, k_scale: np.ndarray, v_scale: np.ndarray) -> None:
        super().__init__(inner.stage, inner.inputs, inner.outputs)
        self.inner, self.k_scale, self.v_scale = inner, k_scale, v_scale

    def run(self, feeds):
        return self.inner.run({**feeds, "cache_k": fp8_roundtrip(feeds["cache_k"], self.k_scale),
                               "cache_v": fp8_roundtrip(feeds["cache_v"], self.v_scale)})


def quantize_codec(system, stage: str, tensors, precision: str):
    """The codec's VAE quantized by modelopt (convs, simulated), as a stage module."""
    mtq = import_modelopt()
    spec = next(s for s in make_stages(system) if s.name == stage)
    module = copy.deepcopy(spec.module)
    vae = module.step.__self__  # CodecStep holds the VAE's bound step method
    names = list(spec.example_inputs)

    def loop(_):
        import torch

        for feeds in stage_feeds(tensors, stage, system):
            module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names))

    mtq.quantize(vae, quant_config(precision, "max"), forward_loop=loop)
    return module


def units_of(preset, n: int, seed: int):
    """n units of the user's side of conversation `seed` of the preset's task (what `--input synthetic`
    streams): a list of (audio [S], frames [F, H, W, 3])."""
    from training.tasks import TaskUnits

    return list(TaskUnits(preset, n, seed))


def calibration_seed(preset) -> int:
    """The calibration conversation's seed: 0 for the tone task (as its tables were measured), the first
    training conversation for the spoken one (training voices; every measured input has held-out voices)."""
    from training.tasks import TRAIN_SEED_BASE, task_of

    return TRAIN_SEED_BASE if task_of(preset) == "speech" else 0


def load_model(preset_name: str, weights: Path | None, weights_seed: int | None):
    """--weights FILE, --weights-seed N, else the preset's shipped trained weights (tiny), else seed 0
    -> (system, words for the report)."""
    from model_src.weights import embedded_weights, load_weights, read_preset

    if weights is None and weights_seed is None:
        weights = embedded_weights(preset_name)
        what = f"the shipped trained weights ({weights.name})" if weights is not None else "seeded random weights"
    else:
        what = f"weights {weights.name}" if weights is not None else f"seeded random weights (seed {weights_seed})"
    if weights is None:
        return build_system(get_preset(preset_name), seed=weights_seed or 0), what
    p = read_preset(weights)
    if p.name != preset_name:
        raise SystemExit(f"--weights {weights} holds preset {p.name!r}, but --preset is {preset_name!r}: pass "
                         f"--preset {p.name}")
    system = build_system(p)
    load_weights(system, p, weights)
    return system, what


def check_engines(directory: Path, weights: Path | None) -> None:
    """Raise SystemExit unless the engines in `directory` were built from the weights file `weights`
    (by its SHA-256, where both the manifest and the run name a file)."""
    import json

    from runtime.manifest import sha256

    manifest = directory / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"--int8-engines {directory}: no manifest.json there (build them with bench/task_metrics.py "
                         f"or `streamer build --precision int8`)")
    got = (json.loads(manifest.read_text()).get("weights") or {}).get("sha256")
    if weights is not None and got is not None and got != sha256(weights):
        raise SystemExit(f"--int8-engines {directory} were built from other weights (sha256 {got[:12]}) than "
                         f"{weights} ({sha256(weights)[:12]}): pass the engines of the same weights")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--cal-units", type=int, default=16)
    ap.add_argument("--held-out-units", type=int, default=4)
    ap.add_argument("--session-units", type=int, default=50)
    ap.add_argument("--int8-engines", type=Path, help="INT8 ORT engines of the same preset and weights")
    ap.add_argument("--weights", type=Path, help="weights file (default: the preset's shipped trained weights, if any)")
    ap.add_argument("--weights-seed", type=int, default=None, help="seeded random weights instead")
    ap.add_argument("--write", type=Path, help="replace the tables in this markdown file")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # one thread: on shared cores two spin-waiting threads were 5-30x slower
    if args.write:  # refuse before the run, not after it
        replace_section(args.write.read_text(), "", args.write, args.preset)
    system, weights_words = load_model(args.preset, args.weights, args.weights_seed)
    if args.int8_engines:
        from model_src.weights import embedded_weights

        check_engines(args.int8_engines, args.weights or (embedded_weights(args.preset) if args.weights_seed is None
                                                          else None))
    p = system.preset
    tmp = Path(tempfile.mkdtemp())
    cal_seed = calibration_seed(p)
    cal = load_calibration(record(system, units_of(p, args.cal_units, cal_seed), 0, tmp / "cal.safetensors"))[0]
    held = load_calibration(record(system, units_of(p, args.held_out_units, 1000), 1000, tmp / "held.safetensors"))[0]
    specs = {s.name: s for s in make_stages(system)}

    rows = ["| stage | precision (calibration) | cosine (worst output) | max abs | accepted (cos >= "
            f"{THRESHOLDS['cosine']}) |", "|---|---|---:|---:|---|"]
    quantized = {}
    for stage in ("thinker_step", "flow_step"):
        for precision, algorithm in (("int8", "max"), ("int8", "smoothquant"), ("fp8", "max")):
            module = quantize_stage(system, stage, cal, precision, algorithm)
            quantized[stage, precision, algorithm] = module
            e = stage_error(stage, stage_feeds(held, stage, system), TorchStageEngine(specs[stage]),
                            TorchStageEngine(specs[stage], module))
            rows.append(f"| {stage} | {precision} ({algorithm}) | {e.cosine:.5f} | {e.max_abs:.2e} | {'yes' if e.ok else 'no'} |")
    for stage in ("audio_enc", "video_enc", "audio_dec", "video_dec"):
        module = quantize_codec(system, stage, cal, "int8")
        e = stage_error(stage, stage_feeds(held, stage, system), TorchStageEngine(specs[stage]),
                        TorchStageEngine(specs[stage], module))
        rows.append(f"| {stage} | int8 (max), not used | {e.cosine:.5f} | {e.max_abs:.2e} | {'yes' if e.ok else 'no'} |")

    units = units_of(p, args.session_units, 7)
    k_scale, v_scale = kv_scales(cal)

    def reference():
        return EngineSession.in_process(*torch_parts(system), seed=7)

    def simulated(precision: str, kv_fp8: bool = False, weights: bool = True):
        modules = {s: quantized[s, precision, "max"] for s in ("thinker_step", "flow_step")} if weights else {}
        manifest, engines, initial = torch_parts(system, modules)
        if kv_fp8:
            for s in ("thinker_step", "flow_step"):
                engines[s] = Fp8CacheEngine(engines[s], k_scale, v_scale)
        return EngineSession.in_process(manifest, engines, initial, seed=7)

    sessions = [("INT8 thinker_step + flow_step (modelopt simulated)", simulated("int8")),
                ("FP8 thinker_step + flow_step (modelopt simulated)", simulated("fp8")),
                ("FP8 KV cache only (per-head scales, simulated)", simulated("fp8", kv_fp8=True, weights=False)),
                ("FP8 weights/activations + FP8 KV cache (simulated)", simulated("fp8", kv_fp8=True))]
    if args.int8_engines:
        sessions.append((f"INT8 ONNX Runtime engines ({args.int8_engines.name})",
                         EngineSession(args.int8_engines, seed=7, expect_preset=p.name)))
    srows = ["| configuration | text tokens differing | latents SNR | audio SNR | frames SNR |", "|---|---:|---:|---:|---:|"]
    for name, session in sessions:
        d = session_diff(reference(), session, units)
        srows.append(f"| {name} | {d.tokens_differ}/{d.tokens_total} | {d.latents_snr_db:.1f} dB | {d.audio_snr_db:.1f} dB | "
                     f"{d.frames_snr_db:.1f} dB |")
    start, end = markers(p.name)
    text = "\n".join([start, f"Preset `{p.name}` ({weights_words}), calibration {args.cal_units} synthetic conversation units "
                      f"(seed {cal_seed}{', training voices' if cal_seed else ''}), held-out {args.held_out_units} units (seed 1000); "
                      f"{platform.processor() or platform.machine()}; "
                      f"`python bench/quantization.py --preset {p.name}"
                      f"{' --weights ' + str(args.weights) if args.weights else ''}"
                      f"{f' --cal-units {args.cal_units}' if args.cal_units != 16 else ''}"
                      f"{f' --held-out-units {args.held_out_units}' if args.held_out_units != 4 else ''}"
                      f" --session-units {args.session_units}"
                      f"{' --int8-engines ' + str(args.int8_engines) if args.int8_engines else ''}`.", "",
                      "Per stage, against fp32 torch on the held-out inputs:", "", *rows, "",
                      f"Per session, {args.session_units} units against the fp32 session (same input and seed):", "",
                      *srows, end])
    print(text)
    if args.write:
        args.write.write_text(replace_section(args.write.read_text(), text, args.write, p.name))


if __name__ == "__main__":
    main()
