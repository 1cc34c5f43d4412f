"""Stage b (LM + flow matching, teacher-forced, block-causal) and stage c (progressive distillation) losses.

Both run the model offline on whole conversations with `AVModel.units_offline` (the unit tokens under
the block-causal, ring-windowed mask) and `AVModel.flow_offline` (every unit's flow block against what
the streaming cache holds at its solve): tests/test_training.py holds that this equals the streaming
thinker_step + flow_step, so what is trained is what streams.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def teacher_forced_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unit inputs of a batch of encoded conversations: the user's latents in, the target answer's
    previous-unit latents as audio_prev / video_prev (zeros before unit 0, as a session starts), no user text.
    With batch["prev_mix"] [B, U] (the spoken task), each unit's previous latents are mixed towards
    batch["prev_noise_audio"/"prev_noise_video"] by that fraction, as the flow's x_t at time 1 - mix: the
    backbone learns to carry an answer on from its own text, not from latents it will only ever see
    generated (measured: trained on clean latents, the speech teacher said the right word in an answer's
    first unit and "green" in the next two)."""
    p = model.preset
    b, u = batch["text"].shape[:2]
    shift = lambda x: torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    audio_prev, video_prev = shift(batch["audio_out"]), shift(batch["video_out"])
    if "prev_mix" in batch:  # the previous unit's latents as the solver may leave them (exposure bias)
        m = batch["prev_mix"]
        audio_prev = (1 - m[..., None, None]) * audio_prev + m[..., None, None] * batch["prev_noise_audio"]
        video_prev = (1 - m[..., None, None, None]) * video_prev + m[..., None, None, None] * batch["prev_noise_video"]
    return {"text_in": torch.full((b, u, p.text_in_tokens), p.text_pad_id, dtype=torch.int64),
            "video_in": batch["video_in"], "audio_in": batch["audio_in"],
            "audio_prev": audio_prev, "video_prev": video_prev, "text_out": batch["text"]}


