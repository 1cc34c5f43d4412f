"""Input from a person (issue 23, item 4): a recorded WAV plus `streamer card`'s video through `streamer
run --preset tiny-speech`, the refusals (a WAV at another rate, an unknown colour), `--input synthetic`
streaming each preset's own task, and the README's section "The speech model: talk to it" run command by
command. A held-out espeak voice stands in for the person (`training.speech.speakers(0, "heldout")`)."""
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model_src.config import get_preset
from streamer.cli import main
from training import speech
from training.spoken import ANSWER_WORDS
from unitio.wav import read_wav, wav_info, write_wav

ROOT = Path(__file__).resolve().parents[1]
SPEECH = get_preset("tiny-speech")
S = SPEECH.samples_per_unit
ONSET_UNIT = 2  # the word starts 300 samples into this unit, after a quiet start


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def say(word: str, path: Path, units: int, voice: int = 0, rate: int = 24_000) -> int:
    """`word` in held-out speaker `voice`, peak 0.5, over a 0.002 noise floor, written as a 16-bit mono
    WAV of `units` units at `rate` -> the unit the word ends in (the units are counted at 24 kHz)."""
    w = speech.render(word, speech.speakers(0, "heldout")[voice])
    audio = (0.002 * np.random.default_rng(voice).standard_normal(units * S)).astype(np.float32)
    onset = ONSET_UNIT * S + 300
    audio[onset:onset + len(w)] += 0.5 * w / np.abs(w).max()
    if rate != SPEECH.sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(rate, SPEECH.sample_rate)
        audio = resample_poly(audio, rate // g, SPEECH.sample_rate // g).astype(np.float32)
    write_wav(path, audio, rate)
    return (onset + len(w) - 1) // S


def reply_units(answer: str) -> int:
    """Units the model's answer word lasts (training/spoken.py: the rendering in MODEL_VOICE, rounded up)."""
    return -(-len(speech.render(answer, speech.MODEL_VOICE)) // S)


def heard(out_audio: np.ndarray, end: int, answer: str) -> str:
    """What the recognizer hears in the output right after a question ending in unit `end`: the answer's
    units plus one (recognizer.answer_segments' slack)."""
    from training.spoken_metrics import recognizer

    segment = out_audio[(end + 1) * S:(end + 2 + reply_units(answer)) * S]
    return recognizer().recognize(segment).word


def card_units(path: Path, units: int) -> np.ndarray:
    """Per unit of a card video: is the middle pixel not the background (the square is shown)?"""
    from training.conversation import USER_BACKGROUND
    from unitio.media import read_video

    frames = read_video(path, SPEECH.fps, SPEECH.frame_height, SPEECH.frame_width)
    middle = frames[:, SPEECH.frame_height // 2, SPEECH.frame_width // 2].astype(int)
    shown = np.abs(middle - np.array(USER_BACKGROUND)).max(1) > 30
    return shown[:units * SPEECH.frames_per_unit].reshape(units, -1).all(1)


PERSON_CASES = [("red?", "red", "yes", 0), ("green?", "blue", "blue", 1), ("blue?", "blue", "yes", 2),
                ("red?", "green", "green", 3), ("green?", "green", "yes", 4), ("blue?", "red", "red", 5)]


def test_a_person_talks_to_the_speech_model_through_files(tmp_path, capsys):
    """Six held-out speakers (one held-out voice variant, `m4`, at two rates and five pitches) each say a
    colour word and fall silent; `streamer card` shows a square while they speak; `streamer run --preset
    tiny-speech --input speech.wav+face.mp4` writes an out.wav of the input's length in which the model
    answers each of them, in the pause, with a word of its vocabulary, and the right word for at least
    four of the six (at chance, 1 in 4 a case, that happens 3.8 % of the time). The shipped weights get
    four: the two slow high-pitched speakers' words are misheard ("red?" with a green card answered "yes",
    "green?" with a green card answered "red"); the accuracy over 105 held-out answers is
    docs/TRAINING.md's (0.87), this checks the file path carries it. What they say is reported."""
    from training.spoken_metrics import recognizer

    units, right, answers = 12, 0, []
    for word, colour, answer, voice in PERSON_CASES:
        case = tmp_path / f"voice{voice}"
        case.mkdir()
        end = say(word, case / "speech.wav", units, voice=voice)
        assert end + 2 + reply_units(answer) <= units  # room for the answer and its slack
        assert main(["card", "--colour", colour, "--like", str(case / "speech.wav"), "--out", str(case / "face.mp4")]) == 0
        shown = card_units(case / "face.mp4", units)
        assert shown[ONSET_UNIT:end + 1].all() and not shown[:ONSET_UNIT].any() and not shown[end + 1:].any(), shown
        capsys.readouterr()
        assert main(["run", "--preset", "tiny-speech", "--input", f"{case / 'speech.wav'}+{case / 'face.mp4'}",
                     "--out", str(case / "out")]) == 0
        assert "weights: embedded trained tiny-speech" in capsys.readouterr().err
        out = read_wav(case / "out" / "out.wav", SPEECH.sample_rate)
        assert len(out) == units * S == wav_info(case / "speech.wav", SPEECH.sample_rate).samples
        got = heard(out, end, answer)
        answers.append(f"{word} + {colour} card -> {got!r} (right: {answer!r})")
        assert got in ANSWER_WORDS, answers  # a word, not silence or noise
        right += got == answer
    from helpers import report

    report("a person through the files (held-out voices): " + "; ".join(answers))
    assert right >= 4, answers
    assert recognizer().words == ANSWER_WORDS


def test_the_answer_check_hears_a_planted_answer_and_not_a_wrong_one():
    """The check above is sound: the model's target answer placed right after the question is heard as that
    word, another answer word is not, and silence is not."""
    end = 5
    for answer, planted in (("yes", "yes"), ("blue", "blue"), ("blue", "green")):
        out = np.zeros(12 * S, np.float32)
        reply = speech.render(planted, speech.MODEL_VOICE)
        out[(end + 1) * S:(end + 1) * S + len(reply)] = reply
        assert (heard(out, end, answer) == answer) == (answer == planted), (answer, planted)
    assert heard(np.zeros(12 * S, np.float32), end, "yes") != "yes"


def test_card_is_the_wavs_length_in_frames_and_run_takes_the_pair(tmp_path, capsys):
    """A WAV that is no whole number of frames or units: the card holds ceil(samples / 960) frames, which
    `streamer run`'s reader takes without --pad (the tail left out) and with --pad (one more unit);
    --always shows the square in every unit."""
    from unitio.media import FileUnits, count_frames

    audio = (0.002 * np.random.default_rng(1).standard_normal(3 * 24_000 + 100)).astype(np.float32)
    write_wav(tmp_path / "speech.wav", audio, 24_000)
    assert main(["card", "--colour", "green", "--like", str(tmp_path / "speech.wav"), "--always",
                 "--out", str(tmp_path / "face.mp4")]) == 0
    assert count_frames(tmp_path / "face.mp4") == 76 == math.ceil(len(audio) / 960)
    assert len(FileUnits(tmp_path / "speech.wav", tmp_path / "face.mp4", SPEECH)) == 18
    assert len(FileUnits(tmp_path / "speech.wav", tmp_path / "face.mp4", SPEECH, fit="pad")) == 19
    assert card_units(tmp_path / "face.mp4", 18).all()
    assert main(["card", "--colour", "green", "--like", str(tmp_path / "speech.wav"),
                 "--out", str(tmp_path / "quiet.mp4")]) == 0  # noise only: never shown, and it says so
    assert "the square is never shown" in capsys.readouterr().err
    assert not card_units(tmp_path / "quiet.mp4", 18).any()


def test_a_wav_at_another_rate_is_refused_by_card_and_run(tmp_path, capsys):
    """A 44.1 kHz WAV: exit 2 and a message naming 24000 and 44100, from `card` (no video left) and `run`."""
    say("red?", tmp_path / "good.wav", 8)
    assert main(["card", "--colour", "red", "--like", str(tmp_path / "good.wav"),
                 "--out", str(tmp_path / "face.mp4")]) == 0
    say("red?", tmp_path / "cd.wav", 8, rate=44_100)
    capsys.readouterr()
    assert main(["card", "--colour", "red", "--like", str(tmp_path / "cd.wav"), "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "24000" in err and "44100" in err and "cd.wav" in err, err
    assert not (tmp_path / "x.mp4").exists()
    assert main(["run", "--preset", "tiny-speech", "--input", f"{tmp_path / 'cd.wav'}+{tmp_path / 'face.mp4'}",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "24000" in err and "44100" in err and "cd.wav" in err, err


def test_an_unknown_colour_is_refused(tmp_path, capsys):
    from streamer.card_cmds import COLOURS
    from training.conversation import COLOUR_NAMES

    assert COLOURS == COLOUR_NAMES  # the card draws training's colours by name
    say("red?", tmp_path / "speech.wav", 8)
    assert main(["card", "--colour", "purple", "--like", str(tmp_path / "speech.wav"),
                 "--out", str(tmp_path / "face.mp4")]) == 2
    err = capsys.readouterr().err
    assert "purple" in err and all(c in err for c in COLOUR_NAMES), err
    assert not (tmp_path / "face.mp4").exists()


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def test_synthetic_input_is_each_presets_own_task():
    """`--input synthetic`: for tiny exactly what ConversationUnits made before (60 units: two chunks); for
    tiny-speech the spoken conversation's user side, made 48 units at a time (seed 0, then [0, 1]), which
    the tone conversation is not (the old branch would fail here)."""
    from streamer.outputs import read_input
    from training.conversation import CHUNK_UNITS, ConversationUnits
    from training.tasks import conversation

    tiny = get_preset("tiny")
    got = list(read_input("synthetic", tiny, 60, 3))
    assert _same(got, list(ConversationUnits(tiny, 60, 3))) and len(got) == 60
    got = list(read_input("synthetic", SPEECH, 50, 0))
    want = conversation(SPEECH, CHUNK_UNITS, 0).units_of(SPEECH) + conversation(SPEECH, 2, [0, 1]).units_of(SPEECH)
    assert _same(got, want)
    assert not _same(got, list(ConversationUnits(SPEECH, 50, 0)))
    assert len(read_input("synthetic", SPEECH, None, 0)) == 50


def _readme_commands() -> list[str]:
    """The commands of the README's section "The speech model: talk to it", in order (comments cut)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## The speech model: talk to it\n", 1)[1].split("\n## ", 1)[0]
    commands, inside = [], False
    for line in section.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside and line.strip():
            commands.append(line.split("  #")[0].strip())
    return commands


def test_the_readme_speech_section_runs(tmp_path, capsys, monkeypatch):
    """Every command of the README's speech section, in order, in a fresh folder: `arecord` (no microphone
    here) is a held-out espeak voice saying "blue?" written as arecord would (3 s, 24 kHz mono 16-bit);
    `ffmpeg` (imageio-ffmpeg's binary) converts that recording made into a 44.1 kHz stereo AAC any.m4a;
    `streamer` lines run through the CLI in this process, `python -c` in a child. The outputs are checked."""
    import imageio_ffmpeg

    monkeypatch.chdir(tmp_path)
    commands = _readme_commands()
    kinds = [c.split()[0] for c in commands]
    assert kinds.count("streamer") == 4 and {"arecord", "ffmpeg", "python"} <= set(kinds), commands
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    end = None
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "arecord":
            assert argv[argv.index("-r") + 1] == "24000" and argv[argv.index("-c") + 1] == "1"
            end = say("blue?", tmp_path / argv[-1], 3 * 24_000 // S + 1)
            audio = read_wav(argv[-1], 24_000)[:3 * 24_000]
            write_wav(argv[-1], audio, 24_000)  # exactly -d 3 seconds
        elif argv[0] == "ffmpeg":
            from scipy.signal import resample_poly

            phone = resample_poly(read_wav("speech.wav", 24_000), 147, 80).astype(np.float32)
            write_wav("phone.wav", phone, 44_100)
            subprocess.run([ffmpeg, "-v", "error", "-y", "-i", "phone.wav", "-ac", "2", "-c:a", "aac", argv[2]],
                           check=True, stdin=subprocess.DEVNULL)
            Path(argv[-1]).unlink()  # the documented command makes it anew
            subprocess.run([ffmpeg, "-v", "error", *argv[1:]], check=True, stdin=subprocess.DEVNULL)
            converted = read_wav(argv[-1], 24_000)  # the reader `run` uses takes it
            assert abs(len(converted) - 72_000) < 2_048, len(converted)  # AAC's priming, trimmed or not
        elif argv[0] == "python":
            env = {**os.environ, "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            lines = done.stdout.splitlines()
            assert len(lines) == 48 and lines[0].startswith("unit   0") and "model: yes" in done.stdout, lines[:3]
        elif argv[0] == "streamer":
            capsys.readouterr()
            assert main(argv[1:]) == 0, command
            said = capsys.readouterr().err
            if argv[1] == "card":
                assert "wrote face.mp4" in said and card_units(Path("face.mp4"), 18)[ONSET_UNIT:end + 1].all(), said
        else:
            pytest.fail(f"the README's speech section shows a command this test cannot run: {command}")
    person = read_wav("out/out.wav", 24_000)
    held = wav_info("speech.wav", 24_000).samples
    assert len(person) == held // S * S  # the whole units of the recording (the last partial one left out)
    assert len(read_wav("out27/out.wav", 24_000)) == 48 * S
    assert Path("out27/out.mp4").stat().st_size > 0 and Path("out/text.json").is_file()


def test_a_long_silence_written_by_hand_gets_no_answer(tmp_path, capsys):
    """A conversation written here, not by the generator: a held-out voice asks "blue?" (red card), then
    says nothing for 60 units (9.6 s), then asks "green?". The model answers each question in the units
    right after it and is silent through the whole pause (the tone model, given a 9-unit pause, answered
    a question nobody asked)."""
    units, second = 80, 66
    rng = np.random.default_rng(5)
    audio = (0.002 * rng.standard_normal(units * S)).astype(np.float32)
    ends = []
    for k, (word, voice) in enumerate((("blue?", 3), ("green?", 3))):
        w = speech.render(word, speech.speakers(0, "heldout")[voice])
        onset = (ONSET_UNIT if k == 0 else second) * S + 300
        audio[onset:onset + len(w)] += 0.4 * w / np.abs(w).max()
        ends.append((onset + len(w) - 1) // S)
    write_wav(tmp_path / "speech.wav", audio, 24_000)
    assert main(["card", "--colour", "red", "--like", str(tmp_path / "speech.wav"),
                 "--out", str(tmp_path / "face.mp4")]) == 0
    assert main(["run", "--preset", "tiny-speech", "--input", f"{tmp_path / 'speech.wav'}+{tmp_path / 'face.mp4'}",
                 "--out", str(tmp_path / "out")]) == 0
    out = read_wav(tmp_path / "out" / "out.wav", SPEECH.sample_rate)
    from training.spoken_metrics import ACTIVE_RMS

    active = np.sqrt((out.reshape(units, S).astype(np.float64) ** 2).mean(1)) > ACTIVE_RMS
    due = np.zeros(units, bool)
    for end in ends:
        due[end + 1:end + 1 + reply_units("red")] = True
    assert heard(out, ends[0], "red") == "red" and heard(out, ends[1], "red") == "red"
    pause = np.arange(units) > ends[0] + 1 + reply_units("red")
    pause &= np.arange(units) < second
    assert active[pause].mean() < 0.05, np.flatnonzero(active & pause)
