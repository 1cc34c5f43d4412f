"""One WebSocket session on a replica, hello to bye (asyncio, a Starlette/FastAPI WebSocket).

The receive loop decodes and checks each message (serve/protocol.py) and hands units to the hub; a
bad one gets a typed error and, where its unit is known, that unit becomes filler: the session goes
on. The send loop writes what the hub delivers (from its tick thread, never blocking it) in order.
Limits: the hello within `hello_timeout_s`, a message at least every `idle_timeout_s`, a token bucket
on the message rate, and `max_unacked_units` of output the client may leave unacknowledged.
"""
from __future__ import annotations

import asyncio
import json
import time

from .hub import Session, SessionHub
from .protocol import (
    CLOSE_CODES,
    Limits,
    ProtocolError,
    decode_client_unit,
    end_unit,
    error_message,
    parse_hello,
    parse_text,
    ready_message,
)

REJECTS = ("bad_audio", "bad_video", "bad_text", "bad_message")  # with a known unit: that unit becomes filler


class RateLimit:
    """A token bucket: `burst` messages, refilled at `per_s` a second."""

    def __init__(self, burst: int, per_s: float) -> None:
        self.burst, self.per_s, self.tokens, self.at = burst, per_s, float(burst), time.perf_counter()
        self.last_error = 0.0

    def take(self) -> bool:
        now = time.perf_counter()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_s)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Connection:
    """The two loops of one session; `run()` returns when the socket is closed."""

    def __init__(self, ws, hub: SessionHub) -> None:
        self.ws, self.hub, self.spec, self.limits = ws, hub, hub.spec, hub.limits
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.session: Session | None = None
        self.closed = False

    # ---- output: what the hub delivers, in order ---------------------------------------------------

    def deliver(self, item) -> None:
        """From any thread; never blocks."""
        try:
            self.loop.call_soon_threadsafe(self._offer, item)
        except RuntimeError:  # the loop is gone: the replica is stopping
            pass

    def _offer(self, item) -> None:
        if not self.closed:
            self.outbox.put_nowait(item)

    def error(self, e: ProtocolError) -> None:
        """Send a typed error (in order with the outputs); a fatal one closes the socket after it."""
        self.hub.count_error(e.code)
        self._offer(error_message(e))
        if e.fatal:
            self._offer(("close", CLOSE_CODES.get(e.code, 1008)))

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, tuple):
                self.closed = True
                await self.ws.close(item[1])
                return
            if isinstance(item, bytes):
                await self.ws.send_bytes(item)
            else:
                await self.ws.send_text(item)

    # ---- the session -------------------------------------------------------------------------------

    async def run(self, replica: str, kind: str) -> None:
        await self.ws.accept()
        sender = asyncio.create_task(self._send_loop())
        try:
            if await self._open(replica, kind):
                await self._receive_loop()
        finally:
            if self.session is not None:
                self.hub.drop(self.session)
            self.closed = self.closed or self.session is None or not self.session.done
            try:
                await asyncio.wait_for(sender, 2.0)
            except (asyncio.TimeoutError, Exception):
                sender.cancel()

    async def _open(self, replica: str, kind: str) -> bool:
        """hello -> a slot -> ready; False (after a typed error) when the session cannot start."""
        try:
            msg = await asyncio.wait_for(self.ws.receive(), self.limits.hello_timeout_s)
            if msg["type"] == "websocket.disconnect":
                return False
            if msg.get("text") is None:
                raise ProtocolError("bad_hello", "first message: expected a JSON text message (hello), got binary")
            hello = parse_hello(msg["text"])
            self.session = self.hub.reserve(hello, self.deliver)
        except asyncio.TimeoutError:
            self.error(ProtocolError("bad_hello", f"no hello within {self.limits.hello_timeout_s:g} s"))
            return False
        except ProtocolError as e:
            self.error(e)
            return False
        self._offer(ready_message(self.session.id, replica, self.spec, self.limits, kind))
        return True

    async def _receive_loop(self) -> None:
        limits, rate = self.limits, RateLimit(self.limits.burst_messages,
                                              self.limits.messages_per_unit * 1000.0 / self.spec.unit_ms)
        while not self.closed:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), limits.idle_timeout_s)
            except asyncio.TimeoutError:
                self.error(ProtocolError("idle_timeout", f"no message for {limits.idle_timeout_s:g} s"))
                return
            except Exception:  # the socket broke
                return
            if msg["type"] == "websocket.disconnect":
                return
            if not rate.take():
                now = time.perf_counter()
                if now - rate.last_error >= 1.0:  # at most one rate_limited error a second
                    rate.last_error = now
                    self.error(ProtocolError("rate_limited", f"more than {limits.burst_messages} messages at once or "
                                             f"{limits.messages_per_unit:g} per unit; dropped"))
                continue
            try:
                if msg.get("bytes") is not None:
                    self._unit(msg["bytes"])
                else:
                    self._control(msg.get("text") or "")
            except ProtocolError as e:
                if e.unit is not None and e.code in REJECTS:
                    self.hub.reject(self.session, e.unit, time.perf_counter())
                self.error(e)
                if e.fatal:
                    return

    def _unit(self, data: bytes) -> None:
        arrived = time.perf_counter()
        unit = decode_client_unit(data, self.spec, self.limits)
        self.hub.put(self.session, unit, arrived)

    def _control(self, text: str) -> None:
        msg = parse_text(text)
        if msg["type"] == "end":
            self.hub.end(self.session, end_unit(msg))
        elif msg["type"] == "ping":
            self._offer(json.dumps({"type": "pong", "t": msg.get("t") if isinstance(msg.get("t"), (int, float)) else None,
                                    "next_unit": self.session.next_unit}))
        else:
            raise ProtocolError("bad_message", f"text message: expected type \"end\" or \"ping\", got {msg['type']!r}")


async def serve_session(ws, hub: SessionHub, replica: str, kind: str) -> None:
    """Run one WebSocket session on `hub` until it closes."""
    await Connection(ws, hub).run(replica, kind)


__all__ = ["Connection", "Limits", "RateLimit", "serve_session"]
