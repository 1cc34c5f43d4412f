"""Speech made here (training/speech.py), the spoken colour conversation (training/spoken.py) and the
word recognizer of the model's answers (training/recognizer.py)."""
from dataclasses import replace

import numpy as np
import pytest

from helpers import report
from training import recognizer as rz
from training import speech, spoken

CHANCE = 1 / len(spoken.ANSWER_WORDS)


@pytest.fixture(scope="module")
def recognizer():
    return rz.Recognizer(spoken.ANSWER_WORDS)


@pytest.fixture(scope="module")
def conversations():
    """Two training and two held-out conversations of 150 units (24 s) each."""
    return [spoken.make_spoken(150, s, split) for s in (0, 1) for split in ("train", "heldout")]


def test_render_is_24khz_speech_and_deterministic():
    raw = speech.synthesize("green?", speech.MODEL_VOICE)
    assert raw.dtype == np.int16 and len(raw) > 0.2 * speech.ESPEAK_RATE
    x = speech.render("green?")
    assert x.dtype == np.float32 and x.ndim == 1 and not x.flags.writeable
    # 24 kHz: the trimmed rendering is at most the raw one's length x 24000 / 22050, and close to it
    assert 0.7 * len(raw) * 24_000 / 22_050 < len(x) <= len(raw) * 24_000 / 22_050 + 2
    assert np.sqrt(np.mean(x ** 2)) > 0.03 and np.abs(x).max() <= 1.0
    # deterministic: rendered afresh after other voices (libespeak-ng's hidden state is reset each time)
    speech._render.cache_clear()
    speech.render("blue green red", speech.Voice("en-gb-scotland", "f2", 240, 80))
    speech.render("yes", speech.Voice("en", "whisper", 125, 25))
    np.testing.assert_array_equal(speech.render("green?"), x)
    for voice in (speech.Voice("en", "whisper", 125, 25), speech.Voice("en-us", "f5", 150, 40)):  # noise-driven voices
        a = speech.synthesize("yes", voice)
        speech.synthesize("red blue", speech.Voice("en-029", "m3", 205, 70))
        np.testing.assert_array_equal(speech.synthesize("yes", voice), a)
    # the voice matters: another speaker's rendering of the word is not the model's
    other = speech.render("green?", speech.Voice("en-gb-x-rp", "f3", 205, 70))
    assert len(other) != len(x) or not np.array_equal(other, x)


def test_rendering_state_is_reset_and_checked(monkeypatch):
    """The planted bug: libespeak-ng left loaded between renderings (its state carries over) is refused."""
    import _ctypes

    leaked = []

    def keep_loaded(lib):
        lib.espeak_Terminate()
        leaked.append(lib._handle)

    monkeypatch.setattr(speech, "_unload", keep_loaded)
    monkeypatch.setattr(speech, "_fresh_checked", False)
    try:
        with pytest.raises(RuntimeError, match="keeps its state between renderings"):
            speech.synthesize("green", speech.MODEL_VOICE)
    finally:
        monkeypatch.undo()
        for handle in leaked:
            _ctypes.dlclose(handle)
    monkeypatch.setattr(speech, "_fresh_checked", False)
    speech.synthesize("green", speech.MODEL_VOICE)  # unloaded again: the check passes
    assert speech._fresh_checked


def test_rendering_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(w, v) for w in spoken.ANSWER_WORDS for v in speech.speakers(0, "heldout")[::900]]
    serial = [speech.synthesize(w, v) for w, v in jobs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda job: speech.synthesize(*job), jobs))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="Voice.variant: expected"):
        speech.Voice("en-us", "no_such_variant")
    with pytest.raises(ValueError, match=r"Voice.rate: expected an int in \[80, 450\], received 1000"):
        speech.Voice(rate=1000)
    with pytest.raises(ValueError, match="Voice.accent: expected one of"):
        speech.Voice("fr")
    with pytest.raises(ValueError, match="text: expected a non-empty string"):
        speech.render("  ")
    with pytest.raises(ValueError, match="split: expected 'train' or 'heldout'"):
        speech.speakers(0, "test")
    with pytest.raises(ValueError, match="units: expected a positive int"):
        spoken.make_spoken(0, 1)
    with pytest.raises(ValueError, match="audio: expected a 1-D waveform"):
        rz.features(np.zeros((2, 100), np.float32))


