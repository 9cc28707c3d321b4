"""The job-status vocabulary (:mod:`airflow_provider_kakaopose.jobs`): statuses, what each means, trigger events."""

from __future__ import annotations

import json

import pytest

from airflow_provider_kakaopose._compat import AirflowSensorTimeout
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseAuthError,
    KakaoPoseError,
    KakaoPoseJobFailedError,
    KakaoPoseJobNotFoundError,
    KakaoPoseResponseError,
)
from airflow_provider_kakaopose.jobs import (
    ENDED,
    RUNNING,
    JobStatus,
    ended_job_event,
    is_running,
    job_finished,
    job_id_from_event,
)

#: Every status as the service spells it on the wire.
WIRE = ("waiting", "processing", "success", "failed", "not found")


def test_statuses_are_the_wire_strings():
    assert [str(s) for s in JobStatus] == list(WIRE)
    assert {JobStatus(s) for s in WIRE} == set(JobStatus)
    assert all(s in set(JobStatus) for s in WIRE)  # a plain string finds its member in a set: equal, same hash
    assert set(JobStatus) == RUNNING | ENDED and not RUNNING & ENDED
    assert json.dumps(list(JobStatus)) == json.dumps(list(WIRE))


def test_the_hooks_accept_exactly_these_statuses():
    from airflow_provider_kakaopose.hooks._client import JOB_STATUSES, check_job

    assert set(JOB_STATUSES) == set(WIRE)
    for status in WIRE:
        assert check_job({"status": status}, "GET", "/pose/job/x") == {"status": status}
    for bad in ("done", None, ["success"], {"a": 1}):
        with pytest.raises(KakaoPoseResponseError, match="unknown job status") as info:
            check_job({"status": bad}, "GET", "/pose/job/x")
        assert "expected one of failed, not found, processing, success, waiting" in str(info.value)


@pytest.mark.parametrize(("status", "running"), [*((s, s in ("waiting", "processing")) for s in WIRE), ([1], False)])
def test_is_running(status, running):
    assert is_running(status) is running


def test_job_finished_for_every_status():
    assert job_finished("j", {"status": "success"}) is True
    assert job_finished("j", {"status": "waiting"}) is False
    assert job_finished("j", {"status": "processing"}) is False
    with pytest.raises(KakaoPoseJobFailedError, match=r"^Pose job j failed: Failed to get video$") as info:
        job_finished("j", {"status": "failed", "description": "Failed to get video"})
    assert info.value.msg == "Failed to get video"
    with pytest.raises(KakaoPoseJobFailedError, match="no description given"):
        job_finished("j", {"status": "failed"})
    with pytest.raises(
        KakaoPoseJobNotFoundError, match=r"^Pose job j is not found \(unknown id, or older than 7 days\)"
    ):
        job_finished("j", {"status": "not found"})


def test_the_deprecated_raise_for_job_still_answers():
    from airflow_provider_kakaopose.sensors.pose import raise_for_event, raise_for_job

    with pytest.warns(DeprecationWarning, match="job_finished"):
        assert raise_for_job("j", {"status": "success"}) is True
    with pytest.warns(DeprecationWarning, match="job_id_from_event"), pytest.raises(AirflowSensorTimeout):
        raise_for_event({"status": "timeout", "job_id": "j", "message": "late"})


# ------------------------------------------------------------------------------------------ trigger events


def test_ended_job_events_are_plain_strings_and_read_back():
    """The trigger's payloads hold plain ``str`` (as earlier releases wrote them), never enum members."""
    assert ended_job_event("j", {"status": "waiting"}) is None
    assert ended_job_event("j", {"status": "processing"}) is None
    success = ended_job_event("j", {"status": "success"})
    assert success == {"status": "success", "job_id": "j", "message": "Job j succeeded"}
    assert type(success["status"]) is str
    assert job_id_from_event(json.loads(json.dumps(success))) == "j"
    failed = ended_job_event("j", {"status": "failed", "description": "bad codec"})
    assert failed == {"status": "failed", "job_id": "j", "message": "Job j failed: bad codec"}
    missing = ended_job_event("j", {"status": "not found"})
    assert missing == {
        "status": "not found",
        "job_id": "j",
        "message": "Job j is not found (unknown id, or older than 7 days)",
    }
    for event, error in ((failed, KakaoPoseJobFailedError), (missing, KakaoPoseJobNotFoundError)):
        with pytest.raises(error, match=event["message"].replace("(", r"\(").replace(")", r"\)")):
            job_id_from_event(event)


