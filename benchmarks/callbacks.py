"""Polling vs callbacks for many deferred video waits in one triggerer event loop (issue 23).

N jobs (default 1,000) are submitted to the emulator (its own process) ending at spread times (each job's
``processing_s`` drawn uniformly from ``--ends``, 20-200 s: wider than N / rate, so that even one GET per job
fits the quota); each job's ``KakaoPoseJobTrigger`` starts as soon as it is submitted (as a deferred task's),
all N on one event loop, as a triggerer runs them, with the app key's quota shared through a real
redis-server (``rate_limit_per_second`` = ``--rate``, ``[kakao_pose] rate_limit_store``). Three phases, each
in a fresh Python process:

* ``polling``    - the wait as before: ``poll_interval`` = ``--poll-interval`` (default 10 s, the operator's);
* ``callbacks``  - jobs submitted with the provider's signed callback URL (as the operator does); the
  emulator calls the receiver (the plugin's FastAPI app under uvicorn, its own process) back, which wakes the
  triggers through Redis; fallback poll ``--fallback`` (default 300 s, the shipped default);
* ``callbacks, 10 % dropped`` - the emulator drops a tenth of the callbacks; the fallback poll is shortened to
  ``--dropped-fallback`` (default 120 s) for this run so that the run ends in minutes (what a lost callback
  costs is this interval: 300 s by default). A job that lasts longer than the interval also gets a fallback GET
  every interval while its callback is still to come.

Per phase: status GETs per job (the emulator's record of ``GET /pose/job/<id>``, submission excluded),
detection latency (from the job's end, known from its submission time and ``processing_s``, to the trigger's
event), the share of the quota the waits used (GETs / (rate x the wait's duration)), and the RSS growth per
waiting trigger (from before the first submission to 1 s after the last, when all N wait).

    .venv/bin/python benchmarks/callbacks.py                      # 1,000 jobs at 10/s (~12 min)
    .venv/bin/python benchmarks/callbacks.py --jobs 100 --ends 5 30 --dropped-fallback 10   # quick (~2 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _emulator import recorded, start_emulator

HERE = Path(__file__).resolve().parent
MEMORY_GOAL_KB = 50.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def wait_http(url: str, timeout: float = 30) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


# ------------------------------------------------------------------------------------------------ receiver


def serve_receiver(port: int) -> None:
    """The receiver app, mounted as the api-server mounts it, under uvicorn (a process of its own)."""
    import uvicorn
    from fastapi import FastAPI

    from airflow_provider_kakaopose.callbacks import MOUNT_PATH
    from airflow_provider_kakaopose.plugins.receiver import create_app

    root = FastAPI()
    root.mount(MOUNT_PATH, create_app())
    uvicorn.run(root, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------------------------ one phase


def submitter(spec: dict):
    """A function submitting job ``i`` (no rate limit: submission is not what is measured) and, for callbacks,
    binding its nonce as the operator does; it returns ``{"job_id", "ends_at"}``."""
    from airflow_provider_kakaopose import callbacks
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

    settings = callbacks.configured_callbacks() if spec["callbacks"] else None
    store = os.environ["AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE"]
    hook = KakaoPoseHook("kakao_pose_submit")
    rng = random.Random(spec["seed"])
    durations = [rng.uniform(*spec["ends"]) for _ in range(spec["jobs"])]

    def submit(i: int) -> dict:
        video = f"https://example.com/v{i}.mp4?frames=3&waiting_s=0&processing_s={durations[i]:.3f}"
        url = nonce = None
        if settings is not None:
            token, nonce = callbacks.make_token(settings.keys, time.time() + 3600)
            url = settings.url(token)
        sent = time.time()
        job_id = hook.submit_video_job(video_url=video, callback_url=url)
        if nonce is not None:
            callbacks.bind_nonce(store, nonce, job_id, time.time() + 3600)
        return {"job_id": job_id, "ends_at": sent + durations[i], "nonce": nonce}

    return submit


async def run_phase(spec: dict) -> dict:
    """Submit the jobs from a thread pool and start each one's trigger as soon as it is submitted (as a deferred
    task does), all on this loop; measure until every trigger fired."""
    from airflow_provider_kakaopose.hooks._client import PROBE_JOB_ID
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseAsyncHook
    from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger

    async with KakaoPoseAsyncHook() as hook:  # warm-up: imports, connection, limiter, first request
        await hook.get_job_status(PROBE_JOB_ID)
    submit, loop, pool = submitter(spec), asyncio.get_running_loop(), ThreadPoolExecutor(8)
    jobs: list[dict] = []
    detected: dict[str, float] = {}
    submitted = asyncio.Event()

    async def one(i: int) -> str:
        job = await loop.run_in_executor(pool, submit, i)
        jobs.append(job)
        if len(jobs) == spec["jobs"]:
            submitted.set()
        trigger = KakaoPoseJobTrigger(
            job["job_id"],
            poll_interval=spec["poll_interval"],
            end_time=time.time() + 3600,
            callback=spec["callbacks"],
            callback_poll_interval=spec["fallback"],
            callback_nonce=job["nonce"],
        )
        events = [event.payload async for event in trigger.run()]
        detected[job["job_id"]] = time.time()
        return str(events[-1]["status"])

    rss0, start = rss_bytes(), time.time()
    tasks = [asyncio.create_task(one(i)) for i in range(spec["jobs"])]
    await submitted.wait()
    submit_s = time.time() - start
    await asyncio.sleep(1)
    rss1, waiting = rss_bytes(), sum(not t.done() for t in tasks)
    statuses = await asyncio.gather(*tasks)
    pool.shutdown()
    return {
        "start": start,
        "end": time.time(),
        "submit_s": submit_s,
        "rss": rss1 - rss0,
        "waiting_at_rss": waiting,
        "statuses": {s: statuses.count(s) for s in set(statuses)},
        "detected": detected,
        "jobs": jobs,
    }


def child(spec: dict) -> None:
    """One phase in its own process; writes its measurements as JSON."""
    Path(spec["out"]).write_text(json.dumps(asyncio.run(run_phase(spec))))


# ------------------------------------------------------------------------------------------------ driver


def start_redis(folder: str) -> Any:
    """A private redis-server (no persistence) on a free loopback port: the deployment's store."""
    import shutil

    sys.path.append(str(HERE.parent / "scripts"))
    from kakaopose_cluster.redis_server import LocalRedis

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    return LocalRedis(binary, free_port(), folder).start()


