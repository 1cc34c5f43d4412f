"""ONNX form of the kernel: `torch.ops.streamer.block_attention` -> one `streamer::BlockAttention` node.

Pass `CUSTOM_TRANSLATION` as `custom_translation_table` to `torch.onnx.export(..., dynamo=True)`.
The node's inputs are the op's (q, cache_k, cache_v, cache_len, local_k, local_v), plus (k_scale,
v_scale) for an FP8 cache (`streamer::BlockAttentionFP8`); its attribute is `causal_tail`. The
TensorRT plugins (kernels/tensorrt_plugin.py) have the same names, namespace and signatures; ONNX
Runtime needs a matching custom-op library to run these nodes.
"""
from __future__ import annotations

import onnx
import onnxscript
import torch

from . import ops  # noqa: F401  (registers torch.ops.streamer.block_attention)

DOMAIN = "streamer"
OP_TYPE = "BlockAttention"  # float cache: 6 inputs
OP_TYPE_FP8 = "BlockAttentionFP8"  # FP8 E4M3 cache: 8 inputs, the per-KV-head scales last


def _schema(op_type: str, fp8: bool) -> onnx.defs.OpSchema:
    """The node's schema, registered with onnx so exporters and checkers know its signature."""
    P = onnx.defs.OpSchema.FormalParameter
    inputs = [P("q", "T"), P("cache_k", "TC"), P("cache_v", "TC"), P("cache_len", "I"), P("local_k", "T"),
              P("local_v", "T")]
    if fp8:
        inputs += [P("k_scale", "tensor(float)"), P("v_scale", "tensor(float)")]
    return onnx.defs.OpSchema(
        op_type, DOMAIN, 1, doc=__doc__, inputs=inputs, outputs=[P("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations"),
                          ("TC", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(float8e4m3fn)"],
                           "cache"),
                          ("I", ["tensor(int32)", "tensor(int64)"], "lengths")],
        attributes=[onnx.defs.OpSchema.Attribute("causal_tail", onnx.defs.OpSchema.AttrType.INT,
                                                 "trailing token-causal local keys", required=False)])


for _op, _fp8 in ((OP_TYPE, False), (OP_TYPE_FP8, True)):
    if not onnx.defs.has(_op, DOMAIN):
        onnx.defs.register_schema(_schema(_op, _fp8))
_opset = onnxscript.values.Opset(DOMAIN, 1)


def block_attention_onnx(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale=None, v_scale=None,
                         causal_tail: int = 0):
    if k_scale is None:
        return getattr(_opset, OP_TYPE)(q, cache_k, cache_v, cache_len, local_k, local_v, causal_tail=causal_tail)
    return getattr(_opset, OP_TYPE_FP8)(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale, v_scale,
                                        causal_tail=causal_tail)


CUSTOM_TRANSLATION = {torch.ops.streamer.block_attention.default: block_attention_onnx}
