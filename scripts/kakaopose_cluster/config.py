"""What every part of the cluster agrees on: paths, names, the recovery settings, and small helpers."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO / ".cluster"
STATE_FILE = "state.json"
#: Every process of a cluster carries this variable (the cluster folder): ``down`` finds strays by it.
MARKER = "KAKAOPOSE_CLUSTER"
HOST = "127.0.0.1"
PG_VERSION_PREFERRED = "15"
PG_USER_OS = "postgres"
DB_NAME = DB_USER = "airflow"
UI_USER = "admin"
#: Airflow components (start/kill) and their process names: ``<kind><index>``.
AIRFLOW_KINDS = ("api-server", "scheduler", "dag-processor", "triggerer", "worker")
STARTABLE = ("worker", "triggerer", "scheduler")
KILLABLE = ("worker", "triggerer", "scheduler", "dag-processor", "api-server")

#: (environment variable, value, default, why): how fast a dead worker's or triggerer's work moves on.
RECOVERY_SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    (
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
        "30",
        "300",
        "a running task whose supervisor sent no heartbeat for this long is failed (retried if it has retries)",
    ),
    (
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL",
        "5",
        "10",
        "how often the scheduler looks for such tasks",
    ),
    (
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL",
        "5",
        "5",
        "task supervisors heartbeat this often: the timeout is 6 missed heartbeats",
    ),
    (
        "AIRFLOW__CELERY__TASK_ACKS_LATE",
        "True",
        "True",
        "messages are acknowledged when the task ends: a dead worker's stay in Redis",
    ),
    (
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER",
        "1",
        "1",
        "with late acks a worker holds no more messages than it has pool processes",
    ),
    (
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT",
        "300",
        "86400",
        "Redis gives an unacknowledged message to another worker after this long (a dead worker's unstarted "
        "ones; a copy of a task still running is ignored by the worker that gets it)",
    ),
    (
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT",
        "600",
        "600",
        "a task queued but never started is queued again after this long",
    ),
    ("AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC", "2", "5", "triggerers heartbeat this often"),
    (
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD",
        "20",
        "30",
        "a triggerer silent this long is dead and its triggers move to another (keep above its heartbeat)",
    ),
)


class ClusterError(RuntimeError):
    """Something the cluster needs is missing, or a component did not come up (the message says which)."""


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def mask(secret: str | None) -> str:
    """A secret as it may be printed: its first 3 characters and its length."""
    if not secret:
        return "(none)"
    return f"{secret[:3]}…({len(secret)} chars)"


def mask_url(url: str) -> str:
    """``scheme://user:password@host`` with the password masked."""
    return re.sub(r"(://[^:/@]*:)([^@]+)(@)", r"\1***\3", url)


def now() -> str:
    """The local time, as the state file and the logs show it."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def is_root() -> bool:
    return os.geteuid() == 0
