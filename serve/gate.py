"""The gate: the one socket `streamer serve` opens to users (--host:--port), in front of Serve's HTTP proxy
(which listens on a private loopback port). It holds what a flood of idle or slow sockets would otherwise
take from users, before any of it reaches a replica's request queue:

- the WebSocket layer's own size limit (uvicorn's ws_max_size) at the largest message the protocol
  allows: a larger frame is refused from its header (close 1009), never buffered whole;
- an Origin check on /v1/session (same origin, or one of --allow-origin; a request without Origin,
  i.e. not from a browser page, passes);
- the hello read here, within `hello_timeout_s`: a socket reaches a replica only once it has said hello.
  Sockets waiting for their hello are capped (in all, and per client address); a new one past a cap
  pushes out the oldest waiting one, so a flood cannot keep a real client (who says hello at once) out;
  new sockets per address are rate limited (a storm of reconnects is refused before the handshake);
- sessions per client address capped, and `server_full` sent at once when every slot of every replica
  is taken (nothing queues);
- /health and /metrics answered here from the board, never behind a replica's sessions;
- on stop, every live session gets `shutting_down` and close 1001 before Ray goes down.
Everything else (the page, /info) is passed to the proxy. Runs in a thread of the driver process
(serve/gate_server.py); the Origin and Host rules are in serve/origins.py."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from .origins import host_allowed, origin_allowed
from .protocol import CLOSE_CODES, PATH, ProtocolError, error_message, parse_hello

log = logging.getLogger("av_streamer.serve.gate")
SEND_TIMEOUT_S = 5.0  # a unit the client's socket does not take within this ends the session (slow_client)
UPSTREAM_MAX_BYTES = 64 << 20  # what the gate reads from the proxy (server units); the proxy is ours


@dataclass
class GatePolicy:
    """What the gate lets through. capacity: sessions in all (replicas x slots)."""

    capacity: int
    max_message_bytes: int
    hello_timeout_s: float = 2.0
    max_pending: int = 64  # sockets waiting for their hello, in all
    max_pending_per_address: int = 8
    max_sessions_per_address: int = 16
    connects_per_address: tuple[int, float] = (16, 8.0)  # new sockets per address: a burst, then per second
    allow_origins: tuple[str, ...] = ()  # "*" admits any
    # Host headers admitted (lower case, no port); empty: any. A gate on loopback admits only loopback names
    # and the --allow-origin hosts, so a page whose name rebinds to 127.0.0.1 (DNS rebinding) is refused
    allow_hosts: tuple[str, ...] = ()
    head_timeout_s: float = 5.0  # a TCP connection must have sent its request head by then
    max_connections_per_address: int = 48  # open TCP connections per client address, handshakes included


@dataclass
class _Pending:
    address: str
    evicted: asyncio.Event = field(default_factory=asyncio.Event)


class Gate:
    """The ASGI app; `upstream` is the proxy's http:// base URL, `board` a callable giving the Board
    deployment handle."""

    def __init__(self, upstream: str, board, policy: GatePolicy) -> None:
        self.upstream, self.board, self.policy = upstream.rstrip("/"), board, policy
        self.pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self.sessions: dict[int, tuple[object, object]] = {}  # id -> (client send, upstream socket)
        self.by_address: collections.Counter = collections.Counter()
        self.refused: collections.Counter = collections.Counter()
        self.stopping = False
        self._ids = 0
        self._buckets: dict[str, list[float]] = {}  # address -> [tokens, last time]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("websocket", "http") and self.policy.allow_hosts:
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"), None)
            if not host_allowed(host, self.policy.allow_hosts):
                self.refused["host"] += 1
                if scope["type"] == "websocket":
                    await receive()  # websocket.connect
                    await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
                else:
                    await _respond(send, 403, b"this server answers to its own names only", "text/plain")
                return
        if scope["type"] == "websocket":
            if scope["path"] != PATH:
                await send({"type": "websocket.close", "code": 1008})
                return
            await self._session(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    # ---- HTTP ------------------------------------------------------------------------------------

    async def _http(self, scope, receive, send) -> None:
        path, method = scope["path"], scope["method"]
        if method not in ("GET", "HEAD"):
            return await _respond(send, 405, b"expected GET", "text/plain")
        if path == "/health":
            try:
                summary = await asyncio.wait_for(asyncio.to_thread(self._board_call, "health"), 5.0)
            except Exception as e:  # the board restarting, or Ray going down
                summary = {"ok": False, "board": f"unreachable: {type(e).__name__}: {e}"[:200]}
            summary["gate"] = {"pending": len(self.pending), "sessions": len(self.sessions),
                               "refused": dict(self.refused), "stopping": self.stopping}
            ok = bool(summary.get("ok")) and not self.stopping
            return await _respond(send, 200 if ok else 503, json.dumps(summary).encode(), "application/json")
        if path == "/metrics":
            try:
                text = await asyncio.wait_for(asyncio.to_thread(self._board_call, "text"), 5.0)
            except Exception as e:
                return await _respond(send, 503, f"board unreachable: {e}".encode()[:200], "text/plain")
            return await _respond(send, 200, (text + self._metrics()).encode(), "text/plain; version=0.0.4; charset=utf-8")
        query = ("?" + scope["query_string"].decode("latin-1")) if scope.get("query_string") else ""
        status, ctype, body, extra = await asyncio.to_thread(self._fetch, path + query)
        await _respond(send, status, b"" if method == "HEAD" else body, ctype, extra)

    def _board_call(self, name: str):
        return getattr(self.board(), name).remote().result(timeout_s=5)

    def _fetch(self, path: str) -> tuple[int, str, bytes, list]:
        """GET `path` from the proxy (the page, /info) -> status, content type, body, cache header."""
        try:
            with urllib.request.urlopen(self.upstream + path, timeout=10) as r:
                return r.status, r.headers.get("content-type", "text/plain"), r.read(), _cache(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("content-type", "text/plain"), e.read(), []
        except OSError as e:
            return 503, "text/plain", f"the application is not reachable: {e}".encode(), []

    def _metrics(self) -> str:
        lines = ["# HELP avs_gate_pending Sockets waiting for their hello at the gate.", "# TYPE avs_gate_pending gauge",
                 f"avs_gate_pending {len(self.pending)}",
                 "# HELP avs_gate_refused_total Sockets the gate refused or closed before a replica saw them.",
                 "# TYPE avs_gate_refused_total counter"]
        lines += [f'avs_gate_refused_total{{reason="{k}"}} {v}' for k, v in sorted(self.refused.items())]
        return "\n".join(lines) + "\n"

    # ---- sessions --------------------------------------------------------------------------------

    async def _refuse(self, send, reason: str, e: ProtocolError | None) -> None:
        """Count `reason`; send typed error `e` (if any) and close with its code."""
        self.refused[reason] += 1
        with contextlib.suppress(Exception):
            if e is not None:
                await send({"type": "websocket.send", "text": error_message(e)})
            await send({"type": "websocket.close", "code": CLOSE_CODES.get(e.code, 1008) if e else 1008})

    async def _session(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not origin_allowed(headers.get("origin"), headers.get("host"), self.policy.allow_origins):
            self.refused["origin"] += 1
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return
        address = (scope.get("client") or ("?", 0))[0]
        if (await receive())["type"] != "websocket.connect":
            return
        if not self._may_connect(address):  # a storm of reconnects from one address: refused before accept
            self.refused["connect_rate"] += 1
            await send({"type": "websocket.close", "code": 1008})
            return
        if self.stopping:
            await send({"type": "websocket.accept"})
            return await self._refuse(send, "stopping", ProtocolError("shutting_down", "the server is stopping"))
        self._make_room(address)
        self._ids += 1
        sid, waiting = self._ids, _Pending(address)
        self.pending[sid] = waiting
        await send({"type": "websocket.accept"})
        try:
            hello = await self._hello(receive, waiting)
        finally:
            self.pending.pop(sid, None)
        if hello is None:
            return
        if isinstance(hello, tuple):
            return await self._refuse(send, *hello)
        p = self.policy
        if self.stopping:
            return await self._refuse(send, "stopping", ProtocolError("shutting_down", "the server is stopping"))
        if len(self.sessions) >= p.capacity:
            return await self._refuse(send, "full", ProtocolError("server_full", f"all {p.capacity} session slots "
                                                                  f"are taken; expected a free one, try again later"))
        if self.by_address[address] >= p.max_sessions_per_address:
            return await self._refuse(send, "per_address", ProtocolError(
                "server_full", f"{self.by_address[address]} sessions from your address already: expected at most "
                               f"{p.max_sessions_per_address} per address"))
        self.by_address[address] += 1
        try:
            await self._relay(sid, hello, receive, send)
        finally:
            self.by_address[address] -= 1
            if self.by_address[address] <= 0:
                del self.by_address[address]

    def _may_connect(self, address: str) -> bool:
        """A token bucket of new sockets per client address (connects_per_address)."""
        burst, per_s = self.policy.connects_per_address
        now = time.monotonic()
        if len(self._buckets) > 10_000:  # forget the addresses whose bucket is full again
            self._buckets = {a: b for a, b in self._buckets.items() if b[0] + (now - b[1]) * per_s < burst}
        tokens, at = self._buckets.get(address, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * per_s)
        if tokens < 1.0:
            self._buckets[address] = [tokens, now]
            return False
        self._buckets[address] = [tokens - 1.0, now]
        return True

    def _make_room(self, address: str) -> None:
        """Past a cap on waiting sockets (per address, then in all), push out the oldest waiting one."""
        mine = [w for w in self.pending.values() if w.address == address and not w.evicted.is_set()]
        if len(mine) >= self.policy.max_pending_per_address:
            mine[0].evicted.set()
        live = [w for w in self.pending.values() if not w.evicted.is_set()]
        if len(live) >= self.policy.max_pending:
            live[0].evicted.set()

    async def _hello(self, receive, waiting: _Pending):
        """The first message within the deadline -> its ASGI message; None (the client left) or
        (reason, error) to refuse."""
        get = asyncio.ensure_future(receive())
        evicted = asyncio.ensure_future(waiting.evicted.wait())
        done, _ = await asyncio.wait({get, evicted}, timeout=self.policy.hello_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        evicted.cancel()
        if get not in done:
            get.cancel()
            why = ("evicted", "no hello yet and the server needed the room for a newer connection") if done else \
                  ("hello_timeout", f"no hello within {self.policy.hello_timeout_s:g} s")
            return why[0], ProtocolError("bad_hello", f"{why[1]}; expected the hello as the first message")
        msg = get.result()
        if msg["type"] == "websocket.disconnect":
            return None
        try:  # checked here too, so that a bad hello is told so (not server_full) and never reaches a replica
            if msg.get("text") is None:
                raise ProtocolError("bad_hello", "first message: expected a JSON text message (hello), got binary")
            parse_hello(msg["text"])
        except ProtocolError as e:
            return "bad_hello", e
        return msg

    async def _relay(self, sid: int, hello: dict, receive, send) -> None:
        """Open the session on the proxy with `hello` and pass messages both ways until either side closes."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        url = self.upstream.replace("http://", "ws://", 1) + PATH
        try:
            up = await connect(url, max_size=UPSTREAM_MAX_BYTES, compression=None, open_timeout=10,
                               ping_interval=None, close_timeout=2)
        except Exception as e:
            log.warning("gate: the application is not reachable: %s", e)
            return await self._refuse(send, "upstream", ProtocolError("server_error", "the application is not "
                                                                      "reachable; expected it up, try again later"))
        self.sessions[sid] = (send, up)
        client_gone = slow = False

        async def to_upstream() -> None:
            nonlocal client_gone
            msg = hello
            with contextlib.suppress(ConnectionClosed):  # the replica closed: to_client relays how
                while True:
                    if msg["type"] == "websocket.disconnect":
                        client_gone = True
                        return
                    if msg.get("bytes") is not None:
                        await up.send(msg["bytes"])
                    elif msg.get("text") is not None:
                        await up.send(msg["text"])
                    msg = await receive()

        async def to_client() -> None:
            nonlocal slow
            with contextlib.suppress(ConnectionClosed):
                async for m in up:
                    key = "bytes" if isinstance(m, bytes) else "text"
                    try:  # a client that stops reading is ended here, the one layer that sees its socket
                        await asyncio.wait_for(send({"type": "websocket.send", key: m}), SEND_TIMEOUT_S)
                    except asyncio.TimeoutError:
                        slow = True
                        return

        tasks = [asyncio.ensure_future(to_upstream()), asyncio.ensure_future(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.sessions.pop(sid, None)
            if slow:
                self.refused["slow_client"] += 1
                with contextlib.suppress(Exception):  # its socket does not drain: close it without waiting
                    await asyncio.wait_for(send({"type": "websocket.close", "code": CLOSE_CODES.get("slow_client", 1008),
                                                 "reason": "slow_client"}), 1.0)
            elif not client_gone and not self.stopping:
                code = up.close_code
                if code is None or code == 1006:  # the replica went away without closing: say so
                    err = ProtocolError("server_error", "the session's replica went away")
                    with contextlib.suppress(Exception):
                        await send({"type": "websocket.send", "text": error_message(err)})
                    code = CLOSE_CODES[err.code]
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": code, "reason": (up.close_reason or "")[:120]})
            with contextlib.suppress(Exception):
                await up.close()

    async def shutdown(self) -> int:
        """Every live session gets `shutting_down` and close 1001, every waiting socket close 1001;
        returns how many sessions were told."""
        self.stopping = True
        told = 0
        err = error_message(ProtocolError("shutting_down", "the server is stopping; expected no more units"))
        for send, up in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await send({"type": "websocket.send", "text": err})
                await send({"type": "websocket.close", "code": 1001, "reason": "shutting_down"})
                told += 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(up.close(1001, "shutting_down"), 2.0)
        for w in self.pending.values():
            w.evicted.set()
        return told


def _cache(headers) -> list:
    value = headers.get("cache-control")
    return [(b"cache-control", value.encode("latin-1"))] if value else []


async def _respond(send, status: int, body: bytes, ctype: str, extra: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype.encode("latin-1")), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
