"""Property-based fuzzing (hypothesis) of every file the command line reads: WAV, MP4, safetensors
weights and the engine manifest.

Whatever the bytes, reading them gives data or the project's own refusal (the error types `streamer`
turns into exit code 2 with a message), never another exception (a traceback); a truncated file is
always refused (never exit 0). The manifest goes through the CLI itself (`streamer inspect` / `run`).
The example budget is fixed and derandomized, so the run is the same every time (~30-45 s here).
"""
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_src.weights import WeightsError
from runtime.manifest import MANIFEST, _checksum
from streamer.cli import main
from unitio.media import FileUnits, synthetic_input, write_video
from unitio.units import InputError
from unitio.wav import read_wav, write_wav


def budget(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def mutations(size: int, header: int):
    """('truncate', n) | ('flip', [(offset, byte)]) in the first `header` bytes or anywhere | ('random', bytes)."""
    return st.one_of(
        st.integers(0, size - 1).map(lambda n: ("truncate", n)),
        st.lists(st.tuples(st.integers(0, header - 1), st.integers(0, 255)), min_size=1, max_size=6).map(lambda f: ("flip", f)),
        st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=6).map(lambda f: ("flip", f)),
        st.binary(max_size=600).map(lambda b: ("random", b)))


def mutate(data: bytes, m) -> bytes:
    kind, arg = m
    if kind == "truncate":
        return data[:arg]
    if kind == "random":
        return arg
    out = bytearray(data)
    for offset, byte in arg:
        out[offset] = byte
    return bytes(out)


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("fuzz_media")
    audio, frames = synthetic_input(tiny, 2)
    write_wav(d / "a.wav", audio, tiny.sample_rate)
    write_video(d / "v.mp4", frames, tiny.fps)
    return d


def test_wav_bytes(media, tiny):
    good = (media / "a.wav").read_bytes()

    @budget(150)
    @given(m=mutations(len(good), 48))
    def check(m):
        path = media / "fuzz.wav"
        data = mutate(good, m)
        path.write_bytes(data)
        try:
            samples = read_wav(path, tiny.sample_rate)
        except InputError:
            return
        assert m[0] != "truncate", "a truncated WAV was accepted"
        assert samples.ndim == 1 and len(samples) > 0

    check()


def test_mp4_bytes(media, tiny):
    good = (media / "v.mp4").read_bytes()

    @budget(20)
    @given(m=mutations(len(good), 64))
    def check(m):
        path = media / "fuzz.mp4"
        path.write_bytes(mutate(good, m))
        try:
            units = list(FileUnits(media / "a.wav", path, tiny, fit="pad"))
        except InputError:
            return
        assert m[0] != "truncate", "a truncated MP4 was accepted"
        assert all(f.shape == (4, tiny.frame_height, tiny.frame_width, 3) for _, f in units)

    check()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny, tiny_system):
    from model_src.weights import save_weights

    path = tmp_path_factory.mktemp("fuzz_weights") / "w.safetensors"
    save_weights(tiny_system, tiny, path)
    return path


def test_safetensors_bytes(weights, tiny):
    from model_src.system import build_system
    from model_src.weights import load_weights

    good, target = weights.read_bytes(), build_system(tiny)
    header = 8 + int.from_bytes(good[:8], "little")

    @budget(30)
    @given(m=mutations(len(good), header))
    def check(m):
        path = weights.with_name("fuzz.safetensors")
        path.write_bytes(mutate(good, m))
        try:
            load_weights(target, tiny, path)
        except WeightsError:
            return
        assert m[0] != "truncate", "a truncated weights file was accepted"

    check()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


