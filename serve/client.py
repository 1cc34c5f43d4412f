"""The asyncio client of protocol 1 (`streamer client`, bench/serve_load.py): one session, the user's
units sent at real-time pace (unit k once it is complete, at t0 + (k + 1) * 160 ms; `lead` units early),
every server message handed to a callback as it comes. websockets + numpy."""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

from .protocol import (
    PATH,
    ServerUnit,
    decode_server_unit,
    encode_client_unit,
    hello_message,
    strict_json,
)


class SessionError(ValueError):
    """The server refused the session or ended it with a fatal error: `code` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def session_url(url: str) -> str:
    """ws://host:port[/path] (http:// accepted) -> the session URL (the protocol's path when none is given)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"--url: expected ws://HOST:PORT[{PATH}], got {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path if parts.path not in ("", "/") else PATH, "", ""))


@dataclass
class ClientStats:
    sent: int = 0
    received: int = 0  # server units (text of a unit)
    media: int = 0  # units of audio and frames
    inputs: Counter = field(default_factory=Counter)  # what the server made each unit from
    latency_ms: list[float] = field(default_factory=list)  # unit k sent -> its response (text of k) in
    errors: list[dict] = field(default_factory=list)
    bye: dict | None = None
    fatal: dict | None = None
    lags_ms: list[float] = field(default_factory=list)  # the server's tick lag per unit
    late_units: int = 0  # units whose output left the server more than a unit after their tick was due


class SessionClient:
    """`async with SessionClient(url) as c:` opens a session (hello -> ready; SessionError if refused);
    `c.spec` has the served preset's unit sizes; `await c.stream(units, n, on_unit)` runs it."""

    def __init__(self, url: str, seed: int = 0, video: str = "raw", audio_out: str = "f32", video_out: str = "raw",
                 open_timeout_s: float = 30.0) -> None:
        self.url, self.seed, self.video = session_url(url), seed, video
        self.audio_out, self.video_out, self.open_timeout_s = audio_out, video_out, open_timeout_s
        self.ws = None
        self.ready: dict = {}

    async def __aenter__(self) -> "SessionClient":
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake

        try:
            self.ws = await connect(self.url, max_size=64 << 20, open_timeout=self.open_timeout_s, ping_interval=None)
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as e:
            raise SessionError("connect", f"{self.url}: expected a WebSocket session, got: {e or type(e).__name__}") from None
        await self.ws.send(hello_message(self.seed, self.audio_out, self.video_out))
        msg = strict_json(await asyncio.wait_for(self.ws.recv(), self.open_timeout_s))
        if msg.get("type") == "error":
            await self.ws.close()
            raise SessionError(msg.get("code", "?"), msg.get("message", ""))
        if msg.get("type") != "ready":
            await self.ws.close()
            raise SessionError("bad_message", f"expected ready, got {str(msg)[:200]}")
        self.ready = msg
        self.spec = SimpleNamespace(**msg["spec"])
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()

    async def stream(self, units, n_units: int, on_unit=None, lead: int = 0, realtime: bool = True,
                     on_error=None) -> ClientStats:
        """Send `n_units` of `units` ((audio, frames) pairs) and then end; hand every ServerUnit to
        `on_unit` as it comes; return when the server says bye and closes (or ends the session)."""
        stats, sent_at, unit_s = ClientStats(), {}, self.spec.unit_ms / 1000.0
        last = {"ack": -1}

        async def send() -> None:
            t0 = time.perf_counter()
            for k, (audio, frames) in enumerate(units):
                if k >= n_units:
                    break
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + (k + 1 - lead) * unit_s - time.perf_counter()))
                now = time.perf_counter()
                sent_at[k] = now
                await self.ws.send(encode_client_unit(k, audio, frames, self.video, t=round(1000.0 * now, 3),
                                                      ack=last["ack"]))
                stats.sent += 1
            await self.ws.send(json.dumps({"type": "end", "last_unit": stats.sent - 1}))

        async def receive() -> None:
            from websockets.exceptions import ConnectionClosed

            try:
                async for msg in self.ws:
                    if isinstance(msg, bytes):
                        u = decode_server_unit(msg, self.spec)
                        self._count(u, stats, sent_at)
                        if u.unit is not None:
                            last["ack"] = u.unit
                        if on_unit is not None:
                            on_unit(u)
                        continue
                    m = strict_json(msg)
                    if m.get("type") == "error":
                        stats.errors.append(m)
                        if m.get("fatal"):
                            stats.fatal = m
                        if on_error is not None:
                            on_error(m)
                    elif m.get("type") == "bye":
                        stats.bye = m
            except ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        sender = asyncio.create_task(send())
        done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done:  # the server closed first (a fatal error): stop sending
            sender.cancel()
        else:
            await receiver
        for task in (sender, receiver):
            if task.done() and not task.cancelled() and task.exception() is not None:
                from websockets.exceptions import ConnectionClosed

                if not isinstance(task.exception(), ConnectionClosed):
                    raise task.exception()
        return stats

    def _count(self, u: ServerUnit, stats: ClientStats, sent_at: dict) -> None:
        if u.unit is not None:
            stats.received += 1
            stats.inputs[u.input] += 1
            if u.unit in sent_at:
                stats.latency_ms.append(1000.0 * (time.perf_counter() - sent_at.pop(u.unit)))
            lag, step = u.timing.get("lag_ms"), u.timing.get("step_ms")
            if isinstance(lag, (int, float)) and isinstance(step, (int, float)):
                stats.lags_ms.append(lag)
                if lag + step > self.spec.unit_ms:  # the hub's definition of a late unit
                    stats.late_units += 1
        if u.audio is not None:
            stats.media += 1
