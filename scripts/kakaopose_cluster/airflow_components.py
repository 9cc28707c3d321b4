"""Airflow's components: api-server, scheduler, dag-processor, N Celery workers and N triggerers
(CeleryExecutor), all with one environment; ``airflow db migrate`` and any other Airflow CLI command; the REST
API as the UI user.

Two workers or triggerers on one host: ``--skip-serve-logs`` (they would all bind the same log-server port; the
api-server reads the task logs from the shared local log folder) and a distinct ``--celery-hostname`` each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DB_NAME, DB_USER, HOST, MARKER, RECOVERY_SETTINGS, UI_USER, ClusterError, now
from .processes import Component, http, tail

if TYPE_CHECKING:
    from .cluster import Cluster


class AirflowComponents:
    """Starts Airflow's components and runs its commands, in the cluster's environment."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    # -- environment -----------------------------------------------------------------------------------------------

    def env(
        self, dags: Path, concurrency: int, parallelism: int, api_workers: int, conn_extra: Mapping[str, Any]
    ) -> dict[str, str]:
        """The cluster's own environment for every component (``state["env"]``)."""
        c = self.cluster
        s, p = c.secrets, c.ports
        db = f"{DB_USER}:{s['db_password']}@{HOST}:{p['postgres']}/{DB_NAME}"
        env = {
            MARKER: str(c.root),
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(c.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            # Fernet encrypts connections and variables in the DB: every component needs the same key.
            "AIRFLOW__CORE__FERNET_KEY": s["fernet_key"],
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"postgresql+asyncpg://{db}",
            "AIRFLOW__CELERY__BROKER_URL": c.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
            # The provider's shared API quota across every process (Redis DB 1; DB 0 is the broker).
            "AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE": c.rate_limit_store,
            # Job callbacks: the emulator calls the api-server's receiver back; every component signs and
            # verifies with the same secret (docs/callbacks.md).
            "AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL": c.api_url,
            "AIRFLOW__KAKAO_POSE__CALLBACK_SECRET": s["callback_secret"],
            # The execution API's tokens (handed out by the scheduler, checked by the api-server) and the
            # session secret: shared by every component.
            "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": s["api_secret_key"],
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(p["api"]),
            "AIRFLOW__API__WORKERS": str(api_workers),
            "AIRFLOW__API__BASE_URL": c.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{c.api_url}/execution/",
            **self._login_env(),
            # New DAG files are seen within 10 s (default 300).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "KAKAO_POSE_OUTPUT": str(c.root / "out"),
        }
        env.update({name: value for name, value, _, _ in RECOVERY_SETTINGS})
        # The DAGs' own knobs (KAKAO_POSE_OUTPUT, KAKAO_POSE_DEMO_VIDEOS, ...) from the caller's environment.
        env.update(
            {k: v for k, v in os.environ.items() if k.startswith("KAKAO_POSE_") and k != "KAKAO_POSE_EMULATOR_API_KEY"}
        )
        # The provider's settings from the caller's environment (AIRFLOW__KAKAO_POSE__CALLBACK_POLL_INTERVAL, ...)
        # reach every component, over the cluster's own.
        env.update({k: v for k, v in os.environ.items() if k.startswith("AIRFLOW__KAKAO_POSE__")})
        env.update(self._plugin_env())
        env["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"] = self._connection(conn_extra)
        return env

    def _plugin_env(self) -> dict[str, str]:
        """How the api-server finds the provider's plugin (the callback receiver): through its ``airflow.plugins``
        entry point when the installed metadata has it; an editable install made before the entry point existed
        (run from a worktree through PYTHONPATH) lacks it, so then a one-line module in the cluster's plugins
        folder imports it (never both: the plugin would be registered twice)."""
        from importlib.metadata import entry_points

        plugins = self.cluster.home / "plugins"
        shim = plugins / "kakao_pose_callbacks.py"
        if any(ep.name == "kakao_pose_callbacks" for ep in entry_points(group="airflow.plugins")):
            shim.unlink(missing_ok=True)
            return {}
        plugins.mkdir(parents=True, exist_ok=True)
        shim.write_text(
            "# Written by scripts/cluster.py: the installed provider's metadata has no airflow.plugins entry point.\n"
            "from airflow_provider_kakaopose.plugins.plugin import KakaoPoseCallbackPlugin  # noqa: F401\n"
        )
        return {"AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins)}

    def _login_env(self) -> dict[str, str]:
        """The UI login: SimpleAuthManager with one admin whose password is in a file (:meth:`write_passwords`)."""
        return {
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{UI_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.cluster.home / "passwords.json"),
        }

    def _connection(self, conn_extra: Mapping[str, Any]) -> str:
        """``kakao_pose_default``: the emulator with its key (and ``conn_extra``), else the caller's own."""
        c = self.cluster
        if not c.emulator_url:
            return os.environ["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"]
        conn: dict[str, Any] = {"conn_type": "kakao_pose", "host": c.emulator_url, "password": c.secrets["api_key"]}
        if conn_extra:
            conn["extra"] = dict(conn_extra)
        return json.dumps(conn)

    def write_passwords(self) -> None:
        """The UI user's password file (mode 0600)."""
        passwords = self.cluster.home / "passwords.json"
        fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({UI_USER: self.cluster.secrets["ui_password"]}, f)

    # -- commands and processes ------------------------------------------------------------------------------------

    def migrate_db(self, timeout: float) -> None:
        """``airflow db migrate``, its output in ``logs/db-migrate.log``."""
        c = self.cluster
        with (c.logs / "db-migrate.log").open("ab") as out:
            out.write(f"\n===== {now()} airflow db migrate\n".encode())
            out.flush()
            rc = subprocess.run(
                [str(c.bin / "airflow"), "db", "migrate"],
                env=c.env(),
                cwd=c.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            ).returncode
        if rc != 0:
            raise ClusterError(f"airflow db migrate failed:\n{tail(c.logs / 'db-migrate.log')}")

    def argv(self, kind: str, index: int) -> tuple[list[str], str | None]:
        """The command line of one component, and its Celery hostname (workers)."""
        airflow = str(self.cluster.bin / "airflow")
        if kind == "api-server":
            return [airflow, "api-server", "--host", HOST, "--port", str(self.cluster.ports["api"])], None
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

    def start(self, kind: str, index: int | None = None) -> Component:
        """Start one component of ``kind`` (the next index when none is given)."""
        if index is None:
            index = max((c.index for c in self.cluster.components if c.kind == kind), default=0) + 1
        argv, hostname = self.argv(kind, index)
        name = kind if kind in ("api-server", "dag-processor") and index == 1 else f"{kind}{index}"
        return self.cluster.processes.spawn(name, kind, argv, index=index, celery_hostname=hostname)

    def start_all(self, triggerers: int, workers: int) -> list[str]:
        """api-server, scheduler, dag-processor, the triggerers and the workers; their names."""
        names = [self.start(kind, 1).name for kind in ("api-server", "scheduler", "dag-processor")]
        names += [self.start("triggerer", i).name for i in range(1, triggerers + 1)]
        names += [self.start("worker", i).name for i in range(1, workers + 1)]
        return names

    def run(
        self, *args: str, check: bool = True, capture: bool = False, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``airflow ARGS`` in the components' environment."""
        c = self.cluster
        if not c.state.get("env"):
            raise ClusterError(f"no cluster in {c.root}: `up` first")
        return subprocess.run(
            [str(c.bin / "airflow"), *args],
            env=c.env(),
            cwd=c.root,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=check,
        )


class RestApi:
    """The api-server's REST API below ``/api/v2``, as the UI user (a token fetched once, again when expired)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._token: str | None = None

    def token(self) -> str:
        """A REST API token for the UI user."""
        user, password = self.cluster.login
        status, body = http("POST", f"{self.cluster.api_url}/auth/token", {"username": user, "password": password})
        if status not in (200, 201) or not isinstance(body, dict):
            raise ClusterError(f"no token from the api-server (HTTP {status})")
        return str(body["access_token"])

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        """``(status, JSON)`` of ``method /api/v2<path>``."""
        if self._token is None:
            self._token = self.token()
        url = f"{self.cluster.api_url}/api/v2{path}"
        status, answer = http(method, url, body, self._auth(), timeout)
        if status == 401:  # the token expired: once more with a new one
            self._token = self.token()
            status, answer = http(method, url, body, self._auth(), timeout)
        return status, answer

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}
