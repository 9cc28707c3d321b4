"""A cluster's folder and its ``state.json`` (mode 0600: it holds the secrets): the settings of the last ``up``,
the ports, the secrets, every component started, and the addresses and environment made from them."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from .config import DB_NAME, DB_USER, DEFAULT_ROOT, HOST, MARKER, STATE_FILE, UI_USER, free_port, now
from .processes import Component


class ClusterState:
    """The folder ``root`` (default ``.cluster/`` in the repository) and its state file: what any later
    instance on the same ``root`` (another process, a later subcommand) reads to find the running cluster."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
        self.root = Path(root).resolve()
        self.logs = self.root / "logs"
        self.home = self.root / "home"
        self.state_path = self.root / STATE_FILE
        self.bin = Path(sys.executable).parent
        self.state: dict[str, Any] = self._load()

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

    def new_state(self, use_emulator: bool, pg_root: Path, pg_root_fallback: bool, settings: dict[str, Any]) -> None:
        """Start the state of a new ``up``: new ports; the secrets kept from the last one (the DB is kept too)
        or new on a wiped cluster. Saved."""
        from cryptography.fernet import Fernet

        kept = self.state.get("secrets", {})
        self.state = {
            "version": 1,
            "root": str(self.root),
            "pg_root": str(pg_root),
            "pg_root_fallback": pg_root_fallback,
            "started_at": now(),
            "secrets": {
                "db_password": kept.get("db_password") or secrets.token_hex(16),
                "fernet_key": kept.get("fernet_key") or Fernet.generate_key().decode(),
                "jwt_secret": kept.get("jwt_secret") or secrets.token_urlsafe(32),
                "api_secret_key": kept.get("api_secret_key") or secrets.token_urlsafe(32),
                "ui_password": kept.get("ui_password") or secrets.token_urlsafe(12),
                # Signs the Pose API's job callbacks ([kakao_pose] callback_secret, 'kid:secret').
                "callback_secret": kept.get("callback_secret") or f"cluster:{secrets.token_urlsafe(32)}",
                **({"api_key": kept.get("api_key") or secrets.token_hex(16)} if use_emulator else {}),
            },
            "ports": {"postgres": free_port(), "redis": free_port(), "api": free_port()},
            "settings": settings,
            "components": [],
            "env": {},
        }
        self._save()

    # -- components ----------------------------------------------------------------------------------------------

    @property
    def components(self) -> list[Component]:
        """Every component started since the last ``up`` (dead ones included)."""
        return [Component(**c) for c in self.state.get("components", [])]

    def add_component(self, comp: Component) -> None:
        self.state.setdefault("components", []).append(dataclasses.asdict(comp))
        self._save()

    def update_component(self, comp: Component) -> None:
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

    # -- addresses and secrets -----------------------------------------------------------------------------------

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

    # -- environment ---------------------------------------------------------------------------------------------

    @staticmethod
    def base_env() -> dict[str, str]:
        """This process's environment without any Airflow setting (a test session's own AIRFLOW_HOME or
        unit-test mode must not leak into the cluster)."""
        return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", MARKER))}

    def env(self) -> dict[str, str]:
        """The environment every component gets (and ``airflow`` commands): this process's environment
        without Airflow settings, plus the cluster's own (``state["env"]``)."""
        env = self.base_env()
        env.update(self.state["env"])
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", os.defpath)])
        return env

    def marked_env(self, **more: str) -> dict[str, str]:
        """:meth:`base_env` with this cluster's marker (for the services that are not Airflow's)."""
        return {**self.base_env(), MARKER: str(self.root), **more}
