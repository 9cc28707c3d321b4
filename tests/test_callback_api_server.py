"""The callback receiver inside a real Airflow 3 api-server process: mounted by the provider's plugin, reachable
without Airflow's login, checking every request itself, recording a genuine callback in a real Redis."""

from __future__ import annotations

import secrets
import subprocess
import time
from importlib.metadata import entry_points

import pytest
import requests
from deployment import Deployment
from helpers import DAGS, free_port, redis_server_binary

from airflow_provider_kakaopose import callbacks
from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not AIRFLOW_V_3_0_PLUS, reason="Airflow 2: no receiver, waits poll (docs/callbacks.md)"),
]

SECRET = "k1:" + secrets.token_urlsafe(24)


def plugin_entry_point_installed() -> bool:
    return any(ep.name == "kakao_pose_callbacks" for ep in entry_points(group="airflow.plugins"))


def test_the_api_server_mounts_the_receiver_outside_the_login(tmp_path):
    import redis

    port = free_port()
    store = f"redis://127.0.0.1:{port}/1"
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    redis_proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dep = Deployment(tmp_path / "airflow", secret=SECRET)
    extra = {"AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE": store, "AIRFLOW__KAKAO_POSE__CALLBACK_SECRET": SECRET}
    extra["AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL"] = "https://airflow.example.com"
    if not plugin_entry_point_installed():  # an editable install older than the entry point: provider info
        extra["AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS"] = "False"
    dep.airflow_env(DAGS, extra)
    try:
        dep.run("db-migrate", "db", "migrate", timeout=240)
        dep.start_api_server()
        url = f"{dep.api_url}{callbacks.MOUNT_PATH}{callbacks.ROUTE}"

        def answers() -> bool:
            dep.check_alive()
            try:
                return requests.get(url, timeout=2).status_code != 404
            except requests.ConnectionError:
                return False

        dep.wait_until("the api-server to mount the receiver", answers, timeout=120)
        keys = callbacks.parse_keys(SECRET)
        token, nonce = callbacks.make_token(keys, time.time() + 600)
        callbacks.bind_nonce(store, nonce, "job-1", time.time() + 600)
        # no login, no cookie: the route answers itself, and only a genuine callback counts
        assert requests.get(url, params={"token": token, "job_id": "job-1"}, timeout=10).status_code == 200
        assert requests.post(url, params={"token": token, "job_id": "job-1"}, timeout=10).status_code == 200
        assert requests.get(url, params={"token": token + "x", "job_id": "job-1"}, timeout=10).status_code == 403
        assert requests.get(url, params={"token": token, "job_id": "job-2"}, timeout=10).status_code == 409
        assert requests.get(url, timeout=10).status_code == 400
        client = redis.Redis.from_url(store)
        assert client.exists(callbacks.ENDED_KEY.format("job-1"))
        assert not client.exists(callbacks.ENDED_KEY.format("job-2"))
        assert requests.get(f"{dep.api_url}{callbacks.MOUNT_PATH}/docs", timeout=10).status_code == 404
        assert requests.get(f"{dep.api_url}{callbacks.MOUNT_PATH}/openapi.json", timeout=10).status_code == 404
        assert SECRET.split(":", 1)[1] not in dep.read_log("api-server")
        assert token not in dep.read_log("api-server")
    except BaseException:
        print(dep.report())
        raise
    finally:
        dep.stop_all(grace=0)
        redis_proc.kill()
        redis_proc.wait()
