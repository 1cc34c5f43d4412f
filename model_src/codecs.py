"""Stand-in causal patch codecs for audio and video, under the streaming contract.

These are the placeholders the foundation issue allows until the causal VAEs land (model_src/ audio
and video VAE issue), which must replace them in `system.build_system`. Each is strictly causal with
no receptive field beyond its own unit, so its state is empty, but it already has the VAE's interface:

    z, state = encode_step(x_unit, state);  x, state = decode_step(z_unit, state);  init_state(batch)
"""
from __future__ import annotations

import torch
from torch import nn

from .config import Preset

State = tuple[torch.Tensor, ...]


class PatchAudioCodec(nn.Module):
    """Each hop of `audio_hop` samples <-> one latent frame of `audio_z` channels (linear maps)."""

    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.hop, self.frames = p.audio_hop, p.audio_frames_per_unit
        self.encoder = nn.Linear(p.audio_hop, p.audio_z)
        self.decoder = nn.Linear(p.audio_z, p.audio_hop)

    def init_state(self, batch: int) -> State:
        return ()

    def encode_step(self, wave: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """wave [B, samples_per_unit] float in [-1, 1] -> latents [B, A, audio_z]."""
        return self.encoder(wave.reshape(wave.shape[0], self.frames, self.hop)), state

    def decode_step(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """latents [B, A, audio_z] -> wave [B, samples_per_unit] in [-1, 1]."""
        return torch.tanh(self.decoder(z)).reshape(z.shape[0], -1), state


class PatchVideoCodec(nn.Module):
    """4 frames x 8x8 pixels <-> one latent pixel of `video_z` channels (a strided 3-D conv and its transpose)."""

    def __init__(self, p: Preset) -> None:
        super().__init__()
        k = (p.video_time_compression, p.video_spatial_compression, p.video_spatial_compression)
        self.encoder = nn.Conv3d(3, p.video_z, kernel_size=k, stride=k)
        self.decoder = nn.ConvTranspose3d(p.video_z, 3, kernel_size=k, stride=k)

    def init_state(self, batch: int) -> State:
        return ()

    def encode_step(self, frames: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """frames [B, 3, frames_per_unit, H, W] in [-1, 1] -> latent [B, video_z, H/8, W/8]."""
        return self.encoder(frames)[:, :, 0], state

    def decode_step(self, z: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """latent [B, video_z, h, w] -> frames [B, 3, frames_per_unit, H, W] in [-1, 1]."""
        return torch.tanh(self.decoder(z[:, :, None])), state
