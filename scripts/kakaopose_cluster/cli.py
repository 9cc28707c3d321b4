"""The command line: ``python scripts/cluster.py up|status|kill|start|airflow|down`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from .cluster import Cluster
from .config import DEFAULT_ROOT, KILLABLE, RECOVERY_SETTINGS, STARTABLE, ClusterError


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
    _add_up(sub)
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


def _add_up(sub: argparse._SubParsersAction) -> None:
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


def _up(cluster: Cluster, ns: argparse.Namespace) -> None:
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
    assert r is not None
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in r.phases.items())
    print(f"Cluster healthy after {r.seconds:.1f} s ({phases})")
    print(f"  DAGs: {r.dags} parsed, {r.import_errors} import error(s)")
    _print_status(cluster)


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    cluster = Cluster(ns.root)
    try:
        if ns.command == "up":
            _up(cluster, ns)
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
