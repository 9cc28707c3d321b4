"""Reproduce (or rule out) an abort at interpreter exit after the operator path's table flattening.

Symptom (issue 20, item 11): rarely, on a busy machine, a process that flattened tables dies at exit with
``terminate called without an active exception`` (SIGABRT, exit status 134 / -6) after all its work is done.

This script runs a child process N times. Each child does what the operator does (``JobLoader.load_job``):
the body is written into a :class:`BodySpool` in 1 MB chunks (as ``KakaoPoseHook.download_job`` does: from a
file, or ``--download`` for a real download from an emulator in its own process), then ``keypoints_reader`` +
``assign_tracks_reader`` + ``write_parquet`` to a temporary directory, the output checked (``--check``), and the
interpreter left to exit normally. Meanwhile ``--load`` busy-loop processes keep the cores busy. The parent
prints the exit statuses' histogram, ``aborts: X/N``, and in how many runs a thread of the package was still
running when the interpreter finalised (an atexit hook registered first, so run last, lists them): a daemon
thread is killed there wherever it is (a forced unwind from its next GIL take), which inside C++ code is how
such an abort happens.

    .venv/bin/python benchmarks/exit_abort.py --runs 300 --jobs 2         # the current package
    cp -r /tmp/oldtree /tmp/oldtree-exit
    .venv/bin/python benchmarks/exit_abort.py --runs 300 --jobs 2 --pythonpath /tmp/oldtree-exit   # another copy
    .venv/bin/python benchmarks/exit_abort.py --runs 100 --cores /tmp/cores --gdb   # cores of aborts, backtraces

``--cores DIR`` raises the core size limit of the children (the kernel's ``core_pattern`` decides where cores go:
as root, ``echo '/tmp/cores/core.%p.%e' > /proc/sys/kernel/core_pattern``); ``--gdb`` prints a backtrace of
every thread of each core found in DIR (needs gdb).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------------------------------ the child


def child(body_path: str, out_dir: str, base_url: str | None, job_id: str | None, key: str | None, check: str) -> None:
    import atexit
    import threading

    def alive_at_exit() -> None:  # registered first, so run last: after the package's own atexit hooks
        names = sorted(t.name for t in threading.enumerate() if t.name.startswith("kakaopose-") and t.is_alive())
        os.write(1, f"alive at exit: {','.join(names)}\n".encode())

    atexit.register(alive_at_exit)
    from airflow_provider_kakaopose.tables import BodySpool, keypoints_reader, write_parquet
    from airflow_provider_kakaopose.tracking import assign_tracks_reader

    out = os.path.join(out_dir, "keypoints.parquet")
    with BodySpool() as spool:
        if base_url is not None:
            import json

            os.environ["AIRFLOW_CONN_KAKAO_POSE_EXIT"] = json.dumps(
                {"conn_type": "kakao_pose", "host": base_url, "password": key}
            )
            from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

            with KakaoPoseHook("kakao_pose_exit") as hook:
                hook.download_job(job_id, spool)
        else:
            with open(body_path, "rb") as f:
                while chunk := f.read(1 << 20):
                    spool.write(chunk)
        reader = assign_tracks_reader(keypoints_reader(spool, source="video.mp4"))
        rows = write_parquet(reader, out)
    if rows <= 0:
        raise SystemExit(f"no rows written ({rows})")
    if check == "pandas":  # read back whole, as a script checking its output would
        from airflow_provider_kakaopose.tables import read_keypoints

        got = len(read_keypoints(out))
    else:
        import pyarrow.parquet as pq

        got = pq.read_metadata(out).num_rows
    if got != rows:
        raise SystemExit(f"row count mismatch: {got} read back, {rows} written")
    print(f"ok {rows}", flush=True)


# ------------------------------------------------------------------------------------------------ the parent


def make_body(path: str, frames: int, persons: int) -> int:
    from airflow_provider_kakaopose.emulator.synth import VideoSpec, video_result_bytes

    data = video_result_bytes("exit-abort-job", VideoSpec(frames=frames, persons=persons), key="exit-abort")
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def start_load(n: int) -> list[subprocess.Popen]:
    code = "while True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def emulator_job(frames: int, persons: int) -> tuple[object, str, str, str]:
    sys.path.insert(0, HERE)
    import requests
    from _emulator import start_emulator

    key = "exit-abort-key"
    server, base = start_emulator(key)
    url = f"https://example.com/exit.mp4?frames={frames}&persons={persons}&waiting_s=0&processing_s=0"
    headers = {"Authorization": f"KakaoAK {key}"}
    job_id = requests.post(f"{base}/pose/job", data={"video_url": url}, headers=headers, timeout=60).json()["job_id"]
    for _ in range(600):
        if requests.get(f"{base}/pose/job/{job_id}", headers=headers, timeout=300).json()["status"] == "success":
            break
        time.sleep(0.1)
    return server, base, job_id, key


def gdb_backtraces(core: str) -> str:
    cmd = ["gdb", "-batch", "-nx", "-ex", "thread apply all bt 25", sys.executable, core]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--frames", type=int, default=12000, help="video frames of the body (12,000 x 3: ~21 MB)")
    ap.add_argument("--persons", type=int, default=3)
    ap.add_argument("--load", type=int, default=2, help="busy-loop processes beside the children")
    ap.add_argument("--jobs", type=int, default=1, help="children at a time")
    ap.add_argument("--pythonpath", help="PYTHONPATH of the children (e.g. an old copy of the package)")
    ap.add_argument("--download", action="store_true", help="download the body from an emulator process")
    ap.add_argument("--cores", help="allow core files (the kernel's core_pattern decides where they go)")
    ap.add_argument("--gdb", action="store_true", help="with --cores: backtraces of the cores found there")
    ap.add_argument(
        "--check",
        choices=("metadata", "pandas"),
        default="metadata",
        help="how a child checks its output: the footer's row count, or the whole file read back (read_keypoints)",
    )
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        body, out, base, job, key, check = (None if a == "-" else a for a in args.child)
        child(body, out, base, job, key, check)
        return

    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = os.path.abspath(args.pythonpath)
    env.pop("AIRFLOW_CONN_KAKAO_POSE_EXIT", None)
    work = tempfile.mkdtemp(prefix="kakaopose-exit-")
    body_path, server, base, job_id, key = os.path.join(work, "body.json"), None, "-", "-", "-"
    if args.download:
        server, base, job_id, key = emulator_job(args.frames, args.persons)
        size = None
        print(f"emulator job {job_id} at {base}", flush=True)
    else:
        size = make_body(body_path, args.frames, args.persons)
        print(f"body: {args.frames} frames x {args.persons} persons, {size / 1e6:.1f} MB", flush=True)

    def preexec() -> None:
        if args.cores:
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    codes: collections.Counter[int] = collections.Counter()
    alive: collections.Counter[str] = collections.Counter()  # threads of ours still running at exit, per name
    runs_alive = 0
    failures: list[tuple[int, int, str]] = []
    load = start_load(args.load)
    started = time.monotonic()
    try:
        running: list[tuple[int, subprocess.Popen, str]] = []
        i = 0
        while i < args.runs or running:
            while i < args.runs and len(running) < args.jobs:
                out = tempfile.mkdtemp(dir=work)
                child_args = [body_path, out, base, job_id, key, args.check]
                cmd = [sys.executable, os.path.abspath(__file__), "--child", *child_args]
                p = subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec
                )
                running.append((i, p, out))
                i += 1
            n, p, out = running.pop(0)
            stdout, stderr = p.communicate()
            codes[p.returncode] += 1
            left = [
                n for line in stdout.splitlines() if line.startswith("alive at exit: ") for n in line[15:].split(",")
            ]
            alive.update(n for n in left if n)
            runs_alive += any(left)
            if p.returncode != 0 or not stdout.startswith("ok "):
                failures.append((n, p.returncode, (stderr or stdout)[-600:]))
                print(f"run {n}: rc {p.returncode}: {(stderr or stdout).strip()[-300:]!r}", flush=True)
            for f in glob.glob(os.path.join(out, "*")):
                os.unlink(f)
            os.rmdir(out)
            done = sum(codes.values())
            if done % 25 == 0:
                print(f"  {done}/{args.runs} runs, {time.monotonic() - started:.0f} s, rc {dict(codes)}", flush=True)
    finally:
        for p in load:
            p.kill()
            p.wait()
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
        if os.path.exists(body_path):
            os.unlink(body_path)
        os.rmdir(work)
    runs = sum(codes.values())
    aborts = codes[-6] + codes[134]
    print(f"rc histogram: {dict(sorted(codes.items()))}")
    print(f"aborts: {aborts}/{runs}  (other failures: {runs - codes[0] - aborts})")
    print(f"runs with a kakaopose thread still running at exit: {runs_alive}/{runs} {dict(alive)}")
    print(f"{time.monotonic() - started:.0f} s, PYTHONPATH={env.get('PYTHONPATH', '')!r}")
    if args.cores and args.gdb:
        for core in sorted(glob.glob(os.path.join(args.cores, "core*"))):
            print(f"==== {core}")
            print(gdb_backtraces(core))


if __name__ == "__main__":
    main()
