"""Strictly causal audio VAE: a SEANet encoder/decoder weight-compatible with transformers' `MimiModel`
convolutional encoder and decoder (`encoder.*` / `decoder.*`), plus a Gaussian latent head.

24 kHz mono; hop 960 samples (ratios 8*6*5*4), so 25 latent frames per second, 4 per 160 ms unit.
Every conv is causal with zero left padding (Mimi's `pad_mode="constant"`); streaming state is each
conv's last input samples (`context` of them), so a stream that starts from zero state computes exactly
what the offline forward computes on the whole clip.

    z, state = encode_step(wave [B, 3840], state)     z [B, 4, audio_z] (the posterior mean)
    wave, state = decode_step(z [B, 4, audio_z], state)
"""
from __future__ import annotations

import torch
from torch import nn

from .config import Preset
from .conv_state import State, StateIO, check_shape

# Mimi's SEANet settings (transformers' MimiConfig defaults)
KERNEL, LAST_KERNEL, RESIDUAL_KERNEL, DILATION_GROWTH, COMPRESS, RESIDUAL_LAYERS = 7, 3, 3, 2, 2, 1


class CausalConv1d(nn.Module):
    """transformers' `MimiConv1d` (causal, zero left padding), streaming over its last input samples."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride, dilation=dilation)
        self.context = (kernel - 1) * dilation + 1 - stride

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.conv.in_channels, self.context)

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        """x [B, C, L] with L a multiple of the stride -> [B, C', L / stride]."""
        if self.context == 0:
            return self.conv(x)
        full = torch.cat([io.take(self.state_shape(x.shape[0]), x), x], dim=-1)
        io.put(full[..., full.shape[-1] - self.context:])
        return self.conv(full)


class CausalConvTranspose1d(nn.Module):
    """transformers' `MimiConvTranspose1d` (causal: all padding trimmed on the right), streaming over its
    last input frame: outputs of a chunk get the previous frame's overlap, and nothing of the next."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, kernel, stride)
        self.stride = stride
        self.context = -(-(kernel - stride) // stride)  # input frames whose outputs overlap this chunk

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.conv.in_channels, self.context)

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        """x [B, C, L] -> [B, C', L * stride]."""
        full = torch.cat([io.take(self.state_shape(x.shape[0]), x), x], dim=-1)
        io.put(full[..., full.shape[-1] - self.context:])
        start = self.context * self.stride
        return self.conv(full)[..., start:start + x.shape[-1] * self.stride]


class ResnetBlock(nn.Module):
    """transformers' `MimiResnetBlock` without conv shortcut: x + conv1x1(elu(conv_k,d(elu(x))))."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        hidden = dim // COMPRESS
        self.block = nn.ModuleList([nn.ELU(), CausalConv1d(dim, hidden, RESIDUAL_KERNEL, dilation=dilation),
                                    nn.ELU(), CausalConv1d(hidden, dim, 1)])
        self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        h = x
        for layer in self.block:
            h = layer(h, io) if isinstance(layer, CausalConv1d) else layer(h)
        return x + h


def _run(layers: nn.ModuleList, x: torch.Tensor, io: StateIO) -> torch.Tensor:
    for layer in layers:
        x = layer(x, io) if isinstance(layer, (CausalConv1d, CausalConvTranspose1d, ResnetBlock)) else layer(x)
    return x


class SEANetEncoder(nn.Module):
    """Module-for-module `MimiEncoder`: waveform [B, 1, N] -> features [B, hidden, N / hop]."""

    def __init__(self, filters: int, hidden: int, ratios: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [CausalConv1d(1, filters, KERNEL)]
        scale = 1
        for ratio in reversed(ratios):
            dim = scale * filters
            layers += [ResnetBlock(dim, DILATION_GROWTH**j) for j in range(RESIDUAL_LAYERS)]
            layers += [nn.ELU(), CausalConv1d(dim, 2 * dim, kernel=2 * ratio, stride=ratio)]
            scale *= 2
        layers += [nn.ELU(), CausalConv1d(scale * filters, hidden, LAST_KERNEL)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        return _run(self.layers, x, io)


class SEANetDecoder(nn.Module):
    """Module-for-module `MimiDecoder`: features [B, hidden, T] -> waveform [B, 1, T * hop]."""

    def __init__(self, filters: int, hidden: int, ratios: tuple[int, ...]) -> None:
        super().__init__()
        scale = 2 ** len(ratios)
        layers: list[nn.Module] = [CausalConv1d(hidden, scale * filters, KERNEL)]
        for ratio in ratios:
            dim = scale * filters
            layers += [nn.ELU(), CausalConvTranspose1d(dim, dim // 2, kernel=2 * ratio, stride=ratio)]
            layers += [ResnetBlock(dim // 2, DILATION_GROWTH**j) for j in range(RESIDUAL_LAYERS)]
            scale //= 2
        layers += [nn.ELU(), CausalConv1d(filters, 1, LAST_KERNEL)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        return _run(self.layers, x, io)


def _state_shapes(module: nn.Module, batch: int) -> list[tuple[int, ...]]:
    """Shapes of the module's streaming state, in execution order (module order is execution order)."""
    return [m.state_shape(batch) for m in module.modules()
            if isinstance(m, (CausalConv1d, CausalConvTranspose1d)) and m.context > 0]


class AudioVAE(nn.Module):
    """SEANet encoder -> Gaussian latent (mean, log-variance) of `audio_z` channels -> SEANet decoder."""

    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.samples_per_unit, self.frames, self.z = p.samples_per_unit, p.audio_frames_per_unit, p.audio_z
        self.encoder = SEANetEncoder(p.audio_filters, p.audio_hidden, p.audio_ratios)
        self.to_latent = nn.Conv1d(p.audio_hidden, 2 * p.audio_z, 1)
        self.from_latent = nn.Conv1d(p.audio_z, p.audio_hidden, 1)
        self.decoder = SEANetDecoder(p.audio_filters, p.audio_hidden, p.audio_ratios)

    def _zeros(self, shapes: list[tuple[int, ...]]) -> State:
        w = self.to_latent.weight
        return tuple(w.new_zeros(s) for s in shapes)

    def init_encoder_state(self, batch: int) -> State:
        return self._zeros(_state_shapes(self.encoder, batch))

    def init_decoder_state(self, batch: int) -> State:
        return self._zeros(_state_shapes(self.decoder, batch))

    def encode(self, wave: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        """wave [B, N] (N a multiple of the hop) -> (mean, logvar) [B, N / hop, audio_z], new state."""
        io = StateIO(state)
        stats = self.to_latent(self.encoder(wave[:, None].to(self.to_latent.weight.dtype), io))
        mean, logvar = stats.transpose(1, 2).chunk(2, dim=-1)
        return mean, logvar, io.result()

    def decode(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """z [B, T, audio_z] -> wave [B, T * hop], new state."""
        io = StateIO(state)
        wave = self.decoder(self.from_latent(z.transpose(1, 2).to(self.to_latent.weight.dtype)), io)
        return wave[:, 0], io.result()

    def encode_step(self, wave: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One unit: wave [B, samples_per_unit] -> posterior mean [B, 4, audio_z], new state."""
        check_shape("audio_vae.encode_step", wave, (None, self.samples_per_unit), "B samples")
        mean, _, state = self.encode(wave, state)
        return mean, state

    def decode_step(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One unit: z [B, 4, audio_z] -> wave [B, samples_per_unit], new state."""
        check_shape("audio_vae.decode_step", z, (None, self.frames, self.z), "B frames channels")
        return self.decode(z, state)
