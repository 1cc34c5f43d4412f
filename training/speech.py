"""Speech made on this machine: espeak-ng (the `espeakng-loader` wheel's libespeak-ng and voices, loaded
with ctypes), rendered to float32 at 24 kHz. Nothing is downloaded.

- `Voice` is a speaker: an English accent (`en-us`, `en-gb-scotland`, ...), a voice variant (espeak's
  `voices/!v` files: `m3`, `f2`, `klatt4`, ...; "" is the plain voice), a rate (words per minute), a
  pitch and a pitch range (0-100) and a volume (0-200).
- `render(text, voice)` -> float32 [n] in [-1, 1] at 24 kHz, silence trimmed at both ends. It is
  deterministic (the same text and voice give the same samples in any process, whatever was rendered
  before): libespeak-ng keeps hidden state between utterances (a pitch-flutter phase, a glottal toggle,
  its noise generator), so each rendering loads the library afresh (dlopen, ~3 ms), seeds its noise, and
  unloads it. Renderings are cached in memory (an LRU of `CACHE_SIZE`).
- `speakers(seed, split)`: the users' speakers, accent x variant x rate x pitch. "train" and "heldout"
  are disjoint in the variant itself: a held-out speaker's voice variant is never heard in training.
  `MODEL_VOICE` (the plain voice) is none of them.

22,050 Hz -> 24,000 Hz by scipy.signal.resample_poly (160 / 147, a Kaiser-windowed polyphase FIR).
"""
from __future__ import annotations

import ctypes
import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 24_000
ESPEAK_RATE = 22_050  # what libespeak-ng synthesizes at
CACHE_SIZE = 4096  # renderings kept (a word is ~10k samples, 40 kB)
TRIM_LEVEL = 0.01  # leading / trailing samples quieter than this (relative to the peak) are cut

ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
# espeak's variants that sound like a person talking (no clipping, no novelty effects), the users' voices
USER_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "Alex", "Alicia", "Andrea", "Andy", "Annie",
    "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Lee", "Marco", "Mario", "Michael",
    "Mike", "Nguyen", "Reed", "RicishayMax", "RicishayMax2", "adam", "anika", "announcer", "aunty", "belinda",
    "benjamin", "boris", "caleb", "croak", "david", "ed", "edward", "edward2", "grandma", "grandpa",
    "gustave", "ian", "iven2", "iven3", "iven4", "john", "kaukovalta", "linda", "marcelo", "max", "michel",
    "miguel", "mike2", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "robosoft",
    "robosoft6", "sandro", "shelby", "steph", "travis", "victor", "whisper", "whisperf", "zac",
)
RATES_WPM = (125, 150, 175, 205, 240)
PITCHES = (25, 40, 55, 70, 85)
HELDOUT_FRACTION = 0.25  # of the variants
USER_VOLUME = 60  # espeak's volume for the users: some variants clip at 100 (the conversation sets the loudness)


@dataclass(frozen=True)
class Voice:
    """A speaker: accent, variant ("" = espeak's plain voice), rate (words per minute, 80-450), pitch and
    pitch range (0-100), volume (0-200, espeak's 100 = normal)."""

    accent: str = "en-us"
    variant: str = ""
    rate: int = 175
    pitch: int = 50
    range: int = 50
    volume: int = 100

    def __post_init__(self) -> None:
        checks = (("rate", self.rate, 80, 450), ("pitch", self.pitch, 0, 100), ("range", self.range, 0, 100),
                  ("volume", self.volume, 0, 200))
        for name, value, lo, hi in checks:
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"Voice.{name}: expected an int in [{lo}, {hi}], received {value!r}")
        if self.accent not in ACCENTS:
            raise ValueError(f"Voice.accent: expected one of {', '.join(ACCENTS)}; received {self.accent!r}")
        if self.variant and self.variant not in variants():
            raise ValueError(f"Voice.variant: expected '' or one of espeak's variants ({len(variants())} in "
                             f"{_data_path() / 'voices' / '!v'}); received {self.variant!r}")

    @property
    def espeak_name(self) -> str:
        return f"{self.accent}+{self.variant}" if self.variant else self.accent


MODEL_VOICE = Voice("en-us", "", 165, 45)  # the model's own voice: espeak's plain voice, never a user's


@functools.cache
def _data_path() -> Path:
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


@functools.cache
def variants() -> frozenset[str]:
    """The voice variants this espeak-ng data folder holds (file names of voices/!v)."""
    folder = _data_path() / "voices" / "!v"
    return frozenset(p.name for p in folder.iterdir() if p.is_file() and re.fullmatch(r"[A-Za-z0-9_]+", p.name))


# --- libespeak-ng through ctypes -------------------------------------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()  # the library is one global state
_chunks: list[np.ndarray] = []


