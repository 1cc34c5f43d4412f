"""The two-process placement: the performer in its own process on the same device, with its own cache.

Per unit the thinker copies the KV delta into a slot of an `Exchange` (device memory shared once by a
CUDA IPC handle; shared memory on a CPU) and sends an 8-byte message; the performer appends it to its
cache, solves y_k, writes y_k into the slot and answers with the bytes it moved (for the thinker's
ledger) and its span times. Process start, failure detection and shutdown are `PerformerProcess`'s.

Two processes on one GPU time-slice unless NVIDIA MPS runs: the session says so when it does not.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
import warnings
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace

from .device import Device
from .exchange import Exchange
from .ledger import DIRECTIONS, TransferLedger
from ..host.performer import MESSAGE, READY, RESULT, STOP, PerformerProcess, send_failure
from ..trace import SpanLog

REPORT = struct.Struct("<3q4d")  # after a RESULT message: the performer's h2d, d2h, d2d bytes; its spans


def exchange_layout(spec: SimpleNamespace) -> dict:
    return {"k_delta": (spec.delta_shape, spec.delta_dtype), "v_delta": (spec.delta_shape, spec.delta_dtype),
            "y_audio": (spec.audio_latent_shape, "float32"), "y_video": (spec.video_latent_shape, "float32")}


def mps_running() -> bool:
    """Whether an NVIDIA MPS control daemon is reachable (its pipe directory holds `control`)."""
    return os.path.exists(os.path.join(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"), "control"))


class ProcessDevicePerformer(PerformerProcess):
    placement = "two-process"
    capturable = True  # its graphs are captured in its own process

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
        self.slots = Exchange.create(exchange_layout(spec), device)  # `slots`: PerformerProcess.close frees it
        config = {"directory": str(Path(directory).resolve()), "exchange": self.slots.handle, "seed": seed,
                  "threads": threads, "device": str(device), "trust": str(trust) if trust else None,
                  "graphs": graphs}
        warm_ms = self._start("runtime.device.process", config, timeout_s)
        self.timeout_s = timeout_s or max(2.0, 10 * warm_ms / 1000.0)
        self._unit = -1

    def capture(self) -> None:
        pass

    def submit(self, unit_index: int, k_delta, v_delta, delta_ready) -> None:
        """The delta into its slot (a device copy), complete before the message goes."""
        t0 = time.perf_counter()
        with self.device.use(self.stream):
            self.ledger.d2d(self.slots.tensor(unit_index, "k_delta"), k_delta)
            self.ledger.d2d(self.slots.tensor(unit_index, "v_delta"), v_delta)
        if self.stream is not None:
            self.stream.synchronize()  # the other process reads the slot once our message arrives
        self._send(1, unit_index)  # UNIT
        self._unit = unit_index
        self.log.add("thinker", "transfer", unit_index, t0, time.perf_counter())

    def result(self, unit_index: int):
        """Wait for y_k -> (audio, video latents in the slot, complete: no event to wait for)."""
        report = self._receive_report(unit_index)
        h2d, d2h, d2d, a0, a1, s0, s1 = REPORT.unpack(report)
        for direction, n in zip(DIRECTIONS, (h2d, d2h, d2d)):
            self.ledger.count(direction, n)
        self.log.add("performer", "append", unit_index, a0, a1)
        self.log.add("performer", "solve", unit_index, s0, s1)
        return self.slots.tensor(unit_index, "y_audio"), self.slots.tensor(unit_index, "y_video"), None

    def _receive_report(self, unit_index: int) -> bytes:
        self._last_payload = b""
        self._receive(RESULT, unit_index, self.timeout_s)
        if len(self._last_payload) != REPORT.size:
            raise self._failed(f"performer protocol: a RESULT without its report ({len(self._last_payload)} bytes)")
        return self._last_payload


def device_performer_main(cfg: dict, conn: Connection) -> None:
    """The performer process: load flow_step on the device, then per UNIT append + solve + answer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the thinker, which stops us
    exchange = None
    try:
        import torch

        from .engines import load_device_engines
        from .solver import DeviceSolver
        from .state import DeviceKVCache
        from ..host.engines import load_initial_state
        from ..spec import unit_spec

        device = Device(cfg["device"])
        graphs = cfg.get("graphs")
        graphs = device.cuda if graphs is None else graphs  # the thinker's choice (on the CPU twin: emulated)
        manifest, engines = load_device_engines(cfg["directory"], device, ["flow_step"], cfg["threads"],
                                                trust=cfg.get("trust"), graphs=graphs)
        spec = unit_spec(manifest)
        exchange = Exchange.attach(cfg["exchange"], exchange_layout(spec))
        ledger, stream = TransferLedger(), device.stream(high_priority=True)
        cache = DeviceKVCache(spec, device, load_initial_state(cfg["directory"], manifest).get("kv_cache"))
        solver = DeviceSolver(engines["flow_step"], spec, device, cache, ledger, cfg["seed"])
        append_bytes = 2 * cache.k[:, :, :, :spec.unit_tokens].numel() * cache.k.element_size()
        with device.use(stream):
            if graphs and engines["flow_step"].can_capture:
                solver.capture(stream)
            t0 = time.perf_counter()
            solver.load(0)
            solver.run()
            if stream is not None:
                stream.synchronize()
            warm_ms = 1000.0 * (time.perf_counter() - t0)
            cache.reset()
        ledger.unit_done()
        conn.send_bytes(MESSAGE.pack(READY, int(warm_ms) + 1))
        while True:
            try:
                op, k = MESSAGE.unpack(conn.recv_bytes()[:MESSAGE.size])
            except EOFError:  # the thinker is gone
                return
            if op == STOP:
                return
            t0 = time.perf_counter()
            with device.use(stream), torch.inference_mode():
                solver.load(k)
                cache.append(solver.unit, exchange.tensor(k, "k_delta"), exchange.tensor(k, "v_delta"))
                ledger.count("d2d", append_bytes)
                t1 = time.perf_counter()
                solver.run()
                ledger.d2d(exchange.tensor(k, "y_audio"), solver.y_audio)
                ledger.d2d(exchange.tensor(k, "y_video"), solver.y_video)
            if stream is not None:
                stream.synchronize()
            done = ledger.unit_done()
            report = REPORT.pack(done["h2d"], done["d2h"], done["d2d"], t0, t1, t1, time.perf_counter())
            conn.send_bytes(MESSAGE.pack(RESULT, k) + report)
    except Exception:  # noqa: BLE001 - every failure goes to the thinker, with its traceback
        send_failure(conn)
    finally:
        if exchange is not None:
            exchange.close()


if __name__ == "__main__":  # started by ProcessDevicePerformer with its JSON config
    config = json.loads(sys.argv[1])
    device_performer_main(config, Connection(config["fd"]))
