"""The whole reference system: the Transformer plus the audio and video VAEs, under one preset."""
from __future__ import annotations

import torch
from torch import nn

from .audio_vae import AudioVAE
from .config import Preset
from .model import AVModel
from .video_vae import VideoVAE


class AVSystem(nn.Module):
    """Holds `model` (AVModel), `audio_vae` and `video_vae`; its state dict is the weights file."""

    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.preset = p
        self.model = AVModel(p)
        self.audio_vae = AudioVAE(p)
        self.video_vae = VideoVAE(p)


def build_system(p: Preset, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> AVSystem:
    """A system with seeded random weights (`device="meta"` builds shapes only, for any preset)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            system = AVSystem(p)
    return system.to(dtype).eval()
