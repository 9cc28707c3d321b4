"""``benchmarks/callbacks.py --cluster``: deferrable video tasks on ``make cluster`` woken by callbacks, with a
share of callbacks dropped, a triggerer SIGKILLed and Redis restarted while every task waits."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "scripts"))

DAG_ID = "kakao_pose_callbacks_bench"


def recorded(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/_emulator/requests", timeout=60) as resp:
        return json.load(resp)


def run_cluster(args: Any, root: Path) -> dict:
    """Up a cluster in ``root``, run the DAG once with the disruptions, measure from the emulator's record, down."""
    from kakaopose_cluster import Cluster, host_kill

    rng = random.Random(args.seed)
    durations = [round(rng.uniform(*args.cluster_ends), 1) for _ in range(args.cluster_videos)]
    dags, out = root / "dags", root / "out"
    for folder in (dags, out):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "dags" / f"{DAG_ID}.py", dags)
    config = {"videos": len(durations), "output": str(out), "durations": durations, "poll_interval": 10}
    (dags / "callbacks_bench.json").write_text(json.dumps(config))
    cluster = Cluster(root / "cluster", log=print)
    cluster.up(
        workers=1,
        triggerers=2,
        dags=dags,
        emulator_args=["--callback-drop-rate", str(args.drop_rate), "--seed", str(args.seed)],
        conn_extra={"rate_limit_per_second": args.rate, "max_retries": 6},
        worker_concurrency=4,
        parallelism=8,
        extra_env={"AIRFLOW__KAKAO_POSE__CALLBACK_POLL_INTERVAL": str(args.cluster_fallback)},
        install=False,
    )
    try:
        events = _run(cluster, host_kill, len(durations))
        return _measure(recorded(str(cluster.emulator_url)), events, durations, out)
    finally:
        cluster.down(wipe=True)


def _deferred(cluster: Any, run_id: str) -> tuple[int, str]:
    _, body = cluster.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=1000")
    states = [ti.get("state") for ti in (body or {}).get("task_instances", [])]
    _, run = cluster.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    return states.count("deferred"), (run or {}).get("state", "?")


def _run(cluster: Any, host_kill: Any, n: int) -> dict:
    deadline = time.monotonic() + 300
    while cluster.api("GET", f"/dags/{DAG_ID}")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{DAG_ID} was not parsed")
        time.sleep(1)
    cluster.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    _, run = cluster.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None})
    run_id, started, events = run["dag_run_id"], time.monotonic(), {}
    while _deferred(cluster, run_id)[0] < n and time.monotonic() - started < 300:
        time.sleep(1)
    events["all deferred"] = time.monotonic() - started
    victim = max(cluster.alive("triggerer"), key=lambda c: c.index)
    host_kill(victim.pid)
    cluster._reap()
    events[f"SIGKILL {victim.name}"] = time.monotonic() - started
    time.sleep(3)
    redis = next(c for c in cluster.alive("redis"))
    host_kill(redis.pid)
    cluster._reap()
    cluster.redis.start()  # a second "redis" component (same port); the dead one stays in the state
    for _ in range(300):
        if cluster.redis.ping():
            break
        time.sleep(0.1)
    events["Redis restarted (no persistence)"] = time.monotonic() - started
    state = "running"
    while state not in ("success", "failed") and time.monotonic() - started < 1200:
        time.sleep(3)
        state = _deferred(cluster, run_id)[1]
    events["run " + state] = time.monotonic() - started
    return events


def _measure(requests: list[dict], events: dict, durations: list[float], out: Path) -> dict:
    """GETs per job (status checks and the result download) and detection latency: from the job's end to the
    first GET of it after its end (both on the emulator's clock)."""
    posts = [r for r in requests if r["method"] == "POST" and r["path"] == "/pose/job"]
    gets: dict[str, list[float]] = {}
    for r in requests:
        if r["method"] == "GET" and r["path"].startswith("/pose/job/"):
            gets.setdefault(r["path"].rsplit("/", 1)[1], []).append(r["time"])
    jobs = _jobs(posts, out)
    latencies, per_job = [], []
    for job_id, ends_at in jobs.items():
        times = sorted(gets.get(job_id, []))
        per_job.append(len(times))
        after = [t for t in times if t >= ends_at]
        if after:
            latencies.append(after[0] - ends_at)
    latencies.sort()
    return {
        "jobs": len(jobs),
        "submissions": len(posts),
        "gets_mean": statistics.mean(per_job),
        "gets_max": max(per_job),
        "p50": latencies[len(latencies) // 2],
        "p95": latencies[max(int(len(latencies) * 0.95) - 1, 0)],
        "max": latencies[-1],
        "events": events,
        "durations": durations,
    }


def _jobs(posts: list[dict], out: Path) -> dict[str, float]:
    """Each job's id and end (emulator clock): its video's POST time + ``processing_s``; the id comes from the
    job's table (its ``job_id`` and ``source`` columns), as the emulator does not record its answers."""
    from urllib.parse import parse_qs, urlsplit

    import pyarrow.parquet as pq

    ends = {}
    for post in posts:  # a retried submission would come later: the first one's end is kept for that video
        video = post["fields"].get("video_url", "")
        processing = float(parse_qs(urlsplit(video).query)["processing_s"][0])
        ends.setdefault(video, post["time"] + processing)
    jobs = {}
    for path in out.rglob("v*.parquet"):
        table = pq.read_table(path, columns=["job_id", "source"]).slice(0, 1).to_pylist()
        if table:
            jobs[table[0]["job_id"]] = ends[table[0]["source"]]
    return jobs
