"""PostgreSQL, the metadata DB and Celery result backend: its own data folder, port and Unix socket folder, run
as the ``postgres`` user (it refuses root). The data folder is ``<cluster>/pg`` when the ``postgres`` user can
reach it, else ``/tmp/kakaopose-cluster-<hash of the cluster folder's path>/pg`` (a checkout under a 0700 folder
is out of its reach)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DB_NAME, DB_USER, HOST, MARKER, PG_USER_OS, ClusterError, is_root
from .install import pg_bin_dir
from .processes import Component

if TYPE_CHECKING:
    from .cluster import Cluster


class Postgres:
    """The cluster's PostgreSQL server."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @staticmethod
    def as_postgres() -> list[str]:
        """The prefix that runs a command as the ``postgres`` user (nothing when not root)."""
        if not is_root():
            return []
        return ["setpriv", f"--reuid={PG_USER_OS}", f"--regid={PG_USER_OS}", "--init-groups", "--"]

    def can_reach(self, path: Path) -> bool:
        if not is_root():
            return os.access(path, os.W_OK | os.X_OK)
        return subprocess.run([*self.as_postgres(), "test", "-x", str(path)], check=False).returncode == 0

    def choose_root(self) -> tuple[Path, bool]:
        """``root/pg`` when the postgres user can reach it, else a folder under /tmp named after ``root``; and
        whether it is that fallback."""
        root = self.cluster.root
        if self.can_reach(root):
            return root / "pg", False
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        return Path(f"/tmp/kakaopose-cluster-{digest}") / "pg", True

    def env(self) -> dict[str, str]:
        return {"PATH": os.defpath, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", MARKER: str(self.cluster.root)}

    @staticmethod
    def _bin() -> Path:
        pg_bin = pg_bin_dir()
        assert pg_bin is not None
        return pg_bin

    def start(self) -> Component:
        """Create the data folder (initdb) when there is none, then start the server."""
        pg_bin = self._bin()
        pg_root = self.cluster.pg_root
        data, run = pg_root / "data", pg_root / "run"
        owner = PG_USER_OS if is_root() else None
        for path in (pg_root.parent, pg_root):
            path.mkdir(mode=0o755, exist_ok=True)
        for path in (data, run):
            path.mkdir(mode=0o700, exist_ok=True)
            if owner:
                shutil.chown(path, owner, owner)
        if not (data / "PG_VERSION").exists():
            self._initdb(data)
        settings = {
            "listen_addresses": HOST,
            "port": str(self.cluster.ports["postgres"]),
            "unix_socket_directories": str(run),
            "max_connections": "300",  # api-server, scheduler, dag-processor, triggerers, every worker process
            "shared_buffers": "256MB",
        }
        argv = [*self.as_postgres(), str(pg_bin / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return self.cluster.processes.spawn("postgres", "postgres", argv, env=self.env())

    def _initdb(self, data: Path) -> None:
        self.cluster.say(f"  initdb {data}")
        with (self.cluster.logs / "postgres-initdb.log").open("ab") as out:
            subprocess.run(
                [
                    *self.as_postgres(),
                    str(self._bin() / "initdb"),
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
                env=self.env(),
                cwd="/",
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL (given on stdin: no secret on a command line) as the postgres superuser, on the socket."""
        psql = shutil.which("psql") or str(self._bin() / "psql")
        cmd = [psql, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", str(self.cluster.pg_root / "run")]
        cmd += ["-p", str(self.cluster.ports["postgres"]), "-U", "postgres", "-d", db]
        result = subprocess.run(
            [*self.as_postgres(), *cmd], input=sql, env=self.env(), capture_output=True, text=True, cwd="/"
        )
        if result.returncode != 0:
            raise ClusterError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def ready(self) -> bool:
        """Whether the server accepts connections (``pg_isready``)."""
        cmd = [str(self._bin() / "pg_isready"), "-q", "-h", HOST, "-p", str(self.cluster.ports["postgres"]), "-t", "2"]
        return subprocess.run(cmd, check=False).returncode == 0

    def create_db(self) -> None:
        """The Airflow role (its password set each time: the state is the only place it is kept) and DB."""
        pw = self.cluster.secrets["db_password"]
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}'")
        verb = "ALTER" if exists else "CREATE"
        self.psql(f"{verb} ROLE {DB_USER} LOGIN PASSWORD '{pw}';")
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"):
            self.psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER} ENCODING 'UTF8';")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read the metadata DB (psycopg2) as the Airflow user."""
        import psycopg2

        con = psycopg2.connect(
            host=HOST,
            port=self.cluster.ports["postgres"],
            user=DB_USER,
            password=self.cluster.secrets["db_password"],
            dbname=DB_NAME,
            connect_timeout=5,
        )
        try:
            with con.cursor() as cur:
                cur.execute(sql, tuple(params))
                return list(cur.fetchall()) if cur.description else []
        finally:
            con.close()
