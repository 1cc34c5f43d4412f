"""The torch stage modules behind the runtime's Engine interface, so the runtime's unit path (the
sequential `EngineSession`) can run on them: to record calibration data, and to measure quantized
(modelopt fake-quant) modules at the session level exactly as engines would be."""
from __future__ import annotations

import numpy as np
import torch

from model_src.stages import StageSpec, make_stages
from runtime.engine import Engine
from runtime.manifest import TensorSpec


def _spec(name: str, x: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(x.shape), str(x.dtype).removeprefix("torch."))


class TorchStageEngine(Engine):
    """A StageSpec's module: `run({name: array}) -> {name: array}` in float32 on the CPU."""

    backend = "torch"

    def __init__(self, spec: StageSpec, module: torch.nn.Module | None = None) -> None:
        self.module = module if module is not None else spec.module
        args = tuple(spec.example_inputs.values())
        with torch.no_grad():
            outs = spec.module(*args)
        super().__init__(spec.name, [_spec(n, x) for n, x in spec.example_inputs.items()],
                         [_spec(n, y) for n, y in zip(spec.output_names, outs)])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(feeds)
        with torch.no_grad():
            outs = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs))
        return {t.name: y.numpy() for t, y in zip(self.outputs, outs)}


def torch_parts(system, modules: dict[str, torch.nn.Module] | None = None,
                stages: tuple[str, ...] | None = None) -> tuple[dict, dict, dict]:
    """(manifest-like dict, {stage: TorchStageEngine}, initial codec states) for
    `EngineSession.in_process`; `modules` replaces some stages' modules (e.g. quantized ones); `stages`
    keeps only those (each engine runs its module once to learn its output shapes)."""
    modules = modules or {}
    specs = [s for s in make_stages(system) if stages is None or s.name in stages]
    engines = {s.name: TorchStageEngine(s, modules.get(s.name)) for s in specs}
    manifest = {"preset": {"name": system.preset.name, "json": system.preset.to_json()},
                "stages": {name: {"inputs": [t.to_json() for t in e.inputs], "outputs": [t.to_json() for t in e.outputs]}
                           for name, e in engines.items()}}
    initial = {s.name: {k: v.detach().numpy().copy() for k, v in s.initial_state.items()} for s in specs if s.initial_state}
    return manifest, engines, initial


def torch_device_parts(system, device: str = "cuda", batch: int = 1) -> tuple[dict, dict, dict]:
    """(manifest-like dict, {stage: TorchDeviceEngine}, initial state) for `DeviceSession(engines=...)`
    (or `BatchedSession(None, engines=...)` with `batch` rows): the stage modules of `system` (already on
    `device`, in its build's dtype and attention) run in this process on the device path, e.g.
    bench/gpu_check.py's base session without an engine build."""
    from runtime.device.device import Device
    from runtime.device.engines import TorchDeviceEngine

    dev = Device(device)
    stages, engines, initial = {}, {}, {}
    for spec in make_stages(system, batch, device=dev.torch):
        with torch.no_grad():
            outs = spec.module(*spec.example_inputs.values())
        inputs = [_spec(n, x) for n, x in spec.example_inputs.items()]
        outputs = [_spec(n, y) for n, y in zip(spec.output_names, outs)]
        engines[spec.name] = TorchDeviceEngine(spec.name, inputs, outputs, dev, spec.module)
        stages[spec.name] = {"inputs": [t.to_json() for t in inputs], "outputs": [t.to_json() for t in outputs],
                             "attention": spec.attention}
        if spec.initial_state:
            initial[spec.name] = dict(spec.initial_state)
    scales = system.model.backbone.kv_cache_scales
    if scales is not None:
        initial["kv_cache"] = {"k_scale": scales[0], "v_scale": scales[1]}
    manifest = {"preset": {"name": system.preset.name, "json": system.preset.to_json()}, "stages": stages,
                "backend": "torch", "target": {"device": dev.torch.type},
                "precision": str(system.model.dtype).removeprefix("torch."), "batch": batch}
    return manifest, engines, initial
