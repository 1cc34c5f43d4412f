"""Strictly causal 3-D conv video VAE, weight-compatible with diffusers' `AutoencoderKLWan` (Wan2.1):
same module names and shapes, so its state dict loads as is. 4x temporal, 8x spatial, 16 channels.

How the stream starts (the same in the streaming and the offline path): like Wan, the very first frame
is encoded alone and every later group of 4 frames gives one latent. Our stream's first frame is a
*priming frame*, mid-gray (0 in [-1, 1]), encoded by `init_encoder_state`; its latent is not a unit.
Unit k's 4 frames then give latent k. The decoder is primed the same way with the priming frame's
latent (its single output frame is dropped), after which each latent gives 4 frames.

State: each causal conv keeps its last 2 input frames (zeros at the start, which is exactly Wan's
zero padding), each temporal downsampler its last input frame, each temporal upsampler its last 2
(zeros after the first chunk, as Wan's "Rep" marker does).

    z, state = encode_step(frames [B, 3, 4, H, W], state)      z [B, 16, H/8, W/8] (posterior mean)
    frames, state = decode_step(z [B, 16, H/8, W/8], state)    frames in [-1, 1]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Preset
from .conv_state import State, StateIO, check_shape

DIM_MULT, RES_BLOCKS, TEMPORAL_DOWN = (1, 2, 4, 4), 2, (False, True, True)  # Wan2.1


class CausalConv3d(nn.Conv3d):
    """diffusers' `WanCausalConv3d`: zero padding in space, causal in time over the last 2 frames."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=padding)
        self.time_context = 2 * self.padding[0]
        self.spatial_pad = (self.padding[2], self.padding[2], self.padding[1], self.padding[1])
        self.padding = (0, 0, 0)

    def forward(self, x: torch.Tensor, io: StateIO | None = None) -> torch.Tensor:
        if self.time_context:
            b, c, _, h, w = x.shape
            x = torch.cat([io.take((b, c, self.time_context, h, w), x), x], dim=2)
            io.put(x[:, :, x.shape[2] - self.time_context:])
        return super().forward(F.pad(x, self.spatial_pad))


class RMSNorm(nn.Module):
    """diffusers' `WanRMS_norm` (channel-first, no bias): normalize over channels, times sqrt(C) * gamma."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """diffusers' `WanResidualBlock`."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cin, images=False)
        self.conv1 = CausalConv3d(cin, cout, 3, padding=1)
        self.norm2 = RMSNorm(cout, images=False)
        self.conv2 = CausalConv3d(cout, cout, 3, padding=1)
        self.conv_shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        h = self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), io)
        return self.conv2(F.silu(self.norm2(x)), io) + h


class AttentionBlock(nn.Module):
    """diffusers' `WanAttentionBlock`: single-head self-attention within each frame (no time mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, io: StateIO | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        q, k, v = self.to_qkv(y).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        return x + self.proj(y).view(b, t, c, h, w).permute(0, 2, 1, 3, 4)


class Resample(nn.Module):
    """diffusers' `WanResample`: spatial 2x down/up per frame, and for the *3d modes 2x in time."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def _per_frame(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.mode == "upsample3d":
            if io.first:  # Wan's first chunk is not upsampled in time; the next one pads with zeros
                io.put(x.new_zeros(b, c, 2, h, w))
            else:
                x = self.time_conv(x, io).reshape(b, 2, c, t, h, w)
                x = torch.stack((x[:, 0], x[:, 1]), 3).reshape(b, c, 2 * t, h, w)
        x = self._per_frame(x)
        if self.mode == "downsample3d":
            prev = None if io.first else io.take((b, c, 1, *x.shape[3:]), x)
            io.put(x[:, :, -1:])
            if prev is not None:  # Wan's first chunk is not downsampled in time
                x = self.time_conv(torch.cat([prev, x], dim=2))
        return x


class MidBlock(nn.Module):
    """diffusers' `WanMidBlock`: residual, attention, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(dim)])
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        x = self.resnets[0](x, io)
        return self.resnets[1](self.attentions[0](x), io)


class UpBlock(nn.Module):
    """diffusers' `WanUpBlock`."""

    def __init__(self, cin: int, cout: int, mode: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(cin if i == 0 else cout, cout) for i in range(RES_BLOCKS + 1)])
        self.upsamplers = nn.ModuleList([Resample(cout, mode)]) if mode else None

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        for block in self.resnets:
            x = block(x, io)
        return self.upsamplers[0](x, io) if self.upsamplers is not None else x


