"""What one call of each stage costs, counted by running it on meta tensors (no memory, no time).

The call runs under planning/ops.py's recorder: the kernels it launches (GEMMs and convolutions with
their FLOPs and bytes, one fused kernel per attention call reading the whole KV cache at the cache's
dtype, one fused kernel per chain of elementwise ops), labelled by the part of the stage they belong
to (thinker_step: the prefix pass, each text_out pass, each LM head; flow_step: its pass; the codecs:
the codec). Also the largest single activation (a floor for the workspace) and the codec states (what
the thinker keeps resident per stream).

The transformer runs at the build's activation dtype with the reference attention ("torch": the
matmuls any attention does over a full cache, priced as one fused kernel); the codecs stay fp32, as
every build keeps them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import model_src.backbone as backbone_module
from model_src.config import Preset
from model_src.system import build_system
from unitio.names import TRANSFORMER_STAGES

from .ops import Kernel, Recorder, fuse

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}
ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}  # bytes per weight / cache element of the build
REPLICATE_LAYERS = True  # record decoder layer 0 of each pass and replay it for the others (same kernels)


@dataclass
class StageCost:
    name: str
    flops: float  # per call
    bytes: float  # read + written per call (weights, cache, activations, elementwise traffic)
    weight_bytes: float  # of those, weights
    cache_bytes: float  # of those, the KV cache
    calls_per_unit: int
    largest_activation: float  # bytes
    state_bytes: float = 0.0  # codec state tensors (one set)
    compute: str = "bf16"  # the build's precision, or tf32 for the codecs
    kernels: list[Kernel] = field(default_factory=list)  # what one call launches, in order

    @property
    def launches(self) -> int:
        """Kernel launches per call (outside a graph, each costs a launch)."""
        return sum(k.launches for k in self.kernels)


def _nbytes(x) -> int:
    return x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 0


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
    """The cost of one call of every stage of preset `p` built at `precision` (fp32 | bf16 | fp16 | fp8).
    Counted once per (preset, precision) in a process; the result is shared: do not modify it."""
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r}: expected one of {list(DTYPES)}")
    return _count_stages(p, precision)


def meta_system(p: Preset):
    """build_system(p) on the meta device without running the weight initializers (meta tensors hold no
    values; the initializers' meta kernels are most of the build's time)."""
    names = ("normal_", "zeros_", "ones_", "uniform_", "kaiming_uniform_", "trunc_normal_", "constant_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)
        return build_system(p, device="meta")
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


@functools.lru_cache(maxsize=16)
def _count_stages(p: Preset, precision: str) -> list[StageCost]:
    system = meta_system(p)
    system.model.to(DTYPES[precision])
    system.model.backbone.set_attn_impl("torch")
    scale = ELEMENT[precision] / torch.empty((), dtype=DTYPES[precision]).element_size()
    weights = {id(t) for t in system.parameters()} | {id(t) for t in system.buffers()}
    with torch.no_grad():
        calls = _meta_inputs(system, p, DTYPES[precision])
    costs = []
    for name, (fn, args) in calls.items():
        transformer = name in TRANSFORMER_STAGES
        rec = Recorder(weights)
        rec.part = "embed + glue" if transformer else "codec"
        with _labelled(system.model.backbone, rec, scale, REPLICATE_LAYERS), torch.no_grad(), rec:
            out = fn(*args)
        kernels = fuse(rec.ops, [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)], weights,
                       scale if transformer else 1.0, 1.0)
        for k in kernels:
            k.codec = not transformer
        largest = max((nb for o in rec.ops if hasattr(o, "writes") for _, nb in o.writes), default=0.0)
        state = sum(_nbytes(s) for s in args[1]) if not transformer else 0.0
        costs.append(StageCost(name, sum(k.flops for k in kernels), sum(k.bytes for k in kernels),
                               sum(k.weight_bytes for k in kernels), sum(k.cache_bytes for k in kernels),
                               p.flow_steps if name == "flow_step" else 1, float(largest), float(state),
                               precision if transformer else "tf32", kernels))
    return costs


class _labelled:
    """While counting: label the passes of `run_layers` and the LM head, and make each `attend` call one
    fused attention kernel (cache bytes at `cache_scale` of the meta run's element size)."""

    def __init__(self, bb, rec: Recorder, cache_scale: float, replicate: bool = True) -> None:
        self.bb, self.rec, self.cache_scale, self.handles, self.replicate = bb, rec, cache_scale, [], replicate

    def __enter__(self):
        bb, rec, original_attend, original_run = self.bb, self.rec, backbone_module.attend, self.bb.run_layers
        passes = [0]

        def attend(q, cache_k, cache_v, cache_len, local_k, local_v, *rest, **kw):
            rec.start_attention()
            out = original_attend(q, cache_k, cache_v, cache_len, local_k, local_v, *rest, **kw)
            rec.end_attention(q, cache_k, cache_v, local_k, local_v, out, self.cache_scale)
            return out

        def run_layers(x, cos, sin, ctx):
            passes[0] += 1
            n = x.shape[1]
            before, rec.part = rec.part, f"pass {passes[0]} ({n} token{'' if n == 1 else 's'})"
            layers = bb.layers
            if self.replicate and len(layers) > 1:  # the layers are alike: record one, replay the rest
                template = _FirstLayer(layers[0], rec)
                bb._modules["layers"] = nn.ModuleList([template] + [_Replica(template, rec) for _ in layers[1:]])
            try:
                return original_run(x, cos, sin, ctx)
            finally:
                rec.part = before
                bb._modules["layers"] = layers

        def head_in(module, args):
            rec.lm_head, self._part, rec.part = True, rec.part, "LM head"

        def head_out(module, args, out):
            rec.lm_head, rec.part = False, self._part

        backbone_module.attend, bb.run_layers = attend, run_layers
        self._restore = original_attend
        self.handles = [bb.lm_head.register_forward_pre_hook(head_in), bb.lm_head.register_forward_hook(head_out)]
        return self

    def __exit__(self, *exc) -> None:
        backbone_module.attend = self._restore
        del self.bb.run_layers  # the instance attribute; the class's method is back
        for h in self.handles:
            h.remove()


class _FirstLayer(nn.Module):
    """Runs decoder layer 0 under the recorder and remembers which ops it made, from which tensors."""

    def __init__(self, layer: nn.Module, rec: Recorder) -> None:
        super().__init__()
        self.layer, self.rec = layer, rec

    def forward(self, x, cos, sin, ctx):
        self.start = len(self.rec.ops)
        out = self.layer(x, cos, sin, ctx)
        self.end = len(self.rec.ops)
        self.inputs = [self.rec.root(x)]
        self.out = out
        self.outputs = [self.rec.root(t) for t in out]
        return out


class _Replica(nn.Module):
    """Decoder layer i > 0: the same shapes as layer 0 (its cache slice, its weights), so its kernels are
    layer 0's, replayed on this layer's input; its outputs are fresh tensors of layer 0's shapes."""

    def __init__(self, template: _FirstLayer, rec: Recorder) -> None:
        super().__init__()
        self.template, self.rec = template, rec

    def forward(self, x, cos, sin, ctx):
        t = self.template
        out = tuple(torch.empty_like(o) for o in t.out)
        self.rec.keep.extend(out)
        self.rec.replay(t.start, t.end, t.inputs, t.outputs, [self.rec.root(x)], [self.rec.root(o) for o in out])
        return out
