"""The spoken colour conversation: seeded, made on the fly from espeak voices (training/speech.py), plain
numpy per 160 ms unit, independent of the trainer.

- **The user asks** a colour word, "red?", "green?" or "blue?", in one speaker's voice (one speaker per
  conversation, drawn from `speech.speakers(speaker_seed, split)`: held-out conversations use voices
  never trained on), starting anywhere in the first half of a unit, while showing a square of one of the
  3 colours (from the question's first unit to its last). A training speaker is a pool voice made into
  more speakers than the pool holds: a pitch range of its own (espeak's 10-90; held-out voices keep 50)
  and a vocal-tract warp (every question played WARP_RANGE times as fast, log-uniform, by resampling:
  pitch, formants and pace together, as speed perturbation does for speech recognizers); held-out
  speakers are never warped. Each question has its own loudness (peak
  0.08-0.8) and, half the time, a little room reverb; the whole conversation has its own room noise
  (a white floor, often a low rumble, sometimes mains hum).
- **The model answers in the first pause**, from the first unit in which the user is silent: "yes" when
  the word names the colour shown, else the name of the colour shown, in its own fixed voice
  (`speech.MODEL_VOICE`), starting at that unit's first sample and lasting as many units as the word
  (2-3). Its target word id is in every unit the answer spans; elsewhere it is SIL.
- **Barge-in**: in 30 % of the questions the user asks the next one in the middle of the answer; the
  model falls silent from that unit (it has heard it) and answers the new question when it ends.
- **Pauses of any length**: after an answer the user waits 1-3 units (55 %), 4-12 units (30 %) or
  13-80 units (15 %: 2-13 s of room noise only), and the first question may come as late. The model
  stays silent through all of them: it speaks only in the units after a question.

Everything but the user's audio is a function of what the user did in earlier or the same units, so the
answer needs both what was heard (the word) and what was seen (the colour).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import speech
from .conversation import (COLOUR_NAMES, COLOUR_WORDS, FACE_COLOURS, FACE_SKIN, SIL, USER_BACKGROUND, USER_COLOURS, render_faces,
                           seed_stream)

SAMPLES_PER_UNIT = 3840  # 160 ms at 24 kHz
QUESTIONS = tuple(f"{name}?" for name in COLOUR_NAMES)  # what the user asks: index = the colour asked
ANSWER_WORDS = ("yes", *COLOUR_NAMES)  # what the model says: 0 = yes, 1 + c = the name of colour c
YES = 23  # text id of "yes" (the colour names keep conversation.COLOUR_WORDS: 20-22)
WORD_IDS = (YES, *COLOUR_WORDS)  # text id of each answer word
WORDS = {SIL: "_", **dict(zip(WORD_IDS, ANSWER_WORDS))}
BARGE_IN = 0.30  # the next question starts inside the answer
PAUSES = ((0.55, 1, 3), (0.30, 4, 12), (0.15, 13, 80))  # (probability, fewest, most units)
MOUTH_FULL_RMS = 0.25  # the model's 40 ms loudness at which its mouth is fully open
WARP_RANGE = (0.85, 1.18)  # training speakers: questions played this many times as fast (log-uniform)
PITCH_RANGES = (10, 90)  # training speakers: espeak's pitch range (held-out speakers keep Voice's 50)
VERSION = 2  # of the generator (2: training speakers warped); part of stage b's latents cache key


@dataclass
class Turn:
    start: int  # first unit the user speaks in
    end: int  # last unit the user speaks in (inclusive)
    asked: int  # colour index the user names
    shown: int  # colour index of the square
    answer: int  # index into ANSWER_WORDS
    answer_units: int  # units the whole answer lasts
    spoken_units: int  # units of it the model says before the next question or the end (<= answer_units)
    square: tuple[float, float]  # top-left corner of the square (fractions of the free height, width)


@dataclass
class SpokenConversation:
    """One conversation: the user's side and the model's target, per unit (S = samples per unit)."""

    seed: int
    split: str
    speaker: speech.Voice  # the voice the user speaks in (a training speaker's pitch range is its own)
    user_audio: np.ndarray  # [U, S] float32: what the user's microphone hears
    model_audio: np.ndarray  # [U, S] float32: the target answer audio (zeros when silent)
    words: np.ndarray  # [U] int64: the target word's text id in every answer unit, SIL elsewhere
    user_speaking: np.ndarray  # [U] bool
    model_speaking: np.ndarray  # [U] bool (target)
    answer: np.ndarray  # [U] int64: index into ANSWER_WORDS while the model speaks, else -1
    shown: np.ndarray  # [U] int64: colour index of the square shown, -1 when none
    turns: list[Turn] = field(default_factory=list)
    barge_ins: list[int] = field(default_factory=list)  # units where a question starts inside an answer
    warp: float = 1.0  # the speaker's vocal-tract warp: questions played this many times as fast

    @property
    def units(self) -> int:
        return len(self.words)

    def __iter__(self):
        """Per unit: (user audio [S], target answer audio [S], target word id)."""
        for k in range(self.units):
            yield self.user_audio[k], self.model_audio[k], int(self.words[k])

    def user_frames(self, height: int, width: int, frames_per_unit: int) -> np.ndarray:
        """The user's video: uint8 [U * F, H, W, 3], gray with the coloured square while it is shown."""
        frames = np.empty((self.units * frames_per_unit, height, width, 3), np.uint8)
        frames[:] = USER_BACKGROUND
        side_h, side_w = max(2, round(0.4 * height)), max(2, round(0.4 * width))
        for t in self.turns:
            y, x = round(t.square[0] * (height - side_h)), round(t.square[1] * (width - side_w))
            frames[t.start * frames_per_unit:(t.end + 1) * frames_per_unit, y:y + side_h, x:x + side_w] = USER_COLOURS[t.shown]
        return frames

    def mouth(self, frames_per_unit: int) -> np.ndarray:
        """The target mouth opening per video frame: float32 [U * F] in [0, 1], from the answer's RMS."""
        if not isinstance(frames_per_unit, int) or frames_per_unit < 1 or self.model_audio.shape[1] % frames_per_unit:
            raise ValueError(f"frames_per_unit: expected a positive divisor of {self.model_audio.shape[1]} samples per unit, "
                             f"received {frames_per_unit!r}")
        per_frame = self.model_audio.reshape(self.units * frames_per_unit, -1)
        return np.clip(np.sqrt((per_frame ** 2).mean(1)) / MOUTH_FULL_RMS, 0.0, 1.0).astype(np.float32)

    def model_frames(self, height: int, width: int, frames_per_unit: int) -> np.ndarray:
        """The target face: uint8 [U * F, H, W, 3], the colour shown while answering (skin otherwise),
        the mouth opening with the answer's loudness."""
        colour_class = np.full(self.units, -1, np.int64)
        for t in self.turns:  # "yes" too: the face turns the colour shown
            colour_class[t.end + 1:t.end + 1 + t.spoken_units] = t.shown
        colours = np.where(colour_class[:, None] >= 0, FACE_COLOURS[np.maximum(colour_class, 0)], np.array(FACE_SKIN, np.float32))
        return render_faces(height, width, np.repeat(colours, frames_per_unit, axis=0), self.mouth(frames_per_unit))


