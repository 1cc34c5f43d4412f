"""Outside serve: a hostile working directory, planted links, relative key paths, huge or deeply
nested files, a full disk. Each test reproduces its row (and where a guard is the point, a planted
mutation shows the check catching the old behaviour)."""
import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from helpers import report
from planted import leaked, plant
from streamer.cli import main


def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, " ".join(err.split())


def test_no_child_imports_from_the_working_directory(tiny_ort_engines, tmp_path):
    """`streamer run` pipelined (the performer, multiprocessing's resource tracker) from a folder holding
    a planted struct.py, numpy.py and json.py: none is imported by any process of the tree. The control:
    the resource tracker started without PYTHONSAFEPATH imports them (the bug the CLI's start-up fixes)."""
    cwd = tmp_path / "cwd"
    markers = plant(cwd)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    script = tmp_path / "tracker.py"  # a script's own folder, not the cwd, heads its path (like `streamer`)
    script.write_text("from multiprocessing import resource_tracker as r\nr.ensure_running()\nimport time\n"
                      "time.sleep(3)\n")
    subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, check=True, timeout=60)
    assert leaked(markers), "control: the resource tracker should import the planted modules without PYTHONSAFEPATH"
    shutil.rmtree(markers)
    markers.mkdir()
    streamer = Path(sys.executable).with_name("streamer")
    run = subprocess.run([str(streamer), "run", "--engines", str(tiny_ort_engines), "--input", "synthetic", "--units",
                          "3", "--out", "o"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert leaked(markers) == [] and (cwd / "o" / "out.wav").is_file()


PARTS = ("out.wav", "out_audio.npy", "text.jsonl", "text.json", "out.mp4", "timings.csv")


def _plant_links(out: Path, victim: Path) -> None:
    """Links at every name a run writes: NAME.partial and the final names, all to `victim`."""
    out.mkdir()
    for name in PARTS:
        os.symlink(victim, out / f"{name}.partial")
    for name in ("out.wav", "text.json"):
        os.symlink(victim, out / name)


def test_planted_output_links_are_never_followed(tiny_ort_engines, tmp_path, tiny, capsys, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "o"
    _plant_links(out, victim)
    code, err = _cli(["run", "--engines", tiny_ort_engines, "--sequential", "--units", "2", "--out", out], capsys)
    assert code == 0, err
    assert victim.read_bytes() == b"precious"
    assert not (out / "out.wav").is_symlink() and not (out / "text.json").is_symlink()  # the links were replaced
    with wave.open(str(out / "out.wav")) as f:
        assert f.getnframes() == 2 * tiny.samples_per_unit
    assert len(json.loads((out / "text.json").read_text())) == 2
    assert not list(out.glob(".partial-*"))  # the private staging folder is gone

    # the mutation: staged in --out itself with truncating opens (the old writers) overwrites the victim
    import streamer.outputs
    import unitio.growing

    monkeypatch.setattr(streamer.outputs.tempfile, "mkdtemp", lambda prefix, dir: str(dir))
    monkeypatch.setattr(unitio.growing, "NEW_FILE", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    shutil.rmtree(out)
    _plant_links(out, victim)
    _cli(["run", "--engines", tiny_ort_engines, "--sequential", "--units", "2", "--out", out], capsys)
    assert victim.read_bytes() != b"precious"


def test_core_locks_live_in_a_private_folder(tmp_path, monkeypatch):
    """The core-claim locks: a per-user 0700 folder, owner and mode checked; a planted lock link is never
    followed or truncated (that core is skipped)."""
    import tempfile

    from runtime import child

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    shared = tmp_path / f"av-streamer-{os.getuid()}"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # someone else's (or a world-writable) folder at the name
    with pytest.raises(PermissionError, match="closed to others"):
        child.claim_core()
    os.chmod(shared, 0o700)
    folder = child.core_lock_dir()
    assert folder == shared / "cores" and (folder.stat().st_mode & 0o777) == 0o700
    cores = sorted(os.sched_getaffinity(0), reverse=True)
    os.symlink(victim, folder / f"{cores[0]}.lock")
    claim = child.claim_core()
    try:
        assert victim.read_bytes() == b"precious" and claim.core != cores[0]
    finally:
        claim.release()


def _signed_copy(engines, tmp_path, capsys):
    """A signed copy of the engines and its key pair: (engine dir, public key path, relative to tmp_path)."""
    from runtime.manifest import sign_directory

    (tmp_path / "keys").mkdir()
    assert main(["keygen", "--out", str(tmp_path / "keys" / "release")]) == 0
    d = tmp_path / "eng"
    shutil.copytree(engines, d)
    sign_directory(d, tmp_path / "keys" / "release")
    capsys.readouterr()
    return d, Path("keys/release.pub")


def test_relative_trust_key_reaches_the_performer(tiny_ort_engines, tmp_path, capsys, monkeypatch):
    """`--trust keys/release.pub` (relative, as docs/SECURITY.md writes it) on a pipelined run: the
    performer, started in another folder, reads the same key (paths made absolute in the CLI)."""
    d, key = _signed_copy(tiny_ort_engines, tmp_path, capsys)
    monkeypatch.chdir(tmp_path)
    code, err = _cli(["run", "--engines", "eng", "--trust", key, "--units", "2", "--out", "o"], capsys)
    assert code == 0, err
    assert (tmp_path / "o" / "out.wav").is_file()
    import streamer.args  # the mutation: paths left relative -> the performer cannot find the key

    monkeypatch.setattr(streamer.args, "absolute_paths", lambda args: None)
    code, err = _cli(["run", "--engines", "eng", "--trust", key, "--units", "2", "--out", "o2"], capsys)
    assert code == 3 and "keys/release.pub: no such Ed25519 public key file" in err, err


def test_a_huge_or_deep_signature_is_refused_unread(tiny_ort_engines, tmp_path, capsys):
    """`truncate -s 2G manifest.sig`: refused from its size (fstat), not after reading it; a signature
    file nested 5,000 deep is refused as malformed, not a RecursionError."""
    d, key = _signed_copy(tiny_ort_engines, tmp_path, capsys)
    key = tmp_path / key
    sig = d / "manifest.sig"
    os.truncate(sig, 2 << 30)  # sparse: no disk used
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, err = _cli(["inspect", d, "--trust", key], capsys)
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    report(f"inspect --trust with a 2 GiB manifest.sig: peak RSS grew {grew_mb:.0f} MB")
    assert code == 2 and "manifest.sig: expected a av-streamer-signature/1 signature of at most 4096 bytes" in err, err
    assert "got a file of 2147483648 bytes (not read)" in err and grew_mb < 200
    sig.write_text("[" * 2000 + "]" * 2000)
    code, err = _cli(["inspect", d, "--trust", key], capsys)
    assert code == 2 and "manifest.sig: expected a av-streamer-signature/1 file" in err, err


def _consistent(out: Path, tiny) -> int:
    """Every output holds the same whole units (WAV, .npy, text.json, MP4), nothing empty, nothing staged."""
    from unitio.media import read_video

    with wave.open(str(out / "out.wav")) as f:
        units, rest = divmod(f.getnframes(), tiny.samples_per_unit)
    assert rest == 0
    assert np.load(out / "out_audio.npy").shape == (units * tiny.samples_per_unit,)
    assert len(json.loads((out / "text.json").read_text())) == units
    assert read_video(out / "out.mp4", tiny.fps, tiny.frame_height, tiny.frame_width).shape[0] == 4 * units
    assert not list(out.glob(".partial-*")) and all(p.stat().st_size for p in out.iterdir())
    return units


def test_a_write_failing_mid_unit_cuts_every_output_to_the_same_units(tiny_ort_engines, tmp_path, tiny, capsys,
                                                                      monkeypatch):
    """Simulated ENOSPC in the .npy after the WAV took the unit: the WAV is cut back, every output holds
    the units the message states."""
    import unitio.npy

    real, calls = unitio.npy.NpyWriter.write, []

    def write(self, x):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, x)

    monkeypatch.setattr(unitio.npy.NpyWriter, "write", write)
    out = tmp_path / "o"
    code, err = _cli(["run", "--engines", tiny_ort_engines, "--sequential", "--units", "8", "--out", out], capsys)
    assert code == 2 and "out_audio.npy: could not be written (disk full)" in err, err
    assert _consistent(out, tiny) == 3 and "(3 units of output, stopped early" in err


def _tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_full_disk_keeps_consistent_outputs(tiny_ort_engines, tmp_path, tiny, capsys):
    """A real 640 KB filesystem as --out (tmpfs; needs root): exit 2 naming the full disk, every output cut
    to the same unit count, which the message states, the MP4 playable, no zero-byte leftovers."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "640k"):
        pytest.skip("mounting a tmpfs needs root (the simulated ENOSPC test above covers the logic)")
    try:
        out = disk / "o"
        code, err = _cli(["run", "--engines", tiny_ort_engines, "--sequential", "--units", "3000", "--out", out], capsys)
        assert code == 2 and "No space left on device" in err, err
        units = _consistent(out, tiny)
        report(f"--out on a 640 KB tmpfs: stopped after {units} units, every output holding them")
        assert 5 < units < 3000 and f"({units} units of output, stopped early" in err
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_children_never_see_the_cwd_and_see_the_parents_user_site(monkeypatch):
    """The performer's interpreter flags: -P always; -s only when the parent itself runs without user
    site-packages (a `pip install --user` package carried to a GPU box must import in the performer too),
    and PYTHONSAFEPATH=1 for whatever the child starts."""
    import types

    from runtime import child

    argv = child.child_argv("runtime.host.performer", "{}")
    assert argv[:2] == [sys.executable, "-P"] and argv[-3:] == ["-m", "runtime.host.performer", "{}"]
    assert ("-s" in argv) == bool(sys.flags.no_user_site)
    monkeypatch.setattr(child.sys, "flags", types.SimpleNamespace(no_user_site=1))
    assert "-s" in child.child_argv("m")
    monkeypatch.setattr(child.sys, "flags", types.SimpleNamespace(no_user_site=0))
    assert "-s" not in child.child_argv("m") and child.child_env()["PYTHONSAFEPATH"] == "1"


def test_weights_and_training_outputs_replace_a_planted_link(tmp_path, capsys):
    """`init-weights --out` (save_weights, which training's outputs use too), a loss plot and a training
    checkpoint's writer: a link at the name is replaced by the new file, the victim keeps its bytes."""
    from model_src.weights import read_preset
    from training.trainer import loss_png

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for name in ("w.safetensors", "loss.png"):
        os.symlink(victim, tmp_path / name)
    assert main(["init-weights", "--preset", "tiny", "--out", str(tmp_path / "w.safetensors")]) == 0
    loss_png([[0, {"loss": 1.0, "a": 0.5}], [1, {"loss": 0.8, "b": 0.2}]], tmp_path / "loss.png", "t")
    assert victim.read_bytes() == b"precious"
    assert read_preset(tmp_path / "w.safetensors").name == "tiny" and not (tmp_path / "w.safetensors").is_symlink()
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "victim", "w.safetensors"]  # no temporaries


def test_files_the_user_names_replace_a_planted_link(tmp_path, capsys, monkeypatch):
    """`--json` (plan, bench, eval), `--timeline`, `profile --out`: written to a new private file and
    renamed over the name, so a link planted there is replaced and its target untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "plan.json"
    link.symlink_to(victim)
    code, err = _cli(["plan", "--preset", "tiny", "--gpu", "h100", "--json", link], capsys)
    assert code == 0, err
    assert victim.read_bytes() == b"precious" and not link.is_symlink()
    assert json.loads(link.read_text())["preset"] == "tiny"

    # the mutation: a plain write (the old one) follows the link
    import streamer.plan_cmds

    monkeypatch.setattr(streamer.plan_cmds, "write_text_replacing", lambda path, text: Path(path).write_text(text))
    link.unlink()
    link.symlink_to(victim)
    _cli(["plan", "--preset", "tiny", "--gpu", "h100", "--json", link], capsys)
    assert victim.read_bytes() != b"precious"
