"""The local production-like cluster behind ``make cluster`` and ``python scripts/cluster.py``.

Every piece is its own OS process in its own session (so it and all its children can be killed at once, the
way a host dies), with one log file each under ``.cluster/logs/``. One module per part:

- :mod:`.config`: paths, names, the recovery settings below, :class:`ClusterError`, small helpers;
- :mod:`.processes`: :class:`Component`, starting a process, waiting, :func:`host_kill`, stopping;
- :mod:`.install`: PostgreSQL and redis-server from Debian, the ``cluster`` dependency group from pip;
- :mod:`.state`: the cluster folder and its ``state.json`` (mode 0600: it holds the secrets), the addresses and
  environment made from it; later subcommands (``start``, ``airflow ...``) find the cluster through it;
- :mod:`.postgres`: PostgreSQL (metadata DB and Celery result backend), run as the ``postgres`` user;
- :mod:`.redis_server`: Redis (Celery broker on DB 0; DB 1 is the provider's shared rate-limit store);
- :mod:`.emulator`: the Pose API emulator, unless ``AIRFLOW_CONN_KAKAO_POSE_DEFAULT`` is set (then that
  connection is given to every component as it is);
- :mod:`.airflow_components`: api-server, scheduler, dag-processor, N Celery workers and N triggerers
  (CeleryExecutor), all with the same environment (DB, broker, secrets, DAG folder, the connection); the REST API;
- :mod:`.health`: the health checks ``up`` waits for and ``status`` shows;
- :mod:`.cluster`: :class:`Cluster`, composed of the above: ``up``, ``status``, ``kill``, ``start``, ``airflow``,
  ``down``;
- :mod:`.cli`: the command line.

Noticing a dead worker (host-like SIGKILL of a Celery worker with its pool and task supervisors): the task it
was running stops heartbeating and is failed by the scheduler, then retried (when it has retries) on another
worker. The settings that decide how fast, with the values this cluster sets (also in ``--help``):

    AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=30                   (default 300)
        a running task whose supervisor sent no heartbeat for 30 s is failed (up_for_retry if it has retries)
    AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL=5 (default 10)
        how often the scheduler looks for such tasks
    AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL=5                                (default 5)
        task supervisors heartbeat every 5 s: the timeout is 6 missed heartbeats
    AIRFLOW__CELERY__TASK_ACKS_LATE=True                                      (default True)
        a message is acknowledged when its task ends: a dead worker's messages stay in Redis, unacknowledged
    AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER=1                             (default 1)
        with late acks, a worker holds no more messages than it has pool processes (none waits in a dead one)
    AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT=300          (provider default 86400)
        Redis hands an unacknowledged message to another worker after 300 s: what a dead worker had taken but
        not yet started runs elsewhere. A copy of a task still running (longer than 300 s) is dropped by the
        worker that gets it (the api-server answers "already running"; the Celery provider ignores it).
    AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT=600                               (default 600)
        a task queued but never started for 600 s is queued again (the last resort for a lost message)
    AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC=2                                   (default 5)
    AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD=20                   (default 30)
        a triggerer silent for 20 s is dead: another one takes its triggers (keep it above the heartbeat)

The retry of a running task does not wait for the visibility timeout: Airflow's heartbeat timeout decides
it (a retry is a new try with its own message); Celery's redelivery only concerns messages no task ran from.
"""

from __future__ import annotations

from .cli import main
from .cluster import Cluster, UpReport
from .config import (
    AIRFLOW_KINDS,
    DB_NAME,
    DB_USER,
    DEFAULT_ROOT,
    HOST,
    KILLABLE,
    MARKER,
    PG_USER_OS,
    PG_VERSION_PREFERRED,
    RECOVERY_SETTINGS,
    REPO,
    STARTABLE,
    STATE_FILE,
    UI_USER,
    ClusterError,
    free_port,
    mask,
    mask_url,
)
from .install import (
    apt_install,
    cluster_requirements,
    ensure_installed,
    missing_requirements,
    pg_bin_dir,
    redis_server_bin,
)
from .processes import Component, host_kill

__all__ = [
    "AIRFLOW_KINDS",
    "DB_NAME",
    "DB_USER",
    "DEFAULT_ROOT",
    "HOST",
    "KILLABLE",
    "MARKER",
    "PG_USER_OS",
    "PG_VERSION_PREFERRED",
    "RECOVERY_SETTINGS",
    "REPO",
    "STARTABLE",
    "STATE_FILE",
    "UI_USER",
    "Cluster",
    "ClusterError",
    "Component",
    "UpReport",
    "apt_install",
    "cluster_requirements",
    "ensure_installed",
    "free_port",
    "host_kill",
    "main",
    "mask",
    "mask_url",
    "missing_requirements",
    "pg_bin_dir",
    "redis_server_bin",
]
