"""Modules planted in a working directory to prove no process imports from it: `struct.py`, `numpy.py`,
`json.py` and `selectors.py` (which multiprocessing's resource tracker imports after start-up, where
struct may already be loaded), each writing a marker file when imported, then getting out of the way
(the real module takes its place), so a leak shows in the marker, not as a crash."""
from pathlib import Path

NAMES = ("struct", "numpy", "json", "selectors")


def plant(folder: Path) -> Path:
    """Write the planted modules into `folder`; returns the marker folder (empty while nothing leaked)."""
    markers = folder / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        (folder / f"{name}.py").write_text(
            "import os as _os, sys as _sys\n"
            f"open(_os.path.join({str(markers)!r}, '{name}.' + str(_os.getpid())), 'w').close()\n"
            f"del _sys.modules[{name!r}]\n"  # then the real module: the run goes on, the marker tells
            f"_sys.path = [p for p in _sys.path if p not in ('', {str(folder)!r})]\n"
            f"globals().update(__import__({name!r}).__dict__)\n")
    return markers


def leaked(markers: Path) -> list[str]:
    """The planted modules some process imported (marker names MODULE.PID)."""
    return sorted(p.name for p in markers.iterdir())
