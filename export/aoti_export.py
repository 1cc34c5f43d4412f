"""One stage to an AOTInductor package (.pt2): torch.export, then compiled ahead of time for this device."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from model_src.stages import StageSpec
from runtime.manifest import TensorSpec

from .placement import check_placement


def export_stage_aoti(spec: StageSpec, path: Path, device: str = "cpu") -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Compile `spec` for `device` ("cpu" or "cuda") into the package `path`; returns its (inputs,
    outputs) as TensorSpecs. A CUDA package is what the runtime captures as a CUDA graph. A module with a
    tensor left elsewhere raises PlacementError naming the stage and the tensor, before torch.export."""
    module = spec.module.to(device)
    check_placement(spec.name, module, device)
    args = tuple(x.to(device) for x in spec.example_inputs.values())
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's deprecation chatter, not the user's concern
        program = torch.export.export(module, args, strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        outputs = module(*args)
    return ([_spec(n, x) for n, x in spec.example_inputs.items()],
            [_spec(n, x) for n, x in zip(spec.output_names, outputs)])


def _spec(name: str, x: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(x.shape), str(x.dtype).removeprefix("torch."))
