"""A real Airflow deployment: the deferrable video DAG survives the death of its triggerer.

api-server, scheduler (LocalExecutor), dag-processor and triggerer run as separate processes on loopback,
sharing a private SQLite metadata DB, with the Pose API emulator as another process. The test triggers
``kakao_pose_video``, sees its task deferred and its trigger running in the triggerer, SIGKILLs that
triggerer while the job is still processing, starts a new one, and checks that the run succeeds with one job
submitted and its Parquet written.

On Airflow 2.11 the api-server is the webserver, the executor the SequentialExecutor (2.11's LocalExecutor
refuses SQLite) and the scheduler parses the DAGs itself (2.11 refuses a standalone dag-processor on SQLite);
those differences are in ``deployment.py``, the rest in the small helpers at the end of this file.
"""

from __future__ import annotations

import json
import secrets
import signal
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from cryptography.fernet import Fernet
from deployment import Deployment, emulator_url

from airflow_provider_kakaopose._compat import HAS_TASK_STATE_STORE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

DAGS = Path(__file__).resolve().parents[1] / "dags"
DAG_ID, TASK_ID = "kakao_pose_video", "analyze_video"
RUN_ID = "deployment_test"
LOGICAL_DATE = "2026-01-02T00:00:00+00:00"
FRAMES, PERSONS = 30, 2
VIDEO = f"https://example.com/deploy.mp4?frames={FRAMES}&persons={PERSONS}"
#: The job is "processing" from 1 s to 16 s after submission: long enough to see the trigger run in the first
#: triggerer and kill it mid-job (that takes 3-6 s after the submission), short enough to keep the test quick
#: (the run cannot end before the job does).
JOB_WAITING_S, JOB_PROCESSING_S = 1.0, 15.0


