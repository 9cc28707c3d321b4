"""What the operators write and where: the output folder as one dataset, one writer per output (mapped tasks),
outputs checked before anything is sent, and the leftovers of a killed try removed by the next one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import VIDEO_URL, allow_execute_in_this_thread, image_operator, video_operator

from airflow_provider_kakaopose.exceptions import KakaoPoseInputError
from airflow_provider_kakaopose.operators.pose import (
    KakaoPoseJobToParquetOperator,
    KakaoPoseVideoOperator,
)


class TI:
    """A task instance's identity, as the operators read it from the context."""

    def __init__(self, map_index: int = -1, run_id: str = "scheduled__2026-01-01", task_id: str = "t") -> None:
        self.dag_id, self.run_id, self.task_id, self.map_index = "d", run_id, task_id, map_index

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def ctx(ti: TI | None = None, *, state_store: bool = True) -> dict[str, Any]:
    """A task context; ``state_store=False`` is Airflow < 3.3 (job records go to files)."""
    from helpers import FakeStore

    return {"ti": ti or TI(), "task_state_store": FakeStore() if state_store else None}


# ------------------------------------------------------------------------------ the folder is one dataset


def test_the_output_folder_reads_as_one_dataset_of_keypoints(emulator, make_conn, tmp_path):
    """Two days of image batches (with a failure, so a non-empty errors table, and pictures) and two days of
    video tables with their job records on files (Airflow < 3.3): pandas, pyarrow and DuckDB read the folder as
    the keypoints alone; the sidecars are in ``_kakaopose/`` folders, the errors tables readable there."""
    conn_id = make_conn()
    missing = str(tmp_path / "missing.png")
    for day in ("2026-01-01", "2026-01-02"):
        images = [f"https://example.com/{day}/{n}.jpg" for n in range(3)] + [missing]
        op = image_operator(conn_id, tmp_path / "img" / f"dt={day}" / "keypoints.parquet", images, pictures=True)
        op.max_failed_ratio = 0.5
        op.execute(ctx())
        video_operator(conn_id, str(tmp_path / "vid" / f"dt={day}" / "keypoints.parquet"), pictures=True).execute(
            ctx(state_store=False)
        )
    for kind in ("img", "vid"):
        folder = tmp_path / kind
        expected = sum(pq.read_table(p).num_rows for p in folder.glob("dt=*/keypoints.parquet"))
        df = pd.read_parquet(folder)
        assert len(df) == expected > 0
        assert {"source", "frame_num", "keypoint_id", "x", "y", "dt"} <= set(df.columns)
        assert "error_type" not in df.columns
        assert pq.read_table(folder).num_rows == expected
        [(rows, days)] = duckdb.sql(
            f"SELECT count(*), count(DISTINCT dt) FROM read_parquet('{folder}/*/*.parquet', hive_partitioning=true)"
        ).fetchall()
        assert (rows, days) == (expected, 2)
        sidecars = sorted(p.name for p in (folder / "dt=2026-01-01" / "_kakaopose").iterdir())
        if kind == "img":
            assert sidecars == ["keypoints.errors.parquet", "keypoints.png", "keypoints.task.json"]
        else:
            assert sidecars == ["keypoints.gif", "keypoints.job.json", "keypoints.png", "keypoints.task.json"]
    [(failed,)] = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/img/*/_kakaopose/*.errors.parquet')"
    ).fetchall()
    assert failed == 2  # the missing image, once per day


# ------------------------------------------------------------------------------------ one writer per output


def test_a_mapped_instance_refuses_an_output_another_map_index_wrote_before_sending(emulator, make_conn, tmp_path):
    """``.partial(output_uri=same).expand(...)``: map index 0 writes; map index 1 with the same output_uri is
    refused with the fix named before any request, and map index 0's rows stay."""
    conn_id = make_conn()
    out = tmp_path / "dt=2026-01-01" / "keypoints.parquet"
    image_operator(conn_id, out, ["https://example.com/a.jpg"]).execute(ctx(TI(map_index=0)))
    rows = pq.read_table(out).to_pylist()
    before = emulator.count()
    with pytest.raises(KakaoPoseInputError, match=r"map index 0 .*ti\.map_index"):
        image_operator(conn_id, out, ["https://example.com/b.jpg"]).execute(ctx(TI(map_index=1)))
    assert emulator.count() == before
    assert pq.read_table(out).to_pylist() == rows
    # the same map index again (a retry, a cleared task), or the next run, may write it
    image_operator(conn_id, out, ["https://example.com/a.jpg"]).execute(ctx(TI(map_index=0)))
    image_operator(conn_id, out, ["https://example.com/c.jpg"]).execute(ctx(TI(map_index=1, run_id="scheduled__2")))
    assert set(pq.read_table(out)["source"].to_pylist()) == {"https://example.com/c.jpg"}


def test_mapped_instances_started_together_on_one_output_lose_no_rows_silently(emulator, make_conn, tmp_path):
    """Three mapped instances with one output_uri run at the same time: one writes, the others fail loudly
    (none reports success with its rows overwritten)."""
    emulator.configure(latency=0.2)
    conn_id = make_conn()
    out = tmp_path / "keypoints.parquet"
    barrier = threading.Barrier(3)
    results: dict[int, Any] = {}

    def instance(n: int) -> None:
        allow_execute_in_this_thread()
        op = image_operator(conn_id, out, [f"https://example.com/{n}-{k}.jpg" for k in range(3)])
        barrier.wait()
        try:
            results[n] = op.execute(ctx(TI(map_index=n)))
        except Exception as err:
            results[n] = err

    threads = [threading.Thread(target=instance, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    succeeded = [n for n, r in results.items() if isinstance(r, dict)]
    assert len(results) == 3 and len(succeeded) == 1, results
    assert all(isinstance(r, KakaoPoseInputError) for n, r in results.items() if n not in succeeded)
    written = json.loads(pq.read_schema(out).metadata[b"kakaopose:sources"])  # images without persons have no rows
    assert written == [f"https://example.com/{succeeded[0]}-{k}.jpg" for k in range(3)]


def test_a_mapped_video_instance_refuses_another_map_indexs_output_before_submitting(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    out = tmp_path / "keypoints.parquet"

    def video(n: int) -> Any:
        return video_operator(conn_id, str(out), task_id="t", video=f"{VIDEO_URL}&n={n}").execute(
            ctx(TI(map_index=n), state_store=False)
        )

    video(0)
    with pytest.raises(KakaoPoseInputError, match="map index 0"):
        video(1)
    assert emulator.count(method="POST", path="/pose/job") == 1


# ----------------------------------------------------------------------- outputs checked before sending


@pytest.mark.parametrize(
    "uri, match",
    [
        ("s3://aws_default@my-bucket/pose/keypoints.parquet", "apache-airflow-providers-amazon"),
        ("nosuch://bucket/keypoints.parquet", "nosuch"),
    ],
)
def test_an_output_without_a_filesystem_fails_before_anything_is_sent(emulator, make_conn, uri, match):
    """An ``s3://conn@bucket`` output without the Amazon provider (or any scheme without a filesystem) fails
    before the submission, the upload and the download — not after the job was paid for."""
    conn_id = make_conn()
    with pytest.raises(KakaoPoseInputError, match=f"(?s)Cannot write the output_uri.*{match}.*Nothing was sent"):
        image_operator(conn_id, uri, ["https://example.com/a.jpg"]).execute(ctx())
    video = KakaoPoseVideoOperator(
        task_id="v", video=VIDEO_URL, output_uri=uri, deferrable=False, kakao_pose_conn_id=conn_id
    )
    with pytest.raises(KakaoPoseInputError, match="Nothing was sent"):
        video.execute(ctx())
    with pytest.raises(KakaoPoseInputError, match="Nothing was sent"):
        KakaoPoseJobToParquetOperator(task_id="l", job_id="j", output_uri=uri, kakao_pose_conn_id=conn_id).execute(
            ctx()
        )
    assert emulator.requests == []


def test_an_output_that_is_a_folder_fails_before_anything_is_sent(emulator, make_conn, tmp_path):
    with pytest.raises(KakaoPoseInputError, match="is a folder"):
        image_operator(make_conn(), tmp_path, ["https://example.com/a.jpg"]).execute(ctx())
    assert emulator.requests == []


# ------------------------------------------------------------------------------- leftovers of killed tries

_KILLED_WRITER = """
import sys, time
from airflow_provider_kakaopose.tables import owned_writes, write_atomically

def write(sink):
    with open(sink, "wb") as f:
        f.write(b"x" * 1_000_000)
        f.flush()
        print("writing", flush=True)
        time.sleep(600)

with owned_writes(sys.argv[2]):
    write_atomically(sys.argv[1], write)
"""


def killed_mid_write(uri: str, owner: str) -> None:
    """Run a writer of ``uri`` in a process and SIGKILL it mid-write, as a worker dies."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), uri, owner], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        started = any(line.strip() == "writing" for line in iter(proc.stdout.readline, ""))  # Airflow may log first
        assert started, "the writer never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_the_next_try_removes_what_a_killed_try_left_half_written(emulator, make_conn, tmp_path):
    from airflow_provider_kakaopose.operators._outputs import owner_tag, run_identity

    conn_id = make_conn()
    out = tmp_path / "keypoints.parquet"
    ti = TI()
    mine = owner_tag(run_identity({"ti": ti}))
    killed_mid_write(str(out), mine)
    killed_mid_write(str(tmp_path / "_kakaopose" / "keypoints.errors.parquet"), mine)
    killed_mid_write(str(out), owner_tag(run_identity({"ti": TI(task_id="other")})))  # not this task's
    leftovers = sorted(p.name for p in tmp_path.rglob("*.tmp"))
    assert len(leftovers) == 3
    image_operator(conn_id, out, ["https://example.com/a.jpg"]).execute(ctx(ti))
    remaining = sorted(p.name for p in tmp_path.rglob("*.tmp"))
    assert len(remaining) == 1 and mine not in remaining[0]
    assert pq.read_table(out).num_rows > 0


def test_written_files_are_complete_and_carry_no_temporary_name(emulator, make_conn, tmp_path):
    from airflow_provider_kakaopose.operators._outputs import run_identity

    out = tmp_path / "keypoints.parquet"
    image_operator(make_conn(), out, ["https://example.com/a.jpg"]).execute(ctx())
    assert not list(tmp_path.rglob("*.tmp"))
    claim = json.loads((tmp_path / "_kakaopose" / "keypoints.task.json").read_text())
    assert claim["run"] == run_identity({"ti": TI()}) and claim["claimed_at"] <= time.time()