def test_speakers_split_disjoint():
    assert set(speech.USER_VARIANTS) <= speech.variants()  # every variant exists in the wheel's data
    train, held = speech.speakers(0, "train"), speech.speakers(0, "heldout")
    assert len(train) > 1000 and len(held) > 300
    assert not set(train) & set(held)
    assert not {v.variant for v in train} & {v.variant for v in held}  # held-out voices are never heard
    assert speech.MODEL_VOICE not in set(train) | set(held)
    assert speech.speakers(0, "train") == train and speech.speakers(1, "heldout") != held
    # no user's voice clips, even at the highest pitch and the slowest rate
    for variant in speech.USER_VARIANTS:
        assert np.abs(speech.synthesize("green?", speech.Voice("en-us", variant, 125, 85, volume=speech.USER_VOLUME))).max() < 32000


def test_recognizer_hears_words_not_waveforms(recognizer):
    """The users' voices, never the model's, still read as the words they say (the templates are the
    model's voice only): the recognizer matches words, not one exact waveform."""
    rng = np.random.default_rng(3)
    acc = {}
    for split in ("train", "heldout"):
        pool = speech.speakers(0, split)
        picks = [pool[i] for i in rng.choice(len(pool), 24, replace=False)]
        said = [spoken.ANSWER_WORDS[i % 4] for i in range(len(picks))]
        acc[split] = np.mean([recognizer.recognize(np.pad(speech.render(w, v), 2400)).word == w for w, v in zip(said, picks)])
    report(f"recognizer on users' voices (model-voice templates): train speakers {acc['train']:.3f}, "
           f"held-out speakers {acc['heldout']:.3f} (chance {CHANCE:.2f})")
    assert min(acc.values()) >= 0.6


def test_conversation_is_seeded_and_consistent(tiny, conversations):
    assert tiny.samples_per_unit == spoken.SAMPLES_PER_UNIT and tiny.sample_rate == speech.SAMPLE_RATE
    c, again = conversations[0], spoken.make_spoken(150, 0, "train")
    for name in ("user_audio", "model_audio", "words", "user_speaking", "model_speaking", "shown"):
        np.testing.assert_array_equal(getattr(c, name), getattr(again, name))
    assert c.speaker == again.speaker and replace(c.speaker, range=50) in set(speech.speakers(0, "train"))
    assert conversations[1].speaker in set(speech.speakers(0, "heldout")) and conversations[1].warp == 1.0
    assert not np.array_equal(c.user_audio, spoken.make_spoken(150, 2, "train").user_audio)
    units = list(c)
    assert len(units) == 150 and units[0][0].shape == (3840,) and units[0][1].shape == (3840,)
    for c in conversations:
        assert len(c.turns) >= 3
        assert not (c.user_speaking & c.model_speaking).any()  # full duplex: never both
        for t in c.turns:
            # the answer: yes when the word names the colour shown, else the colour shown
            assert spoken.ANSWER_WORDS[t.answer] == ("yes" if t.asked == t.shown else spoken.COLOUR_NAMES[t.shown])
            assert not c.user_speaking[t.end + 1:t.end + 1 + t.spoken_units].any()
            assert (c.words[t.end + 1:t.end + 1 + t.spoken_units] == spoken.WORD_IDS[t.answer]).all()
            assert (c.shown[t.start:t.end + 1] == t.shown).all()
            assert np.abs(c.user_audio[t.start:t.end + 1]).max() > 0.05  # the user is heard
        for t, nxt in zip(c.turns, c.turns[1:] + [None]):  # an answer stops only for a question (or the end)
            if t.spoken_units < t.answer_units:
                assert (nxt is not None and nxt.start == t.end + 1 + t.spoken_units) or t.end + 1 + t.spoken_units == c.units
        quiet = ~c.model_speaking
        assert (c.words[quiet] == spoken.SIL).all() and not c.model_audio[quiet].any()
    frames = conversations[0].model_frames(tiny.frame_height, tiny.frame_width, tiny.frames_per_unit)
    assert frames.shape == (150 * tiny.frames_per_unit, tiny.frame_height, tiny.frame_width, 3)
    user_frames = conversations[0].user_frames(tiny.frame_height, tiny.frame_width, tiny.frames_per_unit)
    assert user_frames.shape == frames.shape


def test_conversation_is_the_same_in_another_process(tmp_path):
    """A seed gives the same audio in a fresh process that rendered other speech first (what 2 DDP
    processes need), run from a folder that is not the repository, without importing torch."""
    import hashlib
    import subprocess
    import sys

    code = ("import hashlib, sys; from training import recognizer, speech, spoken; "
            "speech.render('hello there', speech.Voice('en', 'f4', 205, 70)); "
            "c = spoken.make_spoken(60, 7, 'heldout'); "
            "print(hashlib.sha256(c.user_audio.tobytes() + c.model_audio.tobytes()).hexdigest()); "
            "print(sorted({'torch', 'model_src'} & set(sys.modules)))")
    child = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    digest, heavy = child.stdout.split()[0], child.stdout.strip().splitlines()[-1]
    c = spoken.make_spoken(60, 7, "heldout")
    assert digest == hashlib.sha256(c.user_audio.tobytes() + c.model_audio.tobytes()).hexdigest()
    assert heavy == "[]"  # speech, the conversation and the recognizer need neither torch nor the model


