"""Qwen3-style decoder (RMSNorm, GQA, RoPE, SwiGLU, q/k-norm), weight-compatible with transformers'
`Qwen3ForCausalLM`: module names match its state dict with the leading "model." removed.

Every layer call is pure: it takes the past keys/values it may attend (the KV cache, and inside a unit
the keys computed earlier in the same unit) and returns the block's new keys/values; it stores nothing.
"""
from __future__ import annotations

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

    def forward(self, x, cos, sin, past_k, past_v, mask):
        """x [B, L, H]; cos/sin [B, 1, L, D]; past_k/v [B, Hkv, P, D]; mask [B|1, 1, L, P + L].

        Returns (out [B, L, H], k_new [B, Hkv, L, D] (RoPE applied), v_new [B, Hkv, L, D]).
        """
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, n, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, n, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(q, torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2), mask)
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

    def forward(self, x, cos, sin, past_k, past_v, mask):
        """Same arguments as SelfAttention.forward; returns (x [B, L, H], k_new, v_new)."""
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, past_k, past_v, mask)
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

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, L] int64 -> (cos, sin) [B, 1, L, D] float32."""
        return rope_cos_sin(positions, self.rope_inv_freq, self.rope_coarse)

    def empty_past(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer an empty (k, v) pair [B, Hkv, 0, D]: for a forward with no cache."""
        attn = self.layers[0].self_attn
        w = self.embed_tokens.weight
        empty = w.new_zeros(batch, attn.n_kv_heads, 0, attn.head_dim)
        return [(empty, empty)] * len(self.layers)

    def run_layers(self, x, cos, sin, past, mask):
        """Run every layer on a block of tokens.

        x [B, L, H]; past: per layer a (k, v) pair [B, Hkv, P, D] (P may be 0); mask [B|1, 1, L, P + L].
        Returns (x [B, L, H] before the final norm, k_new [n_layers, B, Hkv, L, D], v_new likewise).
        """
        ks, vs = [], []
        for layer, (pk, pv) in zip(self.layers, past):
            x, k, v = layer(x, cos, sin, pk, pv, mask)
            ks.append(k)
            vs.append(v)
        return x, torch.stack(ks), torch.stack(vs)

    def forward_causal(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Plain causal LM: input_ids [B, L] -> logits [B, L, vocab] (positions 0 .. L-1)."""
        b, n = input_ids.shape
        positions = torch.arange(n, device=input_ids.device).expand(b, n)
        cos, sin = self.rope(positions)
        mask = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()[None, None]
        x, _, _ = self.run_layers(self.embed_tokens(input_ids), cos, sin, self.empty_past(b), mask)
        return self.lm_head(self.norm(x))


def qwen3_state_dict_to_backbone(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a `Qwen3ForCausalLM` state dict onto `Backbone` names (drop "model."; keep lm_head)."""
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        out[name.removeprefix("model.")] = tensor
    return out
