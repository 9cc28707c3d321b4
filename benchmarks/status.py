"""Status checks of a finished job with a large result, and the rate limiter under a lagging event loop.

A finished job's ``GET /pose/job/{id}`` body is the whole result; waiting for a job needs only its status.
Against the emulator in its own process, with a finished 1-hour, 3-person job (108,000 frames, ~190 MB):

* ``trigger``: one ``KakaoPoseJobTrigger`` poll of that job while a 10 ms heartbeat runs on the same event
  loop; reports the worst heartbeat gap (the loop stall) and the peak RSS during the poll above the RSS
  before it. Baseline in the
  same run: the same poll with ``KakaoPoseAsyncHook.get_job`` (parse the whole body, what the trigger did).
* ``sync``: one status check with ``KakaoPoseHook.get_job_status`` (what the sensor's pokes and the operator's
  waits use) against ``get_job``, each in a fresh process: wall time and peak RSS during the call above the
  RSS before it (the kernel's peak mark is reset first: the imports' own peak is often higher).
* ``limiter``: 20 / 200 callers of ``RateLimiter.acquire_async`` at 100/s on a loop that is busy ~15 ms per
  turn: time until the last one got through against the ideal n / rate, and the busiest 1-second window.

    .venv/bin/python benchmarks/status.py                  # the 1-hour result (~2 min, most of it building it)
    .venv/bin/python benchmarks/status.py --frames 20000   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

from _emulator import start_emulator
from _memory import peak_rss, reset_peak_rss, rss_now

KEY = "benchmark-status-key"


def _conn_env(base: str) -> None:
    os.environ["AIRFLOW_CONN_KAKAO_POSE_BENCH"] = json.dumps(
        {"conn_type": "kakao_pose", "host": base, "password": KEY, "extra": {"read_timeout": 120}}
    )


def child(mode: str, base: str, job_id: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="kakaopose-bench-"))
    _conn_env(base)
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseAsyncHook, KakaoPoseHook
    from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger

    if mode in ("sync-status", "sync-full"):
        hook = KakaoPoseHook("kakao_pose_bench")
        hook.get_job_status("warm-up")
        base_rss = rss_now()
        reset_peak_rss()  # the peak so far is the imports' (often above the RSS after them)
        start = time.perf_counter()
        body = hook.get_job_status(job_id) if mode == "sync-status" else hook.get_job(job_id)
        elapsed = time.perf_counter() - start
        assert body["status"] == "success"
        del body
        print(json.dumps({"seconds": elapsed, "working_mb": (peak_rss() - base_rss) / 1e6}))
        return

    async def poll() -> None:
        async with KakaoPoseAsyncHook("kakao_pose_bench") as hook:
            if mode == "trigger-status":
                [event] = [e.payload async for e in KakaoPoseJobTrigger(job_id, "kakao_pose_bench").run()]
                assert event["status"] == "success", event
            else:
                assert (await hook.get_job(job_id))["status"] == "success"

    async def main() -> dict:
        async with KakaoPoseAsyncHook("kakao_pose_bench") as hook:  # imports, connection, first request
            await hook.get_job_status("warm-up")
        gaps: list[float] = []
        stop = asyncio.Event()

        async def heartbeat() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        beat = asyncio.ensure_future(heartbeat())
        await asyncio.sleep(0.1)
        base_rss = rss_now()
        reset_peak_rss()
        start = time.perf_counter()
        await poll()
        elapsed = time.perf_counter() - start
        peak = peak_rss() - base_rss
        stop.set()
        await beat
        return {"seconds": elapsed, "stall_s": max(gaps), "working_mb": peak / 1e6}

    print(json.dumps(asyncio.run(main())))


def run_child(mode: str, base: str, job_id: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, base, job_id], capture_output=True, text=True, check=False
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"{mode} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1])


async def _limiter(n: int, rate: float, lag: float) -> tuple[float, int]:
    from airflow_provider_kakaopose.hooks._client import RateLimiter

    limiter = RateLimiter(rate)
    stop = asyncio.Event()

    async def busy() -> None:
        while not stop.is_set():
            end = time.perf_counter() + lag
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    spinner = asyncio.ensure_future(busy())
    start = time.monotonic()
    await asyncio.gather(*(limiter.acquire_async() for _ in range(n)))
    elapsed = time.monotonic() - start
    stop.set()
    await spinner
    sends = sorted(limiter.sent_times())
    busiest, lo = 0, 0
    for hi, t in enumerate(sends):
        while t - sends[lo] >= 1.0:
            lo += 1
        busiest = max(busiest, hi - lo + 1)
    return elapsed, busiest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=108_000, help="frames of the finished job (30 fps)")
    parser.add_argument("--persons", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    import requests

    server, base = start_emulator(KEY)
    try:
        url = f"https://example.com/long.mp4?frames={args.frames}&persons={args.persons}&waiting_s=0&processing_s=0"
        headers = {"Authorization": f"KakaoAK {KEY}"}
        job_id = requests.post(f"{base}/pose/job", data={"video_url": url}, headers=headers, timeout=30).json()[
            "job_id"
        ]
        start = time.perf_counter()
        size = len(requests.get(f"{base}/pose/job/{job_id}", headers=headers, timeout=600).content)
        print(
            f"job result: {args.frames:,} frames x {args.persons} persons, {size / 1e6:.0f} MB of JSON "
            f"(built by the emulator in {time.perf_counter() - start:.1f} s)\n"
        )
        rows = {mode: run_child(mode, base, job_id) for mode in ("trigger-full", "trigger-status")}
        rows.update({mode: run_child(mode, base, job_id) for mode in ("sync-full", "sync-status")})
    finally:
        server.stop()

    full, status = rows["trigger-full"], rows["trigger-status"]
    print("trigger poll of the finished job, 10 ms heartbeat on the same loop")
    print(f"  {'':28}{'wall':>8}{'loop stall':>12}{'working memory':>16}")
    print(f"  {'get_job (baseline)':28}{full['seconds']:7.2f}s{full['stall_s']:11.3f}s{full['working_mb']:13.0f} MB")
    print(
        f"  {'trigger (get_job_status)':28}{status['seconds']:7.2f}s{status['stall_s']:11.3f}s"
        f"{status['working_mb']:13.1f} MB"
    )
    print(f"  -> loop stall {full['stall_s'] / status['stall_s']:.0f}x shorter\n")
    full, status = rows["sync-full"], rows["sync-status"]
    print("sync status check (sensor poke, operator wait), fresh process each")
    print(f"  {'':28}{'wall':>8}{'working memory':>16}")
    print(f"  {'get_job (baseline)':28}{full['seconds']:7.2f}s{full['working_mb']:13.0f} MB")
    print(f"  {'get_job_status':28}{status['seconds']:7.2f}s{status['working_mb']:13.1f} MB\n")

    print("RateLimiter.acquire_async at 100/s, loop busy ~15 ms per turn")
    for n in (20, 200):
        elapsed, busiest = asyncio.run(_limiter(n, 100.0, 0.015))
        ideal = n / 100.0
        print(
            f"  {n:4d} callers: all through in {elapsed:.2f} s (ideal {ideal:.2f} s, {elapsed / ideal:.2f}x); "
            f"busiest 1-s window {busiest} (limit 100)"
        )


if __name__ == "__main__":
    main()
