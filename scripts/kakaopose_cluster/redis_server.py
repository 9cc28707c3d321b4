"""Redis: the Celery broker on DB 0 and the provider's shared rate-limit store on DB 1
(``AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE``); bound to 127.0.0.1, no persistence."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class LocalRedis:
    """A private redis-server outside any cluster, for tests and benchmarks: loopback only, no persistence,
    on ``port`` (a fixed port, so it can be stopped and started again at the same URL)."""

    def __init__(self, binary: str, port: int, folder: str | Path) -> None:
        self.binary, self.port, self.folder = binary, port, Path(folder)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL of its database 1 (the provider's store)."""
        return f"redis://{HOST}:{self.port}/1"

    def start(self, timeout: float = 10.0) -> LocalRedis:
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not redis_ping(self.port, 0.5):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Kill it (no persistence: its data is gone)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> Any:
        """A redis-py client of :attr:`url`."""
        import redis

        return redis.Redis.from_url(self.url)
