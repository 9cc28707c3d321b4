"""Soak: a 1,000-image batch and 58 video jobs against an emulator that injects ~20 % faults.

Every request the emulator receives is recorded with the fault it was given, so each input's outcome can be
*predicted* from its own requests and compared with what the operators did:

- the last request of an input (or job) unfaulted → success (or the input's own error: -2, ``failed``,
  ``not found``, still ``processing`` at the deadline);
- the last request ``malformed`` → :class:`KakaoPoseResponseError`, never retried;
- the last ``max_retries + 1`` requests all given a retryable fault → that fault's error class, retries
  exhausted;
- every request before the last was given a retryable fault (nothing is resent without a reason).

Bounded: about 25-30 s for the file on a 2-core machine. Fixed seed, so the faults per request number are fixed;
which input gets which fault depends on thread timing, so the assertions hold for any assignment.
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests
from helpers import API_KEY, FakeStore, allow_execute_in_this_thread, context

from airflow_provider_kakaopose.emulator import PoseEmulator
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseConnectionError,
    KakaoPoseError,
    KakaoPoseInputError,
    KakaoPoseJobFailedError,
    KakaoPoseJobNotFoundError,
    KakaoPoseQuotaError,
    KakaoPoseResponseError,
    KakaoPoseServerError,
)
from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook
from airflow_provider_kakaopose.operators.pose import (
    JOB_STATE_KEY,
    KakaoPoseImageOperator,
    KakaoPoseJobToParquetOperator,
    KakaoPoseVideoOperator,
    default_errors_uri,
)
from airflow_provider_kakaopose.sensors.pose import KakaoPoseJobSensor
from airflow_provider_kakaopose.tables import read_keypoints

#: Fixed: the emulator draws faults in arrival order, so every run sees the same faults per request number
#: (with this seed all eight kinds within the first 36 requests, and 17-21 % faulted from request 150 on).
SEED = 20_260_185
FAULT_RATE = 0.2
FAULT_KINDS = ("500", "503", "drop", "slow", "malformed", "error-1", "quota", "429")
#: 3 attempts per request: at a 17.5 % retryable-fault rate about 1 request in 190 runs out of retries.
MAX_RETRIES = 2
ATTEMPTS = MAX_RETRIES + 1
READ_TIMEOUT = 2.0  # generous: an unfaulted answer must never time out, even on a busy 2-core runner
SLOW_SECONDS = 3.0  # > READ_TIMEOUT: every "slow" fault is a client read timeout
#: The error a request ends with when its last attempt got this (retryable) fault.
RETRYABLE = {
    "500": KakaoPoseServerError,
    "503": KakaoPoseServerError,
    "error-1": KakaoPoseServerError,
    "drop": KakaoPoseConnectionError,
    "slow": KakaoPoseConnectionError,
    "quota": KakaoPoseQuotaError,
    "429": KakaoPoseQuotaError,
}
assert set(RETRYABLE) | {"malformed"} == set(FAULT_KINDS)


@pytest.fixture
def emulator():
    """Overrides conftest's: the same key, with faults injected on every API request (seeded)."""
    with PoseEmulator(
        api_key=API_KEY,
        seed=SEED,
        latency=0.005,
        fault_rate=FAULT_RATE,
        fault_kinds=FAULT_KINDS,
        slow_seconds=SLOW_SECONDS,
        job_waiting_s=0.2,
        job_processing_s=0.5,
    ) as emu:
        yield emu


@pytest.fixture
def soak_conn(make_conn):
    return make_conn(
        read_timeout=READ_TIMEOUT,
        connect_timeout=2,
        max_retries=MAX_RETRIES,
        retry_wait_initial=0.02,
        retry_wait_max=0.2,
    )


@pytest.fixture
def logical(monkeypatch):
    """Counts the hook's logical requests per (method, path, image_url/video_url) — before any retry."""
    calls: collections.Counter = collections.Counter()
    lock = threading.Lock()
    original = KakaoPoseHook._request

    def counting(self, method, path, **kwargs):
        fields = kwargs.get("fields") or {}
        with lock:
            calls[(method, path, fields.get("image_url") or fields.get("video_url"))] += 1
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(KakaoPoseHook, "_request", counting)
    return calls


