"""The audio-visual model: token embeddings, the two streaming steps and the offline forward.

    thinker_step(unit inputs, cache) -> text logits/tokens, KV delta of unit k   (thinker)
    flow_step(noisy latents, t, cache) -> velocity                               (performer, N times)
    forward_offline(whole clip) -> hidden states and text logits, block-causal mask (training, tests)

Both steps are pure: the cache comes in as tensors and nothing is stored; the caller appends the
delta with `kv_cache.append_unit`. Shapes use B batch, T tokens per unit, P prefix tokens (all but
text_out), A audio latent frames per unit, Za/Zv audio/video latent channels, h/w latent height/width.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .backbone import Backbone, KeyContext
from .config import Preset
from .flow import timestep_features
from .layout import N_TYPES, TYPE_IDS, UnitLayout, block_causal_mask, flow_block_mask
from .patches import patchify, unpatchify


class ThinkerOut(NamedTuple):
    text_logits: torch.Tensor  # [B, n_text_out, vocab] float32
    text_tokens: torch.Tensor  # [B, n_text_out] int64
    k_delta: torch.Tensor  # [n_layers, B, Hkv, T, D]
    v_delta: torch.Tensor  # [n_layers, B, Hkv, T, D]
    hidden: torch.Tensor  # [B, T, hidden], after the final norm


class FlowHead(nn.Module):
    """Small velocity head: Linear -> SiLU -> Linear."""

    def __init__(self, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.silu(self.fc1(x)))


class AVModel(nn.Module):
    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.preset = p
        self.layout = UnitLayout.from_preset(p)
        self.backbone = Backbone(p)
        self.type_embed = nn.Embedding(N_TYPES, p.hidden)
        self.video_in_proj = nn.Linear(p.video_in_dim, p.hidden)
        self.audio_in_proj = nn.Linear(p.audio_z, p.hidden)
        self.audio_out_proj = nn.Linear(p.audio_z, p.hidden)  # clean y_(k-1) and noisy flow audio
        self.video_out_proj = nn.Linear(p.video_out_dim, p.hidden)  # clean y_(k-1) and noisy flow video
        self.time_mlp = nn.Sequential(nn.Linear(p.time_embed_dim, p.hidden), nn.SiLU(), nn.Linear(p.hidden, p.hidden))
        self.audio_head = FlowHead(p.hidden, p.audio_z)
        self.video_head = FlowHead(p.hidden, p.video_out_dim)
        self.register_buffer("segment_ids", self.layout.segment_ids(), persistent=False)
        self.apply(_init_weights)

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embed_tokens.weight.dtype

    # --- embeddings --------------------------------------------------------------------------------
    def embed_prefix(self, text_in, video_in, audio_in, audio_prev, video_prev) -> torch.Tensor:
        """The unit's tokens before text_out -> [B, P, hidden].

        text_in [B, n_text_in] int64; video_in, video_prev [B, Zv, h, w]; audio_in, audio_prev [B, A, Za].
        """
        p, dt = self.preset, self.dtype
        x = torch.cat([
            self.backbone.embed_tokens(text_in),
            self.video_in_proj(patchify(video_in.to(dt), p.video_in_patch)),
            self.audio_in_proj(audio_in.to(dt)),
            self.audio_out_proj(audio_prev.to(dt)),
            self.video_out_proj(patchify(video_prev.to(dt), p.video_out_patch)),
        ], dim=1)
        return x + self.type_embed(self.segment_ids[: self.layout.prefix_tokens])

    def embed_text_out(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, n] int64 -> [B, n, hidden]."""
        return self.backbone.embed_tokens(tokens) + self.type_embed.weight[TYPE_IDS["text_out"]]

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.lm_head(hidden).float()

    # --- streaming steps ---------------------------------------------------------------------------
    def thinker_step(self, text_in, video_in, audio_in, audio_prev, video_prev, cache_k, cache_v, cache_len,
                     unit_index, text_out=None) -> ThinkerOut:
        """One unit through the Transformer, then greedy decoding of its text_out tokens.

        Inputs as in `embed_prefix`; cache_k/v [n_layers, B, Hkv, capacity, D]; cache_len [B] int64;
        unit_index [B] int64 (the unit's absolute index, for RoPE). `text_out` [B, n_text_out] forces the
        text tokens (teacher forcing) instead of taking the argmax.
        """
        bb, lay = self.backbone, self.layout
        b, n_prefix = text_in.shape[0], lay.prefix_tokens
        cos, sin = bb.rope(lay.positions(unit_index))
        no_local = bb.empty_kv(b)
        x = self.embed_prefix(text_in, video_in, audio_in, audio_prev, video_prev)
        ctx = KeyContext(cache_k, cache_v, cache_len, no_local, no_local)  # the prefix sees all of itself
        x, k, v = bb.run_layers(x, cos[:, :, :n_prefix], sin[:, :, :n_prefix], ctx)
        hidden, ks, vs = [bb.norm(x)], [k], [v]
        logits, tokens = [self.text_logits(hidden[0][:, -1])], []
        for i in range(self.preset.text_out_tokens):
            tok = text_out[:, i] if text_out is not None else logits[-1].argmax(-1)
            tokens.append(tok)
            # text_out[i] sees the cache, the prefix, text_out[0..i-1] and itself
            ctx = KeyContext(cache_k, cache_v, cache_len, torch.cat(ks, dim=3), torch.cat(vs, dim=3))
            pos = slice(n_prefix + i, n_prefix + i + 1)
            xi, k, v = bb.run_layers(self.embed_text_out(tok[:, None]), cos[:, :, pos], sin[:, :, pos], ctx)
            hidden.append(bb.norm(xi))
            ks.append(k)
            vs.append(v)
            if i + 1 < self.preset.text_out_tokens:
                logits.append(self.text_logits(hidden[-1][:, -1]))
        return ThinkerOut(torch.stack(logits, dim=1), torch.stack(tokens, dim=1),
                          torch.cat(ks, dim=3), torch.cat(vs, dim=3), torch.cat(hidden, dim=1))

    def flow_step(self, noisy_audio, noisy_video, t, cache_k, cache_v, cache_len, unit_index):
        """Velocity of the flow block of unit k, attending to the cache (units <= k) and to itself.

        noisy_audio [B, A, Za]; noisy_video [B, Zv, h, w]; t [B] in [0, 1]; cache as in `thinker_step`
        (already holding unit k). Returns (v_audio [B, A, Za], v_video [B, Zv, h, w]), float32.
        """
        p, bb, lay = self.preset, self.backbone, self.layout
        b, n, dt = noisy_audio.shape[0], p.flow_tokens, self.dtype
        x = torch.cat([
            self.audio_out_proj(noisy_audio.to(dt)) + self.type_embed.weight[TYPE_IDS["flow_audio"]],
            self.video_out_proj(patchify(noisy_video.to(dt), p.video_out_patch))
            + self.type_embed.weight[TYPE_IDS["flow_video"]],
        ], dim=1)
        x = x + self.time_mlp(timestep_features(t, p.time_embed_dim).to(dt))[:, None]
        cos, sin = bb.rope(lay.flow_positions(unit_index, n))
        no_local = bb.empty_kv(b)
        ctx = KeyContext(cache_k, cache_v, cache_len, no_local, no_local)  # the block sees all of itself
        x, _, _ = bb.run_layers(x, cos, sin, ctx)
        h = bb.norm(x)
        a = p.audio_frames_per_unit
        v_video = unpatchify(self.video_head(h[:, a:]), p.video_out_patch, p.video_z, p.latent_height, p.latent_width)
        return self.audio_head(h[:, :a]).float(), v_video.float()

    # --- offline (whole clip, teacher-forced) ------------------------------------------------------
    def forward_offline(self, text_in, video_in, audio_in, audio_prev, video_prev, text_out,
                        sink_units: int | None = None, window_units: int | None = None):
        """All U units of a clip in one pass with the block-causal mask.

        Per-unit inputs gain a unit axis after batch: text_in [B, U, n_text_in], video_in [B, U, Zv, h, w],
        ..., text_out [B, U, n_text_out]. With sink_units/window_units the mask keeps only what the ring
        cache would hold. Returns (hidden [B, U, T, hidden] after the final norm,
        text_logits [B, U, n_text_out, vocab]).
        """
        hidden, logits, _, _ = self.units_offline(text_in, video_in, audio_in, audio_prev, video_prev, text_out,
                                                  sink_units, window_units)
        return hidden, logits

    def units_offline(self, text_in, video_in, audio_in, audio_prev, video_prev, text_out,
                      sink_units: int | None = None, window_units: int | None = None):
        """`forward_offline`, also returning every layer's keys/values of the U * T unit tokens
        ([n_layers, B, Hkv, U * T, D] each, RoPE applied): what the flow blocks attend to (`flow_offline`)."""
        bb, lay = self.backbone, self.layout
        b, u = text_in.shape[:2]
        units = [torch.cat([self.embed_prefix(text_in[:, j], video_in[:, j], audio_in[:, j], audio_prev[:, j],
                                              video_prev[:, j]), self.embed_text_out(text_out[:, j])], dim=1)
                 for j in range(u)]
        x = torch.cat(units, dim=1)
        positions = torch.arange(u * lay.tokens, device=x.device).expand(b, -1)
        cos, sin = bb.rope(positions)
        mask = block_causal_mask(lay, u, sink_units, window_units).to(x.device)[None, None]
        x, ks, vs = bb.run_layers(x, cos, sin, KeyContext.local_only(bb, b, mask))
        hidden = bb.norm(x).view(b, u, lay.tokens, -1)
        n_text, first = self.preset.text_out_tokens, lay.prefix_tokens - 1
        return hidden, self.text_logits(hidden[:, :, first:first + n_text]), ks, vs

    def flow_offline(self, noisy_audio, noisy_video, t, unit_k, unit_v,
                     sink_units: int | None = None, window_units: int | None = None):
        """The flow blocks of all U units in one pass: block k attends to the unit tokens the streaming
        cache holds when unit k is solved (units <= k, within sink + window: see
        `layout.flow_block_mask`) and to itself, exactly as U separate `flow_step` calls would.

        noisy_audio [B, U, A, Za]; noisy_video [B, U, Zv, h, w]; t [B, U] (each block its own time);
        unit_k/unit_v from `units_offline`. Returns (v_audio [B, U, A, Za], v_video [B, U, Zv, h, w]), float32.
        """
        p, bb, lay = self.preset, self.backbone, self.layout
        b, u, a = noisy_audio.shape[:3]
        n, dt = p.flow_tokens, self.dtype
        video = patchify(noisy_video.flatten(0, 1).to(dt), p.video_out_patch).view(b, u, -1, p.video_out_dim)
        x = torch.cat([self.audio_out_proj(noisy_audio.to(dt)) + self.type_embed.weight[TYPE_IDS["flow_audio"]],
                       self.video_out_proj(video) + self.type_embed.weight[TYPE_IDS["flow_video"]]], dim=2)
        x = x + self.time_mlp(timestep_features(t.reshape(-1), p.time_embed_dim).to(dt)).view(b, u, 1, -1)
        index = torch.arange(u, device=x.device)
        cos, sin = bb.rope(lay.flow_positions(index, n).reshape(1, -1).expand(b, -1))
        mask = flow_block_mask(lay, u, n, sink_units, window_units).to(x.device)[None, None]
        ctx = KeyContext(*(bb.empty_kv(b),) * 2, torch.zeros(b, dtype=torch.int64, device=x.device), unit_k, unit_v,
                         mask)
        x, _, _ = bb.run_layers(x.reshape(b, u * n, -1), cos, sin, ctx)
        h = bb.norm(x).view(b * u, n, -1)
        v_video = unpatchify(self.video_head(h[:, a:]), p.video_out_patch, p.video_z, p.latent_height, p.latent_width)
        return (self.audio_head(h[:, :a]).float().view(b, u, a, -1),
                v_video.float().view(b, u, *v_video.shape[1:]))


def _init_weights(module: nn.Module) -> None:
    """Qwen-style init: N(0, 0.02) weights, zero biases (norm weights stay 1)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def parameter_count(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(t.numel() for t in model.parameters())
