"""Many waiting triggers in one event loop: memory per trigger and poll discipline, against the emulator.

With dynamic task mapping over N videos and deferrable waits, the triggerer holds N
``KakaoPoseJobTrigger``s on one event loop. Goals: 1,000 of them use <= 50 KB of memory each while they wait,
and their polls keep to ``poll_interval`` (no busy loop) and never burst above ``rate_limit_per_second``.

The emulator runs as its own process; each phase runs in a fresh Python process (so RSS deltas are not muddied
by memory freed in an earlier phase) that submits N video jobs with the sync hook, warms the async hook up
(imports, connection lookup, rate limiter), takes a baseline with 0 triggers, starts N triggers as asyncio
tasks on one loop (as the triggerer does: each generator is iterated to its end) and measures again after
2.5 poll intervals, while every trigger is between polls. Phases:

* ``per-trigger sessions`` - the baseline: each hook opens its own ``aiohttp.ClientSession`` (what naive code
  does; done by patching ``hooks.pose._SESSIONS``), no rate limit;
* ``shared session``       - the provider as shipped: all hooks on the loop share one session, no rate limit;
* ``shared + limit``       - the same with the connection extra ``rate_limit_per_second = --rate-limit``.

Memory: ``heap`` = Python heap growth (tracemalloc), ``RSS`` = resident-set growth minus tracemalloc's own
bookkeeping, both divided by N. Polls: the emulator records each ``GET /pose/job/<id>`` (monotonic time); per
job the gaps between consecutive polls are compared with ``poll_interval``, and the busiest 1-second window
(sliding, half-open) of all polls with the rate limit. Jobs stay ``processing`` for about 4.5 poll intervals
(+ 5 ms per job for the submission), so each trigger polls ~5 times before its job succeeds.

    .venv/bin/python benchmarks/triggers.py                         # 1,000 triggers, poll 5 s, 200/s (~2 min)
    .venv/bin/python benchmarks/triggers.py --triggers 200 --poll-interval 2 --rate-limit 50   # quick (~40 s)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

from _emulator import clear_recorded, recorded, start_emulator

MEMORY_GOAL_KB = 50.0
#: A gap between two polls of one job below this fraction of poll_interval counts as a busy loop.
GAP_TOLERANCE = 0.95
#: Arrival jitter (a few ms of loop and network scheduling) may put a poll or two more into a 1-second window.
RATE_TOLERANCE = 1.05


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# ------------------------------------------------------------------------------------------------ one phase


def per_trigger_sessions() -> None:
    """Make every async hook open (and close) its own aiohttp session, like naive code would."""
    import aiohttp

    from airflow_provider_kakaopose.hooks import pose

    def acquire() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=100, limit_per_host=100)
        return aiohttp.ClientSession(connector=connector, headers={"Accept": "application/json"})

    async def release(session: aiohttp.ClientSession) -> None:
        await session.close()

    pose._SESSIONS.acquire = acquire  # type: ignore[method-assign]
    pose._SESSIONS.release = release  # type: ignore[method-assign]


async def run_triggers(job_ids: list[str], poll: float, top: int, trace: bool) -> dict:
    from airflow_provider_kakaopose.hooks._client import PROBE_JOB_ID
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseAsyncHook
    from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger

    # Warm-up with 0 triggers: imports, connection lookup, the shared rate limiter, aiohttp's first request.
    async with KakaoPoseAsyncHook() as hook:
        await hook.get_job_status(PROBE_JOB_ID)
    # The shared limiter records when it let each request go (its claims), to compare with when polls arrive
    sends: list[float] = []
    limiter = hook._rate_limiter
    if limiter is not None and limiter.interval:
        # ... and when each request really leaves (aiohttp's entry point), independent of the emulator's own lag.
        import aiohttp

        request = aiohttp.ClientSession._request

        def sending(self: aiohttp.ClientSession, method: str, url: object, **kwargs: object):  # type: ignore[no-untyped-def]
            sends.append(time.monotonic())
            return request(self, method, url, **kwargs)

        aiohttp.ClientSession._request = sending  # type: ignore[method-assign]

    async def drive(trigger: KakaoPoseJobTrigger) -> list[dict]:
        return [event.payload async for event in trigger.run()]  # the triggerer runs each to its end

    end_time = time.time() + 3600
    gc.collect()
    if trace:
        tracemalloc.start()
    heap0, tm0, rss0 = tracemalloc.get_traced_memory()[0], tracemalloc.get_tracemalloc_memory(), rss_bytes()
    cpu0, t0, mono0 = time.process_time(), time.perf_counter(), time.monotonic()
    tasks = [
        asyncio.create_task(drive(KakaoPoseJobTrigger(job_id, poll_interval=poll, end_time=end_time)))
        for job_id in job_ids
    ]
    await asyncio.sleep(2.5 * poll)
    stall_start = time.monotonic()
    if trace:
        gc.collect()
    heap1, heap_peak = tracemalloc.get_traced_memory()
    tm1, rss1 = tracemalloc.get_tracemalloc_memory(), rss_bytes()
    cpu_wait = (time.process_time() - cpu0) / (time.perf_counter() - t0)
    done_early = sum(task.done() for task in tasks)
    by_file: list[tuple[str, int]] = []
    by_line: list[tuple[str, int]] = []
    if trace:
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        by_file = [(st.traceback[0].filename, st.size) for st in snapshot.statistics("filename")[:top] if st.size]
        by_line = [(str(st.traceback[0]), st.size) for st in snapshot.statistics("lineno")[:top]]
        del snapshot
    stall_end = time.monotonic()
    results = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    statuses: dict[str, int] = {}
    for events in results:
        key = events[0]["status"] if len(events) == 1 else f"{len(events)} events"
        statuses[key] = statuses.get(key, 0) + 1
    claimed = [t for t in limiter.sent_times() if t >= mono0] if limiter is not None and limiter.interval else []
    return {
        "trace": trace,
        "slots": claimed,
        "sends": [t - mono0 for t in sends if t >= mono0],
        "heap": heap1 - heap0,
        "heap_peak": heap_peak - heap0,
        "rss": (rss1 - rss0) - (tm1 - tm0),
        "rss_raw": rss1 - rss0,
        "tracemalloc_overhead": tm1 - tm0,
        "cpu_wait": cpu_wait,
        "done_early": done_early,
        "statuses": statuses,
        "elapsed": elapsed,
        "start": mono0,
        "stall_start": stall_start,
        "stall_end": stall_end,
        "by_file": by_file,
        "by_line": by_line,
    }


def child(spec: dict) -> None:
    """One phase, in its own process: submit the jobs, run the triggers, write the measurements as JSON."""
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

    hook = KakaoPoseHook()
    offset = spec["job_offset"]

    def submit(i: int) -> str:
        return hook.submit_video_job(video_url=f"https://example.com/v{offset + i}.mp4?frames=3")

    t = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        job_ids = list(pool.map(submit, range(spec["triggers"])))
    submit_s = time.perf_counter() - t
    hook.close()
    if spec["per_trigger_sessions"]:
        per_trigger_sessions()
    out = asyncio.run(run_triggers(job_ids, spec["poll"], spec["top"], spec["trace"]))
    out.update(job_ids=job_ids, submit_s=submit_s)
    with open(spec["out"], "w") as f:
        json.dump(out, f)


# ------------------------------------------------------------------------------------------------ analysis


def max_in_window(times: list[float], width: float = 1.0) -> tuple[int, float]:
    """The most events in any half-open window ``[t, t + width)``, and where that window starts."""
    best, at = 0, float("nan")
    for i, start in enumerate(times):
        count = bisect.bisect_left(times, start + width, lo=i) - i
        if count > best:
            best, at = count, start
    return best, at


def poll_stats(
    requests: list[dict], job_ids: list[str], start: float, stall: tuple[float, float], slots: list[float]
) -> dict:
    wanted = {f"/pose/job/{job_id}" for job_id in job_ids}
    by_job: dict[str, list[float]] = {}
    for r in requests:
        if r["method"] == "GET" and r["path"] in wanted and r["time"] >= start:
            by_job.setdefault(r["path"], []).append(r["time"])
    gaps = [b - a for times in by_job.values() for a, b in itertools.pairwise(times)]
    all_times = sorted(t for times in by_job.values() for t in times)
    polls_before = sum(1 for t in all_times if t < stall[0])
    busiest = max_in_window(all_times)
    return {
        "jobs_polled": len(by_job),
        "polls": len(all_times),
        "polls_per_job": len(all_times) / max(1, len(by_job)),
        "gap_min": min(gaps) if gaps else float("nan"),
        "gap_median": statistics.median(gaps) if gaps else float("nan"),
        "gap_max": max(gaps) if gaps else float("nan"),
        "gaps": len(gaps),
        "max_per_s": busiest[0],
        "max_per_s_at": busiest[1] - start,
        "stall": stall[1] - stall[0],
        "measure_at": stall[0] - start,
        "max_per_s_fixed": max((sum(1 for _ in g) for g in _fixed_windows(all_times)), default=0),
        "polls_before_measure": polls_before,
        **slot_stats(sorted(slots), all_times, start),
    }


def slot_stats(slots: list[float], arrivals: list[float], start: float) -> dict:
    """How the limiter's booked send times compare with when the polls arrived (i-th slot vs i-th arrival)."""
    if not slots:
        return {"slot_max_per_s": 0}
    late = [a - s for s, a in zip(slots, arrivals, strict=False)]
    return {
        "slot_max_per_s": max_in_window(slots)[0],
        "late_median": statistics.median(late),
        "late_max": max(late),
        "first_slot": slots[0] - start,
        "first_poll": arrivals[0] - start if arrivals else float("nan"),
    }


