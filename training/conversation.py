"""A synthetic, seeded, full-duplex audio-visual conversation whose right answer is measurable. numpy only.

The user asks questions; the model answers them (docs/TRAINING.md has the whole design):

- A **question** is a user turn of 2-4 units (320-640 ms): a steady tone at one of 3 pitches (the user's
  "voice") while a square of one of 3 colours is shown on a gray background (their "hand").
- The model **answers when the user pauses**: from the first silent unit after the turn, for 4 units.
  Its answer names both: text_out says [pitch word, colour word] in every answer unit; its voice is a
  tone whose frequency is one of 9 (one per pitch x colour); its face turns the colour asked about and
  its mouth opens with its own loudness (per 40 ms frame, the video frame rate).
- **Full duplex**: the model listens while it speaks. When the user starts a new question in the middle
  of an answer (barge-in), the model falls silent in that same unit (it has heard it) and answers the new
  question when that one ends. While the model is silent its text is [SIL, SIL] and its face is neutral.
- The only free choice in the model's answer is the loudness contour of each unit (rising or falling,
  chosen at random per unit): the generative part the flow matching learns, and what the face must
  follow. Everything else is a function of what the user did in earlier units.

Every model tone is a multiple of 25 Hz (the audio latent rate), so each 40 ms frame holds whole cycles.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# --- vocabulary (text_out ids; valid for every preset's vocabulary) ---------------------------------
SIL = 1  # the model says nothing in this slot
PITCH_WORDS = (10, 11, 12)  # "low", "mid", "high"
COLOUR_WORDS = (20, 21, 22)  # "red", "green", "blue"
WORDS = {SIL: "_", 10: "low", 11: "mid", 12: "high", 20: "red", 21: "green", 22: "blue"}

# --- the user -----------------------------------------------------------------------------------------
USER_PITCHES_HZ = (200.0, 300.0, 450.0)
COLOUR_NAMES = ("red", "green", "blue")
USER_COLOURS = np.array([(230, 40, 40), (40, 190, 40), (40, 70, 230)], np.float32)
USER_BACKGROUND = (128, 128, 128)
NOISE_STD = 0.003  # the user's microphone noise floor

# --- the model's answer -------------------------------------------------------------------------------
ANSWER_UNITS = 4
# one tone per (pitch, colour): answer class a = 3 * pitch + colour, 3 semitones apart, multiples of 25 Hz
ANSWER_FREQS_HZ = (300.0, 350.0, 425.0, 500.0, 600.0, 725.0, 850.0, 1000.0, 1200.0)
CONTOURS = np.array([(0.12, 0.24, 0.36, 0.48), (0.48, 0.36, 0.24, 0.12)], np.float32)  # per frame, rising / falling
MAX_AMPLITUDE = 0.5
FACE_SKIN = (200.0, 165.0, 135.0)
FACE_COLOURS = np.array([(215, 55, 55), (60, 185, 75), (70, 95, 225)], np.float32)
FACE_BACKGROUND = (40.0, 40.0, 40.0)
FEATURE_DARK = (25.0, 10.0, 10.0)


@dataclass
class Conversation:
    """One conversation of `units` units: what the user sends and what the model should send back."""

    seed: int
    units: int
    user_audio: np.ndarray  # [U * S] float32 in [-1, 1]
    user_frames: np.ndarray  # [U * F, H, W, 3] uint8
    model_audio: np.ndarray  # [U * S] float32: the target answer
    model_frames: np.ndarray  # [U * F, H, W, 3] uint8: the target face
    text: np.ndarray  # [U, 2] int64: target text_out per unit
    user_speaking: np.ndarray  # [U] bool
    model_speaking: np.ndarray  # [U] bool (target)
    answer: np.ndarray  # [U] int: target answer class 3 * pitch + colour while the model speaks, else -1
    amplitude: np.ndarray  # [U * F] float32: target loudness of each 40 ms frame (0 when silent)
    turns: list[tuple[int, int, int, int]] = field(default_factory=list)  # (start, end, pitch, colour)
    barge_ins: list[int] = field(default_factory=list)  # units where the user starts while the model speaks

    def units_of(self, spec) -> list[tuple[np.ndarray, np.ndarray]]:
        """The user's side cut into (audio, frames) units, what a session steps on."""
        s, f = spec.samples_per_unit, spec.frames_per_unit
        return [(self.user_audio[k * s:(k + 1) * s], self.user_frames[k * f:(k + 1) * f]) for k in range(self.units)]


