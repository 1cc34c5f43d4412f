"""The six stages of DESIGN.md as modules with plain-tensor inputs and outputs (state and cache included).

    audio_enc     wave [B, S], state...             -> z [B, A, Za], state...
    video_enc     frames [B, 3, 4, H, W], state...  -> z [B, Zv, h, w], state...
    thinker_step  unit inputs, cache, cache_len, unit_index -> text_logits, text_tokens, k_delta, v_delta
    flow_step     noisy latents, t, cache, cache_len, unit_index -> v_audio, v_video
    audio_dec     z [B, A, Za], state...            -> wave [B, S], state...
    video_dec     z [B, Zv, h, w], state...         -> frames [B, 3, 4, H, W], state...

Every shape is fixed by the preset (batch too: one engine per batch size). `StageSpec.example_inputs`
are valid inputs of the right shapes and dtypes; the codec stages' initial states are the real ones
(the video stream's priming frame included) and travel with the engines.

Dtypes follow the system: the transformer stages take their activations (latents, KV cache) in the
model's dtype (bf16/fp16 builds) and the cache in FP8 E4M3 when the backbone has FP8 cache scales;
`t`, lengths and indices keep their types; logits and velocities come out in float32 (the LM head and
the flow update accumulate in fp32). The codecs run in their own dtype (fp32 in every build).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .kv_cache import init_cache
from .system import AVSystem


@dataclass
class StageSpec:
    name: str
    module: nn.Module
    example_inputs: dict[str, torch.Tensor]  # in the module's argument order
    output_names: list[str]
    initial_state: dict[str, torch.Tensor]  # state inputs of a fresh stream (codec stages), else empty
    attention: str | None = None  # the transformer stages' attention: "torch", "sdpa" or "triton"


class CodecStep(nn.Module):
    """`vae.<method>(x, state) -> (y, state)` as forward(x, *state) -> (y, *state). The VAE is a registered
    submodule, so `.to(device)` moves its weights with the stage (a bound method would hide them)."""

    def __init__(self, vae: nn.Module, method: str) -> None:
        super().__init__()
        self.vae, self.method = vae, method
        getattr(vae, method)  # a wrong name fails here, not at export

    @property
    def step(self) -> Callable:
        """The VAE's bound step method."""
        return getattr(self.vae, self.method)

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        y, new_state = self.step(x, state)
        return (y, *new_state)


class ThinkerStep(nn.Module):
    def __init__(self, system: AVSystem) -> None:
        super().__init__()
        self.model = system.model

    def forward(self, text_in, video_in, audio_in, audio_prev, video_prev, cache_k, cache_v, cache_len, unit_index):
        out = self.model.thinker_step(text_in, video_in, audio_in, audio_prev, video_prev, cache_k, cache_v,
                                      cache_len, unit_index)
        return out.text_logits, out.text_tokens, out.k_delta, out.v_delta


class FlowStep(nn.Module):
    def __init__(self, system: AVSystem) -> None:
        super().__init__()
        self.model = system.model

    def forward(self, noisy_audio, noisy_video, t, cache_k, cache_v, cache_len, unit_index):
        return self.model.flow_step(noisy_audio, noisy_video, t, cache_k, cache_v, cache_len, unit_index)


class PerLayerCache(nn.Module):
    """A transformer stage whose cache comes in as one input per layer (cache_k_0 .. cache_v_{L-1}).

    For an FP8 cache in ONNX: no ONNX indexing op (Gather, Slice, Split) takes float8 tensors, so the
    stacked [L, ...] cache cannot be cut into layers inside the graph; per-layer inputs go straight to
    the attention plugin. The runtime binds them to the layers of its stacked cache (views, no copy).
    """

    def __init__(self, stage: nn.Module, names: list[str], n_layers: int) -> None:
        super().__init__()
        self.stage, self.names, self.n_layers = stage, names, n_layers

    def forward(self, *args):
        i, n = self.names.index("cache_k"), self.n_layers
        cache_k, cache_v = tuple(args[i:i + n]), tuple(args[i + n:i + 2 * n])
        return self.stage(*args[:i], cache_k, cache_v, *args[i + 2 * n:])


