"""`streamer card`: the video a person's recorded WAV needs to talk to the speech model. The model hears
a colour word and must also SEE a coloured square (training/spoken.py: the user shows a square while
asking), so `card` writes a gray video at the preset's frame size, exactly as long as the WAV, with a
red, green or blue square in the middle while the person speaks (or always, with --always).

    streamer card --colour red --like speech.wav --out face.mp4
    streamer run --preset tiny-speech --input speech.wav+face.mp4 --out out/

The WAV is checked by the reader `streamer run` uses (16-bit PCM mono at the preset's rate), so a file
`card` takes is one `run` takes, and the card's frame count is the WAV's length in frames rounded up
(within one frame of the audio: `run` takes the pair without --pad). Memory stays flat: the WAV is read
a unit at a time and the video written a unit at a time. numpy and unitio only (no torch).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .outputs import check_out_file, console

COLOURS = ("red", "green", "blue")  # training.conversation.COLOUR_NAMES (asserted in the tests)
WINDOW_MS = 20  # the gate measures RMS over 20 ms windows: a word's quiet tail still marks its last unit
FLOOR_FRACTION = 0.1  # the quietest tenth of the windows (at least one) sets the noise floor
FLOOR_FACTOR = 4.0  # a unit is speech when one of its windows' RMS is above 4x the floor (+12 dB) ...
MIN_RMS = 0.003  # ... and above this (-50 dBFS): digital silence or a very clean room is not speech
SQUARE = 0.4  # the square's side, a fraction of the frame's (as in training/conversation.py)


def add_parsers(sub) -> None:
    """Register `card`."""
    card = sub.add_parser(
        "card", help="a video for a recorded WAV: a coloured square shown while the person speaks",
        description="Write a video as long as --like (a 16-bit PCM mono WAV at the preset's rate, the rule "
                    "`streamer run` applies), at the preset's fps and frame size: gray, with a square of "
                    "--colour in the middle while the person speaks. Speech is found per 160 ms unit: a unit "
                    f"is speech when the RMS of one of its {WINDOW_MS} ms windows is above {FLOOR_FACTOR:g}x the "
                    f"noise floor (the mean RMS of the quietest {FLOOR_FRACTION:.0%} of the windows, at least "
                    f"one) and above {MIN_RMS:g} "
                    f"({20 * math.log10(MIN_RMS):.0f} dBFS). Then: streamer run --preset tiny-speech "
                    "--input SPEECH.wav+CARD.mp4 --out DIR")
    card.add_argument("--colour", required=True, choices=COLOURS, help="the square's colour")
    card.add_argument("--like", type=Path, required=True, metavar="WAV",
                      help="the recorded speech (16-bit PCM mono at 24 kHz for tiny-speech); the card is as long")
    card.add_argument("--out", type=Path, required=True, help="the video to write (H.264 MP4)")
    card.add_argument("--preset", default="tiny-speech",
                      help="the preset whose frame size, fps and sample rate the card has (default tiny-speech)")
    card.add_argument("--always", action="store_true",
                      help="show the square in every frame, not only while the person speaks (speech found as above)")
    card.set_defaults(func=cmd_card)


def window_rms(path: Path, spec) -> np.ndarray:
    """The RMS of each WINDOW_MS window of each unit of the WAV at `path` (checked as `streamer run` checks
    it; the last unit may be partial, its missing windows 0) -> float64 [units, windows per unit]."""
    from unitio.wav import WavReader

    s, hop = spec.samples_per_unit, spec.sample_rate * WINDOW_MS // 1000
    if s % hop:
        raise ValueError(f"preset {spec.name}: expected {WINDOW_MS} ms windows to divide a unit of {s} samples")
    with WavReader(path, spec.sample_rate) as r:
        n = -(-r.info.samples // s)
        rms = np.zeros((n, s // hop))
        for k in range(n):
            a = r.read(s).astype(np.float64)
            for j in range(-(-len(a) // hop)):
                w = a[j * hop:(j + 1) * hop]
                rms[k, j] = math.sqrt(float((w * w).mean()))
    return rms


def speaking(rms: np.ndarray, windows: int | None = None) -> tuple[np.ndarray, float]:
    """Which units are speech, from `window_rms` [U, W] (`windows`: how many of them the WAV holds; the
    rest are the last unit's missing tail) -> (bool [U], the threshold): a unit is speech when one of its
    windows is above FLOOR_FACTOR x the mean of the quietest FLOOR_FRACTION of the windows and above MIN_RMS."""
    held = rms.reshape(-1)[:windows]
    quietest = np.sort(held)[:max(1, int(FLOOR_FRACTION * len(held)))]
    threshold = max(FLOOR_FACTOR * float(quietest.mean()), MIN_RMS)
    return (rms > threshold).any(axis=1), threshold


def card_frames(spec, colour: str, shown: bool) -> np.ndarray:
    """One unit's frames: uint8 [F, H, W, 3], gray (training.conversation.USER_BACKGROUND) with a square
    of `colour` (USER_COLOURS) SQUARE of the frame's side in the middle when `shown`."""
    from training.conversation import COLOUR_NAMES, USER_BACKGROUND, USER_COLOURS

    h, w = spec.frame_height, spec.frame_width
    frames = np.empty((spec.frames_per_unit, h, w, 3), np.uint8)
    frames[:] = USER_BACKGROUND
    if shown:
        side_h, side_w = max(2, round(SQUARE * h)), max(2, round(SQUARE * w))
        y, x = (h - side_h) // 2, (w - side_w) // 2
        frames[:, y:y + side_h, x:x + side_w] = USER_COLOURS[COLOUR_NAMES.index(colour)].astype(np.uint8)
    return frames


def _ranges(mask: np.ndarray) -> str:
    """'3-7, 12' for the True units of `mask`."""
    on = np.flatnonzero(mask)
    parts, start = [], None
    for i, k in enumerate(on):
        if start is None:
            start = k
        if i + 1 == len(on) or on[i + 1] != k + 1:
            parts.append(f"{start}" if start == k else f"{start}-{k}")
            start = None
    return ", ".join(parts) or "none"


def cmd_card(args) -> int:
    """`streamer card`: the card video of --like, written unit by unit through unitio.media.VideoWriter."""
    from model_src.config import get_preset
    from unitio.media import VideoWriter
    from unitio.wav import wav_info

    if args.colour not in COLOURS:  # argparse's choices refuse it first; a caller passing args directly too
        raise ValueError(f"--colour: expected one of {', '.join(COLOURS)}, got {args.colour!r}")
    spec = get_preset(args.preset)
    samples = wav_info(args.like, spec.sample_rate).samples  # the rules `streamer run` applies
    check_out_file(args.out, "--out")
    if spec.sample_rate % spec.fps:
        raise ValueError(f"preset {spec.name}: expected a sample rate that is a whole number of samples per frame, "
                         f"got {spec.sample_rate} Hz at {spec.fps} fps")
    per_frame = spec.sample_rate // spec.fps
    total = -(-samples // per_frame)  # the WAV's length in frames, rounded up: within one frame of it
    rms = window_rms(args.like, spec)
    speech, threshold = speaking(rms, -(-samples // (spec.sample_rate * WINDOW_MS // 1000)))
    shown = np.ones_like(speech) if args.always else speech
    writer = VideoWriter(args.out, spec.fps, spec.frame_height, spec.frame_width)
    try:
        try:
            f = spec.frames_per_unit
            for k, on in enumerate(shown):
                writer.write(card_frames(spec, args.colour, bool(on))[:total - k * f])
        finally:
            writer.close()
    except BaseException:
        args.out.unlink(missing_ok=True)  # no half-written card left behind
        raise
    console.print(f"speech ({WINDOW_MS} ms RMS above {threshold:.4f}): units {_ranges(speech)} of {len(rms)} "
                  f"({spec.unit_ms:g} ms each)")
    if not speech.any() and not args.always:
        console.print(f"note: no unit of {args.like} is above {threshold:.4f}: the square is never shown "
                      "(is the recording silent? --always shows it throughout)")
    where = "every unit" if args.always else f"units {_ranges(shown)}"
    console.print(f"wrote {args.out}: {total} frames ({total / spec.fps:.2f} s at {spec.fps} fps, "
                  f"{spec.frame_height}x{spec.frame_width}), {args.colour} square in {where}")
    return 0
