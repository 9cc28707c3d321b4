"""The Pose API emulator (``python -m airflow_provider_kakaopose.emulator``), unless
``AIRFLOW_CONN_KAKAO_POSE_DEFAULT`` is set: then that connection is given to every component as it is."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import HOST
from .processes import Component, http

if TYPE_CHECKING:
    from .cluster import Cluster


class Emulator:
    """The cluster's emulator, on a port of its own choosing (read from its log)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def start(self, args: Sequence[str]) -> Component:
        """Start it with more ``args`` (``["--latency", "0.3"]``); the API key goes in its environment, never
        in its argv."""
        cluster = self.cluster
        env = cluster.marked_env(PYTHONUNBUFFERED="1")
        env["KAKAO_POSE_EMULATOR_API_KEY"] = cluster.secrets["api_key"]
        argv = [sys.executable, "-m", "airflow_provider_kakaopose.emulator", "--host", HOST, "--port", "0", *args]
        return cluster.processes.spawn("emulator", "emulator", argv, env=env)

    def wait_listening(self, timeout: float) -> str:
        """Wait until it says where it listens; that base URL goes into the state."""
        log = self.cluster.logs / "emulator.log"
        url = self.cluster.processes.wait(
            "the emulator to listen",
            lambda: (m := re.findall(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())) and m[-1],
            timeout,
            ["emulator"],
        )
        self.cluster.state["emulator_url"] = url
        return url

    def health(self) -> str:
        """``healthy`` when its control endpoint answers, else the HTTP status."""
        status, _ = http("GET", f"{self.cluster.emulator_url}/_emulator/requests", timeout=5)
        return "healthy" if status == 200 else f"HTTP {status}"
