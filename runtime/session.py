"""A streaming session on built engines: the reference session's unit, with numpy and the engines only.

Per unit k (sequential; the pipelined thinker-performer schedule is the runtime issue's):

    audio_enc, video_enc (user input of unit k)  -> latents; codec states carried
    thinker_step                                 -> text tokens, KV delta; delta written to the cache
    flow_step x N (Euler)                        -> clean latents y_k
    audio_dec, video_dec (y_(k-1))               -> output audio and frames of unit k - 1

Imports neither torch nor model_src: the preset's numbers come from the manifest.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from streamer.timing import StageTimer
from streamer.units import (UnitResult, cache_slot, check_audio_unit, check_frames_unit, check_text_unit,
                            frames_to_model, model_to_frames, unit_noise)

from .engines import load_engines, load_initial_state
from .manifest import stage_io


def unit_spec(preset: dict) -> SimpleNamespace:
    """The preset's time/frame/cache numbers (a manifest's preset JSON) with the derived ones."""
    s = SimpleNamespace(**preset)
    s.samples_per_unit = s.sample_rate * s.frames_per_unit // s.fps
    s.unit_ms = 1000.0 * s.frames_per_unit / s.fps
    return s


class EngineSession:
    """Streams one conversation through the engines of `directory` (batch 1)."""

    def __init__(self, directory: str | Path, seed: int = 0, expect_preset: str | None = None,
                 threads: int | None = None) -> None:
        import json

        self.manifest, self.engines = load_engines(directory, expect_preset, threads)
        self.spec = unit_spec(json.loads(self.manifest["preset"]["json"]))
        self.seed, self.unit_index = seed, 0
        self.states = load_initial_state(directory, self.manifest)
        inputs = {t.name: t for t in stage_io(self.manifest, "thinker_step")[0]}
        self.cache_k = np.zeros(inputs["cache_k"].shape, np.dtype(inputs["cache_k"].dtype))
        self.cache_v = np.zeros_like(self.cache_k)
        self.cache_len = np.zeros(inputs["cache_len"].shape, np.int64)
        self.prev_audio = np.zeros(inputs["audio_prev"].shape, np.float32)  # y_(k-1), zeros before unit 0
        self.prev_video = np.zeros(inputs["video_prev"].shape, np.float32)
        self.tokens_per_unit = self.cache_k.shape[3] // (self.spec.sink_units + self.spec.window_units)

    def _codec(self, stage: str, x_name: str, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        out = self.engines[stage].run({x_name: x, **self.states[stage]})
        new_state = {f"state_{i}": out[f"new_state_{i}"] for i in range(len(self.states[stage]))}
        y_name = self.engines[stage].outputs[0].name
        return out[y_name], new_state

    def step(self, audio: np.ndarray, frames: np.ndarray, text_in: np.ndarray | None = None) -> UnitResult:
        """One unit of user input -> the model's text for unit k and the audio/frames of unit k - 1
        (same contract as `model_src.session.ReferenceSession.step`)."""
        s, k = self.spec, self.unit_index
        audio = check_audio_unit(audio, s)
        frames = check_frames_unit(frames, s)
        text = check_text_unit(text_in, s.text_in_tokens, s.vocab_size, s.text_pad_id)
        index = np.array([k], np.int64)
        timer = StageTimer()
        with timer("encode"):
            za, audio_state = self._codec("audio_enc", "wave", audio[None])
            zv, video_state = self._codec("video_enc", "frames", frames_to_model(frames))
        with timer("thinker_step"):
            out = self.engines["thinker_step"].run({
                "text_in": text[None], "video_in": zv, "audio_in": za, "audio_prev": self.prev_audio,
                "video_prev": self.prev_video, "cache_k": self.cache_k, "cache_v": self.cache_v,
                "cache_len": self.cache_len, "unit_index": index})
            t = self.tokens_per_unit
            start = cache_slot(k, s.sink_units, s.window_units) * t
            self.cache_k[..., start:start + t, :] = out["k_delta"]
            self.cache_v[..., start:start + t, :] = out["v_delta"]
            self.cache_len[:] = min(k + 1, s.sink_units + s.window_units) * t
        self.states["audio_enc"], self.states["video_enc"] = audio_state, video_state
        with timer("flow"):
            ya, yv = unit_noise(self.seed, k, self.prev_audio.shape, self.prev_video.shape)
            dt = 1.0 / s.flow_steps
            for i in range(s.flow_steps):
                v = self.engines["flow_step"].run({
                    "noisy_audio": ya, "noisy_video": yv, "t": np.full((1,), i * dt, np.float32),
                    "cache_k": self.cache_k, "cache_v": self.cache_v, "cache_len": self.cache_len,
                    "unit_index": index})
                ya, yv = ya + dt * v["v_audio"], yv + dt * v["v_video"]
        with timer("decode"):
            wave, video = self._decode(self.prev_audio, self.prev_video) if k > 0 else (None, None)
        self.prev_audio, self.prev_video, self.unit_index = ya, yv, k + 1
        return UnitResult(k, out["text_tokens"][0], wave, video, timer.ms)

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """Decode the last unit's latents: (audio [samples_per_unit], frames [frames_per_unit, H, W, 3])."""
        if self.unit_index == 0:
            raise RuntimeError("flush() before any unit was streamed: there is nothing to decode")
        return self._decode(self.prev_audio, self.prev_video)

    def _decode(self, za: np.ndarray, zv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wave, self.states["audio_dec"] = self._codec("audio_dec", "z", za)
        video, self.states["video_dec"] = self._codec("video_dec", "z", zv)
        return wave[0], model_to_frames(video)
