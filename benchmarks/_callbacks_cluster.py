"""``benchmarks/callbacks.py --cluster``: deferrable video tasks on ``make cluster`` woken by callbacks, with a
share of callbacks dropped, a triggerer SIGKILLed and Redis restarted while every task waits."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "scripts"))

DAG_ID = "kakao_pose_callbacks_bench"
#: How long after a triggerer's SIGKILL its triggers may wait for another triggerer to take them: make cluster's
#: triggerer_health_check_threshold (20 s) plus a heartbeat (2 s) and the scheduler's next assignment.
FAILOVER_S = 25.0


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
    cluster.bench_durations = durations
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
        sent = json.load(urllib.request.urlopen(f"{cluster.emulator_url}/_emulator/callbacks", timeout=60))
        return _measure(recorded(str(cluster.emulator_url)), events, durations, out, sent)
    finally:
        cluster.down(wipe=True)


def _states(cluster: Any, run_id: str) -> tuple[dict[int, str], str]:
    """Each task instance's state by map index, and the run's state."""
    _, body = cluster.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=1000")
    states = {ti.get("map_index"): ti.get("state") for ti in (body or {}).get("task_instances", [])}
    _, run = cluster.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    return states, (run or {}).get("state", "?")


def _run(cluster: Any, host_kill: Any, n: int) -> dict:
    deadline = time.monotonic() + 300
    while cluster.api("GET", f"/dags/{DAG_ID}")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{DAG_ID} was not parsed")
        time.sleep(1)
    cluster.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    _, run = cluster.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None})
    run_id, started, events = run["dag_run_id"], time.monotonic(), {}
    states: dict[int, str] = {}
    while time.monotonic() - started < 600:  # every task has submitted its job: each one waits or is done
        states = _states(cluster, run_id)[0]
        if len(states) == n and all(st in ("deferred", "success", "failed") for st in states.values()):
            break
        time.sleep(1)
    waiting = [i for i, st in states.items() if st == "deferred"]
    events[f"every job submitted ({len(waiting)} tasks waiting)"] = time.monotonic() - started
    events["forged"] = _forge(cluster, run_id, waiting)
    events["forged callbacks sent"] = time.monotonic() - started
    victim = max(cluster.alive("triggerer"), key=lambda c: c.index)
    host_kill(victim.pid)
    _mark(cluster, "killed")
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
        state = _states(cluster, run_id)[1]
    events["run " + state] = time.monotonic() - started
    events["replayed"] = _replay(cluster)
    time.sleep(10)  # anything a replay would wrongly cause has time to show in the emulator's record
    return events


def _job_id(cluster: Any, run_id: str, index: int) -> str | None:
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/videos/xcomEntries/job_id?map_index={index}"
    status, body = cluster.api("GET", path)
    value = (body or {}).get("value") if status == 200 else None
    return value.strip('"') if isinstance(value, str) else None


def _mark(cluster: Any, name: str) -> None:
    """A request the emulator records (unauthenticated: refused, costs nothing): the time on its clock."""
    with contextlib.suppress(OSError):
        urllib.request.urlopen(f"{cluster.emulator_url}/pose/job/mark-{name}", timeout=10)


def _callback_url_of(requests: list[dict], job_index: int) -> str:
    for r in requests:
        if r["method"] == "POST" and r["path"] == "/pose/job" and f"/v{job_index:03d}.mp4" in r["fields"]["video_url"]:
            return r["fields"]["callback_url"]
    raise RuntimeError(f"video {job_index} was not submitted with a callback_url")


def _send(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _forge(cluster: Any, run_id: str, waiting: list[int]) -> dict:
    """While tasks wait: a tampered token, and a genuine token naming another waiting job, at the two waiting
    videos that end last. Each must be refused (4xx) and cause no API request for either job before it ends."""
    late = sorted(waiting, key=lambda i: -cluster.bench_durations[i])[:2]
    ids = [_job_id(cluster, run_id, i) for i in late]
    urls = [_callback_url_of(recorded(str(cluster.emulator_url)), i) for i in late]
    sep = "&" if "?" in urls[0] else "?"
    head, sig = urls[0].rsplit(".", 1)
    tampered = f"{head}.{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}{sep}job_id={ids[0]}"
    other_job = f"{urls[0]}{sep}job_id={ids[1]}"
    _mark(cluster, "forged")
    return {"jobs": ids, "tampered": _send(tampered), "other job": _send(other_job)}


def _replay(cluster: Any) -> dict:
    """After the run: the last delivered callback sent again. It must change nothing and cause no request."""
    sent = json.load(urllib.request.urlopen(f"{cluster.emulator_url}/_emulator/callbacks", timeout=60))
    url = [u for u, status in sent if status == 200][-1]  # the last: its binding outlived the Redis restart
    _mark(cluster, "replayed")
    return {"job": url.rsplit("job_id=", 1)[1], "status": _send(url)}


def _measure(requests: list[dict], events: dict, durations: list[float], out: Path, sent: list) -> dict:
    """GETs per job (status checks and the result download), and detection latency — from the job's end to the
    first GET of it after its end (both on the emulator's clock) — for delivered and dropped callbacks apart;
    the API requests for the forged and replayed jobs after the forgery (before their end) and the replay."""
    gets: dict[str, list[float]] = {}
    marks = {}
    for r in requests:
        if r["method"] == "GET" and r["path"].startswith("/pose/job/mark-"):
            marks[r["path"].rsplit("mark-", 1)[1]] = r["time"]
        elif r["method"] == "GET" and r["path"].startswith("/pose/job/"):
            gets.setdefault(r["path"].rsplit("/", 1)[1], []).append(r["time"])
    posts = [r for r in requests if r["method"] == "POST" and r["path"] == "/pose/job"]
    jobs = _jobs(posts, out)
    outcome = {u.rsplit("job_id=", 1)[1]: status for u, status in sent}
    failover = (marks["killed"], marks["killed"] + FAILOVER_S)
    latency: dict[str, list[float]] = {"delivered": [], "failover": [], "lost": []}
    for job_id, ends_at in jobs.items():
        after = [t for t in sorted(gets.get(job_id, [])) if t >= ends_at]
        if not after:
            continue
        if outcome.get(job_id) != 200:  # dropped by the service, or refused while Redis was down (503)
            kind = "lost"
        else:
            kind = "failover" if failover[0] <= ends_at <= failover[1] else "delivered"
        latency[kind].append(after[0] - ends_at)
    forged = events.pop("forged")
    replay = events.pop("replayed")
    after_forgery = sum(
        1 for j in forged["jobs"] for t in gets.get(j, []) if marks["forged"] <= t < jobs.get(j, float("inf"))
    )
    after_replay = sum(1 for t in gets.get(replay["job"], []) if t >= marks["replayed"])
    per_job = [len(gets.get(j, [])) for j in jobs]
    return {
        "jobs": len(jobs),
        "submissions": len(posts),
        "gets_mean": statistics.mean(per_job),
        "gets_max": max(per_job),
        "latency": {k: sorted(v) for k, v in latency.items()},
        "forged": {
            **forged,
            "requests after": after_forgery,
            "still waiting": all(jobs.get(j, 0) > marks["forged"] for j in forged["jobs"]),
        },
        "replayed": {**replay, "requests after": after_replay},
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
