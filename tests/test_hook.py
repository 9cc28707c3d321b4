"""KakaoPoseHook and KakaoPoseAsyncHook against the emulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import threading
import time

import pytest
from helpers import API_KEY, free_port, image_bytes

from airflow_provider_kakaopose.exceptions import (
    KakaoPoseAuthError,
    KakaoPoseConnectionError,
    KakaoPoseError,
    KakaoPoseInputError,
    KakaoPoseQuotaError,
    KakaoPoseResponseError,
    KakaoPoseServerError,
)
from airflow_provider_kakaopose.get_provider_info import CONN_FIELDS
from airflow_provider_kakaopose.hooks.pose import KakaoPoseAsyncHook, KakaoPoseHook
from airflow_provider_kakaopose.validation import Limits

IMAGE_URL = "https://example.com/people.jpg"
VIDEO_URL = "https://example.com/dance.mp4?frames=6&persons=2"


def wait_for_status(hook: KakaoPoseHook, job_id: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = hook.get_job(job_id)
        if body["status"] not in ("waiting", "processing"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def assert_person(person: dict) -> None:
    assert set(person) == {"area", "bbox", "category_id", "keypoints", "score"}
    assert person["category_id"] == 1
    assert len(person["keypoints"]) == 51
    assert len(person["bbox"]) == 4


# ----------------------------------------------------------------------------------------- happy paths


def test_analyze_image_by_url_sends_form_and_auth(emulator, make_conn):
    hook = KakaoPoseHook(make_conn())
    persons = hook.analyze_image(image_url=IMAGE_URL)
    for person in persons:
        assert_person(person)
    [req] = emulator.requests
    assert (req.method, req.path) == ("POST", "/pose")
    assert req.content_type == "application/x-www-form-urlencoded"
    assert req.fields == {"image_url": IMAGE_URL}
    assert req.file_name is None
    assert req.authorization_scheme == "KakaoAK"
    assert req.auth_ok


@pytest.mark.parametrize("kind", ["path", "bytes", "fileobj", "jpeg-path"])
def test_analyze_image_by_file_sends_multipart(emulator, make_conn, tmp_path, kind):
    data = image_bytes(fmt="JPEG" if kind == "jpeg-path" else "PNG")
    path = tmp_path / ("photo.jpg" if kind == "jpeg-path" else "photo.png")
    path.write_bytes(data)
    file = {"path": str(path), "jpeg-path": path, "bytes": data, "fileobj": io.BytesIO(data)}[kind]
    persons = KakaoPoseHook(make_conn()).analyze_image(file=file)
    assert isinstance(persons, list)
    [req] = emulator.requests
    assert req.content_type.startswith("multipart/form-data")
    assert req.file_size == len(data)
    assert req.fields == {}
    expected_name = {"path": "photo.png", "jpeg-path": "photo.jpg", "bytes": "image.png", "fileobj": "image.png"}
    assert req.file_name == expected_name[kind]


def test_submit_video_job_by_url_with_options(emulator, make_conn):
    hook = KakaoPoseHook(make_conn())
    job_id = hook.submit_video_job(video_url=VIDEO_URL, smoothing=False, callback_url="https://example.com/cb")
    assert isinstance(job_id, str) and job_id
    [req] = emulator.requests
    assert (req.method, req.path) == ("POST", "/pose/job")
    assert req.content_type == "application/x-www-form-urlencoded"
    assert req.fields == {"video_url": VIDEO_URL, "smoothing": "false", "callback_url": "https://example.com/cb"}


def test_submit_video_job_by_file_defaults_smoothing_true(emulator, make_conn, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 1000)
    job_id = KakaoPoseHook(make_conn()).submit_video_job(file=video)
    assert job_id
    [req] = emulator.requests
    assert req.content_type.startswith("multipart/form-data")
    assert req.file_name == "clip.mp4"
    assert req.file_size == video.stat().st_size
    assert req.fields == {"smoothing": "true"}


def test_get_job_every_status(emulator, make_conn):
    hook = KakaoPoseHook(make_conn())
    job_id = hook.submit_video_job(video_url=VIDEO_URL)
    assert hook.get_job(job_id)["status"] in ("waiting", "processing")
    body = wait_for_status(hook, job_id)
    assert body["status"] == "success"
    assert body["job_id"] == job_id
    assert len(body["annotations"]) == body["video"]["frames"] == 6
    assert {"annotations", "categories", "info", "video"} <= set(body)

    failed = hook.submit_video_job(video_url="https://unreachable.example.com/v.mp4")
    body = wait_for_status(hook, failed)
    assert body == {"job_id": failed, "status": "failed", "description": "Failed to get video"}

    assert hook.get_job("no-such-job") == {"job_id": "no-such-job", "status": "not found"}


def test_get_job_bytes_returns_raw_json(emulator, make_conn):
    hook = KakaoPoseHook(make_conn())
    job_id = hook.submit_video_job(video_url=VIDEO_URL)
    wait_for_status(hook, job_id)
    raw = hook.get_job_bytes(job_id)
    assert isinstance(raw, bytes)
    assert json.loads(raw) == hook.get_job(job_id)


# -------------------------------------------------------------------------------------- error mapping


def test_bad_key_is_auth_error_and_not_retried(emulator, make_conn):
    hook = KakaoPoseHook(make_conn(password="wrong-key-123"))
    with pytest.raises(KakaoPoseAuthError) as info:
        hook.analyze_image(image_url=IMAGE_URL)
    err = info.value
    assert (err.status_code, err.code) == (401, -401)
    assert err.msg == "this access token does not exist"
    assert "wrong-key-123" not in str(err) and API_KEY not in str(err)
    assert emulator.count() == 1


def test_missing_key_fails_before_sending(emulator, make_conn):
    with pytest.raises(KakaoPoseAuthError, match="no REST API key"):
        KakaoPoseHook(make_conn(password="")).analyze_image(image_url=IMAGE_URL)
    assert emulator.count() == 0


@pytest.mark.parametrize(
    ("fault", "extra"),
    [
        ("500", {}),
        ("503", {}),
        ("drop", {}),
        ("quota", {}),
        ("429", {}),
        ("error-1", {}),
        ("slow", {"read_timeout": 0.3}),
    ],
)
def test_retryable_faults_are_retried_then_succeed(emulator, make_conn, fault, extra):
    if fault == "slow":
        emulator.configure(slow_seconds=2.0)
    emulator.script_faults([fault, fault])
    persons = KakaoPoseHook(make_conn(**extra)).analyze_image(image_url=IMAGE_URL)
    assert isinstance(persons, list)
    assert emulator.count(method="POST", path="/pose") == 3


@pytest.mark.parametrize(
    ("fault", "error", "status", "code"),
    [
        ("500", KakaoPoseServerError, 500, -1),
        ("quota", KakaoPoseQuotaError, 400, -10),
        ("429", KakaoPoseQuotaError, 429, -10),
        ("drop", KakaoPoseConnectionError, None, None),
        ("error-1", KakaoPoseServerError, 400, -1),
    ],
)
def test_retries_give_up_after_the_limit(emulator, make_conn, fault, error, status, code):
    emulator.script_faults([fault] * 10)
    hook = KakaoPoseHook(make_conn(max_retries=2))
    with pytest.raises(error) as info:
        hook.analyze_image(image_url=IMAGE_URL)
    assert emulator.count() == 3
    assert info.value.attempts == 3
    assert (info.value.status_code, info.value.code) == (status, code)


def test_quota_code_minus_10_is_quota_error_even_on_http_400(emulator, make_conn):
    emulator.script_faults(["quota"])
    with pytest.raises(KakaoPoseQuotaError) as info:
        KakaoPoseHook(make_conn(max_retries=0)).get_job("x")
    assert (info.value.status_code, info.value.code) == (400, -10)


def test_retry_after_is_honoured(emulator, make_conn):
    emulator.configure(retry_after=0.6)
    emulator.script_faults(["429"])
    hook = KakaoPoseHook(make_conn(retry_wait_initial=0.01, retry_wait_max=5))
    hook.get_job("x")
    first, second = emulator.requests
    assert first.status == 429
    assert second.time - first.time >= 0.55


def test_malformed_json_is_a_response_error_not_retried(emulator, make_conn):
    emulator.script_faults(["malformed"])
    with pytest.raises(KakaoPoseResponseError, match="not JSON"):
        KakaoPoseHook(make_conn()).analyze_image(image_url=IMAGE_URL)
    assert emulator.count() == 1


def test_service_input_error_is_input_error_not_retried(emulator, make_conn):
    hook = KakaoPoseHook(make_conn(validate_inputs=False))
    with pytest.raises(KakaoPoseInputError) as info:
        hook.analyze_image(file=image_bytes(100, 100))
    assert (info.value.status_code, info.value.code) == (400, -2)
    assert "320" in info.value.msg
    assert emulator.count() == 1


def test_unreachable_host_is_connection_error(make_conn):
    hook = KakaoPoseHook(make_conn(host=f"http://127.0.0.1:{free_port()}", max_retries=1))
    with pytest.raises(KakaoPoseConnectionError, match="127.0.0.1") as info:
        hook.get_job("x")
    assert info.value.attempts == 2


@pytest.mark.parametrize(
    ("status", "body", "error", "retryable"),
    [
        (401, {"code": -401, "msg": "bad key"}, KakaoPoseAuthError, False),
        (403, {"code": -3, "msg": "disabled"}, KakaoPoseAuthError, False),
        (403, {"code": -5, "msg": "not permitted"}, KakaoPoseAuthError, False),
        (403, {"code": -12, "msg": "suspended"}, KakaoPoseAuthError, False),
        (400, {"code": -2, "msg": "bad param"}, KakaoPoseInputError, False),
        (400, {"code": -9, "msg": "retired"}, KakaoPoseError, False),
        (400, {"code": -10, "msg": "quota"}, KakaoPoseQuotaError, True),
        (400, {"code": -11, "msg": "paid quota"}, KakaoPoseQuotaError, False),
        (400, {"code": -1, "msg": "internal"}, KakaoPoseServerError, True),
        (429, {"code": -10, "msg": "quota"}, KakaoPoseQuotaError, True),
        (502, b"<html>bad gateway</html>", KakaoPoseServerError, True),
        (404, b"", KakaoPoseError, False),
    ],
)
def test_error_mapping_table(status, body, error, retryable):
    from airflow_provider_kakaopose.hooks._client import response_error

    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    err = response_error("GET", "/pose/job/x", status, {}, raw)
    assert type(err) is error
    assert err.retryable is retryable
    assert err.status_code == status
    assert f"HTTP {status}" in str(err)
    if isinstance(body, dict):
        assert (err.code, err.msg) == (body["code"], body["msg"])


def test_retry_after_http_date():
    from email.utils import formatdate

    from airflow_provider_kakaopose.hooks._client import parse_retry_after

    assert parse_retry_after("3") == 3.0
    assert 1.0 < parse_retry_after(formatdate(time.time() + 5, usegmt=True)) <= 5.0
    assert parse_retry_after("soon") is None


# ----------------------------------------------------------------------------------------- rate limit


def test_rate_limiter_spaces_requests_across_threads(emulator, make_conn):
    hook = KakaoPoseHook(make_conn(rate_limit_per_second=10))
    threads = [threading.Thread(target=lambda: [hook.get_job("x") for _ in range(4)]) for _ in range(3)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    times = sorted(r.time for r in emulator.requests)
    assert len(times) == 12
    assert elapsed >= 1.05  # 12 requests at 10/s: the 12th starts 1.1 s after the first
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.07, gaps  # 0.1 s apart, minus scheduling jitter


def test_no_rate_limit_by_default(emulator, make_conn):
    hook = KakaoPoseHook(make_conn())
    start = time.monotonic()
    for _ in range(20):
        hook.get_job("x")
    assert time.monotonic() - start < 1.0


# ------------------------------------------------------------------------------------------ pre-flight


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of image_url or file.*neither"),
        ({"image_url": IMAGE_URL, "file": b"x"}, "exactly one of image_url or file.*both"),
        ({"image_url": "ftp://example.com/a.jpg"}, "image_url 'ftp://example.com/a.jpg' must use http or https"),
        ({"image_url": "http://example.com:8080/a.jpg"}, "port 8080"),
        ({"image_url": "https://example.com:8443/a.jpg"}, "port 8443"),
        ({"file": "/no/such/file.png"}, "'/no/such/file.png' does not exist"),
        ({"file": b""}, "empty"),
        ({"file": b"GIF89a" + b"\x00" * 100}, "is not a JPEG/PNG/HEIC/WEBP image"),
        ({"file": image_bytes(100, 400)}, "shorter side must be at least 320"),
        ({"file": image_bytes(2100, 1500)}, "longer side must be at most 2048"),
        ({"file": image_bytes(1280, 400)}, "aspect ratio"),
        ({"file": image_bytes(400, 1280, "JPEG")}, "aspect ratio"),
    ],
)
def test_image_preflight_rules_raise_before_any_request(emulator, make_conn, kwargs, match):
    with pytest.raises(KakaoPoseInputError, match=match):
        KakaoPoseHook(make_conn()).analyze_image(**kwargs)
    assert emulator.count() == 0


def test_limits_can_be_overridden(emulator, make_conn):
    big = image_bytes(2000, 1500, "PNG")
    with pytest.raises(KakaoPoseInputError, match="bytes; the limit is 1,000 bytes"):
        KakaoPoseHook(make_conn(), limits=Limits(max_image_bytes=1000)).analyze_image(file=big)
    wide = image_bytes(1900, 400)
    with pytest.raises(KakaoPoseInputError, match="aspect"):
        KakaoPoseHook(make_conn()).analyze_image(file=wide)
    assert emulator.count() == 0
    # A partnership's wider limit lets it through the pre-flight; the emulator (free tier) then refuses it.
    with pytest.raises(KakaoPoseInputError) as info:
        KakaoPoseHook(make_conn(), limits=Limits(max_aspect_ratio=5)).analyze_image(file=wide)
    assert info.value.code == -2
    assert emulator.count() == 1


def test_aspect_ratio_bounds_are_inclusive(emulator, make_conn):
    hook = KakaoPoseHook(make_conn())
    hook.analyze_image(file=image_bytes(1280, 720))  # exactly 16:9
    hook.analyze_image(file=image_bytes(720, 1280, "JPEG"))  # exactly 9:16
    assert emulator.count() == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of video_url or file.*neither"),
        ({"video_url": VIDEO_URL, "file": b"x"}, "both"),
        ({"video_url": "http://example.com:81/v.mp4"}, "port 81"),
        ({"video_url": "rtsp://example.com/v"}, "must use http or https"),
        ({"file": b""}, "video 'video' is empty"),
        ({"video_url": VIDEO_URL, "callback_url": "ftp://cb"}, "callback_url"),
        ({"video_url": VIDEO_URL, "smoothing": "false"}, "smoothing must be True or False"),
    ],
)
def test_video_preflight_rules_raise_before_any_request(emulator, make_conn, kwargs, match):
    with pytest.raises(KakaoPoseInputError, match=match):
        KakaoPoseHook(make_conn()).submit_video_job(**kwargs)
    assert emulator.count() == 0


def test_video_size_limit(emulator, make_conn, tmp_path):
    video = tmp_path / "big.mp4"
    video.write_bytes(b"\x00" * 2048)
    with pytest.raises(KakaoPoseInputError, match="'big.mp4' is 2,048 bytes; the limit is 1,024 bytes"):
        KakaoPoseHook(make_conn(), limits=Limits(max_video_bytes=1024)).submit_video_job(file=video)
    assert emulator.count() == 0


def test_validate_inputs_false_skips_rules_but_not_one_of(emulator, make_conn):
    hook = KakaoPoseHook(make_conn(validate_inputs="false"))
    with pytest.raises(KakaoPoseInputError, match="neither"):
        hook.analyze_image()
    with pytest.raises(KakaoPoseInputError):  # the service itself refuses it (-2)
        hook.analyze_image(file=b"GIF89a" + b"\x00" * 100)
    assert emulator.count() == 1


def test_text_mode_file_object_is_refused(emulator, make_conn):
    with pytest.raises(KakaoPoseInputError, match="text mode"):
        KakaoPoseHook(make_conn()).analyze_image(file=io.StringIO("hello"))


def test_job_id_cannot_change_the_path(emulator, make_conn):
    with pytest.raises(KakaoPoseInputError, match="never has"):
        KakaoPoseHook(make_conn()).get_job("../pose")
    assert emulator.count() == 0


# ------------------------------------------------------------------------------------- connection


def test_connection_settings_and_bad_extras(monkeypatch, emulator):
    def settings(**conn):
        monkeypatch.setenv("AIRFLOW_CONN_KP_SETTINGS", json.dumps({"conn_type": "kakao_pose", **conn}))
        return KakaoPoseHook("kp_settings").settings

    s = settings(password="k")
    assert s.base_url == "https://cv-api.kakaobrain.com"
    assert (s.connect_timeout, s.read_timeout, s.max_retries, s.validate_inputs) == (5, 15, 5, True)
    assert s.rate_limit_per_second is None
    assert settings(password="k", host="127.0.0.1", port=8765, extra={"scheme": "http"}).base_url == (
        "http://127.0.0.1:8765"
    )
    assert settings(password="k", host="http://127.0.0.1:8765/").base_url == "http://127.0.0.1:8765"
    assert "k" not in repr(s).replace("kakao", "")  # the key is not in the repr
    with pytest.raises(KakaoPoseError, match="'read_timeout' must be a float, not 'soon'"):
        settings(password="k", extra={"read_timeout": "soon"})
    with pytest.raises(KakaoPoseError, match="'max_retries' must be a int"):
        settings(password="k", extra={"max_retries": 1.5})
    with pytest.raises(KakaoPoseError, match="'validate_inputs' must be true or false"):
        settings(password="k", extra={"validate_inputs": "maybe"})


def test_repr_and_errors_never_show_the_key(emulator, make_conn, capsys):
    hook = KakaoPoseHook(make_conn())
    emulator.script_faults(["500", "500", "500", "500"])
    with pytest.raises(KakaoPoseServerError) as info:
        hook.get_job("x")
    logged = "".join(capsys.readouterr())
    for text in (repr(hook), repr(hook.settings), str(info.value), repr(info.value), logged):
        assert API_KEY not in text
    assert "retrying" in logged  # retries are logged, without the key


def test_test_connection_good_does_not_spend_quota(emulator, make_conn):
    ok, message = KakaoPoseHook(make_conn()).test_connection()
    assert ok, message
    assert emulator.base_url in message
    assert [(r.method, r.path.rsplit("/", 1)[0]) for r in emulator.requests] == [("GET", "/pose/job")]


def test_test_connection_bad_key(emulator, make_conn):
    ok, message = KakaoPoseHook(make_conn(password="nope-nope")).test_connection()
    assert not ok
    assert "refused the REST API key" in message and "-401" in message
    assert "nope-nope" not in message


def test_test_connection_unreachable_host(make_conn):
    ok, message = KakaoPoseHook(make_conn(host=f"http://127.0.0.1:{free_port()}")).test_connection()
    assert not ok
    assert "Cannot reach" in message and "127.0.0.1" in message


def test_provider_is_registered_with_airflow():
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "airflow-provider-kakaopose" in pm.providers
    assert pm.providers["airflow-provider-kakaopose"].data["connection-types"][0]["connection-type"] == "kakao_pose"
    try:  # Airflow 3.3: tasks look hooks up through the Task SDK's own providers manager
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

        hooks = ProvidersManagerTaskRuntime().hooks
    except ImportError:
        hooks = pm.hooks
    hook_info = hooks["kakao_pose"]
    assert hook_info.hook_class_name == "airflow_provider_kakaopose.hooks.pose.KakaoPoseHook"
    assert hook_info.connection_id_attribute_name == "kakao_pose_conn_id"
    assert hook_info.connection_testable


EXTRAS = sorted(CONN_FIELDS)


_FORM_PROBE = """
import json, importlib.util
wtforms = importlib.util.find_spec("wtforms") is not None  # before the UI code mocks it
from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS
if AIRFLOW_V_3_0_PLUS:
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
    [meta] = [m.model_dump() for m in HookMetaService.hook_meta_data() if m.connection_type == "kakao_pose"]
    extras = sorted(meta["extra_fields"] or {})
    standard = meta["standard_fields"] or {}
    password = (standard.get("password") or {}).get("title")
    login_hidden = (standard.get("login") or {}).get("hidden")