def recorded_by_key(emulator) -> dict[tuple, list]:
    """The emulator's recorded requests grouped like :func:`logical`, each group in arrival order."""
    groups: dict[tuple, list] = collections.defaultdict(list)
    for r in sorted(emulator.requests, key=lambda r: r.time):
        groups[(r.method, r.path, r.fields.get("image_url") or r.fields.get("video_url"))].append(r)
    return groups


def check_retry_budget(logical: collections.Counter, groups: dict[tuple, list]) -> None:
    """Every request the service saw belongs to a logical request, and none was sent more than allowed."""
    assert set(groups) <= set(logical), set(groups) - set(logical)
    for key, n in logical.items():
        sent = len(groups.get(key, []))
        assert n <= sent <= n * ATTEMPTS, (key, n, sent)


#: Faults after which a job *submission* is not resent: the service may have created the job already
#: (an answer cut off, or a 5xx / internal error that does not say whether the job was made).
UNSURE = {"drop", "slow", "500", "503", "error-1"}


def predict(recs: list, what: str, submit: bool = False) -> tuple[type[KakaoPoseError] | None, int]:
    """``(error class or None for "the service answered", attempts)`` of the last logical request of ``recs``.

    ``recs`` are one input's (or one job's) requests in arrival order; whatever came before the last
    logical request must have been resent only because of retryable faults.
    """
    assert recs, f"{what}: the service never saw it"
    last = recs[-1].fault
    if last is None:
        return None, 0
    if last == "malformed":
        return KakaoPoseResponseError, 0
    if submit and last in UNSURE:  # given up at once to avoid a duplicate job
        assert all(r.fault in RETRYABLE and r.fault not in UNSURE for r in recs[:-1]), (what, [r.fault for r in recs])
        return RETRYABLE[last], len(recs)
    assert last in RETRYABLE, (what, last)
    tail = 0
    for r in reversed(recs):
        if r.fault not in RETRYABLE:
            break
        tail += 1
    # The last logical request ran out of attempts: exactly ATTEMPTS retryable faults in a row (the one
    # before it, if any, cannot have ended on a retryable fault, or the caller would have stopped there).
    assert tail == ATTEMPTS, (what, [r.fault for r in recs])
    return RETRYABLE[last], ATTEMPTS


def fault_counts(emulator) -> dict[str, int]:
    counts = collections.Counter(r.fault or "none" for r in emulator.requests)
    return dict(sorted(counts.items()))


def assert_faults_were_injected(counts: dict[str, int]) -> None:
    total = sum(counts.values())
    faulted = total - counts.get("none", 0)
    assert 0.15 < faulted / total < 0.25, counts
    assert set(counts) == {*FAULT_KINDS, "none"}, counts  # every kind happened at least once


# ------------------------------------------------------------------------------------------- images


