"""Bytes one unit moves, by direction, from the preset alone: the transfer ledger's formula
(runtime/device/ledger.py counts the same copies as they happen; tests/test_device_runtime.py holds them equal).

Device path, per unit:
    h2d   the user's audio (float32) and frames (uint8), text ids, the thinker's and the performer's unit
          index, the solver's seed noise (the latents' size, float32)
    d2h   text tokens, waveform (float32), frames (uint8)
    d2d   on the device: the delta appended to the cache (twice with two caches) and y_k to the thinker
    peer  between two GPUs (two-gpu): the delta and y_k, over NVLink (or PCIe peer copies)
Host path (before the device path: numpy feeds to GPU engines), per unit: the whole KV cache to the
GPU for thinker_step and each flow step, every codec state both ways, frames as float32 both ways.
"""
from __future__ import annotations

import math

from model_src.config import Preset

ACT = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 2}  # the engines' activation (and delta) bytes
CACHE = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def _sizes(p: Preset, precision: str) -> dict[str, int]:
    frames = p.frames_per_unit * p.frame_height * p.frame_width * 3
    latents = p.audio_frames_per_unit * p.audio_z + p.video_z * p.latent_height * p.latent_width
    delta_elems = 2 * p.n_layers * p.n_kv_heads * p.tokens_per_unit * p.head_dim  # keys + values
    return {"audio": 4 * p.samples_per_unit, "frames": frames, "text_in": 8 * p.text_in_tokens,
            "tokens": 8 * p.text_out_tokens, "y": 4 * latents, "index": 8,
            "delta": delta_elems * ACT[precision], "append": delta_elems * CACHE[precision],
            "cache": 2 * p.n_layers * p.n_kv_heads * p.cache_capacity * p.head_dim * CACHE[precision]}


def unit_traffic(p: Preset, placement: str, precision: str = "bf16", peer: bool = True) -> dict[str, int]:
    """{"h2d", "d2h", "d2d", "peer"} bytes per unit on the device path in `placement`."""
    s = _sizes(p, precision)
    h2d = s["audio"] + s["frames"] + s["text_in"] + 2 * s["index"] + s["y"]  # + the seed noise (y's size)
    d2h = s["tokens"] + s["audio"] + s["frames"]
    if placement == "one-gpu":
        return {"h2d": h2d, "d2h": d2h, "d2d": s["append"] + s["y"], "peer": 0}
    if placement == "two-gpu":
        crossing = s["delta"] + s["y"]
        if peer:
            return {"h2d": h2d, "d2h": d2h, "d2d": 2 * s["append"] + s["y"], "peer": crossing}
        return {"h2d": h2d + crossing, "d2h": d2h + crossing, "d2d": 2 * s["append"] + s["y"], "peer": 0}
    if placement == "two-process":  # same GPU: the IPC slots are device memory
        return {"h2d": h2d, "d2h": d2h, "d2d": 2 * s["append"] + s["delta"] + 2 * s["y"], "peer": 0}
    raise ValueError(f"placement {placement!r}: expected one-gpu, two-gpu or two-process")


def host_path_traffic(p: Preset, precision: str = "bf16") -> dict[str, int]:
    """{"h2d", "d2h"} bytes per unit of the host path on a GPU (what the device path replaced)."""
    from .count import meta_system

    s = _sizes(p, precision)
    system = meta_system(p)
    av, vv = system.audio_vae, system.video_vae
    states = sum(math.prod(t.shape) * 4 for init in (av.init_encoder_state, vv.init_encoder_state,
                                                     av.init_decoder_state, vv.init_decoder_state) for t in init(1))
    frames_f32 = 4 * s["frames"]
    h2d = (1 + p.flow_steps) * s["cache"] + states + s["audio"] + frames_f32 + (2 + 2 * p.flow_steps) * s["y"]
    d2h = states + s["tokens"] + s["delta"] + p.flow_steps * s["y"] + s["audio"] + frames_f32
    return {"h2d": h2d, "d2h": d2h}
