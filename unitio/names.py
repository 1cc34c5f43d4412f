"""Names and constants every layer shares, written once: the six stages, the device path's placements,
the FP8 E4M3 range and the filler frame a stream shows where no frame came. numpy only.

    STAGES              the stages in the manifest's order (DESIGN.md)
    TRANSFORMER_STAGES  the two stages on the backbone (their precision and KV cache follow the build)
    PLACEMENTS          where the device path runs: one-gpu, two-gpu, two-process (`--placement`)
    FP8_E4M3_MAX        the largest finite float8 E4M3 value (scales are amax / FP8_E4M3_MAX)
    MID_GRAY            the uint8 value of the filler frame, held until a stream's first frame arrives
"""
from __future__ import annotations

import numpy as np

STAGES = ("audio_enc", "video_enc", "thinker_step", "flow_step", "audio_dec", "video_dec")
TRANSFORMER_STAGES = ("thinker_step", "flow_step")
PLACEMENTS = ("one-gpu", "two-gpu", "two-process")
FP8_E4M3_MAX = 448.0
MID_GRAY = 128


def filler_frame(spec, *lead: int) -> np.ndarray:
    """Mid-gray uint8 RGB frames [*lead, frame_height, frame_width, 3] for `spec` (a preset or the runtime's
    unit spec: anything with frame_height and frame_width). One frame: `filler_frame(spec)`; a unit's:
    `filler_frame(spec, spec.frames_per_unit)`; B rows of units: `filler_frame(spec, B, spec.frames_per_unit)`."""
    return np.full((*lead, spec.frame_height, spec.frame_width, 3), MID_GRAY, np.uint8)
