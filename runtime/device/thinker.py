"""The thinker on a device: encode u_k, thinker_step + append into the resident cache, decode y_(k-1).

Every tensor is allocated once and every engine bound once (`DeviceEngine.bind`); a unit moves only
its inputs in (audio, frames as uint8, text, unit index) and its outputs out (tokens, waveform, frames
as uint8) through the ledger. Three phases, each one call (a CUDA graph on a GPU):

    encode(parity)   frames uint8 -> [-1, 1]; audio_enc, video_enc (ping-pong states); u_k's latents cast
                     to thinker_step's dtype
    think            y_(k-1) cast to thinker_step's dtype (after `receive`); thinker_step on the cache of
                     units < k -> tokens, delta; append the delta in place
    decode(parity)   y_(k-1) -> audio_dec, video_dec (ping-pong states) -> frames to uint8 [F, H, W, 3]
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from .device import Device, host_view, torch_dtype
from .engines import DeviceEngine
from .ledger import TransferLedger
from .state import DeviceKVCache, PingPong


def _spec_dtypes(engine: DeviceEngine) -> dict[str, torch.dtype]:
    return {t.name: torch_dtype(t.dtype) for t in engine.inputs + engine.outputs}


class DeviceThinker:
    def __init__(self, engines: dict[str, DeviceEngine], initial_state: dict[str, dict[str, np.ndarray]],
                 spec: SimpleNamespace, device: Device, ledger: TransferLedger, cache: DeviceKVCache,
                 stream=None) -> None:
        self.spec, self.device, self.ledger, self.cache, self.stream = spec, device, ledger, cache, stream
        s, dev = spec, device
        f, h, w = s.frames_per_unit, s.frame_height, s.frame_width
        self.rows = b = cache.rows  # sessions in the batch
        think = engines["thinker_step"]
        t_dtypes = _spec_dtypes(think)
        # host staging (page-locked on a GPU) and their device twins
        self.host_in = {"audio": dev.host((b, s.samples_per_unit), torch.float32),
                        "frames": dev.host((b, f, h, w, 3), torch.uint8),
                        "text": dev.host((b, s.text_in_tokens), torch.int64), "unit": dev.host((b,), torch.int64)}
        self.dev_in = {k: dev.empty(v.shape, v.dtype) for k, v in self.host_in.items()}
        self.frames_model = dev.empty((b, 3, f, h, w), torch.float32)
        self.codecs = {stage: PingPong(dev, initial_state[stage])
                       for stage in ("audio_enc", "video_enc", "audio_dec", "video_dec")}
        enc_out = {stage: engines[stage].allocate_outputs() for stage in ("audio_enc", "video_enc")}
        self.za, self.zv = enc_out["audio_enc"]["z"], enc_out["video_enc"]["z"]
        # y_(k-1): the thinker's own copy (fp32, as the solver makes it), read by thinker_step and decode
        self.prev_audio = dev.empty(s.audio_latent_shape, torch.float32)
        self.prev_video = dev.empty(s.video_latent_shape, torch.float32)
        # thinker_step takes latents in its own dtype (bf16 builds): u_k's are cast as encode makes them,
        # y_(k-1)'s inside the think phase, after `receive` delivered it (cast in encode, they would be y_(k-2))
        casts: dict[str, list[Callable[[], None]]] = {"encode": [], "think": []}
        feed = {"audio_in": self.za, "video_in": self.zv, "audio_prev": self.prev_audio, "video_prev": self.prev_video}
        for name, src in list(feed.items()):
            if src.dtype != t_dtypes[name]:
                feed[name] = dst = dev.empty(src.shape, t_dtypes[name])
                casts["think" if name.endswith("_prev") else "encode"].append(lambda dst=dst, src=src: dst.copy_(src))
        self.think_out = think.allocate_outputs()
        self._thinker_step = think.bind({"text_in": self.dev_in["text"], **feed,
                                         **cache.feeds([t.name for t in think.inputs]),
                                         "unit_index": self.dev_in["unit"]}, self.think_out)
        self._encode_calls = [self._bind_encode(engines, enc_out, parity, casts["encode"]) for parity in (0, 1)]
        self.prev_casts = casts["think"]  # y_(k-1) into thinker_step's dtype, run first in the think phase
        self._think_call = self._think_phase  # its CUDA graph once captured
        dec_out = {stage: engines[stage].allocate_outputs() for stage in ("audio_dec", "video_dec")}
        self.wave_out, self.video_out = dec_out["audio_dec"]["wave"], dec_out["video_dec"]["frames"]
        self.frames_out = dev.empty((b, f, h, w, 3), torch.uint8)
        self._decode_calls = [self._bind_decode(engines, dec_out, parity) for parity in (0, 1)]
        self.host_out = {"tokens": dev.host(self.think_out["text_tokens"].shape, torch.int64),
                         "wave": dev.host(self.wave_out.shape, torch.float32),
                         "frames": dev.host((b, f, h, w, 3), torch.uint8)}
        self.capturable = all(engines[n].can_capture for n in engines if n != "flow_step")

    def _bind_encode(self, engines, outs, parity: int, casts) -> Callable[[], None]:
        calls = []
        for stage, x_name, x in (("audio_enc", "wave", self.dev_in["audio"]), ("video_enc", "frames", self.frames_model)):
            states, new_states = self.codecs[stage].binding(parity)
            calls.append(engines[stage].bind({x_name: x, **states}, {**outs[stage], **new_states}))
        u8, model = self.dev_in["frames"], self.frames_model

        def call() -> None:
            # uint8 [B, F, H, W, 3] -> float32 [B, 3, F, H, W] in [-1, 1], as unitio.units.frames_to_model
            torch.sub(torch.div(u8.permute(0, 4, 1, 2, 3).float(), 127.5), 1.0, out=model)
            for c in calls + casts:
                c()
        return call

    def _bind_decode(self, engines, outs, parity: int) -> Callable[[], None]:
        calls = []
        for stage, z in (("audio_dec", self.prev_audio), ("video_dec", self.prev_video)):
            states, new_states = self.codecs[stage].binding(parity)
            calls.append(engines[stage].bind({"z": z, **states}, {**outs[stage], **new_states}))
        video, frames = self.video_out, self.frames_out

        def call() -> None:
            for c in calls:
                c()
            # float [B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3], as unitio.units.model_to_frames
            x = torch.clamp(torch.round((video + 1.0) * 127.5), 0, 255).to(torch.uint8)
            frames.copy_(x.permute(0, 2, 3, 4, 1))
        return call

    def _think_phase(self) -> None:
        """y_(k-1) cast for thinker_step, thinker_step on the cache of units < k, its delta appended into
        the slot of unit k (on the device: the unit index is a device tensor, so a graph may hold it)."""
        for cast in self.prev_casts:
            cast()
        self._thinker_step()
        self.cache.append(self.dev_in["unit"], self.think_out["k_delta"], self.think_out["v_delta"])

    def capture(self) -> None:
        """Replace each phase by its CUDA graph (warm-up runs included; call `reset` after)."""
        d, s = self.device, self.stream
        self._encode_calls = [d.capture(c, s) for c in self._encode_calls]
        self._think_call = d.capture(self._think_call, s)
        self._decode_calls = [d.capture(c, s) for c in self._decode_calls]

    def reset(self) -> None:
        """A fresh stream in every row: codec states, y_(-1) = 0 (the cache is reset by its owner)."""
        for codec in self.codecs.values():
            codec.reset()
        self.prev_audio.zero_()
        self.prev_video.zero_()

    def reset_row(self, row: int, decoders_only: bool = False) -> None:
        """Row `row` a fresh stream (a session joins it): its codec states (or the decoders' only) and its
        y_(-1) = 0. Device copies of one row, outside the unit path's graphs."""
        for stage, codec in self.codecs.items():
            if not decoders_only or stage.endswith("_dec"):
                codec.reset_row(row)
        if not decoders_only:
            self.prev_audio[row].zero_()
            self.prev_video[row].zero_()

    # --- one unit, phase by phase (on the thinker's stream; the caller orders them) -------------------
    def encode(self, audio: np.ndarray, frames: np.ndarray, text: np.ndarray, units) -> None:
        """Host inputs of every row in (audio [B, S] float32, frames [B, F, H, W, 3] uint8, text [B, n],
        units [B]: each row's unit index), encoders run (the new state goes to the other set until `commit`)."""
        host = self.host_in
        host_view(host["audio"])[...] = audio
        host_view(host["frames"])[...] = frames
        host_view(host["text"])[...] = text
        host_view(host["unit"])[...] = units
        for name in ("audio", "frames", "text", "unit"):
            self.ledger.h2d(self.dev_in[name], host[name])
        self._encode_calls[self.codecs["audio_enc"].parity]()

    def commit(self) -> None:
        self.codecs["audio_enc"].flip()
        self.codecs["video_enc"].flip()

    def receive(self, y_audio: torch.Tensor, y_video: torch.Tensor) -> None:
        """y_(k-1) from the performer into the thinker's own buffers (a device copy)."""
        self.ledger.d2d(self.prev_audio, y_audio)
        self.ledger.d2d(self.prev_video, y_video)

    def think(self) -> None:
        """thinker_step of the encoded unit on the cache, then its delta appended (one graph)."""
        self._think_call()
        self.ledger.count("d2d", self.cache.append_nbytes)  # the append

    def tokens_out(self) -> None:
        self.ledger.d2h(self.host_out["tokens"], self.think_out["text_tokens"])

    def decode(self, advance: bool = True) -> None:
        """y_(k-1) -> waveform and uint8 frames, copied to the host buffers (read them after a sync).
        `advance=False` leaves every row's decoder state as it was (a row's last unit, decoded as it leaves)."""
        parity = self.codecs["audio_dec"].parity
        self._decode_calls[parity]()
        if advance:
            self.codecs["audio_dec"].flip()
            self.codecs["video_dec"].flip()
        self.ledger.d2h(self.host_out["wave"], self.wave_out)
        self.ledger.d2h(self.host_out["frames"], self.frames_out)
