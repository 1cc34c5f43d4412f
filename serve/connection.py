"""One WebSocket session on a replica, hello to bye (asyncio, a Starlette/FastAPI WebSocket).

The receive loop decodes and checks each message (serve/protocol.py) and hands units to the hub; a
bad one gets a typed error and, where its unit is known, that unit becomes filler: the session goes
on. The send loop writes what the hub delivers (from its tick thread, never blocking it) in order.
Limits: the hello within `hello_timeout_s`, a unit (binary) or `end` at least every `idle_timeout_s`
(pings do not count), a token bucket on the message rate (the session's first accepted `end` is
exempt), `max_unacked_units` of output the client may leave unacknowledged, and at most
`max_unacked_units + OUTBOX_SLACK` messages waiting unsent (slow_client: the client does not read).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
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
    pong_message,
    ready_message,
)
from .wire import MAX_HEADER_BYTES

REJECTS = ("bad_audio", "bad_video", "bad_text", "bad_message")  # with a known unit: that unit becomes filler
OUTBOX_SLACK = 8  # messages (errors, pongs, the final one, bye) the outbox holds beyond max_unacked_units
CLOSE_TIMEOUT_S = 1.0  # closing the socket of a client that does not read gives up after this
log = logging.getLogger("av_streamer.serve")


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


class LogLimit:
    """At most one log line per `every_s` for refusals no check foresaw (the rest are counted into the
    next line), so a client cannot flood the replica's log."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s, self.at, self.skipped = every_s, -float("inf"), 0

    def warn(self, what: str, e: BaseException) -> None:
        now = time.monotonic()
        if now - self.at < self.every_s:
            self.skipped += 1
            return
        log.warning("refused a %s: %s: %s (%d more since the last line)", what, type(e).__name__,
                    str(e)[:200], self.skipped)
        self.at, self.skipped = now, 0


LOG_LIMIT = LogLimit()


