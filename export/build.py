"""`streamer build`: a preset (random or given weights) -> one engine per stage + manifest.json.

Backends: "ort" (ONNX graphs for ONNX Runtime, checked against TensorRT's operator set) and "aoti"
(AOTInductor packages, compiled for this machine's device).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable

from model_src.config import Preset

from .aoti_export import export_stage_aoti
from .onnx_export import export_stage
from .stages import make_stages

BACKENDS = {"ort": "onnxruntime", "aoti": "torch"}  # backend -> the library the engines depend on
PRECISIONS = ("fp32",)


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
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not available for backend {backend!r}; "
                         f"available: {list(PRECISIONS)} (reduced precisions come with calibration)")
    out.mkdir(parents=True, exist_ok=True)
    p: Preset = system.preset
    stages, initial = {}, {}
    for spec in make_stages(system):
        on_stage(spec.name)
        if backend == "ort":
            path = out / f"{spec.name}.onnx"
            inputs, outputs = export_stage(spec, path)
        else:
            path = out / f"{spec.name}.pt2"
            inputs, outputs = export_stage_aoti(spec, path)
        stages[spec.name] = {"file": path.name, "inputs": [t.to_json() for t in inputs],
                             "outputs": [t.to_json() for t in outputs]}
        initial.update({f"{spec.name}.{k}": v.detach().numpy() for k, v in spec.initial_state.items()})
    save_file(initial, str(out / "initial_state.safetensors"))
    manifest = {"preset": {"name": p.name, "json": p.to_json()}, "backend": backend,
                "backend_library": BACKENDS[backend], "precision": precision,
                "target": {"device": "cpu", "machine": platform.machine(), "processor": platform.processor()},
                "versions": installed_versions(), "weights": weights or {}, "stages": stages,
                "initial_state": "initial_state.safetensors"}
    write_manifest(out, manifest)
    return manifest
