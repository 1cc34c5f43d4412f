"""PyTorch reference model: every part a pure streaming step (see ../shared/DESIGN.md)."""
from .config import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
