"""Listening ports for the Ray nodes and servers that the tests and benchmarks start on one machine."""
from __future__ import annotations

import random
import socket

# below Linux's ephemeral range (32768-60999 by default) and above Ray's worker ports (10002-19999)
LISTEN_PORTS = range(20000, 32768)
_given: set[int] = set()


def listen_port() -> int:
    """A TCP port free now that no other caller in this process was given. Not one the OS picks (binding port
    0): that comes from the ephemeral range, where the OS may hand it to an outgoing connection as its source
    port before the server binds it, and a Ray agent then dies with 'Address already in use'."""
    while True:
        port = random.choice(LISTEN_PORTS)
        if port in _given:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
        _given.add(port)
        return port


def node_ports() -> dict:
    """A Ray node's own agent and metrics ports (as `ray.init` / `Cluster.add_node` arguments): the defaults
    would collide with another node's on one machine."""
    return dict(dashboard_agent_listen_port=listen_port(), metrics_agent_port=listen_port(),
                metrics_export_port=listen_port(), runtime_env_agent_port=listen_port())
