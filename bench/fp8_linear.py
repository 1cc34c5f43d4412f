"""FP8 E4M3 linear layers for a GPU measurement of an FP8 flow_step in torch (bench/gpu_check.py).

Weights per output channel, activations per token (scaled at run time), `torch._scaled_mm` with
row-wise scales (Hopper and newer), bf16 out: the arithmetic of TensorRT's FP8 GEMMs, so the speed and
the latents' cosine it gives are what an FP8 engine would give, without TensorRT on the machine.
"""
from __future__ import annotations

import torch
from torch import nn

E4M3_MAX = 448.0


class FP8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)  # [out, 1]
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))  # [out, in], row-major
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = linear.bias
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        rows = x2.shape[0]
        pad = -rows % 16  # FP8 GEMMs want every dimension a multiple of 16
        if pad:
            x2 = torch.cat([x2, x2.new_zeros(pad, x2.shape[1])])
        scale = (x2.float().abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)  # [M, 1]
        xq = (x2.float() / scale).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                             out_dtype=torch.bfloat16)[:rows]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def to_fp8(module: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every nn.Linear under `module` (but those named in `skip`) by an FP8Linear, in place;
    returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name not in skip and child.in_features % 16 == 0 \
                and child.out_features % 16 == 0:
            setattr(module, name, FP8Linear(child))
            count += 1
        else:
            count += to_fp8(child, skip)
    return count
