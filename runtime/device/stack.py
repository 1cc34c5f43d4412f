"""The device path assembled once: what a session of one conversation (runtime/device/session.py) and
a batch of B sessions (runtime/device/batch.py) both build on.

    _assemble   the device, the transfer ledger, the thinker's stream, the engines (loaded from a
                directory whose manifest is checked, or given in process), the spec, the resident KV
                cache and the thinker
    _start      the performer attached; CUDA graphs decided (default: on a GPU when the thinker's
                engines and the performer's flow_step are all capturable; graphs=True on engines that
                cannot be captured is refused) and captured; every state reset to a fresh stream
    _take_y     y_k from the performer into the thinker's buffers, on the thinker's stream (the stream
                waits for the performer's event; the host does not)
"""
from __future__ import annotations

from pathlib import Path

from ..engine import installed_versions, load_initial_state
from ..manifest import read_manifest
from ..order import DevicePerformer
from ..spec import unit_spec
from .device import Device
from .engines import load_device_engines
from .ledger import TransferLedger
from .state import DeviceKVCache
from .thinker import DeviceThinker


def load_parts(directory: str | Path, device: Device, stages: list[str], threads: int | None = None,
               expect_preset: str | None = None, trust: str | Path | None = None,
               graphs: bool | None = None) -> tuple[dict, dict, dict]:
    """(manifest, {stage: DeviceEngine}, initial state) of an engine directory, its manifest checked (and
    its signature against `trust`, where given), for tensors on `device`."""
    manifest = read_manifest(directory, expect_preset, installed_versions(), trust=trust)
    manifest, loaded = load_device_engines(directory, device, stages, threads, manifest, graphs=graphs)
    return manifest, loaded, load_initial_state(directory, manifest)


class DeviceStack:
    """The parts of a device-path session; subclasses call `_assemble`, build their performer, `_start`."""

    performer: DevicePerformer

    def _assemble(self, device: str, parts: tuple[dict, dict, dict]) -> tuple[dict, dict]:
        """Allocate the resident state and the thinker for `parts` = (manifest, engines, initial state)
        on `device` (already a Device, or its name); returns (engines, initial state) for the performer."""
        self.device = device if isinstance(device, Device) else Device(device)
        self.ledger = TransferLedger()
        manifest, loaded, initial = parts
        self.manifest, self.spec = manifest, unit_spec(manifest)
        self.stream = self.device.stream()
        self.cache = DeviceKVCache(self.spec, self.device, initial.get("kv_cache"))
        self.thinker = DeviceThinker(loaded, initial, self.spec, self.device, self.ledger, self.cache, self.stream)
        return loaded, initial

    def _start(self, performer: DevicePerformer, graphs: bool | None) -> None:
        """Attach `performer`, capture the phases as CUDA graphs where asked (None: on a GPU when every
        engine can be captured), then reset every state to a fresh stream."""
        self.performer = performer
        capturable = self.thinker.capturable and performer.capturable
        self.graphs = self.device.cuda and capturable if graphs is None else graphs
        if self.graphs:
            if not capturable:
                raise ValueError("graphs=True: an engine of this directory cannot be captured in a CUDA graph "
                                 "(ONNX Runtime runs on its own stream)")
            self.thinker.capture()
            performer.capture()
            self.device.synchronize()
        self.cache.reset()  # the captures' warm-up runs wrote into the state: start from a fresh stream
        self.thinker.reset()
        performer.reset()
        self.device.synchronize()  # the resets ran on the default stream; the unit path runs on others
        self.delta_ready, self.out_ready = self.device.event(), self.device.event()

    def _take_y(self, k) -> None:
        """y_k (every row's last solve, for a batch) into the thinker's buffers, on its stream."""
        y_audio, y_video, ready = self.performer.result(k)
        self.device.wait(self.stream, ready)
        self.thinker.receive(y_audio, y_video)

    def close(self) -> None:
        self.performer.close()
