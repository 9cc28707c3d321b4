"""Throughput of the local pose engine (MediaPipe BlazePose on this CPU): called directly vs through the emulator.

Measures, on this machine:

1. images/s on the two sample photos (PNG bytes of ``astronaut`` and ``camera``, 512 x 512, alternating):
   the baseline is ``MediaPipeEngine.image_persons`` called in this process, one image after another, after a
   warm-up; then ``POST /pose`` (multipart ``file``) to the emulator (``PoseEmulator(engine="mediapipe")``, run
   in this process) from ``--clients`` concurrent connections, for ``engine_workers`` = 1 and 2. Each row gives
   the ratio to the baseline of the same run.
2. video frames/s on the sliding-astronaut video (960 x 540, 30 fps, smoothing on): ``video_annotations``
   called directly, then the server's job path (``POST /pose/job`` -> ``GET /pose/job/{id}`` until success);
   each path first runs a 15-frame clip as a warm-up.
3. the wall time of a 30 s, 30 fps job (900 frames) through the server, from submit to the poll that sees
   ``success``, the frames/s it implies, and the latency of the ``GET /pose/job/{id}`` polls (one every 0.2 s)
   while the job ran: the server must stay responsive while the model is busy.

Each row also shows how busy the CPU was: the cores this process kept busy (its CPU time / wall time) and those
all other processes did (from /proc/stat; another job on the machine skews the numbers, so it is shown), and
this process's CPU time per image or frame, which such contention changes less than the rates.

It must run in the engine's environment (mediapipe, OpenCV, scikit-image; ``make engine-install``):

    .venv-engine/bin/python benchmarks/engine.py            # full run (a few minutes)
    .venv-engine/bin/python benchmarks/engine.py --quick    # fewer images, short videos (under a minute)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Any key is accepted by an emulator started without one.
AUTH = {"Authorization": "KakaoAK benchmark"}
PHOTOS = ("astronaut", "camera")
POLL_EVERY = 0.2
#: Frames of the short video each video path runs once before it is timed.
WARMUP_FRAMES = 15
#: Modules the engine's environment has and the Airflow one lacks (mediapipe first: the usual culprit).
ENGINE_MODULES = ("mediapipe", "cv2", "skimage", "aiohttp")


# ---------------------------------------------------------------- CPU usage


def _machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (/proc/stat), or ``None`` where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """Wall time, this process's CPU time and the whole machine's busy CPU time over a ``with`` block."""

    wall: float = 0.0
    cpu: float = 0.0
    machine: float | None = None

    def cores(self) -> str:
        """Cores kept busy by ``this process / all other processes``, e.g. ``0.95 / 0.03``."""
        if self.wall <= 0:
            return "-"
        others = f"{max(self.machine - self.cpu, 0.0) / self.wall:.2f}" if self.machine is not None else "?"
        return f"{self.cpu / self.wall:.2f} / {others}"


@contextmanager
def measure() -> Iterator[Usage]:
    usage = Usage()
    wall0, cpu0, busy0 = time.perf_counter(), time.process_time(), _machine_busy_seconds()
    try:
        yield usage
    finally:
        usage.wall = time.perf_counter() - wall0
        usage.cpu = time.process_time() - cpu0  # all threads of this process
        busy1 = _machine_busy_seconds()
        usage.machine = busy1 - busy0 if busy0 is not None and busy1 is not None else None


# ---------------------------------------------------------------- results


@dataclass
class ImageRun:
    label: str
    images: int
    found: int  # images in which a person was found
    usage: Usage
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.images / self.usage.wall


@dataclass
class VideoRun:
    label: str
    frames: int
    found: int  # frames in which a person was found
    usage: Usage
    video: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.frames / self.usage.wall


@dataclass
class JobRun(VideoRun):
    upload: float = 0.0  # seconds until POST /pose/job answered
    first_seen: dict[str, float] = field(default_factory=dict)  # status -> seconds after submit
    poll_latencies: list[float] = field(default_factory=list)  # polls answered waiting / processing
    final_poll: float = 0.0  # the poll that fetched the whole result


# ---------------------------------------------------------------- measurements


def png_bytes() -> list[bytes]:
    """The sample photos as PNG bytes (what a client would upload)."""
    import cv2

    from airflow_provider_kakaopose.emulator.samples import photo

    return [cv2.imencode(".png", cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR))[1].tobytes() for name in PHOTOS]


def direct_images(engine: Any, pngs: list[bytes], count: int, warmup: int) -> ImageRun:
    """The baseline: ``image_persons`` in this thread, one image after another."""
    for n in range(warmup):
        engine.image_persons(pngs[n % len(pngs)])
    found = 0
    latencies = []
    with measure() as usage:
        for n in range(count):
            start = time.perf_counter()
            found += bool(engine.image_persons(pngs[n % len(pngs)]))
            latencies.append(time.perf_counter() - start)
    return ImageRun("direct (in-process)", count, found, usage, latencies)


async def _post_image(session: Any, base: str, data: bytes, name: str) -> list[dict]:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", data, filename=f"{name}.png", content_type="image/png")
    async with session.post(f"{base}/pose", data=form, headers=AUTH) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"POST /pose answered {resp.status}: {body}")
        return body


async def _server_images(
    base: str, pngs: list[bytes], count: int, clients: int, warmup: int
) -> tuple[int, list[float], Usage]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def run(total: int, latencies: list[float], found: list[int]) -> None:
            taken = 0

            async def client() -> None:
                nonlocal taken
                while taken < total:
                    n, taken = taken, taken + 1
                    start = time.perf_counter()
                    persons = await _post_image(session, base, pngs[n % len(pngs)], PHOTOS[n % len(PHOTOS)])
                    latencies.append(time.perf_counter() - start)
                    found.append(bool(persons))

            await asyncio.gather(*(client() for _ in range(clients)))

        # Warm-up: enough concurrent requests for every engine worker thread to build its graph.
        await run(warmup, [], [])
        latencies: list[float] = []
        found: list[int] = []
        with measure() as usage:
            await run(count, latencies, found)
        return sum(found), latencies, usage


def server_images(workers: int, pngs: list[bytes], count: int, clients: int) -> ImageRun:
    """``POST /pose`` from ``clients`` concurrent connections to an emulator with ``workers`` model threads."""
    from airflow_provider_kakaopose.emulator import PoseEmulator

    with PoseEmulator(engine="mediapipe", engine_workers=workers) as emu:
        found, latencies, usage = asyncio.run(_server_images(emu.base_url, pngs, count, clients, 2 * clients))
    return ImageRun(f"server, engine_workers={workers}", count, found, usage, latencies)


def direct_video(engine: Any, path: str) -> VideoRun:
    with measure() as usage:
        annotations, video = engine.video_annotations(path, smoothing=True)
    found = sum(1 for a in annotations if a["objects"])
    return VideoRun("direct video_annotations", len(annotations), found, usage, video)


async def _job(base: str, path: str, label: str, timeout: float) -> JobRun:
    """Submit ``path`` as a job, poll it every :data:`POLL_EVERY` s until success; time everything."""
    import aiohttp

    data = Path(path).read_bytes()
    run = JobRun(label, 0, 0, Usage())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        with measure() as usage:
            start = time.perf_counter()
            form = aiohttp.FormData()
            form.add_field("file", data, filename=Path(path).name, content_type="video/mp4")
            form.add_field("smoothing", "true")
            async with session.post(f"{base}/pose/job", data=form, headers=AUTH) as resp:
                answer = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"POST /pose/job answered {resp.status}: {answer}")
            job_id = answer["job_id"]
            run.upload = time.perf_counter() - start
            due = time.perf_counter()
            while True:
                due += POLL_EVERY  # a fixed schedule: a slow answer does not shift the next polls
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                sent = time.perf_counter()
                async with session.get(f"{base}/pose/job/{job_id}", headers=AUTH) as resp:
                    body = await resp.json()
                latency = time.perf_counter() - sent
                status = body.get("status")
                run.first_seen.setdefault(status, sent - start)
                if status in ("waiting", "processing"):
                    run.poll_latencies.append(latency)
                elif status == "success":
                    run.final_poll = latency
                    break
                else:
                    raise RuntimeError(f"job {job_id} ended {status}: {body.get('description')}")
                if sent - start > timeout:
                    raise RuntimeError(f"job {job_id} still {status} after {timeout:.0f} s")
    run.usage = usage
    run.frames = len(body["annotations"])
    run.found = sum(1 for a in body["annotations"] if a["objects"])
    run.video = body["video"]
    return run


def server_job(base: str, path: str, label: str, timeout: float = 900.0) -> JobRun:
    return asyncio.run(_job(base, path, label, timeout))


# ---------------------------------------------------------------- output


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def print_images(runs: list[ImageRun], clients: int) -> None:
    base = runs[0].rate
    print(
        f"\n1. Images: PNG 512x512 ({' / '.join(PHOTOS)}, alternating), {runs[0].images} per row; "
        f"server rows from {clients} concurrent client connections"
    )
    print(
        f"   {'path':<26} {'images/s':>9} {'vs direct':>10} {'latency p50':>12} {'CPU/image':>10}"
        f" {'cores self/others':>18}  person"
    )
    for r in runs:
        p50 = ms(statistics.median(r.latencies)) if r.latencies else "-"
        print(
            f"   {r.label:<26} {r.rate:>9.2f} {r.rate / base:>9.2f}x {p50:>12} {ms(r.usage.cpu / r.images):>10}"
            f" {r.usage.cores():>18}  {r.found}/{r.images}"
        )


def print_videos(runs: list[VideoRun]) -> None:
    v = runs[0].video
    print(
        f"\n2. Video: the sliding astronaut, {v['width']}x{v['height']} at {v['fps']} fps, {runs[0].frames} frames, "
        "smoothing on"
    )
    print(
        f"   {'path':<34} {'frames/s':>9} {'wall':>8} {'vs direct':>10} {'CPU/frame':>10} {'cores self/others':>18}"
        "  person"
    )
    for r in runs:
        print(
            f"   {r.label:<34} {r.rate:>9.2f} {r.usage.wall:>7.1f}s {r.rate / runs[0].rate:>9.2f}x"
            f" {ms(r.usage.cpu / r.frames):>10} {r.usage.cores():>18}  {r.found}/{r.frames}"
        )


def print_long_job(run: JobRun) -> None:
    v = run.video
    seconds = run.frames / float(v["fps"])
    print(
        f"\n3. A {seconds:.0f} s video job through the server: {run.frames} frames, {v['width']}x{v['height']} "
        f"at {v['fps']} fps, smoothing on (engine_workers=1)"
    )
    print(
        f"   submit -> success: {run.usage.wall:.1f} s  = {run.rate:.2f} frames/s "
        f"({run.usage.wall / seconds:.2f}x the video's length)"
    )
    seen = ", ".join(f"{status} at {t:.1f} s" for status, t in run.first_seen.items())
    print(f"   upload {ms(run.upload)}; first seen: {seen}; person in {run.found}/{run.frames} frames")
    polls = run.poll_latencies
    if polls:
        print(
            f"   GET /pose/job/{{id}} every {POLL_EVERY} s while running: {len(polls)} polls, "
            f"median {ms(statistics.median(polls))}, worst {ms(max(polls))}; "
            f"the final poll (whole result) {ms(run.final_poll)}"
        )
    print(f"   CPU: {ms(run.usage.cpu / run.frames)} per frame; cores busy, this process / others: {run.usage.cores()}")


# ---------------------------------------------------------------- main


def check_environment() -> None:
    """Exit with a pointer to ``make engine-install`` unless this Python has the engine's packages."""
    missing = [m for m in ENGINE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"error: {sys.executable} lacks {', '.join(missing)}: this benchmark runs in the engine's environment.\n"
            "  make engine-install && .venv-engine/bin/python benchmarks/engine.py",
            file=sys.stderr,
        )
        sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="24 images per row, 60- and 90-frame videos")
    parser.add_argument("--images", type=int, default=None, help="images per row (default 150; --quick 24)")
    parser.add_argument("--video-frames", type=int, default=None, help="frames of part 2 (default 300; --quick 60)")
    parser.add_argument("--job-frames", type=int, default=None, help="frames of part 3 (default 900; --quick 90)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client connections for images")
    args = parser.parse_args()
    images = args.images or (24 if args.quick else 150)
    video_frames = args.video_frames or (60 if args.quick else 300)
    job_frames = args.job_frames or (90 if args.quick else 900)

    check_environment()
    # protobuf's deprecation warning, raised by mediapipe on every graph run
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype")
    from airflow_provider_kakaopose.emulator import PoseEmulator
    from airflow_provider_kakaopose.emulator.engine import EngineUnavailable, MediaPipeEngine
    from airflow_provider_kakaopose.emulator.samples import write_slide_video

    try:
        engine = MediaPipeEngine()
    except EngineUnavailable as err:
        print(f"error: {err}\n  make engine-install && .venv-engine/bin/python benchmarks/engine.py", file=sys.stderr)
        sys.exit(2)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Local pose engine (MediaPipe BlazePose, CPU): {os.cpu_count()} cores, 1-min load average {load:.2f} at start"
    )
    pngs = png_bytes()
    with measure() as whole, tempfile.TemporaryDirectory(prefix="kakaopose-engine-bench-") as tmp:
        warm = os.path.join(tmp, "warm.mp4")
        short = os.path.join(tmp, f"slide_{video_frames}.mp4")
        long = os.path.join(tmp, f"slide_{job_frames}.mp4")
        for path, frames in ((warm, WARMUP_FRAMES), (short, video_frames), (long, job_frames)):
            write_slide_video(path, frames=frames)

        # 1. images: direct baseline, then the server with 1 and 2 model threads
        runs = [direct_images(engine, pngs, images, warmup=4)]
        for workers in (1, 2):
            runs.append(server_images(workers, pngs, images, args.clients))
        print_images(runs, args.clients)

        # 2. video frames/s: direct, then the job path; 3. the long job (same server)
        engine.video_annotations(warm)  # warm-up: the video graph's first run
        video = direct_video(engine, short)
        engine.close()
        with PoseEmulator(engine="mediapipe", engine_workers=1) as emu:
            server_job(emu.base_url, warm, "warm-up")
            job = server_job(emu.base_url, short, "server job (submit -> success)")
            print_videos([video, job])
            print_long_job(server_job(emu.base_url, long, "long job"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nWhole run: {whole.wall:.0f} s; cores busy, this process / other processes: {whole.cores()} "
        f"(of {os.cpu_count()}); 1-min load average at the end {load:.2f}"
    )


if __name__ == "__main__":
    main()
