"""Post-training quantization of the transformer stages with NVIDIA's TensorRT Model Optimizer.

`quantize_stage` deep-copies a stage's module, inserts modelopt's quantizers into its linear layers
(weights per output channel, activations per tensor) and calibrates them on the recorded inputs of
that stage (`record.stage_feeds`). The result is modelopt's simulated ("fake") quantization in torch:
what `export/quantized_export.py` turns into ONNX Q/DQ pairs, and what FP8 is measured with here.

Which stages: thinker_step and flow_step (the backbone's linear layers, where the FLOPs are). The
codecs stay in higher precision: their convolutions write the output waveform and pixels directly, and
docs/QUANTIZATION.md has the measured reason. The LM head stays unquantized (modelopt's default).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch

from model_src.stages import make_stages
from unitio.names import FP8_E4M3_MAX, TRANSFORMER_STAGES

from .record import stage_feeds

QUANTIZED_STAGES = TRANSFORMER_STAGES  # the codecs stay in higher precision
ALGORITHMS = {"int8": ("max", "smoothquant"), "fp8": ("max",)}


def import_modelopt():
    """modelopt.torch.quantization, with its import-time chatter silenced; a clear error if missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise RuntimeError("quantization needs NVIDIA's TensorRT Model Optimizer: pip install nvidia-modelopt "
                           f"(import failed: {e})") from None
    return mtq


def quant_config(precision: str, algorithm: str) -> dict:
    """modelopt's config for `precision` (int8 | fp8) and calibration `algorithm`."""
    if precision not in ALGORITHMS:
        raise ValueError(f"precision {precision!r} is not a quantized precision; expected one of {list(ALGORITHMS)}")
    if algorithm not in ALGORITHMS[precision]:
        raise ValueError(f"{precision}: calibration algorithm {algorithm!r} is not available; "
                         f"expected one of {list(ALGORITHMS[precision])}")
    mtq = import_modelopt()
    if precision == "fp8":
        return mtq.FP8_DEFAULT_CFG
    return mtq.INT8_SMOOTHQUANT_CFG if algorithm == "smoothquant" else mtq.INT8_DEFAULT_CFG


def quantize_stage(system, stage: str, tensors: dict[str, np.ndarray], precision: str, algorithm: str = "max",
                   max_calls: int | None = None) -> torch.nn.Module:
    """A calibrated fake-quant copy of `stage`'s module (system's weights untouched), calibrated on the
    recorded calls of that stage (all, or the first `max_calls`)."""
    if stage not in QUANTIZED_STAGES:
        raise ValueError(f"{stage}: only {QUANTIZED_STAGES} are quantized (the codecs stay in higher precision)")
    cfg = quant_config(precision, algorithm)
    mtq = import_modelopt()
    spec = next(s for s in make_stages(system) if s.name == stage)
    module = copy.deepcopy(spec.module).eval()
    names = list(spec.example_inputs)

    def forward_loop(model) -> None:
        for i, feeds in enumerate(stage_feeds(tensors, stage, system)):
            if max_calls is not None and i >= max_calls:
                break
            model(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names))

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mtq.quantize(module, cfg, forward_loop=forward_loop)
    return module


def quantizer_count(module: torch.nn.Module) -> int:
    """How many of modelopt's quantizers in `module` are enabled (a quantized module has some)."""
    return sum(1 for m in module.modules() if type(m).__name__ == "TensorQuantizer" and getattr(m, "is_enabled", False))


def kv_scales(tensors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """FP8 E4M3 scales of the KV cache per layer and KV head, from the recorded deltas:
    amax over units, tokens and head dim / FP8_E4M3_MAX -> (k_scale, v_scale), each float32 [L, Hkv]."""
    def scale(d: np.ndarray) -> np.ndarray:  # d [units, L, 1, Hkv, T, D]
        amax = np.abs(d).max(axis=(0, 2, 4, 5))
        return (np.maximum(amax, 1e-8) / FP8_E4M3_MAX).astype(np.float32)

    return scale(tensors["kv.k_delta"]), scale(tensors["kv.v_delta"])


def fp8_roundtrip(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Simulate an FP8 E4M3 cache [L, 1, Hkv, C, D] with per-(layer, head) scales [L, Hkv]: x/s -> e4m3 -> *s."""
    s = torch.from_numpy(scale)[:, None, :, None, None]
    q = (torch.from_numpy(x) / s).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.to(torch.float32) * s).numpy()
