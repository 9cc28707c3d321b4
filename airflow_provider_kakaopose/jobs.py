"""A video job's statuses, what each means for a task, and the events the trigger fires about them.

The one place that spells the statuses out and maps them to outcomes. The hooks check answers against
:class:`JobStatus`, the status reader stops early on it, the trigger turns an ended job into an event with
:func:`ended_job_event`, the sensor and the operators turn a polled body into "done?" with
:func:`job_finished` and a trigger event into the job id with :func:`job_id_from_event`, and the tables refuse
a body that is not a success by it.

Statuses are plain strings on the wire and in trigger events: :class:`JobStatus` members compare equal to
(and hash like) those strings, so a status read from the service, and an event or a serialized trigger written
by an earlier release, are understood as they are.

Pure: no Airflow import (beyond what :mod:`.exceptions` uses when Airflow is installed), no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
    KakaoPoseJobFailedError,
    KakaoPoseJobNotFoundError,
)


class JobStatus(StrEnum):
    """A video job's ``status`` as ``GET /pose/job/{id}`` answers it (members are those strings)."""

    WAITING = "waiting"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"
    NOT_FOUND = "not found"


#: Statuses of a job that is still under way: waiting for it goes on.
RUNNING: Final = frozenset({JobStatus.WAITING, JobStatus.PROCESSING})
#: Statuses after which a job never changes again.
ENDED: Final = frozenset({JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.NOT_FOUND})


def is_running(status: object) -> bool:
    """Whether ``status``, as a body gave it (any JSON value), says the job is still under way."""
    return isinstance(status, str) and status in RUNNING


#: The trigger's event statuses besides a job's ended ones: the deadline passed, or polling failed.
EVENT_TIMEOUT: Final = "timeout"
EVENT_ERROR: Final = "error"


def not_found_message(job_id: str, subject: str = "Pose job") -> str:
    """What a ``not found`` status means, said about ``job_id``."""
    return f"{subject} {job_id} is not found (unknown id, or older than 7 days)"


def failure_reason(body: Mapping[str, Any]) -> str:
    """The service's description of a failed job, or a placeholder when it gave none."""
    return body.get("description") or "no description given"


def job_finished(job_id: str, body: Mapping[str, Any]) -> bool:
    """Whether the job whose polled ``body`` this is has succeeded: ``True`` on ``success``, ``False`` while it
    runs; :class:`KakaoPoseJobFailedError` (with the service's description as ``msg``) when it failed,
    :class:`KakaoPoseJobNotFoundError` when the service does not know it."""
    status = body.get("status")
    if status == JobStatus.SUCCESS:
        return True
    if status == JobStatus.FAILED:
        raise KakaoPoseJobFailedError(f"Pose job {job_id} failed: {failure_reason(body)}", msg=body.get("description"))
    if status == JobStatus.NOT_FOUND:
        raise KakaoPoseJobNotFoundError(not_found_message(job_id))
    return False


# ------------------------------------------------------------------------------------------ trigger events


def job_event(status: str, job_id: str, message: str, error_type: str | None = None) -> dict[str, Any]:
    """The payload of a :class:`~airflow_provider_kakaopose.triggers.pose.KakaoPoseJobTrigger` event:
    ``{"status", "job_id", "message"}``, plus ``error_type`` (an exception class name) for an ``error``.
    Values are plain strings, as events from earlier releases were."""
    payload: dict[str, Any] = {"status": str(status), "job_id": job_id, "message": message}
    if error_type is not None:
        payload["error_type"] = error_type
    return payload


def ended_job_event(job_id: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The event payload for a job whose polled ``body`` says it ended; ``None`` while it runs."""
    status = body.get("status")
    if status == JobStatus.SUCCESS:
        return job_event(JobStatus.SUCCESS, job_id, f"Job {job_id} succeeded")
    if status == JobStatus.FAILED:
        return job_event(JobStatus.FAILED, job_id, f"Job {job_id} failed: {failure_reason(body)}")
    if status == JobStatus.NOT_FOUND:
        return job_event(JobStatus.NOT_FOUND, job_id, not_found_message(job_id, "Job"))
    return None


def job_id_from_event(event: Any, *, timeout_error: type[Exception] = KakaoPoseError) -> str:
    """The job id of a trigger's ``success`` event; for any other event, the matching exception.

    ``failed`` raises :class:`KakaoPoseJobFailedError`, ``not found`` :class:`KakaoPoseJobNotFoundError`,
    ``timeout`` ``timeout_error`` (the sensor passes Airflow's ``AirflowSensorTimeout``), ``error`` the
    :class:`KakaoPoseError` subclass its ``error_type`` names (else :class:`KakaoPoseError`), each with the
    event's message. A missing or malformed event (``None``, not a dict, no status, a success without a job
    id, a status no trigger fires) raises :class:`KakaoPoseError` naming the event.
    """
    if not isinstance(event, Mapping) or not event.get("status"):
        raise KakaoPoseError(f"Unexpected trigger event {event!r}: expected a dict with a status")
    status, job_id, message = event["status"], event.get("job_id"), str(event.get("message") or "")
    if status == JobStatus.SUCCESS:
        if not isinstance(job_id, str) or not job_id:
            raise KakaoPoseError(f"Unexpected trigger event {event!r}: a success without a job id")
        return job_id
    if status == JobStatus.FAILED:
        raise KakaoPoseJobFailedError(message)
    if status == JobStatus.NOT_FOUND:
        raise KakaoPoseJobNotFoundError(message)
    if status == EVENT_TIMEOUT:
        raise timeout_error(message or "Pose job timed out")
    if status != EVENT_ERROR:
        raise KakaoPoseError(f"Unexpected trigger event {event!r}: unknown status {status!r}")
    raise _error_class(event.get("error_type"))(message or f"Unexpected trigger event {event!r}")


def _error_class(name: Any) -> type[KakaoPoseError]:
    """The :class:`KakaoPoseError` subclass an ``error`` event names, so the worker raises what the triggerer
    caught; :class:`KakaoPoseError` for any other name."""
    from airflow_provider_kakaopose import exceptions

    error = getattr(exceptions, str(name), None)
    return error if isinstance(error, type) and issubclass(error, KakaoPoseError) else KakaoPoseError
