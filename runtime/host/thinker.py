"""The thinker's stages on engines: encode the user's unit, run thinker_step, decode latents.
Codec states are carried here; `encode` returns the new encoder states without keeping them, so a
unit that fails later leaves the session's state as it was (`commit` keeps them)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from unitio.units import frames_to_model, model_to_frames

from ..engine import Engine, check_finite
from .kv_cache import KVBuffers

States = dict[str, np.ndarray]


class Thinker:
    def __init__(self, engines: dict[str, Engine], initial_state: dict[str, States], spec: SimpleNamespace) -> None:
        self.engines, self.states, self.spec = engines, dict(initial_state), spec  # the caller's dict stays as given

    def _codec(self, stage: str, x_name: str, x: np.ndarray, unit: int) -> tuple[np.ndarray, States]:
        state = self.states[stage]
        out = self.engines[stage].run({x_name: x, **state})
        y_name = self.engines[stage].outputs[0].name
        check_finite(stage, unit, {y_name: out[y_name]})
        new_state = {f"state_{i}": out[f"new_state_{i}"] for i in range(len(state))}
        return out[y_name], new_state

    def encode(self, audio: np.ndarray, frames: np.ndarray, unit: int = -1
               ) -> tuple[np.ndarray, np.ndarray, dict[str, States]]:
        """audio [samples_per_unit] float32, frames [F, H, W, 3] uint8 -> (audio latents [1, C, Ta],
        video latents [1, C, Tv, h, w], the encoders' next states: pass them to `commit`). A NaN/Inf
        output raises StageOutputError naming the stage (and `unit`)."""
        za, audio_state = self._codec("audio_enc", "wave", audio[None], unit)
        zv, video_state = self._codec("video_enc", "frames", frames_to_model(frames), unit)
        return za, zv, {"audio_enc": audio_state, "video_enc": video_state}

    def commit(self, states: dict[str, States]) -> None:
        self.states.update(states)

    def think(self, unit_index: int, text: np.ndarray, za: np.ndarray, zv: np.ndarray, prev_audio: np.ndarray,
              prev_video: np.ndarray, cache: KVBuffers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """thinker_step of unit k on the cache of units < k -> (text tokens [n_text_out] int64,
        k_delta, v_delta [L, 1, Hkv, tokens_per_unit, D]); the caller appends the delta."""
        out = self.engines["thinker_step"].run({
            "text_in": text[None], "video_in": zv, "audio_in": za, "audio_prev": prev_audio,
            "video_prev": prev_video, **cache.feeds(), "unit_index": np.array([unit_index], np.int64)})
        check_finite("thinker_step", unit_index, {"text_logits": out["text_logits"]})
        return out["text_tokens"][0], out["k_delta"], out["v_delta"]

    def decode(self, ya: np.ndarray, yv: np.ndarray, unit: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Clean latents of one unit -> (audio [samples_per_unit] float32, frames [F, H, W, 3] uint8)."""
        wave, self.states["audio_dec"] = self._codec("audio_dec", "z", ya, unit)
        video, self.states["video_dec"] = self._codec("video_dec", "z", yv, unit)
        return wave[0], model_to_frames(video)
