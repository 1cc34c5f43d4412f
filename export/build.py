"""`streamer build`: a preset (random or given weights) -> one engine per stage + manifest.json.

Backends: "ort" (ONNX graphs for ONNX Runtime, checked against TensorRT's operator set), "aoti"
(AOTInductor packages, compiled for this machine's device) and "trt" (TensorRT engines built from the
same ONNX on this machine's GPU; the ONNX stays beside them under onnx/).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable

from model_src.config import Preset

from .aoti_export import export_stage_aoti
from .onnx_export import export_stage
from .stages import make_stages

BACKENDS = {"ort": "onnxruntime", "aoti": "torch", "trt": "tensorrt"}  # backend -> library it depends on
PRECISIONS = {"ort": ("fp32", "int8"), "aoti": ("fp32",), "trt": ("fp32", "fp16", "bf16", "int8", "fp8")}
QUANTIZED = ("int8", "fp8")  # need a calibration set; quantize thinker_step and flow_step


def build(system, out: Path, backend: str = "ort", precision: str = "fp32", weights: dict | None = None,
          on_stage: Callable[[str], None] = lambda stage: None, device: str = "cpu",
          calibration: Path | None = None, algorithm: str = "max") -> dict:
    """Export every stage of `system` into `out` for `backend`; returns the manifest written.

    `weights` records where the weights came from ({"seed": n} or {"file": path, "sha256": digest}),
    so `streamer verify` can rebuild the reference. `on_stage(name)` is called as each stage starts.
    `device`: "cuda" compiles AOTInductor packages for the GPU (the runtime replays them as CUDA graphs).
    int8 / fp8: thinker_step and flow_step are quantized with modelopt, calibrated on the `calibration`
    set (`streamer calibrate`) with `algorithm`, and exported with Q/DQ pairs; the codecs stay fp32.
    """
    from safetensors.numpy import save_file

    from runtime.engines import installed_versions
    from runtime.manifest import write_manifest

    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not built by this version; available: {sorted(BACKENDS)}")
    if precision not in PRECISIONS[backend]:
        hint = (" (ONNX Runtime's CPU provider has no FP8 kernels: build fp8 with --backend trt; "
                "`streamer calibrate --report` measures FP8 by simulation here)" if precision == "fp8" else "")
        raise ValueError(f"precision {precision!r} is not available for backend {backend!r}; "
                         f"available: {list(PRECISIONS[backend])}{hint}")
    quant = None
    if precision in QUANTIZED:
        if calibration is None:
            raise ValueError(f"--precision {precision} needs --calibration CAL.safetensors "
                             f"(record one with `streamer calibrate`)")
        from calibration.quantize import QUANTIZED_STAGES, import_modelopt, quant_config
        from calibration.record import load_calibration

        quant_config(precision, algorithm)  # a wrong algorithm fails before any export
        import_modelopt()
        quant = (QUANTIZED_STAGES, load_calibration(calibration, system.preset)[0])
    if device not in ("cpu", "cuda") or (device == "cuda" and backend != "aoti"):
        raise ValueError(f"--device {device}: expected cpu, or cuda with --backend aoti (ort builds are "
                         f"device-independent, trt builds always target this machine's GPU)")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA device on this machine")
    if backend == "trt":
        from .tensorrt_build import import_tensorrt

        import_tensorrt()  # fail before minutes of export if TensorRT is missing
    out.mkdir(parents=True, exist_ok=True)
    p: Preset = system.preset
    stages, initial = {}, {}
    for spec in make_stages(system):
        on_stage(spec.name)
        stage_precision = precision if quant and spec.name in quant[0] else ("fp32" if quant else precision)
        if backend == "aoti":
            path = out / f"{spec.name}.pt2"
            inputs, outputs = export_stage_aoti(spec, path, device)
        else:  # trt keeps the ONNX it was built from under onnx/
            onnx_dir = out / "onnx" if backend == "trt" else out
            onnx_dir.mkdir(exist_ok=True)
            path = onnx_dir / f"{spec.name}.onnx"
            if stage_precision in QUANTIZED:
                from calibration.quantize import quantize_stage

                from .quantized_export import export_quantized_stage

                module = quantize_stage(system, spec.name, quant[1], precision, algorithm)
                inputs, outputs = export_quantized_stage(spec, module, path, precision)
            else:
                inputs, outputs = export_stage(spec, path)
        if backend == "trt":
            from .tensorrt_build import build_engine

            engine = out / f"{spec.name}.engine"
            build_engine(path, engine, stage_precision, out / "timing.cache", {t.name: t.shape for t in inputs})
            path = engine
        stages[spec.name] = {"file": path.name, "precision": stage_precision, "inputs": [t.to_json() for t in inputs],
                             "outputs": [t.to_json() for t in outputs]}
        initial.update({f"{spec.name}.{k}": v.detach().cpu().numpy() for k, v in spec.initial_state.items()})
    save_file(initial, str(out / "initial_state.safetensors"))
    manifest = {"preset": {"name": p.name, "json": p.to_json()}, "backend": backend,
                "backend_library": BACKENDS[backend], "precision": precision,
                "target": _target(backend, device),
                "versions": installed_versions(), "weights": weights or {}, "stages": stages,
                "initial_state": "initial_state.safetensors"}
    if quant:
        from runtime.manifest import sha256

        manifest["calibration"] = {"file": str(Path(calibration).resolve()), "sha256": sha256(Path(calibration)),
                                   "algorithm": algorithm, "stages": list(quant[0])}
    write_manifest(out, manifest)
    return manifest


def _target(backend: str, device: str) -> dict:
    """Where the engines run: this machine's CPU, or its GPU for TensorRT and CUDA AOTInductor packages."""
    target = {"device": "cpu", "machine": platform.machine(), "processor": platform.processor()}
    if backend == "trt" or device == "cuda":
        import torch

        target.update(device="cuda", gpu=torch.cuda.get_device_name(),
                      compute_capability=".".join(map(str, torch.cuda.get_device_capability())))
    return target
