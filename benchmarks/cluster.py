"""Benchmark: the provider at scale on a real distributed Airflow (``make cluster``), one API quota for all.

On the local cluster (scripts/cluster.py: PostgreSQL, Redis, api-server, scheduler, dag-processor, 2 Celery
workers, 2 triggerers), against the emulator with a quota that counts every request (submits, polls, result
fetches) and a fixed latency, it runs one DAG run of ``benchmarks/dags/kakao_pose_cluster_bench.py``: N
deferrable video tasks and M images in mapped batches, the connection limited to the quota and the limit shared
through Redis (``[kakao_pose] rate_limit_store``). While work is in flight it SIGKILLs one worker and one
triggerer (their whole process trees, the way a host dies). Then it reports:

* every input accounted for: each video a Parquet file (or a failed task), each image a row in its batch's
  keypoints table (``kakaopose:sources``) or its errors table;
* duplicate job submissions, each explained: the only acceptable kind is a submission cut off by a kill
  before its id could be recorded — the job record then counts it (``unknown_submissions``);
* the peak requests in any 1-second window (arrivals at the emulator, every process together) against the
  quota, and the quota refusals;
* the wall time against the quota-bound minimum (requests sent / quota), with the cluster's CPU share (the
  processes' CPU time / (wall x cores)), to tell a quota-bound run from a CPU-bound one.

    .venv/bin/python benchmarks/cluster.py                                  # 100 videos, 3,000 images, 10/s
    .venv/bin/python benchmarks/cluster.py --videos 10 --images 200 --batch 50   # quick

``run(...)`` is what ``tests/test_cluster.py`` calls with a smaller scenario.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[1] / "scripts"))  # the package behind scripts/cluster.py

from kakaopose_cluster import Cluster, host_kill

ROOT = Path(__file__).resolve().parents[1]

DAG_ID = "kakao_pose_cluster_bench"
DAG_FILE = ROOT / "benchmarks" / "dags" / "kakao_pose_cluster_bench.py"
CORES = os.cpu_count() or 1


@dataclass
class Scenario:
    videos: int = 100
    images: int = 3000
    batch: int = 300
    quota: int = 10
    latency: float = 0.3
    poll_interval: float = 20.0
    job_processing_s: float = 60.0
    workers: int = 2
    triggerers: int = 2
    worker_concurrency: int = 8
    #: Kill when this share of the run's expected requests has arrived (work is in flight then).
    kill_at: float = 0.3
    timeout: float = 3600.0
    #: Share of the jobs' callbacks the emulator drops (make cluster wires callbacks: a video wait listens).
    callback_drop_rate: float = 0.0
    #: ``[kakao_pose] callback_poll_interval`` of the deployment (None: the default, 300 s).
    callback_poll_interval: float | None = None


@dataclass
class Report:
    scenario: Scenario
    startup_s: float = 0.0
    wall_s: float = 0.0
    dag_state: str = ""
    requests: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    peak_per_second: int = 0
    refusals: int = 0
    videos_ok: int = 0
    videos_failed: list[str] = field(default_factory=list)
    images_ok: int = 0
    image_errors: int = 0
    images_missing: int = 0
    duplicate_submissions: dict[str, int] = field(default_factory=dict)
    duplicates_explained: dict[str, str] = field(default_factory=dict)
    cpu_share: float = 0.0
    cpu_by_component: dict[str, float] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    kill_at_s: float = 0.0
    #: Seconds from the latest send slot reserved in the shared quota (Redis) to each arrival at the emulator.
    delays: list[float] = field(default_factory=list)
    peak_windows: list[str] = field(default_factory=list)
    trace_file: str = ""
    task_tries: dict[str, int] = field(default_factory=dict)
    #: The emulator's callbacks by outcome (HTTP status, "dropped", or an error).
    callbacks: dict[str, int] = field(default_factory=dict)

    @property
    def minimum_s(self) -> float:
        return self.requests / self.scenario.quota

    @property
    def unexplained_duplicates(self) -> list[str]:
        return [v for v in self.duplicate_submissions if v not in self.duplicates_explained]

    def goals(self) -> list[tuple[str, bool, str]]:
        s = self.scenario
        ratio = self.wall_s / self.minimum_s if self.minimum_s else float("inf")
        refused = self.refusals / self.requests if self.requests else 0.0
        return [
            (
                "every input accounted for",
                self.videos_ok + len(self.videos_failed) == s.videos and self.images_missing == 0,
                f"videos {self.videos_ok} Parquet + {len(self.videos_failed)} failed of {s.videos}; images "
                f"{self.images_ok} rows + {self.image_errors} error rows of {s.images} ({self.images_missing} missing)",
            ),
            (
                "no duplicate submission caused by the provider",
                not self.unexplained_duplicates,
                f"{sum(n - 1 for n in self.duplicate_submissions.values())} duplicate(s) of "
                f"{len(self.duplicate_submissions)} video(s); explained: {len(self.duplicates_explained)}",
            ),
            (
                "peak requests in any 1-second window <= quota",
                self.peak_per_second <= s.quota,
                f"{self.peak_per_second} (quota {s.quota})",
            ),
            ("quota refusals < 1 % of requests", refused < 0.01, f"{self.refusals} of {self.requests} ({refused:.2%})"),
            (
                "wall time <= 1.3 x the quota-bound minimum",
                ratio <= 1.3,
                f"{self.wall_s:.0f} s vs {self.minimum_s:.0f} s = {ratio:.2f}x; CPU share {self.cpu_share:.0%}",
            ),
        ]

    def table(self) -> str:
        s = self.scenario
        lines = [
            f"cluster: {s.workers} Celery workers (x{s.worker_concurrency}), {s.triggerers} triggerers, PostgreSQL, "
            f"Redis; up in {self.startup_s:.0f} s",
            f"workload: {s.videos} deferrable video tasks + {s.images} images in batches of {s.batch}; quota "
            f"{s.quota}/s counting every request, latency {s.latency * 1000:.0f} ms",
            f"killed at +{self.kill_at_s:.0f} s: {', '.join(self.killed) or 'nothing'}",
            f"DAG run: {self.dag_state} in {self.wall_s:.0f} s; requests {self.requests} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.by_kind.items()))})",
            f"tries: {', '.join(f'{k} {v}' for k, v in sorted(self.task_tries.items()))}",
            f"arrival (emulator) after its reserved slot (Redis): {_quantiles(self.delays)}; raw: {self.trace_file}",
            "CPU (s): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.cpu_by_component.items())),
            "",
            f"{'goal':50} {'result':6} measured",
            f"{'-' * 50} {'-' * 6} {'-' * 60}",
        ]
        for name, ok, measured in self.goals():
            lines.append(f"{name:50} {'PASS' if ok else 'FAIL':6} {measured}")
        for video, reason in self.duplicates_explained.items():
            lines.append(f"  duplicate explained: {video}: {reason}")
        for window in self.peak_windows:
            lines.append(f"  busiest window: {window}")
        for video in self.unexplained_duplicates:
            lines.append(f"  duplicate NOT explained: {video} ({self.duplicate_submissions[video]} submissions)")
        return "\n".join(lines)


def _sliding_max(times: list[float], width: float = 1.0) -> int:
    times = sorted(times)
    best = lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _quantiles(values: list[float]) -> str:
    if not values:
        return "not measured"
    v = sorted(values)
    q = {p: v[min(len(v) - 1, int(p / 100 * len(v)))] * 1000 for p in (50, 90, 99)}
    top = v[-1] * 1000
    return f"median {q[50]:.0f} ms, p90 {q[90]:.0f} ms, p99 {q[99]:.0f} ms, max {top:.0f} ms ({len(v)} arrivals)"


class AdmissionTrace:
    """Admissions by the shared quota, as Redis executed them: a ``MONITOR`` of the store's database, keeping
    the Lua script's ``ZADD`` (scored by Redis's own clock, µs since the epoch)."""

    def __init__(self, port: int, db: int = 1) -> None:
        import threading

        import redis

        self.times: list[float] = []
        self._closed = False
        self._client = redis.Redis(host="127.0.0.1", port=port, db=db, encoding_errors="replace")
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._listen, daemon=True, name="admission-trace")
        self._thread.start()

    def _listen(self) -> None:
        # The broker's commands share the stream: some carry bytes that are not UTF-8 (hence "replace"), and a
        # line redis-py cannot parse is skipped. Once closed (or the server gone) every read fails: stop then,
        # never spin.
        failures = 0
        while not self._closed:
            try:
                cmd = self._monitor.next_command()
            except Exception:
                failures += 1
                if self._closed or failures >= 20:
                    return
                time.sleep(0.01)
                continue
            failures = 0
            parts = cmd.get("command", "").split()
            if parts and parts[0].upper() == "ZADD" and len(parts) > 2 and parts[1].startswith("kakaopose:quota:"):
                with contextlib.suppress(ValueError):
                    self.times.append(int(parts[2].strip('"')) / 1_000_000)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._monitor.connection.disconnect()
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            raise RuntimeError("the admission trace's thread did not stop")


def _recorded(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/_emulator/requests", timeout=120) as resp:
        return json.load(resp)


class CpuMeter:
    """CPU seconds used by the cluster's processes (and their children), by component, while it runs."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: dict[int, tuple[str, float]] = {}  # pid -> (component, last cpu seconds)

    def sample(self) -> None:
        import psutil

        for comp in self.cluster.alive():
            try:
                procs = [psutil.Process(comp.pid)]
                procs += procs[0].children(recursive=True)
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    used = times.user + times.system + times.children_user + times.children_system
                except psutil.Error:
                    continue
                self.seen[proc.pid] = (comp.kind, max(used, self.seen.get(proc.pid, ("", 0.0))[1]))

    def by_component(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for kind, used in self.seen.values():
            totals[kind] += used
        return dict(totals)


def _expected_requests(s: Scenario) -> int:
    polls = int(s.job_processing_s / s.poll_interval) + 2
    return s.images + s.videos * (polls + 3)


def run(s: Scenario, root: Path, log: Any = print, keep: bool = False, trace_dir: Path | None = None) -> Report:
    """Bring a cluster up in ``root``, run the scenario once with both kills, measure, bring it down. The raw
    trace (arrivals, reserved slots) is saved as JSON in ``trace_dir`` (default: the temporary folder)."""
    report = Report(s)
    report.trace_file = str(
        Path(trace_dir or tempfile.gettempdir()) / f"kakaopose-cluster-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    dags = root / "bench-dags"
    out = root / "bench-out"
    if dags.exists():
        shutil.rmtree(dags)
    if out.exists():
        shutil.rmtree(out)
    dags.mkdir(parents=True)
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    config = {
        "videos": s.videos,
        "images": s.images,
        "batch": s.batch,
        "output": str(out),
        "poll_interval": s.poll_interval,
        "job_processing_s": s.job_processing_s,
    }
    (dags / "cluster_bench.json").write_text(json.dumps(config))
    cluster = Cluster(root, log=log)
    start = time.monotonic()
    cluster.up(
        workers=s.workers,
        triggerers=s.triggerers,
        dags=dags,
        emulator_args=[
            *("--latency", str(s.latency), "--quota-per-second", str(s.quota), "--job-waiting-s", "1"),
            *("--callback-drop-rate", str(s.callback_drop_rate), "--seed", "7"),
        ],
        conn_extra={"rate_limit_per_second": s.quota, "max_retries": 6, "read_timeout": 60},
        worker_concurrency=s.worker_concurrency,
        parallelism=s.workers * s.worker_concurrency,
        extra_env=(
            {"AIRFLOW__KAKAO_POSE__CALLBACK_POLL_INTERVAL": str(s.callback_poll_interval)}
            if s.callback_poll_interval
            else None
        ),
    )
    report.startup_s = time.monotonic() - start
    try:
        _run_dag(cluster, s, report, out, log)
    finally:
        if not keep:
            cluster.down(wipe=True)
    return report


def _wait_for_dag(cluster: Cluster, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _ = cluster.api("GET", f"/dags/{DAG_ID}")
        if status == 200:
            return
        time.sleep(1)
    raise RuntimeError(f"{DAG_ID} was not parsed within {timeout:.0f} s")


def _run_dag(cluster: Cluster, s: Scenario, report: Report, out: Path, log: Any) -> None:
    _wait_for_dag(cluster)
    cluster.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    status, run = cluster.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None})
    if status not in (200, 201):
        raise RuntimeError(f"could not trigger {DAG_ID}: {status} {run}")
    run_id = run["dag_run_id"]
    trace = AdmissionTrace(cluster.ports["redis"])
    meter = CpuMeter(cluster)
    meter.sample()
    started = time.monotonic()
    expected = _expected_requests(s)
    killed = False
    state = "queued"
    while time.monotonic() - started < s.timeout:
        time.sleep(2)
        meter.sample()
        _, body = cluster.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        state = body.get("state", state) if isinstance(body, dict) else state
        if state in ("success", "failed"):
            break
        if not killed:
            arrived = len(_recorded(cluster.emulator_url))
            if arrived >= s.kill_at * expected:
                report.kill_at_s = time.monotonic() - started
                for kind in ("worker", "triggerer"):
                    victim = _busiest(cluster, kind)
                    host_kill(victim.pid)
                    cluster._reap()
                    report.killed.append(f"{victim.name} (pid {victim.pid})")
                    log(f"killed {victim.name} at +{report.kill_at_s:.0f} s ({arrived} requests arrived)")
                killed = True
    report.dag_state = state
    _, body = cluster.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    report.wall_s = _run_seconds(body) or (time.monotonic() - started)
    meter.sample()
    report.cpu_by_component = meter.by_component()
    report.cpu_share = sum(report.cpu_by_component.values()) / (report.wall_s * CORES)
    trace.close()
    _account(cluster, s, report, out, run_id, trace.times)


def _busiest(cluster: Cluster, kind: str) -> Any:
    """The component of ``kind`` with the most processes under it right now (for a worker: the one running the
    most tasks); the first one on a tie."""
    import psutil

    def weight(comp: Any) -> int:
        try:
            return len(psutil.Process(comp.pid).children(recursive=True))
        except psutil.Error:
            return -1

    return max(cluster.alive(kind), key=weight)


def _run_seconds(body: Any) -> float | None:
    from datetime import datetime

    try:
        start = datetime.fromisoformat(body["start_date"])
        end = datetime.fromisoformat(body["end_date"])
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


def _delays(report: Report, requests: list[dict], admitted: list[float], quota: int) -> None:
    """How late requests arrived after their reserved slots, and what the busiest arrival windows held."""
    arrivals = sorted(r["time"] for r in requests)  # the emulator's monotonic clock
    offset = time.time() - time.monotonic()  # CLOCK_MONOTONIC is system-wide: one offset for every process
    wall = [t + offset for t in arrivals]
    admitted = sorted(admitted)
    if admitted:
        # A slot reserved by a thread that was killed before sending stays empty, so slots and arrivals cannot
        # be paired in order: each arrival is measured against the latest slot at or before it (a lower
        # bound of its lag, exact while requests keep their order).
        report.delays = [w - admitted[i - 1] for w in wall if (i := bisect.bisect_right(admitted, w)) > 0]
    by_time = sorted(requests, key=lambda r: r["time"])
    lo = 0
    worst: list[tuple[int, int, int]] = []
    for hi, r in enumerate(by_time):
        while r["time"] - by_time[lo]["time"] >= 1.0:
            lo += 1
        if hi - lo + 1 > quota:
            worst.append((hi - lo + 1, lo, hi))
    t0 = by_time[0]["time"] if by_time else 0.0
    shown: list[int] = []
    for n, lo, hi in sorted(worst, reverse=True):
        if any(abs(lo - o) < n for o in shown) or len(shown) >= 3:
            continue
        shown.append(lo)
        kinds = Counter(_kind(r) for r in by_time[lo : hi + 1])
        admits = [a for a in admitted if wall[lo] - 1.5 <= a <= wall[hi]]
        report.peak_windows.append(
            f"{n} arrivals in [+{by_time[lo]['time'] - t0:.2f} s, +{by_time[hi]['time'] - t0:.2f} s] "
            f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}); admitted in the 1.5 s before: "
            + " ".join(f"{a - wall[lo]:+.2f}" for a in admits)
        )