def test_soak_image_batch_accounts_for_every_input(emulator, soak_conn, logical, tmp_path):
    good = [f"https://example.com/soak/{n:04d}.jpg" for n in range(990)]
    unfetchable = [f"https://img{n}.invalid/pic.jpg" for n in range(6)]  # the service answers -2
    bad_port = [f"http://example.com:8080/{n}.jpg" for n in range(4)]  # refused before sending
    images = good + unfetchable + bad_port
    random.Random(SEED).shuffle(images)
    assert len(images) == len(set(images)) == 1000
    out = tmp_path / "soak" / "keypoints.parquet"
    op = KakaoPoseImageOperator(
        task_id="soak_images",
        images=images,
        output_uri=str(out),
        max_concurrency=16,
        max_failed_ratio=1.0,
        kakao_pose_conn_id=soak_conn,
    )
    start = time.monotonic()
    summary = op.execute(context())
    elapsed = time.monotonic() - start

    # Zero inputs unaccounted for: succeeded ⊎ errors == inputs, each exactly once.
    meta = pq.read_schema(out).metadata
    sources = json.loads(meta[b"kakaopose:sources"])
    errors = pq.read_table(default_errors_uri(str(out))).to_pylist()
    failed = [e["source"] for e in errors]
    assert len(sources) == len(set(sources)) and len(failed) == len(set(failed))
    assert not set(sources) & set(failed)
    assert sorted(sources + failed) == sorted(images)
    assert (summary["images"], summary["succeeded"], summary["failed"]) == (1000, len(sources), len(failed))
    assert int(meta[b"kakaopose:failed"]) == len(failed)

    # Each input's outcome is the one its own requests predict.
    groups = recorded_by_key(emulator)
    by_source = {e["source"]: e for e in errors}
    seen_types: collections.Counter = collections.Counter()
    for url in images:
        recs = groups.get(("POST", "/pose", url), [])
        error = by_source.get(url)
        if url in bad_port:
            assert recs == [] and error is not None
            assert (error["error_type"], error["attempts"], error["status_code"]) == ("KakaoPoseInputError", None, None)
            seen_types["pre-flight"] += 1
            continue
        assert len(recs) <= ATTEMPTS, (url, [r.fault for r in recs])
        assert all(r.fault in RETRYABLE for r in recs[:-1]), (url, [r.fault for r in recs])
        expected, attempts = predict(recs, url)
        if expected is None and url in unfetchable:
            expected, attempts = KakaoPoseInputError, len(recs)
            assert (error["status_code"], error["code"]) == (400, -2), error
        if expected is None:
            assert error is None and url in sources, (url, error)
            seen_types["success"] += 1
            continue
        assert error is not None, (url, [r.fault for r in recs])
        assert error["error_type"] == expected.__name__, (url, error, [r.fault for r in recs])
        # docs/tables.md: attempts = the requests made for this input (a malformed answer is one of them).
        assert error["attempts"] == (attempts or len(recs)), (url, error, [r.fault for r in recs])
        seen_types[error["error_type"]] += 1

    # No duplicate rows; rows only for inputs that succeeded; whole persons (17 keypoints each). Read back
    # with the provider's own reader: the batch has 1,000 distinct sources.
    df = read_keypoints(out)
    keys = list(zip(df["source"].astype(str), df["person_idx"], df["keypoint_id"], strict=True))
    assert len(keys) == len(set(keys)) == summary["rows"]
    rows_per_source = collections.Counter(k[0] for k in keys)
    assert set(rows_per_source) <= set(sources)
    assert all(n % 17 == 0 for n in rows_per_source.values())
    assert sum(n // 17 for n in rows_per_source.values()) == summary["persons"]

    # The retry budget: one logical request per input sent, at most max_retries + 1 times.
    assert all(logical[("POST", "/pose", url)] == 1 for url in good + unfetchable)
    check_retry_budget(logical, groups)
    sent = emulator.count(method="POST", path="/pose")
    assert 996 <= sent <= 996 * ATTEMPTS
    counts = fault_counts(emulator)
    assert_faults_were_injected(counts)
    assert seen_types["KakaoPoseResponseError"] > 0  # ~2.5 % of requests are malformed: dozens expected
    print(
        f"\nsoak images: {elapsed:.1f} s, {sent} POST /pose for 996 sendable images; faults {counts}; "
        f"outcomes {dict(seen_types)}"
    )


# ------------------------------------------------------------------------------------------- videos


def _run(fn) -> tuple[str, Any]:
    allow_execute_in_this_thread()
    try:
        return "ok", fn()
    except KakaoPoseError as err:
        return "error", err


def test_soak_video_jobs_end_in_parquet_or_the_right_error(emulator, soak_conn, logical, tmp_path):
    videos: list[dict[str, Any]] = []
    for i in range(40):
        frames, persons = 20 + 10 * (i % 4), 1 + i % 3
        url = f"https://example.com/soak/v{i:02d}.mp4?frames={frames}&persons={persons}"
        videos.append({"url": url, "kind": "success", "frames": frames, "persons": persons, "timeout": 60, "poll": 0.1})
    # 8 and 10 of the two error kinds: faults derail each case with a fair chance, and every kind must come out as
    # itself at least once (with 5 each, all 5 deadline cases were once derailed: a rare false failure).
    for i in range(8):  # the emulator cannot fetch them: the job ends "failed"
        videos.append({"url": f"https://cdn{i}.invalid/v.mp4", "kind": "failed", "timeout": 60, "poll": 0.1})
    for i in range(10):  # processing for 10 minutes: still running at a 1 s deadline (few polls, few faults)
        url = f"https://example.com/soak/stuck{i}.mp4?frames=10&waiting_s=0&processing_s=600"
        videos.append({"url": url, "kind": "deadline", "timeout": 1.0, "poll": 0.4})
    assert len(videos) == 58
    random.Random(SEED).shuffle(videos)
    bogus = [str(uuid.UUID(int=n + 1, version=4)) for n in range(4)]  # never submitted: "not found"

    def run_video(n: int, video: dict) -> tuple[str, Any]:
        video["ctx"] = ctx = context(FakeStore())
        op = KakaoPoseVideoOperator(
            task_id=f"v{n}",
            video=video["url"],
            output_uri=str(tmp_path / f"v{n}.parquet"),
            deferrable=False,
            poll_interval=video["poll"],
            timeout=video["timeout"],
            kakao_pose_conn_id=soak_conn,
        )
        return _run(lambda: op.execute(ctx))

    def load(n: int, job_id: str) -> tuple[str, Any]:
        op = KakaoPoseJobToParquetOperator(
            task_id=f"load{n}", job_id=job_id, output_uri=str(tmp_path / f"nf{n}.parquet"), kakao_pose_conn_id=soak_conn
        )
        return _run(lambda: op.execute(context()))

    def poke(job_id: str) -> tuple[str, Any]:
        return _run(lambda: KakaoPoseJobSensor(task_id="s", job_id=job_id, kakao_pose_conn_id=soak_conn).poke({}))

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(videos) + len(bogus)) as pool:
        futures = [pool.submit(run_video, n, v) for n, v in enumerate(videos)]
        nf_futures = [pool.submit(load, 0, bogus[0]), pool.submit(load, 1, bogus[1])]
        nf_futures += [pool.submit(poke, bogus[2]), pool.submit(poke, bogus[3])]
        outcomes = [f.result(timeout=120) for f in futures]
        nf_outcomes = [f.result(timeout=120) for f in nf_futures]
    elapsed = time.monotonic() - start

    groups = recorded_by_key(emulator)
    tally: collections.Counter = collections.Counter()
    resubmitted = orphans = created = 0
    for n, (video, (status, result)) in enumerate(zip(videos, outcomes, strict=True)):
        url, what = video["url"], f"video {n} {video['url']}"
        # The operator submits once; the hook resends only after a retryable fault.
        assert logical[("POST", "/pose/job", url)] == 1, what
        subs = groups[("POST", "/pose/job", url)]
        assert 1 <= len(subs) <= ATTEMPTS, (what, [r.fault for r in subs])
        # A submission is resent only after a fault that proves no job was made (never after drop/slow).
        assert all(r.fault in RETRYABLE and r.fault not in UNSURE for r in subs[:-1]), (what, [r.fault for r in subs])
        resubmitted += len(subs) > 1
        orphans += sum(r.fault == "slow" for r in subs)  # answered after the client gave up: a job nobody polls
        expected, attempts = predict(subs, what, submit=True)
        record = video["ctx"]["task_state_store"].get(JOB_STATE_KEY)
        # A submission given up on because it may have made a job is counted in the task's record.
        unknown = subs[-1].fault in UNSURE or subs[-1].fault == "malformed"  # an unreadable 2xx: a job may exist
        assert record["unknown_submissions"] == unknown, (what, record)
        job_id = video["ctx"]["ti"].xcom.get("job_id")
        if expected is None:  # submitted: follow the job
            created += 1
            assert job_id and video["ctx"]["task_state_store"].get(JOB_STATE_KEY)["job"]["job_id"] == job_id, what
            gets = groups[("GET", f"/pose/job/{job_id}", None)]
            assert gets[0].time > subs[-1].time  # no submit after the first poll
            expected, attempts = predict(gets, what)
        else:
            assert job_id is None, what
        if expected is None:  # the service's last answer was a real one: the job's own outcome
            if video["kind"] == "success":
                assert status == "ok", (what, result)
                assert result == job_id, (what, result)  # the video operator returns the job id
                result = video["ctx"]["ti"].xcom["summary"]  # and pushes the table's summary
                table = pq.read_table(result["output_uri"])
                assert set(table["job_id"].to_pylist()) == {job_id}
                assert set(table["source"].to_pylist()) == {url}
                keys = list(
                    zip(
                        table["frame_num"].to_pylist(),
                        table["person_idx"].to_pylist(),
                        table["keypoint_id"].to_pylist(),
                        strict=True,
                    )
                )
                assert len(keys) == len(set(keys)) == result["rows"] > 0
                assert {k[0] for k in keys} <= set(range(video["frames"]))
                assert {k[1] for k in keys} <= set(range(video["persons"]))
                assert result["frames"] == video["frames"] and result["job_id"] == job_id
                tally["parquet"] += 1
                continue
            expected = {"failed": KakaoPoseJobFailedError, "deadline": KakaoPoseError}[video["kind"]]
        assert status == "error", (what, result)
        assert type(result) is expected, (what, result, expected)
        if expected is KakaoPoseError:
            assert f"Pose job {job_id} was still processing" in str(result), what
        if expected is KakaoPoseJobFailedError:
            assert "Failed to get video" in str(result), what
        if attempts:
            assert result.attempts == attempts, (what, result)
        tally[f"{video['kind']}:{type(result).__name__}"] += 1

    for job_id, (status, result) in zip(bogus, nf_outcomes, strict=True):
        gets = groups[("GET", f"/pose/job/{job_id}", None)]
        assert logical[("GET", f"/pose/job/{job_id}", None)] == 1
        expected, attempts = predict(gets, job_id)
        expected = expected or KakaoPoseJobNotFoundError
        assert status == "error" and type(result) is expected, (job_id, result, [r.fault for r in gets])
        if attempts:
            assert result.attempts == attempts
        tally[f"not found:{type(result).__name__}"] += 1
    assert not any((tmp_path / f"nf{n}.parquet").exists() for n in range(2))

    # Each case came out as itself at least once: 4 or 5 tries each, faults derail one in ~5-10.
    assert tally["parquet"] >= 20, tally  # of 40; 30-35 seen
    assert tally["failed:KakaoPoseJobFailedError"] >= 1, tally
    assert tally["deadline:KakaoPoseError"] >= 1, tally
    assert tally["not found:KakaoPoseJobNotFoundError"] >= 1, tally

    check_retry_budget(logical, groups)
    submits = emulator.count(method="POST", path="/pose/job")
    assert 50 <= submits <= 50 * ATTEMPTS
    jobs = requests.get(f"{emulator.base_url}/_emulator/health", timeout=5).json()["jobs"]
    assert created <= jobs <= created + orphans
    counts = fault_counts(emulator)
    assert_faults_were_injected(counts)
    print(
        f"\nsoak videos: {elapsed:.1f} s, {len(emulator.requests)} requests ({submits} submits, "
        f"{resubmitted} videos resubmitted after a fault, {orphans} orphan jobs); faults {counts}; "
        f"outcomes {dict(sorted(tally.items()))}"
    )


# -------------------------------------------------------------------- the emulator's per-job timing knob


def test_video_url_timing_knobs_set_one_jobs_waiting_and_processing(monkeypatch):
    with PoseEmulator(api_key=API_KEY, job_waiting_s=30, job_processing_s=30) as emu:
        conn = {"conn_type": "kakao_pose", "host": emu.base_url, "password": API_KEY, "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_KAKAO_POSE_KNOBS", json.dumps(conn))
        hook = KakaoPoseHook("kakao_pose_knobs")
        quick = hook.submit_video_job(video_url="https://example.com/a.mp4?frames=3&waiting_s=0&processing_s=0")
        assert hook.get_job(quick)["status"] == "success"
        stuck = hook.submit_video_job(video_url="https://example.com/a.mp4?waiting_s=0&processing_s=600")
        assert hook.get_job(stuck)["status"] == "processing"
        assert hook.get_job(hook.submit_video_job(video_url="https://example.com/b.mp4"))["status"] == "waiting"
        for bad in ("processing_s=soon", "waiting_s=-1", "processing_s=inf"):
            with pytest.raises(KakaoPoseInputError, match="emulator knob"):
                hook.submit_video_job(video_url=f"https://example.com/a.mp4?{bad}")
