"""Token layout of one unit, RoPE positions, and the block-causal mask of the offline forward.

One unit k writes these segments, in this order, to the sequence (and the KV cache):

    text_in | video_in | audio_in | audio_out(k-1) | video_out(k-1) | text_out

Attention rules (the offline mask below and the streaming steps implement the same ones):
- a token of unit k sees every token of units < k (within the cache's sink + window, if one is set);
- inside unit k, every token sees every non-text_out token of unit k;
- text_out is token-causal: text_out[i] sees text_out[j] for j <= i, and no other token of unit k sees
  text_out (it is generated last, one token at a time, from everything before it).

The flow block of unit k (noisy audio then noisy video latents) takes the RoPE positions that the clean
latents will have when they are fed back as audio_out/video_out of unit k + 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Preset

SEGMENTS = ("text_in", "video_in", "audio_in", "audio_out", "video_out", "text_out")
FLOW_SEGMENTS = ("flow_audio", "flow_video")
TYPE_IDS = {name: i for i, name in enumerate(SEGMENTS + FLOW_SEGMENTS)}
N_TYPES = len(TYPE_IDS)


@dataclass(frozen=True)
class UnitLayout:
    """Segment sizes and offsets of one unit (all derived from the preset)."""

    sizes: tuple[int, ...]  # tokens per segment, in SEGMENTS order

    @classmethod
    def from_preset(cls, p: Preset) -> "UnitLayout":
        return cls((p.text_in_tokens, p.video_in_tokens, p.audio_frames_per_unit,
                    p.audio_frames_per_unit, p.video_out_tokens, p.text_out_tokens))

    @property
    def tokens(self) -> int:
        return sum(self.sizes)

    def offset(self, segment: str) -> int:
        i = SEGMENTS.index(segment)
        return sum(self.sizes[:i])

    def size(self, segment: str) -> int:
        return self.sizes[SEGMENTS.index(segment)]

    @property
    def prefix_tokens(self) -> int:
        """Tokens before text_out: computed in one pass by the thinker step."""
        return self.offset("text_out")

    def segment_ids(self) -> torch.Tensor:
        """[T] int64: the segment (type) id of each token of a unit."""
        return torch.tensor([i for i, n in enumerate(self.sizes) for _ in range(n)], dtype=torch.int64)

    def positions(self, unit_index: torch.Tensor) -> torch.Tensor:
        """unit_index [B] int64 -> RoPE positions [B, T] of that unit's tokens."""
        return unit_index[:, None] * self.tokens + torch.arange(self.tokens, device=unit_index.device)

    def flow_positions(self, unit_index: torch.Tensor, flow_tokens: int) -> torch.Tensor:
        """unit_index [B] -> positions [B, flow_tokens]: where y_k sits as audio_out/video_out of unit k+1."""
        start = (unit_index[:, None] + 1) * self.tokens + self.offset("audio_out")
        return start + torch.arange(flow_tokens, device=unit_index.device)


def unit_visible(query_unit: torch.Tensor, key_unit: torch.Tensor,
                 sink_units: int | None = None, window_units: int | None = None) -> torch.Tensor:
    """Whether a key of unit `key_unit` is visible from a query of a later-or-equal unit (broadcasts).

    Without a window every earlier unit is visible; with one, only the `sink_units` first units and the
    `window_units` units just before the query's unit (what the ring-buffer cache holds at that step).
    """
    earlier = key_unit < query_unit
    if window_units is not None:
        kept = (key_unit < (sink_units or 0)) | (key_unit >= query_unit - window_units)
        earlier = earlier & kept
    return earlier | (key_unit == query_unit)


def block_causal_mask(layout: UnitLayout, n_units: int, sink_units: int | None = None,
                      window_units: int | None = None) -> torch.Tensor:
    """Boolean mask [N, N], N = n_units * T; mask[i, j] is True where query i may attend key j."""
    t = layout.tokens
    unit = torch.arange(n_units * t) // t
    seg = layout.segment_ids().repeat(n_units)
    idx = torch.arange(n_units * t)
    q_unit, k_unit = unit[:, None], unit[None, :]
    text_out = TYPE_IDS["text_out"]
    key_is_text = seg[None, :] == text_out
    query_is_text = seg[:, None] == text_out
    same_unit_ok = ~key_is_text | (query_is_text & (idx[None, :] <= idx[:, None]))
    visible = unit_visible(q_unit, k_unit, sink_units, window_units)
    return visible & ((k_unit != q_unit) | same_unit_ok)


def flow_block_mask(layout: UnitLayout, n_units: int, flow_tokens: int, sink_units: int | None = None,
                    window_units: int | None = None) -> torch.Tensor:
    """Boolean mask [U * F, U * T + U * F] of the offline flow blocks (F = flow_tokens per unit) over the
    unit tokens followed by the flow tokens: block k sees every token of units <= k that the streaming
    cache holds while unit k is solved, and all of its own block (no other block).

    The solve of unit k runs after unit k is appended, so with a window the ring holds units
    k - window + 1 .. k (unit k - window was just overwritten): one unit less of the past than the
    thinker step of unit k sees."""
    t = layout.tokens
    q_unit = (torch.arange(n_units * flow_tokens) // flow_tokens)[:, None]
    key_unit = (torch.arange(n_units * t) // t)[None, :]
    window = None if window_units is None else window_units - 1
    cached = unit_visible(q_unit, key_unit, sink_units, window) & (key_unit <= q_unit)
    own = q_unit == (torch.arange(n_units * flow_tokens) // flow_tokens)[None, :]
    return torch.cat([cached, own], dim=1)
