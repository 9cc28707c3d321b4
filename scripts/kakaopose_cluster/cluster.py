"""The :class:`Cluster`: its state (:mod:`.state`) and one object per part — :attr:`~Cluster.processes`,
:attr:`~Cluster.postgres`, :attr:`~Cluster.redis`, :attr:`~Cluster.emulator`, :attr:`~Cluster.airflow_components`,
:attr:`~Cluster.rest` and :attr:`~Cluster.checks` — behind the commands ``up``, ``status``, ``kill``, ``start``,
``airflow`` and ``down``."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from .airflow_components import AirflowComponents, RestApi
from .config import (
    AIRFLOW_KINDS,
    DEFAULT_ROOT,
    KILLABLE,
    REPO,
    STARTABLE,
    STATE_FILE,
    ClusterError,
    mask,
    mask_url,
    now,
)
from .emulator import Emulator
from .health import Health
from .install import ensure_installed
from .postgres import Postgres
from .processes import Component, Processes, host_kill, terminate_all
from .redis_server import Redis
from .state import ClusterState


@dataclasses.dataclass
class UpReport:
    """What :meth:`Cluster.up` did and how long it took (seconds)."""

    seconds: float
    phases: dict[str, float]
    ui_url: str
    login: tuple[str, str] | None
    pg_dir: str
    pg_dir_fallback: bool
    dags: int
    import_errors: int


class Cluster(ClusterState):
    """A cluster living in ``root`` (default ``.cluster/`` in the repository); its state in ``root/state.json``.

    Nothing runs until :meth:`up`; any later instance on the same ``root`` (another process, a later
    subcommand) finds the running cluster through the state file.
    """

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, *, log: Callable[[str], None] = print) -> None:
        super().__init__(root)
        self.say = log
        #: The cluster's OS processes (spawn, wait, strays).
        self.processes = Processes(self)
        self.postgres = Postgres(self)
        self.redis = Redis(self)
        self.emulator = Emulator(self)
        self.airflow_components = AirflowComponents(self)
        self.rest = RestApi(self)
        self.checks = Health(self)
        #: What the last :meth:`up` did (None before).
        self.report: UpReport | None = None

    def alive(self, kind: str | None = None) -> list[Component]:
        """The running components (of one kind)."""
        self._reap()
        return [c for c in self.components if (kind is None or c.kind == kind) and c.alive()]

    def running(self) -> bool:
        """Whether any component of this cluster runs."""
        return bool(self.alive())

    def _reap(self) -> None:
        self.processes.reap()

    # -- reading the cluster ---------------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read the metadata DB (psycopg2) as the Airflow user."""
        return self.postgres.query(sql, params)

    def api_health(self) -> dict[str, Any] | None:
        """``/api/v2/monitor/health`` (no login needed), or None while the api-server does not answer."""
        return self.checks.api_health()

    def jobs_heartbeating(self, job_type: str, since: float | None = None) -> int:
        """Running Airflow jobs of ``job_type`` (``TriggererJob``, ``SchedulerJob``, ``DagProcessorJob``) whose
        last heartbeat is within their health threshold; only those started after ``since`` (a Unix time)."""
        return self.checks.jobs_heartbeating(job_type, since)

    def triggerers_heartbeating(self) -> int:
        """Triggerer jobs whose last heartbeat is within the health threshold (a killed triggerer's still counts
        until it is older than that)."""
        return self.jobs_heartbeating("TriggererJob")

    def worker_pings(self, timeout: float = 1.0, expected: int | None = None) -> set[str]:
        """Celery hostnames of the workers answering ``celery inspect ping``."""
        return self.checks.worker_pings(timeout, expected)

    def health(self) -> dict[str, str]:
        """One line per part of the cluster: ``healthy`` or what is wrong."""
        return self.checks.report()

    def token(self) -> str:
        """A REST API token for the UI user."""
        return self.rest.token()

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        """Call the REST API below ``/api/v2`` (``/dags/...``) as the UI user: ``(status, JSON)``."""
        return self.rest.call(method, path, body, timeout)

    # -- up --------------------------------------------------------------------------------------------------------

    def up(
        self,
        *,
        workers: int = 2,
        triggerers: int = 2,
        dags: str | os.PathLike[str] | None = None,
        emulator_args: Sequence[str] = (),
        conn_extra: Mapping[str, Any] | None = None,
        worker_concurrency: int = 8,
        parallelism: int = 32,
        api_workers: int = 1,
        extra_env: Mapping[str, str] | None = None,
        install: bool = True,
        timeout: float = 600,
    ) -> Cluster:
        """Start the whole cluster and wait until every part is healthy; returns ``self`` (its last report in
        :attr:`report`). Stops what it started if something fails.

        :param workers: Celery workers (each ``worker_concurrency`` task slots).
        :param triggerers: triggerers.
        :param dags: the DAG folder (default: the repository's ``dags/``, the example DAGs).
        :param emulator_args: more arguments for the emulator (``["--latency", "0.3"]``); ignored when
            ``AIRFLOW_CONN_KAKAO_POSE_DEFAULT`` is set (no emulator then).
        :param conn_extra: the emulator connection's extra fields, e.g. ``{"rate_limit_per_second": 10}`` (the
            provider shares that quota across all processes through Redis DB 1); ignored with a connection from
            the environment.
        :param parallelism: ``[core] parallelism``, task instances running at once in the whole cluster.
        :param api_workers: api-server worker processes.
        :param extra_env: more environment for every component (applied last, e.g. other ``AIRFLOW__...``).
        :param install: install missing system and Python packages first.
        :param timeout: seconds for the whole start-up.
        """
        if workers < 1 or triggerers < 0:
            raise ValueError("at least one worker; triggerers >= 0")
        self._refuse_if_running()
        started = time.monotonic()
        self._make_folders()
        phases = {"install": ensure_installed(self.say, self.logs / "install.log") if install else 0.0}
        dags_dir = Path(dags).resolve() if dags else REPO / "dags"
        if not dags_dir.is_dir():
            raise ClusterError(f"no DAG folder {dags_dir}")
        use_emulator = "AIRFLOW_CONN_KAKAO_POSE_DEFAULT" not in os.environ
        settings = {  # what was asked, kept in the state
            "workers": workers,
            "triggerers": triggerers,
            "dags": str(dags_dir),
            "emulator_args": list(emulator_args) if use_emulator else None,
            "conn_extra": dict(conn_extra or {}) if use_emulator else None,
            "worker_concurrency": worker_concurrency,
            "parallelism": parallelism,
            "api_workers": api_workers,
        }
        self.new_state(use_emulator, *self.postgres.choose_root(), settings)
        try:
            self._up(phases, dags_dir, use_emulator, emulator_args, extra_env or {}, timeout, started)
        except BaseException:
            self.say("Start-up failed: stopping what was started (logs stay in " + str(self.logs) + ")")
            self.down(quiet=True)
            raise
        return self

    def _refuse_if_running(self) -> None:
        if self.state_path.exists():
            self.state = self._load()
        if self.running():
            names = ", ".join(f"{c.name} ({c.pid})" for c in self.alive())
            raise ClusterError(f"the cluster in {self.root} is running ({names}): `down` it first")

    def _make_folders(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for path in (self.logs, self.home, self.root / "out"):
            path.mkdir(parents=True, exist_ok=True)
        self.say(f"Cluster in {self.root}")

    def _up(
        self,
        phases: dict[str, float],
        dags_dir: Path,
        use_emulator: bool,
        emulator_args: Sequence[str],
        extra_env: Mapping[str, str],
        timeout: float,
        started: float,
    ) -> None:
        deadline = started + timeout

        def left() -> float:
            return max(deadline - time.monotonic(), 1.0)

        t = time.monotonic()
        self._start_services(use_emulator, emulator_args, left)
        phases["postgres, redis, emulator"] = time.monotonic() - t

        self._configure_airflow(dags_dir, extra_env)
        t = time.monotonic()
        self.say("  airflow db migrate ...")
        self.airflow_components.migrate_db(left())
        phases["db migrate"] = time.monotonic() - t

        t = time.monotonic()
        settings = self.state["settings"]
        names = self.airflow_components.start_all(settings["triggerers"], settings["workers"])
        self.say(f"  started {', '.join(names)}; waiting until healthy ...")
        watch = [*names, "postgres", "redis", *(["emulator"] if use_emulator else [])]
        self.processes.wait("every component to be healthy", self.checks.all_healthy, left(), watch)
        phases["airflow components healthy"] = time.monotonic() - t

        dag_files = list(dags_dir.glob("*.py"))
        t = time.monotonic()
        wait = self.processes.wait
        parsed = wait("the DAG folder to be parsed", self.checks.dags_parsed, left(), watch) if dag_files else (0, 0)
        phases["dags parsed"] = time.monotonic() - t
        self._record_up(phases, started, parsed)

    def _start_services(self, use_emulator: bool, emulator_args: Sequence[str], left: Callable[[], float]) -> None:
        """PostgreSQL, Redis and the emulator start side by side; then each is waited for (and the DB made)."""
        self.postgres.start()
        self.redis.start()
        if use_emulator:
            self.emulator.start(emulator_args)
        self.processes.wait("PostgreSQL to accept connections", self.postgres.ready, left(), ["postgres"])
        self.postgres.create_db()
        self.processes.wait("Redis to answer PING", self.redis.ping, left(), ["redis"])
        if use_emulator:
            self.emulator.wait_listening(left())

    def _configure_airflow(self, dags_dir: Path, extra_env: Mapping[str, str]) -> None:
        """One environment for every Airflow component (saved in the state), and the UI's password file."""
        s = self.state["settings"]
        env = self.airflow_components.env(
            dags_dir, s["worker_concurrency"], s["parallelism"], s["api_workers"], s.get("conn_extra") or {}
        )
        self.state["env"] = {**env, **extra_env}
        self._save()
        self.airflow_components.write_passwords()

    def _record_up(self, phases: dict[str, float], started: float, parsed: tuple[int, int]) -> None:
        total = time.monotonic() - started
        self.state["up_seconds"] = round(total, 1)
        self.state["phases"] = {k: round(v, 1) for k, v in phases.items()}
        self._save()
        self.report = UpReport(
            seconds=total,
            phases=phases,
            ui_url=self.ui_url,
            login=self.login,
            pg_dir=str(self.pg_root),
            pg_dir_fallback=bool(self.state["pg_root_fallback"]),
            dags=parsed[0],
            import_errors=parsed[1],
        )

    # -- status ----------------------------------------------------------------------------------------------------

    def describe(self) -> str:
        """Where everything is, secrets masked (except the UI login)."""
        s = self.secrets
        user, password = self.login
        lines = [
            f"  UI / REST API  {self.ui_url}  login: {user} / {password}",
            f"  PostgreSQL     {mask_url(self.db_url)}  (password {mask(s['db_password'])})",
            f"                 data {self.pg_root / 'data'}"
            + (
                "  (under /tmp: the postgres user cannot reach the cluster folder)"
                if self.state.get("pg_root_fallback")
                else ""
            ),
            f"  Redis          {self.broker_url} (Celery broker), {self.rate_limit_store} (rate-limit store)",
        ]
        if self.emulator_url:
            args = re.sub(
                r"(--api-key[= ])\S+", r"\1***", shlex.join(self.state["settings"].get("emulator_args") or [])
            )
            args = args or "(defaults)"
            lines.append(f"  emulator       {self.emulator_url}  key {mask(s.get('api_key'))}  args: {args}")
            if extra := self.state["settings"].get("conn_extra"):
                lines.append(f"  connection     kakao_pose_default extra {json.dumps(extra)}")
        else:
            lines.append("  connection     AIRFLOW_CONN_KAKAO_POSE_DEFAULT from the environment (no emulator)")
        env = self.state["env"]
        if base := env.get("AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL"):
            secret = env.get("AIRFLOW__KAKAO_POSE__CALLBACK_SECRET", "")
            lines.append(
                f"  callbacks      {base}/kakao-pose-callbacks/job-ended  secret {mask(secret.partition(':')[2])}"
            )
        lines.append(f"  DAG folder     {env.get('AIRFLOW__CORE__DAGS_FOLDER')}")
        lines.append(f"  Fernet key {mask(s['fernet_key'])}, JWT secret {mask(s['jwt_secret'])}; logs in {self.logs}")
        return "\n".join(lines)

    def status(self) -> list[dict[str, Any]]:
        """Each component: name, kind, pid, alive, health (when known) and log file."""
        health = self.checks.report_if_running()
        rows = []
        for comp in self.components:
            alive = comp.alive()
            info = health.get(comp.name) or health.get(comp.kind) or ""
            if comp.kind == "triggerer":
                info = health.get("triggerers", "")
            rows.append(
                {
                    "name": comp.name,
                    "kind": comp.kind,
                    "pid": comp.pid,
                    "alive": alive,
                    "health": info if alive else ("killed" if comp.killed else "exited"),
                    "log": comp.log,
                }
            )
        return rows

    def component_of(self, pid: int) -> Component | None:
        """The component whose process tree holds ``pid`` (e.g. the worker running a task: ``ti.pid``)."""
        by_pid = {c.pid: c for c in self.alive()}
        try:
            proc: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            return None
        while proc is not None:
            if proc.pid in by_pid:
                return by_pid[proc.pid]
            proc = proc.parent()
        return None

    # -- kill, start, airflow --------------------------------------------------------------------------------------

    def kill(self, kind: str, index: int | None = None, pid: int | None = None) -> Component:
        """SIGKILL one running component of ``kind`` the way its host would die (:func:`host_kill`): the one
        with ``index``, the one whose process tree holds ``pid``, else the first running one."""
        if kind not in KILLABLE:
            raise ValueError(f"kind must be one of {', '.join(KILLABLE)}")
        candidates = self.alive(kind)
        if pid is not None:
            owner = self.component_of(pid)
            candidates = [c for c in candidates if owner is not None and c.name == owner.name]
        if index is not None:
            candidates = [c for c in candidates if c.index == index]
        if not candidates:
            raise ClusterError(
                f"no running {kind}"
                + (f" with index {index}" if index is not None else "")
                + (f" holding pid {pid}" if pid is not None else "")
            )
        comp = candidates[0]
        host_kill(comp.pid)
        self._reap()
        comp.killed = True
        self.update_component(comp)
        return comp

    def start(self, kind: str, wait: bool = True, timeout: float = 180) -> Component:
        """Start one more ``worker``, ``triggerer`` or ``scheduler``; with ``wait``, until it is healthy."""
        if kind not in STARTABLE:
            raise ValueError(f"kind must be one of {', '.join(STARTABLE)}")
        if not self.alive("api-server"):
            raise ClusterError("the cluster is not running (no api-server): `up` first")
        comp = self.airflow_components.start(kind)
        if wait:
            if kind == "worker":
                self.processes.wait(
                    f"{comp.name} to answer ping",
                    lambda: comp.celery_hostname in self.worker_pings(),
                    timeout,
                    [comp.name],
                )
            else:  # a job of its own, started after the process, heartbeating
                job_type = "TriggererJob" if kind == "triggerer" else "SchedulerJob"
                self.processes.wait(
                    f"{comp.name} to heartbeat",
                    lambda: self.jobs_heartbeating(job_type, since=comp.create_time) >= 1,
                    timeout,
                    [comp.name],
                )
        return comp

    def airflow(
        self, *args: str, check: bool = True, capture: bool = False, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``airflow ARGS`` against the cluster (the components' environment). With ``capture``, the output
        is in the result's ``stdout`` / ``stderr``; else it goes to this process's."""
        return self.airflow_components.run(*args, check=check, capture=capture, timeout=timeout)

    # -- down ------------------------------------------------------------------------------------------------------

    def down(self, wipe: bool = False, grace: float = 10.0, quiet: bool = False) -> None:
        """Stop everything: the Airflow components (SIGTERM, SIGKILL after ``grace``), then the emulator, Redis and
        PostgreSQL (fast shutdown), then any stray process carrying this cluster's marker. With ``wipe``, also
        remove the cluster folder and the PostgreSQL data folder."""
        say = (lambda _msg: None) if quiet else self.say
        comps = self.alive()
        airflow = [c.pid for c in comps if c.kind in AIRFLOW_KINDS]
        if airflow:
            say(f"Stopping {', '.join(c.name for c in comps if c.kind in AIRFLOW_KINDS)} ...")
            terminate_all(airflow, signal.SIGTERM, grace)
        for kind, sig in (("emulator", signal.SIGTERM), ("redis", signal.SIGTERM), ("postgres", signal.SIGINT)):
            pids = [c.pid for c in comps if c.kind == kind]
            if pids:
                say(f"Stopping {kind} ...")
                terminate_all(pids, sig, 30.0 if kind == "postgres" else grace)
        strays = self.strays()
        if strays:
            say(f"Killing {len(strays)} stray process(es) of this cluster: {', '.join(map(str, strays))}")
            for pid in strays:
                host_kill(pid)
        self._reap()
        if self.state:
            self.state["stopped_at"] = now()
            self._save()
        if wipe:
            self.wipe(say)
        say("Cluster stopped" + (" and wiped" if wipe else ""))

    def strays(self) -> list[int]:
        """Processes carrying this cluster's marker (every component and its children do)."""
        return self.processes.strays()

    def wipe(self, say: Callable[[str], None] | None = None) -> None:
        """Remove the cluster folder and the PostgreSQL data folder (only when nothing runs)."""
        say = say or self.say
        if self.running() or self.strays():
            raise ClusterError("the cluster still runs: `down` first")
        pg_root = Path(self.state["pg_root"]) if self.state.get("pg_root") else None
        if pg_root and self.state.get("pg_root_fallback") and pg_root.parent.name.startswith("kakaopose-cluster-"):
            shutil.rmtree(pg_root.parent, ignore_errors=True)
            say(f"Removed {pg_root.parent}")
        if self.root.exists():
            if not (self.state_path.exists() or self.root.name == ".cluster" or not any(self.root.iterdir())):
                raise ClusterError(f"{self.root} does not look like a cluster folder (no {STATE_FILE}): not removed")
            shutil.rmtree(self.root)
            say(f"Removed {self.root}")
        self.state = {}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
