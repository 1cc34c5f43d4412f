"""A word recognizer for the model's spoken answers, with no learned model: log-mel features and dynamic
time warping against renderings of each answer word in the model's own voice. numpy only (plus the
espeak renderings of training/speech.py), so it scores torch, every engine and every precision alike.

- Features: 40 log-mel bands (60-7600 Hz) of 512-sample Hann frames every 240 samples (10 ms) at
  24 kHz; the segment between its first and last frame louder than EDGE_RMS and within SPAN_DB of its
  loudest frame and, in an answer window, louder than FLOOR_FACTOR x its background (the 10th
  percentile of its frames' RMS) or BACKGROUND_DB below the loudest frame, whichever is lower; the mean of each band removed (loudness and channel drop out).
- Templates: each word rendered in the voice at TEMPLATE_RATES x its rate.
- Distance: DTW with steps advancing one side by 1 and the other by 0, 1 or 2, run both ways and
  averaged, each normalized by the length of the side that advances by 1; per word the nearest template.
- Decision: SILENCE when no frame is louder than SILENCE_RMS; UNKNOWN when the nearest word is farther
  than REJECT, or the nearest of three noise templates (white, pink, brown: `garbage`) is nearer than
  NOISE_RATIO x the nearest word (pure noise: ~0.5; a word under noise at 15-20 dB SNR: ~0.7-1.6); else the
  nearest word, with the margin (second nearest word - nearest).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import speech

SAMPLE_RATE = speech.SAMPLE_RATE
N_FFT, HOP, N_MELS, FMIN, FMAX = 512, 240, 40, 60.0, 7600.0
SILENCE_RMS = 0.02  # a segment whose loudest 10 ms frame is quieter than this says nothing (answers: ~0.1-0.3)
SPAN_DB = 35.0  # frames this far below the loudest are the segment's silent edges
EDGE_RMS = 0.004  # and frames quieter than this (the edges of a quiet answer are kept down to here)
FLOOR_PERCENTILE, FLOOR_FACTOR = 10, 3.0  # and frames less than 3x (~10 dB) the background's loudness
BACKGROUND_DB = 20.0  # ... unless that is within this of the loudest frame
REJECT = 3.0  # mean per-frame distance above which the nearest word is no match (calibration in the docs)
NOISE_RATIO = 0.7  # noise, not a word, when the nearest noise template is nearer than this x the nearest word
TEMPLATE_RATES = (0.88, 1.0, 1.12)
SILENCE, UNKNOWN = "_", "?"


def mel_filterbank(n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular filters on the HTK mel scale, float32 [n_mels, n_fft // 2 + 1], each of unit area."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return (bank * (2.0 / (hi - lo))).astype(np.float32)


_MEL = mel_filterbank()
_WINDOW = np.hanning(N_FFT + 1)[:-1].astype(np.float32)


def frames_of(x: np.ndarray) -> np.ndarray:
    """float [n] -> frames [T, N_FFT] every HOP samples (zero-padded to at least one frame)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 1:
        raise ValueError(f"audio: expected a 1-D waveform [n], received shape {x.shape}")
    x = np.pad(x, (0, max(0, N_FFT - len(x)) + (-(max(len(x), N_FFT) - N_FFT)) % HOP))
    return np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]


def features(x: np.ndarray, background: bool = True) -> np.ndarray | None:
    """A waveform at 24 kHz -> mean-removed log-mel features [T, N_MELS] of its loud segment, or None
    when it is silent (no 10 ms frame louder than SILENCE_RMS). With `background` (an answer window, mostly
    not the word) the segment also leaves out frames near the window's background loudness; without it
    (a clean rendering, already trimmed) only the quiet edges go."""
    frames = frames_of(x)
    rms = np.sqrt((frames ** 2).mean(1))
    if rms.max(initial=0.0) < SILENCE_RMS:
        return None
    db = 20 * np.log10(np.maximum(rms, 1e-9))
    edge = EDGE_RMS
    if background:  # never closer to the loudest frame than BACKGROUND_DB (the word may fill the window)
        floor = FLOOR_FACTOR * float(np.percentile(rms, FLOOR_PERCENTILE))
        edge = max(edge, min(floor, float(rms.max()) * 10 ** (-BACKGROUND_DB / 20)))
    loud = np.flatnonzero((rms >= edge) & (db >= db.max() - SPAN_DB))
    frames = frames[loud[0]:loud[-1] + 1]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2
    logmel = np.log(np.maximum(power @ _MEL.T, 1e-10))
    return (logmel - logmel.mean(0)).astype(np.float32)


def _dtw_rows(cost: np.ndarray) -> np.ndarray:
    """Accumulated cost [K, N, M] of paths from (0, 0) over cost [K, N, M] (K problems at once) that
    advance the N axis by 1 and the M axis by 0, 1 or 2 at each step."""
    acc = np.empty_like(cost)
    acc[:, 0] = np.inf
    acc[:, 0, 0] = cost[:, 0, 0]
    for i in range(1, cost.shape[1]):
        prev = acc[:, i - 1]
        best = prev.copy()
        np.minimum(best[:, 1:], prev[:, :-1], out=best[:, 1:])
        np.minimum(best[:, 2:], prev[:, :-2], out=best[:, 2:])
        acc[:, i] = cost[:, i] + best
    return acc