class Connection:
    """The two loops of one session; `run()` returns when the socket is closed."""

    def __init__(self, ws, hub: SessionHub) -> None:
        self.ws, self.hub, self.spec, self.limits = ws, hub, hub.spec, hub.limits
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.session: Session | None = None
        self.closed = False
        self.sender: asyncio.Task | None = None
        self.receiver: asyncio.Task | None = None
        self.aborting: asyncio.Task | None = None  # closing a client that does not read

    # ---- output: what the hub delivers, in order ---------------------------------------------------

    def deliver(self, item) -> None:
        """From any thread; never blocks."""
        try:
            self.loop.call_soon_threadsafe(self._offer, item)
        except RuntimeError:  # the loop is gone: the replica is stopping
            pass

    def _offer(self, item) -> None:
        """Queue `item` to send (event loop only); more than max_unacked_units + OUTBOX_SLACK waiting ends
        the session (slow_client)."""
        if self.closed:
            return
        self.outbox.put_nowait(item)
        if self.outbox.qsize() > self.limits.max_unacked_units + OUTBOX_SLACK:
            self._abort_slow()

    def _abort_slow(self) -> None:
        """The client does not read: count slow_client, free the slot and row, drop what waits, stop the
        send loop and close 1008 (the error message itself cannot get through)."""
        waiting = self.outbox.qsize()
        self.closed = True
        self.hub.count_error("slow_client")
        if self.session is not None:
            self.hub.drop(self.session)
        while not self.outbox.empty():
            self.outbox.get_nowait()
        for task in (self.sender, self.receiver):
            if task is not None:
                task.cancel()
        self.aborting = asyncio.ensure_future(self._close_now(1008, f"slow_client: {waiting} messages unread"))

    async def _close_now(self, code: int, reason: str) -> None:
        """Close the socket, giving up after CLOSE_TIMEOUT_S (a client that does not read may block it); the
        socket goes anyway when `run` returns."""
        with contextlib.suppress(Exception):  # timed out, or the socket is already gone
            await asyncio.wait_for(self.ws.close(code, reason[:120]), CLOSE_TIMEOUT_S)

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
        self.sender = asyncio.create_task(self._send_loop())
        try:
            if await self._open(replica, kind):
                self.receiver = asyncio.create_task(self._receive_loop())
                await asyncio.wait({self.receiver})  # cancelled by _abort_slow; its other errors are raised
                if not self.receiver.cancelled():
                    self.receiver.result()
        finally:
            if self.receiver is not None:
                self.receiver.cancel()
            if self.session is not None:
                self.hub.drop(self.session)
            self.closed = self.closed or self.session is None or not self.session.done
            if self.aborting is not None:
                await self.aborting
            elif not self.sender.done():
                try:
                    await asyncio.wait_for(self.sender, 2.0)
                except (asyncio.TimeoutError, Exception):
                    self.sender.cancel()

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
        except Exception as e:  # a hello no check foresaw: refused like any bad hello, one log line at most
            LOG_LIMIT.warn("hello", e)
            self.error(ProtocolError("bad_hello", f"first message: expected a hello, got one that could not be read "
                                                  f"({type(e).__name__})"))
            return False
        self._offer(ready_message(self.session.id, replica, self.spec, self.limits, kind))
        return True

    async def _receive_loop(self) -> None:
        limits, rate = self.limits, RateLimit(self.limits.burst_messages,
                                              self.limits.messages_per_unit * 1000.0 / self.spec.unit_ms)
        deadline = time.perf_counter() + limits.idle_timeout_s  # moved on by units and end only, not pings
        while not self.closed:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), max(0.0, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                self.error(ProtocolError("idle_timeout", f"no unit or end for {limits.idle_timeout_s:g} s "
                                                         f"(expected one at least that often; pings do not count)"))
                return
            except Exception:  # the socket broke
                return
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            control = self._parse(msg.get("text") or "") if data is None else None
            is_end = isinstance(control, dict) and control["type"] == "end"
            if not (is_end and self._first_end(control)) and not rate.take():
                now = time.perf_counter()
                if now - rate.last_error >= 1.0:  # at most one rate_limited error a second
                    rate.last_error = now
                    self.error(ProtocolError("rate_limited", f"more than {limits.burst_messages} messages at once or "
                                             f"{limits.messages_per_unit:g} per unit; dropped"))
                continue
            if data is not None or is_end:
                deadline = time.perf_counter() + limits.idle_timeout_s
            try:
                if data is not None:
                    self._unit(data)
                elif isinstance(control, ProtocolError):
                    raise control
                else:
                    self._control(control)
            except ProtocolError as e:
                if e.unit is not None and e.code in REJECTS:
                    self.hub.reject(self.session, e.unit, time.perf_counter())
                self.error(e)
                if e.fatal:
                    return
            except Exception as e:  # a message no check foresaw: dropped like any bad one, the session goes on
                LOG_LIMIT.warn("message", e)
                self.error(ProtocolError("bad_message", f"a message that could not be read ({type(e).__name__}); "
                                                        f"expected a unit frame, end or ping"))

    @staticmethod
    def _parse(text: str) -> dict | ProtocolError:
        """A text message -> its JSON object, or the ProtocolError it gets (parsed before the rate limit,
        so that an end is known; one over the size limit is refused unparsed)."""
        if len(text) > MAX_HEADER_BYTES:
            return ProtocolError("too_large", f"text message: expected at most {MAX_HEADER_BYTES} bytes, "
                                              f"got {len(text)} characters")
        try:
            return parse_text(text)
        except ProtocolError as e:
            return e

    def _first_end(self, msg: dict) -> bool:
        """Whether `end` message `msg` is valid and the session's first: it passes the rate limit, so a
        session can always end."""
        try:
            end_unit(msg)
        except ProtocolError:
            return False
        return self.session.end_after is None

    def _unit(self, data: bytes) -> None:
        arrived = time.perf_counter()
        unit = decode_client_unit(data, self.spec, self.limits)
        self.hub.put(self.session, unit, arrived)

    def _control(self, msg: dict) -> None:
        """A parsed text message: end or ping (bad_message otherwise)."""
        if msg["type"] == "end":
            self.hub.end(self.session, end_unit(msg))
        elif msg["type"] == "ping":
            self._offer(pong_message(msg.get("t"), self.session.next_unit))
        else:
            raise ProtocolError("bad_message", f"text message: expected type \"end\" or \"ping\", got {msg['type']!r}")


async def serve_session(ws, hub: SessionHub, replica: str, kind: str) -> None:
    """Run one WebSocket session on `hub` until it closes."""
    await Connection(ws, hub).run(replica, kind)


__all__ = ["Connection", "Limits", "RateLimit", "serve_session"]
