"""PyTorch reference model: every part a pure streaming step (see ../shared/DESIGN.md), and its six stages
as modules with plain-tensor inputs and outputs (stages.py), what export/ and calibration/ build on."""
from .config import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
