"""Conditional flow matching: timestep features, the Euler solver and the training loss.

Convention (rectified flow): x_t = (1 - t) * noise + t * data, t in [0, 1]; the model predicts the
velocity d x_t / d t = data - noise; the solver integrates from t = 0 (noise) to t = 1 (clean latents).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """t [B] in [0, 1] -> sinusoidal features [B, dim] (t scaled by 1000, as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def euler_solve(velocity: Velocity, noise_audio: torch.Tensor, noise_video: torch.Tensor,
                n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate velocity(x_audio, x_video, t [B]) from t=0 to t=1 in n_steps equal Euler steps.

    noise_audio [B, A, Za], noise_video [B, Zv, h, w] -> clean latents of the same shapes.
    """
    xa, xv = noise_audio, noise_video
    dt = 1.0 / n_steps
    for i in range(n_steps):
        t = torch.full((xa.shape[0],), i * dt, dtype=torch.float32, device=xa.device)
        va, vv = velocity(xa, xv, t)
        xa, xv = xa + dt * va, xv + dt * vv
    return xa, xv


def flow_matching_loss(velocity: Velocity, clean_audio: torch.Tensor, clean_video: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared error between predicted and true velocity at a random t per batch item.

    The audio and video terms are averaged separately and summed, so the few audio latents weigh as
    much as the many video latents. Returns a scalar.
    """
    b = clean_audio.shape[0]
    t = torch.rand(b, generator=generator, device=clean_audio.device)
    na = torch.randn(clean_audio.shape, generator=generator, device=clean_audio.device)
    nv = torch.randn(clean_video.shape, generator=generator, device=clean_video.device)
    ta, tv = t.view(b, 1, 1), t.view(b, 1, 1, 1)
    xa, xv = (1 - ta) * na + ta * clean_audio, (1 - tv) * nv + tv * clean_video
    va, vv = velocity(xa, xv, t)
    return F.mse_loss(va, clean_audio - na) + F.mse_loss(vv, clean_video - nv)