def schedule(rng: np.random.Generator, units: int) -> list[tuple[int, int, int, int]]:
    """User turns (start, end inclusive, pitch, colour): 2-4 units each; after a turn the next one starts
    either in the middle of the model's answer (barge-in, 35 %) or 1-3 units after it."""
    turns, k = [], int(rng.integers(1, 4))
    while k < units:
        length = int(rng.integers(2, 5))
        end = min(k + length - 1, units - 1)
        turns.append((k, end, int(rng.integers(3)), int(rng.integers(3))))
        if rng.random() < 0.35:
            k = end + 2 + int(rng.integers(0, ANSWER_UNITS - 1))  # after 1..3 units of the answer
        else:
            k = end + ANSWER_UNITS + 1 + int(rng.integers(1, 4))
    return turns


def model_turns(user_speaking: np.ndarray, turns) -> tuple[np.ndarray, np.ndarray]:
    """The model's target per unit: (speaking [U] bool, answer class [U] or -1). It speaks at unit m iff
    the user is silent at m and the user's last speech ended 1..ANSWER_UNITS units before m."""
    units = len(user_speaking)
    speaking, answer = np.zeros(units, bool), np.full(units, -1, np.int64)
    for start, end, pitch, colour in turns:
        for m in range(end + 1, min(end + ANSWER_UNITS, units - 1) + 1):
            if user_speaking[m]:
                break  # barge-in (or the next question): silent from this unit on
            speaking[m], answer[m] = True, 3 * pitch + colour
    return speaking, answer


def seed_stream(seed, stream: int) -> np.random.Generator:
    """The random stream `stream` of the conversation `seed` (an int or a list of ints)."""
    return np.random.default_rng([*(seed if isinstance(seed, (list, tuple)) else [seed]), stream])


