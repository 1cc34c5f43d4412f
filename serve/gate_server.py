"""The gate (serve/gate.py) served by uvicorn in a thread of the driver process, with the HTTP layer's
own limits: h11 request heads capped, a deadline for the request head, connections per address capped."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time

from .gate import Gate, GatePolicy


class GateServer:
    """The gate served by uvicorn in a thread of its own (its own event loop)."""

    def __init__(self, gate: Gate, host: str, port: int) -> None:
        import uvicorn

        self.gate = gate
        config = uvicorn.Config(gate, host=host, port=port, http=_gate_protocol(gate.policy), ws="websockets-sansio",
                                ws_max_size=gate.policy.max_message_bytes, ws_per_message_deflate=False,
                                lifespan="off", access_log=False, log_level="warning", timeout_keep_alive=5,
                                server_header=False, proxy_headers=False, h11_max_incomplete_event_size=16 << 10)
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="avs-gate", daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve())

    def start(self, timeout_s: float = 30.0) -> GateServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gate did not start on {self.server.config.host}:{self.server.config.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> int:
        """Tell every session (shutting_down, 1001), then stop serving; returns the sessions told."""
        told = 0
        if self.loop is not None and self.thread.is_alive():
            with contextlib.suppress(Exception):
                told = asyncio.run_coroutine_threadsafe(self.gate.shutdown(), self.loop).result(timeout=5)
            self.server.should_exit = True
            self.thread.join(timeout=5)
        return told


def _gate_protocol(policy: GatePolicy):
    """uvicorn's h11 protocol (request heads capped at 16 KiB) with what it lacks before a request: a
    deadline for the request head (an idle or slowloris socket is closed, not kept forever) and a cap on
    open connections per client address (X-Forwarded-For is never trusted: proxy_headers off)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_by_address: collections.Counter = collections.Counter()

    class GateH11(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._address = (self.client or ("?", 0))[0]
            open_by_address[self._address] += 1
            if open_by_address[self._address] > policy.max_connections_per_address:
                transport.close()
                return
            # the keep-alive handler closes an idle connection; armed now, it is the head deadline
            # (uvicorn cancels it when the request head is in, and arms it again after each response)
            self.timeout_keep_alive_task = self.loop.call_later(policy.head_timeout_s, self.timeout_keep_alive_handler)

        def connection_lost(self, exc) -> None:
            open_by_address[self._address] -= 1
            if open_by_address[self._address] <= 0:
                del open_by_address[self._address]
            super().connection_lost(exc)

    return GateH11
