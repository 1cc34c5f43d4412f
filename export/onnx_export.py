"""One stage to ONNX (torch.onnx, dynamo exporter), then the checks every exported graph must pass:
onnx.checker, shape inference, static shapes, and TensorRT's supported operator set."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from model_src.stages import StageSpec
from runtime.manifest import TensorSpec

OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.txt")
PLUGIN_OPS = {"streamer": {"BlockAttentionPartial", "BlockAttentionPartialFP8", "BlockAttentionCombine"}}  # kernels/onnx.py


class ExportCheckError(RuntimeError):
    """An exported graph that TensorRT (or a static-shape engine) could not take."""


def tensorrt_ops() -> set[str]:
    lines = [ln for ln in OPS_FILE.read_text().splitlines() if not ln.startswith("#")]
    return set(" ".join(lines).split())


def export_stage(spec: StageSpec, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Export `spec` to `path` (weights beside it as external data when large) and check it.

    Returns the graph's (inputs, outputs) as TensorSpecs, names in the stage's argument order.
    """
    from kernels.onnx import CUSTOM_TRANSLATION

    args = tuple(spec.example_inputs.values())
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(spec.module, args, input_names=list(spec.example_inputs),
                                    output_names=spec.output_names, dynamo=True, optimize=False, verbose=False,
                                    custom_translation_table=CUSTOM_TRANSLATION)
    simplify(program.model)
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=False)
    onnx.shape_inference.infer_shapes_path(str(path), check_type=True)
    model = onnx.load(str(path), load_external_data=False)
    check_tensorrt_ops(model, spec.name)
    return _specs(model.graph.input, spec.name), _specs(model.graph.output, spec.name)


def simplify(model) -> None:
    """Inline torchlib's functions and fold constants (with shape inference), in place.

    This is what turns CastLike / SplitToSequence / SequenceAt, which TensorRT does not parse, into
    Cast / Split; the exporter's full optimizer does it too, but its pattern rewriter takes tens of
    minutes on a 28-layer graph, and this takes about a second.
    """
    import onnx_ir as ir
    import onnxscript.optimizer

    ir.passes.common.InlinePass()(model)
    onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True)
    onnxscript.optimizer.remove_unused_nodes(model)


def check_tensorrt_ops(model: onnx.ModelProto, stage: str, extra_ops: dict[str, set[str]] | None = None) -> None:
    """Every node must be an operator TensorRT's ONNX parser supports, or one of our plugins (or of
    `extra_ops`, {domain: ops}, e.g. TensorRT's FP8 Q/DQ)."""
    supported = tensorrt_ops()
    custom = {**PLUGIN_OPS, **(extra_ops or {})}
    bad = sorted({f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node
                  if (n.op_type not in supported if n.domain in ("", "ai.onnx")
                      else n.op_type not in custom.get(n.domain, set()))})
    if bad:
        raise ExportCheckError(f"{stage}: operators TensorRT's ONNX parser does not support: {', '.join(bad)}")


def _specs(values, stage: str) -> list[TensorSpec]:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if None in dims:
            raise ExportCheckError(f"{stage}.{v.name}: shape {dims} is not static")
        out.append(TensorSpec(v.name, tuple(dims), onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name))
    return out
