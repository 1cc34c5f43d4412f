"""Stage a: the causal audio and video VAEs, reconstruction + KL, on clips of the synthetic conversations.

Both codecs run offline on whole clips from a fresh stream state (zeros for the audio VAE, the mid-gray
priming frame for the video VAE), which is exactly what streaming them unit by unit computes (the
streaming tests hold that), so what is trained here is what streams. The loss:

    audio: 10 MSE(wave) + 0.1 log-STFT L1 per resolution (256, 1024) + beta * KL
           [+ semantic x MSE(linear(latent mean), log-mel of the latent frame's own samples)]
    video: MSE(frames, unclamped decoder output) + beta * KL

After training, `standardize_latents` rescales each latent channel to unit spread inside the VAE's own
1x1 convs (to_latent/from_latent, quant_conv/post_quant_conv): the flow model then generates latents
on the scale of its N(0, 1) noise, and the streaming graph is unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model_src.conv_state import StateIO

from .tasks import conversation, task_of

BETA = 1e-4  # KL weight
STFT_SIZES = (256, 1024)


def codec_clip(spec, seed: int, clip_units: int, user: bool, crop_seed, conv_units: int = 16, context: int = 0):
    """One clip of `context + clip_units` units cut from conversation `seed`: the user's side, or the
    model's (the answers the decoders must draw and voice; three of four clips' first loss unit is an
    answer unit). Audio and video are the same side and units: (audio [N] float32, frames [3, T, H, W] in
    [-1, 1])."""
    s, f = spec.samples_per_unit, spec.frames_per_unit
    c = conversation(spec, conv_units, int(seed))
    rng = np.random.default_rng(crop_seed)
    starts = np.arange(conv_units - clip_units - context + 1)
    answering = starts[c.model_speaking[starts + context]]
    asking = starts[c.user_speaking[starts + context]]  # the spoken task: the encoder must hear the words
    if user and task_of(spec) == "speech" and len(asking) and rng.random() < 0.75:
        k = int(rng.choice(asking))
    else:
        k = int(rng.choice(answering if (not user and len(answering) and rng.random() < 0.75) else starts))
    clip_units += context
    audio, frames = (c.user_audio, c.user_frames) if user else (c.model_audio, c.model_frames)
    clip = frames[k * f:(k + clip_units) * f].transpose(3, 0, 1, 2).astype(np.float32) / 127.5 - 1.0
    return audio[k * s:(k + clip_units) * s], clip


def codec_clips(spec, seeds, clip_units: int, rng: np.random.Generator, conv_units: int = 16, user_every: int | None = None):
    """Clips of `seeds` (every `user_every`-th the user's side, default `user_clip_every(spec)`): (audio
    [B, N] float32, frames [B, 3, T, H, W])."""
    user_every = user_every or user_clip_every(spec)
    made = [codec_clip(spec, s, clip_units, i % user_every == user_every - 1, int(rng.integers(2**31)), conv_units)
            for i, s in enumerate(seeds)]
    return torch.from_numpy(np.stack([a for a, _ in made])), torch.from_numpy(np.stack([f for _, f in made]))


def user_clip_every(spec) -> int:
    """Every n-th codec clip is the user's side: a quarter for tones (the encoder tells 3 pitches apart),
    a third for speech (it must keep what tells spoken words apart across many voices; measured: at a
    half the decoder learned the model's own words more slowly)."""
    return 3 if task_of(spec) == "speech" else 4


@torch.no_grad()
def start_posteriors_narrow(system, logvar: float = -6.0) -> None:
    """Start both VAEs' posterior log-variances at `logvar` (std 0.05): at a fresh init the sampled latent
    is otherwise mostly noise and the decoders learn only the mean image for hundreds of steps."""
    av, vv = system.audio_vae, system.video_vae
    av.to_latent.bias[av.to_latent.weight.shape[0] // 2:] = logvar
    vv.quant_conv.bias[vv.z:] = logvar


def kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def stft_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = x.new_zeros(())
    for n in STFT_SIZES:
        win = torch.hann_window(n, device=x.device)
        sx = torch.stft(x, n, n // 4, window=win, return_complex=True).abs()
        sy = torch.stft(y, n, n // 4, window=win, return_complex=True).abs()
        loss = loss + (torch.log(sx + 1e-3) - torch.log(sy + 1e-3)).abs().mean() * 0.1
    return loss


SEMANTIC_WEIGHT = 1.0  # the speech preset's weight of it (measured on 400-step probes: 1 beats 0.1; tiny's tones need none)
MEL_BANDS = 40  # the semantic term's log-mel bands (60-7,600 Hz, training/recognizer.py's scale)


def mel_targets(wave: torch.Tensor, frame: int) -> torch.Tensor:
    """The semantic term's targets: wave [B, T * frame] -> [B, T, MEL_BANDS + 1], per latent frame the
    log10 mel spectrum of that frame's own samples (Hann window, causal: nothing after the frame), as its
    shape (each frame's mean over bands removed: loudness and channel gain drop out) and that mean."""
    from .recognizer import mel_filterbank

    n_fft = 1 << (frame - 1).bit_length()
    bank = torch.from_numpy(mel_filterbank(n_fft, MEL_BANDS)).to(wave.dtype)
    frames = wave.unflatten(1, (-1, frame)) * torch.hann_window(frame, dtype=wave.dtype)
    power = torch.fft.rfft(frames, n_fft).abs().square()
    logmel = torch.log10(power @ bank.T + 1e-7)
    level = logmel.mean(-1, keepdim=True)
    return torch.cat([logmel - level, level], -1)


def audio_vae_loss(vae, wave: torch.Tensor, eps: torch.Tensor, context: int = 0,
                   spectral: bool = True, semantic_head: torch.nn.Module | None = None,
                   semantic: float = 0.0) -> tuple[torch.Tensor, dict]:
    """wave [B, N]; eps [B, T, Za] the reparametrization's N(0, 1) draws for the last T latent frames.
    The first `context` samples only set the stream state (no gradient, no loss): the codec learns to
    work mid-stream, as it streams, not only from a fresh state. `spectral` False drops the log-STFT
    term (speech: measured, with it the decoder learned nothing in 500 steps; without it, the model's
    4 words came back at waveform correlation 0.95). With `semantic_head` (a training-only
    Linear(audio_z, MEL_BANDS + 1)) the latent means must also hold each frame's log-mel spectrum
    linearly, weighted `semantic`: Mimi distils WavLM into its first codebook for the same reason (the
    backbone must hear words across voices; measured: without it, a probe told the 3 asked words apart
    on held-out voices at chance from the latents and at 0.96 from log-mel features, docs/TRAINING.md)."""
    b = wave.shape[0]
    enc, dec = vae.init_encoder_state(b), vae.init_decoder_state(b)
    if context:
        with torch.no_grad():
            m, _, enc = vae.encode(wave[:, :context], enc)
            _, dec = vae.decode(m, dec)
    wave = wave[:, context:]
    mean, logvar, _ = vae.encode(wave, enc)
    logvar = logvar.clamp(-12, 6)
    z = mean + eps * (0.5 * logvar).exp()
    recon, _ = vae.decode(z, dec)
    mse, k = F.mse_loss(recon, wave) * 10.0, kl(mean, logvar)
    spec = stft_loss(recon, wave) if spectral else mse.new_zeros(())
    # waveform MSE leads (measured: with the spectral term leading, the decoder learned a steady hum in
    # 1,000 steps); the log-spectral term pulls pitch and loudness, which the task metrics read
    loss, parts = mse + spec + BETA * k, {"audio_mse": mse.detach() / 10.0, "audio_stft": spec.detach(), "audio_kl": k.detach()}
    if semantic_head is not None:
        mel = F.mse_loss(semantic_head(mean), mel_targets(wave, wave.shape[1] // mean.shape[1]))
        loss, parts = loss + semantic * mel, {**parts, "audio_mel": mel.detach()}
    return loss, parts


def _primed(state_of, b: int):
    with torch.no_grad():  # the priming frame's state is the same for every stream: made once, expanded
        return tuple(x.expand(b, *x.shape[1:]) for x in state_of(1))


def video_encode_stats(vae, frames: torch.Tensor, state=None):
    """frames [B, 3, 4n, H, W] -> (mean, logvar) [B, Zv, n, h, w], from `state` (default: the primed
    stream's); with a state given, also the new state."""
    io = StateIO(state if state is not None else _primed(vae.init_encoder_state, frames.shape[0]))
    stats = vae.quant_conv(vae.encoder(frames, io))
    if state is not None:
        return stats[:, :vae.z], stats[:, vae.z:], io.result()
    return stats[:, :vae.z], stats[:, vae.z:]


def video_decode(vae, z: torch.Tensor, state=None):
    """z [B, Zv, n, h, w] -> unclamped frames [B, 3, 4n, H, W], from `state` (default: the primed
    stream's); with a state given, also the new state."""
    io = StateIO(state if state is not None else _primed(vae.init_decoder_state, z.shape[0]))
    frames = vae.decoder(vae.post_quant_conv(z), io)
    return (frames, io.result()) if state is not None else frames


def video_vae_loss(vae, frames: torch.Tensor, eps: torch.Tensor, context: int = 0) -> tuple[torch.Tensor, dict]:
    """frames [B, 3, 4n, H, W]; eps [B, Zv, n', h, w] for the last n' latents; the first `context`
    frames (a multiple of 4) only set the stream state, as in `audio_vae_loss`."""
    b = frames.shape[0]
    enc, dec = _primed(vae.init_encoder_state, b), _primed(vae.init_decoder_state, b)
    if context:
        with torch.no_grad():
            m, _, enc = video_encode_stats(vae, frames[:, :, :context], enc)
            _, dec = video_decode(vae, m, dec)
    frames = frames[:, :, context:]
    mean, logvar, _ = video_encode_stats(vae, frames, enc)
    logvar = logvar.clamp(-12, 6)
    z = mean + eps * (0.5 * logvar).exp()
    recon, _ = video_decode(vae, z, dec)
    mse, k = F.mse_loss(recon, frames), kl(mean, logvar)
    return mse + BETA * k, {"video_mse": mse.detach(), "video_kl": k.detach()}


@torch.no_grad()
def standardize_latents(system, spec, seeds, clip_units: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Rescale every latent channel of both VAEs to unit standard deviation over clips of `seeds`
    (folded into the 1x1 convs around the latent, so the graphs are unchanged). Returns the scales."""
    av, vv = system.audio_vae, system.video_vae
    wave, frames = codec_clips(spec, seeds, clip_units, np.random.default_rng(0))
    za = av.encode(wave, av.init_encoder_state(wave.shape[0]))[0]  # [B, T, Za]
    zv = video_encode_stats(vv, frames)[0]  # [B, Zv, n, h, w]
    sa = za.reshape(-1, za.shape[-1]).std(0).clamp_min(1e-3)
    sv = zv.transpose(0, 1).reshape(zv.shape[1], -1).std(1).clamp_min(1e-3)
    za_n = av.to_latent.weight.shape[0] // 2
    av.to_latent.weight[:za_n] /= sa[:, None, None]
    av.to_latent.bias[:za_n] /= sa
    av.from_latent.weight *= sa[None, :, None]
    zn = vv.z
    vv.quant_conv.weight[:zn] /= sv[:, None, None, None, None]
    vv.quant_conv.bias[:zn] /= sv
    vv.post_quant_conv.weight *= sv[None, :, None, None, None]
    # the log-variances shift by -2 log(scale): keep the posterior the same distribution in the new units
    av.to_latent.bias[za_n:] -= 2 * torch.log(sa)
    vv.quant_conv.bias[zn:] -= 2 * torch.log(sv)
    return sa.numpy(), sv.numpy()
