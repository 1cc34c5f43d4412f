"""Bounds on every number a file may declare, checked before anything is allocated from it.

A weights file's or a manifest's preset JSON, and a manifest's tensor shapes, are data from disk: each
field must have its type and lie within these bounds (far beyond the `large` preset, far below what
would exhaust a machine) before a model, cache or buffer is sized from it. numpy-free, stdlib only.
"""
from __future__ import annotations

import math

# field -> (lowest, highest) for the integer fields of a preset
PRESET_INTS: dict[str, tuple[int, int]] = {
    "sample_rate": (1000, 384_000), "fps": (1, 240), "frames_per_unit": (1, 64), "audio_hop": (1, 96_000),
    "frame_height": (8, 4096), "frame_width": (8, 4096), "video_z": (1, 256), "video_time_compression": (1, 64),
    "video_spatial_compression": (1, 64), "video_in_patch": (1, 64), "video_out_patch": (1, 64),
    "video_vae_dim": (1, 1024), "audio_z": (1, 1024), "audio_filters": (1, 1024), "audio_hidden": (1, 8192),
    "vocab_size": (2, 1 << 20), "text_in_tokens": (0, 64), "text_out_tokens": (1, 64), "text_pad_id": (0, 1 << 20),
    "n_layers": (1, 256), "hidden": (8, 32_768), "n_heads": (1, 256), "n_kv_heads": (1, 256), "head_dim": (2, 1024),
    "intermediate": (1, 131_072), "flow_steps": (1, 1000), "time_embed_dim": (2, 8192), "sink_units": (0, 1024),
    "window_units": (1, 65_536),
}
PRESET_FLOATS: dict[str, tuple[float, float]] = {"rope_theta": (1.0, 1e12), "rms_eps": (1e-12, 1.0)}
AUDIO_RATIOS = (1, 8, 1, 64)  # 1..8 strides, each 1..64
MAX_TOKENS_PER_UNIT = 1 << 17  # tokens one unit writes to the cache
MAX_CACHE_TOKENS = 1 << 22  # static KV-cache capacity
MAX_TENSOR_ELEMENTS = 1 << 33  # any one tensor a manifest declares (8 G elements)
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool", "float8_e4m3fn")


def preset_problem(fields: object) -> str | None:
    """What is wrong with a preset's JSON fields (a dict), or None: every known field present with its
    type and within bounds, no unknown field, and the derived cache sizes bounded."""
    if not isinstance(fields, dict):
        return f"expected a JSON object of preset fields, got {type(fields).__name__}"
    known = {"name", "tie_embeddings", "audio_ratios", *PRESET_INTS, *PRESET_FLOATS}
    unknown, missing = sorted(set(fields) - known), sorted(known - set(fields))
    if unknown or missing:
        return f"expected exactly the preset fields, got unknown {unknown[:5]} and missing {missing[:5]}"
    if not isinstance(fields["name"], str) or not 1 <= len(fields["name"]) <= 64:
        return f"expected a name of 1 to 64 characters, got {fields['name']!r:.80}"
    if not isinstance(fields["tie_embeddings"], bool):
        return f"tie_embeddings: expected true or false, got {fields['tie_embeddings']!r:.40}"
    for name, (lo, hi) in PRESET_INTS.items():
        v = fields[name]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return f"{name}: expected an integer in [{lo}, {hi}], got {v!r:.40}"
    for name, (lo, hi) in PRESET_FLOATS.items():
        v = fields[name]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
            return f"{name}: expected a number in [{lo:g}, {hi:g}], got {v!r:.40}"
    ratios, (nlo, nhi, lo, hi) = fields["audio_ratios"], AUDIO_RATIOS
    if (not isinstance(ratios, list) or not nlo <= len(ratios) <= nhi
            or not all(isinstance(r, int) and not isinstance(r, bool) and lo <= r <= hi for r in ratios)):
        return f"audio_ratios: expected {nlo} to {nhi} integers in [{lo}, {hi}], got {ratios!r:.60}"
    return _derived_problem(fields)


def _derived_problem(f: dict) -> str | None:
    """Bounds on the sizes a preset implies (tokens per unit, cache capacity), not only on its fields."""
    h, w, down = f["frame_height"], f["frame_width"], f["video_spatial_compression"]
    video_tokens = (h // down // max(f["video_out_patch"], 1)) * (w // down // max(f["video_out_patch"], 1))
    video_tokens += (h // down // max(f["video_in_patch"], 1)) * (w // down // max(f["video_in_patch"], 1))
    audio_frames = f["sample_rate"] * f["frames_per_unit"] // f["fps"] // max(f["audio_hop"], 1)
    tokens = f["text_in_tokens"] + f["text_out_tokens"] + video_tokens + 2 * audio_frames
    if tokens > MAX_TOKENS_PER_UNIT:
        return f"expected at most {MAX_TOKENS_PER_UNIT} tokens per unit, these sizes make {tokens}"
    capacity = (f["sink_units"] + f["window_units"]) * tokens
    if capacity > MAX_CACHE_TOKENS:
        return f"expected a KV cache of at most {MAX_CACHE_TOKENS} tokens, these sizes make {capacity}"
    return None


def shape_problem(shape: object, dtype: object) -> str | None:
    """What is wrong with a declared tensor shape and dtype name, or None."""
    if dtype not in DTYPES:
        return f"expected a dtype in {list(DTYPES)}, got {dtype!r:.40}"
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_TENSOR_ELEMENTS for d in shape)):
        return f"expected a shape of at most 8 non-negative integers, got {shape!r:.80}"
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        return f"expected at most {MAX_TENSOR_ELEMENTS} elements, shape {shape} has {math.prod(shape)}"
    return None
