"""Where Ray listens, and who may talk to it. A local instance keeps every Ray port (GCS, raylet,
workers, dashboard agent, runtime-env agent, metrics) on 127.0.0.1: Ray binds its gRPC servers to
loopback exactly when its node address is 127.0.0.1, and it rewrites a 127.0.0.1 given to
ray.init to the machine's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-machine
mode), which every Ray process it starts inherits. A cluster others can reach (joined with --address,
or started with --listen HOST) requires Ray's token authentication: RAY_AUTH_MODE=token and a token
(RAY_AUTH_TOKEN, or the file RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, which must be the user's own,
not a symlink, mode 0600)."""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from unitio.growing import create_new

LOCAL_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def token_path() -> Path:
    """The token file Ray reads: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    given = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(given) if given else Path.home() / ".ray" / "auth_token"


def check_token_file(path: Path, create: bool) -> str:
    """The token file made safe: created 0600 (in a 0700 folder) when absent and `create`; an existing one
    must be a regular file of this user's, not a symlink; group/other bits are removed. Returns what was
    done, for the start-up message. ValueError when it cannot be made safe or is missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise ValueError(f"Ray token authentication: expected a token (RAY_AUTH_TOKEN, or the file {path}), "
                             f"got none; copy the cluster's token there (mode 0600)") from None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with create_new(path, perms=0o600) as f:
            f.write(secrets.token_hex(32))
        return f"token created in {path} (0600)"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise ValueError(f"Ray token file {path}: expected a regular file, got a symlink or special file")
    if st.st_uid != os.getuid():
        raise ValueError(f"Ray token file {path}: expected a file owned by this user (uid {os.getuid()}), "
                         f"got uid {st.st_uid}")
    if st.st_mode & 0o077:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        return f"token in {path} (mode {stat.S_IMODE(st.st_mode):o} tightened to 0600)"
    return f"token in {path} (0600)"


def require_token(reachable: bool, create: bool = True) -> str:
    """Turn Ray's token authentication on for this process tree (RAY_AUTH_MODE=token) and make sure a
    token is there (`create`: generate one when there is none; joining a cluster needs its token).
    `reachable`: the cluster is reachable from the network, so RAY_AUTH_MODE=disabled
    is refused; a local instance may run with it disabled (its ports are on loopback only). Returns the
    start-up line about authentication."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode and mode != "token":
        if reachable:
            raise ValueError(f"RAY_AUTH_MODE={mode}: a Ray cluster reachable from the network must use token "
                             f"authentication; expected RAY_AUTH_MODE=token (or unset)")
        return f"Ray token authentication: {mode} (RAY_AUTH_MODE); ports on loopback only"
    os.environ["RAY_AUTH_MODE"] = "token"
    _refresh_ray_config()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "Ray token authentication: on (token from RAY_AUTH_TOKEN)"
    return f"Ray token authentication: on, {check_token_file(token_path(), create)}"


def _refresh_ray_config() -> None:
    """Ray's C++ config caches RAY_AUTH_MODE when first read: re-read it (as ray.init does when it turns
    token authentication on by itself)."""
    try:
        from ray._raylet import Config
    except ImportError:
        return
    Config.initialize("")


def local_only() -> None:
    """Make Ray's node address loopback for this process and every Ray process it starts (see above)."""
    os.environ[LOCAL_ENV] = "0"
    try:
        from ray._private import ray_constants
    except ImportError:  # Ray not installed: ray.init reports it
        return
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import; this process may have imported ray already


def loopback_replica_grpc() -> None:
    """In a Serve replica's process of a local instance: its inter-deployment gRPC server, which Serve
    binds to "[::]:0" whatever the node address, goes on 127.0.0.1 instead. Called when serve.app is
    imported (the replica imports it to build the deployment); nothing elsewhere."""
    if os.environ.get(LOCAL_ENV) != "0":
        return
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    bind = replica.add_port_to_grpc_server
    if getattr(bind, "avs_loopback", False):
        return

    def loopback(server, address: str):
        return bind(server, address.replace("[::]", "127.0.0.1", 1))

    loopback.avs_loopback = True
    replica.add_port_to_grpc_server = loopback
