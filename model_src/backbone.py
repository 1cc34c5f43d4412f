"""Qwen3-style decoder (RMSNorm, GQA, RoPE, SwiGLU, q/k-norm), weight-compatible with transformers'
`Qwen3ForCausalLM`: module names match its state dict with the leading "model." removed.

Every layer call is pure: it takes the past keys/values it may attend (the KV cache, and inside a unit
the keys computed earlier in the same unit) and returns the block's new keys/values; it stores nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

from .attention import attend
from .config import Preset
from .rope import apply_rope, rope_cos_sin, rope_tables


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SelfAttention(nn.Module):
    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = p.n_heads, p.n_kv_heads, p.head_dim
        self.q_proj = nn.Linear(p.hidden, p.n_heads * p.head_dim, bias=False)
        self.k_proj = nn.Linear(p.hidden, p.n_kv_heads * p.head_dim, bias=False)
        self.v_proj = nn.Linear(p.hidden, p.n_kv_heads * p.head_dim, bias=False)
        self.o_proj = nn.Linear(p.n_heads * p.head_dim, p.hidden, bias=False)
        self.q_norm = RMSNorm(p.head_dim, p.rms_eps)
        self.k_norm = RMSNorm(p.head_dim, p.rms_eps)
        self.attn_impl = "torch"  # or "sdpa", "triton": see model_src.attention.attend

    def forward(self, x, cos, sin, ctx: "KeyContext"):
        """x [B, L, H]; cos/sin [B, 1, L, D]; ctx: this layer's cache and local keys (see `attend`).

        Returns (out [B, L, H], k_new [B, Hkv, L, D] (RoPE applied), v_new [B, Hkv, L, D]); the block
        attends to the cache, to ctx's local keys and to its own new keys (local_mask covers both).
        """
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, n, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, n, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        local_k, local_v = torch.cat([ctx.local_k, k], dim=2), torch.cat([ctx.local_v, v], dim=2)
        out = attend(q, ctx.cache_k, ctx.cache_v, ctx.cache_len, local_k, local_v, ctx.local_mask, self.attn_impl,
                     ctx.k_scale, ctx.v_scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1)), k, v


class MLP(nn.Module):
    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(p.hidden, p.intermediate, bias=False)
        self.up_proj = nn.Linear(p.hidden, p.intermediate, bias=False)
        self.down_proj = nn.Linear(p.intermediate, p.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.self_attn = SelfAttention(p)
        self.mlp = MLP(p)
        self.input_layernorm = RMSNorm(p.hidden, p.rms_eps)
        self.post_attention_layernorm = RMSNorm(p.hidden, p.rms_eps)

    def forward(self, x, cos, sin, ctx: "KeyContext"):
        """Same arguments as SelfAttention.forward; returns (x [B, L, H], k_new, v_new)."""
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, ctx)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Backbone(nn.Module):
    """Token embedding, decoder layers, final norm and LM head of a Qwen3 model."""

    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(p.vocab_size, p.hidden)
        self.layers = nn.ModuleList(DecoderLayer(p) for _ in range(p.n_layers))
        self.norm = RMSNorm(p.hidden, p.rms_eps)
        self.lm_head = nn.Linear(p.hidden, p.vocab_size, bias=False)
        if p.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        inv_freq, coarse = rope_tables(p.head_dim, p.rope_theta)
        self.register_buffer("rope_inv_freq", inv_freq, persistent=False)
        self.register_buffer("rope_coarse", coarse, persistent=False)
        # [2, n_layers, Hkv] float32 K/V scales of an FP8 E4M3 cache (set_kv_cache_scales), else None
        self.register_buffer("kv_cache_scales", None, persistent=False)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, L] int64 -> (cos, sin) [B, 1, L, D] float32."""
        return rope_cos_sin(positions, self.rope_inv_freq, self.rope_coarse)

    def set_kv_cache_scales(self, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None = None) -> None:
        """Per-layer, per-KV-head FP8 scales ([n_layers, Hkv] each) for an FP8 E4M3 cache; None: no FP8."""
        if k_scale is None:
            self.kv_cache_scales = None
            return
        attn = self.layers[0].self_attn
        want = (len(self.layers), attn.n_kv_heads)
        if tuple(k_scale.shape) != want or tuple(v_scale.shape) != want:
            raise ValueError(f"KV cache scales: expected [n_layers, Hkv] = {list(want)}, got "
                             f"{list(k_scale.shape)} and {list(v_scale.shape)}")
        self.kv_cache_scales = torch.stack([k_scale, v_scale]).float().to(self.embed_tokens.weight.device)

    def set_attn_impl(self, impl: str) -> None:
        """"torch", "sdpa" or "triton" for every layer's attention in the streaming steps."""
        from .attention import ATTN_IMPLS

        if impl not in ATTN_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTN_IMPLS}, got {impl!r}")
        for layer in self.layers:
            layer.self_attn.attn_impl = impl

    def empty_kv(self, batch: int) -> torch.Tensor:
        """Zero-length keys for every layer, [n_layers, B, Hkv, 0, D]: "no cache" / "no local keys"."""
        attn = self.layers[0].self_attn
        return self.embed_tokens.weight.new_zeros(len(self.layers), batch, attn.n_kv_heads, 0, attn.head_dim)

    def run_layers(self, x, cos, sin, ctx: "KeyContext"):
        """Run every layer on a block of tokens.

        x [B, L, H]; ctx holds per-layer stacks [n_layers, B, Hkv, *, D] of cache and local keys.
        Returns (x [B, L, H] before the final norm, k_new [n_layers, B, Hkv, L, D], v_new likewise).
        """
        ks, vs = [], []
        fp8 = ctx.cache_k[0].dtype == torch.float8_e4m3fn
        if fp8 and self.kv_cache_scales is None:
            raise ValueError("an FP8 KV cache needs its scales: Backbone.set_kv_cache_scales(k_scale, v_scale)")
        for i, layer in enumerate(self.layers):
            layer_ctx = ctx.layer(i)
            if fp8:
                layer_ctx = layer_ctx._replace(k_scale=self.kv_cache_scales[0, i], v_scale=self.kv_cache_scales[1, i])
            x, k, v = layer(x, cos, sin, layer_ctx)
            ks.append(k)
            vs.append(v)
        return x, torch.stack(ks), torch.stack(vs)

    def forward_causal(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Plain causal LM: input_ids [B, L] -> logits [B, L, vocab] (positions 0 .. L-1)."""
        b, n = input_ids.shape
        positions = torch.arange(n, device=input_ids.device).expand(b, n)
        cos, sin = self.rope(positions)
        causal = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()[None, None]
        x, _, _ = self.run_layers(self.embed_tokens(input_ids), cos, sin, KeyContext.local_only(self, b, causal))
        return self.lm_head(self.norm(x))


class KeyContext(NamedTuple):
    """What a block of queries may attend besides its own keys, for all layers at once.

    cache_k/v [n_layers, B, Hkv, Cap, D] valid below cache_len [B] (or a tuple of n_layers [B, Hkv, Cap, D]
    tensors: an FP8 cache exported to ONNX, where no indexing op takes FP8); local_k/v [n_layers, B, Hkv, Ll, D]
    (keys of the same unit computed earlier); local_mask bool [B|1, 1, L, Ll + L] over the local keys
    followed by the block's own keys, or None: the block sees all of them. k_scale/v_scale [Hkv]: one
    layer's FP8 cache scales (filled in per layer by `Backbone.run_layers`).
    """

    cache_k: torch.Tensor
    cache_v: torch.Tensor
    cache_len: torch.Tensor
    local_k: torch.Tensor
    local_v: torch.Tensor
    local_mask: torch.Tensor | None = None
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    def layer(self, i: int) -> "KeyContext":
        return KeyContext(self.cache_k[i], self.cache_v[i], self.cache_len, self.local_k[i], self.local_v[i],
                          self.local_mask)

    @classmethod
    def local_only(cls, backbone: "Backbone", batch: int, mask: torch.Tensor) -> "KeyContext":
        """No cache, no earlier keys: the block attends to itself under `mask` [B|1, 1, L, L]."""
        empty = backbone.empty_kv(batch)
        return cls(empty, empty, torch.zeros(batch, dtype=torch.int64, device=mask.device), empty, empty, mask)


def qwen3_state_dict_to_backbone(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a `Qwen3ForCausalLM` state dict onto `Backbone` names (drop "model."; keep lm_head)."""
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        out[name.removeprefix("model.")] = tensor
    return out
