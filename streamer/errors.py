"""What an error ends a command with: its exit code and one clear line on the console, never a traceback.

    0 done · 1 verify failed · 2 refused (bad input or arguments, a file that does not check, an output
    that cannot be written) · 3 the performer failed · 130 Ctrl-C · 143 SIGTERM
"""
from __future__ import annotations

import sys

from rich.markup import escape

from .outputs import console
from .signals import Terminated

REFUSED, PERFORMER_FAILED, INTERRUPTED, TERMINATED = 2, 3, 130, 143


def _message(e: BaseException) -> str:
    """An OSError as 'FILE: reason'; anything else as its text."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def exit_code(e: BaseException) -> int | None:
    """Print what `e` means and return the exit code; None for an error that is a bug (let it raise)."""
    if isinstance(e, (ValueError, OSError)):  # InputError, WeightsError, ManifestError, SignatureError,
        # EngineInputError, OutputError, CalibrationError are ValueErrors; unreadable files OSErrors
        console.print("[bold red]error:[/]", escape(_message(e)))
        return REFUSED
    if isinstance(e, KeyboardInterrupt):
        console.print("interrupted")
        return INTERRUPTED
    if isinstance(e, Terminated):
        console.print("terminated (SIGTERM)")
        return TERMINATED
    performer = sys.modules.get("runtime.order")  # imported only if a session ever ran
    if performer is not None and isinstance(e, performer.PerformerError):
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = f" ({lines[-1]})" if len(lines) > 1 else ""  # a child's traceback: its last line
        console.print("[bold red]error: performer:[/]", escape((lines[0] if lines else type(e).__name__) + detail))
        return PERFORMER_FAILED
    return None
