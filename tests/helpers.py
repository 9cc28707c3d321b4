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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator, KakaoPoseVideoOperator

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


def local_redis(folder: Any) -> Any:
    """A private redis-server (``scripts/kakaopose_cluster``'s :class:`LocalRedis`) on a free loopback port in
    ``folder``, not started yet."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from kakaopose_cluster.redis_server import LocalRedis

    return LocalRedis(redis_server_binary(), free_port(), folder)


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


def random_person(seed: int = 0, undetected: tuple[int, ...] = ()) -> dict:
    """One person of a COCO answer with random (seeded) keypoints, box and scores; ``undetected`` keypoint ids
    are sent as ``0, 0, 0`` as the service does."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kp = np.round(rng.uniform(0, 1280, size=(17, 3)), 2)
    kp[:, 2] = np.round(rng.uniform(0, 1, size=17), 4)
    for k in undetected:
        kp[k - 1] = 0.0
    return {
        "area": round(float(rng.uniform(1e4, 3e5)), 4),
        "bbox": np.round(rng.uniform(0, 700, size=4), 2).tolist(),
        "category_id": 1,
        "keypoints": kp.ravel().tolist(),
        "score": round(float(rng.uniform(0, 1)), 4),
    }


# ------------------------------------------------------------------------------- operators without Airflow

#: A short video the emulator answers quickly (8 frames, 2 people).
VIDEO_URL = "https://example.com/walk.mp4?frames=8&persons=2"


class FakeStore:
    """Stands in for Airflow 3.3's task state store (kept across tries of one task instance)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        assert value is not None
        self.data[key] = value


class FakeTI:
    """The task instance's identity and XCom, enough for the operators (and Airflow 2.11's reschedule mode,
    which looks the first try's start up in the metadata DB by these ids)."""

    dag_id, run_id, task_id, map_index = "test_dag", "test_run", "test_task", -1
    max_tries, try_number = 0, 1

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def get_first_reschedule_date(self, context: Any) -> None:
        return None


def context(store: FakeStore | None = None) -> dict[str, Any]:
    """A task context for calling an operator's ``execute`` directly (Airflow 3.3's task state store)."""
    return {"ti": FakeTI(), "task_state_store": store if store is not None else FakeStore()}


def video_operator(conn_id: str, output_uri: str, **kwargs: Any) -> KakaoPoseVideoOperator:
    """A video operator that waits in the worker, polling every 0.1 s (``task_id="v"``, ``VIDEO_URL``)."""
    from airflow_provider_kakaopose.operators.pose import KakaoPoseVideoOperator

    kwargs = {"task_id": "v", "video": VIDEO_URL, "deferrable": False, "poll_interval": 0.1, **kwargs}
    return KakaoPoseVideoOperator(output_uri=output_uri, kakao_pose_conn_id=conn_id, **kwargs)


def image_operator(conn_id: str, output_uri: Any, images: Any, **kwargs: Any) -> KakaoPoseImageOperator:
    """An image operator (``task_id="t"``) writing to ``output_uri``."""
    from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator

    kwargs = {"task_id": "t", **kwargs}
    return KakaoPoseImageOperator(images=images, output_uri=str(output_uri), kakao_pose_conn_id=conn_id, **kwargs)


def use_emulator_as_default_conn(monkeypatch: Any, emulator: Any) -> None:
    """Point the default connection (``kakao_pose_default``) at ``emulator``, with the canary key."""
    import json

    conn = {"conn_type": "kakao_pose", "host": emulator.base_url, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_KAKAO_POSE_DEFAULT", json.dumps(conn))


def caplog_text() -> list[str]:
    """Airflow 2 logs through logging (captured by pytest's own handler), Airflow 3 through structlog (stdout)."""
    import logging

    return [
        h.stream.getvalue() for h in logging.getLogger().handlers if hasattr(getattr(h, "stream", None), "getvalue")
    ]