def _fixed_windows(times: list[float]):
    return (g for _, g in itertools.groupby(times, key=int))


def kb(n: float, count: int) -> float:
    return n / 1024 / count


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triggers", type=int, default=1000, help="concurrent triggers (default 1000)")
    parser.add_argument(
        "--baseline-triggers", type=int, default=None, help="triggers of the per-session baseline (default: same)"
    )
    parser.add_argument("--poll-interval", type=float, default=5.0, help="trigger poll_interval, s (default 5)")
    parser.add_argument("--rate-limit", type=float, default=200.0, help="rate_limit_per_second of the limited phase")
    parser.add_argument("--latency", type=float, default=0.02, help="emulator latency per answer, s (default 0.02)")
    parser.add_argument("--top", type=int, default=5, help="allocation sites to show per phase (default 5)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    n, poll = args.triggers, args.poll_interval
    n_base = args.baseline_triggers or n
    processing_s = 4.5 * poll + 0.005 * max(n, n_base)
    key = secrets.token_hex(12)
    proc, base = start_emulator(
        key,
        "--latency",
        str(args.latency),
        "--job-waiting-s",
        "0",
        "--job-processing-s",
        str(processing_s),
        "--seed",
        "1",
    )
    home = os.environ.get("AIRFLOW_HOME") or tempfile.mkdtemp(prefix="kakaopose-bench-")
    phases = [
        ("per-trigger sessions", n_base, True, None),
        ("shared session", n, False, None),
        (f"shared + {args.rate_limit:g}/s limit", n, False, args.rate_limit),
    ]
    rows = []
    offset = 0
    try:
        for name, count, per_trigger, rate in phases:
            extra: dict = {"max_retries": 3}
            if rate:
                extra["rate_limit_per_second"] = rate
            conn = {"conn_type": "kakao_pose", "host": base, "password": key, "extra": extra}
            env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW_CONN_KAKAO_POSE_DEFAULT": json.dumps(conn)}
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                spec = {
                    "triggers": count,
                    "poll": poll,
                    "per_trigger_sessions": per_trigger,
                    "top": args.top,
                    "trace": rate is None,
                    "job_offset": offset,
                    "out": out.name,
                }
                offset += count
                clear_recorded(base)
                print(f"... {name}: {count} triggers", flush=True)
                subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, check=True)
                with open(out.name) as f:
                    result = json.load(f)
            result.update(
                poll_stats(
                    recorded(base),
                    result.pop("job_ids"),
                    result["start"],
                    (result["stall_start"], result["stall_end"]),
                    result.pop("slots"),
                )
            )
            result["send_max_per_s"] = max_in_window(sorted(result.pop("sends")))[0]
            rows.append((name, count, rate, result))
    finally:
        proc.stop()
    report(rows, n, poll, args, processing_s)


