"""Starting and stopping the application: a local Ray instance on loopback by default, a new cluster
others may join (`listen`), or an existing one (`address`), where scaling to more GPUs and nodes is
Ray's job; the gate (serve/gate.py) in front of Serve's proxy. Used by `streamer serve`, the tests
and bench/serve_load.py."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .app import APP_NAME, build_app
from .gate import Gate, GatePolicy
from .gate_server import GateServer
from .origins import hosts_for


def check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on (before Ray starts, with a clear message)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"--port {port}: expected a free port on {host}, got: {e.strerror or e}") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_ray_cwd: str | None = None  # the empty folder a local Ray instance runs in (removed by `stop`)


@contextlib.contextmanager
def neutral_cwd() -> Iterator[None]:
    """Ray puts the driver's working directory on its workers' import path: start it from an empty
    private one, so no worker imports a module planted where the command was run. The folder stays
    while Ray runs: the processes it starts later inherit it as their working directory, and in a
    deleted one some libraries cannot load (torch's MKL aborts the worker)."""
    global _ray_cwd
    old = os.getcwd()
    _ray_cwd = _ray_cwd or tempfile.mkdtemp(prefix="avs-ray-")
    os.chdir(_ray_cwd)
    try:
        yield
    finally:
        os.chdir(old)


def start_ray(address: str | None = None, num_cpus: int | None = None, object_store_mb: int | None = None,
              listen: str | None = None, say=None) -> bool:
    """ray.init: join `address`, or start a local instance (dashboard off) with every port on loopback,
    or on `listen` (a cluster others may join). Joining or listening requires Ray's token authentication
    (serve/raynet.py). `say(line)` gets the start-up lines about it. True when started here."""
    import ray

    from .raynet import local_only, require_token

    if ray.is_initialized():
        return False
    say = say or (lambda line: None)
    opts = {"include_dashboard": False, "logging_level": logging.WARNING, "configure_logging": True}
    local = {"num_cpus": num_cpus, "object_store_memory": object_store_mb << 20 if object_store_mb else None}
    with neutral_cwd():
        if address:
            say(require_token(reachable=True, create=False))
            say(f"Ray: joining the cluster at {address}; its ports are as that cluster was started")
            ray.init(address=address, **opts)
            return False
        if listen and listen not in ("127.0.0.1", "localhost"):
            say(require_token(reachable=True))
            say(f"Ray: a new cluster on {listen}, reachable from the network (its gRPC ports listen on every "
                f"interface); nodes join with `ray start --address {listen}:<GCS port>` and the same token")
            ray.init(_node_ip_address=listen, **local, **opts)
            return True
        say(require_token(reachable=False))
        local_only()
        ray.init(_node_ip_address="127.0.0.1", **local, **opts)
        say("Ray: a local instance, every port on 127.0.0.1")
    return True


_gate: GateServer | None = None  # the gate of the application deployed here (stopped by `stop`)


def deploy(config: dict, replicas: int, slots: int, host: str = "127.0.0.1", port: int = 8000,
           gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0, gate: dict | None = None) -> str:
    """Run the application behind Serve's HTTP proxy (on a private loopback port) and the gate on
    host:port (serve/gate.py; `gate`: GatePolicy's fields beyond capacity and sizes); returns the gate's
    http:// base URL once every replica is up."""
    global _gate
    from ray import serve as ray_serve

    from runtime.manifest import read_manifest
    from runtime.spec import unit_spec

    from .protocol import Limits

    limits = Limits(**config.get("limits", {}))
    gate = dict(gate or {})
    gate.setdefault("allow_hosts", hosts_for(host, tuple(gate.get("allow_origins", ()))))  # DNS rebinding
    policy = GatePolicy(capacity=replicas * slots,
                        max_message_bytes=limits.max_message_bytes(unit_spec(read_manifest(Path(config["engines"])))),
                        hello_timeout_s=limits.hello_timeout_s, **gate)
    inner = free_port()
    ray_serve.start(http_options={"host": "127.0.0.1", "port": inner},
                    logging_config={"log_level": "WARNING", "enable_access_log": False})
    ray_serve.run(build_app(config, replicas, slots, gpus_per_replica, cpus_per_replica), name=APP_NAME,
                  route_prefix="/", blocking=False)
    board = functools.cache(lambda: ray_serve.get_deployment_handle("Board", APP_NAME))
    _gate = GateServer(Gate(f"http://127.0.0.1:{inner}", board, policy), host, port).start()
    bound = _gate.server.servers[0].sockets[0].getsockname()[1] if port == 0 else port
    return f"http://{host}:{bound}"


def stop_sessions() -> int:
    """Tell every live session `shutting_down` (close 1001) and stop the gate; returns how many were told."""
    global _gate
    told = _gate.stop() if _gate is not None else 0
    _gate = None
    return told


def stop(local: bool) -> None:
    """Remove the application; with a local instance, stop Serve and Ray too."""
    import ray
    from ray import serve as ray_serve

    stop_sessions()
    if not ray.is_initialized():
        return
    with contextlib.suppress(Exception):
        ray_serve.delete(APP_NAME)
    if local:
        with contextlib.suppress(Exception):
            ray_serve.shutdown()
        ray.shutdown()
        global _ray_cwd
        if _ray_cwd is not None:
            with contextlib.suppress(OSError):
                os.rmdir(_ray_cwd)
            _ray_cwd = None
