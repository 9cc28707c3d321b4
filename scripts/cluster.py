"""``make cluster``: a local, production-like Airflow 3.3 deployment on loopback, without Docker.

Every piece is its own OS process in its own session (so it and all its children can be killed at once, the
way a host dies), with one log file each under ``.cluster/logs/``:

- **PostgreSQL** (metadata DB and Celery result backend): its own data folder, port and Unix socket folder, run
  as the ``postgres`` user (it refuses root). The data folder is ``.cluster/pg`` when the ``postgres`` user can
  reach it, else ``/tmp/kakaopose-cluster-<hash of the cluster folder's path>/pg`` (a checkout under a 0700
  folder is out of its reach); ``up`` says which.
- **Redis** (Celery broker on DB 0; DB 1 is the provider's shared rate-limit store,
  ``AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE``): bound to 127.0.0.1, no persistence.
- **Airflow**: api-server, scheduler, dag-processor, N Celery workers and N triggerers (CeleryExecutor). Two
  workers or triggerers on one host: ``--skip-serve-logs`` (they would all bind the same log-server port; the
  api-server reads the task logs from the shared local log folder) and a distinct ``--celery-hostname`` each.
- **The Pose API emulator**, unless ``AIRFLOW_CONN_KAKAO_POSE_DEFAULT`` is set (then that connection is given to
  every component as it is).

Every component gets the same environment (DB, broker, secrets, DAG folder, the connection); later
subcommands (``start``, ``airflow ...``) find it in ``.cluster/state.json`` (mode 0600: it holds the secrets).

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

Commands (``python scripts/cluster.py --help``)::

    up [--workers 2] [--triggerers 2] [--dags DIR] [--emulator-args "--latency 0.3 --quota-per-second 10"]
       [--conn-extra '{"rate_limit_per_second": 10}'] [--worker-concurrency 8] [--env KEY=VALUE ...]
    status | kill worker|triggerer|scheduler [--index N | --pid PID] | start worker|triggerer|scheduler
    airflow ARGS...                       # any Airflow CLI command against the cluster
    down [--wipe]

From Python (a test or a benchmark)::

    from cluster import Cluster           # with scripts/ on sys.path
    c = Cluster().up(workers=2, triggerers=2, emulator_args=["--latency", "0.3"])
    c.airflow("dags", "unpause", "kakao_pose_images")
    c.kill("worker", index=1); c.start("worker"); print(c.status()); c.down(wipe=True)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
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


# -- small helpers -----------------------------------------------------------------------------------------------


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


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _is_root() -> bool:
    return os.geteuid() == 0


def _gone(proc: psutil.Process) -> bool:
    """Ended: no such process, or exited and waiting to be reaped (a zombie)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` for ``procs`` to end; those still running."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if not _gone(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def _tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (empty if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def host_kill(pid: int, timeout: float = 10.0) -> list[int]:
    """SIGKILL a process the way its host would die: its process group, every descendant and their groups.

    Everything is stopped (SIGSTOP) first and the tree collected again, so nothing forks away while it is
    being killed; Airflow's task supervisors put each task runner in a group of its own, which is why the
    descendants' groups are killed too, not only the leader's. Returns the pids killed.
    """
    own_group = os.getpgrp()
    found: dict[int, psutil.Process] = {}
    groups: set[int] = set()
    for _ in range(3):
        for proc in _tree(pid):
            found.setdefault(proc.pid, proc)
        for proc in found.values():
            with contextlib.suppress(OSError):
                group = os.getpgid(proc.pid)
                if group != own_group:
                    groups.add(group)
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGSTOP)
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_gone(found.values(), timeout)
    return sorted(found)


def _terminate_all(pids: Sequence[int], sig: int, grace: float) -> None:
    """Send ``sig`` to each process's group, wait up to ``grace`` for them and their descendants (collected
    first), then :func:`host_kill` whatever is left."""
    trees = {pid: _tree(pid) for pid in pids}
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    everything = [p for tree in trees.values() for p in tree]
    _wait_gone(everything, grace)
    for pid, tree in trees.items():
        if any(not _gone(p) for p in tree):
            host_kill(pid)
            for proc in tree:  # descendants that left the tree (their parent died) go too
                if not _gone(proc):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()


def _http(method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None, timeout: float = 10):
    """``(status, parsed JSON or text)``; status 0 if nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload, status = resp.read(), resp.status
    except urllib.error.HTTPError as err:
        payload, status = err.read(), err.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, None
    try:
        return status, json.loads(payload or b"null")
    except ValueError:
        return status, payload.decode(errors="replace")


def _redis_ping(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- system and Python packages ----------------------------------------------------------------------------------


def pg_bin_dir() -> Path | None:
    """PostgreSQL's server binaries: ``$KAKAOPOSE_PG_BIN``, else ``/usr/lib/postgresql/15/bin``, else the newest
    ``/usr/lib/postgresql/*/bin``."""
    if env := os.environ.get("KAKAOPOSE_PG_BIN"):
        return Path(env)
    preferred = Path(f"/usr/lib/postgresql/{PG_VERSION_PREFERRED}/bin")
    if (preferred / "postgres").exists():
        return preferred
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def redis_server_bin() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if Path(p).exists()), None
    )


def apt_install(packages: Sequence[str], log: Callable[[str], None] = print) -> None:
    """``apt-get update`` then ``apt-get install -y`` (root, or ``sudo -n``); services are not started (a
    ``policy-rc.d`` answering 101 is put in place for the install when there is none)."""
    sudo: list[str] = []
    if not _is_root():
        if not shutil.which("sudo"):
            raise ClusterError(f"{' '.join(packages)} missing and not root: apt-get install -y {' '.join(packages)}")
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = _is_root() and not policy.exists()
    if own_policy:  # keep the package's maintainer scripts from starting a system-wide redis/postgres
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        log(f"  apt-get install {' '.join(packages)} (once) ...")
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)


def cluster_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The ``cluster`` dependency group of pyproject.toml (plain requirement strings)."""
    import tomllib

    with pyproject.open("rb") as f:
        return [line for line in tomllib.load(f)["dependency-groups"]["cluster"] if isinstance(line, str)]


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """Those of ``requirements`` not installed (or installed at a version they exclude)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    missing = []
    for line in requirements:
        req = Requirement(line)
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            missing.append(line)
    return missing


def ensure_installed(log: Callable[[str], None] = print, install_log: Path | None = None) -> float:
    """Install what the cluster needs and is missing: PostgreSQL and redis-server from Debian, the ``cluster``
    dependency group into the running environment (``pip install -c constraints.txt --group cluster``). Seconds
    spent."""
    started = time.monotonic()
    debs = []
    if pg_bin_dir() is None:
        debs.append("postgresql")
    if redis_server_bin() is None:
        debs.append("redis-server")
    if debs:
        apt_install(debs, log)
    if pg_bin_dir() is None or redis_server_bin() is None:
        raise ClusterError("PostgreSQL or redis-server is still missing after apt-get install")
    if missing := missing_requirements(cluster_requirements()):
        log(f"  pip install --group cluster (missing: {', '.join(missing)}) ...")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(REPO / "constraints.txt"),
            "--group",
            f"{REPO / 'pyproject.toml'}:cluster",
        ]
        out = install_log.open("ab") if install_log else subprocess.DEVNULL
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        finally:
            if install_log:
                out.close()  # type: ignore[union-attr]
        if rc != 0:
            raise ClusterError(f"{' '.join(cmd)} failed" + (f"; see {install_log}" if install_log else ""))
        importlib.invalidate_caches()
    return time.monotonic() - started


# -- the cluster ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Component:
    """One process of the cluster.

    :param name: unique, e.g. ``worker2`` (kind + index for Airflow components, else the kind).
    :param kind: ``postgres``, ``redis``, ``emulator``, ``api-server``, ``scheduler``, ``dag-processor``,
        ``triggerer`` or ``worker``.
    :param create_time: the process's start time (psutil), so that a reused pid is not taken for it.
    """

    name: str
    kind: str
    index: int
    pid: int
    argv: list[str]
    log: str
    create_time: float
    started_at: str = ""
    celery_hostname: str | None = None
    killed: bool = False

    def alive(self) -> bool:
        """The process runs (not a zombie) and is the one that was started."""
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.create_time) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


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


class Cluster:
    """A cluster living in ``root`` (default ``.cluster/`` in the repository); its state in ``root/state.json``.

    Nothing runs until :meth:`up`; any later instance on the same ``root`` (another process, a later
    subcommand) finds the running cluster through the state file.
    """

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, *, log: Callable[[str], None] = print) -> None:
        self.root = Path(root).resolve()
        self.logs = self.root / "logs"
        self.home = self.root / "home"
        self.state_path = self.root / STATE_FILE
        self.say = log
        self.bin = Path(sys.executable).parent
        self.state: dict[str, Any] = self._load()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # our own children, reaped as they end
        self._token: str | None = None
        #: What the last :meth:`up` did (None before).
        self.report: UpReport | None = None

    # -- state ---------------------------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {}

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.state, f, indent=2, sort_keys=True)
        os.replace(tmp, self.state_path)

    @property
    def components(self) -> list[Component]:
        """Every component started since the last :meth:`up` (dead ones included)."""
        return [Component(**c) for c in self.state.get("components", [])]

    def _add(self, comp: Component) -> None:
        self.state.setdefault("components", []).append(dataclasses.asdict(comp))
        self._save()

    def _update(self, comp: Component) -> None:
        self.state["components"] = [
            dataclasses.asdict(comp) if c["name"] == comp.name else c for c in self.state.get("components", [])
        ]
        self._save()

    def get(self, name: str) -> Component:
        """The component called ``name`` (``worker1``, ``scheduler1``, ``postgres``...)."""
        for comp in self.components:
            if comp.name == name:
                return comp
        raise KeyError(name)

    def alive(self, kind: str | None = None) -> list[Component]:
        """The running components (of one kind)."""
        self._reap()
        return [c for c in self.components if (kind is None or c.kind == kind) and c.alive()]

    def running(self) -> bool:
        """Whether any component of this cluster runs."""
        return bool(self.alive())

    # -- addresses and secrets -------------------------------------------------------------------------------------

    @property
    def secrets(self) -> dict[str, str]:
        return self.state.get("secrets", {})

    @property
    def ports(self) -> dict[str, int]:
        return self.state.get("ports", {})

    @property
    def api_url(self) -> str:
        """The api-server (UI, REST API ``/api/v2``, execution API)."""
        return f"http://{HOST}:{self.ports['api']}"

    @property
    def ui_url(self) -> str:
        return self.api_url + "/"

    @property
    def login(self) -> tuple[str, str]:
        """The UI user and password (SimpleAuthManager)."""
        return UI_USER, self.secrets["ui_password"]

    @property
    def db_url(self) -> str:
        """The metadata DB, sync driver (psycopg2)."""
        pw = self.secrets["db_password"]
        return f"postgresql+psycopg2://{DB_USER}:{pw}@{HOST}:{self.ports['postgres']}/{DB_NAME}"

    @property
    def broker_url(self) -> str:
        return f"redis://{HOST}:{self.ports['redis']}/0"

    @property
    def rate_limit_store(self) -> str:
        return f"redis://{HOST}:{self.ports['redis']}/1"

    @property
    def emulator_url(self) -> str | None:
        """The emulator's base URL; None when the connection came from the environment."""
        return self.state.get("emulator_url")

    @property
    def api_key(self) -> str | None:
        """The REST API key the emulator accepts (None without an emulator)."""
        return self.secrets.get("api_key")

    @property
    def pg_root(self) -> Path:
        return Path(self.state["pg_root"])

    # -- environment -----------------------------------------------------------------------------------------------

    @staticmethod
    def base_env() -> dict[str, str]:
        """This process's environment without any Airflow setting (a test session's own AIRFLOW_HOME or
        unit-test mode must not leak into the cluster)."""
        return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", MARKER))}

    def env(self) -> dict[str, str]:
        """The environment every component gets (and :meth:`airflow` commands): this process's environment
        without Airflow settings, plus the cluster's own (``state["env"]``)."""
        env = self.base_env()
        env.update(self.state["env"])
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", os.defpath)])
        return env

    def _cluster_env(
        self, dags: Path, concurrency: int, parallelism: int, api_workers: int, conn_extra: Mapping[str, Any]
    ) -> dict[str, str]:
        s, p = self.secrets, self.ports
        pw = s["db_password"]
        db = f"{DB_USER}:{pw}@{HOST}:{p['postgres']}/{DB_NAME}"
        env = {
            MARKER: str(self.root),
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            # Fernet encrypts connections and variables in the DB: every component needs the same key.
            "AIRFLOW__CORE__FERNET_KEY": s["fernet_key"],
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"postgresql+asyncpg://{db}",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
            # The provider's shared API quota across every process (Redis DB 1; DB 0 is the broker).
            "AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE": self.rate_limit_store,
            # The execution API's tokens (handed out by the scheduler, checked by the api-server) and the
            # session secret: shared by every component.
            "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": s["api_secret_key"],
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(p["api"]),
            "AIRFLOW__API__WORKERS": str(api_workers),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            # The UI login: SimpleAuthManager with one admin whose password is in a file written here.
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{UI_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            # New DAG files are seen within 10 s (default 300).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "KAKAO_POSE_OUTPUT": str(self.root / "out"),
        }
        env.update({name: value for name, value, _, _ in RECOVERY_SETTINGS})
        # The DAGs' own knobs (KAKAO_POSE_OUTPUT, KAKAO_POSE_DEMO_VIDEOS, ...) from the caller's environment.
        env.update(
            {k: v for k, v in os.environ.items() if k.startswith("KAKAO_POSE_") and k != "KAKAO_POSE_EMULATOR_API_KEY"}
        )
        if self.emulator_url:
            conn: dict[str, Any] = {"conn_type": "kakao_pose", "host": self.emulator_url, "password": s["api_key"]}
            if conn_extra:
                conn["extra"] = dict(conn_extra)
            env["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"] = json.dumps(conn)
        else:
            env["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"] = os.environ["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"]
        return env

    # -- processes -------------------------------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        kind: str,
        argv: list[str],
        *,
        index: int = 0,
        env: dict[str, str] | None = None,
        celery_hostname: str | None = None,
    ) -> Component:
        """Start ``argv`` in its own session, output appended to ``logs/<name>.log``."""
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            out.write(f"\n===== {_now()} {name}: {shlex.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                env=env if env is not None else self.env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[proc.pid] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = time.time()
        comp = Component(name, kind, index, proc.pid, argv, str(log), create_time, _now(), celery_hostname)
        self._add(comp)
        return comp

    def _reap(self) -> None:
        for pid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[pid]

    def _airflow_argv(self, kind: str, index: int) -> tuple[list[str], str | None]:
        airflow = str(self.bin / "airflow")
        if kind == "api-server":
            return [airflow, "api-server", "--host", HOST, "--port", str(self.ports["api"])], None
        if kind == "scheduler":
            return [airflow, "scheduler", "--skip-serve-logs"], None
        if kind == "dag-processor":
            return [airflow, "dag-processor"], None
        if kind == "triggerer":
            return [airflow, "triggerer", "--skip-serve-logs"], None
        if kind == "worker":
            hostname = f"worker{index}@{socket.gethostname()}"
            return [airflow, "celery", "worker", "--celery-hostname", hostname, "--skip-serve-logs"], hostname
        raise ValueError(f"unknown kind {kind!r}")

    def _start_airflow(self, kind: str, index: int | None = None) -> Component:
        if index is None:
            index = max((c.index for c in self.components if c.kind == kind), default=0) + 1
        argv, hostname = self._airflow_argv(kind, index)
        name = kind if kind in ("api-server", "dag-processor") and index == 1 else f"{kind}{index}"
        return self._spawn(name, kind, argv, index=index, celery_hostname=hostname)

    def _check_alive(self, names: Iterable[str]) -> None:
        for name in names:
            comp = self.get(name)
            if not comp.alive():
                raise ClusterError(f"{name} exited; the end of {comp.log}:\n{_tail(Path(comp.log))}")

    def _wait(self, what: str, condition: Callable[[], Any], timeout: float, watch: Iterable[str] = ()) -> Any:
        """Poll ``condition`` until truthy (returned); fail when a watched component dies or on timeout."""
        watch = list(watch)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(watch)
            if value := condition():
                return value
            if time.monotonic() >= deadline:
                raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    # -- PostgreSQL --------------------------------------------------------------------------------------------------

    def _as_postgres(self) -> list[str]:
        """The prefix that runs a command as the ``postgres`` user (nothing when not root)."""
        if not _is_root():
            return []
        return ["setpriv", f"--reuid={PG_USER_OS}", f"--regid={PG_USER_OS}", "--init-groups", "--"]

    def _postgres_can_reach(self, path: Path) -> bool:
        if not _is_root():
            return os.access(path, os.W_OK | os.X_OK)
        return subprocess.run([*self._as_postgres(), "test", "-x", str(path)], check=False).returncode == 0

    def _choose_pg_root(self) -> tuple[Path, bool]:
        """``root/pg`` when the postgres user can reach it, else a folder under /tmp named after ``root``."""
        if self._postgres_can_reach(self.root):
            return self.root / "pg", False
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(f"/tmp/kakaopose-cluster-{digest}") / "pg", True

    def _pg_env(self) -> dict[str, str]:
        return {"PATH": os.defpath, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", MARKER: str(self.root)}

    def _start_postgres(self) -> Component:
        pg_bin = pg_bin_dir()
        assert pg_bin is not None
        pg_root = self.pg_root
        data, run = pg_root / "data", pg_root / "run"
        owner = PG_USER_OS if _is_root() else None
        for path in (pg_root.parent, pg_root):
            path.mkdir(mode=0o755, exist_ok=True)
        for path in (data, run):
            path.mkdir(mode=0o700, exist_ok=True)
            if owner:
                shutil.chown(path, owner, owner)
        if not (data / "PG_VERSION").exists():
            self.say(f"  initdb {data}")
            with (self.logs / "postgres-initdb.log").open("ab") as out:
                subprocess.run(
                    [
                        *self._as_postgres(),
                        str(pg_bin / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        "postgres",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                        "--auth-local=trust",  # the socket folder is the postgres user's alone (0700)
                        "--auth-host=scram-sha-256",
                        "--no-sync",
                    ],
                    env=self._pg_env(),
                    cwd="/",
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
        settings = {
            "listen_addresses": HOST,
            "port": str(self.ports["postgres"]),
            "unix_socket_directories": str(run),
            "max_connections": "300",  # api-server, scheduler, dag-processor, triggerers, every worker process
            "shared_buffers": "256MB",
        }
        argv = [*self._as_postgres(), str(pg_bin / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return self._spawn("postgres", "postgres", argv, env=self._pg_env())

    def _psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL (given on stdin: no secret on a command line) as the postgres superuser, on the socket."""
        pg_bin = pg_bin_dir()
        assert pg_bin is not None
        psql = shutil.which("psql") or str(pg_bin / "psql")
        cmd = [psql, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", str(self.pg_root / "run")]
        cmd += ["-p", str(self.ports["postgres"]), "-U", "postgres", "-d", db]
        result = subprocess.run(
            [*self._as_postgres(), *cmd], input=sql, env=self._pg_env(), capture_output=True, text=True, cwd="/"
        )
        if result.returncode != 0:
            raise ClusterError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _pg_ready(self) -> bool:
        pg_bin = pg_bin_dir()
        assert pg_bin is not None
        cmd = [str(pg_bin / "pg_isready"), "-q", "-h", HOST, "-p", str(self.ports["postgres"]), "-t", "2"]
        return subprocess.run(cmd, check=False).returncode == 0

    def _create_db(self) -> None:
        """The Airflow role (its password set each time: the state is the only place it is kept) and DB."""
        pw = self.secrets["db_password"]
        exists = self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}'")
        verb = "ALTER" if exists else "CREATE"
        self._psql(f"{verb} ROLE {DB_USER} LOGIN PASSWORD '{pw}';")
        if not self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"):
            self._psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER} ENCODING 'UTF8';")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read the metadata DB (psycopg2) as the Airflow user."""
        import psycopg2

        con = psycopg2.connect(
            host=HOST,
            port=self.ports["postgres"],
            user=DB_USER,
            password=self.secrets["db_password"],
            dbname=DB_NAME,
            connect_timeout=5,
        )
        try:
            with con.cursor() as cur:
                cur.execute(sql, tuple(params))
                return list(cur.fetchall()) if cur.description else []
        finally:
            con.close()

    # -- health ------------------------------------------------------------------------------------------------------

    def api_health(self) -> dict[str, Any] | None:
        """``/api/v2/monitor/health`` (no login needed), or None while the api-server does not answer."""
        status, body = _http("GET", f"{self.api_url}/api/v2/monitor/health", timeout=5)
        return body if status == 200 and isinstance(body, dict) else None

    def jobs_heartbeating(self, job_type: str, since: float | None = None) -> int:
        """Running Airflow jobs of ``job_type`` (``TriggererJob``, ``SchedulerJob``, ``DagProcessorJob``) whose
        last heartbeat is within their health threshold; only those started after ``since`` (a Unix time)."""
        env = self.state["env"]
        threshold = {
            "TriggererJob": env.get("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", "30"),
            "SchedulerJob": env.get("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD", "30"),
        }.get(job_type, "30")
        rows = self.query(
            "SELECT count(*) FROM job WHERE job_type = %s AND state = 'running'"
            " AND latest_heartbeat > now() - make_interval(secs => %s) AND start_date >= to_timestamp(%s)",
            (job_type, float(threshold), since or 0.0),
        )
        return int(rows[0][0])

    def triggerers_heartbeating(self) -> int:
        """Triggerer jobs whose last heartbeat is within the health threshold (a killed triggerer's still counts
        until it is older than that)."""
        return self.jobs_heartbeating("TriggererJob")

    def worker_pings(self, timeout: float = 1.0, expected: int | None = None) -> set[str]:
        """Celery hostnames of the workers answering ``celery inspect ping``."""
        from celery import Celery

        app = Celery(broker=self.broker_url)
        try:
            replies = app.control.ping(timeout=timeout, limit=expected)
        except Exception:
            return set()
        finally:
            app.close()
        return {name for reply in replies or [] for name in reply}

    def health(self) -> dict[str, str]:
        """One line per part of the cluster: ``healthy`` or what is wrong."""
        out: dict[str, str] = {}
        out["postgres"] = "healthy" if self._pg_ready() else "not accepting connections"
        out["redis"] = "healthy" if _redis_ping(self.ports["redis"]) else "no PONG"
        if self.emulator_url:
            status, _ = _http("GET", f"{self.emulator_url}/_emulator/requests", timeout=5)
            out["emulator"] = "healthy" if status == 200 else f"HTTP {status}"
        api = self.api_health()
        out["api-server"] = "healthy" if api else "not answering"
        for key, name in (("scheduler", "scheduler"), ("dag_processor", "dag-processor"), ("triggerer", "triggerer")):
            out[name] = (api or {}).get(key, {}).get("status") or "unknown"
        try:
            n, expected = self.triggerers_heartbeating(), len(self.alive("triggerer"))
            out["triggerers"] = f"{n} heartbeating, {expected} running" + ("" if n >= expected else " (waiting)")
        except Exception as err:  # the DB is down
            out["triggerers"] = f"unknown ({type(err).__name__})"
        workers = self.alive("worker")
        pings = self.worker_pings(expected=len(workers) or None)
        for comp in workers:
            out[comp.name] = "healthy (pong)" if comp.celery_hostname in pings else "no pong"
        return out

    def _healthy(self) -> bool:
        api = self.api_health()
        if not api or any((api.get(k) or {}).get("status") != "healthy" for k in ("metadatabase", "scheduler")):
            return False
        if any((api.get(k) or {}).get("status") != "healthy" for k in ("dag_processor", "triggerer")):
            return False
        if self.triggerers_heartbeating() < len(self.alive("triggerer")):
            return False
        workers = self.alive("worker")
        return {c.celery_hostname for c in workers} <= self.worker_pings(expected=len(workers))

    def _dags_parsed(self) -> tuple[int, int] | None:
        """``(DAGs, import errors)`` of the served DAG folder once it was parsed (None before). Import errors
        name files relative to the folder on Airflow 3 (absolute on older versions)."""
        folder = self.state["env"]["AIRFLOW__CORE__DAGS_FOLDER"].rstrip("/") + "/%"
        rows = self.query(
            "SELECT (SELECT count(*) FROM dag WHERE fileloc LIKE %s AND NOT is_stale),"
            " (SELECT count(*) FROM import_error WHERE filename LIKE %s OR filename NOT LIKE '/%%')",
            (folder, folder),
        )
        dags, errors = int(rows[0][0]), int(rows[0][1])
        return (dags, errors) if dags + errors > 0 else None

    # -- the REST API ------------------------------------------------------------------------------------------------

    def token(self) -> str:
        """A REST API token for the UI user."""
        user, password = self.login
        status, body = _http("POST", f"{self.api_url}/auth/token", {"username": user, "password": password})
        if status not in (200, 201) or not isinstance(body, dict):
            raise ClusterError(f"no token from the api-server (HTTP {status})")
        return str(body["access_token"])

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        """Call the REST API below ``/api/v2`` (``/dags/...``) as the UI user: ``(status, JSON)``."""
        if self._token is None:
            self._token = self.token()
        status, answer = _http(method, f"{self.api_url}/api/v2{path}", body, self._auth(), timeout)
        if status == 401:  # the token expired: once more with a new one
            self._token = self.token()
            status, answer = _http(method, f"{self.api_url}/api/v2{path}", body, self._auth(), timeout)
        return status, answer

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    # -- commands --------------------------------------------------------------------------------------------------

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
        if self.state_path.exists():
            self.state = self._load()
        if self.running():
            names = ", ".join(f"{c.name} ({c.pid})" for c in self.alive())
            raise ClusterError(f"the cluster in {self.root} is running ({names}): `down` it first")
        started = time.monotonic()
        phases: dict[str, float] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for path in (self.logs, self.home, self.root / "out"):
            path.mkdir(parents=True, exist_ok=True)
        self.say(f"Cluster in {self.root}")
        phases["install"] = ensure_installed(self.say, self.logs / "install.log") if install else 0.0

        dags_dir = Path(dags).resolve() if dags else REPO / "dags"
        if not dags_dir.is_dir():
            raise ClusterError(f"no DAG folder {dags_dir}")
        use_emulator = "AIRFLOW_CONN_KAKAO_POSE_DEFAULT" not in os.environ
        from cryptography.fernet import Fernet

        kept = self.state.get("secrets", {})
        pg_root, fallback = self._choose_pg_root()
        self.state = {
            "version": 1,
            "root": str(self.root),
            "pg_root": str(pg_root),
            "pg_root_fallback": fallback,
            "started_at": _now(),
            # Kept across `down` / `up` (the DB is too); new on a wiped cluster.
            "secrets": {
                "db_password": kept.get("db_password") or secrets.token_hex(16),
                "fernet_key": kept.get("fernet_key") or Fernet.generate_key().decode(),
                "jwt_secret": kept.get("jwt_secret") or secrets.token_urlsafe(32),
                "api_secret_key": kept.get("api_secret_key") or secrets.token_urlsafe(32),
                "ui_password": kept.get("ui_password") or secrets.token_urlsafe(12),
                **({"api_key": kept.get("api_key") or secrets.token_hex(16)} if use_emulator else {}),
            },
            "ports": {"postgres": free_port(), "redis": free_port(), "api": free_port()},
            "settings": {
                "workers": workers,
                "triggerers": triggerers,
                "dags": str(dags_dir),
                "emulator_args": list(emulator_args) if use_emulator else None,
                "conn_extra": dict(conn_extra or {}) if use_emulator else None,
                "worker_concurrency": worker_concurrency,
                "parallelism": parallelism,
                "api_workers": api_workers,
            },
            "components": [],
            "env": {},
        }
        self._save()
        try:
            self._up(phases, dags_dir, use_emulator, emulator_args, extra_env or {}, timeout, started)
        except BaseException:
            self.say("Start-up failed: stopping what was started (logs stay in " + str(self.logs) + ")")
            self.down(quiet=True)
            raise
        return self

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
        settings = self.state["settings"]

        def left() -> float:
            return max(deadline - time.monotonic(), 1.0)

        # PostgreSQL, Redis and the emulator start side by side.
        t = time.monotonic()
        self._start_postgres()
        redis = redis_server_bin()
        assert redis is not None
        redis_dir = self.root / "redis"
        redis_dir.mkdir(exist_ok=True)
        self._spawn(
            "redis",
            "redis",
            [
                redis,
                *("--port", str(self.ports["redis"]), "--bind", HOST, "--protected-mode", "yes"),
                *("--dir", str(redis_dir), "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""),
            ],
            env={**self.base_env(), MARKER: str(self.root)},
        )
        if use_emulator:
            env = {**self.base_env(), MARKER: str(self.root), "PYTHONUNBUFFERED": "1"}
            env["KAKAO_POSE_EMULATOR_API_KEY"] = self.secrets["api_key"]  # in the environment, never in argv
            self._spawn(
                "emulator",
                "emulator",
                [
                    sys.executable,
                    "-m",
                    "airflow_provider_kakaopose.emulator",
                    "--host",
                    HOST,
                    "--port",
                    "0",
                    *emulator_args,
                ],
                env=env,
            )
        self._wait("PostgreSQL to accept connections", self._pg_ready, left(), ["postgres"])
        self._create_db()
        self._wait("Redis to answer PING", lambda: _redis_ping(self.ports["redis"]), left(), ["redis"])
        if use_emulator:
            log = self.logs / "emulator.log"
            url = self._wait(
                "the emulator to listen",
                lambda: (m := re.findall(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())) and m[-1],
                left(),
                ["emulator"],
            )
            self.state["emulator_url"] = url
        phases["postgres, redis, emulator"] = time.monotonic() - t

        # One environment for every Airflow component.
        self.state["env"] = {
            **self._cluster_env(
                dags_dir,
                settings["worker_concurrency"],
                settings["parallelism"],
                settings["api_workers"],
                settings.get("conn_extra") or {},
            ),
            **extra_env,
        }
        self._save()
        passwords = self.home / "passwords.json"
        fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({UI_USER: self.secrets["ui_password"]}, f)

        t = time.monotonic()
        self.say("  airflow db migrate ...")
        with (self.logs / "db-migrate.log").open("ab") as out:
            out.write(f"\n===== {_now()} airflow db migrate\n".encode())
            out.flush()
            rc = subprocess.run(
                [str(self.bin / "airflow"), "db", "migrate"],
                env=self.env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=left(),
                check=False,
            ).returncode
        if rc != 0:
            raise ClusterError(f"airflow db migrate failed:\n{_tail(self.logs / 'db-migrate.log')}")
        phases["db migrate"] = time.monotonic() - t

        t = time.monotonic()
        names = [self._start_airflow(kind, 1).name for kind in ("api-server", "scheduler", "dag-processor")]
        names += [self._start_airflow("triggerer", i).name for i in range(1, settings["triggerers"] + 1)]
        names += [self._start_airflow("worker", i).name for i in range(1, settings["workers"] + 1)]
        self.say(f"  started {', '.join(names)}; waiting until healthy ...")
        watch = [*names, "postgres", "redis", *(["emulator"] if use_emulator else [])]
        self._wait("every component to be healthy", self._healthy, left(), watch)
        phases["airflow components healthy"] = time.monotonic() - t

        dag_files = list(dags_dir.glob("*.py"))
        t = time.monotonic()
        parsed = self._wait("the DAG folder to be parsed", self._dags_parsed, left(), watch) if dag_files else (0, 0)
        phases["dags parsed"] = time.monotonic() - t
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
        lines.append(f"  DAG folder     {self.state['env'].get('AIRFLOW__CORE__DAGS_FOLDER')}")
        lines.append(f"  Fernet key {mask(s['fernet_key'])}, JWT secret {mask(s['jwt_secret'])}; logs in {self.logs}")
        return "\n".join(lines)

    def status(self) -> list[dict[str, Any]]:
        """Each component: name, kind, pid, alive, health (when known) and log file."""
        health: dict[str, str] = {}
        if self.state.get("components") and self.running():
            with contextlib.suppress(Exception):
                health = self.health()
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
        self._update(comp)
        return comp

    def start(self, kind: str, wait: bool = True, timeout: float = 180) -> Component:
        """Start one more ``worker``, ``triggerer`` or ``scheduler``; with ``wait``, until it is healthy."""
        if kind not in STARTABLE:
            raise ValueError(f"kind must be one of {', '.join(STARTABLE)}")
        if not self.alive("api-server"):
            raise ClusterError("the cluster is not running (no api-server): `up` first")
        comp = self._start_airflow(kind)
        if wait:
            if kind == "worker":
                self._wait(
                    f"{comp.name} to answer ping",
                    lambda: comp.celery_hostname in self.worker_pings(),
                    timeout,
                    [comp.name],
                )
            else:  # a job of its own, started after the process, heartbeating
                job_type = "TriggererJob" if kind == "triggerer" else "SchedulerJob"
                self._wait(
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
        if not self.state.get("env"):
            raise ClusterError(f"no cluster in {self.root}: `up` first")
        return subprocess.run(
            [str(self.bin / "airflow"), *args],
            env=self.env(),
            cwd=self.root,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=check,
        )

    def down(self, wipe: bool = False, grace: float = 10.0, quiet: bool = False) -> None:
        """Stop everything: the Airflow components (SIGTERM, SIGKILL after ``grace``), then the emulator, Redis and
        PostgreSQL (fast shutdown), then any stray process carrying this cluster's marker. With ``wipe``, also
        remove the cluster folder and the PostgreSQL data folder."""
        say = (lambda _msg: None) if quiet else self.say
        comps = self.alive()
        airflow = [c.pid for c in comps if c.kind in AIRFLOW_KINDS]
        if airflow:
            say(f"Stopping {', '.join(c.name for c in comps if c.kind in AIRFLOW_KINDS)} ...")
            _terminate_all(airflow, signal.SIGTERM, grace)
        for kind, sig in (("emulator", signal.SIGTERM), ("redis", signal.SIGTERM), ("postgres", signal.SIGINT)):
            pids = [c.pid for c in comps if c.kind == kind]
            if pids:
                say(f"Stopping {kind} ...")
                _terminate_all(pids, sig, 30.0 if kind == "postgres" else grace)
        strays = self.strays()
        if strays:
            say(f"Killing {len(strays)} stray process(es) of this cluster: {', '.join(map(str, strays))}")
            for pid in strays:
                host_kill(pid)
        self._reap()
        if self.state:
            self.state["stopped_at"] = _now()
            self._save()
        if wipe:
            self.wipe(say)
        say("Cluster stopped" + (" and wiped" if wipe else ""))

    def strays(self) -> list[int]:
        """Processes carrying this cluster's marker (every component and its children do)."""
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        found = []
        for proc in psutil.process_iter(["pid"]):
            if proc.pid in mine:
                continue
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(MARKER) == str(self.root) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
        return found

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


# -- the command line ----------------------------------------------------------------------------------------------


def _settings_help() -> str:
    lines = ["Set for every component (how fast a dead worker's or triggerer's work moves on):"]
    for name, value, default, why in RECOVERY_SETTINGS:
        lines.append(f"  {name}={value}  (default {default})")
        lines.append(f"      {why}")
    lines += [
        "",
        "A SIGKILLed worker's running task is failed ~30-35 s after its last heartbeat and retried (when it",
        "has retries) on another worker; the visibility timeout does not delay that (a retry is a new message).",
        "",
        "Environment: AIRFLOW_CONN_KAKAO_POSE_DEFAULT set = that connection for every component, no emulator;",
        "KAKAO_POSE_* variables are passed to every component; other AIRFLOW* variables are not (use --env).",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python scripts/cluster.py",
        description="A local, production-like Airflow 3.3 deployment on loopback: PostgreSQL, Redis, api-server, "
        "scheduler, dag-processor, Celery workers, triggerers and the Pose API emulator, each its own process.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="the cluster folder (default: .cluster/ in the repo)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up",
        help="start everything and wait until healthy",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
    up.add_argument("--triggerers", type=int, default=2, help="triggerers (default 2)")
    up.add_argument("--worker-concurrency", type=int, default=8, help="task slots per worker (default 8)")
    up.add_argument("--parallelism", type=int, default=32, help="[core] parallelism for the cluster (default 32)")
    up.add_argument("--api-workers", type=int, default=1, help="api-server worker processes (default 1)")
    up.add_argument("--dags", help="the DAG folder to serve (default: the repository's dags/)")
    up.add_argument(
        "--emulator-args",
        default="",
        help='more emulator arguments, one string, e.g. "--latency 0.3 --quota-per-second 10" '
        "(python -m airflow_provider_kakaopose.emulator --help lists them)",
    )
    up.add_argument("--latency", type=float, help="emulator: seconds added to every answer")
    up.add_argument("--quota-per-second", type=int, help="emulator: requests allowed per second")
    up.add_argument("--job-waiting-s", type=float, help="emulator: seconds a video job stays 'waiting'")
    up.add_argument("--job-processing-s", type=float, help="emulator: seconds a video job stays 'processing'")
    up.add_argument(
        "--conn-extra",
        default="{}",
        metavar="JSON",
        help="extra fields of the emulator connection, e.g. '{\"rate_limit_per_second\": 10}'",
    )
    up.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="more environment, repeatable")
    up.add_argument("--no-install", action="store_true", help="do not install missing packages")
    up.add_argument("--timeout", type=float, default=600, help="seconds for the whole start-up (default 600)")

    sub.add_parser("status", help="each component, its pid, alive or not, and health")
    kill = sub.add_parser("kill", help="SIGKILL one component with its whole process tree, as if its host died")
    kill.add_argument("kind", choices=KILLABLE)
    kill.add_argument("--index", type=int, help="which one (worker2: 2); default the first running")
    kill.add_argument("--pid", type=int, help="the one whose process tree holds this pid (e.g. a task's)")
    start = sub.add_parser("start", help="start one more worker, triggerer or scheduler")
    start.add_argument("kind", choices=STARTABLE)
    af = sub.add_parser("airflow", help="run an Airflow CLI command against the cluster")
    af.add_argument("args", nargs=argparse.REMAINDER)
    down = sub.add_parser("down", help="stop everything")
    down.add_argument("--wipe", action="store_true", help="also remove the cluster folder and the PostgreSQL data")
    return p


def _emulator_args(ns: argparse.Namespace) -> list[str]:
    args = shlex.split(ns.emulator_args)
    for flag, value in (
        ("--latency", ns.latency),
        ("--quota-per-second", ns.quota_per_second),
        ("--job-waiting-s", ns.job_waiting_s),
        ("--job-processing-s", ns.job_processing_s),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args


def _print_status(cluster: Cluster) -> None:
    rows = cluster.status()
    if not rows:
        print(f"No cluster in {cluster.root}")
        return
    stopped = cluster.state.get("stopped_at") if not cluster.running() else None
    since = f"started {cluster.state.get('started_at', '?')}" + (f", stopped {stopped}" if stopped else "")
    print(f"Cluster in {cluster.root} ({since})")
    print(f"  {'component':<15} {'pid':>8}  {'alive':<5}  health / log")
    for r in rows:
        print(f"  {r['name']:<15} {r['pid']:>8}  {'yes' if r['alive'] else 'NO':<5}  {r['health']}")
    if cluster.running():
        print(cluster.describe())


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    cluster = Cluster(ns.root)
    try:
        if ns.command == "up":
            extra = dict(kv.split("=", 1) for kv in ns.env)
            cluster.up(
                workers=ns.workers,
                triggerers=ns.triggerers,
                dags=ns.dags,
                emulator_args=_emulator_args(ns),
                conn_extra=json.loads(ns.conn_extra),
                worker_concurrency=ns.worker_concurrency,
                parallelism=ns.parallelism,
                api_workers=ns.api_workers,
                extra_env=extra,
                install=not ns.no_install,
                timeout=ns.timeout,
            )
            r = cluster.report
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in r.phases.items())
            print(f"Cluster healthy after {r.seconds:.1f} s ({phases})")
            print(f"  DAGs: {r.dags} parsed, {r.import_errors} import error(s)")
            _print_status(cluster)
        elif ns.command == "status":
            _print_status(cluster)
        elif ns.command == "kill":
            comp = cluster.kill(ns.kind, index=ns.index, pid=ns.pid)
            print(f"Killed {comp.name} (pid {comp.pid}) with its whole process tree")
        elif ns.command == "start":
            comp = cluster.start(ns.kind)
            print(f"Started {comp.name} (pid {comp.pid}, log {comp.log})")
        elif ns.command == "airflow":
            args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
            return cluster.airflow(*args, check=False).returncode
        elif ns.command == "down":
            cluster.down(wipe=ns.wipe)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
