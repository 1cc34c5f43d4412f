"""A marked section of a markdown file (`<!-- X: start -->` ... `<!-- X: end -->`), what the benchmarks'
`--write` replaces: checked before a run, so a file without its markers is refused before any work."""
from __future__ import annotations

from pathlib import Path


def check_marked(doc: str, path: Path, start: str, end: str, what: str) -> None:
    """Raise SystemExit naming both markers unless `doc` holds `start` followed by `end`; `what` names the
    section in the message ("the speech task's table")."""
    i, j = doc.find(start), doc.find(end)
    if i < 0 or j < i:
        found = ("neither" if i < 0 and j < 0 else "only the end marker" if i < 0
                 else "only the start marker" if j < 0 else "the end marker before the start marker")
        raise SystemExit(f"--write {path}: expected the markers {start!r} and then {end!r} around {what}, found "
                         f"{found}; add them where it belongs (nothing was written)")


def replace_marked(doc: str, text: str, path: Path, start: str, end: str, what: str) -> str:
    """`doc` with its section from `start` to `end` (markers included) replaced by `text`, after `check_marked`."""
    check_marked(doc, path, start, end, what)
    head, rest = doc.split(start, 1)
    return head + text + rest.split(end, 1)[1]
