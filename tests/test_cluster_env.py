"""``make cluster``'s environment (no cluster started): callbacks wired to its api-server, one generated secret
for every component, the caller's ``AIRFLOW__KAKAO_POSE__*`` passed on."""

from __future__ import annotations

import sys

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from kakaopose_cluster import Cluster
from kakaopose_cluster.airflow_components import AirflowComponents


def cluster_env(tmp_path, monkeypatch, **caller: str) -> tuple[Cluster, dict[str, str]]:
    for name, value in caller.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AIRFLOW_CONN_KAKAO_POSE_DEFAULT", raising=False)
    cluster = Cluster(tmp_path / "cluster", log=lambda _: None)
    cluster.new_state(True, tmp_path / "pg", False, {})
    cluster.state["emulator_url"] = "http://127.0.0.1:1"
    (tmp_path / "cluster" / "home").mkdir(parents=True, exist_ok=True)
    return cluster, AirflowComponents(cluster).env(tmp_path, 1, 1, 1, {})


def test_the_cluster_wires_callbacks_to_its_api_server(tmp_path, monkeypatch):
    cluster, env = cluster_env(tmp_path, monkeypatch)
    assert env["AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL"] == cluster.api_url
    kid, _, secret = env["AIRFLOW__KAKAO_POSE__CALLBACK_SECRET"].partition(":")
    assert kid == "cluster" and len(secret) >= 32
    assert env["AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE"] == cluster.rate_limit_store
    again = Cluster(tmp_path / "cluster", log=lambda _: None)  # a later `up` on the same folder keeps the secret
    again.new_state(True, tmp_path / "pg", False, {})
    assert again.secrets["callback_secret"] == cluster.secrets["callback_secret"]
    cluster.state["env"] = env
    described = cluster.describe()
    assert f"{cluster.api_url}/kakao-pose-callbacks/job-ended" in described and secret not in described


def test_the_callers_provider_settings_reach_every_component(tmp_path, monkeypatch):
    _, env = cluster_env(
        tmp_path,
        monkeypatch,
        AIRFLOW__KAKAO_POSE__CALLBACK_POLL_INTERVAL="45",
        AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL="https://ingress.example.com",
    )
    assert env["AIRFLOW__KAKAO_POSE__CALLBACK_POLL_INTERVAL"] == "45"
    assert env["AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL"] == "https://ingress.example.com"  # the caller's wins
