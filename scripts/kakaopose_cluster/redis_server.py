"""Redis: the Celery broker on DB 0 and the provider's shared rate-limit store on DB 1
(``AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE``); bound to 127.0.0.1, no persistence."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from .config import HOST
from .install import redis_server_bin
from .processes import Component

if TYPE_CHECKING:
    from .cluster import Cluster


class Redis:
    """The cluster's redis-server."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def start(self) -> Component:
        redis = redis_server_bin()
        assert redis is not None
        cluster = self.cluster
        redis_dir = cluster.root / "redis"
        redis_dir.mkdir(exist_ok=True)
        return cluster.processes.spawn(
            "redis",
            "redis",
            [
                redis,
                *("--port", str(cluster.ports["redis"]), "--bind", HOST, "--protected-mode", "yes"),
                *("--dir", str(redis_dir), "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""),
            ],
            env=cluster.marked_env(),
        )

    def ping(self, timeout: float = 2.0) -> bool:
        """Whether it answers ``PING``."""
        return redis_ping(self.cluster.ports["redis"], timeout)


def redis_ping(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False