def dtw_distances(query: np.ndarray, templates: list[np.ndarray]) -> np.ndarray:
    """Mean per-frame DTW distance [K] of features `query` [N, D] to each template [M_k, D] (both ways,
    averaged; the one way that fits when one is over twice as long as the other)."""
    lengths = np.array([len(t) for t in templates])
    m = int(lengths.max())
    padded = np.zeros((len(templates), m, query.shape[1]), np.float32)
    for k, t in enumerate(templates):
        padded[k, :len(t)] = t
    # squared distances [K, N, M] as |q|^2 + |t|^2 - 2 q.t (no [K, N, M, D] difference array)
    sq = (query ** 2).sum(1)[None, :, None] + (padded ** 2).sum(2)[:, None, :] - 2 * np.einsum("nd,kmd->knm", query, padded)
    cost = np.sqrt(np.maximum(sq, 0.0) / query.shape[1])  # RMS difference per band
    ks, n = np.arange(len(templates)), len(query)
    forward = _dtw_rows(np.where(np.arange(m)[None, None, :] < lengths[:, None, None], cost, np.inf))
    backward = _dtw_rows(np.ascontiguousarray(cost.transpose(0, 2, 1)))
    f, b = forward[ks, n - 1, lengths - 1] / n, backward[ks, lengths - 1, n - 1] / lengths
    return np.where(np.isfinite(f) & np.isfinite(b), 0.5 * (f + b), np.minimum(f, b))


@dataclass
class Recognition:
    word: str  # one of the recognizer's words, SILENCE or UNKNOWN
    margin: float  # distance of the second nearest word minus the nearest's (0 for SILENCE)
    distance: float  # distance of the nearest word (inf for SILENCE)


def garbage(seconds: float = 0.4, rms: float = 0.1) -> list[np.ndarray]:
    """What no word sounds like, float32 [n] each: white, pink and brown noise (a fixed seed)."""
    rng = np.random.default_rng(23)
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.standard_normal((3, n)), axis=1)
    f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
    out = np.fft.irfft(spectrum * np.stack([np.ones_like(f), f ** -0.5, f ** -1.0]), n, axis=1)
    return [(rms * x / x.std()).astype(np.float32) for x in out]


class Recognizer:
    """Recognizes which of `words` a waveform says, against renderings in `voice` (the model's)."""

    def __init__(self, words, voice: speech.Voice = speech.MODEL_VOICE, rates=TEMPLATE_RATES,
                 reject: float = REJECT) -> None:
        self.words = tuple(words)
        if len(self.words) < 2 or len(set(self.words)) != len(self.words):
            raise ValueError(f"words: expected at least 2 distinct words, received {self.words!r}")
        self.voice, self.reject = voice, reject
        self.templates, self.labels = [], []
        for w, word in enumerate(self.words):
            for r in rates:
                v = speech.Voice(voice.accent, voice.variant, int(round(voice.rate * r)), voice.pitch, voice.range, voice.volume)
                self.templates.append(features(speech.render(word, v), background=False))
                self.labels.append(w)
        for k, noise in enumerate(garbage()):  # what no word sounds like: label -1
            self.templates.append(features(noise, background=False))
            self.labels.append(-1)
        self.labels = np.array(self.labels)

    def distances(self, audio: np.ndarray) -> np.ndarray | None:
        """The DTW distance of `audio` (float [n] at 24 kHz) to the nearest noise template, then per word
        to its nearest template: [1 + W]; None when the audio is silent."""
        f = features(audio)
        if f is None:
            return None
        d = dtw_distances(f, self.templates)
        return np.array([d[self.labels == w].min() for w in range(-1, len(self.words))])

    def recognize(self, audio: np.ndarray) -> Recognition:
        """The word `audio` (float [n] at 24 kHz, one answer) says, with its margin and distance."""
        d = self.distances(audio)
        if d is None:
            return Recognition(SILENCE, 0.0, float("inf"))
        noise, d = float(d[0]), d[1:]
        order = np.argsort(d)
        best = float(d[order[0]])
        margin = float(d[order[1]] - best) if np.isfinite(best) else 0.0
        heard = best <= self.reject and noise >= NOISE_RATIO * best
        return Recognition(self.words[order[0]] if heard else UNKNOWN, margin, best)


def answer_segments(c, model_audio: np.ndarray, slack_units: int = 1) -> list[tuple[np.ndarray, str]]:
    """The complete answers of spoken conversation `c` (training/spoken.py; answers cut by a barge-in or
    the end are left out) as (output audio over the answer's units plus up to `slack_units` more while
    the user stays silent, target word); `model_audio` is the model's output, [U, S] or [U * S]."""
    from .spoken import ANSWER_WORDS

    audio = np.asarray(model_audio, np.float32).reshape(c.units, -1)
    if audio.shape != c.user_audio.shape:
        raise ValueError(f"model_audio: expected {c.user_audio.shape} samples per unit, received {audio.shape}")
    out = []
    for t in c.turns:
        if t.spoken_units < t.answer_units:
            continue
        a = t.end + 1
        b = a + t.answer_units
        while b < min(a + t.answer_units + slack_units, c.units) and not c.user_speaking[b]:
            b += 1
        out.append((audio[a:b].reshape(-1), ANSWER_WORDS[t.answer]))
    return out


def word_accuracy(recognizer: Recognizer, conversations, outputs) -> tuple[float, int]:
    """Fraction of complete answers whose output the recognizer hears as the target word, and their count,
    over spoken conversations and the model's output audio for each ([U, S] or [U * S])."""
    hits = total = 0
    for c, audio in zip(conversations, outputs):
        for segment, target in answer_segments(c, audio):
            hits += recognizer.recognize(segment).word == target
            total += 1
    return (hits / total if total else float("nan")), total
