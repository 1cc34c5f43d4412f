"""`streamer verify`: every engine against the torch reference, per stage, over several streamed units.

Both sides get the same inputs; the codec stages carry their own state from unit to unit (so an error
that grows in the state shows), the thinker and flow stages run at several cache lengths. The error
of a stage is the worst over its outputs and units: max abs, and max abs relative to the reference's
largest magnitude; text tokens must match exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_src.config import Preset

from .stages import make_stages

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2}  # max relative error per full-precision stage


@dataclass
class StageCheck:
    stage: str
    max_abs: float
    max_rel: float
    tolerance: float  # max rel (full precision) or min cosine (quantized)
    tokens_equal: bool = True
    polygraphy: bool | None = None  # polygraphy's own comparison (ort/trt engines), None where not run
    precision: str = "fp32"
    cosine: float | None = None  # quantized stages: worst cosine similarity on held-out real inputs
    tokens_equal_fraction: float | None = None  # quantized thinker_step: text tokens that agree

    @property
    def ok(self) -> bool:
        if self.cosine is not None:
            return self.cosine >= self.tolerance
        return self.max_rel <= self.tolerance and self.tokens_equal and self.polygraphy is not False


def reference_system(manifest: dict):
    """Rebuild the torch system the engines were built from (seeded weights, or the weights file)."""
    from model_src.system import build_system
    from model_src.weights import load_weights

    preset = Preset.from_json(manifest["preset"]["json"])
    weights = manifest.get("weights", {})
    system = build_system(preset, seed=weights.get("seed", 0))
    if "file" in weights:
        load_weights(system, preset, weights["file"])
    return system


def verify(directory: str | Path, units: int = 3, seed: int = 0, polygraphy: bool = True) -> list[StageCheck]:
    """Check every stage of the engine directory; with `polygraphy`, also polygraphy's comparison."""
    from runtime.engines import load_engines

    from .polygraphy_check import polygraphy_agrees

    manifest, engines = load_engines(directory)
    system = reference_system(manifest)
    g = torch.Generator().manual_seed(seed)
    results, held_out = [], None
    for spec in make_stages(system):
        engine = engines[spec.name]
        precision = manifest["stages"][spec.name].get("precision", manifest["precision"])
        if precision in ("int8", "fp8"):
            held_out = held_out if held_out is not None else _held_out_inputs(system, units, seed)
            results.append(_quantized_check(spec, system, engine, held_out, precision))
            continue
        worst = StageCheck(spec.name, 0.0, 0.0, TOLERANCE[precision], precision=precision)
        torch_state = dict(spec.initial_state)
        engine_state = {k: v.numpy() for k, v in spec.initial_state.items()}
        for unit in range(units):
            inputs = _unit_inputs(spec, g, unit, system.preset)
            with torch.no_grad():
                want = spec.module(*{**inputs, **torch_state}.values())
            want = dict(zip(spec.output_names, [w.numpy() for w in want]))
            got = engine.run({**{k: v.numpy() for k, v in inputs.items()}, **engine_state})
            for name, ref in want.items():
                if name == "text_tokens":
                    worst.tokens_equal &= bool(np.array_equal(got[name], ref))
                    continue
                err = float(np.abs(got[name].astype(np.float64) - ref).max())
                scale = float(np.abs(ref).max()) or 1.0
                worst.max_abs, worst.max_rel = max(worst.max_abs, err), max(worst.max_rel, err / scale)
            if spec.initial_state:  # carry each side's own state
                n = len(spec.initial_state)
                torch_state = {f"state_{i}": torch.from_numpy(want[f"new_state_{i}"]) for i in range(n)}
                engine_state = {f"state_{i}": got[f"new_state_{i}"] for i in range(n)}
        if polygraphy and manifest["backend"] in ("ort", "trt"):
            worst.polygraphy = polygraphy_agrees(spec, manifest["backend"],
                                                 Path(directory) / manifest["stages"][spec.name]["file"])
        results.append(worst)
    return results


def _held_out_inputs(system, units: int, seed: int) -> dict:
    """Real stage inputs of a short synthetic stream the calibration did not see (its own seed)."""
    import tempfile

    from calibration.record import load_calibration, record
    from unitio.media import split_units, synthetic_input

    p = system.preset
    audio, frames = synthetic_input(p, units, seed + 1000)
    with tempfile.TemporaryDirectory() as tmp:
        path = record(system, split_units(audio, frames, p, units), seed + 1000, Path(tmp) / "held_out.safetensors")
        return load_calibration(path)[0]


def _quantized_check(spec, system, engine, held_out: dict, precision: str) -> StageCheck:
    """A quantized stage against fp32 torch on held-out real inputs: cosine per output, token agreement."""
    from calibration.accuracy import THRESHOLDS, stage_error
    from calibration.record import stage_feeds
    from calibration.torch_engines import TorchStageEngine

    err = stage_error(spec.name, stage_feeds(held_out, spec.name, system), TorchStageEngine(spec), engine)
    return StageCheck(spec.name, err.max_abs, float("nan"), THRESHOLDS["cosine"], precision=precision,
                      cosine=err.cosine, tokens_equal_fraction=err.tokens_equal_fraction)


def _unit_inputs(spec, g: torch.Generator, unit: int, p: Preset) -> dict[str, torch.Tensor]:
    """Fresh random non-state inputs for one unit, shaped and typed like the stage's examples."""
    out = {}
    for name, x in spec.example_inputs.items():
        if name.startswith("state_"):
            continue
        if name == "text_in":
            out[name] = torch.randint(0, p.vocab_size, x.shape, generator=g)
        elif name == "cache_len":
            out[name] = torch.full_like(x, min(unit + 1, p.cache_units) * p.tokens_per_unit)
        elif name == "unit_index":
            out[name] = torch.full_like(x, unit * 7)
        elif name == "t":
            out[name] = torch.rand(x.shape, generator=g)
        elif name == "frames":
            out[name] = torch.rand(x.shape, generator=g) * 2 - 1
        else:
            out[name] = torch.randn(x.shape, generator=g) * x.std()
    return out
