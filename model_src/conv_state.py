"""Threading explicit streaming state through the causal layers of one call.

A streaming codec's state is a flat tuple of tensors, one per stateful layer, in execution order. A
`StateIO` hands each layer its entry (`take`) and collects the new one (`put`) during a single call;
nothing outlives the call. `StateIO(None)` primes a stream: every layer starts from zeros.
"""
from __future__ import annotations

from typing import Sequence

import torch

State = tuple[torch.Tensor, ...]


class StateIO:
    def __init__(self, states: Sequence[torch.Tensor] | None, first: bool = False) -> None:
        self._in = None if states is None else list(states)
        self._next = 0
        self.first = first  # the stream's very first chunk (some layers start differently)
        self.out: list[torch.Tensor] = []

    def take(self, zeros_like_shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """This layer's state; zeros of `zeros_like_shape` when priming."""
        if self._in is None:
            return like.new_zeros(zeros_like_shape)
        if self._next >= len(self._in):
            raise ValueError(f"state has {len(self._in)} tensors, the layers need more")
        s = self._in[self._next]
        self._next += 1
        if tuple(s.shape) != tuple(zeros_like_shape):
            raise ValueError(f"state tensor {self._next - 1}: expected shape {tuple(zeros_like_shape)}, "
                             f"got {tuple(s.shape)}")
        return s

    def put(self, new_state: torch.Tensor) -> None:
        # contiguous: a state is usually a slice of a concatenation, and an engine output that is a view
        # into an intermediate buffer came back corrupted from AOTInductor packages
        self.out.append(new_state.contiguous())

    def result(self) -> State:
        if self._in is not None and self._next != len(self._in):
            raise ValueError(f"state has {len(self._in)} tensors, the layers used {self._next}")
        return tuple(self.out)


def check_shape(where: str, x: torch.Tensor, expected: tuple[int | None, ...], names: str) -> None:
    """Raise a ValueError naming the expected and the received shape (None in `expected`: any size)."""
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        want = ", ".join(n if e is None else f"{n}={e}" for n, e in zip(names.split(), expected))
        raise ValueError(f"{where}: expected a tensor [{want}], got shape {tuple(x.shape)}")
