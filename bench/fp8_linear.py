"""FP8 E4M3 linear layers for a GPU measurement of an FP8 flow_step in torch (bench/gpu_check.py).

What an FP8 engine does: weights quantized once per output channel, activations with one static scale per
tensor taken from calibration (the amax of each linear's input over calibration runs / 448), so a call
is one scale-and-cast of the input and one `torch._scaled_mm` (the static activation scale, per-channel
weight scales, bf16 out): no run-time amax, no padding. `calibrate` records the scales;
`FP8Linear.forward` refuses to run uncalibrated.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from unitio.names import FP8_E4M3_MAX as E4M3_MAX


class FP8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)  # [out, 1]
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))  # [out, in], row-major
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.register_buffer("input_scale", torch.ones((), device=w.device))  # set by `calibrate`
        self.register_buffer("inv_scale", torch.ones((), device=w.device, dtype=torch.bfloat16))
        self.register_buffer("input_amax", torch.zeros((), device=w.device))
        self.calibrating, self.calibrated, self._row_scales = False, False, {}
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] (bf16); while calibrating, the bf16 linear, recording x's amax."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.calibrating:
            self.input_amax = torch.maximum(self.input_amax, x2.detach().float().abs().amax())
            w = self.weight_fp8.to(torch.bfloat16) * self.weight_scale.t().to(torch.bfloat16)
            y = x2.to(torch.bfloat16) @ w.t()
        else:
            if not self.calibrated:
                raise RuntimeError("FP8Linear: no activation scale yet; run `calibrate` on sample inputs first")
            xq = (x2 * self.inv_scale).to(torch.float8_e4m3fn)  # one static scale: scale and cast
            y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=self._row_scale(x2.shape[0]),
                                 scale_b=self.weight_scale, out_dtype=torch.bfloat16)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def _row_scale(self, rows: int) -> torch.Tensor:
        """The static scale as the [rows, 1] column _scaled_mm takes with per-channel weight scales (it has
        no per-tensor x per-channel mode), made once per row count and kept."""
        if rows not in self._row_scales:
            self._row_scales[rows] = self.input_scale.reshape(1, 1).repeat(rows, 1)  # strides (1, 1), even for 1 row
        return self._row_scales[rows]

    def finish_calibration(self) -> None:
        """Fix the per-tensor input scale from the recorded amax (a zero amax keeps scale 1)."""
        amax = self.input_amax.clamp(min=1e-12)
        scale = torch.where(self.input_amax > 0, amax / E4M3_MAX, torch.ones_like(amax)).float()
        self.inv_scale = (1.0 / scale).to(torch.bfloat16)  # what multiplies x (bf16) ...
        self.input_scale = 1.0 / self.inv_scale.float()  # ... and its exact inverse, what _scaled_mm applies
        self.calibrating, self.calibrated, self._row_scales = False, True, {}


@contextmanager
def calibrate(module: nn.Module):
    """Inside the block every FP8Linear under `module` runs in bf16 and records its input amax; on exit each
    fixes its static per-tensor scale. Yields the FP8Linears."""
    layers = [m for m in module.modules() if isinstance(m, FP8Linear)]
    for m in layers:
        m.calibrating, m.input_amax = True, torch.zeros_like(m.input_amax)
    try:
        yield layers
    finally:
        for m in layers:
            m.finish_calibration()


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