def lm_loss(logits: torch.Tensor, text: torch.Tensor, onset_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy of text_out: logits [B, U, T, V], targets [B, U, T]. With onset_weight > 1 the first
    slot of each unit where an answer starts (a word after SIL: the one unit where the answer is decided,
    ~1 token in 25) weighs that much more (the spoken task: measured, at weight 1 the speech model learned
    to carry an answer on but decided its first word at chance); weight 1 is the plain mean."""
    ce = F.cross_entropy(logits.flatten(0, 2), text.flatten(), reduction="none").view(text.shape)
    if onset_weight == 1.0:
        return ce.mean()
    first = text[..., 0]
    before = torch.cat([torch.full_like(first[:, :1], -1), first[:, :-1]], dim=1)
    sil = first.new_tensor(1)  # training.conversation.SIL
    onset = (first != sil) & (before == sil)
    w = torch.ones_like(ce)
    w[..., 0] = torch.where(onset, torch.full_like(ce[..., 0], onset_weight), w[..., 0])
    return (ce * w).sum() / w.sum()


HEARD_CLASSES = 3  # the words a user asks (training/spoken.py QUESTIONS)


def training_head(n_in: int, n_out: int) -> nn.Linear:
    """A training-only Linear(n_in, n_out), seeded apart from the global RNG: the same head in every run
    and process, and the draws of everything built after it do not move."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Linear(n_in, n_out)


def heard_loss(head: nn.Module, hidden: torch.Tensor, heard: torch.Tensor) -> torch.Tensor:
    """Stage b's heard-word term: cross-entropy of `head` (Linear(hidden, 3)) on hidden [B, U, H], the
    state that predicts each unit's first text token, against heard [B, U] (the word the user asked,
    tasks.heard_labels; -1: not scored). An answer's first word needs the word heard, but the LM loss
    says so in one token of 25 and only for "yes" answers; this says it on every unit from the
    question's end through its answer (measured at mid-training: the first answer word right in 75 %
    of 110 held-out answers with it, 69 % without, docs/TRAINING.md)."""
    scored = heard >= 0
    if not bool(scored.any()):
        return hidden.new_zeros(())
    return F.cross_entropy(head(hidden[scored].float()), heard[scored])


def _window(model) -> dict[str, int]:
    return {"sink_units": model.preset.sink_units, "window_units": model.preset.window_units}


class BackboneLoss(nn.Module):
    """Stage b: cross-entropy of text_out (greedy decoding's targets) + rectified-flow matching of the
    answer's latents, each unit's flow block at its own random time t (audio and video terms averaged
    separately and summed, as `model_src.flow.flow_matching_loss`)."""

    def __init__(self, model, onset_weight: float = 1.0, heard_weight: float = 0.0) -> None:
        super().__init__()
        self.model, self.onset_weight, self.heard_weight = model, onset_weight, heard_weight
        # training-only: checkpointed with the stage, never part of the system
        self.heard_head = training_head(model.preset.hidden, HEARD_CLASSES) if heard_weight > 0 else None

    def forward(self, batch, noise_audio, noise_video, t):
        m = self.model
        hidden, logits, ks, vs = m.units_offline(**teacher_forced_inputs(m, batch), **_window(m))
        lm = lm_loss(logits, batch["text"], self.onset_weight)
        ta, tv = t[..., None, None], t[..., None, None, None]
        a, v = batch["audio_out"], batch["video_out"]
        va, vv = m.flow_offline((1 - ta) * noise_audio + ta * a, (1 - tv) * noise_video + tv * v, t, ks, vs, **_window(m))
        flow = F.mse_loss(va, a - noise_audio) + F.mse_loss(vv, v - noise_video)
        parts = {"lm": lm.detach(), "flow": flow.detach()}
        if self.heard_head is None:
            return lm + flow, parts
        heard = heard_loss(self.heard_head, hidden[:, :, m.layout.prefix_tokens - 1], batch["heard"])
        return lm + flow + self.heard_weight * heard, {**parts, "heard": heard.detach()}


class DistillLoss(nn.Module):
    """Stage c, progressive distillation (Salimans & Ho, "Progressive Distillation for Fast Sampling of
    Diffusion Models", ICLR 2022) in the rectified-flow / Euler parametrization: one student Euler step
    of size 1/N from x_t must land where two teacher Euler steps of size 1/(2N) land. x_t is drawn from
    the forward process at the student's grid times t = i/N (under flow matching its marginals are the
    ODE's). The student also keeps the teacher-forced LM loss: the backbone is shared with the text."""

    def __init__(self, student, teacher, student_steps: int, onset_weight: float = 1.0) -> None:
        super().__init__()
        self.model, self.teacher, self.n, self.onset_weight = student, teacher, student_steps, onset_weight
        for p_ in teacher.parameters():
            p_.requires_grad_(False)

    def forward(self, batch, noise_audio, noise_video, grid):
        s, tch, n = self.model, self.teacher, self.n
        t = grid.float() / n  # [B, U] on the student's grid
        ta, tv = t[..., None, None], t[..., None, None, None]
        xa = (1 - ta) * noise_audio + ta * batch["audio_out"]
        xv = (1 - tv) * noise_video + tv * batch["video_out"]
        inputs = teacher_forced_inputs(s, batch)
        half = 0.5 / n
        with torch.no_grad():
            _, _, tk, tvv = tch.units_offline(**inputs, **_window(tch))
            va, vv = tch.flow_offline(xa, xv, t, tk, tvv, **_window(tch))
            ya, yv = xa + half * va, xv + half * vv
            va2, vv2 = tch.flow_offline(ya, yv, t + half, tk, tvv, **_window(tch))
            target_a = (ya + half * va2 - xa) * n  # the velocity of one student step of 1/n
            target_v = (yv + half * vv2 - xv) * n
        _, logits, ks, vs = s.units_offline(**inputs, **_window(s))
        lm = lm_loss(logits, batch["text"], self.onset_weight)
        sa, sv = s.flow_offline(xa, xv, t, ks, vs, **_window(s))
        distill = F.mse_loss(sa, target_a) + F.mse_loss(sv, target_v)
        return lm + distill, {"lm": lm.detach(), "distill": distill.detach()}


class CodecLoss(nn.Module):
    """Stage a: the VAEs' reconstruction + KL on one batch of clips (training/codecs.py); `codecs` names
    the VAEs it holds (a loop of one codec wraps only that one, so DDP finds no parameter without a gradient).
    `semantic` > 0 adds the audio latents' log-mel term through `semantic_head`, a training-only linear
    map that is not part of the system (it is checkpointed with the stage, never exported)."""

    def __init__(self, system, context_units: int = 0, codecs: tuple[str, ...] = ("audio", "video"),
                 spectral: bool = True, semantic: float = 0.0) -> None:
        from .codecs import MEL_BANDS

        super().__init__()
        self.spectral = spectral  # the audio loss's log-STFT term (off for speech: training/codecs.py)
        self.semantic = semantic
        self.semantic_head = training_head(system.preset.audio_z, MEL_BANDS + 1) if semantic > 0 and "audio" in codecs else None
        for codec in ("audio", "video"):  # only the trained codecs are submodules: DDP then sees no unused
            setattr(self, f"{codec}_vae", getattr(system, f"{codec}_vae") if codec in codecs else None)
        self.context = context_units
        self.samples, self.frames = system.preset.samples_per_unit, system.preset.frames_per_unit

    def forward(self, wave, frames, eps_audio, eps_video):
        """The first `context_units` units of each clip only set the stream state (no loss)."""
        from .codecs import audio_vae_loss, video_vae_loss

        if frames is None:  # the audio loop
            return audio_vae_loss(self.audio_vae, wave, eps_audio, self.context * self.samples, self.spectral,
                                  self.semantic_head, self.semantic)
        if wave is None:  # the video loop
            return video_vae_loss(self.video_vae, frames, eps_video, self.context * self.frames)
        la, pa = audio_vae_loss(self.audio_vae, wave, eps_audio, self.context * self.samples, self.spectral,
                                self.semantic_head, self.semantic)
        lv, pv = video_vae_loss(self.video_vae, frames, eps_video, self.context * self.frames)
        return la + lv, {**pa, **pv}