def phase(name: str, args: argparse.Namespace, env: dict, emulator_options: list[str], **spec: object) -> dict:
    """Run one phase against a fresh emulator (and receiver, for callbacks); return its row."""
    key = secrets.token_hex(12)
    emulator, base = start_emulator(key, "--job-waiting-s", "0", *emulator_options)
    conn = {"conn_type": "kakao_pose", "host": base, "password": key}
    limited = {**conn, "extra": {"rate_limit_per_second": args.rate, "max_retries": 8}}
    env = {
        **env,
        "AIRFLOW_CONN_KAKAO_POSE_DEFAULT": json.dumps(limited),
        "AIRFLOW_CONN_KAKAO_POSE_SUBMIT": json.dumps(conn),
    }
    out = Path(env["BENCH_TMP"]) / f"{name.replace(' ', '_').replace(',', '')}.json"
    full = {"jobs": args.jobs, "ends": args.ends, "seed": args.seed, "out": str(out), **spec}
    try:
        subprocess.run([sys.executable, __file__, "--child", json.dumps(full)], env=env, check=True)
        measured = json.loads(out.read_text())
        gets = [r for r in recorded(base) if r["method"] == "GET" and r["path"].startswith("/pose/job/")]
    finally:
        emulator.stop()
    return summarize(name, args, measured, gets, spec)


