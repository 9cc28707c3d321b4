"""Operators that send images and videos to the Pose API and land the keypoints as Parquet.

- :class:`KakaoPoseImageOperator`: one image or a list → ``POST /pose`` each → one Parquet table.
- :class:`KakaoPoseVideoOperator`: ``POST /pose/job``, then (optionally) wait — in the triggerer when
  deferrable — and write the result's table. A retry re-attaches to the job it already submitted.
- :class:`KakaoPoseJobToParquetOperator`: the load step after :class:`~..sensors.pose.KakaoPoseJobSensor`.

Heavy libraries (pyarrow) are imported only when a task runs, never when a DAG file is parsed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_kakaopose.exceptions import KakaoPoseError, KakaoPoseInputError
from airflow_provider_kakaopose.get_provider_info import DEFAULT_CONN_ID
from airflow_provider_kakaopose.sensors.pose import raise_for_event, raise_for_job

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

#: Key under which a video operator keeps its job id in the task state store, so a retry re-attaches.
JOB_STATE_KEY = "kakao_pose_job"
#: The service keeps jobs for seven days; a stored job id is useless after that.
JOB_RETENTION = timedelta(days=7)


def _default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def output_uri_of(output: Any) -> str | None:
    """The URI of an ``output_uri`` given as a string, a path or an Airflow ``Asset``."""
    if output is None:
        return None
    uri = getattr(output, "uri", None)
    return str(uri if uri is not None else output)


def _is_url(item: Any) -> bool:
    return isinstance(item, str) and item.lower().startswith(("http://", "https://"))


def open_input(item: Any) -> tuple[str, dict[str, Any]]:
    """``(source label, hook kwargs)`` for one image or video: http(s) URLs are sent as URLs, anything else
    (local path, ``file://``, ``s3://conn@bucket/key``, an ``ObjectStoragePath``) is read and uploaded."""
    if _is_url(item):
        return item, {"url": item}
    if isinstance(item, str) and "://" in item:
        from airflow.sdk import ObjectStoragePath

        return item, {"file": ObjectStoragePath(item)}
    if isinstance(item, str | os.PathLike) or hasattr(item, "read_bytes"):
        return str(item), {"file": item}
    raise KakaoPoseInputError(f"Cannot read input {item!r}: give an http(s) URL, a path or a storage URI")


@dataclass
class ImageOutcome:
    """What happened to one image of a batch: its persons, or the error that stopped it."""

    source: str
    persons: list[dict] | None = None
    error: KakaoPoseError | None = None


class KakaoPoseImageOperator(BaseOperator):
    """Detect poses in one image or a list of images and write one Parquet table.

    :param images: one item or a list (templated). http(s) URLs are passed to the service as ``image_url``;
        anything else (local path, ``file://``, ``s3://conn_id@bucket/key``, …) is read through
        ObjectStoragePath and uploaded.
    :param output_uri: where the Parquet goes (templated): local path or any ObjectStoragePath/fsspec URI,
        or an ``Asset`` (then it is also added to the task's outlets).
    :param kakao_pose_conn_id: the ``kakao_pose`` connection.

    Returns (XCom) a small summary: ``{"output_uri", "images", "persons", "rows"}`` — never the raw answers.
    """

    template_fields: Sequence[str] = ("images", "output_uri")
    ui_color = "#fee500"

    def __init__(
        self,
        *,
        images: Any,
        output_uri: Any,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.images = images
        self.output_uri = output_uri
        self.kakao_pose_conn_id = kakao_pose_conn_id
        _add_asset_outlet(self, output_uri)

    def _items(self) -> list[Any]:
        items = self.images
        if items is None or isinstance(items, str | bytes | os.PathLike) or not hasattr(items, "__iter__"):
            items = [items]
        items = list(items)
        if not items or any(i is None or (isinstance(i, str) and not i.strip()) for i in items):
            raise KakaoPoseInputError(f"images must be one or more URLs or paths, got {self.images!r}")
        return items

    def analyze_one(self, hook: KakaoPoseHook, item: Any) -> ImageOutcome:
        """Analyse one image. Errors propagate today; a batch policy can record them instead."""
        source, kwargs = open_input(item)
        if "url" in kwargs:
            persons = hook.analyze_image(image_url=kwargs["url"])
        else:
            persons = hook.analyze_image(file=kwargs["file"])
        return ImageOutcome(source=source, persons=persons)

    def execute(self, context: Context) -> dict[str, Any]:
        import pyarrow as pa

        from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook
        from airflow_provider_kakaopose.tables import keypoints_table, write_parquet

        output_uri = output_uri_of(self.output_uri)
        if not output_uri:
            raise KakaoPoseInputError("output_uri is required")
        items = self._items()
        hook = KakaoPoseHook(self.kakao_pose_conn_id)
        tables = []
        persons = 0
        for n, item in enumerate(items, 1):
            outcome = self.analyze_one(hook, item)
            persons += len(outcome.persons or [])
            tables.append(keypoints_table(outcome.persons or [], source=outcome.source))
            self.log.info("Image %d/%d %s: %d person(s)", n, len(items), outcome.source, len(outcome.persons))
        # One table for the batch: per-image "source" metadata gives way to the list of every image analysed
        # (images with nobody in them have no rows, but are still accounted for).
        meta = {k: v for k, v in (tables[0].schema.metadata or {}).items() if k != b"kakaopose:source"}
        meta[b"kakaopose:sources"] = json.dumps([str(open_input(i)[0]) for i in items]).encode()
        table = pa.concat_tables([t.replace_schema_metadata(meta) for t in tables])
        write_parquet(table, output_uri)
        summary = {"output_uri": output_uri, "images": len(items), "persons": persons, "rows": table.num_rows}
        self.log.info("Wrote %s", summary)
        return summary


class _JobLoader:
    """Fetch a finished job's raw body and write its table (shared by the video and load operators)."""

    kakao_pose_conn_id: str
    log: Any

    def load_job(self, job_id: str, output_uri: str | None, source: str | None) -> dict[str, Any]:
        """Stream the job's raw JSON into Parquet (never the whole parsed result in memory)."""
        from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

        if output_uri is None:
            return {"job_id": job_id, "status": "success", "output_uri": None}
        from airflow_provider_kakaopose.tables import keypoints_reader, write_parquet

        raw = KakaoPoseHook(self.kakao_pose_conn_id).get_job_bytes(job_id)
        reader = keypoints_reader(raw, source=source)  # raises for failed / not found bodies too
        counter = _Counter(reader)
        rows = write_parquet(counter.reader(), output_uri)
        summary = {
            "output_uri": output_uri,
            "job_id": job_id,
            "frames": counter.frames,
            "persons": counter.persons,
            "rows": rows,
        }
        self.log.info("Wrote %s", summary)
        return summary


class _Counter:
    """Pass a keypoints stream through while counting person detections; reads the frame count."""

    def __init__(self, reader: Any) -> None:
        import json

        self._source = reader
        self.persons = 0
        meta = reader.schema.metadata or {}
        try:
            self.frames: int | None = int(json.loads(meta[b"kakaopose:video"])["frames"])
        except (KeyError, ValueError, TypeError):
            self.frames = None

    def reader(self) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        def batches():
            for batch in self._source:
                self.persons += int(pc.sum(pc.equal(batch["keypoint_id"], 1)).as_py() or 0)
                yield batch

        return pa.RecordBatchReader.from_batches(self._source.schema, batches())


class KakaoPoseVideoOperator(_JobLoader, BaseOperator):
    """Analyse a video: submit the job, wait for it, write its keypoints as Parquet.

    :param video: an http(s) URL (sent as ``video_url``) or a path/URI to upload (templated).
    :param output_uri: where the Parquet goes (templated); ``None`` to only wait. May be an ``Asset``.
    :param smoothing: smooth keypoints between frames (the service's default, true).
    :param callback_url: the service calls it once when the job ends (templated).
    :param wait_for_completion: ``False`` returns the job id at once (submit → sensor → load DAGs).
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param poll_interval: seconds between status checks.
    :param timeout: how long to wait for the job (seconds or timedelta), an absolute deadline from the
        first attempt's submission.
    :param kakao_pose_conn_id: the ``kakao_pose`` connection.

    A retried task does not submit the same video again: the job id is kept in the task state store
    (Airflow 3.3+) and a retry re-attaches while the job is waiting, processing or succeeded.
    """

    template_fields: Sequence[str] = ("video", "output_uri", "callback_url")
    ui_color = "#fee500"

    def __init__(
        self,
        *,
        video: Any,
        output_uri: Any = None,
        smoothing: bool = True,
        callback_url: str | None = None,
        wait_for_completion: bool = True,
        deferrable: bool | None = None,
        poll_interval: float = 10.0,
        timeout: float | timedelta = 3600.0,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.video = video
        self.output_uri = output_uri
        self.smoothing = smoothing
        self.callback_url = callback_url
        self.wait_for_completion = wait_for_completion
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        self.poll_interval = float(poll_interval)
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.kakao_pose_conn_id = kakao_pose_conn_id
        _add_asset_outlet(self, output_uri)

    def _source(self) -> str:
        return open_input(self.video)[0]

    def _reattach(self, context: Context, hook: KakaoPoseHook) -> dict | None:
        """The job a previous try submitted for the same video, if it can still succeed."""
        store = context.get("task_state_store")
        saved = store.get(JOB_STATE_KEY) if store is not None else None
        if not isinstance(saved, dict) or saved.get("video") != self._source():
            return None
        status = hook.get_job(saved["job_id"])["status"]
        if status in ("waiting", "processing", "success"):
            self.log.info("Re-attaching to job %s (%s) submitted by an earlier try", saved["job_id"], status)
            return saved
        self.log.warning("Job %s from an earlier try is %s; submitting again", saved["job_id"], status)
        return None

    def _submit(self, context: Context, hook: KakaoPoseHook) -> dict:
        source, kwargs = open_input(self.video)
        job_id = hook.submit_video_job(
            video_url=kwargs.get("url"),
            file=kwargs.get("file"),
            smoothing=self.smoothing,
            callback_url=self.callback_url,
        )
        saved = {"job_id": job_id, "video": source, "deadline": time.time() + self.timeout}
        store = context.get("task_state_store")
        if store is not None:
            store.set(JOB_STATE_KEY, saved, retention=JOB_RETENTION)
        else:
            self.log.warning("No task state store: a retry of this task would submit the video again")
        self.log.info("Submitted %s as job %s", source, job_id)
        return saved

    def execute(self, context: Context) -> Any:
        from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

        hook = KakaoPoseHook(self.kakao_pose_conn_id)
        job = self._reattach(context, hook) or self._submit(context, hook)
        job_id = job["job_id"]
        context["ti"].xcom_push(key="job_id", value=job_id)
        if not self.wait_for_completion:
            return job_id
        deadline = float(job.get("deadline") or time.time() + self.timeout)
        body = hook.get_job(job_id)
        if self.deferrable and body["status"] in ("waiting", "processing"):
            from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger

            self.defer(
                trigger=KakaoPoseJobTrigger(
                    job_id=job_id,
                    kakao_pose_conn_id=self.kakao_pose_conn_id,
                    poll_interval=self.poll_interval,
                    end_time=deadline,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=max(deadline - time.time(), 0) + 300),
            )
        while not raise_for_job(job_id, body):
            if time.time() >= deadline:
                raise KakaoPoseError(f"Pose job {job_id} was still {body['status']} after {self.timeout:.0f} s")
            time.sleep(min(self.poll_interval, max(deadline - time.time(), 0.01)))
            body = hook.get_job(job_id)
        return self.load_job(job_id, output_uri_of(self.output_uri), self._source())

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume in a worker after the trigger fired; fetch and write the result on success."""
        if event.get("status") == "timeout":
            raise KakaoPoseError(event.get("message") or "Pose job timed out")
        job_id = raise_for_event(event)
        return self.load_job(job_id, output_uri_of(self.output_uri), self._source())


class KakaoPoseJobToParquetOperator(_JobLoader, BaseOperator):
    """Fetch a finished video job and write its keypoints table (the load step after the sensor).

    :param job_id: the job (templated), e.g. ``"{{ ti.xcom_pull('submit') }}"``.
    :param output_uri: where the Parquet goes (templated); may be an ``Asset``.
    :param source: what was analysed, stored in the table's ``source`` column (templated, optional).
    """

    template_fields: Sequence[str] = ("job_id", "output_uri", "source")
    ui_color = "#fee500"

    def __init__(
        self,
        *,
        job_id: str,
        output_uri: Any,
        source: str | None = None,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.output_uri = output_uri
        self.source = source
        self.kakao_pose_conn_id = kakao_pose_conn_id
        _add_asset_outlet(self, output_uri)

    def execute(self, context: Context) -> dict[str, Any]:
        output_uri = output_uri_of(self.output_uri)
        if not output_uri:
            raise KakaoPoseInputError("output_uri is required")
        return self.load_job(self.job_id, output_uri, self.source)


def _add_asset_outlet(op: BaseOperator, output: Any) -> None:
    """An ``Asset`` given as output is also declared as the task's outlet (downstream DAGs can use it)."""
    try:
        from airflow.sdk import Asset
    except ImportError:  # pragma: no cover
        return
    if isinstance(output, Asset) and output not in op.outlets:
        op.outlets = [*op.outlets, output]
