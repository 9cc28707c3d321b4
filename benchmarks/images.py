"""Image batch throughput against the emulator: the operator's concurrent batch vs a sequential loop.

The emulator (its own process) answers after ``--latency`` seconds and allows ``--quota`` requests per
second (more get HTTP 400 / code -10, like the service). The batch uses the connection's
``rate_limit_per_second = quota``. The quota-bound minimum is ``images / quota`` seconds; the goal is a
batch within 1.1x of it. The sequential baseline (the seed's loop: one request after another) is measured on
``--baseline-images`` images in the same run and scaled linearly to the batch size.

    .venv/bin/python benchmarks/images.py                 # 1,000 images, 300 ms, 20/s (about 80 s)
    .venv/bin/python benchmarks/images.py --images 200    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time

from _emulator import clear_recorded, recorded, start_emulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--baseline-images", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--quota", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    key = secrets.token_hex(12)
    proc, base = start_emulator(
        key,
        "--latency",
        str(args.latency),
        "--quota-per-second",
        str(args.quota),
        "--quota-mode",
        "kakao",
        "--seed",
        "1",
    )
    conn = {
        "conn_type": "kakao_pose",
        "host": base,
        "password": key,
        "extra": {"rate_limit_per_second": args.quota, "max_retries": 8, "retry_wait_initial": 0.2},
    }
    os.environ["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"] = json.dumps(conn)
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="kakaopose-bench-"))
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook
    from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator

    try:
        # Baseline: the seed's sequential loop, one image after another.
        hook = KakaoPoseHook()
        start = time.perf_counter()
        for n in range(args.baseline_images):
            hook.analyze_image(image_url=f"https://example.com/baseline/{n}.jpg")
        per_image = (time.perf_counter() - start) / args.baseline_images
        baseline = per_image * args.images

        clear_recorded(base)
        time.sleep(1.1)  # a fresh quota window
        images = [f"https://example.com/batch/{n}.jpg" for n in range(args.images)]
        with tempfile.TemporaryDirectory() as out:
            op = KakaoPoseImageOperator(
                task_id="bench", images=images, output_uri=f"{out}/k.parquet", max_concurrency=args.concurrency
            )
            start = time.perf_counter()
            summary = op.execute({"ti": None})
            batch = time.perf_counter() - start
        seen = recorded(base)
    finally:
        proc.stop()
    quota_answers = sum(1 for r in seen if r["status"] == 400)
    floor = args.images / args.quota
    print(
        f"{args.images} images, emulator latency {args.latency * 1000:.0f} ms, quota {args.quota}/s, "
        f"max_concurrency {args.concurrency}"
    )
    print(
        f"sequential baseline: {per_image * 1000:.0f} ms/image over {args.baseline_images} images "
        f"-> {baseline:.1f} s for {args.images} (scaled)"
    )
    print(
        f"concurrent batch:    {batch:.1f} s  ({summary['succeeded']} ok, {summary['failed']} failed, "
        f"{len(seen)} requests, {quota_answers} quota answers)"
    )
    print(f"quota-bound minimum: {floor:.1f} s")
    print(f"batch / minimum = {batch / floor:.3f}  (goal <= 1.1);  baseline / batch = {baseline / batch:.1f}x")


if __name__ == "__main__":
    main()