def _pause(rng: np.random.Generator) -> int:
    r, acc = rng.random(), 0.0
    for p, lo, hi in PAUSES:
        acc += p
        if r < acc:
            return int(rng.integers(lo, hi + 1))
    return int(rng.integers(PAUSES[-1][1], PAUSES[-1][2] + 1))


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def room_noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """A room's noise, float32 [n]: a white floor, often a low rumble, sometimes 50/60 Hz mains hum."""
    noise = _loguniform(rng, 3e-4, 6e-3) * rng.standard_normal(n)
    if rng.random() < 0.6:  # rumble: white noise through a one-pole low-pass near 100 Hz, scaled
        from scipy.signal import lfilter

        a = np.exp(-2 * np.pi * rng.uniform(50, 200) / sample_rate)
        rumble = lfilter([1 - a], [1, -a], rng.standard_normal(n))
        noise += _loguniform(rng, 3e-4, 6e-3) * rumble / max(rumble.std(), 1e-9)
    if rng.random() < 0.3:
        hz = 50.0 if rng.random() < 0.5 else 60.0
        noise += _loguniform(rng, 1e-4, 2e-3) * np.sin(2 * np.pi * hz * np.arange(n) / sample_rate + rng.uniform(0, 2 * np.pi))
    return noise.astype(np.float32)


def reverb(rng: np.random.Generator, x: np.ndarray, sample_rate: int) -> np.ndarray:
    """x through a small room: an exponentially decaying noise tail (RT60 50-250 ms), wet 10-30 %."""
    from scipy.signal import fftconvolve

    rt60 = rng.uniform(0.05, 0.25)
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    tail *= rng.uniform(0.1, 0.3) / np.sqrt((tail ** 2).sum())
    tail[0] += 1.0
    return speech.trim(fftconvolve(x, tail)).astype(np.float32)


def training_speaker(voice: speech.Voice, seed) -> tuple[speech.Voice, float]:
    """A training speaker made from the pool voice `voice` for the conversation `seed`: (the voice with a
    pitch range of its own, the warp), from a stream of its own (the conversation's other draws do not
    move when the speakers change)."""
    from dataclasses import replace

    rng = seed_stream(seed, 29)
    voice = replace(voice, range=int(rng.integers(PITCH_RANGES[0], PITCH_RANGES[1] + 1)))
    return voice, _loguniform(rng, *WARP_RANGE)


