"""Patchify video latents into tokens and back."""
from __future__ import annotations

import torch


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """x [B, C, H, W] -> tokens [B, (H/p) * (W/p), C * p * p], patches in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """tokens [B, (H/p) * (W/p), C * p * p] -> x [B, C, H, W]; the inverse of `patchify`."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // patch, width // patch, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, height, width)
