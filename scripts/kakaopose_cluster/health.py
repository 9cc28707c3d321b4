"""Whether the cluster's parts are healthy: the api-server's health endpoint, jobs heartbeating in the metadata DB,
workers answering a Celery ping, the DAG folder parsed; and one line per part for ``status``."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .processes import http

if TYPE_CHECKING:
    from .cluster import Cluster


class Health:
    """Health checks of one cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def api_health(self) -> dict[str, Any] | None:
        """``/api/v2/monitor/health`` (no login needed), or None while the api-server does not answer."""
        status, body = http("GET", f"{self.cluster.api_url}/api/v2/monitor/health", timeout=5)
        return body if status == 200 and isinstance(body, dict) else None

    def jobs_heartbeating(self, job_type: str, since: float | None = None) -> int:
        """Running Airflow jobs of ``job_type`` (``TriggererJob``, ``SchedulerJob``, ``DagProcessorJob``) whose
        last heartbeat is within their health threshold; only those started after ``since`` (a Unix time)."""
        env = self.cluster.state["env"]
        threshold = {
            "TriggererJob": env.get("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", "30"),
            "SchedulerJob": env.get("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD", "30"),
        }.get(job_type, "30")
        rows = self.cluster.query(
            "SELECT count(*) FROM job WHERE job_type = %s AND state = 'running'"
            " AND latest_heartbeat > now() - make_interval(secs => %s) AND start_date >= to_timestamp(%s)",
            (job_type, float(threshold), since or 0.0),
        )
        return int(rows[0][0])

    def worker_pings(self, timeout: float = 1.0, expected: int | None = None) -> set[str]:
        """Celery hostnames of the workers answering ``celery inspect ping``."""
        from celery import Celery

        app = Celery(broker=self.cluster.broker_url)
        try:
            replies = app.control.ping(timeout=timeout, limit=expected)
        except Exception:
            return set()
        finally:
            app.close()
        return {name for reply in replies or [] for name in reply}

    def report(self) -> dict[str, str]:
        """One line per part of the cluster: ``healthy`` or what is wrong."""
        c = self.cluster
        out: dict[str, str] = {}
        out["postgres"] = "healthy" if c.postgres.ready() else "not accepting connections"
        out["redis"] = "healthy" if c.redis.ping() else "no PONG"
        if c.emulator_url:
            out["emulator"] = c.emulator.health()
        api = self.api_health()
        out["api-server"] = "healthy" if api else "not answering"
        for key, name in (("scheduler", "scheduler"), ("dag_processor", "dag-processor"), ("triggerer", "triggerer")):
            out[name] = (api or {}).get(key, {}).get("status") or "unknown"
        try:
            n, expected = c.triggerers_heartbeating(), len(c.alive("triggerer"))
            out["triggerers"] = f"{n} heartbeating, {expected} running" + ("" if n >= expected else " (waiting)")
        except Exception as err:  # the DB is down
            out["triggerers"] = f"unknown ({type(err).__name__})"
        workers = c.alive("worker")
        pings = self.worker_pings(expected=len(workers) or None)
        for comp in workers:
            out[comp.name] = "healthy (pong)" if comp.celery_hostname in pings else "no pong"
        return out

    def report_if_running(self) -> dict[str, str]:
        """:meth:`report` while the cluster runs (empty when it does not, or the checks failed)."""
        health: dict[str, str] = {}
        if self.cluster.state.get("components") and self.cluster.running():
            with contextlib.suppress(Exception):
                health = self.cluster.health()
        return health

    def all_healthy(self) -> bool:
        """The api-server reports every part healthy, every triggerer heartbeats and every worker answers."""
        c = self.cluster
        api = self.api_health()
        if not api or any((api.get(k) or {}).get("status") != "healthy" for k in ("metadatabase", "scheduler")):
            return False
        if any((api.get(k) or {}).get("status") != "healthy" for k in ("dag_processor", "triggerer")):
            return False
        if c.triggerers_heartbeating() < len(c.alive("triggerer")):
            return False
        workers = c.alive("worker")
        return {w.celery_hostname for w in workers} <= self.worker_pings(expected=len(workers))

    def dags_parsed(self) -> tuple[int, int] | None:
        """``(DAGs, import errors)`` of the served DAG folder once it was parsed (None before). Import errors
        name files relative to the folder on Airflow 3 (absolute on older versions)."""
        folder = self.cluster.state["env"]["AIRFLOW__CORE__DAGS_FOLDER"].rstrip("/") + "/%"
        rows = self.cluster.query(
            "SELECT (SELECT count(*) FROM dag WHERE fileloc LIKE %s AND NOT is_stale),"
            " (SELECT count(*) FROM import_error WHERE filename LIKE %s OR filename NOT LIKE '/%%')",
            (folder, folder),
        )
        dags, errors = int(rows[0][0]), int(rows[0][1])
        return (dags, errors) if dags + errors > 0 else None
