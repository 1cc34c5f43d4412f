"""`streamer build` / `streamer export`: a preset (random or given weights) -> one engine (or one checked
ONNX graph) per stage + manifest.json.

Backends: "ort" (ONNX graphs for ONNX Runtime, checked against TensorRT's operator set), "aoti"
(AOTInductor packages, compiled for this machine's CPU or GPU), "trt" (TensorRT engines built from the
same ONNX on this machine's GPU; the ONNX stays beside them under onnx/) and "onnx" (the checked ONNX
only, for `streamer build --from-onnx DIR --backend trt` on the target GPU). What each build holds
(precision, attention, KV-cache dtype) is in export/options.py.
"""
from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Callable

from model_src.stages import StageSpec, make_stages, per_layer_cache
from unitio.names import TRANSFORMER_STAGES

from .options import BACKENDS, QUANTIZED, BuildOptionError, BuildOptions, describe, prepare_system


def build(system, out: Path, backend: str = "ort", precision: str = "fp32", weights: dict | None = None,
          on_stage: Callable[[str], None] = lambda stage: None, device: str = "cpu",
          calibration: Path | None = None, algorithm: str = "max", attention: str | None = None,
          kv_cache: str = "auto", batch: int = 1) -> dict:
    """Export every stage of `system` into `out` for `backend`; returns the manifest written.

    `weights` records where the weights came from ({"seed": n} or {"file": path, "sha256": digest}),
    so `streamer verify` can rebuild the reference. `on_stage(name)` is called as each stage starts.
    `device`: "cuda" compiles AOTInductor packages for the GPU. int8 / fp8: thinker_step and flow_step
    are quantized with modelopt on the `calibration` set with `algorithm`, exported with Q/DQ pairs.
    The system is changed in place to the build's form (dtype, attention, FP8 cache scales). `batch`:
    sessions per engine call (every stage takes B rows: per-row cache length, codec state, unit index).
    """
    if not 1 <= batch <= 64:
        raise BuildOptionError(f"--batch: expected 1 to 64 sessions per engine, got {batch}")
    options = BuildOptions(backend, precision, device, attention, kv_cache,
                           Path(calibration) if calibration else None, algorithm).resolve()
    if options.calibration is not None:  # recorded from other weights (or before it said which): refused
        from calibration.record import check_calibration_weights

        check_calibration_weights(options.calibration, system)
    quant = _check_environment(options, system)
    prepare_system(system, options)
    out.mkdir(parents=True, exist_ok=True)
    stages, initial = {}, {}
    for spec in make_stages(system, batch):
        on_stage(spec.name)
        stage_precision = options.precision if spec.name in TRANSFORMER_STAGES else "fp32"  # codecs: fp32 always
        path, inputs, outputs = _export_stage(spec, out, options, stage_precision, quant, system)
        stages[spec.name] = {"file": path.name, "precision": stage_precision, "attention": spec.attention,
                             "inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outputs]}
        initial.update({f"{spec.name}.{k}": v.detach().cpu().numpy() for k, v in spec.initial_state.items()})
    return _finish(out, system, options, stages, initial, weights, quant, batch)


def _check_environment(options: BuildOptions, system) -> tuple | None:
    """Fail before minutes of export if a library or device the build needs is missing; returns the
    (stages, calibration tensors) of a quantized build, else None."""
    quant = None
    if options.precision in QUANTIZED:
        from calibration.quantize import QUANTIZED_STAGES, import_modelopt, quant_config
        from calibration.record import load_calibration

        quant_config(options.precision, options.algorithm)  # a wrong algorithm fails before any export
        import_modelopt()
        quant = (QUANTIZED_STAGES, load_calibration(options.calibration, system.preset)[0])
    if options.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BuildOptionError("--device cuda: torch sees no CUDA device on this machine")
    if options.backend == "trt":
        from .tensorrt_build import import_tensorrt

        import_tensorrt()
    return quant


def _export_stage(spec: StageSpec, out: Path, options: BuildOptions, stage_precision: str, quant, system):
    """One stage -> (the engine file, inputs, outputs) for the build's backend."""
    from .aoti_export import export_stage_aoti
    from .onnx_export import export_stage

    if options.backend == "aoti":
        path = out / f"{spec.name}.pt2"
        inputs, outputs = export_stage_aoti(spec, path, options.device)
        return path, inputs, outputs
    onnx_dir = out / "onnx" if options.backend == "trt" else out  # trt keeps the ONNX it was built from
    onnx_dir.mkdir(exist_ok=True)
    path = onnx_dir / f"{spec.name}.onnx"
    if stage_precision in QUANTIZED:
        from calibration.quantize import quantize_stage

        from .quantized_export import export_quantized_stage

        module = quantize_stage(system, spec.name, quant[1], options.precision, options.algorithm)
        inputs, outputs = export_quantized_stage(spec, module, path, options.precision)
    else:
        fp8_cache = spec.name in TRANSFORMER_STAGES and options.kv_cache == "fp8"
        inputs, outputs = export_stage(per_layer_cache(spec) if fp8_cache else spec, path)
    if options.backend == "trt":
        from .tensorrt_build import build_engine

        engine = out / f"{spec.name}.engine"
        build_engine(path, engine, stage_precision, out / "timing.cache", {t.name: t.shape for t in inputs})
        path = engine
    return path, inputs, outputs


def _finish(out: Path, system, options: BuildOptions, stages: dict, initial: dict, weights: dict | None,
            quant, batch: int = 1) -> dict:
    """Write initial_state.safetensors (codec states, FP8 cache scales) and the manifest."""
    from safetensors.numpy import save_file

    from runtime.engine import installed_versions
    from runtime.manifest import sha256, write_manifest

    scales = system.model.backbone.kv_cache_scales
    if scales is not None:
        initial["kv_cache.k_scale"], initial["kv_cache.v_scale"] = (s.cpu().numpy() for s in scales)
    save_file(initial, str(out / "initial_state.safetensors"))
    p = system.preset
    manifest = {"preset": {"name": p.name, "json": p.to_json()}, "backend": options.backend,
                "backend_library": BACKENDS[options.backend], **describe(options, system),
                "target": _target(options), "versions": installed_versions(), "weights": weights or {}, "batch": batch,
                "stages": stages, "initial_state": "initial_state.safetensors"}
    if options.calibration is not None:
        manifest["calibration"] = {"file": str(Path(options.calibration).resolve()),
                                   "sha256": sha256(Path(options.calibration)), "algorithm": options.algorithm,
                                   "stages": list(quant[0]) if quant else [],
                                   "kv_cache_scales": options.kv_cache == "fp8"}
    write_manifest(out, manifest)
    return manifest


def _target(options: BuildOptions) -> dict:
    """Where the engines run: this machine's CPU; its GPU for TensorRT and CUDA AOTInductor packages; any
    CUDA GPU for an ONNX export (the engines are built there)."""
    target = {"device": "cpu", "machine": platform.machine(), "processor": platform.processor()}
    if options.backend == "onnx":
        target.update(device="cuda", gpu=None, compute_capability=None)
    elif options.backend == "trt" or options.device == "cuda":
        import torch

        target.update(device="cuda", gpu=torch.cuda.get_device_name(),
                      compute_capability=".".join(map(str, torch.cuda.get_device_capability())))
    return target


def build_from_onnx(onnx_dir: Path, out: Path, backend: str = "trt",
                    on_stage: Callable[[str], None] = lambda stage: None) -> dict:
    """The engines of an ONNX export (`streamer export`), built on this machine: `trt` engines (the ONNX
    kept under onnx/), or `ort` (the graphs themselves, where ONNX Runtime can run them)."""
    from runtime.manifest import ManifestError, read_manifest, write_manifest

    from .tensorrt_build import build_engine, import_tensorrt

    source = read_manifest(onnx_dir)  # hashes checked: what is built is what was exported
    if source["backend"] != "onnx":
        raise ManifestError(f"{onnx_dir} holds {source['backend']} engines, not an ONNX export (make one with "
                            f"`streamer export`)")
    if backend not in ("trt", "ort"):
        raise BuildOptionError(f"--from-onnx builds trt or ort engines, not {backend!r}")
    calibration = source.get("calibration", {}).get("file")
    BuildOptions(backend, source["precision"], "cpu", source["attention"],  # refuse what `backend` cannot run
                 "fp8" if source["kv_cache"]["dtype"].startswith("float8") else "auto",
                 Path(calibration) if calibration else None).resolve()
    if backend == "trt":
        import_tensorrt()
    out.mkdir(parents=True, exist_ok=True)
    onnx_out = out / "onnx" if backend == "trt" else out
    onnx_out.mkdir(exist_ok=True)
    for rel in source["files"]:  # the graphs and their external data, and the initial state
        dest = (out if rel == source["initial_state"] else onnx_out) / rel
        shutil.copyfile(onnx_dir / rel, dest)
    stages = {}
    for name, info in source["stages"].items():
        on_stage(name)
        path = onnx_out / info["file"]
        if backend == "trt":
            engine = out / f"{name}.engine"
            build_engine(path, engine, info["precision"], out / "timing.cache",
                         {t["name"]: tuple(t["shape"]) for t in info["inputs"]})
            path = engine
        stages[name] = {**info, "file": path.name}
    from runtime.engine import installed_versions

    keep = ("preset", "precision", "attention", "kv_cache", "weights", "calibration", "initial_state", "batch")
    manifest = {**{k: source[k] for k in keep if k in source}, "backend": backend,
                "backend_library": BACKENDS[backend], "versions": installed_versions(),
                "target": _target(BuildOptions(backend)), "stages": stages, "exported_from": str(onnx_dir)}
    write_manifest(out, manifest)
    return manifest
