"""The two-process placement: the performer in its own process on the same device, with its own cache.

Per unit the thinker copies the KV delta into a slot of an `Exchange` (device memory shared once by a
CUDA IPC handle; shared memory on a CPU) and sends a 12-byte message; the performer appends it to its
cache, solves y_k, writes y_k into the slot and answers with the bytes it moved (for the thinker's
ledger) and its span times. Process start, failure detection and shutdown: runtime/worker.py.

Two processes on one GPU time-slice unless NVIDIA MPS runs: the session says so when it does not.
"""
from __future__ import annotations

import os
import struct
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

from ..trace import SpanLog
from ..worker import RESULT, Layout, WorkerProcess, serve, worker_main
from .device import Device
from .exchange import Exchange
from .ledger import DIRECTIONS, TransferLedger

REPORT = struct.Struct("<3q4d")  # after a RESULT message: the performer's h2d, d2h, d2d bytes; its spans


def two_process_slot_layout(spec: SimpleNamespace) -> Layout:
    """One slot of the two-process exchange: the KV delta in (in thinker_step's output dtype), y_k out."""
    return {"k_delta": (spec.delta_shape, spec.delta_dtype), "v_delta": (spec.delta_shape, spec.delta_dtype),
            "y_audio": (spec.audio_latent_shape, "float32"), "y_video": (spec.video_latent_shape, "float32")}


def mps_running() -> bool:
    """Whether an NVIDIA MPS control daemon is reachable (its pipe directory holds `control`)."""
    return os.path.exists(os.path.join(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"), "control"))


class ProcessDevicePerformer:
    placement = "two-process"
    capturable = True  # its graphs are captured in its own process, where it checks its engine

    def __init__(self, directory: str | Path, spec: SimpleNamespace, seed: int, log: SpanLog, ledger: TransferLedger,
                 device: Device, stream, threads: int | None = None, timeout_s: float | None = None,
                 trust: str | Path | None = None, graphs: bool | None = None) -> None:
        self.log, self.ledger, self.device, self.stream = log, ledger, device, stream
        self.notes: list[str] = []
        if device.cuda and not mps_running():
            note = ("two-process placement without NVIDIA MPS: the thinker and performer processes time-slice the "
                    "GPU instead of running at once (start MPS with `nvidia-cuda-mps-control -d`)")
            self.notes.append(note)
            warnings.warn(note, RuntimeWarning, stacklevel=3)
        self.slots = Exchange.create(two_process_slot_layout(spec), device)
        self.worker = WorkerProcess(release=self.slots.close)
        config = {"directory": str(Path(directory).resolve()), "exchange": self.slots.handle, "seed": seed,
                  "threads": threads, "device": str(device), "trust": str(trust) if trust else None,
                  "graphs": graphs}
        warm_ms = self.worker.start("runtime.device.process", config, timeout_s)
        self.timeout_s = timeout_s or max(2.0, 10 * warm_ms / 1000.0)
        self._unit = -1

    @property
    def process(self):
        return self.worker.process

    def capture(self) -> None:
        pass

    def reset(self) -> None:
        pass

    def submit(self, unit_index: int, k_delta, v_delta, delta_ready) -> None:
        """The delta into its slot (a device copy), complete before the message goes."""
        t0 = time.perf_counter()
        with self.device.use(self.stream):
            self.ledger.d2d(self.slots.tensor(unit_index, "k_delta"), k_delta)
            self.ledger.d2d(self.slots.tensor(unit_index, "v_delta"), v_delta)
        if self.stream is not None:
            self.stream.synchronize()  # the other process reads the slot once our message arrives
        self.worker.send_unit(unit_index)
        self._unit = unit_index
        self.log.add("thinker", "transfer", unit_index, t0, time.perf_counter())

    def ready(self, unit_index: int) -> bool:
        """Whether y_k has arrived (without waiting)."""
        return self.worker.ready()

    def result(self, unit_index: int):
        """Wait for y_k -> (audio, video latents in the slot, complete: no event to wait for)."""
        _, report = self.worker.receive(RESULT, unit_index, self.timeout_s, payload_size=REPORT.size)
        h2d, d2h, d2d, a0, a1, s0, s1 = REPORT.unpack(report)
        for direction, n in zip(DIRECTIONS, (h2d, d2h, d2d)):
            self.ledger.count(direction, n)
        self.log.add("performer", "append", unit_index, a0, a1)
        self.log.add("performer", "solve", unit_index, s0, s1)
        return self.slots.tensor(unit_index, "y_audio"), self.slots.tensor(unit_index, "y_video"), None

    def close(self, force: bool = False) -> None:
        """Stop the process, reap it, free the exchange. Idempotent."""
        self.worker.close(force)


def device_performer_main(cfg: dict, conn) -> None:
    """The performer process: load flow_step on the device, then per UNIT append + solve + answer."""

    def setup(stack: ExitStack):
        import torch

        from ..engine import load_initial_state
        from ..spec import unit_spec
        from .engines import load_device_engines
        from .solver import DeviceSolver
        from .state import DeviceKVCache

        device = Device(cfg["device"])
        graphs = cfg.get("graphs")
        graphs = device.cuda if graphs is None else graphs  # the thinker's choice (on the CPU twin: emulated)
        manifest, engines = load_device_engines(cfg["directory"], device, ["flow_step"], cfg["threads"],
                                                trust=cfg.get("trust"), graphs=graphs)
        spec = unit_spec(manifest)
        exchange = Exchange.attach(cfg["exchange"], two_process_slot_layout(spec))
        stack.callback(exchange.close)
        ledger, stream = TransferLedger(), device.stream(high_priority=True)
        cache = DeviceKVCache(spec, device, load_initial_state(cfg["directory"], manifest).get("kv_cache"))
        solver = DeviceSolver(engines["flow_step"], spec, device, cache, ledger, cfg["seed"])
        with device.use(stream):
            if graphs and solver.capturable:
                solver.capture(stream)
            t0 = time.perf_counter()
            solver.load(0)
            solver.run()
            if stream is not None:
                stream.synchronize()
            warm_ms = 1000.0 * (time.perf_counter() - t0)
            cache.reset()
        ledger.unit_done()

        def work(k: int) -> bytes:
            t0 = time.perf_counter()
            with device.use(stream), torch.inference_mode():
                solver.load(k)
                cache.append(solver.unit, exchange.tensor(k, "k_delta"), exchange.tensor(k, "v_delta"))
                ledger.count("d2d", cache.append_nbytes)
                t1 = time.perf_counter()
                solver.run()
                ledger.d2d(exchange.tensor(k, "y_audio"), solver.y_audio)
                ledger.d2d(exchange.tensor(k, "y_video"), solver.y_video)
            if stream is not None:
                stream.synchronize()
            done = ledger.unit_done()
            return REPORT.pack(done["h2d"], done["d2h"], done["d2d"], t0, t1, t1, time.perf_counter())
        return int(warm_ms) + 1, work

    serve(conn, setup)


if __name__ == "__main__":  # started by ProcessDevicePerformer with its JSON config
    worker_main(device_performer_main)
