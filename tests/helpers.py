"""What tests share besides fixtures: the canary key, paths, ports, images, loop and Airflow helpers.

Imported as ``from helpers import …`` (tests/ is on ``sys.path`` under pytest); fixtures stay in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
#: Test-only DAGs, in a DAG bundle of their own beside the example DAGs (dag.test() runs only bundled DAGs).
TEST_DAGS = ROOT / "tests" / "dags"

#: A canary: the key given to the emulator. It must never show in any captured output.
API_KEY = "canary-4f1e9b7d2c-do-not-log"


def image_bytes(width: int = 640, height: int = 480, fmt: str = "PNG") -> bytes:
    """A real image of the given size and format, made with Pillow."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buf, fmt)
    return buf.getvalue()


def free_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def loop_gaps(tick: float = 0.01) -> AsyncIterator[list[float]]:
    """Measure how long the running event loop is blocked: yields a list that receives, until the block
    ends, the time between consecutive wake-ups of a task that sleeps ``tick`` seconds (a blocking call in
    the loop shows as one large gap)."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(tick)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.ensure_future(heartbeat())
    await asyncio.sleep(0.05)
    try:
        yield gaps
    finally:
        stop.set()
        await beat


def allow_execute_in_this_thread() -> None:
    """Airflow 2.11 guards ``BaseOperator.execute`` with a thread-local that exists only in the thread that
    imported it (a task's own thread); tests that call ``execute`` from worker threads of their own set it up
    there first. A no-op on Airflow 3."""
    try:
        from airflow.models.baseoperator import ExecutorSafeguard
    except ImportError:
        return
    sentinel = getattr(ExecutorSafeguard, "_sentinel", None)
    if sentinel is not None and not hasattr(sentinel, "callers"):
        sentinel.callers = {}


def redis_server_binary() -> str:
    """``redis-server``, installed from Debian's packages when the machine has none (as ``make cluster`` does)."""
    import shutil
    import subprocess

    path = shutil.which("redis-server")
    if path is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env, capture_output=True)
        path = shutil.which("redis-server")
    assert path, "redis-server could not be installed"
    return path
