"""Streaming a job's result: chunked bodies, downloads cut off mid-body, uploads to a local S3 server.

The streaming tracker against the whole-table one is in ``test_tracking.py`` (``assign_tracks_reader``).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import random_person

from airflow_provider_kakaopose.exceptions import KakaoPoseConnectionError, KakaoPoseError
from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook
from airflow_provider_kakaopose.operators.pose import KakaoPoseJobToParquetOperator
from airflow_provider_kakaopose.tables import (
    BodySpool,
    flatten,
    keypoints_reader,
    keypoints_table,
    scanner,
    storage,
    write_atomically,
    write_parquet,
)

SAMPLES = Path(__file__).parent / "data" / "samples"


def small_answer() -> bytes:
    """A small but complete video answer: 3 frames (one empty), 2 persons, an undetected keypoint, a gap."""
    categories = json.loads((SAMPLES / "job_success_response.json").read_bytes())["categories"]
    answer = {
        "annotations": [
            {"frame_num": 0, "objects": [random_person(31, (5,)), random_person(32, (5,))]},
            {"frame_num": 1, "objects": []},
            {"frame_num": 3, "objects": [random_person(33, (5,))]},
        ],
        "categories": categories,
        "info": {"version": "191227"},
        "job_id": "job-chunks",
        "status": "success",
        "video": {"fps": 30.0, "frames": 4, "height": 480, "width": 640},
    }
    return json.dumps(answer).encode()


@pytest.fixture
def fast_only(monkeypatch):
    """Fail if a raw body falls back to json + the Python loop (the chunked paths must not need it)."""

    def no_slow(*a, **k):
        raise AssertionError("fell back to the slow path")

    monkeypatch.setattr(flatten, "json_fallback", no_slow)


def same_table(got: pa.Table, want: pa.Table) -> None:
    assert got.schema.metadata == want.schema.metadata
    assert got.equals(want)


# ------------------------------------------------------------------------------------------ chunked bodies


def test_a_body_split_at_every_byte_gives_the_same_table(fast_only):
    body = small_answer()
    want = keypoints_table(body, source="v.mp4")
    assert want.num_rows == 3 * 17
    for i in range(len(body) + 1):
        got = keypoints_table(iter([body[:i], body[i:]]), source="v.mp4")  # an iterator of chunks (spooled)
        same_table(got, want)


def test_a_spool_written_in_two_pieces_at_every_byte_gives_the_same_table(fast_only):
    body = small_answer()
    want = keypoints_table(body)
    for i in range(len(body) + 1):
        with BodySpool() as spool:
            spool.write(body[:i])
            spool.write(body[i:])
            assert spool.size == len(body)
            same_table(keypoints_reader(spool).read_all(), want)


def test_a_body_in_one_byte_chunks_and_a_non_seekable_stream(fast_only):
    body = small_answer()
    want = keypoints_table(body)
    same_table(keypoints_table(body[i : i + 1] for i in range(len(body))), want)

    class Stream(io.RawIOBase):  # a socket-like stream: no seek, short reads
        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buf) -> int:
            n = min(len(buf), 7, len(body) - self.pos)
            buf[:n] = body[self.pos : self.pos + n]
            self.pos += n
            return n

    same_table(keypoints_table(io.BufferedReader(Stream(), buffer_size=5)), want)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_a_seekable_file_scanned_in_small_pieces(fast_only, monkeypatch, tmp_path, chunk):
    """A file is read in pieces of ``SCAN_CHUNK`` bytes (never whole): any piece size gives the same table."""
    body = small_answer()
    want = keypoints_table(body)
    monkeypatch.setattr(scanner, "SCAN_CHUNK", chunk)
    monkeypatch.setattr(scanner, "PIECE_BYTES", chunk)  # rows parsed a few annotations at a time
    path = tmp_path / "job.json"
    path.write_bytes(body)
    with open(path, "rb") as f:  # a real file: read with pread
        same_table(keypoints_table(f), want)
    same_table(keypoints_table(io.BytesIO(body)), want)  # no file descriptor: seek + read


def test_an_emptied_spool_starts_over():
    body = small_answer()
    with BodySpool() as spool:
        spool.write(body[: len(body) // 2])  # a download cut off half-way
        spool.seek(0)
        spool.truncate()
        assert spool.size == 0
        spool.write(body)
        same_table(keypoints_reader(spool).read_all(), keypoints_table(body))
        with pytest.raises(io.UnsupportedOperation):
            spool.seek(3)


def test_the_spools_pre_scan_thread_sees_every_chunk_and_ends():
    """The pre-scan runs in a thread: a caller's buffer reused after write() is not scanned changed, the scan
    is complete when the body is read, and no thread outlives the spool (closed, read, or dropped unclosed)."""
    import gc
    import threading

    def scanners() -> int:
        return sum(t.name == "kakaopose-prescan" for t in threading.enumerate())

    body = small_answer()
    before = scanners()
    with BodySpool() as spool:
        buf = bytearray(5)
        for i in range(0, len(body), 5):
            piece = body[i : i + 5]
            buf[: len(piece)] = piece
            spool.write(memoryview(buf)[: len(piece)])
            buf[:] = b"#####"  # the caller reuses its buffer at once
        _body, prescan = spool.body()
        assert prescan is not None and len(prescan.result()[0]) == 3  # the annotations, scanned as they went by
        assert scanners() == before  # body() waited for the scan and ended the thread
        same_table(keypoints_reader(spool).read_all(), keypoints_table(body))
    dropped = BodySpool()
    dropped.write(body[:100])
    assert scanners() == before + 1
    del dropped
    gc.collect()
    for _ in range(100):
        if scanners() == before:
            break
        time.sleep(0.01)
    assert scanners() == before  # the thread holds no reference to the spool: deleting it closes it


def test_a_spool_left_open_does_not_hang_the_interpreters_exit():
    """Spools still open at exit (one read, one mid-write with its scanner thread) are closed by the
    interpreter's finalisation without joining or starting threads (which would hang there)."""
    import subprocess
    import sys

    code = (
        "from airflow_provider_kakaopose.tables import BodySpool\n"
        "a, b = BodySpool(), BodySpool()\n"
        "chunk = b'{\"annotations\": [' + b' ' * (1 << 20)\n"
        "for _ in range(20):\n"
        "    a.write(chunk); b.write(chunk)\n"
        "a.body()\n"
        "print('written')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "written" in out.stdout, out.stderr


# ------------------------------------------------------------------------------------------ cut downloads


def finished_job(conn_id: str, video_url: str = "https://example.com/v.mp4?frames=40&persons=3") -> str:
    hook = KakaoPoseHook(conn_id)
    job_id = hook.submit_video_job(video_url=video_url)
    for _ in range(200):
        if hook.get_job_status(job_id)["status"] == "success":
            return job_id
        time.sleep(0.05)
    raise AssertionError("the emulator's job did not finish")


def test_a_download_cut_off_mid_body_is_retried_from_the_start(emulator, make_conn):
    conn_id = make_conn()
    job_id = finished_job(conn_id)
    with KakaoPoseHook(conn_id) as hook:
        whole = hook.get_job_bytes(job_id)
        emulator.script_faults(["cut"])
        with BodySpool() as spool:
            assert hook.download_job(job_id, spool) == len(whole) == spool.size
            same_table(keypoints_reader(spool).read_all(), keypoints_table(whole))
    gets = [r for r in emulator.requests if r.path == f"/pose/job/{job_id}"]
    assert [r.fault for r in gets[-2:]] == ["cut", None]


def test_a_download_into_a_plain_file_is_emptied_per_attempt(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    job_id = finished_job(conn_id)
    emulator.script_faults(["cut", "cut"])
    with KakaoPoseHook(conn_id) as hook, open(tmp_path / "body.json", "w+b") as f:
        size = hook.download_job(job_id, f)
        f.seek(0)
        assert f.read() == hook.get_job_bytes(job_id) and size == f.tell()


class WriteOnly:
    """A sink with nothing but ``write``: it can be neither rewound nor emptied."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)


class PipeSink:
    """The write end of a real pipe (``seek`` raises ``ESPIPE``), drained by a thread into ``data``."""

    def __init__(self) -> None:
        import threading

        read_fd, write_fd = os.pipe()
        self.file = open(write_fd, "wb")  # noqa: SIM115 - closed by received()
        self.data = b""

        def drain() -> None:
            with open(read_fd, "rb") as r:
                self.data = r.read()

        self._reader = threading.Thread(target=drain, daemon=True)
        self._reader.start()

    def received(self) -> bytes:
        self.file.close()
        self._reader.join(10)
        return self.data


def non_seekable(kind: str) -> tuple[object, object]:
    """``(sink, received)``: a sink that cannot be emptied, and a function returning the bytes it got."""
    if kind == "pipe":
        pipe = PipeSink()
        return pipe.file, pipe.received
    sink = WriteOnly()
    return sink, lambda: bytes(sink.data)


@pytest.mark.parametrize("kind", ["write-only", "pipe"])
@pytest.mark.parametrize("fault", ["503", "500", "drop"])
def test_a_download_into_a_non_seekable_sink_is_retried_while_nothing_was_written(emulator, make_conn, fault, kind):
    """A 5xx answer or a connection dropped before the answer writes nothing into the sink: retried, even
    into a sink that cannot be emptied (a pipe, an object with only ``write``)."""
    conn_id = make_conn()
    job_id = finished_job(conn_id)
    with KakaoPoseHook(conn_id) as hook:
        whole = hook.get_job_bytes(job_id)
        sink, received = non_seekable(kind)
        emulator.script_faults([fault, fault])
        assert hook.download_job(job_id, sink) == len(whole)  # type: ignore[arg-type]
    assert received() == whole
    gets = [r for r in emulator.requests if r.path == f"/pose/job/{job_id}"]
    assert [r.fault for r in gets[-3:]] == [fault, fault, None]


@pytest.mark.parametrize("kind", ["write-only", "pipe"])
@pytest.mark.parametrize("faults", [["cut"], ["503", "cut"]], ids=["cut", "503-then-cut"])
def test_a_cut_download_into_a_non_seekable_sink_fails_clearly_and_is_not_retried(emulator, make_conn, faults, kind):
    """Once bytes went into a sink that cannot be emptied, a break is not retried (the retry would append a
    second copy): the error says how many bytes were written and why it cannot start over."""
    conn_id = make_conn()
    # ~3.5 MB: the cut (half-way) comes after whole 1 MiB chunks were written (a short last read writes nothing)
    job_id = finished_job(conn_id, "https://example.com/v.mp4?frames=2000&persons=3")
    with KakaoPoseHook(conn_id) as hook:
        whole = hook.get_job_bytes(job_id)
        emulator.clear_requests()
        sink, received = non_seekable(kind)
        emulator.script_faults(faults)
        with pytest.raises(KakaoPoseConnectionError) as caught:
            hook.download_job(job_id, sink)  # type: ignore[arg-type]
    got = received()
    assert 0 < len(got) < len(whole) and whole.startswith(got)  # the first half went into the sink
    err = caught.value
    message = str(err)
    assert f"cut off after {len(got)} bytes" in message, message
    assert "cannot be emptied" in message and "not retried" in message, message
    assert err.retryable is False and err.attempts == len(faults) and err.status_code == 200
    assert [r.fault for r in emulator.requests if r.path == f"/pose/job/{job_id}"] == faults  # no further attempt


def test_the_operator_survives_a_cut_download_and_writes_nothing_half(emulator, make_conn, tmp_path):
    from helpers import context

    conn_id = make_conn()
    job_id = finished_job(conn_id)
    want_path = tmp_path / "want.parquet"
    with KakaoPoseHook(conn_id) as hook:
        from airflow_provider_kakaopose.tracking import assign_tracks

        write_parquet(assign_tracks(keypoints_table(hook.get_job_bytes(job_id), source="v")), want_path)
    want = pq.read_table(want_path)

    out = tmp_path / "out" / "keypoints.parquet"
    emulator.script_faults(["cut"])
    summary = KakaoPoseJobToParquetOperator(
        task_id="l", job_id=job_id, output_uri=str(out), source="v", kakao_pose_conn_id=conn_id
    ).execute(context())
    got = pq.read_table(out)
    assert got.equals(want) and summary["rows"] == want.num_rows
    assert summary["tracks"] == len(pc_unique(want["track_id"]))

    # No retries left: the task fails and nothing is visible at the output (no file, no temporary file).
    out2 = tmp_path / "out2" / "keypoints.parquet"
    no_retry = make_conn(max_retries=0)
    emulator.script_faults(["cut"])
    with pytest.raises(KakaoPoseError):
        KakaoPoseJobToParquetOperator(
            task_id="l", job_id=job_id, output_uri=str(out2), source="v", kakao_pose_conn_id=no_retry
        ).execute(context())
    assert not out2.exists()
    assert os.listdir(out2.parent) == ["_kakaopose"]  # no temporary file; the claim only, out of the dataset
    assert os.listdir(out2.parent / "_kakaopose") == ["keypoints.task.json"]


def pc_unique(col: pa.ChunkedArray) -> list:
    return [v for v in set(col.to_pylist()) if v is not None]


# ------------------------------------------------------------------------------------------ local S3 server

BUCKET = "kakaopose-test"


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a loopback port (a real HTTP server; nothing leaves the machine)."""
    from helpers import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A boto3 client on the local server, a fresh bucket, and s3:// URIs resolved to that server."""
    import boto3
    import s3fs

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    for up in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=up["Key"], UploadId=up["UploadId"])
    client.delete_bucket(Bucket=BUCKET)
    s3fs.S3FileSystem.clear_instance_cache()


def keys(client) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def uploads(client) -> list[dict]:
    return client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


PART = 5 << 20  # S3's smallest part


def test_a_large_write_goes_up_in_parts_and_appears_only_when_complete(s3, monkeypatch):
    monkeypatch.setattr(storage, "UPLOAD_PART_SIZE", PART)
    data = np.random.default_rng(0).bytes(3 * PART + 12345)  # four parts
    seen: list[tuple[list[str], int]] = []

    def write(f) -> int:
        for i in range(0, len(data), 1 << 20):
            f.write(data[i : i + (1 << 20)])
            if i == 2 * PART + (1 << 20):  # two parts are up: an upload in progress, nothing at the key
                seen.append((keys(s3), len(uploads(s3))))
        return len(data)

    assert write_atomically(f"s3://{BUCKET}/big/file.bin", write) == len(data)
    assert seen == [([], 1)]
    assert keys(s3) == ["big/file.bin"] and uploads(s3) == []
    got = s3.get_object(Bucket=BUCKET, Key="big/file.bin")
    assert got["Body"].read() == data
    parts = s3.head_object(Bucket=BUCKET, Key="big/file.bin", PartNumber=1)
    assert parts["PartsCount"] == 4 and parts["ContentLength"] == PART


def test_a_write_failing_mid_way_leaves_nothing_at_the_key(s3, monkeypatch):
    monkeypatch.setattr(storage, "UPLOAD_PART_SIZE", PART)
    s3.put_object(Bucket=BUCKET, Key="kept.bin", Body=b"the old file")
    chunk = np.random.default_rng(1).bytes(1 << 20)

    def write(f) -> None:
        for _ in range(12):  # two parts uploaded, a third buffered
            f.write(chunk)
        assert len(uploads(s3)) == 1
        raise RuntimeError("the producer failed")

    for key in ("new.bin", "kept.bin"):
        with pytest.raises(RuntimeError, match="the producer failed"):
            write_atomically(f"s3://{BUCKET}/{key}", write)
    assert keys(s3) == ["kept.bin"]  # nothing new appeared; the old object is untouched
    assert s3.get_object(Bucket=BUCKET, Key="kept.bin")["Body"].read() == b"the old file"
    assert uploads(s3) == []  # the multipart uploads were aborted, not left to bill storage


def test_parquet_streams_to_s3_and_a_failing_stream_leaves_nothing(s3, monkeypatch):
    monkeypatch.setattr(storage, "UPLOAD_PART_SIZE", PART)
    rng = np.random.default_rng(2)
    n = 1_500_000  # ~18 MB of incompressible doubles: several parts
    table = pa.table({"x": rng.random(n), "y": rng.random(n)})
    batches = table.to_batches(max_chunksize=100_000)
    reader = pa.RecordBatchReader.from_batches(table.schema, iter(batches))
    assert write_parquet(reader, f"s3://{BUCKET}/t/keypoints.parquet", row_group_size=200_000) == n
    body = s3.get_object(Bucket=BUCKET, Key="t/keypoints.parquet")["Body"].read()
    assert pq.read_table(io.BytesIO(body)).equals(table)
    assert s3.head_object(Bucket=BUCKET, Key="t/keypoints.parquet", PartNumber=1)["PartsCount"] >= 3

    def failing():
        yield from batches[:10]
        raise KakaoPoseError("frame 123: not a person")

    reader = pa.RecordBatchReader.from_batches(table.schema, failing())
    with pytest.raises(KakaoPoseError, match="frame 123"):
        write_parquet(reader, f"s3://{BUCKET}/t/broken.parquet", row_group_size=200_000)
    assert keys(s3) == ["t/keypoints.parquet"] and uploads(s3) == []


def test_a_small_keypoints_table_to_s3(s3):
    table = keypoints_table(small_answer(), source="v.mp4")
    assert write_parquet(table, f"s3://{BUCKET}/small.parquet") == table.num_rows
    body = s3.get_object(Bucket=BUCKET, Key="small.parquet")["Body"].read()
    same_table(pq.read_table(io.BytesIO(body)), table)
    assert keys(s3) == ["small.parquet"] and uploads(s3) == []


def test_the_next_try_aborts_the_multipart_uploads_a_killed_try_left(s3, emulator, make_conn):
    """A worker killed mid-upload leaves a pending multipart upload (billed until aborted): the next try of the
    task aborts those for its own keys, and leaves another key's alone."""
    from helpers import context

    from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator

    for key in ("pose/keypoints.parquet", "pose/_kakaopose/keypoints.errors.parquet", "other/keypoints.parquet"):
        upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)
        s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * (5 << 20))
    assert len(uploads(s3)) == 3
    time.sleep(1.1)  # S3 stamps uploads to the second: the next try starts after they were initiated
    KakaoPoseImageOperator(
        task_id="t",
        images=["https://example.com/a.jpg"],
        output_uri=f"s3://{BUCKET}/pose/keypoints.parquet",
        kakao_pose_conn_id=make_conn(),
    ).execute(context())
    assert [u["Key"] for u in uploads(s3)] == ["other/keypoints.parquet"]
    assert "pose/keypoints.parquet" in keys(s3)


