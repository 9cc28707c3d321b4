"""The emulator as its own process, for the benchmarks (so it never competes with the code measured)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(key: str, *options: str) -> tuple[subprocess.Popen, str]:
    """Start ``python -m airflow_provider_kakaopose.emulator`` with ``options``; return it and its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "airflow_provider_kakaopose.emulator", "--port", str(port), "--api-key", key]
    proc = subprocess.Popen([*cmd, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{base}/_emulator/health", timeout=1)
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("emulator did not start")


def recorded(base: str) -> list[dict]:
    """The requests the emulator recorded."""
    with urllib.request.urlopen(f"{base}/_emulator/requests", timeout=60) as resp:
        return json.load(resp)


def clear_recorded(base: str) -> None:
    """Forget the recorded requests."""
    urllib.request.urlopen(urllib.request.Request(f"{base}/_emulator/requests", method="DELETE"), timeout=10)
