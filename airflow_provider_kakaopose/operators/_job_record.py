"""Where a video task keeps, across its tries, the job it submitted: so a retry re-attaches instead of
paying for the same video twice, and counts the submissions whose outcome it never learnt.

Imported when a DAG file is parsed: nothing heavy at module level (tenacity and the tables' storage are
imported when a record is saved or read).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose.operators._outputs import (
    default_job_record_uri,
    legacy_job_record_uri,
    run_identity,
)

if TYPE_CHECKING:
    from airflow_provider_kakaopose._compat import Context

#: Key under which a video operator keeps its job id in the task state store, so a retry re-attaches.
JOB_STATE_KEY = "kakao_pose_job"

#: The service keeps jobs for seven days; a stored job id is useless after that.
JOB_RETENTION = timedelta(days=7)
#: Tries to save a job record once its job exists (a lost record costs a second job on the next try).
SAVE_ATTEMPTS = 4

#: Settings a job record from before they were stored is taken to have had.
OLD_RECORD_DEFAULTS: dict[str, Any] = {"smoothing": True, "callback_url": None}


def utc_now() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def settle_pending(record: dict[str, Any], log: Any) -> int:
    """Count a submission an earlier try sent but never recorded the answer of; return the unknown count."""
    unknown = int(record.get("unknown_submissions") or 0)
    pending = record.get("pending")
    if pending:
        unknown += 1
        since = pending.get("since")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if isinstance(since, int | float) else "?"
        record["last_unknown"] = f"{when}: the try stopped after sending the submission, before its answer was recorded"
        record["unknown_submissions"] = unknown
        record["pending"] = None
    return unknown


def variable_key(run: str) -> str:
    """A Variable name for one task instance (readable prefix, the run id hashed: keys hold 250 chars)."""
    import hashlib

    dag_id, run_id, task_id, map_index = json.loads(run)
    digest = hashlib.sha256(str(run_id).encode()).hexdigest()[:16]
    return f"kakao_pose_job__{dag_id}__{task_id}__{map_index}__{digest}"[:250]


def _empty_record() -> dict[str, Any]:
    return {"job": None, "pending": None, "unknown_submissions": 0, "last_unknown": None}


class JobRecordStore:
    """Where a video task keeps, across its tries, the job it submitted and the submissions it is unsure of.

    The record is ``{"job": {"job_id", "video", "smoothing", "callback_url", "deadline", "callback_requested"}
    | None, "pending": {...} | None, "unknown_submissions": int, "last_unknown": str | None}``
    (``callback_url`` is the user's; ``callback_requested`` says whether the provider's signed callback was
    sent, never its URL), kept

    - on Airflow 3.3+: in the task state store (``context["task_state_store"]``, key ``kakao_pose_job``, 7 days);
    - on older Airflow, for a task that writes a table: in a JSON file in the folder beside it
      (``_kakaopose/<stem>.job.json``, out of the dataset), written atomically through the same storage as the
      table, stamped with the task instance that wrote it (a record where releases before 0.3 kept it,
      ``<stem>.job.json`` beside the table, is still read);
    - on older Airflow, for a task without output (``wait_for_completion=False``, ``output_uri=None``): in an
      Airflow Variable named after the task instance, deleted when the task succeeds.

    It is written before the submission is sent and again once the job id is known, before any deferral.
    """

    def __init__(self, context: Context, log: Any, *, output_uri: str | None = None) -> None:
        self.log = log
        self.run = run_identity(context)
        state = context.get("task_state_store")
        self._place: _StatePlace | _FilePlace | _VariablePlace
        if state is not None:
            self._place = _StatePlace(state)
        elif output_uri:
            self._place = _FilePlace(output_uri, self.run, log)
        else:
            self._place = _VariablePlace(variable_key(self.run), log)

    @property
    def where(self) -> str:
        """Where the record lives, for log lines."""
        return self._place.where

    def load(self) -> dict[str, Any]:
        saved = self._place.read()
        if not isinstance(saved, dict):
            return _empty_record()
        if "job_id" in saved:  # a record written before the settings were stored: the job alone
            return {**_empty_record(), "job": saved}
        return {k: v for k, v in saved.items() if k != "run"}

    def save(self, record: dict[str, Any], *, retry: bool = False) -> None:
        """Store ``record``; with ``retry``, a failing store is tried again a few times (a job id that is not
        saved costs a second job on the next try)."""
        if not retry:
            self._place.write(record, self.run)
            return
        from tenacity import Retrying, stop_after_attempt, wait_exponential

        for attempt in Retrying(
            stop=stop_after_attempt(SAVE_ATTEMPTS), wait=wait_exponential(0.5, max=4), reraise=True
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.log.warning(
                        "Saving the job record to %s again (attempt %d)",
                        self.where,
                        attempt.retry_state.attempt_number,
                    )
                self.save(record)

    def done(self) -> None:
        """The task succeeded: a Variable record is no longer needed (a file record stays beside its table)."""
        self._place.done()


def _stamped(record: dict[str, Any], run: str) -> str:
    """The record as JSON, stamped with the task instance that wrote it."""
    return json.dumps({**record, "run": run}, sort_keys=True)


class _StatePlace:
    """Airflow 3.3+'s task state store (kept for :data:`JOB_RETENTION`)."""

    where = "the task state store"

    def __init__(self, state: Any) -> None:
        self._state = state

    def read(self) -> Any:
        return self._state.get(JOB_STATE_KEY)

    def write(self, record: dict[str, Any], run: str) -> None:
        self._state.set(JOB_STATE_KEY, record, retention=JOB_RETENTION)

    def done(self) -> None:
        pass


class _FilePlace:
    """A JSON file in the folder beside the task's table (the record of releases before 0.3 beside the table
    itself is still read)."""

    def __init__(self, output_uri: str, run: str, log: Any) -> None:
        self._file = default_job_record_uri(output_uri)
        self._legacy_file = legacy_job_record_uri(output_uri)
        self._run = run
        self._log = log
        self.where = f"the file {self._file}"

    def read(self) -> Any:
        from airflow_provider_kakaopose.tables import read_bytes_if_exists

        for uri in (self._file, self._legacy_file):
            raw = read_bytes_if_exists(uri)
            if raw:
                saved = json.loads(raw)
                if isinstance(saved, dict) and saved.get("run") != self._run:
                    self._log.info("%s was written by another task instance: not this task's job", uri)
                    return None
                return saved
        return None

    def write(self, record: dict[str, Any], run: str) -> None:
        from airflow_provider_kakaopose.tables import write_bytes

        write_bytes(self._file, _stamped(record, run).encode())

    def done(self) -> None:
        pass  # the record stays beside its table


class _VariablePlace:
    """An Airflow Variable named after the task instance, deleted when the task succeeds."""

    def __init__(self, key: str, log: Any) -> None:
        self._key = key
        self._log = log
        self.where = f"the Airflow Variable {key}"

    def read(self) -> Any:
        from airflow_provider_kakaopose._compat import Variable

        raw = Variable.get(self._key, None)
        return json.loads(raw) if raw else None

    def write(self, record: dict[str, Any], run: str) -> None:
        from airflow_provider_kakaopose._compat import Variable

        Variable.set(
            self._key, _stamped(record, run), description="kakao-pose video task's job record (deleted on success)"
        )

    def done(self) -> None:
        from airflow_provider_kakaopose._compat import Variable

        try:
            Variable.delete(self._key)
        except Exception as err:  # the task's work is done; a stale record only costs a re-attach
            self._log.warning("Could not delete the Variable %s: %s", self._key, err)
