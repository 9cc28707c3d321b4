"""Shared fixtures: an emulator on loopback, connections from the environment, and a key-leak guard."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from importlib.metadata import version

import pytest
from helpers import API_KEY, DAGS, TEST_DAGS

# Airflow must find a private home (fresh SQLite DB) and the example DAGs before it is first imported.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="kakaopose-airflow-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
if version("apache-airflow").startswith("2."):
    # Airflow 2's unit-test config picks the LocalExecutor, which refuses SQLite; dag.test() needs none.
    os.environ["AIRFLOW__CORE__EXECUTOR"] = "SequentialExecutor"
if version("apache-airflow").startswith("3.0."):
    # Airflow 3.0's dag.test() runs tasks in-process with structlog left unconfigured, so it prints DEBUG, and
    # its in-process supervisor logs every request at DEBUG — MaskSecret(value=<the secret>) included. Run it
    # at INFO, as a deployment's logging does (docs/installation.md, "What differs").
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
_LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
    [
        {"name": "dags-folder", "classpath": _LOCAL_BUNDLE, "kwargs": {}},
        {"name": "tests", "classpath": _LOCAL_BUNDLE, "kwargs": {"path": str(TEST_DAGS)}},
    ]
)
sys.path.insert(0, str(DAGS))
sys.path.insert(0, str(TEST_DAGS))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Fail any test whose captured stdout, stderr or log shows the API key."""
    report = yield
    for name, text in report.sections:
        if name.endswith(f" {call.when}") and API_KEY in text and report.outcome != "failed":
            report.outcome = "failed"
            report.longrepr = f"The API key leaked into captured output ({name})"
    return report


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh SQLite metadata DB for tests that run DAGs (created once per session)."""
    from airflow.utils.db import initdb

    initdb()
    return os.environ["AIRFLOW_HOME"]


@pytest.fixture
def emulator():
    """A Pose API emulator on an ephemeral loopback port, with quick jobs."""
    from airflow_provider_kakaopose.emulator import PoseEmulator

    with PoseEmulator(api_key=API_KEY, seed=7, job_waiting_s=0.2, job_processing_s=0.4) as emu:
        yield emu


@pytest.fixture
def make_conn(monkeypatch, emulator):
    """Define a ``kakao_pose`` connection in the environment pointing at the emulator; returns its id."""
    counter = iter(range(10_000))

    def make(*, password: str = API_KEY, host: str | None = None, **extra) -> str:
        conn_id = f"kakao_pose_test_{next(counter)}"
        settings = {"max_retries": 3, "retry_wait_initial": 0.01, "retry_wait_max": 0.05, **extra}
        conn = {"conn_type": "kakao_pose", "host": host or emulator.base_url, "password": password, "extra": settings}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id

    return make


pytest_plugins = ["pytester"]


#: A job whose result is large enough that parsing it whole is slow and big (~60,000 person-frames, ~28 MB).
BIG_VIDEO_URL = "https://example.com/big.mp4?frames=20000&persons=3&waiting_s=0&processing_s=0"


@pytest.fixture(scope="session")
def big_job():
    """``(base_url, job_id, body size)`` of a finished large job on an emulator in its own process (so that
    tracemalloc and the event loop of a test see only the client's work, not the server's)."""
    import requests

    from airflow_provider_kakaopose.emulator.process import EmulatorProcess

    with EmulatorProcess(sys.executable, api_key=API_KEY) as server:
        headers = {"Authorization": f"KakaoAK {API_KEY}"}
        submitted = requests.post(f"{server.base_url}/pose/job", data={"video_url": BIG_VIDEO_URL}, headers=headers)
        job_id = submitted.json()["job_id"]
        size = len(requests.get(f"{server.base_url}/pose/job/{job_id}", headers=headers, timeout=120).content)
        yield server.base_url, job_id, size