def _kind(r: dict) -> str:
    if r["method"] == "POST" and r["path"] == "/pose/job":
        return "submit"
    return "image" if r["method"] == "POST" else "status/result"


def _account(cluster: Cluster, s: Scenario, report: Report, out: Path, run_id: str, admitted: list[float]) -> None:
    import pyarrow.parquet as pq

    requests = _recorded(cluster.emulator_url)
    with urllib.request.urlopen(f"{cluster.emulator_url}/_emulator/callbacks", timeout=60) as resp:
        report.callbacks = dict(Counter(str(outcome) for _, outcome in json.load(resp)))
    trace = Path(report.trace_file)
    offset = time.time() - time.monotonic()
    trace.write_text(json.dumps({"monotonic_to_epoch": offset, "requests": requests, "admitted": admitted}))
    _delays(report, requests, admitted, s.quota)
    report.requests = len(requests)
    kinds: Counter = Counter()
    submissions: Counter = Counter()
    for r in requests:
        kinds[_kind(r)] += 1
        if _kind(r) == "submit":
            submissions[r["fields"].get("video_url")] += 1
    report.by_kind = dict(kinds)
    report.peak_per_second = _sliding_max([r["time"] for r in requests])
    report.refusals = sum(1 for r in requests if r.get("over_quota"))
    run_dir = next(out.iterdir(), None) if out.exists() else None
    videos = {p.stem for p in (run_dir / "videos").glob("v*.parquet")} if run_dir else set()
    report.videos_ok = len(videos)
    rows = cluster.query(
        "SELECT task_id, map_index, state, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s",
        (DAG_ID, run_id),
    )
    report.task_tries = dict(Counter(f"{task}:try{tries}" for task, _, _, tries in rows))
    report.videos_failed = [f"videos[{m}]" for task, m, state, _ in rows if task == "videos" and state != "success"]
    accounted: set[str] = set()
    errors = 0
    for part in sorted((run_dir / "images").glob("b*.parquet")) if run_dir else []:
        meta = pq.read_schema(part).metadata or {}
        accounted.update(json.loads(meta.get(b"kakaopose:sources", b"[]")))
        errs = pq.read_table(str(part.parent / "_kakaopose" / part.name.replace(".parquet", ".errors.parquet")))
        errors += errs.num_rows
        accounted.update(errs["source"].to_pylist())
    report.images_ok = len(accounted) - errors
    report.image_errors = errors
    report.images_missing = s.images - len(accounted)
    report.duplicate_submissions = {v: n for v, n in submissions.items() if n > 1}
    records = cluster.query(
        "SELECT map_index, value FROM task_state_store WHERE dag_id = %s AND run_id = %s AND key = 'kakao_pose_job'",
        (DAG_ID, run_id),
    )
    by_video = {}
    for _, value in records:
        record = value if isinstance(value, dict) else json.loads(value)
        job = record.get("job") or {}
        by_video[job.get("video")] = record
    for video, n in report.duplicate_submissions.items():
        record = by_video.get(video) or {}
        unknown = int(record.get("unknown_submissions") or 0)
        if unknown >= n - 1:
            report.duplicates_explained[video] = (
                f"{n} submissions, {unknown} of unknown outcome in the job record: {record.get('last_unknown')}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Scenario()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--root", default=str(ROOT / ".cluster-bench"), help="the cluster's folder (wiped after)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    args = parser.parse_args()
    scenario = Scenario(**{k: getattr(args, k) for k in vars(defaults)})
    report = run(scenario, Path(args.root), keep=args.keep)
    print()
    print(report.table())
    print("\nALL GOALS MET" if all(ok for _, ok, _ in report.goals()) else "\nSOME GOALS NOT MET")


if __name__ == "__main__":
    main()
