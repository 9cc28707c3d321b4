"""The README's minimal DAG runs as written: scheduled and manual runs, on every supported Airflow."""

from __future__ import annotations

import importlib
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import use_emulator_as_default_conn

from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS

OUTPUT = Path("/tmp/pose")  # where the README writes


@pytest.fixture
def readme_dag(airflow_db, emulator, monkeypatch):
    """The README's DAG module, with ``kakao_pose_default`` pointing at the emulator (the only change: the
    README's connection holds a real key for the real service)."""
    use_emulator_as_default_conn(monkeypatch, emulator)
    sys.modules.pop("kakao_pose_readme", None)
    created = not OUTPUT.exists()
    yield importlib.import_module("kakao_pose_readme").dag
    if created:
        shutil.rmtree(OUTPUT, ignore_errors=True)


def test_the_readme_dag_does_not_catch_up(readme_dag):
    """Unpausing it starts one run, not one per day since 2026-01-01 (2.11's default is catchup=True)."""
    assert readme_dag.catchup is False and readme_dag.dag_id == "pose_daily"


def test_a_scheduled_run_of_the_readme_dag(readme_dag, emulator):
    day = datetime(2026, 3, 14, tzinfo=UTC)
    run = readme_dag.test(**({"logical_date": day} if AIRFLOW_V_3_0_PLUS else {"execution_date": day}))
    assert run.state == "success"
    table = pq.read_table(OUTPUT / "dt=2026-03-14" / "keypoints.parquet")
    assert table.num_rows > 0 and "track_id" in table.column_names
    [posted] = [r.fields["video_url"] for r in emulator.requests if r.method == "POST"]
    assert posted == "https://example.com/videos/2026-03-14.mp4"


@pytest.mark.skipif(not AIRFLOW_V_3_0_PLUS, reason="Airflow 2 gives every run a logical date")
def test_a_manual_run_of_the_readme_dag_without_a_logical_date(readme_dag, emulator):
    """Airflow 3's manual runs have no logical date (`ds` is undefined): the day is the one it was triggered."""
    run = readme_dag.test(logical_date=None)
    assert run.state == "success" and run.logical_date is None
    day = run.run_after.strftime("%Y-%m-%d")
    assert pq.read_table(OUTPUT / f"dt={day}" / "keypoints.parquet").num_rows > 0
    [posted] = [r.fields["video_url"] for r in emulator.requests if r.method == "POST"]
    assert posted == f"https://example.com/videos/{day}.mp4"