def warped(x: np.ndarray, warp: float) -> np.ndarray:
    """x [n] played `warp` times as fast (float32 [~n / warp]): resampled by the nearest p/100."""
    down = int(round(100 * warp))
    return x if down == 100 else speech.resample(x, down, 100)


def make_spoken(units: int, seed, split: str = "train", speaker_seed: int = 0,
                samples_per_unit: int = SAMPLES_PER_UNIT) -> SpokenConversation:
    """The spoken conversation of `seed` (an int or a list of ints), `units` units of `samples_per_unit`
    samples at 24 kHz, its user one speaker of `speech.speakers(speaker_seed, split)`."""
    if not isinstance(units, int) or units < 1:
        raise ValueError(f"units: expected a positive int, received {units!r}")
    if not isinstance(samples_per_unit, int) or samples_per_unit < 480:
        raise ValueError(f"samples_per_unit: expected an int of at least 480 (20 ms at 24 kHz), received {samples_per_unit!r}")
    s, sr = samples_per_unit, speech.SAMPLE_RATE
    rng = seed_stream(seed, 23)
    pool = speech.speakers(speaker_seed, split)
    speaker, warp = pool[int(rng.integers(len(pool)))], 1.0
    if split == "train":
        speaker, warp = training_speaker(speaker, seed)
    user = room_noise(rng, units * s, sr)
    model = np.zeros(units * s, np.float32)
    user_speaking = np.zeros(units, bool)
    shown = np.full(units, -1, np.int64)
    turns: list[Turn] = []
    k = _pause(rng)
    while k < units:
        asked, colour = int(rng.integers(3)), int(rng.integers(3))
        question = warped(speech.render(QUESTIONS[asked], speaker), warp)
        question = question * np.float32(_loguniform(rng, 0.08, 0.8) / np.abs(question).max())
        if rng.random() < 0.5:
            question = reverb(rng, question, sr)
        onset = k * s + int(rng.integers(0, s // 2))
        square = (float(rng.random()), float(rng.random()))
        answer = 0 if asked == colour else 1 + colour
        reply = speech.render(ANSWER_WORDS[answer], speech.MODEL_VOICE)
        n_reply = -(-len(reply) // s)
        barge = rng.random() < BARGE_IN and n_reply >= 2
        if onset + len(question) > units * s:
            break  # no question is cut by the conversation's end
        end = (onset + len(question) - 1) // s
        nxt = end + 1 + (int(rng.integers(1, n_reply)) if barge else n_reply + _pause(rng))
        user[onset:onset + len(question)] += question
        user_speaking[k:end + 1] = True
        shown[k:end + 1] = colour
        turns.append(Turn(k, end, asked, colour, answer, n_reply, 0, square))
        k = nxt
    for i, t in enumerate(turns):  # each answer runs until the next question really starts, or the end
        until = turns[i + 1].start if i + 1 < len(turns) else units
        t.spoken_units = max(0, min(t.answer_units, until - t.end - 1))
        reply = speech.render(ANSWER_WORDS[t.answer], speech.MODEL_VOICE)
        model[(t.end + 1) * s:(t.end + 1 + t.spoken_units) * s] = np.pad(reply, (0, t.answer_units * s - len(reply)))[:t.spoken_units * s]
    model_speaking = np.zeros(units, bool)
    answer_of = np.full(units, -1, np.int64)
    for t in turns:
        model_speaking[t.end + 1:t.end + 1 + t.spoken_units] = True
        answer_of[t.end + 1:t.end + 1 + t.spoken_units] = t.answer
    words = np.where(model_speaking, np.array(WORD_IDS)[np.maximum(answer_of, 0)], SIL).astype(np.int64)
    barge_ins = [t.start for t in turns[1:] if t.start > 0 and model_speaking[t.start - 1]]
    return SpokenConversation(seed, split, speaker, np.clip(user, -1, 1).reshape(units, s), model.reshape(units, s),
                              words, user_speaking, model_speaking, answer_of, shown, turns, barge_ins, warp)


def describe(c: SpokenConversation) -> list[str]:
    """One line per unit: what the user says and shows, what the model should say (for humans)."""
    lines = []
    for k in range(c.units):
        turn = next((t for t in c.turns if t.start <= k <= t.end), None)
        user = f"user: {QUESTIONS[turn.asked]!r} + {COLOUR_NAMES[turn.shown]} square" if turn else "user: (pause)"
        model = f"model: {WORDS[int(c.words[k])]}" if c.model_speaking[k] else "model: (listens)"
        lines.append(f"unit {k:3d} ({k * 0.16:6.2f} s)  {user:32s} {model}" + ("   <- barge-in" if k in c.barge_ins else ""))
    return lines