def test_long_pauses_and_barge_ins_occur():
    cs = [spoken.make_spoken(300, s) for s in range(5)]
    gaps = [b.start - a.end - 1 for c in cs for a, b in zip(c.turns, c.turns[1:])]
    report(f"spoken conversations: pauses between questions {min(gaps)}-{max(gaps)} units, "
           f"{sum(g >= 16 for g in gaps)} of {len(gaps)} >= 16 units; barge-ins {sum(len(c.barge_ins) for c in cs)}")
    assert max(gaps) >= 25  # 4 s and more of silence
    assert sum(len(c.barge_ins) for c in cs) >= 3
    c = next(c for c in cs if c.barge_ins)
    k = c.barge_ins[0]
    assert c.model_speaking[k - 1] and not c.model_speaking[k] and c.user_speaking[k]


def test_targets_score_one_noise_and_wrong_words_do_not(recognizer, conversations):
    targets = [c.model_audio for c in conversations]
    acc, n = rz.word_accuracy(recognizer, conversations, targets)
    rng = np.random.default_rng(0)
    acc_noisy, _ = rz.word_accuracy(recognizer, conversations, _noisy(targets))  # with noise at 20 dB SNR
    # random audio: white noise of speech loudness, and silence
    noise = [(0.1 * rng.standard_normal(t.shape)).astype(np.float32) for t in targets]
    acc_noise, _ = rz.word_accuracy(recognizer, conversations, noise)
    acc_silent, _ = rz.word_accuracy(recognizer, conversations, [np.zeros_like(t) for t in targets])
    # wrong words: every answer replaced by the next answer word, in the model's voice
    wrong = []
    for c in conversations:
        w = np.zeros_like(c.model_audio)
        for t in c.turns:
            reply = speech.render(spoken.ANSWER_WORDS[(t.answer + 1) % 4])[:t.spoken_units * 3840]
            w[t.end + 1:].reshape(-1)[:len(reply)] = reply
        wrong.append(w)
    acc_wrong, _ = rz.word_accuracy(recognizer, conversations, wrong)
    report(f"recognizer on {n} answers: targets {acc:.3f}, targets + noise at 20 dB SNR {acc_noisy:.3f}, "
           f"white noise {acc_noise:.3f}, silence {acc_silent:.3f}, wrong words {acc_wrong:.3f} (chance {CHANCE:.2f})")
    assert n >= 20
    assert acc >= 0.95 and acc_noisy >= 0.9
    assert acc_noise <= CHANCE and acc_silent == 0.0 and acc_wrong <= 0.05


def test_recognizer_margins_and_silence(recognizer):
    for word in spoken.ANSWER_WORDS:
        r = recognizer.recognize(np.pad(speech.render(word), (1000, 3000)))
        assert r.word == word and r.margin > 1.0
    assert recognizer.recognize(np.zeros(7680, np.float32)).word == rz.SILENCE
    assert recognizer.recognize(0.005 * np.random.default_rng(1).standard_normal(7680)).word == rz.SILENCE
    assert recognizer.recognize(0.3 * np.random.default_rng(2).standard_normal(7680)).word == rz.UNKNOWN


def _answers_replaced(conversations, make):
    """Model outputs with every answer replaced by make(its word's rendering) from the answer's first sample."""
    out = []
    for c in conversations:
        w = np.zeros(c.model_audio.size, np.float32)
        for t in c.turns:
            a = (t.end + 1) * c.model_audio.shape[1]
            y = make(speech.render(spoken.ANSWER_WORDS[t.answer]))[:(t.spoken_units + 1) * c.model_audio.shape[1]]
            w[a:a + len(y)] = y[:len(w) - a]
        out.append(w.reshape(c.model_audio.shape))
    return out


