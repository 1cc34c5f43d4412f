"""What INT8 / FP8 cost in accuracy, per stage and per session: writes docs/QUANTIZATION.md's tables.

    python bench/quantization.py --preset tiny [--cal-units 16] [--session-units 50] [--write docs/QUANTIZATION.md]
        [--int8-engines DIR]

Per stage (held-out real inputs: a stream with another seed than the calibration's): modelopt's
simulated quantization of each stage against fp32 torch (cosine of the worst output, max abs error),
for INT8 (max and SmoothQuant calibration), FP8 E4M3, and the codecs quantized the same way (to show
why they stay fp32). Per session (`--session-units` synthetic units, same input and seed): text tokens
that differ and the SNR of audio and frames, for the FP8-simulated transformer stages, the FP8 KV cache
(per-head scales) and, with --int8-engines, the INT8 ONNX Runtime engines themselves.
"""
from __future__ import annotations

import argparse
import copy
import platform
import tempfile
from pathlib import Path

import numpy as np

from calibration.accuracy import THRESHOLDS, session_diff, stage_error
from calibration.quantize import fp8_roundtrip, import_modelopt, kv_scales, quant_config, quantize_stage
from calibration.record import load_calibration, record, stage_feeds
from calibration.torch_engines import TorchStageEngine, torch_parts
from model_src.config import get_preset
from model_src.stages import make_stages
from model_src.system import build_system
from runtime.engine import Engine
from runtime.host.session import EngineSession

START, END = "<!-- quantization tables: start -->", "<!-- quantization tables: end -->"


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
    """n units of the synthetic conversation `seed` (what `--input synthetic` streams)."""
    from training.conversation import ConversationUnits

    return list(ConversationUnits(preset, n, seed))


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
    system = build_system(p)
    load_weights(system, p, weights)
    return system, what


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
    system, weights_words = load_model(args.preset, args.weights, args.weights_seed)
    p = system.preset
    tmp = Path(tempfile.mkdtemp())
    cal = load_calibration(record(system, units_of(p, args.cal_units, 0), 0, tmp / "cal.safetensors"))[0]
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
                         EngineSession(args.int8_engines, seed=7)))
    srows = ["| configuration | text tokens differing | latents SNR | audio SNR | frames SNR |", "|---|---:|---:|---:|---:|"]
    for name, session in sessions:
        d = session_diff(reference(), session, units)
        srows.append(f"| {name} | {d.tokens_differ}/{d.tokens_total} | {d.latents_snr_db:.1f} dB | {d.audio_snr_db:.1f} dB | "
                     f"{d.frames_snr_db:.1f} dB |")
    text = "\n".join([START, f"Preset `{p.name}` ({weights_words}), calibration {args.cal_units} synthetic conversation units "
                      f"(seed 0), held-out {args.held_out_units} units (seed 1000); "
                      f"{platform.processor() or platform.machine()}; "
                      f"`python bench/quantization.py --preset {p.name} --session-units {args.session_units}"
                      f"{' --int8-engines ' + str(args.int8_engines) if args.int8_engines else ''}`.", "",
                      "Per stage, against fp32 torch on the held-out inputs:", "", *rows, "",
                      f"Per session, {args.session_units} units against the fp32 session (same input and seed):", "",
                      *srows, END])
    print(text)
    if args.write:
        doc = args.write.read_text()
        head, rest = doc.split(START, 1)
        args.write.write_text(head + text + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