def _collect(wav, n, events) -> int:
    if n > 0:
        _chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
    return 0  # continue


_collect_c = _CALLBACK(_collect)  # kept alive for the library's lifetime


def _load():
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(_data_path()).encode(), _INITIALIZE_DONT_EXIT)
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"libespeak-ng: expected to synthesize at {ESPEAK_RATE} Hz, it reports {rate}")
    lib.espeak_SetSynthCallback(_collect_c)
    return lib


def _unload(lib) -> None:
    import _ctypes

    lib.espeak_Terminate()
    handle = lib._handle
    del lib
    _ctypes.dlclose(handle)  # the next _load() starts from the library's initial state


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """`text` in `voice` as espeak makes it: int16 [n] at 22,050 Hz, not trimmed, not cached."""
    if not isinstance(text, str) or not text.strip() or len(text) > 1000:
        raise ValueError(f"text: expected a non-empty string of at most 1000 characters, received {text!r:.80}")
    if not isinstance(voice, Voice):
        raise ValueError(f"voice: expected a training.speech.Voice, received {type(voice).__name__}")
    with _LOCK:
        if not _fresh_checked:
            _check_fresh()
        return _synthesize(text, voice)


_fresh_checked = False


def _check_fresh() -> None:
    """Once per process: a rendering must not depend on the one before it (it does when the library stays
    loaded, e.g. because another module of this process loaded the same libespeak-ng)."""
    global _fresh_checked
    first = _synthesize("yes", MODEL_VOICE)
    _synthesize("red blue", Voice("en-029", "f2", 240, 80))
    if not np.array_equal(_synthesize("yes", MODEL_VOICE), first):
        raise RuntimeError("libespeak-ng keeps its state between renderings in this process (it was not unloaded: "
                           "is it also loaded by another module?), so speech would not be deterministic")
    _fresh_checked = True


def _synthesize(text: str, voice: Voice) -> np.ndarray:
    """One rendering by a freshly loaded library (the caller holds _LOCK)."""
    lib = _load()
    try:
        lib.espeak_ng_SetRandSeed(1)
        if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
            raise RuntimeError(f"libespeak-ng has no voice {voice.espeak_name!r}")
        for param, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.range), (_VOLUME, voice.volume)):
            lib.espeak_SetParameter(param, value, 0)
        data = text.encode("utf-8") + b"\0"
        _chunks.clear()
        err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"libespeak-ng could not synthesize {text!r} (error {err})")
        out = np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
        _chunks.clear()
    finally:
        _unload(lib)
    return out


def resample(x: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """float [n] at rate_in -> float32 [~n * rate_out / rate_in] (band-limited, polyphase)."""
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(np.asarray(x, np.float64), rate_out // g, rate_in // g).astype(np.float32)


def trim(x: np.ndarray, level: float = TRIM_LEVEL) -> np.ndarray:
    """x [n] without its leading and trailing samples quieter than `level` x its peak."""
    loud = np.flatnonzero(np.abs(x) > level * max(float(np.abs(x).max(initial=0.0)), 1e-9))
    return x[loud[0]:loud[-1] + 1] if len(loud) else x[:0]


@functools.lru_cache(maxsize=CACHE_SIZE)
def _render(text: str, voice: Voice) -> np.ndarray:
    wave = resample(synthesize(text, voice).astype(np.float32) / 32768.0, ESPEAK_RATE)
    wave = trim(np.clip(wave, -1.0, 1.0))
    if len(wave) == 0:
        raise RuntimeError(f"libespeak-ng rendered {text!r} in {voice.espeak_name} as silence")
    wave.flags.writeable = False  # shared by every caller of the cache
    return wave


def render(text: str, voice: Voice = MODEL_VOICE) -> np.ndarray:
    """`text` spoken in `voice` -> float32 [n] in [-1, 1] at 24 kHz, trimmed; read-only (cached, shared)."""
    return _render(text, voice)


@functools.lru_cache(maxsize=16)
def speakers(seed: int = 0, split: str = "train") -> tuple[Voice, ...]:
    """The users' speakers of `split` ("train" or "heldout"): every accent x rate x pitch for the variants
    of that split. The variants are split by `seed` (HELDOUT_FRACTION held out), so the two splits of one
    seed share no speaker and no variant."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split: expected 'train' or 'heldout', received {split!r}")
    order = np.random.default_rng([int(seed), 23]).permutation(len(USER_VARIANTS))
    n_held = round(HELDOUT_FRACTION * len(USER_VARIANTS))
    chosen = sorted(order[:n_held] if split == "heldout" else order[n_held:])
    return tuple(Voice(a, USER_VARIANTS[v], r, p, volume=USER_VOLUME)
                 for v in chosen for a in ACCENTS for r in RATES_WPM for p in PITCHES)
