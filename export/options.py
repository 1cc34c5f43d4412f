"""What a build (or an ONNX-only export) makes: backend, precision, attention, KV-cache dtype, device.

`BuildOptions.resolve()` fills the defaults for the target and refuses, with the reason, what cannot
be built, before any export starts:

- precision fp32 | fp16 | bf16 (the transformer stages' activations and KV cache in that dtype; the
  codecs stay fp32, as Wan2.1's and Mimi's own pipelines keep their VAEs) | int8 | fp8 (modelopt Q/DQ
  on an fp32 model, with a calibration set);
- attention "triton" (our kernel: one torch op in AOTInductor packages, `streamer::BlockAttention*`
  plugin nodes in ONNX/TensorRT), "sdpa" (torch's scaled_dot_product_attention over the cache and
  local keys concatenated), "torch" (the reference: two matmuls and a float32 softmax). Default:
  triton on CUDA targets (aoti --device cuda, trt, onnx export), torch on CPU ones;
- kv_cache "auto" (the activation dtype) or "fp8" (E4M3 with per-layer, per-KV-head scales from a
  calibration set; the runtime quantizes each delta as it appends it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

BACKENDS = {"ort": "onnxruntime", "aoti": "torch", "trt": "tensorrt", "onnx": "onnx"}  # -> library it needs
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
ATTENTIONS = ("triton", "sdpa", "torch")
KV_CACHES = ("auto", "fp8")
QUANTIZED = ("int8", "fp8")  # modelopt Q/DQ on thinker_step and flow_step; need a calibration set
ACTIVATION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                     "int8": torch.float32, "fp8": torch.float32}
BACKEND_PRECISIONS = {  # what each backend can run, and why not the rest
    "ort": {"fp32": None, "int8": None},
    "aoti": {"fp32": None, "fp16": "cuda", "bf16": "cuda"},
    "trt": {p: None for p in PRECISIONS},
    "onnx": {"fp32": None, "fp16": None, "bf16": None, "int8": None, "fp8": None},
}


class BuildOptionError(ValueError):
    """A combination of build options that cannot be built (the message says why and what can)."""


@dataclass(frozen=True)
class BuildOptions:
    backend: str = "ort"
    precision: str = "fp32"
    device: str = "cpu"  # aoti: compile for this machine's cpu or cuda; trt/onnx: always a CUDA target
    attention: str | None = None  # None: the target's default
    kv_cache: str = "auto"
    calibration: Path | None = None
    algorithm: str = "max"

    @property
    def cuda_target(self) -> bool:
        return self.backend in ("trt", "onnx") or self.device == "cuda"

    @property
    def activation_dtype(self) -> torch.dtype:
        return ACTIVATION_DTYPES[self.precision]

    def resolve(self) -> "BuildOptions":
        """These options with defaults filled in; raises BuildOptionError naming what cannot be built."""
        if self.backend not in BACKENDS:
            raise BuildOptionError(f"backend {self.backend!r} is not built by this version; available: "
                                   f"{sorted(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise BuildOptionError(f"precision {self.precision!r}: expected one of {list(PRECISIONS)}")
        allowed = BACKEND_PRECISIONS[self.backend]
        if self.precision not in allowed:
            raise BuildOptionError(f"precision {self.precision!r} is not available for backend {self.backend!r}; "
                                   f"available: {list(allowed)}{_precision_hint(self.backend, self.precision)}")
        if allowed[self.precision] == "cuda" and self.device != "cuda":
            raise BuildOptionError(f"--backend aoti --precision {self.precision} compiles for a GPU: add --device "
                                   f"cuda (CPU packages are fp32)")
        if self.device not in ("cpu", "cuda") or (self.device == "cuda" and self.backend != "aoti"):
            raise BuildOptionError(f"--device {self.device}: expected cpu, or cuda with --backend aoti (ort builds "
                                   f"are device-independent, trt builds and onnx exports target a GPU)")
        attention = self.attention or ("triton" if self.cuda_target else "torch")
        if attention not in ATTENTIONS:
            raise BuildOptionError(f"--attention {attention!r}: expected one of {list(ATTENTIONS)}")
        if attention == "triton" and self.backend == "ort":
            raise BuildOptionError("--attention triton with --backend ort: ONNX Runtime has no kernel for the "
                                   "streamer::BlockAttention plugin nodes; use --attention torch or sdpa, or export "
                                   "for TensorRT (`streamer export`, `--backend trt`)")
        if attention == "triton" and self.backend == "aoti" and self.device != "cuda":
            raise BuildOptionError("--attention triton with a CPU AOTInductor package: Triton kernels compile for "
                                   "GPUs only; use --device cuda, or --attention torch|sdpa on the CPU")
        if self.precision in QUANTIZED and attention != "torch":
            raise BuildOptionError(f"--precision {self.precision} quantizes the reference graph (modelopt Q/DQ); "
                                   f"it takes --attention torch, got {attention}")
        if self.precision in QUANTIZED and self.calibration is None:
            raise BuildOptionError(f"--precision {self.precision} needs --calibration CAL.safetensors (record one "
                                   f"with `streamer calibrate`)")
        if self.kv_cache not in KV_CACHES:
            raise BuildOptionError(f"--kv-cache {self.kv_cache!r}: expected one of {list(KV_CACHES)}")
        if self.kv_cache == "fp8":
            if self.calibration is None:
                raise BuildOptionError("--kv-cache fp8 needs --calibration CAL.safetensors: its per-layer, per-head "
                                       "scales come from the recorded KV deltas (`streamer calibrate`)")
            if self.precision in QUANTIZED:
                raise BuildOptionError(f"--kv-cache fp8 goes with fp32/fp16/bf16 activations, not --precision "
                                       f"{self.precision}")
            if not self.cuda_target:
                raise BuildOptionError(f"--kv-cache fp8 with a CPU build ({self.backend}): FP8 caches are for GPUs "
                                       f"(FP8 attention in the Triton kernel); build trt, or aoti --device cuda")
            if self.backend in ("trt", "onnx") and attention != "triton":
                raise BuildOptionError("--kv-cache fp8 in ONNX/TensorRT needs --attention triton (the FP8 cache is "
                                       "read by the BlockAttentionFP8 plugin; no ONNX operator indexes FP8 tensors)")
        return replace(self, attention=attention)


def _precision_hint(backend: str, precision: str) -> str:
    if backend == "ort" and precision == "fp8":
        return (" (ONNX Runtime's CPU provider has no FP8 kernels: build fp8 with --backend trt; "
                "`streamer calibrate --report` measures FP8 by simulation here)")
    if backend == "ort" and precision in ("fp16", "bf16"):
        return (f" (ONNX Runtime's CPU provider has no {precision} kernels for these graphs: `streamer export "
                f"--precision {precision}` writes the ONNX for TensorRT, or build aoti --device cuda)")
    return ""


def prepare_system(system, options: BuildOptions) -> None:
    """Put `system` in the build's form, in place: the transformer in the activation dtype, its attention
    implementation, and the FP8 cache scales (from the calibration set) when --kv-cache fp8."""
    model = system.model
    model.to(options.activation_dtype)
    model.backbone.set_attn_impl(options.attention)
    if options.kv_cache == "fp8":
        from calibration.quantize import kv_scales
        from calibration.record import load_calibration

        tensors = load_calibration(options.calibration, system.preset)[0]
        k_scale, v_scale = kv_scales(tensors)
        model.backbone.set_kv_cache_scales(torch.from_numpy(k_scale), torch.from_numpy(v_scale))
    else:
        model.backbone.set_kv_cache_scales(None)


def describe(options: BuildOptions, system) -> dict:
    """The manifest's record of these options (after `prepare_system`)."""
    from model_src.stages import cache_dtype

    scales = system.model.backbone.kv_cache_scales
    return {"precision": options.precision, "attention": options.attention,
            "kv_cache": {"dtype": str(cache_dtype(system)).removeprefix("torch."),
                         "scales": "kv_cache.k_scale, kv_cache.v_scale in initial_state.safetensors"
                         if scales is not None else None}}
