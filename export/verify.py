"""`streamer verify`: every engine against the torch reference, per stage, over several streamed units.

Both sides get the same inputs (random, in the engine's dtypes; the fp32 reference runs on the same
values); the codec stages carry their own state from unit to unit (so an error that grows in the state
shows), the thinker and flow stages run at several cache lengths. Per stage: max abs and relative
error, the worst cosine of an output, the text tokens that agree; judged by the precision's tolerance
(export/tolerances.py, with the reason for each). GPU engines run on the device path (bound once,
copied in and out here); quantized stages are checked on held-out real inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_src.config import Preset
from model_src.stages import make_stages
from unitio.names import TRANSFORMER_STAGES

from .tolerances import Tolerance, tolerance


@dataclass
class StageCheck:
    stage: str
    max_abs: float
    max_rel: float
    limit: Tolerance
    tokens_equal: bool = True
    polygraphy: bool | None = None  # polygraphy's own comparison (ort/trt engines), None where not run
    precision: str = "fp32"
    cosine: float = 1.0  # worst cosine similarity of an output with the reference's
    tokens_equal_fraction: float | None = None  # thinker_step: text tokens that agree

    @property
    def tolerance(self) -> float:
        """The number the stage is judged by: max rel (fp32) or min cosine (the rest)."""
        return self.limit.max_rel if self.limit.max_rel is not None else self.limit.min_cosine

    @property
    def ok(self) -> bool:
        tokens = self.tokens_equal_fraction if self.tokens_equal_fraction is not None else float(self.tokens_equal)
        if tokens < self.limit.min_tokens or self.polygraphy is False:
            return False
        if self.limit.max_rel is not None:
            return self.max_rel <= self.limit.max_rel
        return self.cosine >= self.limit.min_cosine


def reference_system(manifest: dict):
    """Rebuild the torch system the engines were built from (seeded weights, or the weights file)."""
    from model_src.system import build_system
    from model_src.weights import load_weights

    preset = Preset.from_json(manifest["preset"]["json"])
    weights = manifest.get("weights", {})
    system = build_system(preset, seed=weights.get("seed", 0))
    if "embedded" in weights:  # the trained weights shipped in the package: the same file, by hash
        from model_src.weights import WeightsError, embedded_weights
        from runtime.manifest import sha256

        path = embedded_weights(weights["embedded"])
        if path is None or sha256(path) != weights["sha256"]:
            raise WeightsError(f"the engines were built from the embedded {weights['embedded']} weights with sha256 "
                               f"{weights['sha256'][:12]}, but this installation ships "
                               f"{'none' if path is None else sha256(path)[:12]}: rebuild the engines")
        load_weights(system, preset, path)
    if "file" in weights:
        load_weights(system, preset, weights["file"])
    return system


def verify(directory: str | Path, units: int = 3, seed: int = 0, polygraphy: bool = True) -> list[StageCheck]:
    """Check every stage of the engine directory; with `polygraphy`, also polygraphy's comparison."""
    from .polygraphy_check import polygraphy_agrees

    manifest, engines = _load(directory)
    system = reference_system(manifest)
    fp8_cache = manifest.get("kv_cache", {}).get("dtype", "").startswith("float8")
    scales = _kv_scales(directory, manifest) if fp8_cache else None
    g = torch.Generator().manual_seed(seed)
    results, held_out = [], None
    for spec in make_stages(system):
        engine = engines[spec.name]
        precision = manifest["stages"][spec.name].get("precision", manifest["precision"])
        if precision in ("int8", "fp8"):
            held_out = held_out if held_out is not None else _held_out_inputs(system, units, seed)
            results.append(_quantized_check(spec, system, engine, held_out, precision))
            continue
        transformer = spec.name in TRANSFORMER_STAGES
        worst = check_stage(spec, engine, precision, units, g, system.preset, scales if transformer else None)
        if polygraphy and manifest["backend"] in ("ort", "trt") and precision == "fp32":
            worst.polygraphy = polygraphy_agrees(spec, manifest["backend"],
                                                 Path(directory) / manifest["stages"][spec.name]["file"])
        results.append(worst)
    return results


