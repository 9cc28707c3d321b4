"""The provider on a real distributed Airflow (``make cluster``: PostgreSQL, Redis, Celery workers, two
triggerers), with one worker and one triggerer SIGKILLed mid-run: benchmarks/cluster.py's scenario, smaller."""

from __future__ import annotations

import sys

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from cluster import Scenario, run

pytestmark = pytest.mark.timeout(600)


def test_videos_and_image_batches_survive_a_worker_and_a_triggerer_kill_on_one_shared_quota(tmp_path):
    """8 deferrable video tasks and 120 images in 3 mapped batches, quota 10/s counting every request, 300 ms
    latency; a worker and a triggerer die while work is in flight. The video waits listen for the service's
    callbacks (make cluster wires them), a quarter of which the service drops: those jobs end by the fallback
    poll (callback_poll_interval 20 s here). Every input ends in a table, no video is
    submitted twice unless the job record explains it (a kill between sending and recording), the deployment
    as a whole never sends more than the quota in any second, and the service refuses (almost) nothing."""
    scenario = Scenario(
        videos=8,
        images=120,
        batch=40,
        quota=10,
        latency=0.3,
        poll_interval=5.0,
        job_processing_s=15.0,
        kill_at=0.3,
        timeout=420.0,
        callback_drop_rate=0.25,
        callback_poll_interval=20.0,
    )
    report = run(scenario, tmp_path / "cluster", log=print, trace_dir=tmp_path)
    print(report.table())
    assert report.dag_state == "success"
    assert len(report.killed) == 2  # a worker and a triggerer, while the run was going
    goals = {name: (ok, measured) for name, ok, measured in report.goals()}
    assert goals["every input accounted for"][0], goals["every input accounted for"][1]
    assert report.videos_ok == 8 and report.images_ok + report.image_errors == 120
    # Callbacks were asked for, some delivered (200) and some dropped: every video ended all the same.
    assert report.callbacks.get("200", 0) >= 1 and report.callbacks.get("dropped", 0) >= 1, report.callbacks
    assert not report.unexplained_duplicates, report.duplicate_submissions
    assert report.peak_per_second <= scenario.quota
    assert report.refusals <= 0.01 * report.requests
    # What was killed was doing something: some tasks needed a second try.
    assert any(key.endswith("try2") for key in report.task_tries), report.task_tries
