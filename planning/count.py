"""What one call of each stage costs, counted by running it on meta tensors (no memory, no time):

- FLOPs: torch's FlopCounterMode (matmuls and convolutions, the work that matters);
- bytes read and written: forward hooks on every Linear, convolution and embedding (weights, inputs,
  outputs) and on every attention (the KV cache it reads: the whole capacity, the steady state of a
  long session, at the cache's dtype);
- the largest single activation (a floor for the workspace);
- the codec states (what the thinker keeps resident per stream).

The transformer runs at the build's activation dtype with the reference attention ("torch": the
matmuls any attention does over a full cache); the codecs stay fp32, as every build keeps them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model_src.config import Preset
from model_src.system import build_system

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}
ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}  # bytes per weight / cache element of the build


@dataclass
class StageCost:
    name: str
    flops: float  # per call
    bytes: float  # read + written per call (weights, cache, activations of the counted layers)
    weight_bytes: float  # of those, weights
    cache_bytes: float  # of those, the KV cache
    calls_per_unit: int
    largest_activation: float  # bytes
    state_bytes: float = 0.0  # codec state tensors (one set)
    compute: str = "bf16"  # which peak the FLOPs run at: the build's precision, or tf32 for the codecs


def _nbytes(x) -> int:
    return x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 0


class _Meter:
    """Forward hooks that sum the bytes each layer touches; `scale` rescales weight/cache bytes to the
    build's element size (fp8 weights and caches are counted at 1 byte though the meta run is bf16)."""

    def __init__(self, root: nn.Module, weight_scale: float, cache_scale: float) -> None:
        self.weights = self.cache = self.activations = 0.0
        self.largest = 0
        self.handles = []
        for m in root.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose3d)):
                transformer = isinstance(m, nn.Linear)
                self.handles.append(m.register_forward_hook(self._layer(weight_scale if transformer else 1.0)))
            elif isinstance(m, nn.Embedding):
                self.handles.append(m.register_forward_hook(self._embedding(weight_scale)))
            elif type(m).__name__ == "SelfAttention":
                self.handles.append(m.register_forward_hook(self._attention(cache_scale), with_kwargs=True))

    def _layer(self, scale: float):
        def hook(module, args, out) -> None:
            self.weights += scale * sum(_nbytes(p) for p in module.parameters(recurse=False))
            self._activations(args[0], out)
        return hook

    def _embedding(self, scale: float):
        def hook(module, args, out) -> None:
            self.weights += scale * _nbytes(out)  # the rows gathered
            self._activations(None, out)
        return hook

    def _attention(self, scale: float):
        def hook(module, args, kwargs, out) -> None:
            ctx = args[3] if len(args) > 3 else kwargs["ctx"]
            self.cache += scale * (_nbytes(ctx.cache_k) + _nbytes(ctx.cache_v))
        return hook

    def _activations(self, x, out) -> None:
        y = out[0] if isinstance(out, tuple) else out
        self.activations += _nbytes(x) + _nbytes(y)
        self.largest = max(self.largest, _nbytes(y))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _meta_inputs(system, p: Preset, dtype: torch.dtype) -> dict[str, tuple]:
    """Each stage's call on meta tensors of the engines' shapes, with a full cache (steady state)."""
    m = lambda *shape, dt=dtype: torch.empty(*shape, dtype=dt, device="meta")  # noqa: E731
    a, h, w = p.audio_frames_per_unit, p.latent_height, p.latent_width
    cache = m(p.n_layers, 1, p.n_kv_heads, p.cache_capacity, p.head_dim)
    full = torch.full((1,), p.cache_capacity, dtype=torch.int64, device="meta")
    index = torch.zeros(1, dtype=torch.int64, device="meta")
    av, vv = system.audio_vae, system.video_vae
    f32 = torch.float32
    return {
        "audio_enc": (av.encode_step, (m(1, p.samples_per_unit, dt=f32), av.init_encoder_state(1))),
        "video_enc": (vv.encode_step, (m(1, 3, p.frames_per_unit, p.frame_height, p.frame_width, dt=f32),
                                       vv.init_encoder_state(1))),
        "thinker_step": (system.model.thinker_step, (torch.zeros(1, p.text_in_tokens, dtype=torch.int64, device="meta"),
                                                     m(1, p.video_z, h, w), m(1, a, p.audio_z), m(1, a, p.audio_z),
                                                     m(1, p.video_z, h, w), cache, cache, full, index)),
        "flow_step": (system.model.flow_step, (m(1, a, p.audio_z), m(1, p.video_z, h, w),
                                               torch.zeros(1, device="meta"), cache, cache, full, index)),
        "audio_dec": (av.decode_step, (m(1, a, p.audio_z, dt=f32), av.init_decoder_state(1))),
        "video_dec": (vv.decode_step, (m(1, p.video_z, h, w, dt=f32), vv.init_decoder_state(1))),
    }


def count_stages(p: Preset, precision: str = "bf16") -> list[StageCost]:
    """The cost of one call of every stage of preset `p` built at `precision` (fp32 | bf16 | fp16 | fp8)."""
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r}: expected one of {list(DTYPES)}")
    system = build_system(p, device="meta")
    system.model.to(DTYPES[precision])
    system.model.backbone.set_attn_impl("torch")
    scale = ELEMENT[precision] / torch.empty((), dtype=DTYPES[precision]).element_size()
    costs = []
    with torch.no_grad():
        calls = _meta_inputs(system, p, DTYPES[precision])
    for name, (fn, args) in calls.items():
        transformer = name in ("thinker_step", "flow_step")
        meter = _Meter(system.model if transformer else system, scale if transformer else 1.0, scale)
        counter = FlopCounterMode(display=False)
        try:
            with torch.no_grad(), counter:
                fn(*args)
        finally:
            meter.close()
        state = sum(_nbytes(s) for s in args[1]) if not transformer else 0.0
        costs.append(StageCost(name, float(counter.get_total_flops()),
                               meter.weights + meter.cache + meter.activations, meter.weights, meter.cache,
                               p.flow_steps if name == "flow_step" else 1, float(meter.largest), float(state),
                               precision if transformer else "tf32"))
    return costs