class Emulator:
    """The Pose API emulator running as its own process, seen through its HTTP endpoints."""

    def __init__(self, base_url: str, key: str) -> None:
        self.base_url = base_url
        self.key = key

    def _get(self, path: str, headers: dict[str, str] | None = None) -> object:
        req = urllib.request.Request(self.base_url + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def requests(self, method: str | None = None, path: str | None = None) -> list[dict]:
        return [
            r
            for r in self._get("/_emulator/requests")
            if (method is None or r["method"] == method) and (path is None or r["path"] == path)
        ]

    def job_status(self, job_id: str) -> str:
        return self._get(f"/pose/job/{job_id}", {"Authorization": f"KakaoAK {self.key}"})["status"]


@pytest.fixture
def deployment(tmp_path):
    dep = Deployment(tmp_path, secret=secrets.token_hex(16))
    try:
        yield dep
    finally:
        # Nothing is checked once the test is over (the logs are printed before, if it failed): no graceful stop
        # (Airflow 3's triggerer alone takes over 10 s to stop its trigger-runner subprocess).
        dep.stop_all(grace=0)


def test_deferred_video_run_survives_a_triggerer_kill(deployment):
    dep = deployment
    started = time.monotonic()
    try:
        _scenario(dep, started)
    except BaseException:
        print(f"Deployment failed after {time.monotonic() - started:.0f} s; component logs:\n{dep.report()}")
        raise
    print(f"Deployment test took {time.monotonic() - started:.0f} s")


def _scenario(dep: Deployment, started: float) -> None:
    key = dep.secret
    assert key is not None
    output = dep.root / "out"

    # --- the Pose API emulator: the key comes from the environment, not the command line
    emulator_env = dep.base_env()
    emulator_env["KAKAO_POSE_EMULATOR_API_KEY"] = key
    dep.start(
        "emulator",
        [
            sys.executable,
            "-m",
            "airflow_provider_kakaopose.emulator",
            "--port",
            "0",
            "--seed",
            "11",
            "--job-waiting-s",
            str(JOB_WAITING_S),
            "--job-processing-s",
            str(JOB_PROCESSING_S),
        ],
        env=emulator_env,
    )
    emu = Emulator(dep.wait_until("the emulator to listen", lambda: emulator_url(dep.read_log("emulator")), 30), key)

    # --- Airflow: one environment for every component
    conn = {"conn_type": "kakao_pose", "host": emu.base_url, "password": key}
    env = dep.airflow_env(
        DAGS,
        {
            "AIRFLOW_CONN_KAKAO_POSE_DEFAULT": json.dumps(conn),
            "KAKAO_POSE_OUTPUT": str(output),
            "KAKAO_POSE_DEMO_VIDEOS": VIDEO,
            "KAKAO_POSE_POLL_INTERVAL": "1",
        },
    )
    dep.run("db-migrate", "db", "migrate", timeout=240)
    print(f"db migrate done at {time.monotonic() - started:.0f} s")
    dep.start_api_server()
    dep.airflow("scheduler", "scheduler", "--skip-serve-logs")
    dep.start_dag_processor()
    dep.airflow("triggerer-1", "triggerer", "--skip-serve-logs")

    dep.wait_until(
        f"{DAG_ID} to be parsed and served by the api-server",
        lambda: dep.api("GET", f"/dags/{DAG_ID}")[0] == 200,
        timeout=180,
        interval=1,
    )
    print(f"DAG visible at {time.monotonic() - started:.0f} s")
    status, body = dep.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    assert status == 200 and body["is_paused"] is False, (status, body)
    status, body = dep.api("POST", f"/dags/{DAG_ID}/dagRuns", {"dag_run_id": RUN_ID, "logical_date": LOGICAL_DATE})
    assert status == 200, (status, body)

    # --- the task submits the job and defers; the trigger runs in the (only) triggerer
    def ti() -> tuple:
        rows = dep.query(
            "SELECT state, trigger_id, try_number FROM task_instance WHERE dag_id=? AND run_id=? AND task_id=?",
            (DAG_ID, RUN_ID, TASK_ID),
        )
        return rows[0] if rows else (None, None, None)

    def fail_fast(state: str | None) -> None:
        assert state not in ("failed", "up_for_retry", "upstream_failed"), f"task instance is {state}"

    def deferred() -> tuple | None:
        state, trigger_id, _ = ti()
        fail_fast(state)
        return (state, trigger_id) if state == "deferred" and trigger_id is not None else None

    _, trigger_id = dep.wait_until("the task instance to be deferred", deferred, timeout=120)
    print(f"deferred at {time.monotonic() - started:.0f} s")
    [post] = emu.requests("POST", "/pose/job")
    parquet = output / DAG_ID / "20260102" / "keypoints.parquet"
    record = _job_record(dep, parquet)
    assert record["pending"] is None and record["unknown_submissions"] == 0
    job_id = record["job"]["job_id"]
    job_path = f"/pose/job/{job_id}"

    def trigger_row() -> tuple | None:
        rows = dep.query("SELECT classpath, kwargs, triggerer_id FROM trigger WHERE id=?", (trigger_id,))
        return rows[0] if rows else None

    [(first_triggerer,)] = dep.wait_until(
        "the first triggerer to register", lambda: dep.query(_TRIGGERERS_SQL), timeout=60
    )
    classpath, encrypted_kwargs, _ = dep.wait_until(
        "the trigger to be assigned to the first triggerer",
        lambda: (row := trigger_row()) and row[2] == first_triggerer and row,
        timeout=60,
    )
    assert classpath == "airflow_provider_kakaopose.triggers.pose.KakaoPoseJobTrigger"
    # Airflow 3.3 stores the kwargs of a task's trigger as plain JSON (the execution API does not encrypt
    # them), which is why they must never hold the key; Airflow 2.11 Fernet-encrypts them: decrypt to check.
    kwargs = encrypted_kwargs
    if not kwargs.startswith("{"):
        kwargs = Fernet(env["AIRFLOW__CORE__FERNET_KEY"]).decrypt(kwargs.encode()).decode()
    assert job_id in kwargs and key not in kwargs, "trigger kwargs must name the job, never hold the key"
    # The task itself checks the job once before deferring; more GETs are the trigger polling.
    dep.wait_until("the trigger to poll the job", lambda: len(emu.requests("GET", job_path)) >= 3, timeout=60)

    # --- kill the triggerer while the job is still processing, start a new one
    assert emu.job_status(job_id) == "processing", "the job ended before the triggerer could be killed"
    killed_at = time.monotonic()
    dep.kill("triggerer-1", signal.SIGKILL)
    print(
        f"triggerer-1 killed at {killed_at - started:.0f} s, {killed_at - post['time']:.1f} s after the submission"
        f" (gone {time.monotonic() - killed_at:.1f} s later)"
    )
    assert ti()[0] == "deferred"
    dep.airflow("triggerer-2", "triggerer", "--skip-serve-logs")

    [(second_triggerer,)] = dep.wait_until(
        "the second triggerer to register",
        lambda: dep.query(_TRIGGERERS_SQL + " AND id > ?", (first_triggerer,)),
        timeout=60,
    )

    def run_state() -> str | None:
        status, body = dep.api("GET", f"/dags/{DAG_ID}/dagRuns/{RUN_ID}")
        state = body.get("state") if status == 200 else None
        fail_fast(ti()[0])
        assert state != "failed", "the DAG run failed"
        return state if state == "success" else None

    dep.wait_until("the DAG run to succeed", run_state, timeout=150, interval=1)
    print(f"run succeeded at {time.monotonic() - started:.0f} s")

    # --- one job, one try, and the trigger ran in both triggerers
    assert [r["status"] for r in emu.requests("POST", "/pose/job")] == [post["status"]] == [200]
    state, _, try_number = ti()
    assert (state, try_number) == ("success", 1)
    # Each triggerer that ran the trigger wrote its own log beside the task's, named after its job id
    # (``attempt=1.log.trigger.<triggerer job id>.log`` on 2.11 and 3.x alike).
    task_logs = list((dep.home / "logs").glob(f"dag_id={DAG_ID}/run_id={RUN_ID}/task_id={TASK_ID}/*"))
    names = sorted(p.name for p in task_logs)
    assert any(n.endswith(f".trigger.{first_triggerer}.log") for n in names), names
    assert any(n.endswith(f".trigger.{second_triggerer}.log") for n in names), names

    # --- the Parquet landed where the DAG says, with the job's keypoints
    assert parquet.is_file(), sorted(str(p) for p in output.rglob("*"))
    [(rows, jobs, job, persons, frames, person_rows)] = (
        duckdb.connect()
        .execute(
            "SELECT count(*), count(DISTINCT job_id), any_value(job_id), max(person_idx) + 1,"
            " count(DISTINCT frame_num), count(*) FILTER (WHERE keypoint_id = 1) FROM read_parquet(?)",
            [str(parquet)],
        )
        .fetchall()
    )
    assert rows > 0 and (jobs, job, persons) == (1, job_id, PERSONS)
    assert 1 <= frames <= FRAMES and rows == 17 * person_rows

    # --- and the key never reached a log (of a component or of the task), the metadata DB (XComs, trigger
    # kwargs, rendered fields, task state store) or the Parquet output
    searched = 0
    for path in [*dep.logs.glob("*.log"), *dep.home.rglob("*"), *output.rglob("*")]:
        if path.is_file():
            searched += 1
            assert key.encode() not in path.read_bytes(), f"the API key is in {path}"
    assert any(p.suffix == ".db" for p in dep.home.rglob("*")) and searched > 5


_TRIGGERERS_SQL = "SELECT id FROM job WHERE job_type='TriggererJob' AND state='running'"


def _job_record(dep: Deployment, parquet: Path) -> dict:
    """The video task's job record (``JobRecordStore``): in the task state store on Airflow 3.3+; before 3.3
    there is none, so for a task writing a table it is a JSON file beside it (``_kakaopose/keypoints.job.json``),
    stamped with the task instance that wrote it (``run``)."""
    if HAS_TASK_STATE_STORE:
        [(stored,)] = dep.query(
            "SELECT value FROM task_state_store WHERE dag_id=? AND run_id=? AND task_id=? AND key='kakao_pose_job'",
            (DAG_ID, RUN_ID, TASK_ID),
        )
        return json.loads(stored)
    record = json.loads((parquet.parent / "_kakaopose" / "keypoints.job.json").read_text())
    assert json.loads(record.pop("run")) == [DAG_ID, RUN_ID, TASK_ID, -1], record
    return record
