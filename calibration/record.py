"""Calibration data: the real inputs of every stage while a reference session streams.

The runtime's own unit path (`EngineSession.in_process`) runs on the torch stage modules, each
wrapped so it keeps a copy of what it was fed. A calibration set is one safetensors file:

    {stage}.{input}     [N, ...]  every call's input, in call order (N = units, or units x flow steps)
    kv.k_delta, kv.v_delta [units, ...]  each unit's KV delta (thinker_step's output)

The large inputs that follow from earlier ones are not stored: the KV cache (rebuilt from the deltas,
with the same sink + ring arithmetic) and the codecs' states (rebuilt by replaying the codec from its
initial state). `stage_feeds` gives every call's full feeds back, in order.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from runtime.engine import Engine
from runtime.host.kv_cache import KVBuffers
from runtime.spec import unit_spec
from unitio.jsonsafe import loads_bounded
from unitio.names import TRANSFORMER_STAGES

from .torch_engines import TorchStageEngine, torch_parts

FORMAT = "av-streamer-calibration/1"
DERIVED = ("cache_k", "cache_v")  # rebuilt from kv.*; codec "state_*" inputs are rebuilt by replay


class CalibrationError(ValueError):
    """A calibration file that does not fit (another preset, another format, a stage it lacks)."""


class RecordingEngine(Engine):
    """An engine that keeps a copy of every call's inputs (not the derived ones) and chosen outputs."""

    def __init__(self, inner: Engine, keep_outputs: tuple[str, ...] = ()) -> None:
        super().__init__(inner.stage, inner.inputs, inner.outputs)
        self.inner, self.keep_outputs = inner, keep_outputs
        self.calls: dict[str, list[np.ndarray]] = {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kept = {k: np.array(v, copy=True) for k, v in feeds.items() if k not in DERIVED and not k.startswith("state_")}
        out = self.inner.run(feeds)
        kept.update({k: np.array(out[k], copy=True) for k in self.keep_outputs})
        for name, x in kept.items():
            self.calls.setdefault(name, []).append(x)
        return out


def record(system, units: list[tuple[np.ndarray, np.ndarray]], seed: int, out: str | Path, source: str = "synthetic",
           on_unit: Callable[[int], None] = lambda k: None, weights: dict | None = None) -> Path:
    """Stream `units` (audio, frames) through the runtime's unit path on the torch modules of `system`,
    recording every stage's inputs; writes and returns the safetensors file `out`. Its metadata holds
    the SHA-256 of the weights (`weights_digest`) and `weights`, where they came from (file or seed)."""
    from safetensors.numpy import save_file

    from runtime.host.session import EngineSession

    manifest, engines, initial = torch_parts(system)
    recording = {name: RecordingEngine(e, ("k_delta", "v_delta") if name == "thinker_step" else ())
                 for name, e in engines.items()}
    session = EngineSession.in_process(manifest, recording, initial, seed=seed)
    for k, (audio, frames) in enumerate(units):
        session.step(audio, frames)
        on_unit(k)
    session.flush()
    tensors = {}
    for stage, engine in recording.items():
        for name, calls in engine.calls.items():
            key = f"kv.{name}" if name in ("k_delta", "v_delta") else f"{stage}.{name}"
            tensors[key] = np.ascontiguousarray(np.stack(calls))  # safetensors writes the raw buffer:
            # a stack of transposed outputs is not C-ordered and would be saved scrambled
    meta = {"format": FORMAT, "preset": system.preset.to_json(), "units": str(len(units)), "seed": str(seed),
            "source": source, "weights_sha256": weights_digest(system), "weights": json.dumps(weights or {})}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    return out


def weights_digest(system) -> str:
    """SHA-256 of a model's weights themselves (every state-dict tensor: name, dtype, shape, bytes, in name
    order): the same for the same weights whether they came from a file or a seed."""
    h = hashlib.sha256()
    for name, t in sorted(system.state_dict().items()):
        a = t.detach().cpu().contiguous()
        h.update(f"{name}|{a.dtype}|{tuple(a.shape)}\n".encode())
        h.update(a.view(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


def check_calibration_weights(path: str | Path, system) -> None:
    """Refuse a calibration file recorded from other weights than `system`'s (its weights_sha256 metadata
    against `weights_digest(system)`); CalibrationError names the file and both digests."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such calibration file (make one with `streamer calibrate`)")
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors' own error types for a damaged header
        raise CalibrationError(f"{path}: expected a calibration safetensors file, got an error: {e}") from None
    recorded, here = meta.get("weights_sha256"), weights_digest(system)
    if recorded is None:
        raise CalibrationError(f"{path}: records no weights_sha256 (made before calibration files recorded their "
                               f"weights); expected weights {here[:16]}...: record it again with `streamer calibrate`")
    if recorded != here:
        raise CalibrationError(f"{path}: recorded from weights {recorded[:16]}... ({meta.get('weights', '?')}), but "
                               f"this build's weights are {here[:16]}...: calibrate with the weights you build")


def load_calibration(path: str | Path, preset=None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a calibration file; refuses another format or (given) another preset."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such calibration file (make one with `streamer calibrate`)")
    with safe_open(str(path), "np") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise CalibrationError(f"{path}: expected a {FORMAT} file, got format {meta.get('format')!r}")
    try:  # metadata from disk: bounded (size, nesting) before it is parsed
        recorded = loads_bounded(meta.get("preset", "null"), 65_536) if preset is not None else None
    except ValueError as e:
        raise CalibrationError(f"{path}: preset metadata: {e}") from None
    if preset is not None and recorded != json.loads(preset.to_json()):
        got = recorded.get("name") if isinstance(recorded, dict) else recorded
        raise CalibrationError(f"{path}: calibration of preset {got!r}, but the model is preset {preset.name!r} "
                               f"(or the same name with other sizes)")
    return load_file(str(path)), meta


def stage_feeds(tensors: dict[str, np.ndarray], stage: str, system) -> Iterator[dict[str, np.ndarray]]:
    """Every recorded call of `stage` as its full feeds (cache / state rebuilt), in call order.
    The cache arrays are reused between calls: use each feeds dict before asking for the next."""
    prefix = f"{stage}."
    recorded = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not recorded:
        raise CalibrationError(f"the calibration set has no inputs of stage {stage!r}")
    n = len(next(iter(recorded.values())))
    cached = stage in TRANSFORMER_STAGES  # the cache shapes come from thinker_step's I/O
    manifest, engines, initial = torch_parts(system, stages=("thinker_step",) if cached else (stage,))
    if cached:
        spec = unit_spec(manifest)
        cache, appended = KVBuffers(spec), 0
        for i in range(n):
            unit = int(recorded["unit_index"][i][0])
            want = unit if stage == "thinker_step" else unit + 1  # flow_step sees unit k's own keys too
            while appended < want:
                cache.append(appended, tensors["kv.k_delta"][appended], tensors["kv.v_delta"][appended])
                appended += 1
            yield {**{k: v[i] for k, v in recorded.items()}, **cache.feeds()}
    else:  # a codec: replay it from its initial state to get each call's state
        engine: TorchStageEngine = engines[stage]
        state = dict(initial[stage])
        for i in range(n):
            feeds = {**{k: v[i] for k, v in recorded.items()}, **state}
            yield feeds
            out = engine.run(feeds)
            state = {f"state_{j}": out[f"new_state_{j}"] for j in range(len(state))}

