"""Starting a worker process safely, and giving it a CPU core of its own.

`start_child(module, config, fd)`: a fresh interpreter (not fork: the parent's thread pools; not
multiprocessing's spawn: it re-runs the caller's __main__) that never imports from the working
directory or the user's site-packages (`-P -s`: a `struct.py` lying in the current folder is not run),
with this checkout first on its module path so it runs the same code as its parent.

`claim_core()`: a CPU core no other session on this machine has claimed (a lock file per core, held
for the life of the claim), so concurrent sessions do not pin their performers to the same core.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)  # where `runtime` is importable from
CORE_LOCKS = Path(tempfile.gettempdir()) / "av-streamer-cores"


def start_child(module: str, config: dict, fd: int) -> subprocess.Popen:
    """`python -P -s -m module CONFIG_JSON`, passing the socket `fd`; returns the process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    env.pop("PYTHONSTARTUP", None)
    return subprocess.Popen([sys.executable, "-P", "-s", "-m", module, json.dumps(config)], pass_fds=(fd,),
                            env=env, cwd=ROOT)


class CoreClaim:
    """A claimed core (`core` is None when every allowed core is taken); `release()` gives it back."""

    def __init__(self, core: int | None, handle) -> None:
        self.core, self._handle = core, handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops its lock
            self._handle = None


def claim_core(prefer_last: bool = True) -> CoreClaim:
    """The highest-numbered allowed core that no other live session holds (lock files under the temp
    folder: a crashed session's lock goes with its process)."""
    cores = sorted(os.sched_getaffinity(0), reverse=prefer_last)
    CORE_LOCKS.mkdir(exist_ok=True)
    for core in cores:
        handle = open(CORE_LOCKS / f"{core}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # per open file: two sessions of one process differ too
        except OSError:
            handle.close()
            continue
        return CoreClaim(core, handle)
    return CoreClaim(None, None)