#: Events exactly as the trigger of earlier releases fired them (and a deferred task may still hold).
OLD_EVENTS = [
    ({"status": "success", "job_id": "j1", "message": "Job j1 succeeded"}, None),
    ({"status": "failed", "job_id": "j1", "message": "Job j1 failed: Failed to get video"}, KakaoPoseJobFailedError),
    (
        {"status": "not found", "job_id": "j1", "message": "Job j1 is not found (unknown id, or older than 7 days)"},
        KakaoPoseJobNotFoundError,
    ),
    ({"status": "timeout", "job_id": "j1", "message": "Job j1 was still processing at the deadline"}, "timeout"),
    (
        {
            "status": "error",
            "job_id": "j1",
            "message": "Polling job j1 failed: -401",
            "error_type": "KakaoPoseAuthError",
        },
        KakaoPoseAuthError,
    ),
    ({"status": "error", "job_id": "j1", "message": "Polling job j1 failed: boom"}, KakaoPoseError),
]


@pytest.mark.parametrize(
    ("event", "error"), OLD_EVENTS, ids=[e["status"] + str(i) for i, (e, _) in enumerate(OLD_EVENTS)]
)
def test_events_written_by_earlier_releases_are_still_understood(event, error):
    if error is None:
        assert job_id_from_event(event) == "j1"
        assert job_id_from_event(event, timeout_error=AirflowSensorTimeout) == "j1"
        return
    if error == "timeout":
        with pytest.raises(KakaoPoseError, match="still processing at the deadline"):
            job_id_from_event(event)  # the video operator's default
        with pytest.raises(AirflowSensorTimeout, match="still processing at the deadline"):
            job_id_from_event(event, timeout_error=AirflowSensorTimeout)  # the sensor's
        return
    with pytest.raises(error) as info:
        job_id_from_event(event)
    assert type(info.value) is error and str(info.value) == event["message"]


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (None, "Unexpected trigger event None: expected a dict with a status"),
        ("success", "Unexpected trigger event 'success': expected a dict with a status"),
        ({}, "expected a dict with a status"),
        ({"job_id": "j1", "message": "hi"}, "expected a dict with a status"),
        ({"status": "success", "message": "ok"}, "a success without a job id"),
        ({"status": "success", "job_id": "", "message": "ok"}, "a success without a job id"),
        ({"status": "done", "job_id": "j1", "message": "hi"}, "unknown status 'done'"),
    ],
)
def test_a_missing_or_malformed_event_raises_naming_it(event, says):
    with pytest.raises(KakaoPoseError, match=says.replace("(", r"\(").replace(")", r"\)")) as info:
        job_id_from_event(event)
    assert type(info.value) is KakaoPoseError


def test_an_error_event_names_only_pose_errors():
    for error_type in ("ValueError", "AirflowException", "json", None):
        with pytest.raises(KakaoPoseError) as info:
            job_id_from_event({"status": "error", "job_id": "j", "message": "m", "error_type": error_type})
        assert type(info.value) is KakaoPoseError
    with pytest.raises(KakaoPoseError, match="Unexpected trigger event"):
        job_id_from_event({"status": "error", "job_id": "j"})  # no message: the event is named


def test_a_timeout_event_without_a_message_still_says_what_timed_out():
    with pytest.raises(KakaoPoseError, match="^Pose job timed out$"):
        job_id_from_event({"status": "timeout", "job_id": "j"})