def test_recognizer_forgives_what_is_not_the_word(recognizer, conversations):
    """A right word said quieter, later, band-limited or faster / slower (a codec's and a model's
    imperfections) still counts: the metric is about the word."""
    from scipy.signal import butter, resample_poly, sosfilt

    lowpass = butter(8, 2000, fs=speech.SAMPLE_RATE, output="sos")
    cases = {"gain 0.15": lambda y: 0.15 * y, "120 ms late": lambda y: np.pad(y, (2880, 0)),
             "low-passed at 2 kHz": lambda y: sosfilt(lowpass, y).astype(np.float32),
             "0.8x as long": lambda y: resample_poly(y, 4, 5).astype(np.float32),
             "1.25x as long": lambda y: resample_poly(y, 5, 4).astype(np.float32)}
    cs = conversations[:2]
    acc = {name: rz.word_accuracy(recognizer, cs, _answers_replaced(cs, make))[0] for name, make in cases.items()}
    report("recognizer on altered right answers: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    assert min(acc.values()) >= 0.95


def _noisy(targets, snr_db: float = 20.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [t + (10 ** (-snr_db / 20) * np.sqrt(np.mean(t[t != 0] ** 2)) * rng.standard_normal(t.shape)).astype(np.float32)
            for t in targets]


def _diagonal_only(cost):
    """DTW without warping (one frame of each side per step): the mutation of `_dtw_rows`."""
    acc = np.full_like(cost, np.inf)
    acc[:, 0, 0] = cost[:, 0, 0]
    for i in range(1, cost.shape[1]):
        acc[:, i, 1:] = cost[:, i, 1:] + acc[:, i - 1, :-1]
    return acc


def test_planted_mutations_are_caught(recognizer, conversations, monkeypatch):
    """Shuffled template labels, templates in another voice, and DTW without warping each drop accuracy."""
    targets = [c.model_audio for c in conversations]
    noisy = _noisy(targets)
    labels = np.array(recognizer.labels)
    monkeypatch.setattr(recognizer, "labels", np.where(labels >= 0, (labels + 1) % len(spoken.ANSWER_WORDS), labels))
    acc_shuffled, _ = rz.word_accuracy(recognizer, conversations, targets)
    monkeypatch.undo()
    wrong_voice = rz.Recognizer(spoken.ANSWER_WORDS, speech.Voice("en", "klatt4", 125, 85))
    acc_voice, _ = rz.word_accuracy(wrong_voice, conversations, noisy)
    monkeypatch.setattr(rz, "_dtw_rows", _diagonal_only)
    acc_diagonal, _ = rz.word_accuracy(recognizer, conversations, targets)
    monkeypatch.undo()
    acc, _ = rz.word_accuracy(recognizer, conversations, noisy)
    report(f"recognizer, planted mutations: shuffled labels {acc_shuffled:.3f}, templates in another voice "
           f"(noisy targets) {acc_voice:.3f} against {acc:.3f}, DTW without warping {acc_diagonal:.3f}")
    assert acc_shuffled <= 0.05 and acc_voice <= 0.8 and acc_diagonal <= 0.85
    assert acc >= 0.9


def test_training_speakers_are_warped_and_held_out_ones_never():
    """A training conversation's speaker is a pool voice with a pitch range and a vocal-tract warp of its
    own (more speakers than the pool holds); a held-out one is the pool voice exactly, unwarped."""
    train = [spoken.make_spoken(12, 1_000_000 + s, "train") for s in range(40)]
    held = [spoken.make_spoken(12, 100_000 + s, "heldout") for s in range(10)]
    lo, hi = spoken.PITCH_RANGES
    assert all(lo <= c.speaker.range <= hi for c in train) and len({c.speaker.range for c in train}) > 20
    warps = np.array([c.warp for c in train])
    assert spoken.WARP_RANGE[0] <= warps.min() < 0.95 and 1.08 < warps.max() <= spoken.WARP_RANGE[1]
    assert all(c.warp == 1.0 and c.speaker in set(speech.speakers(0, "heldout")) for c in held)
    # the speaker draws are a stream of their own: the pool voice is the one an unwarped draw picks
    again = spoken.make_spoken(12, 1_000_007, "train")
    assert again.speaker == train[7].speaker and again.warp == train[7].warp


def test_warp_plays_faster_pitch_and_formants_together():
    """warped(x, w): x played w times as fast, so a 200 Hz tone becomes 200 w Hz and lasts 1 / w as long."""
    sr, f = speech.SAMPLE_RATE, 200.0
    x = np.sin(2 * np.pi * f * np.arange(sr) / sr).astype(np.float32)
    for w in (0.85, 1.18):
        y = spoken.warped(x, w)
        assert abs(len(y) - len(x) / w) <= 2
        peak = np.argmax(np.abs(np.fft.rfft(y * np.hanning(len(y))))) * sr / len(y)
        assert abs(peak - f * w) < 3, (w, peak)
    assert spoken.warped(x, 1.0) is x
