"""Starting and stopping the application: a local Ray instance by default, or an existing cluster
(`address`), where scaling to more GPUs and nodes is Ray's job. Used by `streamer serve`, the tests
and bench/serve_load.py."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator

from .app import APP_NAME, build_app


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


def start_ray(address: str | None = None, num_cpus: int | None = None, object_store_mb: int | None = None) -> bool:
    """ray.init: join `address`, or start a local instance (dashboard off). True when started here."""
    import ray

    if ray.is_initialized():
        return False
    opts = {"include_dashboard": False, "logging_level": logging.WARNING, "configure_logging": True}
    with neutral_cwd():
        if address:
            ray.init(address=address, **opts)
            return False
        ray.init(num_cpus=num_cpus, object_store_memory=object_store_mb << 20 if object_store_mb else None, **opts)
    return True


def deploy(config: dict, replicas: int, slots: int, host: str = "127.0.0.1", port: int = 8000,
           gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0) -> str:
    """Start Serve's HTTP proxy on host:port and run the application; returns its http:// base URL once
    every replica is up."""
    from ray import serve as ray_serve

    ray_serve.start(http_options={"host": host, "port": port},
                    logging_config={"log_level": "WARNING", "enable_access_log": False})
    ray_serve.run(build_app(config, replicas, slots, gpus_per_replica, cpus_per_replica), name=APP_NAME,
                  route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def stop(local: bool) -> None:
    """Remove the application; with a local instance, stop Serve and Ray too."""
    import ray
    from ray import serve as ray_serve

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