else:
    from airflow.providers_manager import ProvidersManager
    pm = ProvidersManager()
    extras = sorted(k.removeprefix("extra__kakao_pose__") for k in pm.connection_form_widgets if "kakao" in k)
    behaviour = pm.field_behaviours.get("kakao_pose") or {}
    password = behaviour.get("relabeling", {}).get("password")
    login_hidden = "login" in behaviour.get("hidden_fields", [])
print(json.dumps({"extras": extras, "password": password, "login_hidden": login_hidden, "wtforms": wtforms}))
"""


def test_the_connection_form_on_this_airflow():
    """What the UI's connection form shows for ``kakao_pose`` on the Airflow under test, asked the way the UI
    asks, in a fresh process: the extras as their own fields, the password relabelled "REST API key", login
    hidden (2.11: FAB's form; 3.x: the UI's hook metadata, from conn-fields on 3.2+ and from the hook's own
    methods on 3.0/3.1)."""
    import subprocess
    import sys

    from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_1_PLUS

    out = subprocess.run([sys.executable, "-c", _FORM_PROBE], capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, out.stderr[-3000:]
    form = json.loads(lines[-1])
    if AIRFLOW_V_3_0_PLUS and not AIRFLOW_V_3_1_PLUS and not form["wtforms"]:
        # Airflow 3.0's UI builds custom fields only through WTForms (the FAB provider): without it no
        # provider gets them and the JSON "Extra" field stays (docs/installation.md, "What differs").
        assert form == {"extras": [], "password": None, "login_hidden": None, "wtforms": False}
        return
    assert form["extras"] == EXTRAS
    assert form["password"] == "REST API key" and form["login_hidden"] is True


# --------------------------------------------------------------------------------------------- async


async def test_async_get_job_every_status(emulator, make_conn):
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    async with KakaoPoseAsyncHook(conn_id) as hook:
        assert (await hook.get_job(job_id))["status"] in ("waiting", "processing")
        for _ in range(100):
            body = await hook.get_job(job_id)
            if body["status"] == "success":
                break
            await asyncio.sleep(0.05)
        assert body["status"] == "success" and len(body["annotations"]) == 6
        assert (await hook.get_job("nope"))["status"] == "not found"
    gets = [r for r in emulator.requests if r.method == "GET"]
    assert all(r.authorization_scheme == "KakaoAK" and r.auth_ok for r in gets)


async def test_async_retries_then_succeeds_without_a_shared_session(emulator, make_conn):
    emulator.script_faults(["503", "drop", "quota"])
    body = await KakaoPoseAsyncHook(make_conn()).get_job("nope")
    assert body["status"] == "not found"
    assert emulator.count() == 4


async def test_async_read_timeout_is_retried(emulator, make_conn):
    emulator.configure(slow_seconds=2.0)
    emulator.script_faults(["slow"])
    body = await KakaoPoseAsyncHook(make_conn(read_timeout=0.3)).get_job("nope")
    assert body["status"] == "not found"
    assert emulator.count() == 2


async def test_async_gives_up_and_maps_errors(emulator, make_conn):
    emulator.script_faults(["500"] * 5)
    with pytest.raises(KakaoPoseServerError) as info:
        await KakaoPoseAsyncHook(make_conn(max_retries=2)).get_job("nope")
    assert info.value.attempts == 3
    with pytest.raises(KakaoPoseAuthError):
        await KakaoPoseAsyncHook(make_conn(password="bad-key-0")).get_job("nope")
    emulator.script_faults(["malformed"])
    with pytest.raises(KakaoPoseResponseError):
        await KakaoPoseAsyncHook(make_conn()).get_job("nope")


async def test_async_hook_honours_rate_limit(emulator, make_conn):
    async with KakaoPoseAsyncHook(make_conn(rate_limit_per_second=20)) as hook:
        start = time.monotonic()
        await asyncio.gather(*(hook.get_job("nope") for _ in range(11)))
        assert time.monotonic() - start >= 0.45


async def test_async_connection_lookup_does_not_block_the_loop(emulator, make_conn, monkeypatch):
    """The connection is fetched without a blocking call on the event loop: Airflow's async API where it has
    one that masks secrets asynchronously (3.3.2+), else the sync lookup in a worker thread (common-compat's
    ``get_async_connection``)."""
    from airflow_provider_kakaopose._compat import BaseHook

    loop_thread = threading.current_thread()
    original = BaseHook.get_connection.__func__
    callers: list[threading.Thread] = []

    def guarded(cls, *args, **kwargs):
        callers.append(threading.current_thread())
        if threading.current_thread() is loop_thread:
            raise AssertionError("blocking get_connection called on the event loop's thread")
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(guarded))
    assert (await KakaoPoseAsyncHook(make_conn()).get_job("nope"))["status"] == "not found"
    assert loop_thread not in callers


async def test_both_hooks_send_the_same_user_agent_and_accept(emulator, make_conn):
    """The sync session, the async hook's shared session and its own per-call session send one User-Agent."""
    from airflow_provider_kakaopose import __version__

    conn_id = make_conn()
    KakaoPoseHook(conn_id).get_job("nope")
    async with KakaoPoseAsyncHook(conn_id) as hook:
        await hook.get_job("nope")
    await KakaoPoseAsyncHook(conn_id).get_job_status("nope")
    sent = {(r.user_agent, r.accept) for r in emulator.requests}
    assert len(emulator.requests) == 3
    assert sent == {(f"airflow-provider-kakaopose/{__version__}", "application/json")}