def report(rows: list, n: int, poll: float, args: argparse.Namespace, processing_s: float) -> None:
    print()
    print(
        f"{n} KakaoPoseJobTriggers on one event loop, poll_interval {poll:g} s, emulator latency "
        f"{args.latency * 1000:.0f} ms, jobs processing {processing_s:.1f} s; memory measured "
        f"{2.5 * poll:g} s after start (all between polls)"
    )
    head = (
        f"{'phase':<24}{'N':>6}{'heap KB/trig':>14}{'RSS KB/trig':>13}{'peak heap':>11}{'CPU':>6}"
        f"{'polls/job':>11}{'gap min':>9}{'gap med':>9}{'max/1s':>8}{'events':>18}"
    )
    print(head)
    print("-" * len(head))
    for name, count, _rate, r in rows:
        events = ", ".join(f"{v} {k}" for k, v in sorted(r["statuses"].items()))
        heap = f"{kb(r['heap'], count):>14.1f}{kb(r['rss'], count):>13.1f}{kb(r['heap_peak'], count):>11.1f}"
        if not r["trace"]:
            heap = f"{'-':>14}{kb(r['rss'], count):>13.1f}{'-':>11}"
        print(
            f"{name:<24}{count:>6}{heap}{r['cpu_wait'] * 100:>5.0f}%{r['polls_per_job']:>11.1f}"
            f"{r['gap_min']:>9.2f}{r['gap_median']:>9.2f}{r['max_per_s']:>8}{events:>18}"
        )
    print(
        "(heap = tracemalloc growth; RSS = resident growth minus tracemalloc's bookkeeping; peak heap = the highest "
        "heap growth before the measurement; CPU = the process's CPU share while waiting; gaps in s; max/1s = most "
        "polls arriving in any 1-s window; the limited phase runs without tracemalloc, so its timing is undisturbed)"
    )
    for name, count, _rate, r in rows:
        print(f"\n{name}: submit {r['submit_s']:.1f} s, run {r['elapsed']:.1f} s, {r['polls']} polls", end="")
        print(f", busiest fixed second {r['max_per_s_fixed']}, busiest 1-s window at +{r['max_per_s_at']:.2f} s")
        if r["trace"]:
            print(
                f"  RSS raw growth {kb(r['rss_raw'], count):.1f} KB/trigger, of which tracemalloc's own "
                f"{kb(r['tracemalloc_overhead'], count):.1f}; the measurement stalled the loop "
                f"{r['stall'] * 1000:.0f} ms"
            )
            print(
                "  heap growth by file (KB/trigger): "
                + "; ".join(f"{_short(f)} {kb(s, count):.1f}" for f, s in r["by_file"])
            )
            for line, size in r["by_line"]:
                print(f"  {kb(size, count):6.1f}  {_short(line)}")
        if r["slot_max_per_s"]:
            print(
                f"  client side: busiest 1-s window of requests sent (aiohttp entry) {r['send_max_per_s']}, "
                f"of sends the limiter allowed {r['slot_max_per_s']}"
            )
            print(
                f"  emulator side: polls arrived after the limiter allowed them "
                f"by median {r['late_median'] * 1000:.0f} ms, max {r['late_max'] * 1000:.0f} ms (sorted pairing); "
                f"first slot at +{r['first_slot']:.2f} s, first poll at +{r['first_poll']:.2f} s"
            )
        if r["done_early"] or r["jobs_polled"] != count:
            print(
                f"  NOTE: {r['done_early']} triggers had finished before the measurement; "
                f"{r['jobs_polled']} of {count} jobs polled"
            )

    base, shared, limited = rows[0], rows[1], rows[2]
    print("\nGoals")
    ok = True

    def goal(text: str, passed: bool) -> None:
        nonlocal ok
        ok = ok and passed
        print(f"  [{'PASS' if passed else 'FAIL'}] {text}")

    for name, count, _rate, r in rows[1:]:
        heap_kb, rss_kb = kb(r["heap"], count), kb(r["rss"], count)
        text = f"heap {heap_kb:.1f} KB, RSS {rss_kb:.1f} KB" if r["trace"] else f"RSS {rss_kb:.1f} KB"
        goal(
            f"{name}: memory per trigger <= {MEMORY_GOAL_KB:g} KB: {text}",
            heap_kb <= MEMORY_GOAL_KB and rss_kb <= MEMORY_GOAL_KB,
        )
    b_heap, s_heap = kb(base[3]["heap"], base[1]), kb(shared[3]["heap"], shared[1])
    b_rss, s_rss = kb(base[3]["rss"], base[1]), kb(shared[3]["rss"], shared[1])
    scaled = f" (baseline at N={base[1]})" if base[1] != shared[1] else ""
    print(
        f"  shared session vs per-trigger sessions{scaled}: heap {b_heap:.1f} -> {s_heap:.1f} KB/trigger "
        f"(ratio {b_heap / s_heap:.2f}x), RSS {b_rss:.1f} -> {s_rss:.1f} KB/trigger "
        f"(ratio {b_rss / s_rss if s_rss > 0 else float('inf'):.2f}x)"
    )
    for name, count, _rate, r in rows:
        goal(f"{name}: every trigger fired one success event ({r['statuses']})", r["statuses"] == {"success": count})
        goal(
            f"{name}: no busy loop: min gap {r['gap_min']:.2f} s, median {r['gap_median']:.2f} s "
            f">= {GAP_TOLERANCE:g} x poll_interval {poll:g} s ({r['gaps']} gaps, {r['polls_per_job']:.1f} polls/job)",
            r["gaps"] > 0 and r["gap_min"] >= GAP_TOLERANCE * poll,
        )
    rate, lim = limited[2], limited[3]
    goal(
        f"{limited[0]}: busiest 1-second window of polls sent {lim['send_max_per_s']} <= rate_limit_per_second "
        f"{rate:g} (x {RATE_TOLERANCE:g} for jitter; natural rate N / poll_interval = {n / poll:g}/s; without a "
        f"limit the busiest second had {shared[3]['max_per_s']} arrivals)",
        lim["send_max_per_s"] <= rate * RATE_TOLERANCE,
    )
    print(
        f"  (as the emulator recorded them, on arrival: busiest 1-second window {lim['max_per_s']}, "
        f"{'within' if lim['max_per_s'] <= rate * RATE_TOLERANCE else 'ABOVE'} the limit x {RATE_TOLERANCE:g})"
    )
    print(f"\n{'ALL GOALS MET' if ok else 'SOME GOALS FAILED'}")


def _short(path: str) -> str:
    for marker in ("site-packages/", "airflow_provider_kakaopose/", "lib/python3"):
        if marker in path:
            return path[path.index(marker) :]
    return path


if __name__ == "__main__":
    main()
