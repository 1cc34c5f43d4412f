"""The reference streaming session: one conversation, unit by unit, in eager PyTorch.

Per unit k (DESIGN.md, "Runtime", run sequentially here):

    encode user audio/frames of unit k           -> audio_in, video_in latents
    thinker_step(unit k, cache)                  -> text_out tokens, KV delta; append delta to the cache
    flow solve (N Euler steps of flow_step)      -> clean latents y_k
    decode y_(k-1)                               -> the output audio and frames of unit k - 1

so the output runs one unit behind the input; `flush()` decodes the last unit. Input is checked before
anything runs, so a bad unit raises `InputError` and leaves the session exactly as it was.

Audio and video go through the causal VAEs (model_src/audio_vae.py, video_vae.py); the video stream
starts from the VAE's mid-gray priming frame (see video_vae.py).
"""
from __future__ import annotations

import numpy as np
import torch

from unitio.timing import StageTimer
from unitio.units import (UnitResult, check_audio_unit, check_frames_unit, check_text_unit, frames_to_model,
                            model_to_frames, unit_noise)

from .flow import euler_solve
from .kv_cache import append_unit, init_cache
from .system import AVSystem


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [1, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(frames_to_model(frames))


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float [1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    return model_to_frames(video.float().numpy())


class ReferenceSession:
    """Streams one conversation through an `AVSystem`; all state is explicit tensors held here."""

    def __init__(self, system: AVSystem, seed: int = 0) -> None:
        self.system, self.p, self.seed = system, system.preset, seed
        p, scales = self.p, system.model.backbone.kv_cache_scales
        self.cache = init_cache(p, batch=1, dtype=torch.float8_e4m3fn if scales is not None else system.model.dtype)
        self.audio_enc_state = system.audio_vae.init_encoder_state(1)
        self.video_enc_state = system.video_vae.init_encoder_state(1)  # primed with a mid-gray frame
        self.audio_dec_state = system.audio_vae.init_decoder_state(1)
        self.video_dec_state = system.video_vae.init_decoder_state(1)
        self.prev_audio = torch.zeros(1, p.audio_frames_per_unit, p.audio_z)  # y_(k-1), zeros before unit 0
        self.prev_video = torch.zeros(1, p.video_z, p.latent_height, p.latent_width)
        self.unit_index = 0

    @torch.no_grad()
    def step(self, audio: np.ndarray, frames: np.ndarray, text_in: np.ndarray | None = None) -> UnitResult:
        """One unit of user input -> the model's text for unit k and the audio/frames of unit k - 1.

        audio [samples_per_unit] float32 mono; frames [frames_per_unit, H, W, 3] uint8 RGB;
        text_in [n_text_in] token ids, or None for no user text.
        """
        p, model, k = self.p, self.system.model, self.unit_index
        audio = check_audio_unit(audio, p)
        frames = check_frames_unit(frames, p)
        text = check_text_unit(text_in, p.text_in_tokens, p.vocab_size, p.text_pad_id)
        timer = StageTimer()
        with timer("encode"):
            za, audio_enc_state = self.system.audio_vae.encode_step(torch.from_numpy(audio)[None],
                                                                    self.audio_enc_state)
            zv, video_enc_state = self.system.video_vae.encode_step(frames_to_tensor(frames), self.video_enc_state)
        index = torch.tensor([k])
        with timer("thinker_step"):
            out = model.thinker_step(torch.from_numpy(text)[None], zv, za, self.prev_audio, self.prev_video,
                                     *self.cache, index)
            append_unit(p, self.cache, out.k_delta, out.v_delta, k, model.backbone.kv_cache_scales)
        self.audio_enc_state, self.video_enc_state = audio_enc_state, video_enc_state
        with timer("flow"):
            na, nv = unit_noise(self.seed, k, tuple(self.prev_audio.shape), tuple(self.prev_video.shape))
            ya, yv = euler_solve(lambda xa, xv, t: model.flow_step(xa, xv, t, *self.cache, index),
                                 torch.from_numpy(na), torch.from_numpy(nv), p.flow_steps)
        with timer("decode"):
            wave, video = self._decode(self.prev_audio, self.prev_video) if k > 0 else (None, None)
        self.prev_audio, self.prev_video, self.unit_index = ya, yv, k + 1
        return UnitResult(k, out.text_tokens[0].numpy(), wave, video, timer.ms)

    @torch.no_grad()
    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """Decode the last unit's latents: (audio [samples_per_unit], frames [frames_per_unit, H, W, 3])."""
        if self.unit_index == 0:
            raise RuntimeError("flush() before any unit was streamed: there is nothing to decode")
        return self._decode(self.prev_audio, self.prev_video)

    def _decode(self, za: torch.Tensor, zv: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        wave, self.audio_dec_state = self.system.audio_vae.decode_step(za, self.audio_dec_state)
        video, self.video_dec_state = self.system.video_vae.decode_step(zv, self.video_dec_state)
        return wave[0].float().numpy(), tensor_to_frames(video)

