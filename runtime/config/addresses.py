"""``volatile_db.address``: the Redis Cluster's seed nodes, ``host[:port][,host[:port]...]``.

One parser for the config check (semantic.py, so validate-config reports a bad address at its
JSON path) and the Redis tier that connects to it (volatile/redis_cluster.py).
"""

from __future__ import annotations

DEFAULT_PORT = 7000  # HPS's docs' port when none is given


def parse_redis_address(address: str) -> list[tuple[str, int]]:
    """``[(host, port), ...]`` of an address; ValueError (its text says what is wrong) when a
    node is not ``host[:port]`` with a port in 1..65535, or there is no node at all."""
    nodes = []
    for part in address.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):  # [IPv6]:port
            host, _, rest = part[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else str(DEFAULT_PORT)
        elif part.count(":") == 1:
            host, _, port_text = part.partition(":")
        else:
            host, port_text = part, str(DEFAULT_PORT)
        if not host:
            raise ValueError(f"'{part}' is not host:port: it has no host")
        if not port_text.isdigit():
            raise ValueError(f"'{part}' is not host:port: the port '{port_text}' is not a number")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"'{part}' is not host:port: port {port} is outside 1..65535")
        nodes.append((host, port))
    if not nodes:
        raise ValueError("no Redis node address given")
    return nodes
