"""The numbers a runtime session needs, read from the manifest (no model_src): the unit's time and
frame sizes, and the shapes of the tensors the thinker and performer exchange."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from unitio.jsonsafe import loads_bounded
from unitio.names import STAGES

from .manifest import ManifestError, stage_io

THINKER_STAGES = tuple(s for s in STAGES if s != "flow_step")  # the thinker's engines (the performer: flow_step)


def unit_spec(manifest: dict) -> SimpleNamespace:
    """The manifest's preset (time/frame/cache numbers), plus samples_per_unit, unit_ms and the
    exchanged shapes: cache [L, 1, Hkv, capacity, D], delta [L, 1, Hkv, tokens_per_unit, D], latents."""
    s = SimpleNamespace(**loads_bounded(manifest["preset"]["json"], 65_536, 4))  # checked again: a dict here
    s.samples_per_unit = s.sample_rate * s.frames_per_unit // s.fps
    s.unit_ms = 1000.0 * s.frames_per_unit / s.fps
    thinker_in = {t.name: t for t in stage_io(manifest, "thinker_step")[0]}
    thinker_out = {t.name: t for t in stage_io(manifest, "thinker_step")[1]}
    cache = thinker_in.get("cache_k") or thinker_in.get("cache_k_0")  # stacked, or one input per layer (FP8)
    if (cache is None or not {"audio_prev", "video_prev"} <= set(thinker_in) or "k_delta" not in thinker_out
            or len(thinker_out["k_delta"].shape) < 4):
        raise ManifestError(f"manifest of preset {s.name!r}: thinker_step: expected inputs cache_k, audio_prev, "
                            f"video_prev and a k_delta output of 4+ dimensions, got inputs {sorted(thinker_in)[:8]} "
                            f"and outputs {sorted(thinker_out)[:8]}")
    s.cache_shape = cache.shape if "cache_k" in thinker_in else (thinker_out["k_delta"].shape[0], *cache.shape)
    s.cache_dtype = cache.dtype
    s.delta_shape = thinker_out["k_delta"].shape
    s.delta_dtype = thinker_out["k_delta"].dtype
    s.audio_latent_shape = thinker_in["audio_prev"].shape
    s.video_latent_shape = thinker_in["video_prev"].shape
    s.unit_tokens = s.delta_shape[3]
    return s


ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int64": 8, "uint8": 1}


def delta_nbytes(spec: SimpleNamespace) -> int:
    """Bytes of one unit's KV delta (keys + values) as the cache stores it."""
    return 2 * int(np.prod(spec.delta_shape)) * ITEMSIZE[spec.cache_dtype]
