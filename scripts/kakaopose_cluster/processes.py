"""The cluster's OS processes: start one in its own session with its own log, wait for a condition while
watching components, kill a process tree the way its host would die, and small HTTP and log helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from .config import MARKER, ClusterError, now

if TYPE_CHECKING:
    from .cluster import Cluster


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


class Processes:
    """Starts the cluster's processes and keeps its own children (reaped as they end)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(
        self,
        name: str,
        kind: str,
        argv: list[str],
        *,
        index: int = 0,
        env: dict[str, str] | None = None,
        celery_hostname: str | None = None,
    ) -> Component:
        """Start ``argv`` in its own session, output appended to ``logs/<name>.log``; record it in the state."""
        cluster = self.cluster
        log = cluster.logs / f"{name}.log"
        with log.open("ab") as out:
            out.write(f"\n===== {now()} {name}: {shlex.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                env=env if env is not None else cluster.env(),
                cwd=cluster.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children[proc.pid] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = time.time()
        comp = Component(name, kind, index, proc.pid, argv, str(log), create_time, now(), celery_hostname)
        cluster.add_component(comp)
        return comp

    def reap(self) -> None:
        """Forget (and reap) the children that ended."""
        for pid, proc in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[pid]

    def check_alive(self, names: Iterable[str]) -> None:
        """Raise, with the end of its log, if one of the named components exited."""
        for name in names:
            comp = self.cluster.get(name)
            if not comp.alive():
                raise ClusterError(f"{name} exited; the end of {comp.log}:\n{tail(Path(comp.log))}")

    def wait(self, what: str, condition: Callable[[], Any], timeout: float, watch: Iterable[str] = ()) -> Any:
        """Poll ``condition`` until truthy (returned); fail when a watched component dies or on timeout."""
        watch = list(watch)
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(watch)
            if value := condition():
                return value
            if time.monotonic() >= deadline:
                raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    def strays(self) -> list[int]:
        """Processes carrying this cluster's marker (every component and its children do)."""
        root = str(self.cluster.root)
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        found = []
        for proc in psutil.process_iter(["pid"]):
            if proc.pid in mine:
                continue
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(MARKER) == root and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
        return found


# -- killing -------------------------------------------------------------------------------------------------------


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


def terminate_all(pids: Sequence[int], sig: int, grace: float) -> None:
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


# -- small helpers -------------------------------------------------------------------------------------------------


def http(
    method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None, timeout: float = 10
) -> tuple[int, Any]:
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


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a log file."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
