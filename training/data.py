"""The training conversations as latents (stages b and c), and per-sample noise that does not depend on
how a batch is split over processes (so 2 DDP processes compute what 1 process computes)."""
from __future__ import annotations

import numpy as np
import torch

from .codecs import video_encode_stats
from .tasks import TRAIN_SEED_BASE, conversation, heard_labels  # noqa: F401 (TRAIN_SEED_BASE: re-exported)

HELD_OUT_SEED = 100_000  # `streamer eval`'s default first held-out conversation


@torch.no_grad()
def encode_conversations(system, seeds, units: int, batch: int = 8, on_batch=lambda n: None) -> dict[str, torch.Tensor]:
    """Conversations `seeds` through the (frozen) codec encoders -> per-unit latents and targets:
    audio_in [N, U, A, Za], video_in [N, U, Zv, h, w] (the user's), audio_out / video_out (the target
    answer's, same shapes), text [N, U, n_text_out] int64, speaking [N, U] bool, heard [N, U] int64
    (tasks.heard_labels: the word asked, -1 where none is due)."""
    p, av, vv = system.preset, system.audio_vae, system.video_vae
    out: dict[str, list] = {k: [] for k in ("audio_in", "video_in", "audio_out", "video_out", "text", "speaking", "heard")}
    seeds = list(seeds)
    for i in range(0, len(seeds), batch):
        convs = [conversation(p, units, int(s)) for s in seeds[i:i + batch]]
        b = len(convs)
        for side, (wave_of, frames_of) in {"in": (lambda c: c.user_audio, lambda c: c.user_frames),
                                           "out": (lambda c: c.model_audio, lambda c: c.model_frames)}.items():
            wave = torch.from_numpy(np.stack([wave_of(c) for c in convs]))
            za = av.encode(wave, av.init_encoder_state(b))[0]  # [B, U * A, Za]
            out[f"audio_{side}"].append(za.view(b, units, p.audio_frames_per_unit, p.audio_z))
            frames = np.stack([frames_of(c) for c in convs]).transpose(0, 4, 1, 2, 3)
            zv = video_encode_stats(vv, torch.from_numpy(frames.astype(np.float32) / 127.5 - 1.0))[0]
            out[f"video_{side}"].append(zv.permute(0, 2, 1, 3, 4).contiguous())  # [B, U, Zv, h, w]
        out["text"].append(torch.from_numpy(np.stack([c.text for c in convs])))
        out["speaking"].append(torch.from_numpy(np.stack([c.model_speaking for c in convs])))
        out["heard"].append(torch.from_numpy(np.stack([heard_labels(c) for c in convs])))
        on_batch(b)
    return {k: torch.cat(v) for k, v in out.items()}


def batch_indices(seed: int, step: int, n_items: int, batch: int) -> np.ndarray:
    """The global batch of `step`: `batch` item indices (with replacement across steps, not within)."""
    rng = np.random.default_rng([seed, step, 7])
    return rng.choice(n_items, size=batch, replace=batch > n_items)


def sample_randn(seed: int, step: int, indices, shape: tuple[int, ...], stream: int) -> torch.Tensor:
    """N(0, 1) noise [len(indices), *shape], one reproducible draw per (seed, step, global index, stream)."""
    return torch.from_numpy(np.stack([np.random.default_rng([seed, step, int(i), stream]).standard_normal(shape, np.float32)
                                      for i in indices]))


def sample_rand(seed: int, step: int, indices, shape: tuple[int, ...], stream: int) -> torch.Tensor:
    """U(0, 1) draws [len(indices), *shape], as `sample_randn`."""
    return torch.from_numpy(np.stack([np.random.default_rng([seed, step, int(i), stream]).random(shape, np.float32)
                                      for i in indices]))
