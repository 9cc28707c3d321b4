"""How long an image batch takes to give up on an endpoint that refuses connections (issue 21).

A ``kakao_pose`` connection whose host is a loopback port nobody listens on, with the connection's *default*
retry settings (``max_retries``, ``retry_wait_initial``, ``retry_wait_max`` from the provider's connection
fields), and ``KakaoPoseImageOperator`` batches of 30 and 2 images with the default ``max_concurrency``.
Prints the seconds until ``execute`` raised, the error class and its message, and the connection attempts
made. Run it on another checkout to compare (``PYTHONPATH=<checkout> .venv/bin/python benchmarks/unreachable.py``).

    .venv/bin/python benchmarks/unreachable.py            # 30 and 2 images: about 8 s (the code before
                                                          # issue 21: 68 s and 33 s)
    .venv/bin/python benchmarks/unreachable.py --images 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time


class _TI:
    dag_id, run_id, task_id, map_index = "bench", "manual__1", "images", -1

    def xcom_push(self, key, value):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(count: int, out: str) -> tuple[float, BaseException | None, int]:
    import urllib3.connection

    from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator

    attempts = 0
    connect = urllib3.connection.HTTPConnection._new_conn

    def counted(self):  # every TCP connection the batch tries to open
        nonlocal attempts
        attempts += 1
        return connect(self)

    urllib3.connection.HTTPConnection._new_conn = counted
    op = KakaoPoseImageOperator(
        task_id="images",
        images=[f"https://example.com/{n}.jpg" for n in range(count)],
        output_uri=f"{out}/{count}.parquet",
    )
    start = time.perf_counter()
    try:
        op.execute({"ti": _TI(), "task_state_store": None})
        error = None
    except BaseException as err:  # reported, not handled
        error = err
    finally:
        urllib3.connection.HTTPConnection._new_conn = connect
    return time.perf_counter() - start, error, attempts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="*", default=[30, 2])
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="kakaopose-bench-"))
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")  # one retry line per attempt otherwise
    host = f"http://127.0.0.1:{free_port()}"
    # No extras: the connection's default retry settings.
    os.environ["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"] = json.dumps(
        {"conn_type": "kakao_pose", "host": host, "password": "bench-key"}
    )
    from airflow_provider_kakaopose.get_provider_info import CONN_FIELDS

    defaults = {k: CONN_FIELDS[k]["schema"]["default"] for k in ("max_retries", "retry_wait_initial", "retry_wait_max")}
    print(f"endpoint {host} (nobody listens); connection defaults {defaults}")
    with tempfile.TemporaryDirectory() as out:
        for count in args.images:
            seconds, error, attempts = run(count, out)
            print(f"\n{count} images: gave up after {seconds:.1f} s, {attempts} connection attempts")
            print(f"  {type(error).__name__}: {error}")


if __name__ == "__main__":
    main()
