"""Where a server listens: its ports, the loopback rule, and how this machine reaches a bind."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, fields

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServerPorts:
    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002
    supervisor: int = 8003  # mmserve's own /metrics and /status (mmserve/supervisor.py)

    @classmethod
    def free(cls) -> "ServerPorts":
        """Ports nobody listens on, for tests and side-by-side runs."""
        socks = [socket.socket() for _ in fields(cls)]
        try:
            for s in socks:
                s.bind((LOOPBACK, 0))
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only there (``localhost``): addresses
    only this machine can reach. The server and the console judge a bind by this one rule."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False  # unresolvable: assume it is reachable from elsewhere
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def probe_host(bind: str) -> str:
    """The address to reach a listener bound to `bind` from this machine, URL-ready."""
    if bind in ("0.0.0.0", ""):
        return LOOPBACK
    if bind == "::":
        return "[::1]"
    return f"[{bind}]" if ":" in bind else bind


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (SO_REUSEADDR: TIME_WAIT is not "taken")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False