def check_stage(spec, engine, precision: str, units: int, g: torch.Generator, p: Preset,
                scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> StageCheck:
    """One stage's engine (host engine or HostCall) against its fp32 torch module over `units` units of
    random inputs in the engine's dtypes (`scales`: the FP8 cache's, when the engine takes one)."""
    worst = StageCheck(spec.name, 0.0, 0.0, tolerance(precision, scales is not None), precision=precision)
    tokens = [0, 0]
    state, engine_state = dict(spec.initial_state), dict(spec.initial_state)
    for unit in range(units):
        feeds = _engine_feeds({**_unit_inputs(spec, g, unit, p), **engine_state}, engine.inputs, scales)
        reference_in = {**_as_reference(feeds, spec, scales), **state}
        with torch.no_grad():
            want = dict(zip(spec.output_names, spec.module(*(reference_in[n] for n in spec.example_inputs))))
        got = _run(engine, feeds)
        for name, ref in want.items():
            if name == "text_tokens":
                tokens[0] += int((got[name] == ref).sum())
                tokens[1] += ref.numel()
            else:
                _compare(worst, got[name].double(), ref.double())
        if spec.initial_state:  # carry each side's own state
            n = len(spec.initial_state)
            state = {f"state_{i}": want[f"new_state_{i}"] for i in range(n)}
            engine_state = {f"state_{i}": got[f"new_state_{i}"].float() for i in range(n)}
    if tokens[1]:
        worst.tokens_equal_fraction = tokens[0] / tokens[1]
        worst.tokens_equal = tokens[0] == tokens[1]
    return worst


def _load(directory) -> tuple[dict, dict]:
    """(manifest, {stage: engine}): host engines for CPU builds, device engines behind a host call for GPU ones."""
    from runtime.engine import installed_versions
    from runtime.host.engines import load_engines
    from runtime.manifest import read_manifest

    manifest = read_manifest(directory, installed_versions=installed_versions())
    if manifest["target"]["device"] != "cuda":
        return load_engines(directory)
    from runtime.device.device import Device
    from runtime.device.engines import HostCall, load_device_engines

    _, engines = load_device_engines(directory, Device("cuda"), manifest=manifest)
    return manifest, {name: HostCall(e) for name, e in engines.items()}


def _kv_scales(directory, manifest) -> tuple[torch.Tensor, torch.Tensor]:
    from runtime.engine import load_initial_state

    s = load_initial_state(directory, manifest)["kv_cache"]
    return torch.from_numpy(s["k_scale"]), torch.from_numpy(s["v_scale"])


def _engine_feeds(inputs: dict[str, torch.Tensor], specs, scales) -> dict[str, torch.Tensor]:
    """The fp32 inputs in the engine's dtypes: activations cast, an FP8 cache quantized with its scales,
    split into per-layer inputs where the engine takes them."""
    from model_src.kv_cache import quantize_fp8

    want = {t.name: t for t in specs}
    out = {}
    for name, x in inputs.items():
        if name in ("cache_k", "cache_v") and scales is not None:
            q = quantize_fp8(x, scales[0] if name == "cache_k" else scales[1])
            if name in want:
                out[name] = q
            else:
                out.update({f"{name}_{i}": q[i] for i in range(q.shape[0])})
        else:
            out[name] = x.to(getattr(torch, want[name].dtype))
    return out


def _as_reference(feeds: dict[str, torch.Tensor], spec, scales) -> dict[str, torch.Tensor]:
    """The values the engine received, as the fp32 reference takes them (an FP8 cache dequantized)."""
    out = {}
    for name, like in spec.example_inputs.items():
        if name.startswith("state_"):
            continue
        if name in ("cache_k", "cache_v") and scales is not None:
            q = feeds[name] if name in feeds else torch.stack([feeds[f"{name}_{i}"] for i in range(like.shape[0])])
            s = (scales[0] if name == "cache_k" else scales[1])[:, None, :, None, None]
            out[name] = (q.float() * s).to(like.dtype)
        else:
            out[name] = feeds[name].to(like.dtype)
    return out


def _run(engine, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run a host engine (numpy) or a device engine's host call (torch) -> torch tensors on the CPU."""
    from runtime.device.engines import HostCall

    if isinstance(engine, HostCall):
        return engine.run(feeds)
    return {k: torch.from_numpy(np.asarray(v)) for k, v in engine.run({k: v.numpy() for k, v in feeds.items()}).items()}


def _compare(worst: StageCheck, got: torch.Tensor, ref: torch.Tensor) -> None:
    err = float((got - ref).abs().max())
    scale = float(ref.abs().max()) or 1.0
    a, b = got.flatten(), ref.flatten()
    denom = float(a.norm() * b.norm())
    cosine = float(a @ b) / denom if denom else float(torch.equal(a, b))
    worst.max_abs, worst.max_rel = max(worst.max_abs, err), max(worst.max_rel, err / scale)
    worst.cosine = min(worst.cosine, cosine)


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
    limit = tolerance(precision)
    assert limit.min_cosine == THRESHOLDS["cosine"], "one accepted cosine for quantized stages"
    return StageCheck(spec.name, err.max_abs, float("nan"), limit, precision=precision,
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
