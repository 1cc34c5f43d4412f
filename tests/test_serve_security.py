"""`streamer serve` as a hostile client and a careless operator would meet it, on one server started
through the CLI (a subprocess: its process tree, its signals): every listening socket of the tree on
loopback, a flood of idle sockets that locks out neither a real client nor /health, frames over the
size limit refused from their header, JSON nested thousands deep as typed errors (no traceback, no
1006), the Origin check, and (last: it stops the server) SIGTERM telling the live session
`shutting_down` with close 1001. Time bounds here are generous liveness bounds, not measurements."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from serve.protocol import encode_client_unit, hello_message

LOOPBACK_V4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it (little-endian hex)


@pytest.fixture(scope="module")
def server(tiny_batch_engines, tmp_path_factory):
    """`streamer serve` on the batched tiny engines (2 slots), allowing one extra origin."""
    pytest.importorskip("ray.serve", reason="ray[serve] is a dependency of `streamer serve` (pip install -e .)")
    from serve.launch import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-P", "-m", "streamer.cli", "serve", "--engines", str(tiny_batch_engines),
                             "--port", str(port), "--max-sessions", "2", "--num-cpus", "2", "--idle-timeout-s", "30",
                             "--allow-origin", "http://allowed.example"],
                            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path_factory.mktemp("cwd"))
    try:
        deadline = time.monotonic() + 240
        while b"Ctrl-C stops." not in log.read_bytes():
            assert proc.poll() is None, f"streamer serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"streamer serve did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield type("Server", (), {"proc": proc, "port": port, "http": f"http://127.0.0.1:{port}",
                                  "ws": f"ws://127.0.0.1:{port}", "log": log})
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        out.close()


# ---- every socket on loopback --------------------------------------------------------------------

def process_tree(root: int) -> set[int]:
    """`root` and every process descended from it (from /proc/*/stat)."""
    parents = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def listening(tcp_tables: list[str]) -> dict[str, str]:
    """socket inode -> local address hex, for every LISTEN row (state 0A) of /proc/net/tcp{,6} texts."""
    out = {}
    for text in tcp_tables:
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[3] == "0A":
                out[f[9]] = f[1].rsplit(":", 1)[0]
    return out


def is_loopback(addr_hex: str) -> bool:
    """127.0.0.0/8, ::1 or ::ffff:127.x as /proc/net/tcp{,6} write them."""
    if len(addr_hex) == 8:
        return addr_hex.endswith("7F")
    return addr_hex == "00000000000000000000000001000000" or (
        addr_hex.startswith("0000000000000000FFFF0000") and addr_hex.endswith("7F"))


def tree_listeners(root: int) -> dict[str, tuple[int, str]]:
    """inode -> (pid, local address hex) of every listening TCP socket the tree of `root` holds."""
    table = listening([Path(f"/proc/net/{t}").read_text() for t in ("tcp", "tcp6")])
    found = {}
    for pid in process_tree(root):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            inode = link[len("socket:["):-1] if link.startswith("socket:[") else None
            if inode in table:
                found[inode] = (pid, table[inode])
    return found


def test_every_listening_socket_of_the_serve_process_tree_is_on_loopback(server):
    from helpers import report

    found = tree_listeners(server.proc.pid)
    names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid, _ in found.values()
             if Path(f"/proc/{pid}/comm").exists()}
    wide = [(names.get(pid), addr) for pid, addr in found.values() if not is_loopback(addr)]
    report(f"serve: {len(found)} listening sockets in {len(set(p for p, _ in found.values()))} processes "
           f"({', '.join(sorted(set(names.values())))}), {len(wide)} beyond loopback")
    assert {"gcs_server", "raylet"} <= set(names.values()), names  # Ray's own ports were seen, not only ours
    assert len(found) >= 8
    assert not wide, f"listening beyond loopback: {wide}"
    # the check itself catches a wildcard bind (the bug: Ray's gRPC on *, metrics on 0.0.0.0)
    assert not is_loopback("00000000") and not is_loopback("00000000000000000000000000000000")
    assert not is_loopback("0200000A") and is_loopback(LOOPBACK_V4)


# ---- a flood of idle sockets ---------------------------------------------------------------------

async def _ready(ws_url: str, origin: str | None = None):
    from websockets.asyncio.client import connect

    ws = await connect(ws_url + "/v1/session", max_size=1 << 24, origin=origin, open_timeout=10)
    await ws.send(hello_message(0))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 10))


async def _end(ws) -> dict:
    await ws.send(json.dumps({"type": "end", "last_unit": -1}))
    msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
    await ws.close()
    return msg


IDLE = 96  # 12 per address: past the gate's 8 waiting per address and 64 in all, so some are pushed out


def test_a_flood_of_idle_sockets_locks_out_neither_a_client_nor_health(server):
    from websockets.asyncio.client import connect

    from helpers import report

    async def scenario():
        idle = await asyncio.gather(*[connect(server.ws + "/v1/session", open_timeout=20,  # from 8 other hosts
                                              local_addr=(f"127.0.0.{2 + i % 8}", 0)) for i in range(IDLE)])
        t0 = time.perf_counter()
        health = await asyncio.to_thread(_get, server.http + "/health")
        t_health = time.perf_counter() - t0
        t0 = time.perf_counter()
        ws, ready = await _ready(server.ws)
        t_ready = time.perf_counter() - t0
        bye = await _end(ws)
        closed = 0
        for s in idle:  # each was pushed out or timed out: bad_hello, closed 1008
            try:
                msg = json.loads(await asyncio.wait_for(s.recv(), 5))
                closed += msg.get("code") == "bad_hello"
            except Exception:
                pass
            await s.close()
        return health, t_health, ready, t_ready, bye, closed

    health, t_health, ready, t_ready, bye, closed = asyncio.run(scenario())
    report(f"serve flood: {IDLE} idle sockets from 8 addresses; /health in {t_health * 1000:.0f} ms, a session ready in "
           f"{t_ready * 1000:.0f} ms; {closed} idle sockets refused bad_hello")
    assert health[0] == 200 and health[1]["ok"], health
    assert ready["type"] == "ready", ready
    assert bye["type"] == "bye"
    assert closed == IDLE
    assert t_health < 3.0 and t_ready < 3.0  # liveness bounds (the bug: 503 / HTTP 500, or 4 s with 13 sockets)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---- frames over the limit, deep JSON, the Origin check ------------------------------------------

def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_frame_over_the_limit_is_refused_from_its_header(server):
    from websockets.exceptions import ConnectionClosed

    async def one() -> int | None:
        ws, ready = await _ready(server.ws)
        assert ready["type"] == "ready"
        big = b"AV\x01U" + b"\x00" * (8 << 20)  # over max_message_bytes, under the WebSocket default of 16 MiB
        with pytest.raises(ConnectionClosed):
            for _ in range(8):
                await ws.send(big)
                await asyncio.sleep(0.05)
            await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code

    before = _rss_bytes(server.proc.pid)
    codes = [asyncio.run(one()) for _ in range(4)]
    grew = _rss_bytes(server.proc.pid) - before
    assert codes == [1009] * 4  # the WebSocket layer's "message too big", from the frame's header
    assert grew < 8 << 20, f"the gate's memory grew by {grew / 2**20:.0f} MiB after 4 sessions' 8 MiB frames"


def test_json_nested_thousands_deep_gets_typed_errors_and_no_traceback(server):
    deep = "[" * 2000 + "]" * 2000  # 4,000 bytes: within the size limit, past json's recursion limit
    silence = np.zeros(3840, np.float32)

    async def scenario():
        from websockets.asyncio.client import connect

        async with connect(server.ws + "/v1/session") as ws:  # a deep hello
            await ws.send(deep)
            hello_error = json.loads(await ws.recv())
            with pytest.raises(Exception):
                await asyncio.wait_for(ws.recv(), 5)
            hello_close = ws.close_code
        ws, ready = await _ready(server.ws)
        spec = ready["spec"]
        frames = np.zeros((4, spec["frame_height"], spec["frame_width"], 3), np.uint8)
        body = ('{"unit":0,"x":' + "[" * 1900 + "]" * 1900 + "}").encode()
        body += b" " * (-(8 + len(body)) % 4)
        deep_unit = b"AV\x01U" + len(body).to_bytes(4, "little") + body
        errors = []
        for _ in range(10):
            await ws.send(deep)
            await ws.send(deep_unit)
        await ws.send(encode_client_unit(0, silence, frames))
        await ws.send(json.dumps({"type": "end", "last_unit": 0}))
        async for m in ws:
            if isinstance(m, str):
                msg = json.loads(m)
                if msg["type"] == "error":
                    errors.append(msg["code"])
                elif msg["type"] == "bye":
                    break
        return hello_error, hello_close, errors, msg, ws.close_code

    hello_error, hello_close, errors, bye, _ = asyncio.run(scenario())
    assert (hello_error["code"], hello_close) == ("bad_hello", 1008)
    assert set(errors) <= {"bad_message", "rate_limited"} and errors.count("bad_message") >= 10, errors
    assert bye["type"] == "bye" and bye["units"] == 1  # the session went on to its end
    text = server.log.read_text(errors="replace")
    assert "Traceback" not in text and "RecursionError" not in text, text[-2000:]


def test_the_origin_check_admits_the_same_origin_and_listed_ones_only(server):
    from websockets.exceptions import InvalidStatus

    async def scenario():
        results = {}
        for origin in (None, f"http://127.0.0.1:{server.port}", "http://allowed.example"):
            ws, ready = await _ready(server.ws, origin)
            results[origin] = ready["type"]
            await _end(ws)
        with pytest.raises(InvalidStatus) as e:
            await _ready(server.ws, "http://evil.example")
        results["evil"] = e.value.response.status_code
        return results

    results = asyncio.run(scenario())
    assert results == {None: "ready", f"http://127.0.0.1:{server.port}": "ready", "http://allowed.example": "ready",
                       "evil": 403}


# ---- SIGTERM: the last test (it stops the server) ------------------------------------------------

def test_sigterm_tells_a_live_session_shutting_down_and_closes_1001(server):
    from websockets.exceptions import ConnectionClosed

    silence = np.zeros(3840, np.float32)

    async def scenario():
        ws, ready = await _ready(server.ws)
        spec = ready["spec"]
        frames = np.zeros((4, spec["frame_height"], spec["frame_width"], 3), np.uint8)
        await ws.send(encode_client_unit(0, silence, frames))
        await asyncio.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        texts = []
        t0 = time.perf_counter()
        try:
            async for m in ws:
                if isinstance(m, str):
                    texts.append(json.loads(m))
        except ConnectionClosed:
            pass
        return texts, ws.close_code, time.perf_counter() - t0

    texts, code, took = asyncio.run(scenario())
    errors = [(t["code"], t["fatal"]) for t in texts if t["type"] == "error"]
    assert errors == [("shutting_down", True)] and code == 1001, (texts, code)
    assert took < 10.0
    assert server.proc.wait(60) == 143
    assert "1 live session(s) told shutting_down" in server.log.read_text()


def test_the_gate_pushes_out_the_oldest_waiting_socket_past_a_cap():
    """Without Ray: past the per-address cap on sockets waiting for their hello, the oldest one from
    that address is pushed out (so a flood cannot keep a client who says hello at once out)."""
    from serve.gate import Gate, GatePolicy, _Pending

    async def scenario():
        gate = Gate("http://127.0.0.1:1", lambda: None, GatePolicy(capacity=2, max_message_bytes=1024,
                                                                    max_pending=5, max_pending_per_address=3))
        for i in range(3):
            gate.pending[i] = _Pending("10.0.0.1")
        gate._make_room("10.0.0.1")
        first = [gate.pending[i].evicted.is_set() for i in range(3)]
        for i in range(3, 5):
            gate.pending[i] = _Pending(f"10.0.0.{i}")
        gate._make_room("10.0.0.9")  # 4 not evicted in all, cap 5: nothing more
        second = [w.evicted.is_set() for w in gate.pending.values()]
        gate.pending[5] = _Pending("10.0.0.9")
        gate._make_room("10.0.0.8")  # 5 waiting: the oldest still waiting goes
        return first, second, [w.evicted.is_set() for w in gate.pending.values()]

    first, second, third = asyncio.run(scenario())
    assert first == [True, False, False]
    assert second == [True, False, False, False, False]
    assert third == [True, True, False, False, False, False]


def test_origin_allowed():
    from serve.origins import origin_allowed

    assert origin_allowed(None, "h:1", ())
    assert origin_allowed("http://h:1", "h:1", ()) and origin_allowed("https://H:1/", "h:1", ())
    assert not origin_allowed("http://evil:1", "h:1", ())
    assert origin_allowed("http://a.example", "h:1", ("http://a.example/",))
    assert origin_allowed("http://evil:1", "h:1", ("*",))



def test_the_gate_rate_limits_new_sockets_per_address():
    from serve.gate import Gate, GatePolicy

    gate = Gate("http://127.0.0.1:1", lambda: None, GatePolicy(capacity=1, max_message_bytes=1024,
                                                                connects_per_address=(3, 0.5)))
    assert [gate._may_connect("10.0.0.1") for _ in range(5)] == [True, True, True, False, False]
    assert gate._may_connect("10.0.0.2")  # another address has its own bucket


def test_a_reachable_cluster_without_token_auth_is_refused_before_ray_starts(tiny_batch_engines, monkeypatch, capsys):
    from streamer.cli import main

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert main(["serve", "--engines", str(tiny_batch_engines), "--listen", "192.0.2.1", "--port", "0"]) == 2
    assert "RAY_AUTH_MODE=token" in capsys.readouterr().err
    assert main(["serve", "--engines", str(tiny_batch_engines), "--listen", "192.0.2.1", "--address", "auto",
                 "--port", "0"]) == 2
    assert "expected one of them" in capsys.readouterr().err


@pytest.fixture
def bare_gate():
    """A gate without Ray (its upstream unreachable) on a free loopback port: head deadline 1 s, 3
    connections per address, Host names of a loopback gate."""
    from serve.gate import Gate, GatePolicy
    from serve.gate_server import GateServer
    from serve.origins import hosts_for

    policy = GatePolicy(capacity=1, max_message_bytes=1024, head_timeout_s=1.0, max_connections_per_address=3,
                        allow_hosts=hosts_for("127.0.0.1", ()))
    server = GateServer(Gate("http://127.0.0.1:1", lambda: None, policy), "127.0.0.1", 0).start()
    yield server.server.servers[0].sockets[0].getsockname()[1]
    server.stop()


def _closed_within(sock, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_are_closed_and_capped_per_address(bare_gate):
    """TCP connections that never send a request head are closed at the head deadline (uvicorn alone
    keeps them forever), and past the per-address cap a new one is closed at once."""
    import socket

    idle = [socket.create_connection(("127.0.0.1", bare_gate)) for _ in range(3)]
    extra = socket.create_connection(("127.0.0.1", bare_gate))
    assert _closed_within(extra, 0.5)  # the 4th from this address: closed before the deadline
    assert not _closed_within(idle[0], 0.2)  # the first three wait for their head ...
    assert all(_closed_within(s, 5.0) for s in idle)  # ... and are closed at its deadline
    for s in (*idle, extra):
        s.close()
    with pytest.raises(urllib.error.HTTPError) as e:  # the cap is free again: answered (no board here: 503)
        urllib.request.urlopen(f"http://127.0.0.1:{bare_gate}/health", timeout=10)
    assert e.value.code == 503 and b"unreachable" in e.value.read()


def test_a_rebound_host_name_is_refused(bare_gate):
    """DNS rebinding: a page on a name that resolves to 127.0.0.1 sends matching Origin and Host; a
    loopback gate answers only to loopback names (and --allow-origin hosts)."""
    def get(host):
        req = urllib.request.Request(f"http://127.0.0.1:{bare_gate}/info", headers={"Host": host,
                                                                                   "Origin": f"http://{host}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert get(f"rebind.evil.example:{bare_gate}") == 403
    assert get(f"127.0.0.1:{bare_gate}") != 403 and get(f"localhost:{bare_gate}") != 403  # upstream down: 503
    from serve.origins import host_allowed, hosts_for

    assert hosts_for("0.0.0.0", ()) == ()  # asked for the network: any Host (the Origin check still holds)
    assert host_allowed("demo.example:8000", hosts_for("127.0.0.1", ("http://demo.example:8000",)))