# ------------------------------------------------------------------- threads at the interpreter's exit (issue 20)

#: Child prologue: ``ours()`` lists the package's threads still running (by the OS's account too: a join()
#: interrupted by a signal can leave Python believing a running thread ended); an atexit hook registered before
#: the package is imported runs after the package's own (atexit runs last-in first-out) and prints them just
#: before the interpreter finalises (a daemon thread alive then is killed wherever it is: inside Arrow that can
#: abort the process).
_EXIT_PROBE = """
import atexit, os, sys, threading, time

def ours():
    def running(t):
        tid = getattr(t, "native_id", None)
        return t.is_alive() or (tid is not None and os.path.exists(f"/proc/self/task/{tid}"))
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("kakaopose-") and running(t))

atexit.register(lambda: os.write(1, f"alive at exit: {ours()}\\n".encode()))
"""


def run_exit_probe(code: str, *args: str) -> tuple[str, float]:
    """Run ``_EXIT_PROBE + code`` in a fresh interpreter; its stdout (asserting exit status 0) and run time."""
    import subprocess
    import sys

    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _EXIT_PROBE + code, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    return out.stdout, time.monotonic() - started


def test_the_operator_paths_background_close_ends_before_the_interpreter_exits(tmp_path):
    """The operator's path (spool, keypoints_reader, assign_tracks_reader, write_parquet) closes a large spool in
    a background thread; a process that exits right after must wait for it (an atexit hook joins it), not leave
    it running into the interpreter's teardown, where a daemon thread is killed mid-call. The close is made slow
    here so that it is certainly still running when the main thread reaches the exit."""
    source = tmp_path / "answer.json"
    source.write_bytes(small_answer())
    code = """
import tempfile
from airflow_provider_kakaopose.tables import body, keypoints_reader, write_parquet
from airflow_provider_kakaopose.tracking import assign_tracks_reader

class SlowClose:  # the kernel freeing a large file's cached pages, made slow
    def __init__(self, f):
        self.f = f
    def __getattr__(self, name):
        return getattr(self.f, name)
    def close(self):
        time.sleep(0.5)
        self.f.close()
        os.write(1, b"spool file closed\\n")

real = tempfile.TemporaryFile
tempfile.TemporaryFile = lambda *a, **k: SlowClose(real(*a, **k))
body._BACKGROUND_CLOSE_BYTES = 0  # closed in the background, however small
with body.BodySpool() as spool:
    with open(sys.argv[1], "rb") as f:
        spool.write(f.read())
    rows = write_parquet(assign_tracks_reader(keypoints_reader(spool, source="v.mp4")), sys.argv[2])
print("rows", rows, "closing in the background:", ours(), flush=True)
"""
    out, took = run_exit_probe(code, str(source), str(tmp_path / "k.parquet"))
    assert "closing in the background: ['kakaopose-spool-close']" in out, out
    assert "spool file closed" in out, out  # the close ran to its end...
    assert "alive at exit: []" in out, out  # ...before the interpreter finalised
    assert out.index("spool file closed") < out.index("alive at exit")
    assert took < 60
    assert pq.read_table(tmp_path / "k.parquet").num_rows == 3 * 17


