"""Free loopback ports for brokers and services started by tests and benchmarks."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from modelstream.ops.broker import CONTROLLER_PORT_OFFSET


def free_port_pair() -> int:
    """A port P with P and P+1000 (the controller port) both free on loopback."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 1000 > 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on loopback")


def free_base_below_ephemeral(span: int = 16) -> int:
    """A base port with ``span`` free ports after it, below the kernel's ephemeral range.
    A port found by bind(0) is ephemeral: until the child process that should listen on it
    starts, any process's outgoing connection (Kafka clients open many) may take it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for base in random.sample(range(20_000, low - span, span), 200):
        if all(_free(port) for port in range(base, base + span)):
            return base
    raise RuntimeError("no free port block below the ephemeral range")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(nodes: int) -> int:
    """A port P such that P..P+n-1 and P+1000..P+1000+n-1 are free on loopback."""
    for _ in range(500):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        wanted = [base + i for i in range(nodes)] + [
            base + CONTROLLER_PORT_OFFSET + i for i in range(nodes)
        ]
        if max(wanted) > 65535:
            continue
        sockets = []
        try:
            for port in wanted:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port block")
