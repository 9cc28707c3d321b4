"""A small, real Airflow deployment on loopback for end-to-end tests.

Every component (api-server, scheduler, dag-processor, triggerer, the Pose API emulator) is its own OS
process, started in its own session so that it and all its children can be killed at once. Output goes to
log files under the deployment's directory (never to pipes, which could fill up and block a component).
The metadata DB is a private SQLite file that the test can read directly.

The same deployment runs on Airflow 3.x and 2.11; what differs is kept in small helpers (``_v3_env`` /
``_v2_env``, ``start_api_server``, ``start_dag_processor``, ``api_prefix``):

- 3.x: the api-server (REST API ``/api/v2``, execution API for the task supervisors, JWT), LocalExecutor,
  SimpleAuthManager with everyone admin.
- 2.11: the webserver (Flask, REST API ``/api/v1``; tasks talk to the DB directly, no JWT), the
  SequentialExecutor (Airflow 2's LocalExecutor refuses SQLite; the sequential one still runs each task as its
  own ``airflow tasks run`` process, and deferred tasks still go to the triggerer), no dag-processor process
  (2.11 refuses a standalone one on SQLite: the scheduler parses the DAGs in a child process of its own), and
  REST calls without a login through FAB's public role made admin (``AUTH_ROLE_PUBLIC`` in the private
  ``webserver_config.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from helpers import free_port

from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS

#: Log lines printed per component when a test fails.
TAIL_LINES = 60


class DeploymentError(AssertionError):
    """A component died or a condition was not reached in time."""


class Deployment:
    """Processes of one deployment, their log files, and helpers to look at its state.

    :param root: a fresh directory; gets ``home/`` (AIRFLOW_HOME, SQLite DB) and ``logs/`` (one file per
        component).
    :param secret: a string that must never be printed (the API key); it is masked in :meth:`report`.
    """

    def __init__(self, root: Path, *, secret: str | None = None) -> None:
        self.root = root
        self.home = root / "home"
        self.logs = root / "logs"
        self.home.mkdir(parents=True)
        self.logs.mkdir(parents=True)
        self.db = self.home / "airflow.db"
        self.secret = secret
        self.procs: dict[str, subprocess.Popen] = {}
        self.bin = Path(sys.executable).parent
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env: dict[str, str] = {}

    # -- environment ---------------------------------------------------------------------------------------

    @staticmethod
    def base_env() -> dict[str, str]:
        """This process's environment without any Airflow or provider setting.

        Nothing from the test session's own Airflow settings (conftest points AIRFLOW_HOME elsewhere and turns
        unit-test mode on) may leak into the deployment.
        """
        return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "KAKAO_POSE"))}

    def airflow_env(self, dags_folder: Path, extra: dict[str, str]) -> dict[str, str]:
        """The environment shared by every Airflow component (they must agree on DB, secrets and URLs)."""
        from cryptography.fernet import Fernet

        env = self.base_env()
        env.update(
            {
                # Components start `airflow` subcommands by name (2.x's executors: `airflow tasks run ...`).
                "PATH": os.pathsep.join([str(self.bin), env.get("PATH", os.defpath)]),
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
                "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                # Fernet encrypts connections and (on 2.x) trigger kwargs: every component needs the same key.
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                # The scheduler reacts within a second.
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                # A killed triggerer stops heartbeating; its triggers go to another triggerer once its
                # last heartbeat is older than the threshold (30 s by default; keep it above the heartbeat).
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
                "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self._v3_env() if AIRFLOW_V_3_0_PLUS else self._v2_env())
        env.update(extra)
        self.env = env
        return env

    def _v3_env(self) -> dict[str, str]:
        return {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # Secrets every component must share: JWT (the execution API tokens the scheduler hands out and the
            # api-server checks), session secret.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            # Where the api-server listens, and where task supervisors find the execution API.
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            # REST calls without a login (SimpleAuthManager makes everyone admin).
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # The DAG folder is listed at once, then every 5 s.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        }

    def _v2_env(self) -> dict[str, str]:
        # REST calls without a login: FAB's anonymous user gets the public role, made Admin here (the 2.x
        # counterpart of SimpleAuthManager's all-admins); the webserver reads this file at start.
        (self.home / "webserver_config.py").write_text('AUTH_ROLE_PUBLIC = "Admin"\n')
        runtime = self.root / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        return {
            # gunicorn (the webserver's HTTP server) puts its control socket in $XDG_RUNTIME_DIR, else in
            # ~/.gunicorn/: keep it in the deployment.
            "XDG_RUNTIME_DIR": str(runtime),
            # Airflow 2's LocalExecutor refuses SQLite ("cannot use SQLite with the LocalExecutor").
            "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor",
            "AIRFLOW__WEBSERVER__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__WEBSERVER__BASE_URL": self.api_url,
            "AIRFLOW__WEBSERVER__WORKERS": "1",
            "AIRFLOW__WEBSERVER__CONFIG_FILE": str(self.home / "webserver_config.py"),
            # The scheduler's own DAG parsing: the folder is listed at once, then every 5 s.
            "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__PARSING_PROCESSES": "1",
        }

    # -- processes -----------------------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a long-running component in its own session, output to ``logs/<name>.log``."""
        if name in self.procs:
            raise ValueError(f"{name} already started")
        with self.log_path(name).open("wb") as out:
            proc = subprocess.Popen(
                argv,
                env=env or self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def airflow(self, name: str, *args: str) -> subprocess.Popen:
        return self.start(name, [str(self.bin / "airflow"), *args])

    def start_api_server(self) -> subprocess.Popen:
        """The REST API on :attr:`api_port`: the api-server on 3.x, the webserver on 2.x."""
        if AIRFLOW_V_3_0_PLUS:
            return self.airflow("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port))
        return self.airflow(
            "api-server", "webserver", "--hostname", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"
        )

    def start_dag_processor(self) -> subprocess.Popen | None:
        """The DAG parser as its own process on 3.x. None on 2.x: there the standalone ``airflow dag-processor``
        is optional and refuses SQLite ("Standalone DagProcessor is not supported when using sqlite"), so the
        scheduler parses the DAGs itself, in a child process (its DagFileProcessorManager)."""
        if AIRFLOW_V_3_0_PLUS:
            return self.airflow("dag-processor", "dag-processor")
        return None

    @property
    def api_prefix(self) -> str:
        """Where the stable REST API lives: ``/api/v2`` on 3.x, ``/api/v1`` on 2.x (same paths below it)."""
        return "/api/v2" if AIRFLOW_V_3_0_PLUS else "/api/v1"

    def run(self, name: str, *args: str, timeout: float = 180) -> None:
        """Run an ``airflow`` command to completion (output to ``logs/<name>.log``); raise if it fails."""
        with self.log_path(name).open("wb") as out:
            proc = subprocess.Popen(
                [str(self.bin / "airflow"), *args],
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(proc, signal.SIGKILL)
                raise DeploymentError(f"airflow {' '.join(args)} did not finish in {timeout} s") from None
        if rc != 0:
            raise DeploymentError(f"airflow {' '.join(args)} exited with {rc}")

    def kill(self, name: str, sig: int = signal.SIGKILL, grace: float = 10.0) -> None:
        """Send ``sig`` to a component's whole process tree and wait for it to end (SIGKILL after ``grace``)."""
        proc = self.procs.pop(name)
        _kill_tree(proc, sig, grace)

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every component still running, all at once, then SIGKILL whatever is left after ``grace``
        (``grace=0``: SIGKILL at once; always safe to call)."""
        procs, self.procs = list(self.procs.values()), {}
        sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
        trees = [(proc, _signal_tree(proc, sig)) for proc in procs]
        deadline = time.monotonic() + grace
        for proc, descendants in trees:
            _reap(proc, descendants, max(deadline - time.monotonic(), 0.1))

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DeploymentError(f"{name} exited with {proc.returncode}")

    def wait_until(self, what: str, condition: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
        """Poll ``condition`` until it returns something truthy (returned); fail if a component dies."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise DeploymentError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    # -- state -----------------------------------------------------------------------------------------------

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the metadata DB directly (read-only; empty result while the DB or table does not exist yet)."""
        if not self.db.exists():
            return []
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return []
            raise
        finally:
            con.close()

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        """Call the REST API: ``path`` below :attr:`api_prefix` (``/dags/...``); returns ``(status, parsed JSON or
        None)``."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api_url + self.api_prefix + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                return err.code, json.loads(payload)
            except ValueError:
                return err.code, payload.decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, None

    def read_log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def report(self) -> str:
        """The tail of every component's log (and of the task logs), the secret masked."""
        parts = []
        files = sorted(self.logs.glob("*.log")) + sorted((self.home / "logs").glob("dag_id=*/**/*.log"))
        for path in files:
            lines = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
            parts.append(f"----- {path.relative_to(self.root)} (last {len(lines)} lines) -----")
            parts.extend(lines)
        text = "\n".join(parts)
        return text.replace(self.secret, "***") if self.secret else text


def _kill_tree(proc: subprocess.Popen, sig: int, grace: float = 10.0) -> None:
    """Signal the process tree of ``proc`` and wait for it to end (SIGKILL after ``grace``)."""
    _reap(proc, _signal_tree(proc, sig), grace)


def _signal_tree(proc: subprocess.Popen, sig: int) -> list[psutil.Process]:
    """Signal the process group of ``proc`` (a session leader) and any descendant that left the group;
    returns the descendants (looked up first: once their parent is dead they cannot be found)."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.send_signal(sig)
    return descendants


def _reap(proc: subprocess.Popen, descendants: list[psutil.Process], grace: float) -> None:
    """Wait up to ``grace`` for ``proc`` and ``descendants`` to end, then SIGKILL the rest."""
    deadline = time.monotonic() + grace
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    alive = _wait_gone(descendants, max(deadline - time.monotonic(), 0.1))
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    _wait_gone(alive, 5)
    # Anything still in the group (e.g. a grandchild the group leader never reported) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` for ``procs`` (not our children) to end; returns those still running.

    A process that has exited but not been reaped yet counts as ended: an orphan's parent is then PID 1, which
    here reaps only now and then (``psutil.wait_procs`` would wait for that, seconds after the process ended).
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        if not alive or time.monotonic() >= deadline:
            return alive
        procs = alive
        time.sleep(0.05)


def emulator_url(log: str) -> str | None:
    """The base URL the emulator CLI printed, once it listens."""
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log)
    return match.group(1) if match else None
