"""The browser page with the speech model (issue 23, items 4-5): `streamer serve` of tiny-speech engines,
headless Chromium whose fake microphone plays a held-out espeak voice asking a colour word in a loop and
whose fake camera shows `streamer card`'s square while it asks. What a person would see: the model's
answers as words in the transcript, the meters moving, *speaking* lit while it answers."""
import json
import urllib.request

import numpy as np
import pytest

from helpers import report
from model_src.config import get_preset

SPEECH = get_preset("tiny-speech")
LOOP_UNITS = 25  # the fake devices loop their files: 4 s, the same length for the voice and the card
SCALE = 10  # the card's 32x32 frames at 320x320: a camera's frame, scaled down again by the page


def write_y4m(path, frames: np.ndarray, fps: int) -> None:
    """RGB frames uint8 [T, H, W, 3] (H, W even) as a YUV4MPEG2 4:2:0 file (BT.601 full range), the
    format Chromium's --use-file-for-fake-video-capture plays."""
    x = frames.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    half = lambda c: c.reshape(c.shape[0], c.shape[1] // 2, 2, c.shape[2] // 2, 2).mean((2, 4))
    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, half(u), half(v))]
    t, h, w = y.shape
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for k in range(t):
            f.write(b"FRAME\n")
            for p in planes:
                f.write(p[k].tobytes())


@pytest.fixture(scope="module")
def served_speech(speech_ort_engines):
    """docs/page.md's speech commands: the shipped tiny-speech ORT engines (conftest) behind Serve."""
    pytest.importorskip("ray.serve", reason="ray[serve] is a dependency of `streamer serve` (pip install -e .)")
    from serve.launch import deploy, free_port, start_ray, stop

    local = start_ray(num_cpus=2, object_store_mb=100)
    try:
        yield deploy({"engines": str(speech_ort_engines), "threads": 1, "limits": {"idle_timeout_s": 30.0}},
                     replicas=1, slots=1, port=free_port())
    finally:
        stop(local)


def test_a_person_talks_to_the_speech_model_in_the_browser(served_speech, tmp_path):
    """A held-out voice says "blue?" with a red card shown while it speaks, then waits, every 4 s: the page
    shows the model's answers as words of its vocabulary, "red" among them (the colour shown: the word
    is not that colour), the microphone heard and the model speaking. AVS_PAGE_SHOTS=DIR keeps the
    screenshot (docs/page.md)."""
    import base64
    import os
    from pathlib import Path

    from cdp import Chromium, find_chromium
    from streamer.cli import main
    from training import speech
    from unitio.media import read_video
    from unitio.wav import write_wav

    with urllib.request.urlopen(served_speech + "/info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["spec"]["name"] == "tiny-speech" and {info["words"][k] for k in ("20", "21", "22", "23")} == {"red", "green", "blue", "yes"}
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it where it can)")
    s = SPEECH.samples_per_unit
    rng = np.random.default_rng(5)
    voice = speech.speakers(0, "heldout")[11]
    word = speech.render("blue?", voice)
    audio = np.float32(0.003) * rng.standard_normal(LOOP_UNITS * s).astype(np.float32)
    audio[2 * s:2 * s + len(word)] += 0.5 * word / np.abs(word).max()
    write_wav(tmp_path / "ask.wav", audio, SPEECH.sample_rate)
    assert main(["card", "--colour", "red", "--like", str(tmp_path / "ask.wav"), "--out", str(tmp_path / "card.mp4")]) == 0
    frames = read_video(tmp_path / "card.mp4", SPEECH.fps, SPEECH.frame_height, SPEECH.frame_width)
    write_y4m(tmp_path / "card.y4m", frames.repeat(SCALE, 1).repeat(SCALE, 2), SPEECH.fps)

    browser = Chromium(exe, tmp_path / "profile", flags=(f"--use-file-for-fake-audio-capture={tmp_path / 'ask.wav'}",
                                                         f"--use-file-for-fake-video-capture={tmp_path / 'card.y4m'}"))
    js = browser.evaluate
    try:
        browser.open(served_speech + "/")
        browser.call("Emulation.setDeviceMetricsOverride", width=1040, height=720, deviceScaleFactor=1, mobile=False)
        assert browser.wait_for("document.readyState === 'complete' && !!window.avs", 30)
        assert browser.wait_for("document.getElementById('about').textContent.includes('tiny-speech')", 10), \
            js("document.getElementById('about').textContent")  # the page says what this model does
        js("document.getElementById('start').click()", gesture=True)
        stats = browser.wait_for("window.avs.received >= 60 && window.avs.transcript.length >= 2 && window.avs", 90)
        assert stats, f"no answers came back: {js('JSON.stringify(window.avs)')}"
        lines = js("[...document.querySelectorAll('#transcript .w')].map((e) => e.textContent)")
        report(f"the speech model in the browser ('blue?' + red card, looped): {lines}; "
               f"mic peak {stats['micPeak']:.2f}, voice peak {stats['voicePeak']:.2f}")
        said = [w for line in lines for w in line.split()]
        assert said and set(said) <= {"yes", "red", "green", "blue"}, lines
        assert "red" in said, lines
        fatal = [e for e in stats["errors"] if e.get("fatal") or e.get("code") != "late_unit"]
        assert stats["heard"] >= 1 and not fatal, stats["errors"]  # a late unit on a busy CPU is filled, not fatal
        assert stats["micPeak"] > 0.35 and stats["voicePeak"] > 0.55, stats  # the page's hearing / speaking levels
        if os.environ.get("AVS_PAGE_SHOTS"):
            height = js("document.documentElement.scrollHeight")
            png = base64.b64decode(browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                                clip={"x": 0, "y": 0, "width": 1040, "height": height, "scale": 1})["data"])
            from io import BytesIO

            from PIL import Image

            Image.open(BytesIO(png)).convert("RGB").quantize(128, dither=Image.Dither.NONE).save(
                Path(os.environ["AVS_PAGE_SHOTS"]) / "page-speech.png", optimize=True)
    finally:
        browser.close()
