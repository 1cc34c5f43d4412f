"""The CPU twin of a GPU's streams, events and CUDA graphs, so the device path's ordering bugs show on a CPU.

Streams. A `CpuStream` is a queue of deferred work. Under `Device.use(stream)` a `TorchDispatchMode` defers
every in-place or `out=` tensor op (a copy, `zero_`, `add_`, `index_copy_`, ...) and every engine call or
graph replay (`launch`) to that queue; nothing runs until an event wait or a sync orders it (`CpuEvent`:
a marker in its stream's queue; waiting on it or synchronizing runs the queue up to the marker). An op
that reads values now (a new tensor: `x + 1`, `.float()`, `.item()`) first runs its own stream's queue,
as in-order execution on that stream would, and never another stream's. So a missing `Device.wait` or
`Device.sync` reads stale data, as on a GPU. Host memory (numpy views of host buffers) is the host's: it
is read and written at once, so a d2h copy's result is there only after a sync.

Graphs. `capture` runs the call under a recording mode: in-place ops are recorded and not run (a GPU's
capture does not run kernels), ops making new tensors run once to allocate their outputs, which the graph
then owns (its private pool: replay writes its new values into the same tensors), views are taken once,
and engine calls (ONNX Runtime or torch, opaque to the dispatch mode) become explicit call nodes. A host
read during capture (`.item()`, a sync) raises, as CUDA refuses it. Replay re-runs exactly the recorded
nodes on the same tensors; the Python that ran during capture (a counter, numpy work, a branch on a host
value) is not re-run, so its values are frozen, as on a GPU.
"""
from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten

_tls = threading.local()


class CaptureError(RuntimeError):
    """Work a CUDA graph capture cannot hold (a host read or sync), met while capturing on the CPU twin."""


def _state():
    if not hasattr(_tls, "streams"):
        _tls.streams, _tls.recorder, _tls.executing = [], None, 0
    return _tls


class CpuStream:
    """Deferred work in issue order; `flush(upto)` runs it up to a marker (an event's)."""

    def __init__(self, name: str = "stream") -> None:
        self.name, self.issued, self.ran = name, 0, 0
        self._queue: deque = deque()

    def __repr__(self) -> str:
        return f"CpuStream({self.name}, {len(self._queue)} pending)"

    def enqueue(self, fn: Callable[[], object]) -> None:
        self.issued += 1
        self._queue.append((self.issued, fn, torch.is_inference_mode_enabled()))

    def pending(self) -> int:
        return len(self._queue)

    def flush(self, upto: int | None = None) -> None:
        """Run the queued work issued up to `upto` (all of it by default), in order."""
        upto = self.issued if upto is None else upto
        st = _state()
        st.executing += 1
        try:
            with _disable_current_modes():
                while self._queue and self._queue[0][0] <= upto:
                    seq, fn, inference = self._queue.popleft()
                    with torch.inference_mode(inference):
                        fn()
                    self.ran = seq
        finally:
            st.executing -= 1

    def synchronize(self) -> None:
        """The host waits for everything issued on this stream (torch.cuda.Stream.synchronize)."""
        self.flush()


class CpuEvent:
    """A marker in a stream: what was issued there before `record`."""

    def __init__(self) -> None:
        self.stream: CpuStream | None = None
        self.seq = 0

    def record(self, stream: CpuStream | None) -> None:
        self.stream, self.seq = stream, stream.issued if stream is not None else 0

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.flush(self.seq)

    def query(self) -> bool:
        """Done? On the twin the work is run now (a GPU finishes it in its own time): always True."""
        self.synchronize()
        return True


def current_stream() -> CpuStream | None:
    st = _state()
    return st.streams[-1] if st.streams else None


def capturing() -> bool:
    return _state().recorder is not None


def _is_view(func) -> bool:
    rets = func._schema.returns
    return bool(rets) and all(r.alias_info is not None and not r.alias_info.is_write for r in rets)


_METADATA = ("resize", "set_", "as_strided_", "swap")