def test_a_spool_left_open_mid_write_has_its_pre_scan_ended_before_the_interpreter_exits():
    """A spool still being written at exit (its pre-scan thread running) has that thread ended by the atexit hook,
    not killed in the interpreter's teardown; the exit neither hangs nor fails, and the spool is closed by it."""
    code = """
from airflow_provider_kakaopose.tables import BodySpool
spool = BodySpool()
chunk = b'{"annotations": [' + b' ' * (1 << 20)
for _ in range(8):
    spool.write(chunk)
print("scanning:", ours(), flush=True)
"""
    out, took = run_exit_probe(code)
    assert "scanning: ['kakaopose-prescan']" in out, out
    assert "alive at exit: []" in out, out
    assert took < 60


def test_an_interrupted_parquet_write_waits_for_its_writer_thread(tmp_path):
    """A signal handler raising while write_parquet waits for its writer thread (Ctrl-C, a task's SIGTERM): the
    interruption is raised once the thread ended, so that it never writes on into the closed ParquetWriter nor
    runs on inside Arrow into the interpreter's teardown."""
    code = """
import signal
import pyarrow as pa
import pyarrow.parquet as pq
from airflow_provider_kakaopose.tables import write_parquet

real = pq.ParquetWriter.write_table
def slow_write_table(self, *a, **k):  # a row group taking its time
    time.sleep(1.0)
    return real(self, *a, **k)
pq.ParquetWriter.write_table = slow_write_table

def interrupt(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupt)
table = pa.table({"x": list(range(1000))})
reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=100))
signal.setitimer(signal.ITIMER_REAL, 0.3)  # while the writer thread writes (the main thread waits for it)
try:
    write_parquet(reader, sys.argv[1])
except KeyboardInterrupt:
    print("interrupted; writer threads:", ours(), flush=True)
"""
    out, _ = run_exit_probe(code, str(tmp_path / "k.parquet"))
    assert "interrupted; writer threads: []" in out, out
    assert "alive at exit: []" in out, out
    assert not (tmp_path / "k.parquet").exists()  # interrupted: nothing published


def test_a_spool_written_on_after_the_exit_hook_ran_starts_no_thread_and_gives_the_same_table(tmp_path):
    """Spools used by atexit code that runs after the package's hook (or by a daemon thread of the caller's) start
    no thread the exit would no longer wait for: the pre-scan it ended is dropped (the body is scanned from the
    file), large spools close in the caller's thread, and the table is the same."""
    source = tmp_path / "answer.json"
    source.write_bytes(small_answer())
    code = """
from airflow_provider_kakaopose.tables import body, keypoints_reader, keypoints_table
raw = open(sys.argv[1], "rb").read()
body._BACKGROUND_CLOSE_BYTES = 0
with body.BodySpool() as spool:
    spool.write(raw[:100])
    body._join_threads_at_exit()  # the interpreter's exit begins: the running pre-scan is ended
    spool.write(raw[100:])
    print("threads after the hook:", ours(), flush=True)
    same = keypoints_reader(spool).read_all().equals(keypoints_table(raw))
print("same table:", same, "threads after closing:", ours(), flush=True)
"""
    out, _ = run_exit_probe(code, str(source))
    assert "threads after the hook: []" in out, out
    assert "same table: True threads after closing: []" in out, out
    assert "alive at exit: []" in out, out