def make_conversation(spec, units: int, seed) -> Conversation:
    """The conversation of `seed` (an int, or a list of ints), `units` units long, at the sizes of `spec` (a preset or a unit spec)."""
    rng = seed_stream(seed, 14)
    s, f, sr = spec.samples_per_unit, spec.frames_per_unit, spec.sample_rate
    turns = schedule(rng, units)
    user_speaking = np.zeros(units, bool)
    for start, end, _, _ in turns:
        user_speaking[start:end + 1] = True
    speaking, answer = model_turns(user_speaking, turns)
    barge_ins = [start for start, *_ in turns if start > 0 and speaking[start - 1]]

    # user audio: a tone per turn (random loudness and phase, 5 ms ramps) over a noise floor
    user_audio = (NOISE_STD * rng.standard_normal(units * s)).astype(np.float32)
    for start, end, pitch, _ in turns:
        length = (end - start + 1) * s
        t = np.arange(length) / sr
        ramp = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.005 * sr))
        tone = rng.uniform(0.25, 0.45) * ramp * np.sin(2 * np.pi * USER_PITCHES_HZ[pitch] * t + rng.uniform(0, 2 * np.pi))
        user_audio[start * s:start * s + length] += tone.astype(np.float32)

    # user video: gray, with a coloured square (random place per turn) while the user speaks
    h, w = spec.frame_height, spec.frame_width
    user_frames = np.empty((units * f, h, w, 3), np.uint8)
    user_frames[:] = USER_BACKGROUND
    side_h, side_w = max(2, round(0.4 * h)), max(2, round(0.4 * w))
    for start, end, _, colour in turns:
        y, x = int(rng.integers(0, h - side_h + 1)), int(rng.integers(0, w - side_w + 1))
        user_frames[start * f:(end + 1) * f, y:y + side_h, x:x + side_w] = USER_COLOURS[colour].astype(np.uint8)

    # the model: per answer unit a rising or falling contour of a tone at the answer's frequency
    amplitude = np.zeros(units * f, np.float32)
    model_audio = np.zeros(units * s, np.float32)
    hop = s // f
    carrier_t = np.arange(hop) / sr
    for m in np.flatnonzero(speaking):
        contour = CONTOURS[int(rng.integers(len(CONTOURS)))]
        amplitude[m * f:(m + 1) * f] = contour
        cycle = np.sin(2 * np.pi * ANSWER_FREQS_HZ[answer[m]] * carrier_t).astype(np.float32)  # whole cycles
        model_audio[m * s:(m + 1) * s] = (contour[:, None] * cycle[None]).reshape(-1)
    face_colour = np.where(speaking[:, None], FACE_COLOURS[np.maximum(answer, 0) % 3], np.array(FACE_SKIN, np.float32))
    model_frames = render_faces(h, w, np.repeat(face_colour, f, axis=0), amplitude / MAX_AMPLITUDE)
    text = np.full((units, 2), SIL, np.int64)
    text[speaking, 0] = np.array(PITCH_WORDS)[answer[speaking] // 3]
    text[speaking, 1] = np.array(COLOUR_WORDS)[answer[speaking] % 3]
    return Conversation(seed, units, user_audio, user_frames, model_audio, model_frames, text, user_speaking,
                        speaking, answer, amplitude, turns, barge_ins)


# --- the model's face -----------------------------------------------------------------------------------
def face_regions(h: int, w: int) -> dict[str, np.ndarray]:
    """Boolean masks [H, W] of the face, its eyes, the mouth's largest box, and a cheek patch (colour).
    Everything is big (the mouth opens to a third of the frame): the tiny video VAE draws coarse shapes."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    face = ((xx - 0.5 * w) / (0.47 * w)) ** 2 + ((yy - 0.5 * h) / (0.49 * h)) ** 2 <= 1.0
    eyes = np.zeros((h, w), bool)
    for ex in (0.3, 0.7):
        eyes |= ((xx - ex * w) / (0.09 * w)) ** 2 + ((yy - 0.28 * h) / (0.09 * h)) ** 2 <= 1.0
    mouth_box = (np.abs(xx - 0.5 * w) <= 0.25 * w) & (yy >= MOUTH_TOP * h) & (yy <= MOUTH_TOP * h + mouth_rows(h, 1.0))
    cheeks = face & ~eyes & ~mouth_box & (yy >= 0.38 * h) & (yy <= 0.5 * h)
    return {"face": face, "eyes": eyes, "mouth_box": mouth_box, "cheeks": cheeks}


MOUTH_TOP = 0.56  # the mouth's top edge (fraction of the height); it opens downwards


def mouth_rows(h: int, opening: float) -> float:
    """Height in pixels of the mouth at `opening` in [0, 1] (1 = loudest): from a line to a third of the frame."""
    return max(1.0, 0.04 * h) + opening * 0.3 * h


def render_faces(h: int, w: int, colours: np.ndarray, opening: np.ndarray) -> np.ndarray:
    """colours [N, 3] and mouth opening [N] in [0, 1] -> uint8 faces [N, H, W, 3]."""
    r = face_regions(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    frames = np.empty((len(colours), h, w, 3), np.float32)
    frames[:] = FACE_BACKGROUND
    frames[:, r["face"]] = colours[:, None]
    frames[:, r["eyes"]] = FEATURE_DARK
    width_ok = np.abs(xx - 0.5 * w) <= 0.25 * w
    for i, o in enumerate(opening):
        mouth = width_ok & (yy >= MOUTH_TOP * h) & (yy <= MOUTH_TOP * h + mouth_rows(h, float(o)))
        frames[i, mouth] = FEATURE_DARK
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


CHUNK_UNITS = 48  # a long synthetic stream is a chain of conversations of this many units


class ConversationUnits:
    """`streamer run --input synthetic`: the user's side of conversation `seed` as units, made one
    conversation of CHUNK_UNITS at a time (seeds seed, then [seed, 1], [seed, 2], ...), so a stream of any
    length keeps flat memory. `len` is the count; iterating (again, from the start) yields (audio, frames)."""

    note = None
    make = staticmethod(make_conversation)  # (spec, units, seed) -> Conversation: what the chunks are

    def __init__(self, spec, units: int, seed: int = 0) -> None:
        self.spec, self.n, self.seed = spec, units, seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for start in range(0, self.n, CHUNK_UNITS):
            seed = self.seed if start == 0 else [self.seed, start // CHUNK_UNITS]
            c = self.make(self.spec, min(CHUNK_UNITS, self.n - start), seed)
            yield from c.units_of(self.spec)


def synthetic_conversation_input(spec, units: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The user's side of conversation `seed`: (audio [U * S] float32, frames [U * F, H, W, 3] uint8), what
    `streamer run --input synthetic` streams."""
    c = make_conversation(spec, units, seed)
    return c.user_audio, c.user_frames


def describe(c: Conversation) -> list[str]:
    """One line per unit: who speaks, and what the model should say (for humans reading a run)."""
    lines = []
    for k in range(c.units):
        turn = next(((p, col) for s, e, p, col in c.turns if s <= k <= e), None)
        user = f"user: {('low', 'mid', 'high')[turn[0]]} tone + {COLOUR_NAMES[turn[1]]} square" if turn else "user: (pause)"
        model = f"model: {WORDS[int(c.text[k, 0])]} {WORDS[int(c.text[k, 1])]}" if c.model_speaking[k] else "model: (listens)"
        lines.append(f"unit {k:3d} ({k * 0.16:5.2f} s)  {user:34s} {model}" + ("   <- barge-in" if k in c.barge_ins else ""))
    return lines