class Encoder3d(nn.Module):
    """diffusers' `WanEncoder3d` (Wan2.1: no attention scales, not residual)."""

    def __init__(self, dim: int, z2: int) -> None:
        super().__init__()
        dims = [dim * u for u in (1, *DIM_MULT)]
        self.conv_in = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(RES_BLOCKS):
                blocks.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(DIM_MULT) - 1:
                blocks.append(Resample(cout, "downsample3d" if TEMPORAL_DOWN[i] else "downsample2d"))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1], images=False)
        self.conv_out = CausalConv3d(dims[-1], z2, 3, padding=1)

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        x = self.conv_in(x, io)
        for block in self.down_blocks:
            x = block(x, io)
        return self.conv_out(F.silu(self.norm_out(self.mid_block(x, io))), io)


class Decoder3d(nn.Module):
    """diffusers' `WanDecoder3d` (Wan2.1)."""

    def __init__(self, dim: int, z: int) -> None:
        super().__init__()
        dims = [dim * u for u in (DIM_MULT[-1], *DIM_MULT[::-1])]
        temporal_up = TEMPORAL_DOWN[::-1]
        self.conv_in = CausalConv3d(z, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            up = i != len(DIM_MULT) - 1
            mode = ("upsample3d" if temporal_up[i] else "upsample2d") if up else None
            blocks.append(UpBlock(cin // 2 if i > 0 else cin, cout, mode))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1], images=False)
        self.conv_out = CausalConv3d(dims[-1], 3, 3, padding=1)

    def forward(self, x: torch.Tensor, io: StateIO) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x, io), io)
        for block in self.up_blocks:
            x = block(x, io)
        return self.conv_out(F.silu(self.norm_out(x)), io)


class VideoVAE(nn.Module):
    """`AutoencoderKLWan`'s encoder, quant_conv, post_quant_conv and decoder, streaming per unit."""

    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.z, self.height, self.width, self.frames = p.video_z, p.frame_height, p.frame_width, p.frames_per_unit
        self.latent_hw = (p.latent_height, p.latent_width)
        self.encoder = Encoder3d(p.video_vae_dim, 2 * p.video_z)
        self.quant_conv = CausalConv3d(2 * p.video_z, 2 * p.video_z, 1)
        self.post_quant_conv = CausalConv3d(p.video_z, p.video_z, 1)
        self.decoder = Decoder3d(p.video_vae_dim, p.video_z)

    # --- chunks: the first one (1 frame / 1 latent) and the rest ------------------------------------
    def encode_chunk(self, frames: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """frames [B, 3, T, H, W] in [-1, 1] -> posterior mean [B, 16, T', h, w], new state.

        state None: the stream's first chunk (T = 1, T' = 1); otherwise T = 4n gives T' = n.
        """
        io = StateIO(state, first=state is None)
        stats = self.quant_conv(self.encoder(frames.to(self.quant_conv.weight.dtype), io))
        return stats[:, : self.z], io.result()

    def decode_chunk(self, z: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """z [B, 16, T', h, w] -> frames [B, 3, T, H, W] clamped to [-1, 1], new state.

        state None: the stream's first latent (T' = 1 gives 1 frame); otherwise T = 4 T'.
        """
        io = StateIO(state, first=state is None)
        frames = self.decoder(self.post_quant_conv(z.to(self.quant_conv.weight.dtype)), io)
        return frames.clamp(-1.0, 1.0), io.result()

    # --- the stream: primed with a mid-gray frame, then one latent per unit ------------------------
    def priming_latent(self, batch: int) -> torch.Tensor:
        """The latent of the stream's priming frame (mid-gray): [B, 16, 1, h, w]."""
        gray = self.quant_conv.weight.new_zeros(batch, 3, 1, self.height, self.width)
        return self.encode_chunk(gray, None)[0]

    def init_encoder_state(self, batch: int) -> State:
        gray = self.quant_conv.weight.new_zeros(batch, 3, 1, self.height, self.width)
        return self.encode_chunk(gray, None)[1]

    def init_decoder_state(self, batch: int) -> State:
        return self.decode_chunk(self.priming_latent(batch), None)[1]

    def encode_step(self, frames: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One unit: frames [B, 3, 4, H, W] in [-1, 1] -> latent [B, 16, h, w], new state."""
        check_shape("video_vae.encode_step", frames, (None, 3, self.frames, self.height, self.width),
                    "B rgb frames height width")
        z, state = self.encode_chunk(frames, state)
        return z[:, :, 0], state

    def decode_step(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One unit: latent [B, 16, h, w] -> frames [B, 3, 4, H, W] in [-1, 1], new state."""
        check_shape("video_vae.decode_step", z, (None, self.z, *self.latent_hw), "B channels height width")
        return self.decode_chunk(z[:, :, None], state)
