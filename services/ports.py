"""Which loopback port a service gets: the one it prefers when that is free, else one the OS says is free."""

from __future__ import annotations

import socket
from collections.abc import Collection

HOST = "127.0.0.1"


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on host:port now. SO_REUSEADDR as servers set it: a listener
    (on this address or a wildcard) makes the port busy, a closed connection in TIME_WAIT does not."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, avoid: Collection[int] = ()) -> int:
    """`preferred` when it is free (and not in `avoid`), else a free port chosen by the OS."""
    if preferred and preferred not in avoid and port_is_free(preferred):
        return preferred
    while True:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port not in avoid:
            return port
