"""Tests of the Pose API emulator itself, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import requests
from aiohttp import web
from helpers import free_port
from PIL import Image

from airflow_provider_kakaopose.emulator import EmulatorConfig, PoseEmulator
from airflow_provider_kakaopose.validation import Limits

SAMPLES = Path(__file__).parent / "data" / "samples"  # the service guide's sample bodies
KEY = "s3cr3t-emulator-key-0123456789"
AUTH = {"Authorization": f"KakaoAK {KEY}"}
URL = "https://example.com/people.jpg"


def image_bytes(width: int, height: int, fmt: str = "PNG", noise: bool = False) -> bytes:
    if noise:
        img = Image.frombytes("RGB", (width, height), random.Random(0).randbytes(width * height * 3))
    else:
        img = Image.new("RGB", (width, height), (120, 160, 200))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def emu():
    with PoseEmulator(api_key=KEY, seed=7, job_waiting_s=0.2, job_processing_s=0.2) as e:
        yield e


def post_pose(emu, **kw):
    return requests.post(emu.base_url + "/pose", headers=AUTH, timeout=10, **kw)


def post_job(emu, **kw):
    return requests.post(emu.base_url + "/pose/job", headers=AUTH, timeout=10, **kw)


def get_job(emu, job_id):
    return requests.get(f"{emu.base_url}/pose/job/{job_id}", headers=AUTH, timeout=30)


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code and isinstance(body["msg"], str) and body["msg"], body
    return body["msg"]


def check_person(p, width, height):
    assert list(p) == ["area", "bbox", "category_id", "keypoints", "score"]
    assert p["category_id"] == 1
    kps = p["keypoints"]
    assert len(kps) == 51 and all(isinstance(v, float) for v in kps)
    detected = [(kps[i], kps[i + 1]) for i in range(0, 51, 3) if kps[i + 2] > 0]
    assert detected
    for i in range(0, 51, 3):
        if kps[i + 2] == 0:
            assert kps[i : i + 3] == [0.0, 0.0, 0.0]
        else:
            assert 0 <= kps[i] <= width and 0 <= kps[i + 1] <= height and 0 < kps[i + 2] <= 1
    xs, ys = [x for x, _ in detected], [y for _, y in detected]
    x, y, w, h = p["bbox"]
    assert x == min(xs) and y == min(ys)
    assert w == pytest.approx(max(xs) - x, abs=1e-3) and h == pytest.approx(max(ys) - y, abs=1e-3)
    assert p["area"] == pytest.approx(w * h, rel=1e-6, abs=1e-3)
    assert 0 < p["score"] <= 1
    # A human layout: the head above the shoulders, the shoulders above the hips, the hips above the ankles.
    if kps[2] and kps[17] and kps[35]:
        assert kps[1] < kps[16] < kps[34]
    if kps[35] and kps[47]:
        assert kps[34] < kps[46]


def wait_status(emu, job_id, wanted, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = get_job(emu, job_id).json()
        if body["status"] == wanted:
            return body
        time.sleep(0.03)
    raise AssertionError(f"job {job_id} never reached {wanted}: {body}")


# ---------------------------------------------------------------- auth


@contextlib.asynccontextmanager
async def callback_receiver(hits: list) -> AsyncIterator[int]:
    """A loopback HTTP server whose ``GET /cb`` appends ``(query, monotonic time)`` to ``hits``; yields its port."""

    async def cb(request: web.Request) -> web.Response:
        hits.append((dict(request.query), time.monotonic()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/cb", cb)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def test_auth_good_bad_missing(emu):
    assert post_pose(emu, data={"image_url": URL}).status_code == 200
    for headers in ({}, {"Authorization": "KakaoAK wrong"}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": KEY}):
        r = requests.post(emu.base_url + "/pose", data={"image_url": URL}, headers=headers, timeout=10)
        assert r.json() == json.loads((SAMPLES / "error_invalid_key.json").read_text())
        assert r.status_code == 401


def test_no_configured_key_accepts_any_kakaoak():
    with PoseEmulator() as e:
        ok = requests.post(e.base_url + "/pose", data={"image_url": URL}, headers={"Authorization": "KakaoAK x"})
        assert ok.status_code == 200
        assert_error(requests.post(e.base_url + "/pose", data={"image_url": URL}), 401, -401)
        assert_error(
            requests.post(e.base_url + "/pose", data={"image_url": URL}, headers={"Authorization": "KakaoAK "}),
            401,
            -401,
        )


# ---------------------------------------------------------------- /pose


def test_pose_by_url(emu):
    r = post_pose(emu, data={"image_url": URL})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    for p in r.json():
        check_person(p, 1280, 720)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_pose_by_file(emu, fmt):
    data = image_bytes(640, 480, fmt)
    r = post_pose(emu, files={"file": ("me." + fmt.lower(), data)})
    assert r.status_code == 200, r.text
    for p in r.json():
        check_person(p, 640, 480)
    rec = emu.requests[-1]
    assert rec.file_name == "me." + fmt.lower() and rec.file_size == len(data)
    assert rec.content_type.startswith("multipart/form-data")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (image_bytes(100, 100), "shorter side"),
        (image_bytes(3000, 1000), "longer side"),
        (b"this is not an image at all" * 50, "not a JPEG"),
        (b"", "empty"),
        (image_bytes(1500, 1000, noise=True), "limit is 2,097,152"),
    ],
    ids=["small", "wide", "not-image", "empty", "too-big"],
)
def test_pose_rejects_bad_files(emu, data, words):
    msg = assert_error(post_pose(emu, files={"file": ("x.png", data)}), 400, -2)
    assert words in msg


def test_pose_both_neither_and_bad_url(emu):
    png = image_bytes(640, 480)
    msg = assert_error(post_pose(emu, data={"image_url": URL}, files={"file": ("a.png", png)}), 400, -2)
    assert "not both" in msg
    assert "required" in assert_error(post_pose(emu, data={"other": "x"}), 400, -2)
    assert "required" in assert_error(post_pose(emu), 400, -2)
    assert "port" in assert_error(post_pose(emu, data={"image_url": "http://example.com:8080/a.jpg"}), 400, -2)
    assert "http or https" in assert_error(post_pose(emu, data={"image_url": "ftp://example.com/a.jpg"}), 400, -2)
    r = requests.post(emu.base_url + "/pose", data=b"{}", headers={**AUTH, "Content-Type": "application/json"})
    assert "Content-Type" in assert_error(r, 400, -2)


def test_persons_shape_variety_and_determinism(emu):
    counts, zeros = [], 0
    bodies = []
    for i in range(30):
        persons = post_pose(emu, data={"image_url": f"https://example.com/{i}.jpg"}).json()
        bodies.append(persons)
        counts.append(len(persons))
        for p in persons:
            check_person(p, 1280, 720)
            zeros += sum(1 for j in range(0, 51, 3) if p["keypoints"][j + 2] == 0)
    assert zeros > 0, "some keypoints should be undetected"
    assert max(counts) >= 2 and sum(1 for c in counts if c >= 1) >= 20
    # Same content, same seed: same answer, also from another emulator; another seed: different.
    assert post_pose(emu, data={"image_url": "https://example.com/0.jpg"}).json() == bodies[0]
    with PoseEmulator(seed=7) as same, PoseEmulator(seed=8) as other:
        h = {"Authorization": "KakaoAK any"}

        def five(e):
            urls = [f"https://example.com/{i}.jpg" for i in range(5)]
            return [requests.post(e.base_url + "/pose", data={"image_url": u}, headers=h).json() for u in urls]

        assert five(same) == bodies[:5]
        assert five(other) != bodies[:5]


# ---------------------------------------------------------------- jobs


def test_job_lifecycle_and_success_shape(emu):
    sample = json.loads((SAMPLES / "job_success_response.json").read_text())
    r = post_job(emu, data={"video_url": "https://example.com/v.mp4"})
    assert r.status_code == 200 and list(r.json()) == ["job_id"]
    job_id = r.json()["job_id"]
    assert get_job(emu, job_id).json() == {"job_id": job_id, "status": "waiting"}
    assert wait_status(emu, job_id, "processing") == {"job_id": job_id, "status": "processing"}
    body = wait_status(emu, job_id, "success")
    assert sorted(body) == sorted(sample)
    assert body["job_id"] == job_id
    assert body["categories"] == sample["categories"] and body["info"] == sample["info"]
    assert sorted(body["video"]) == sorted(sample["video"])
    assert body["video"] == {"fps": 30, "frames": 90, "height": 720, "width": 1280}
    assert [a["frame_num"] for a in body["annotations"]] == list(range(90))
    assert all(sorted(a) == ["frame_num", "objects"] for a in body["annotations"])
    assert all(len(a["objects"]) <= 1 for a in body["annotations"])
    people = [a["objects"][0] for a in body["annotations"] if a["objects"]]
    assert len(people) >= 80
    for p in people:
        check_person(p, 1280, 720)
    # The figure moves: its bbox is not the same everywhere.
    assert len({round(p["bbox"][0]) for p in people}) > 20
    # Served from the cache afterwards: byte-identical.
    assert get_job(emu, job_id).content == get_job(emu, job_id).content


def test_job_url_knobs_and_file_upload(emu):
    r = post_job(emu, data={"video_url": "https://example.com/v.mp4?frames=5&persons=2&fps=25&width=640&height=480"})
    body = wait_status(emu, r.json()["job_id"], "success")
    assert body["video"] == {"fps": 25, "frames": 5, "height": 480, "width": 640}
    assert len(body["annotations"]) == 5
    assert all(len(a["objects"]) in (0, 2) for a in body["annotations"])
    for a in body["annotations"]:
        for p in a["objects"]:
            check_person(p, 640, 480)
    assert "frames" in assert_error(post_job(emu, data={"video_url": "https://e.com/v.mp4?frames=x"}), 400, -2)
    # A file upload; empty and over-limit files are refused.
    r = post_job(emu, files={"file": ("v.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(5000))}, data={"smoothing": "false"})
    assert r.status_code == 200, r.text
    assert emu.requests[-1].fields == {"smoothing": "false"} and emu.requests[-1].file_size == 5012
    assert wait_status(emu, r.json()["job_id"], "success")["video"]["frames"] == 90
    assert "empty" in assert_error(post_job(emu, files={"file": ("v.mp4", b"")}), 400, -2)
    emu.configure(limits=Limits(max_video_bytes=1000))
    assert "limit is 1,000" in assert_error(post_job(emu, files={"file": ("v.mp4", bytes(2000))}), 400, -2)
    assert "required" in assert_error(post_job(emu, data={"smoothing": "true"}), 400, -2)


def test_job_failed_not_found_and_invalid_params(emu):
    r = post_job(emu, data={"video_url": "https://videos.invalid/v.mp4"})
    job_id = r.json()["job_id"]
    body = wait_status(emu, job_id, "failed")
    assert body == {"description": "Failed to get video", "job_id": job_id, "status": "failed"}
    r = post_job(emu, data={"video_url": "http://unreachable.example.com/v.mp4"})
    assert wait_status(emu, r.json()["job_id"], "failed")["description"] == "Failed to get video"
    assert get_job(emu, "nope-123").json() == {"job_id": "nope-123", "status": "not found"}
    msg = assert_error(post_job(emu, data={"video_url": "https://e.com/v.mp4", "smoothing": "yes"}), 400, -2)
    assert "smoothing" in msg
    msg = assert_error(post_job(emu, data={"video_url": "https://e.com/v.mp4", "callback_url": "ftp://x/cb"}), 400, -2)
    assert "callback_url" in msg
    assert "port" in assert_error(post_job(emu, data={"video_url": "https://e.com:8443/v.mp4"}), 400, -2)


async def test_callback_fired_once():
    hits: list[tuple[dict, float]] = []
    async with callback_receiver(hits) as port:
        with PoseEmulator(job_waiting_s=0.1, job_processing_s=0.1) as emu:
            async with aiohttp.ClientSession(headers={"Authorization": "KakaoAK k"}) as s:
                ok = {"video_url": "https://e.com/v.mp4", "callback_url": f"http://127.0.0.1:{port}/cb?src=emu"}
                async with s.post(emu.base_url + "/pose/job", data=ok) as r:
                    ok_id = (await r.json())["job_id"]
                bad = {"video_url": "https://e.invalid/v.mp4", "callback_url": f"http://127.0.0.1:{port}/cb"}
                async with s.post(emu.base_url + "/pose/job", data=bad) as r:
                    bad_id = (await r.json())["job_id"]
                # A callback server that is down: the failure is recorded, never retried.
                down = {"video_url": "https://e.com/v.mp4", "callback_url": "http://127.0.0.1:9/cb"}
                async with s.post(emu.base_url + "/pose/job", data=down) as r:
                    assert r.status == 200
            await asyncio.sleep(0.8)
            queries = [query for query, _ in hits]
            assert sorted(q["job_id"] for q in queries) == sorted([ok_id, bad_id])
            assert {"src": "emu", "job_id": ok_id} in queries
            sent = emu.callbacks_sent
            assert len(sent) == 3
            assert (f"http://127.0.0.1:{port}/cb?src=emu&job_id={ok_id}", 200) in sent
            assert any(url == "http://127.0.0.1:9/cb?job_id=" + url.rsplit("=", 1)[1] and isinstance(o, str)
                       for url, o in sent)  # fmt: skip


# ---------------------------------------------------------------- quota, faults


def test_quota_kakao_and_429():
    with PoseEmulator(quota_per_second=3) as emu:
        h = {"Authorization": "KakaoAK k"}
        with requests.Session() as s:
            # Start at the beginning of a window so the five requests fall in the same second.
            while (time.monotonic() - emu._t0) % 1.0 > 0.5:
                time.sleep(0.05)
            statuses = [s.post(emu.base_url + "/pose", data={"image_url": URL}, headers=h) for _ in range(5)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 400, 400]
        assert statuses[-1].json() == {"code": -10, "msg": "API limit has been exceeded."}
        emu.configure(quota_mode="429", quota_per_second=0)
        r = requests.post(emu.base_url + "/pose", data={"image_url": URL}, headers=h)
        assert r.status_code == 429 and r.json()["code"] == -10 and r.headers["Retry-After"] == "1"
        emu.configure(retry_after=3)
        assert requests.post(emu.base_url + "/pose", data={"image_url": URL}, headers=h).headers["Retry-After"] == "3"


def test_scripted_faults(emu):
    emu.configure(slow_seconds=1.0, retry_after=2)
    emu.script_faults(["500", "503", "error-1", "quota", "429", "401", "malformed", "drop", "slow"])
    expect = [(500, -1), (503, -1), (400, -1), (400, -10), (429, -10), (401, -401)]
    for status, code in expect:
        assert_error(post_pose(emu, data={"image_url": URL}), status, code)
    r = post_pose(emu, data={"image_url": URL})
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    with pytest.raises(requests.ConnectionError):
        post_pose(emu, data={"image_url": URL})
    t = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(emu.base_url + "/pose", data={"image_url": URL}, headers=AUTH, timeout=(5, 0.3))
    assert time.monotonic() - t < 0.9
    assert post_pose(emu, data={"image_url": URL}).status_code == 200
    recs = emu.requests
    assert [r.fault for r in recs] == [
        "500",
        "503",
        "error-1",
        "quota",
        "429",
        "401",
        "malformed",
        "drop",
        "slow",
        None,
    ]
    assert [r.status for r in recs[:8]] == [500, 503, 400, 400, 429, 401, 200, None]
    assert emu.count(method="POST", path="/pose") == 10 and emu.count(path="/pose/job") == 0
    with pytest.raises(ValueError):
        emu.script_faults(["boom"])


def test_fault_rate_is_reproducible_with_seed():
    def run(seed):
        kinds = ["500", "503", "error-1", "malformed", "429"]
        with PoseEmulator(seed=seed, fault_rate=0.5, fault_kinds=kinds) as emu, requests.Session() as s:
            h = {"Authorization": "KakaoAK k"}
            return [s.post(emu.base_url + "/pose", data={"image_url": URL}, headers=h).status_code for _ in range(30)]

    a, b, c = run(11), run(11), run(12)
    assert a == b and a != c
    assert 5 < sum(1 for s in a if s != 200) < 28
    with pytest.raises(ValueError):
        EmulatorConfig(fault_kinds=["nope"])
    with pytest.raises(ValueError):
        EmulatorConfig(fault_rate=1.5)


def test_latency_is_applied(emu):
    emu.configure(latency=0.3)
    t = time.monotonic()
    assert post_pose(emu, data={"image_url": URL}).status_code == 200
    assert 0.3 <= time.monotonic() - t < 2


# ---------------------------------------------------------------- secrecy, control endpoints


def test_key_never_recorded(emu):
    post_pose(emu, data={"image_url": URL})
    requests.post(emu.base_url + "/pose", data={"image_url": URL}, headers={"Authorization": KEY})
    requests.post(emu.base_url + "/pose", data={"image_url": URL}, headers={"Authorization": f"KakaoAK {KEY}x"})
    assert [r.authorization_scheme for r in emu.requests] == ["KakaoAK", None, "KakaoAK"]
    assert [r.auth_ok for r in emu.requests] == [True, False, False]
    assert KEY not in repr(emu.requests)
    assert KEY not in repr(emu) and KEY not in repr(emu.config) and KEY not in str(emu.config)
    text = requests.get(emu.base_url + "/_emulator/requests").text
    assert KEY not in text and len(json.loads(text)) == 3
    assert KEY not in requests.get(emu.base_url + "/_emulator/config").text


def test_user_agent_and_accept_are_recorded(emu):
    requests.post(
        emu.base_url + "/pose",
        data={"image_url": URL},
        headers={**AUTH, "User-Agent": "probe/1.0", "Accept": "application/json"},
        timeout=10,
    )
    [rec] = emu.requests
    assert (rec.user_agent, rec.accept) == ("probe/1.0", "application/json")
    [recorded] = requests.get(emu.base_url + "/_emulator/requests", timeout=10).json()
    assert (recorded["user_agent"], recorded["accept"]) == ("probe/1.0", "application/json")


def test_control_endpoints(emu):
    base = emu.base_url
    assert requests.get(base + "/_emulator/health").json()["status"] == "ok"
    post_pose(emu, data={"image_url": URL})
    recs = requests.get(base + "/_emulator/requests").json()
    assert len(recs) == 1 and recs[0]["path"] == "/pose" and recs[0]["status"] == 200
    assert recs[0]["fields"] == {"image_url": URL}
    assert requests.delete(base + "/_emulator/requests").json() == {"cleared": 1}
    assert emu.requests == []
    cfg = requests.post(base + "/_emulator/config", json={"latency": 0.25, "quota_per_second": 50}).json()
    assert cfg["latency"] == 0.25 and cfg["api_key"] == "***"
    assert emu.config.latency == 0.25 and emu.config.quota_per_second == 50
    assert_error(requests.post(base + "/_emulator/config", json={"nope": 1}), 400, -2)
    assert_error(requests.post(base + "/_emulator/config", json={"quota_mode": "x"}), 400, -2)
    assert requests.post(base + "/_emulator/faults", json=["500"]).status_code == 200
    assert_error(requests.post(base + "/_emulator/faults", json=["boom"]), 400, -2)
    assert_error(post_pose(emu, data={"image_url": URL}), 500, -1)
    assert len(emu.requests) == 1  # control calls are not recorded
    assert_error(requests.get(base + "/nope", headers=AUTH), 404, -2)


def test_config_object_and_kwargs():
    cfg = EmulatorConfig(api_key="abc", fault_kinds="500,drop")
    assert cfg.fault_kinds == ("500", "drop") and "abc" not in repr(cfg)
    with PoseEmulator(config=cfg, latency=0.1) as emu:
        assert emu.config.latency == 0.1 and emu.config.api_key == "abc"
        assert emu.base_url.startswith("http://127.0.0.1:")
    with pytest.raises(ValueError):
        PoseEmulator().configure(bogus=1)


# ---------------------------------------------------------------- processes


def test_cli_serves_and_stops():
    port = free_port()
    env = {**os.environ, "KAKAO_POSE_EMULATOR_API_KEY": "envkey"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_kakaopose.emulator", "--port", str(port), "--latency", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == f"Kakao Pose emulator listening on http://127.0.0.1:{port}"
        ok = requests.post(
            f"http://127.0.0.1:{port}/pose", data={"image_url": URL}, headers={"Authorization": "KakaoAK envkey"}
        )
        assert ok.status_code == 200
        bad = requests.post(
            f"http://127.0.0.1:{port}/pose", data={"image_url": URL}, headers={"Authorization": "KakaoAK x"}
        )
        assert bad.status_code == 401
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert "envkey" not in err


def test_import_does_not_pull_airflow():
    code = (
        "import sys\n"
        "import airflow_provider_kakaopose.emulator, airflow_provider_kakaopose.emulator.__main__\n"
        "bad = [m for m in ('airflow', 'pyarrow', 'pandas') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- performance


async def test_thousand_concurrent_requests_overlap():
    with PoseEmulator(latency=0.3) as emu:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, headers={"Authorization": "KakaoAK k"}) as s:

            async def one(i):
                async with s.post(emu.base_url + "/pose", data={"image_url": f"https://e.com/{i}.jpg"}) as r:
                    await r.json()
                    return r.status

            t = time.monotonic()
            statuses = await asyncio.gather(*(one(i) for i in range(1000)))
            elapsed = time.monotonic() - t
        assert statuses == [200] * 1000
        assert elapsed < 10, elapsed
        assert emu.count(method="POST", path="/pose") == 1000


def test_big_job_built_by_worker_processes():
    # Over BIG_JOB_PERSON_FRAMES: built by worker subprocesses; must equal the in-process build byte for byte.
    from airflow_provider_kakaopose.emulator import server, synth

    with PoseEmulator(job_waiting_s=0, job_processing_s=0) as emu:
        h = {"Authorization": "KakaoAK k"}
        url = "https://example.com/long.mp4?frames=10001&persons=3"
        job_id = requests.post(emu.base_url + "/pose/job", data={"video_url": url}, headers=h).json()["job_id"]
        resp = requests.get(f"{emu.base_url}/pose/job/{job_id}", headers=h, timeout=60)
        body = resp.content
        job = emu._jobs[job_id]
        assert body == synth.video_result_bytes(job_id, job.spec, job.key)
        # a body this large is sent in slices (server.STREAM_BODY_BYTES), with its length announced
        assert len(body) > server.STREAM_BODY_BYTES and resp.headers["Content-Length"] == str(len(body))
        parsed = json.loads(body)
        assert len(parsed["annotations"]) == 10001 and parsed["annotations"][-1]["frame_num"] == 10000


async def test_callbacks_can_be_dropped_duplicated_and_delayed():
    hits: list[tuple[dict, float]] = []
    knobs = {"job_waiting_s": 0.0, "job_processing_s": 0.1, "seed": 3}
    async with callback_receiver(hits) as port:
        form = {"video_url": "https://e.com/v.mp4", "callback_url": f"http://127.0.0.1:{port}/cb"}
        with PoseEmulator(callback_drop_rate=0.5, callback_duplicate_rate=0.5, **knobs) as emu:
            async with aiohttp.ClientSession(headers={"Authorization": "KakaoAK k"}) as s:
                for _ in range(40):
                    async with s.post(emu.base_url + "/pose/job", data=form) as r:
                        assert r.status == 200
            await asyncio.sleep(1.0)
            dropped = sum(1 for _, outcome in emu.callbacks_sent if outcome == "dropped")
            counts = collections.Counter(query["job_id"] for query, _ in hits)
            assert 8 <= dropped <= 32 and len(counts) == 40 - dropped
            assert 1 <= sum(1 for n in counts.values() if n == 2) < len(counts)  # some sent twice, not all
        hits.clear()
        with PoseEmulator(callback_delay_s=0.6, **knobs) as emu:
            async with aiohttp.ClientSession(headers={"Authorization": "KakaoAK k"}) as s:
                started = time.monotonic()
                async with s.post(emu.base_url + "/pose/job", data=form) as r:
                    assert r.status == 200
            await asyncio.sleep(1.2)
            [(_, when)] = hits
            assert 0.65 <= when - started <= 1.1  # 0.1 s of job, then 0.6 s of delay
    with pytest.raises(ValueError, match="callback_drop_rate"):
        PoseEmulator(callback_drop_rate=1.5)
