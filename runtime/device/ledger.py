"""The transfer ledger: every copy on the unit path between the host and a device, or between devices
(or processes), goes through here, so its bytes are counted per unit and direction.

    h2d  host -> device      (the user's audio/frames/text, unit indices, the solver's seed noise)
    d2h  device -> host      (text tokens, waveform, frames)
    d2d  device -> device    (a KV delta into its cache slot, y_k to the thinker, anything between GPUs
                              or processes)

On a CPU "device" the same copies happen between host buffers and the tensors the engines are bound
to, and are counted the same way, so a CPU test holds the GPU's byte budget. Nothing is allocated per
copy: the destination and source are preallocated (pinned on a GPU).
"""
from __future__ import annotations

from collections import deque

DIRECTIONS = ("h2d", "d2h", "d2d")


class TransferLedger:
    """Counts bytes per unit and direction; `unit_done()` closes a unit. Keeps the last `history` units."""

    def __init__(self, history: int = 4096) -> None:
        self.current = dict.fromkeys(DIRECTIONS, 0)
        self.units: deque[dict[str, int]] = deque(maxlen=history)
        self.total = dict.fromkeys(DIRECTIONS, 0)

    def copy(self, direction: str, dst, src) -> None:
        """dst.copy_(src) (asynchronous on the current stream where it can be), counting dst's bytes."""
        dst.copy_(src, non_blocking=True)
        self.count(direction, dst.numel() * dst.element_size())

    def h2d(self, dst, src) -> None:
        self.copy("h2d", dst, src)

    def d2h(self, dst, src) -> None:
        self.copy("d2h", dst, src)

    def d2d(self, dst, src) -> None:
        self.copy("d2d", dst, src)

    def count(self, direction: str, nbytes: int) -> None:
        """Count a copy made elsewhere (e.g. by the performer process, reported back per unit)."""
        self.current[direction] += nbytes

    def unit_done(self) -> dict[str, int]:
        """Close the current unit; returns its bytes per direction."""
        done = self.current
        self.units.append(done)
        for d in DIRECTIONS:
            self.total[d] += done[d]
        self.current = dict.fromkeys(DIRECTIONS, 0)
        return done

    def per_unit(self, skip: int = 0) -> dict[str, float]:
        """Mean bytes per unit and direction over the kept units after the first `skip`."""
        rows = list(self.units)[skip:]
        if not rows:
            return dict.fromkeys(DIRECTIONS, 0.0)
        return {d: sum(r[d] for r in rows) / len(rows) for d in DIRECTIONS}