def test_weights_metadata(tmp_path_factory, tiny):
    """The preset JSON and aliases of a weights file, field by field: refused by name or a valid preset."""
    import torch
    from safetensors.torch import save_file

    from model_src.weights import read_preset

    d = tmp_path_factory.mktemp("fuzz_meta")
    fields = json.loads(tiny.to_json())

    @budget(60)
    @given(field=st.sampled_from(sorted(fields) + ["aliases", "extra"]), value=json_values, rename=st.booleans())
    def check(field, value, rename):
        preset = dict(fields, name="mine" if rename else "tiny")
        meta = {"format": "av-streamer-weights/1", "preset": preset["name"], "aliases": "{}"}
        if field == "aliases":
            meta["aliases"] = json.dumps(value)
        else:
            preset[field] = value
        meta["preset_json"] = json.dumps(preset)
        save_file({"x": torch.zeros(1)}, str(d / "m.safetensors"), metadata=meta)
        with pytest.raises(WeightsError):  # never anything else; and one tensor named x fits no model
            read_preset(d / "m.safetensors")

    check()


@pytest.fixture(scope="module")
def engine_copy(tiny_ort_engines, tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_engines") / "eng"
    shutil.copytree(tiny_ort_engines, d)
    return d


def _cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def test_manifest_bytes(engine_copy, capsys):
    good = (engine_copy / MANIFEST).read_bytes()
    original = json.loads(good)

    @budget(40)
    @given(m=mutations(len(good), len(good)))
    def check(m):
        data = mutate(good, m)
        (engine_copy / MANIFEST).write_bytes(data)
        code, err = _cli(["inspect", engine_copy], capsys)
        try:
            same = json.loads(data) == original
        except ValueError:
            same = False
        assert code == (0 if same else 2), err

    try:
        check()
    finally:
        (engine_copy / MANIFEST).write_bytes(good)


def _paths(value, prefix=()):
    """Every path (tuple of keys / indices) into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def test_manifest_structure(engine_copy, capsys, tmp_path_factory):
    """Any value of the manifest replaced by any JSON, with the checksum recomputed (so only the structure
    and bounds checks stand between it and a session): `inspect` and `run` refuse it or work, no traceback."""
    good = (engine_copy / MANIFEST).read_bytes()
    original = json.loads(good)
    paths = [p for p in _paths(original) if p and p[0] not in ("checksum", "format")]
    out = tmp_path_factory.mktemp("fuzz_out")

    @budget(60)
    @given(path=st.sampled_from(paths), value=json_values)
    def check(path, value):
        m = json.loads(good)
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        m["checksum"] = _checksum(m)
        (engine_copy / MANIFEST).write_text(json.dumps(m))
        code, err = _cli(["inspect", engine_copy], capsys)
        assert code in (0, 2), err
        # run reads the manifest and the unit spec, then refuses the missing input (before any session)
        code, err = _cli(["run", "--engines", engine_copy, "--input", "no-such-input", "--out", out], capsys)
        assert code == 2 and "error:" in err, err

    try:
        check()
    finally:
        (engine_copy / MANIFEST).write_bytes(good)


# --- deep nesting, huge files and links ------------------------------------------------------------------------
def nested(max_depth: int = 6000):
    """JSON text nested `depth` deep in arrays and objects (a few KB at most), sometimes left unclosed."""
    return st.tuples(st.integers(1, max_depth), st.integers(0, 2**32), st.booleans()).map(_nest)


def _nest(args) -> str:
    depth, seed, close = args
    opens = ["[" if (seed >> (i % 32)) & 1 else '{"k":' for i in range(depth)]
    closes = ["]" if o == "[" else "}" for o in reversed(opens)]
    return "".join(opens) + "0" + ("".join(closes) if close else "")


def test_nested_json_everywhere(engine_copy, tmp_path_factory, capsys):
    """Nesting from 1 to 6,000 deep in the bounded parser itself, in manifest.json (`inspect`) and in a
    weights file's preset_json and aliases: a value or the usual refusal, never a RecursionError."""
    import torch
    from safetensors.torch import save_file

    from model_src.weights import read_preset
    from unitio.jsonsafe import loads_bounded, nesting_depth

    good = (engine_copy / MANIFEST).read_bytes()
    d = tmp_path_factory.mktemp("fuzz_nested")

    @budget(25)
    @given(text=nested(), where=st.sampled_from(["parser", "manifest", "preset_json", "aliases"]))
    def check(text, where):
        if where == "parser":
            try:
                value = loads_bounded(text, 1 << 20, 64)
            except ValueError:
                assert nesting_depth(text) > 64 or not text.endswith(("]", "}"))
                return
            assert nesting_depth(text) <= 64 and value is not None
        elif where == "manifest":
            (engine_copy / MANIFEST).write_text(text)
            code, err = _cli(["inspect", engine_copy], capsys)
            assert code == 2 and "manifest.json" in err, err
        else:
            meta = {"format": "av-streamer-weights/1", "preset": "tiny", "preset_json": "{}", "aliases": "{}"}
            meta[where] = text
            save_file({"x": torch.zeros(1)}, str(d / "n.safetensors"), metadata=meta)
            with pytest.raises(WeightsError, match="n.safetensors"):
                read_preset(d / "n.safetensors")

    try:
        check()
    finally:
        (engine_copy / MANIFEST).write_bytes(good)


def _targets(folder):
    """What a planted link may point at: devices, a FIFO, a folder, nothing, a 2 GiB sparse file."""
    import os

    folder.mkdir(exist_ok=True)
    fifo, sparse = folder / "fifo", folder / "sparse"
    if not fifo.exists():
        os.mkfifo(fifo)
    with open(sparse, "wb") as f:
        f.truncate(2 << 30)
    return {"dev-zero": "/dev/zero", "dev-null": "/dev/null", "fifo": fifo, "folder": folder,
            "dangling": folder / "nothing", "sparse-2g": sparse}


ROLES = ("manifest.json", "manifest.sig", "wav", "mp4", "weights")


@pytest.mark.parametrize("role", ROLES)
def test_every_input_behind_a_link(role, tiny_ort_engines, media, tmp_path, capsys):
    """Each file the CLI reads, replaced by a link to a device, a FIFO, a folder, nothing or a 2 GiB
    sparse file: refused with exit 2 naming it, promptly (no read of the whole, no blocked open)."""
    import os
    import signal
    import time

    from runtime.manifest import sign_directory

    targets = _targets(tmp_path / "targets")
    eng = tmp_path / "eng"
    shutil.copytree(tiny_ort_engines, eng)
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    sign_directory(eng, tmp_path / "k")
    capsys.readouterr()
    link = {"manifest.json": eng / MANIFEST, "manifest.sig": eng / "manifest.sig", "wav": tmp_path / "in.wav",
            "mp4": tmp_path / "in.mp4", "weights": tmp_path / "w.safetensors"}[role]
    argv = {"manifest.json": ["inspect", eng], "manifest.sig": ["inspect", eng, "--trust", tmp_path / "k.pub"],
            "wav": ["run", "--preset", "tiny", "--input", f"{link}+{media / 'v.mp4'}", "--out", tmp_path / "o"],
            "mp4": ["run", "--preset", "tiny", "--input", f"{media / 'a.wav'}+{link}", "--out", tmp_path / "o"],
            "weights": ["run", "--weights", link, "--out", tmp_path / "o"]}[role]

    def hung(*_):
        raise TimeoutError(f"{role} behind a link: no answer in 30 s (a blocked open or a whole read?)")

    old = signal.signal(signal.SIGALRM, hung)
    try:
        for name, target in targets.items():
            link.unlink(missing_ok=True)
            os.symlink(target, link)
            t0 = time.perf_counter()
            signal.alarm(30)
            code, err = _cli(argv, capsys)
            signal.alarm(0)
            assert code == 2 and link.name in err, (name, err)
            assert time.perf_counter() - t0 < 20, name
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