def _mutated(func, args, kwargs):
    """For an op that only writes tensors it was given (in place / out=): (True, what it returns); else
    (False, None). Ops that change a tensor's shape or storage run at once."""
    schema = func._schema
    if not schema.is_mutable or any(m in schema.name for m in _METADATA):
        return False, None
    written = {}
    for i, a in enumerate(schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            value = args[i] if i < len(args) and not a.kwarg_only else kwargs.get(a.name)
            for s in a.alias_info.before_set:
                written[s] = value
    rets = []
    for r in schema.returns:
        if r.alias_info is None or not r.alias_info.is_write:
            return False, None
        rets.append(written.get(next(iter(r.alias_info.before_set), None)))
    if any(not isinstance(x, torch.Tensor) for x in rets):
        return False, None
    return True, (None if not rets else rets[0] if len(rets) == 1 else tuple(rets))


class _StreamMode(TorchDispatchMode):
    """Tensor ops issued while a CPU stream is current: writes deferred to it, reads after its queue."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        stream = current_stream()
        if stream is None or _is_view(func):
            return func(*args, **kwargs)
        deferred, result = _mutated(func, args, kwargs)
        if deferred:
            stream.enqueue(lambda: func(*args, **kwargs))
            return result
        stream.flush()
        return func(*args, **kwargs)


@contextmanager
def use(stream: CpuStream):
    """`stream` current on this thread: its tensor writes, engine calls and replays deferred to it."""
    st = _state()
    outermost = not st.streams and st.recorder is None  # while capturing, the recorder takes every op
    st.streams.append(stream)
    try:
        if outermost:
            with _StreamMode():
                yield
        else:
            yield
    finally:
        st.streams.pop()


def launch(fn: Callable[[], object]) -> Callable[[], None]:
    """`fn` (an engine call, a graph's replay) as one unit of device work: a call node of the graph being
    captured, else deferred to the current stream, else run now."""

    def issued() -> None:
        st = _state()
        if st.recorder is not None:
            st.recorder.nodes.append(("call", fn, (), {}, None))
        elif st.streams and not st.executing:
            st.streams[-1].enqueue(fn)
        else:
            fn()
    issued.raw = fn
    return issued


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_view(func):
            return func(*args, **kwargs)  # an alias, taken once: it follows its base's storage
        deferred, result = _mutated(func, args, kwargs)
        if deferred:
            self.nodes.append(("op", func, args, kwargs, None))  # recorded, not run (a capture runs no kernel)
            return result
        out = func(*args, **kwargs)  # a new tensor: allocated now, owned by the graph (its private pool)
        if any(x is not None and not isinstance(x, torch.Tensor) for x in tree_flatten(out)[0]):
            raise CaptureError(f"{func}: a value read by the host during CUDA graph capture (a GPU refuses it; "
                               f"the replay would reuse this one)")
        self.nodes.append(("op", func, args, kwargs, out))
        return out


def _replay(nodes: list[tuple]) -> None:
    for kind, fn, args, kwargs, out in nodes:
        if kind == "call":
            fn()
            continue
        y = fn(*args, **kwargs)
        if out is not None:  # new values into the graph's own tensors, which later nodes read
            for dst, src in zip(tree_flatten(out)[0], tree_flatten(y)[0]):
                if isinstance(dst, torch.Tensor) and dst is not src:
                    dst.copy_(src)


def capture(call: Callable[[], None], stream: CpuStream, warmup: int = 1) -> Callable[[], None]:
    """`call` captured as an emulated CUDA graph on `stream` (after `warmup` plain runs there: one is
    enough here, the pool needs no autotuning, and it writes into the state as a GPU's warm-up does);
    returns its replay, a unit of device work on whichever stream is current when it is called."""
    with use(stream):
        for _ in range(warmup):
            call()
    stream.synchronize()
    st = _state()
    if st.recorder is not None:
        raise CaptureError("a capture inside a capture")
    recorder, saved = _Recorder(), st.streams
    st.recorder, st.streams = recorder, []
    try:
        with _disable_current_modes(), recorder:
            call()
    finally:
        st.recorder, st.streams = None, saved
    nodes = recorder.nodes
    inference = torch.is_inference_mode_enabled()

    def replay() -> None:
        with torch.inference_mode(inference):
            _replay(nodes)
    replay.nodes = nodes
    return launch(replay)