def summarize(name: str, args: argparse.Namespace, m: dict, gets: list[dict], spec: dict) -> dict:
    per_job = {job["job_id"]: 0 for job in m["jobs"]}
    for r in gets:
        job_id = r["path"].rsplit("/", 1)[1]
        if job_id in per_job:
            per_job[job_id] += 1
    latencies = sorted(m["detected"][j["job_id"]] - j["ends_at"] for j in m["jobs"])
    duration = m["end"] - m["start"]
    counts = list(per_job.values())
    return {
        "phase": name,
        "fallback": spec.get("fallback") if spec.get("callbacks") else None,
        "gets_mean": statistics.mean(counts),
        "gets_max": max(counts),
        "p50": latencies[len(latencies) // 2],
        "p95": latencies[int(len(latencies) * 0.95) - 1],
        "max": latencies[-1],
        "quota_share": sum(counts) / (args.rate * duration),
        "duration": duration,
        "kb_per_trigger": m["rss"] / 1024 / max(m["waiting_at_rss"], 1),
        "submit_s": m["submit_s"],
        "statuses": m["statuses"],
    }


def report(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\n{args.jobs} jobs in one event loop, ends spread {args.ends[0]:g}-{args.ends[1]:g} s after submission, "
        f"shared quota {args.rate:g}/s (real redis-server), emulator and receiver in their own processes; polling "
        f"every {args.poll_interval:g} s; submissions took " + ", ".join(f"{r['submit_s']:.0f} s" for r in rows)
    )
    head = (
        f"{'phase':<46}{'GETs/job':>10}{'max':>5}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'quota used':>12}"
        f"{'wait s':>8}{'KB/trigger':>12}  outcome"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['phase']:<46}{r['gets_mean']:>10.2f}{r['gets_max']:>5}{r['p50']:>8.2f}{r['p95']:>8.2f}"
            f"{r['max']:>8.2f}{r['quota_share']:>11.0%} {r['duration']:>8.0f}{r['kb_per_trigger']:>12.1f}  "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(r['statuses'].items()))}"
        )
    print(
        "GETs/job: status GETs per job during the wait (mean; max); p50/p95/max: detection latency from the "
        "job's end to the trigger's event;\nquota used: the waits' GETs / (quota x the wait's duration); "
        f"KB/trigger: RSS growth with every trigger waiting / triggers (goal <= {MEMORY_GOAL_KB:g} KB)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--ends", type=float, nargs=2, default=(20.0, 200.0), help="job durations, s (uniform)")
    parser.add_argument("--rate", type=float, default=10.0, help="the app key's quota, requests/s")
    parser.add_argument("--poll-interval", type=float, default=10.0, help="the polling phase's poll_interval")
    parser.add_argument("--fallback", type=float, default=300.0, help="callback_poll_interval of the callbacks phase")
    parser.add_argument("--dropped-fallback", type=float, default=120.0, help="callback_poll_interval, dropped phase")
    parser.add_argument("--drop-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--only", choices=("polling", "callbacks", "dropped"), action="append")
    parser.add_argument("--cluster", action="store_true", help="instead: deferrable video tasks on make cluster")
    parser.add_argument("--cluster-videos", type=int, default=100)
    parser.add_argument("--cluster-ends", type=float, nargs=2, default=(20.0, 60.0))
    parser.add_argument("--cluster-fallback", type=float, default=120.0, help="callback_poll_interval there")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.receiver:
        serve_receiver(args.receiver)
        return
    if args.cluster:
        cluster_part(args)
        return
    run(args)