def per_layer_cache(spec: StageSpec) -> StageSpec:
    """The same stage with cache_k / cache_v split into per-layer inputs cache_k_0 ... (see PerLayerCache)."""
    names = list(spec.example_inputs)
    inputs: dict[str, torch.Tensor] = {}
    for name, x in spec.example_inputs.items():
        if name in ("cache_k", "cache_v"):
            inputs.update({f"{name}_{i}": x[i] for i in range(x.shape[0])})
        else:
            inputs[name] = x
    n_layers = spec.example_inputs["cache_k"].shape[0]
    return StageSpec(spec.name, PerLayerCache(spec.module, names, n_layers), inputs, spec.output_names,
                     spec.initial_state, spec.attention)


def _codec(name: str, vae: nn.Module, method: str, x_name: str, x: torch.Tensor, y_name: str, state) -> StageSpec:
    state_in = {f"state_{i}": s for i, s in enumerate(state)}
    return StageSpec(name, CodecStep(vae, method), {x_name: x, **state_in},
                     [y_name] + [f"new_state_{i}" for i in range(len(state))], dict(state_in))


def cache_dtype(system: AVSystem) -> torch.dtype:
    """The KV cache's dtype: FP8 E4M3 when the backbone has FP8 scales, else the model's dtype."""
    return torch.float8_e4m3fn if system.model.backbone.kv_cache_scales is not None else system.model.dtype


def make_stages(system: AVSystem, batch: int = 1, device: str | torch.device = "cpu") -> list[StageSpec]:
    """All six stages of `system` with example inputs (seeded, valid) for `batch` streams, made on
    `device` (where the system is: a base-sized example cache is gigabytes, made on the GPU in a blink)."""
    p = system.preset
    g = torch.Generator(device).manual_seed(0)
    a, h, w = p.audio_frames_per_unit, p.latent_height, p.latent_width
    av, vv = system.audio_vae, system.video_vae
    act = system.model.dtype  # the transformer stages' activations
    cache = init_cache(p, batch, dtype=cache_dtype(system), device=device)
    k, v = (torch.randn(cache.k.shape, generator=g, device=device).to(cache.k.dtype) for _ in range(2))
    cache_len = torch.full((batch,), 3 * p.tokens_per_unit, dtype=torch.int64, device=device)
    unit_index = torch.full((batch,), 3, dtype=torch.int64, device=device)
    za = torch.randn(batch, a, p.audio_z, generator=g, device=device)
    zv = torch.randn(batch, p.video_z, h, w, generator=g, device=device)
    thinker = {"text_in": torch.randint(0, p.vocab_size, (batch, p.text_in_tokens), generator=g, device=device),
               "video_in": zv.to(act), "audio_in": za.to(act), "audio_prev": za.flip(1).to(act),
               "video_prev": zv.flip(1).to(act), "cache_k": k, "cache_v": v, "cache_len": cache_len,
               "unit_index": unit_index}
    flow = {"noisy_audio": torch.randn(za.shape, generator=g, device=device).to(act),
            "noisy_video": torch.randn(zv.shape, generator=g, device=device).to(act),
            "t": torch.full((batch,), 0.25, device=device), "cache_k": k, "cache_v": v, "cache_len": cache_len,
            "unit_index": unit_index}
    attention = system.model.backbone.layers[0].self_attn.attn_impl
    wave = 0.3 * torch.randn(batch, p.samples_per_unit, generator=g, device=device)
    frames = torch.rand(batch, 3, p.frames_per_unit, p.frame_height, p.frame_width, generator=g, device=device) * 2 - 1
    with torch.no_grad():
        specs = [
            _codec("audio_enc", av, "encode_step", "wave", wave, "z", av.init_encoder_state(batch)),
            _codec("video_enc", vv, "encode_step", "frames", frames, "z", vv.init_encoder_state(batch)),
            StageSpec("thinker_step", ThinkerStep(system), thinker,
                      ["text_logits", "text_tokens", "k_delta", "v_delta"], {}, attention),
            StageSpec("flow_step", FlowStep(system), flow, ["v_audio", "v_video"], {}, attention),
            _codec("audio_dec", av, "decode_step", "z", za, "wave", av.init_decoder_state(batch)),
            _codec("video_dec", vv, "decode_step", "z", zv, "frames", vv.init_decoder_state(batch)),
        ]
    for spec in specs:
        spec.module.eval()
    return specs
