"""Presets: one frozen config object from which every shape in the project derives.

A unit is 160 ms: 4 video frames at 25 fps and 3,840 audio samples at 24 kHz.
See ../shared/DESIGN.md ("Presets") for what each preset is for.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Every size of the model and of its streaming units. Frozen: derive variants with `replace`."""

    name: str
    # --- time base -------------------------------------------------------------------------------
    sample_rate: int = 24_000
    fps: int = 25
    frames_per_unit: int = 4
    audio_hop: int = 960  # samples per audio latent frame: 25 Hz latents, 4 per unit
    # --- video -----------------------------------------------------------------------------------
    frame_height: int = 32
    frame_width: int = 32
    video_z: int = 16  # latent channels of the (Wan2.1-compatible) video VAE
    video_time_compression: int = 4
    video_spatial_compression: int = 8
    video_in_patch: int = 4  # patch size of user video latents (video_in tokens)
    video_out_patch: int = 2  # patch size of generated video latents (video_out and flow tokens)
    video_vae_dim: int = 8  # base channels of the video VAE (Wan2.1: 96)
    # --- audio -----------------------------------------------------------------------------------
    audio_z: int = 8  # latent channels of the audio VAE
    audio_filters: int = 8  # SEANet base channels (Mimi: 64)
    audio_hidden: int = 32  # SEANet output channels (Mimi: 512)
    audio_ratios: tuple[int, ...] = (8, 6, 5, 4)  # SEANet strides, decoder order; product = audio_hop
    # --- text ------------------------------------------------------------------------------------
    vocab_size: int = 512
    text_in_tokens: int = 2
    text_out_tokens: int = 2
    text_pad_id: int = 0  # text_in id meaning "the user typed nothing in this slot"
    # --- backbone (Qwen3-style) ------------------------------------------------------------------
    n_layers: int = 2
    hidden: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    intermediate: int = 128
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    tie_embeddings: bool = True
    # --- flow matching ---------------------------------------------------------------------------
    flow_steps: int = 4  # Euler steps of the (distilled) solver
    time_embed_dim: int = 64  # sinusoidal features of the flow timestep
    # --- KV cache: a few sink units plus a sliding window of recent units ------------------------
    sink_units: int = 1
    window_units: int = 15

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"preset {self.name!r}: {what}")

        need((self.sample_rate * self.frames_per_unit) % self.fps == 0, "unit must hold a whole number of samples")
        need(math.prod(self.audio_ratios) == self.audio_hop,
             f"audio_ratios {self.audio_ratios} must multiply to audio_hop {self.audio_hop}")
        need(self.samples_per_unit % self.audio_hop == 0,
             f"samples per unit {self.samples_per_unit} must be a multiple of audio_hop {self.audio_hop}")
        need(self.frames_per_unit == self.video_time_compression,
             f"one unit ({self.frames_per_unit} frames) must make exactly one latent frame "
             f"(temporal compression {self.video_time_compression})")
        for side, n in (("frame_height", self.frame_height), ("frame_width", self.frame_width)):
            step = self.video_spatial_compression * self.video_in_patch
            need(n % step == 0, f"{side}={n} must be a multiple of {step} (spatial compression x video_in_patch)")
        need(self.n_heads % self.n_kv_heads == 0, f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        need(self.head_dim % 2 == 0, "head_dim must be even (RoPE)")
        need(0 <= self.text_pad_id < self.vocab_size, "text_pad_id must be a vocabulary id")
        need(self.sink_units >= 0 and self.window_units >= 1, "need window_units >= 1 and sink_units >= 0")

    # --- derived sizes ---------------------------------------------------------------------------
    @property
    def samples_per_unit(self) -> int:
        return self.sample_rate * self.frames_per_unit // self.fps

    @property
    def unit_ms(self) -> float:
        return 1000.0 * self.frames_per_unit / self.fps

    @property
    def audio_frames_per_unit(self) -> int:
        return self.samples_per_unit // self.audio_hop

    @property
    def latent_height(self) -> int:
        return self.frame_height // self.video_spatial_compression

    @property
    def latent_width(self) -> int:
        return self.frame_width // self.video_spatial_compression

    @property
    def video_in_tokens(self) -> int:
        return (self.latent_height // self.video_in_patch) * (self.latent_width // self.video_in_patch)

    @property
    def video_out_tokens(self) -> int:
        return (self.latent_height // self.video_out_patch) * (self.latent_width // self.video_out_patch)

    @property
    def video_in_dim(self) -> int:
        return self.video_z * self.video_in_patch**2

    @property
    def video_out_dim(self) -> int:
        return self.video_z * self.video_out_patch**2

    @property
    def tokens_per_unit(self) -> int:
        """Tokens one unit writes to the KV cache (all six segments)."""
        return (self.text_in_tokens + self.video_in_tokens + 2 * self.audio_frames_per_unit
                + self.video_out_tokens + self.text_out_tokens)

    @property
    def flow_tokens(self) -> int:
        """Queries of the flow block: noisy audio latents then noisy video patches."""
        return self.audio_frames_per_unit + self.video_out_tokens

    @property
    def cache_units(self) -> int:
        return self.sink_units + self.window_units

    @property
    def cache_capacity(self) -> int:
        """Static KV-cache length in tokens."""
        return self.cache_units * self.tokens_per_unit

    def replace(self, **changes) -> "Preset":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Preset":
        fields = json.loads(text)
        fields["audio_ratios"] = tuple(fields["audio_ratios"])
        return cls(**fields)


_QWEN_VOCAB = 151_936
_CODECS = dict(audio_filters=64, audio_hidden=512, video_vae_dim=96)  # Mimi's SEANet and the Wan2.1 VAE

PRESETS: dict[str, Preset] = {
    "tiny": Preset(name="tiny", flow_steps=2),  # its shipped weights are a 2-step distilled student
    # the spoken conversation (training/spoken.py): a codec that voices words (3x tiny's channels, 32
    # latent channels) and a backbone that tells spoken words apart across voices (4 layers of 128),
    # both as large as the 2-core CPU trains in about an hour; tiny's video sizes (its video VAE warm-starts it)
    "tiny-speech": Preset(name="tiny-speech", flow_steps=2, audio_z=32, audio_filters=24, audio_hidden=96,
                          n_layers=4, hidden=128, n_heads=4, n_kv_heads=2, head_dim=32, intermediate=384),
    "small": Preset(  # Qwen3-0.6B dims
        name="small", frame_height=96, frame_width=128, audio_z=32, **_CODECS, vocab_size=_QWEN_VOCAB, text_pad_id=151_643,
        n_layers=28, hidden=1024, n_heads=16, n_kv_heads=8, head_dim=128, intermediate=3072,
        time_embed_dim=256, sink_units=4, window_units=60,
    ),
    "base": Preset(  # Qwen3-1.7B dims
        name="base", frame_height=192, frame_width=256, audio_z=32, **_CODECS, vocab_size=_QWEN_VOCAB, text_pad_id=151_643,
        n_layers=28, hidden=2048, n_heads=16, n_kv_heads=8, head_dim=128, intermediate=6144,
        time_embed_dim=256, sink_units=4, window_units=124,
    ),
    "large": Preset(  # Qwen2.5-7B dims
        name="large", frame_height=192, frame_width=256, audio_z=32, **_CODECS, vocab_size=152_064, text_pad_id=151_643,
        n_layers=28, hidden=3584, n_heads=28, n_kv_heads=4, head_dim=128, intermediate=18_944,
        tie_embeddings=False, time_embed_dim=256, sink_units=4, window_units=124,
    ),
}


def get_preset(name: str) -> Preset:
    """Return the named preset, or raise a ValueError that lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}") from None