def cluster_part(args: argparse.Namespace) -> None:
    """The ``--cluster`` part: prints its measurements against the goals of docs/callbacks.md."""
    from _callbacks_cluster import FAILOVER_S, run_cluster

    with tempfile.TemporaryDirectory(prefix="kakaopose-callbacks-cluster-") as tmp:
        m = run_cluster(args, Path(tmp))
    print(
        f"\nmake cluster (1 worker, 2 triggerers, CeleryExecutor, PostgreSQL, Redis): {m['jobs']} deferrable video "
        f"tasks, jobs ending {args.cluster_ends[0]:g}-{args.cluster_ends[1]:g} s after submission, quota "
        f"{args.rate:g}/s, {args.drop_rate:.0%} of callbacks dropped, callback_poll_interval "
        f"{args.cluster_fallback:g} s{' (shortened)' if args.cluster_fallback < 300 else ''}"
    )
    for what, when in m["events"].items():
        print(f"  +{when:6.1f} s  {what}")
    print(f"  submissions {m['submissions']} for {m['jobs']} jobs")
    delivered, failover, lost = (m["latency"][k] for k in ("delivered", "failover", "lost"))
    both = delivered + failover
    bound = args.cluster_fallback + 30
    goals = [
        (f"every task wrote its table ({m['jobs']} of {args.cluster_videos})", m["jobs"] == args.cluster_videos),
        (f"status/result GETs per job: mean {m['gets_mean']:.2f}, max {m['gets_max']} (<= 2.2)", m["gets_mean"] <= 2.2),
        (
            f"delivered callbacks, all {len(both)} jobs: seen p50 {_pct(both, 50):.2f} s, p95 {_pct(both, 95):.2f} s, "
            f"max {max(both, default=0):.2f} s after the job ended (p95 <= 5 s)",
            _pct(both, 95) <= 5,
        ),
        (
            f"  of which {len(failover)} ended while the killed triggerer's triggers waited for another one "
            f"(<= {FAILOVER_S:g} s after the kill): max {max(failover, default=0):.1f} s; the other {len(delivered)}: "
            f"p95 {_pct(delivered, 95):.2f} s, max {max(delivered, default=0):.2f} s",
            _pct(delivered, 95) <= 5,
        ),
        (
            f"lost callbacks ({len(lost)} jobs: dropped by the service, or refused while Redis was down): seen at "
            f"most {max(lost, default=0):.1f} s after the job ended (<= callback_poll_interval + 30 s = {bound:g} s)",
            max(lost, default=0) <= bound,
        ),
        (
            f"forged: tampered token -> {m['forged']['tampered']}, another job's genuine token -> "
            f"{m['forged']['other job']} at two jobs still waiting ({m['forged']['still waiting']}); API requests "
            f"for them before they ended: {m['forged']['requests after']} (4xx, 0)",
            m["forged"]["tampered"] >= 400
            and m["forged"]["other job"] >= 400
            and m["forged"]["still waiting"]
            and not m["forged"]["requests after"],
        ),
        (
            f"the last delivered callback replayed after the run -> {m['replayed']['status']}; API requests after it: "
            f"{m['replayed']['requests after']} (0)",
            m["replayed"]["requests after"] == 0,
        ),
    ]
    for text, ok in goals:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    print("ALL GOALS MET" if all(ok for _, ok in goals) else "SOME GOALS MISSED")


def _pct(values: list[float], pct: float) -> float:
    """The ``pct``-th percentile (nearest rank) of ``values``; 0 for none."""
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * pct / 100 + 0.5) - 1, 0)] if ordered else 0.0


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kakaopose-callbacks-") as tmp:
        redis_server = start_redis(tmp)
        store = redis_server.url
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__KAKAO_POSE__")},
            "BENCH_TMP": tmp,
            "AIRFLOW_HOME": tmp,
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE": store,
            "AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL": base,
            "AIRFLOW__KAKAO_POSE__CALLBACK_SECRET": "bench:" + secrets.token_urlsafe(32),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
        }
        receiver = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)], env=env)
        rows = []
        try:
            wait_http(f"{base}/kakao-pose-callbacks/job-ended")
            only = args.only or ["polling", "callbacks", "dropped"]
            common = {"poll_interval": args.poll_interval}
            if "polling" in only:
                rows.append(phase("polling", args, env, [], callbacks=False, fallback=None, **common))
            if "callbacks" in only:
                rows.append(phase("callbacks", args, env, [], callbacks=True, fallback=args.fallback, **common))
            if "dropped" in only:
                name = f"callbacks, {args.drop_rate:.0%} dropped (fallback {args.dropped_fallback:g} s)"
                options = ["--callback-drop-rate", str(args.drop_rate), "--seed", str(args.seed)]
                rows.append(phase(name, args, env, options, callbacks=True, fallback=args.dropped_fallback, **common))
        finally:
            receiver.terminate()
            receiver.wait(10)
            redis_server.stop()
        report(rows, args)


if __name__ == "__main__":
    main()
