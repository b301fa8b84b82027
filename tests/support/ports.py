"""Free loopback ports for brokers and services started by tests and benchmarks."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from modelstream.ops.broker import CONTROLLER_PORT_OFFSET


def free_port_pair() -> int:
    """A port P with P and P+1000 (the controller port) both free on loopback."""
    return free_port_block(1)


def free_base_below_ephemeral(span: int = 16) -> int:
    """A base port with ``span`` free ports after it, below the kernel's ephemeral range.
    A port found by bind(0) is ephemeral: until the child process that should listen on it
    starts, any process's outgoing connection (Kafka clients open many) may take it."""
    low = _ephemeral_low()
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
    """A port P such that P..P+n-1 and P+1000..P+1000+n-1 are free on loopback, all below
    the ephemeral range (see free_base_below_ephemeral: a broker that found its port by
    bind(0) lost it once to a client's outgoing connection before it could listen)."""
    low = _ephemeral_low()
    top = low - CONTROLLER_PORT_OFFSET - nodes
    for base in random.sample(range(20_000, top), 500):
        wanted = [base + i for i in range(nodes)] + [
            base + CONTROLLER_PORT_OFFSET + i for i in range(nodes)
        ]
        if all(_free(port) for port in wanted):
            return base
    raise RuntimeError("no free port block below the ephemeral range")


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
