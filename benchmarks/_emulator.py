"""The emulator as its own process, for the benchmarks (so it never competes with the code measured)."""

from __future__ import annotations

import json
import sys
import urllib.request

from airflow_provider_kakaopose.emulator.process import EmulatorProcess


def start_emulator(key: str, *options: str) -> tuple[EmulatorProcess, str]:
    """Start ``python -m airflow_provider_kakaopose.emulator`` with ``options`` and ``key`` as its only key;
    return it (``.stop()`` ends it) and its base URL."""
    server = EmulatorProcess(sys.executable, *options, api_key=key, startup_timeout=30).start()
    return server, server.base_url


def recorded(base: str) -> list[dict]:
    """The requests the emulator recorded."""
    with urllib.request.urlopen(f"{base}/_emulator/requests", timeout=60) as resp:
        return json.load(resp)


def clear_recorded(base: str) -> None:
    """Forget the recorded requests."""
    urllib.request.urlopen(urllib.request.Request(f"{base}/_emulator/requests", method="DELETE"), timeout=10)