def test_compat_exports_every_name_it_lists_and_types_them():
    """``_compat.__all__`` is its one list of names: each resolves on this Airflow, and the names it imports
    only for type checkers (``if TYPE_CHECKING:``) are exactly its lazily imported ones."""
    import ast
    import inspect

    from airflow_provider_kakaopose import _compat

    for name in _compat.__all__:
        assert getattr(_compat, name) is not None, name
    tree = ast.parse(inspect.getsource(_compat))
    [block] = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    typed = {
        alias.asname or alias.name
        for node in ast.walk(block)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    imported = {alias.asname or alias.name for n in tree.body if isinstance(n, ast.ImportFrom) for alias in n.names}
    assert typed == set(_compat.__all__) - assigned - imported


def test_malformed_answer_carries_attempts_and_status(emulator, make_conn):
    emulator.script_faults(["500", "malformed"])
    with pytest.raises(KakaoPoseResponseError) as info:
        KakaoPoseHook(make_conn()).get_job("x")
    assert (info.value.attempts, info.value.status_code) == (2, 200)


@pytest.mark.parametrize("fault", ["slow", "drop"])
def test_job_submission_is_not_resent_when_it_may_have_arrived(emulator, make_conn, fault):
    """A read timeout or a dropped answer may come after the service created the job: resending would
    create a second job, so the submission fails instead (GETs and image analysis are still retried)."""
    emulator.configure(slow_seconds=1.0)
    emulator.script_faults([fault])
    with pytest.raises(KakaoPoseConnectionError, match="not resent") as info:
        KakaoPoseHook(make_conn(read_timeout=0.3)).submit_video_job(video_url=VIDEO_URL)
    assert info.value.attempts == 1 and not info.value.retryable and info.value.outcome_unknown
    assert emulator.count(method="POST", path="/pose/job") == 1


def test_job_submission_is_resent_when_the_connection_was_refused(make_conn):
    hook = KakaoPoseHook(make_conn(host=f"http://127.0.0.1:{free_port()}", max_retries=2))
    with pytest.raises(KakaoPoseConnectionError) as info:
        hook.submit_video_job(video_url=VIDEO_URL)
    assert info.value.attempts == 3 and "not resent" not in str(info.value) and not info.value.outcome_unknown


@pytest.mark.parametrize("fault", ["429", "quota"])
def test_job_submission_is_resent_after_a_quota_refusal(emulator, make_conn, fault):
    """A quota refusal says the service turned the request down: resending cannot create a second job."""
    emulator.script_faults([fault, fault])
    assert KakaoPoseHook(make_conn()).submit_video_job(video_url=VIDEO_URL)
    assert emulator.count(method="POST", path="/pose/job") == 3


@pytest.mark.parametrize("fault", ["500", "502", "503", "504", "error-1", "malformed"])
def test_job_submission_is_not_resent_after_an_answer_that_leaves_the_outcome_unknown(emulator, make_conn, fault):
    """A 5xx (a gateway's 502/504 included), Kakao's internal error or an unreadable 2xx may come after the
    job was created: the submission fails once, marked ``outcome_unknown``, instead of being sent again."""
    emulator.script_faults([fault])
    with pytest.raises(KakaoPoseError, match="may have reached the service") as info:
        KakaoPoseHook(make_conn()).submit_video_job(video_url=VIDEO_URL)
    assert info.value.outcome_unknown and not info.value.retryable and info.value.attempts == 1
    assert emulator.count(method="POST", path="/pose/job") == 1
    if fault != "malformed":  # the same answers are still retried for status checks
        emulator.script_faults([fault])
        assert KakaoPoseHook(make_conn()).get_job_status("nope")["status"] == "not found"


def test_status_check_of_a_large_result_streams_it_and_keeps_nothing(big_job, monkeypatch):
    """``get_job_status`` (what the sensor and the operator's waits use) reads a finished job's big body in
    chunks and keeps only its top-level fields: a few MB at most, where ``get_job`` parses it all."""
    import tracemalloc

    base_url, job_id, size = big_job
    conn = {"conn_type": "kakao_pose", "host": base_url, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_KAKAO_POSE_BIG", json.dumps(conn))
    hook = KakaoPoseHook("kakao_pose_big")
    hook.get_job_status("warm-up")  # connection lookup, session, imports
    tracemalloc.start()
    try:
        top = hook.get_job_status(job_id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert top["status"] == "success" and top["job_id"] == job_id and top["annotations"] is None
    assert size > 20e6
    assert peak < 8e6, f"a status check held {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB body"


def test_session_and_limiter_are_made_once_when_many_threads_ask_first(make_conn, monkeypatch):
    """Sixteen threads touching a new hook at once share one session and one limiter (an unlocked lazy
    attribute, like ``cached_property`` on Python 3.12+, can make several: a leaked session, an unspaced
    first burst)."""
    import requests

    made: list[object] = []

    class SlowSession(requests.Session):
        def __init__(self) -> None:
            time.sleep(0.05)  # widen the window in which a second thread could make its own
            super().__init__()
            made.append(self)

    monkeypatch.setattr(requests, "Session", SlowSession)
    hook = KakaoPoseHook(make_conn(rate_limit_per_second=50))
    hook.settings  # noqa: B018  (the connection lookup is not what is tested here)
    barrier = threading.Barrier(16)
    seen: list[tuple[int, int]] = []

    def touch() -> None:
        barrier.wait()
        seen.append((id(hook.session), id(hook.rate_limiter)))

    threads = [threading.Thread(target=touch) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(set(seen)) == 1
    hook.close()


# ------------------------------------------------------------------------------ transport error texts

UNRESOLVABLE = "no-such-host.invalid"


@pytest.fixture
def resolver(monkeypatch):
    """A resolver that answers loopback names only: any other name fails as an unknown host does, without a
    DNS query (the real ``getaddrinfo`` is never called for it). Returns the names looked up."""
    import socket

    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        asked.append(name)
        if name in ("127.0.0.1", "localhost", "::1"):
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def assert_whole_cause(message: str, root: str) -> None:
    """The message ends with the root cause's text, says it once, and shows neither the key nor a header."""
    assert message.endswith(root), message
    assert message.count(root) == 1, message
    assert API_KEY not in message and "KakaoAK" not in message and "Authorization" not in message, message


def test_an_unresolvable_host_names_the_resolvers_message(make_conn, resolver):
    """The message was cut at 200 characters, before the resolver's words: `…(Caused by NameResolutionError(
    "HTTPConnection(host='no-such-host.invalid', port=80): Failed to res)`."""
    hook = KakaoPoseHook(make_conn(host=f"http://{UNRESOLVABLE}", max_retries=0))
    with pytest.raises(KakaoPoseConnectionError) as info:
        hook.get_job("x")
    message = str(info.value)
    assert message == (
        f"GET /pose/job/x to http://{UNRESOLVABLE} failed: NameResolutionError: Failed to resolve "
        f"'{UNRESOLVABLE}': [Errno {socket_eai_noname()}] Name or service not known"
    )
    assert_whole_cause(message, "Name or service not known")
    assert info.value.connected is False and info.value.retryable
    assert UNRESOLVABLE in resolver
    ok, checked = KakaoPoseHook(make_conn(host=f"http://{UNRESOLVABLE}")).test_connection()
    assert not ok and checked.startswith("Cannot reach the Pose API: GET /pose/job/")
    assert_whole_cause(checked, "Name or service not known")
    assert f"Failed to resolve '{UNRESOLVABLE}'" in checked


def socket_eai_noname() -> int:
    import socket

    return socket.EAI_NONAME


def test_a_refused_port_names_the_refusal(make_conn):
    """Was cut at 200 characters: `…(Caused by NewConnectionError("HTTPConnection(host='127.0.0.1',
    port=…): Failed to establish a new conn)` — the refusal itself never showed."""
    base = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KakaoPoseConnectionError) as info:
        KakaoPoseHook(make_conn(host=base, max_retries=0)).analyze_image(image_url=IMAGE_URL)
    message = str(info.value)
    assert message.startswith(f"POST /pose to {base} failed: NewConnectionError: Failed to establish a new ")
    assert "Connection refused" in message
    assert_whole_cause(message, message[message.index("[Errno") :])
    assert info.value.connected is False
    ok, checked = KakaoPoseHook(make_conn(host=base)).test_connection()
    assert not ok and "Connection refused" in checked and "[Errno" in checked
    assert_whole_cause(checked, message[message.index("[Errno") :])


@pytest.mark.parametrize(
    ("fault", "says", "connected"),
    [("slow", "ReadTimeoutError: Read timed out. (read timeout=0.3)", True), ("drop", "ProtocolError: ", True)],
)
def test_a_connection_that_was_made_says_so(emulator, make_conn, fault, says, connected):
    emulator.configure(slow_seconds=2.0)
    emulator.script_faults([fault])
    with pytest.raises(KakaoPoseConnectionError) as info:
        KakaoPoseHook(make_conn(max_retries=0, read_timeout=0.3)).get_job("x")
    assert says in str(info.value) and info.value.connected is connected
    assert API_KEY not in str(info.value)


async def test_async_unresolvable_host_and_refused_port_name_their_cause(make_conn, resolver):
    with pytest.raises(KakaoPoseConnectionError) as info:
        await KakaoPoseAsyncHook(make_conn(host=f"http://{UNRESOLVABLE}", max_retries=0)).get_job("x")
    message = str(info.value)
    assert f"Cannot connect to host {UNRESOLVABLE}:80" in message, message
    assert_whole_cause(message, f"[Errno {socket_eai_noname()}] Name or service not known")
    assert info.value.connected is False and UNRESOLVABLE in resolver
    base = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KakaoPoseConnectionError) as info:
        await KakaoPoseAsyncHook(make_conn(host=base, max_retries=0)).get_job("x")
    message = str(info.value)
    assert message.startswith(f"GET /pose/job/x to {base} failed: ClientConnectorError: Cannot connect to host")
    assert_whole_cause(message, message[message.index("[Errno") :])
    assert info.value.connected is False


def test_a_cause_is_never_cut_and_never_shows_a_credential():
    """Built from a chain: every layer's own words once, the root's last, however long; a credential a library
    might quote is masked."""
    from airflow_provider_kakaopose.hooks._client import transport_error

    root = OSError(5, "disk " * 100 + "gone")
    middle = RuntimeError(f"proxy said Authorization: KakaoAK {API_KEY} was rejected")
    middle.__cause__ = root
    outer = ConnectionError("wrapped")
    outer.__cause__ = middle
    err = transport_error("GET", "/x", "http://h", outer)
    text = str(err)
    assert text.endswith("disk " * 99 + "disk gone") and len(text) > 600
    assert API_KEY not in text and "Authorization: KakaoAK <redacted> was rejected" in text
    assert text.startswith("GET /x to http://h failed: ConnectionError: wrapped: proxy said Authorization: ")
    assert err.connected is True  # not a connect failure of requests or aiohttp: it may have arrived
