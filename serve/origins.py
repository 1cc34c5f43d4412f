"""Which browser pages and Host names the gate admits: the Origin check (same origin or --allow-origin)
and, on a loopback gate, only loopback names and the --allow-origin hosts (DNS rebinding)."""
from __future__ import annotations


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """An Origin header against the request's Host: same origin (scheme aside), listed, or "*"; no
    Origin (not a browser page) passes."""
    if origin is None:
        return True
    if "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}:
        return True
    netloc = origin.split("://", 1)[-1].rstrip("/")
    return host is not None and netloc.lower() == host.lower()


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def hosts_for(bind_host: str, allow_origins: tuple[str, ...]) -> tuple[str, ...]:
    """The Host names a gate bound to `bind_host` admits: on a loopback address, the loopback names and
    the --allow-origin hosts; elsewhere () (any: the operator asked for the network)."""
    import ipaddress

    try:
        loopback = bind_host == "localhost" or ipaddress.ip_address(bind_host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback or "*" in allow_origins:
        return ()
    extra = tuple(_hostname(o.split("://", 1)[-1]) for o in allow_origins)
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, _hostname(bind_host), *extra)))


def _hostname(netloc: str) -> str:
    """'Host:8000' / '[::1]:8000' / 'host' -> the lower-case name without port or brackets."""
    netloc = netloc.strip().rstrip("/").lower()
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    """The request's Host header against the admitted names (empty: any)."""
    return not allowed or (host is not None and _hostname(host) in allowed)
