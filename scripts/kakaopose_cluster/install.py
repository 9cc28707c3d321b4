"""What the cluster needs installed: PostgreSQL and redis-server (Debian packages), the ``cluster`` dependency
group of pyproject.toml (the Celery provider, database drivers)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .config import PG_VERSION_PREFERRED, REPO, ClusterError, is_root


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
    if not is_root():
        if not shutil.which("sudo"):
            raise ClusterError(f"{' '.join(packages)} missing and not root: apt-get install -y {' '.join(packages)}")
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = is_root() and not policy.exists()
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
        _pip_install_group(install_log)
    return time.monotonic() - started


def _pip_install_group(install_log: Path | None) -> None:
    """``pip install -c constraints.txt --group pyproject.toml:cluster`` into the running environment."""
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
