"""``make cluster``: a local, production-like Airflow 3.3 deployment on loopback, without Docker.

PostgreSQL, Redis, the api-server, scheduler, dag-processor, Celery workers, triggerers and the Pose API
emulator, each its own OS process with its own log under ``.cluster/logs/``. This file is the command line;
the cluster itself is the package ``scripts/kakaopose_cluster/`` (one module per part: its docstring lists them
and the recovery settings the cluster sets).

Commands (``python scripts/cluster.py --help``)::

    up [--workers 2] [--triggerers 2] [--dags DIR] [--emulator-args "--latency 0.3 --quota-per-second 10"]
       [--conn-extra '{"rate_limit_per_second": 10}'] [--worker-concurrency 8] [--env KEY=VALUE ...]
    status | kill worker|triggerer|scheduler [--index N | --pid PID] | start worker|triggerer|scheduler
    airflow ARGS...                       # any Airflow CLI command against the cluster
    down [--wipe]

From Python (a test or a benchmark)::

    from kakaopose_cluster import Cluster  # with scripts/ on sys.path (``from cluster import Cluster`` works too)
    c = Cluster().up(workers=2, triggerers=2, emulator_args=["--latency", "0.3"])
    c.airflow("dags", "unpause", "kakao_pose_images")
    c.kill("worker", index=1); c.start("worker"); print(c.status()); c.down(wipe=True)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # the package next to this file, also when loaded by path

from kakaopose_cluster import *  # noqa: F403 - this file's names are the package's, as before the split
from kakaopose_cluster import __all__ as __all__
from kakaopose_cluster import main

if __name__ == "__main__":
    sys.exit(main())
