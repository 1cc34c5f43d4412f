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
PRECISIONS = {"ort": ("fp32",), "aoti": ("fp32",), "trt": ("fp32", "fp16", "bf16")}  # int8/fp8: calibration


def build(system, out: Path, backend: str = "ort", precision: str = "fp32", weights: dict | None = None,
          on_stage: Callable[[str], None] = lambda stage: None) -> dict:
    """Export every stage of `system` into `out` for `backend`; returns the manifest written.

    `weights` records where the weights came from ({"seed": n} or {"file": path, "sha256": digest}),
    so `streamer verify` can rebuild the reference. `on_stage(name)` is called as each stage starts.
    """
    from safetensors.numpy import save_file

    from runtime.engines import installed_versions
    from runtime.manifest import write_manifest

    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not built by this version; available: {sorted(BACKENDS)}")
    if precision not in PRECISIONS[backend]:
        raise ValueError(f"precision {precision!r} is not available for backend {backend!r}; "
                         f"available: {list(PRECISIONS[backend])} (int8/fp8 come with calibration)")
    if backend == "trt":
        from .tensorrt_build import import_tensorrt

        import_tensorrt()  # fail before minutes of export if TensorRT is missing
    out.mkdir(parents=True, exist_ok=True)
    p: Preset = system.preset
    stages, initial = {}, {}
    for spec in make_stages(system):
        on_stage(spec.name)
        if backend == "aoti":
            path = out / f"{spec.name}.pt2"
            inputs, outputs = export_stage_aoti(spec, path)
        else:  # trt keeps the ONNX it was built from under onnx/
            onnx_dir = out / "onnx" if backend == "trt" else out
            onnx_dir.mkdir(exist_ok=True)
            path = onnx_dir / f"{spec.name}.onnx"
            inputs, outputs = export_stage(spec, path)
        if backend == "trt":
            from .tensorrt_build import build_engine

            engine = out / f"{spec.name}.engine"
            build_engine(path, engine, precision, out / "timing.cache", {t.name: t.shape for t in inputs})
            path = engine
        stages[spec.name] = {"file": path.name, "inputs": [t.to_json() for t in inputs],
                             "outputs": [t.to_json() for t in outputs]}
        initial.update({f"{spec.name}.{k}": v.detach().numpy() for k, v in spec.initial_state.items()})
    save_file(initial, str(out / "initial_state.safetensors"))
    manifest = {"preset": {"name": p.name, "json": p.to_json()}, "backend": backend,
                "backend_library": BACKENDS[backend], "precision": precision,
                "target": _target(backend),
                "versions": installed_versions(), "weights": weights or {}, "stages": stages,
                "initial_state": "initial_state.safetensors"}
    write_manifest(out, manifest)
    return manifest


def _target(backend: str) -> dict:
    """Where the engines run: this machine's CPU, or its GPU for TensorRT."""
    target = {"device": "cpu", "machine": platform.machine(), "processor": platform.processor()}
    if backend == "trt":
        import torch

        target.update(device="cuda", gpu=torch.cuda.get_device_name(),
                      compute_capability=".".join(map(str, torch.cuda.get_device_capability())))
    return target
