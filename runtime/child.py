"""Starting a worker process safely, and giving it a CPU core of its own.

`start_child(module, config, fd)`: a fresh interpreter (not fork: the parent's thread pools; not
multiprocessing's spawn: it re-runs the caller's __main__) that never imports from the working
directory (`-P`, and PYTHONSAFEPATH=1 in its environment for anything it starts in turn: a
`struct.py` lying in the current folder is not run), with this checkout first on its module path so
it runs the same code as its parent. User site-packages: the child sees exactly what its parent
sees. `-s` is passed only when the parent itself runs without them (`python -s`, PYTHONNOUSERSITE);
otherwise a package the user installed with `pip install --user` (as on a GPU box where only the
user's site is writable) would import in the thinker and be missing in the performer. The user site
is the user's own folder, not the working directory: trusting it is what the parent already does.

`claim_core()`: a CPU core no other session of this user has claimed (a lock file per core, held for
the life of the claim), so concurrent sessions do not pin their performers to the same core. The
lock files live in a per-user folder (0700, owner checked, under $XDG_RUNTIME_DIR or
/tmp/av-streamer-UID) and are opened without following links and without truncation.
"""
from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)  # where `runtime` is importable from


def child_argv(module: str, *args: str) -> list[str]:
    """`python -P [-s] -m module ARGS`: the interpreter flags a child gets (no cwd on sys.path; the
    parent's choice about user site-packages)."""
    flags = ["-P"] + (["-s"] if sys.flags.no_user_site else [])
    return [sys.executable, *flags, "-m", module, *args]


def child_env() -> dict[str, str]:
    """The parent's environment with this checkout first on PYTHONPATH, PYTHONSAFEPATH=1 (so the child's
    own children, e.g. multiprocessing's resource tracker, do not import from their cwd either) and no
    PYTHONSTARTUP."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
           "PYTHONSAFEPATH": "1"}
    env.pop("PYTHONSTARTUP", None)
    return env


def start_child(module: str, config: dict, fd: int) -> subprocess.Popen:
    """`python -P -m module CONFIG_JSON` (see `child_argv`), passing the socket `fd`; returns the process."""
    return subprocess.Popen(child_argv(module, json.dumps(config)), pass_fds=(fd,), env=child_env(), cwd=ROOT)


def core_lock_dir() -> Path:
    """This user's folder for the core locks, made 0700 if missing; refused (OSError) unless it is a real
    folder (not a link) owned by this user and closed to others."""
    uid = os.getuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _private_dir(Path(runtime), uid):
        folder = Path(runtime) / "av-streamer-cores"
    else:
        folder = Path(tempfile.gettempdir()) / f"av-streamer-{uid}" / "cores"
        _make_private(folder.parent, uid)
    _make_private(folder, uid)
    return folder


def _private_dir(path: Path, uid: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def _make_private(path: Path, uid: int) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    if not _private_dir(path, uid):
        raise PermissionError(f"{path}: expected a folder of user {uid} closed to others (mode 0700) for the "
                              f"core locks, got something else (a link, another owner or open permissions)")




class CoreClaim:
    """A claimed core (`core` is None when every allowed core is taken); `release()` gives it back."""

    def __init__(self, core: int | None, handle) -> None:
        self.core, self._handle = core, handle

    def release(self) -> None:
        if self._handle is not None:
            os.close(self._handle)  # closing the descriptor drops its lock
            self._handle = None


def claim_core(prefer_last: bool = True) -> CoreClaim:
    """The highest-numbered allowed core that no other live session of this user holds (lock files in
    `core_lock_dir()`: a crashed session's lock goes with its process)."""
    cores = sorted(os.sched_getaffinity(0), reverse=prefer_last)
    folder = core_lock_dir()
    for core in cores:
        try:
            fd = os.open(folder / f"{core}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:  # a link (ELOOP) or something else at the name: never followed, that core skipped
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # per open file: two sessions of one process differ too
        except OSError:
            os.close(fd)
            continue
        return CoreClaim(core, fd)
    return CoreClaim(None, None)
