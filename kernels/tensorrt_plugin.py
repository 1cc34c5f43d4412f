"""TensorRT plugins for the attention kernel (TensorRT 10.x `tensorrt.plugin`, quickly deployable plugins).

`register()` registers `streamer::BlockAttention` and `streamer::BlockAttentionFP8`, matching the ONNX
nodes of kernels/onnx.py by namespace and name, so TensorRT's ONNX parser maps those nodes onto the
Triton kernel. The implementation is the JIT form: TensorRT calls back into Python on its stream, and
the kernel runs on the plugin's device buffers (so the engine needs Python at run time; an AOT form
that embeds the compiled PTX is future work). Import needs `tensorrt`; nothing here runs without it.
"""
from __future__ import annotations

from typing import Tuple

_registered = False


def register() -> None:
    """Register both plugins with TensorRT (idempotent). Raises ImportError without tensorrt."""
    global _registered
    if _registered:
        return
    import tensorrt.plugin as trtp
    import torch

    from .attention import block_attention_triton

    def _torch(t) -> torch.Tensor:
        return torch.as_tensor(t, device="cuda")

    def _run(stream: int, outputs, *tensors, causal_tail: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            args = [_torch(t) for t in tensors]
            if len(args) == 6:
                args += [None, None]
            _torch(outputs[0]).copy_(block_attention_triton(*args, causal_tail=causal_tail))

    @trtp.register("streamer::BlockAttention")
    def _desc(q: trtp.TensorDesc, cache_k: trtp.TensorDesc, cache_v: trtp.TensorDesc, cache_len: trtp.TensorDesc,
              local_k: trtp.TensorDesc, local_v: trtp.TensorDesc, causal_tail: int) -> trtp.TensorDesc:
        return q.like()

    @trtp.impl("streamer::BlockAttention")
    def _impl(q: trtp.Tensor, cache_k: trtp.Tensor, cache_v: trtp.Tensor, cache_len: trtp.Tensor,
              local_k: trtp.Tensor, local_v: trtp.Tensor, causal_tail: int, outputs: Tuple[trtp.Tensor],
              stream: int) -> None:
        _run(stream, outputs, q, cache_k, cache_v, cache_len, local_k, local_v, causal_tail=causal_tail)

    @trtp.register("streamer::BlockAttentionFP8")
    def _desc_fp8(q: trtp.TensorDesc, cache_k: trtp.TensorDesc, cache_v: trtp.TensorDesc,
                  cache_len: trtp.TensorDesc, local_k: trtp.TensorDesc, local_v: trtp.TensorDesc,
                  k_scale: trtp.TensorDesc, v_scale: trtp.TensorDesc, causal_tail: int) -> trtp.TensorDesc:
        return q.like()

    @trtp.impl("streamer::BlockAttentionFP8")
    def _impl_fp8(q: trtp.Tensor, cache_k: trtp.Tensor, cache_v: trtp.Tensor, cache_len: trtp.Tensor,
                  local_k: trtp.Tensor, local_v: trtp.Tensor, k_scale: trtp.Tensor, v_scale: trtp.Tensor,
                  causal_tail: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        _run(stream, outputs, q, cache_k, cache_v, cache_len, local_k, local_v, k_scale, v_scale,
             causal_tail=causal_tail)

    _registered = True
