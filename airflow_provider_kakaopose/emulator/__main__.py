"""``python -m airflow_provider_kakaopose.emulator --port 8765 --api-key KEY``: serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from airflow_provider_kakaopose.emulator.engine import ENGINE_NAMES, EngineUnavailable
from airflow_provider_kakaopose.emulator.server import QUOTA_MODES, EmulatorConfig, PoseEmulator

ENV_API_KEY = "KAKAO_POSE_EMULATOR_API_KEY"


def _parser() -> argparse.ArgumentParser:
    d = EmulatorConfig()
    p = argparse.ArgumentParser(
        prog="python -m airflow_provider_kakaopose.emulator",
        description="Serve an emulator of the Kakao Brain Pose API on loopback (see docs/emulator.md).",
    )
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host})")
    p.add_argument("--port", type=int, default=8765, help="port to bind; 0 = any free port (default 8765)")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"the only REST API key accepted (default: ${ENV_API_KEY}; unset = any 'KakaoAK <key>' is accepted)",
    )
    p.add_argument("--latency", type=float, default=d.latency, help="seconds added to every answer")
    p.add_argument("--quota-per-second", type=int, default=None, help="requests allowed per second (default: no limit)")
    p.add_argument("--quota-mode", choices=QUOTA_MODES, default=d.quota_mode, help="answer over quota: kakao or 429")
    p.add_argument("--retry-after", type=float, default=None, help="Retry-After seconds on 429/503 answers")
    p.add_argument("--fault-rate", type=float, default=d.fault_rate, help="probability of a fault per request")
    p.add_argument("--fault-kinds", default=",".join(d.fault_kinds), help="comma-separated fault kinds")
    p.add_argument("--slow-seconds", type=float, default=d.slow_seconds, help="delay of a 'slow' fault")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible faults and job ids")
    p.add_argument("--job-waiting-s", type=float, default=d.job_waiting_s, help="seconds a job stays 'waiting'")
    p.add_argument(
        "--job-processing-s", type=float, default=d.job_processing_s, help="seconds a job stays 'processing'"
    )
    p.add_argument("--job-frames", type=int, default=d.job_frames, help="frames of a video result")
    p.add_argument(
        "--callback-drop-rate", type=float, default=d.callback_drop_rate, help="share of job callbacks never sent"
    )
    p.add_argument("--callback-duplicate-rate", type=float, default=d.callback_duplicate_rate, help="share sent twice")
    p.add_argument(
        "--callback-delay-s", type=float, default=d.callback_delay_s, help="seconds from a job's end to its callback"
    )
    p.add_argument(
        "--unreachable-hosts",
        default=",".join(d.unreachable_hosts),
        help="comma-separated host patterns (fnmatch) whose videos cannot be fetched",
    )
    p.add_argument(
        "--engine",
        choices=ENGINE_NAMES,
        default=d.engine,
        help="who computes the poses: synthetic (invented, the default) or mediapipe (a real model on this CPU; "
        "needs its own environment, see `make engine` and docs/engine.md)",
    )
    p.add_argument(
        "--engine-workers",
        type=int,
        default=d.engine_workers,
        help="model threads for images and for video jobs, each (mediapipe engine; default 1)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    api_key = args.api_key or os.environ.get(ENV_API_KEY) or None
    try:
        config = EmulatorConfig(
            api_key=api_key,
            latency=args.latency,
            quota_per_second=args.quota_per_second,
            quota_mode=args.quota_mode,
            retry_after=args.retry_after,
            fault_rate=args.fault_rate,
            fault_kinds=args.fault_kinds,
            slow_seconds=args.slow_seconds,
            seed=args.seed,
            job_waiting_s=args.job_waiting_s,
            job_processing_s=args.job_processing_s,
            job_frames=args.job_frames,
            callback_drop_rate=args.callback_drop_rate,
            callback_duplicate_rate=args.callback_duplicate_rate,
            callback_delay_s=args.callback_delay_s,
            unreachable_hosts=args.unreachable_hosts,
            host=args.host,
            port=args.port,
            engine=args.engine,
            engine_workers=args.engine_workers,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    emulator = PoseEmulator(config=config)
    try:
        emulator.start()
    except EngineUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    if api_key is None:
        print("no API key set: any 'Authorization: KakaoAK <key>' is accepted", file=sys.stderr, flush=True)
    engine = "" if args.engine == "synthetic" else f" (engine: {args.engine}, {args.engine_workers} worker(s))"
    print(f"Kakao Pose emulator listening on {emulator.base_url}{engine}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
