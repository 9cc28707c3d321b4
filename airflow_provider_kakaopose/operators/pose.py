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
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose._compat import BaseOperator, conf
from airflow_provider_kakaopose.exceptions import KakaoPoseAuthError, KakaoPoseError, KakaoPoseInputError
from airflow_provider_kakaopose.get_provider_info import DEFAULT_CONN_ID
from airflow_provider_kakaopose.operators._batch import (
    BatchAnswers,
    ImageOutcome,
    batch_table,
    distinct_inputs,
    input_label,
)
from airflow_provider_kakaopose.operators._outputs import (
    OutputClaim,
    default_errors_uri,
    default_job_record_uri,
    legacy_job_record_uri,
    owner_tag,
    pictures_base_uri,
    prepare_outputs,
    run_identity,
    write_bytes_to,
)
from airflow_provider_kakaopose.sensors.pose import raise_for_event, raise_for_job

if TYPE_CHECKING:
    from airflow_provider_kakaopose._compat import Context
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

#: Key under which a video operator keeps its job id in the task state store, so a retry re-attaches.
JOB_STATE_KEY = "kakao_pose_job"

#: The service keeps jobs for seven days; a stored job id is useless after that.
JOB_RETENTION = timedelta(days=7)
#: Tries to save a job record once its job exists (a lost record costs a second job on the next try).
SAVE_ATTEMPTS = 4


def _default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def output_uri_of(output: Any) -> str | None:
    """The URI of an ``output_uri`` given as a string, a path or an Airflow ``Asset``."""
    if output is None:
        return None
    uri = getattr(output, "uri", None)
    return str(uri if uri is not None else output)


def _check_pictures_dependency(pictures: bool) -> None:
    """``pictures=True`` needs Pillow (the ``pictures`` extra): checked before anything is sent, so a missing
    library costs no request."""
    if pictures:
        from airflow_provider_kakaopose.render import require_pillow

        try:
            require_pillow()
        except ImportError as err:
            raise KakaoPoseInputError(f"pictures=True: {err}") from None


def _is_url(item: Any) -> bool:
    return isinstance(item, str) and item.lower().startswith(("http://", "https://"))


def open_input(item: Any) -> tuple[str, dict[str, Any]]:
    """``(source label, hook kwargs)`` for one image or video: http(s) URLs are sent as URLs, anything else
    (local path, ``file://``, ``s3://conn@bucket/key``, an ``ObjectStoragePath``) is read and uploaded."""
    if _is_url(item):
        return item, {"url": item}
    if isinstance(item, str) and "://" in item:
        from airflow_provider_kakaopose._compat import ObjectStoragePath

        try:
            return item, {"file": ObjectStoragePath(item)}
        except Exception as err:  # e.g. no filesystem for the scheme (the error class varies by version)
            raise KakaoPoseInputError(f"Cannot read input {item!r}: {err}") from None
    if isinstance(item, str | os.PathLike) or hasattr(item, "read_bytes"):
        return str(item), {"file": item}
    raise KakaoPoseInputError(f"Cannot read input {item!r}: give an http(s) URL, a path or a storage URI")


def _ol_dataset(uri: str, schema: Any = None) -> Any:
    """An OpenLineage dataset for a URL, a local path or a storage URI (naming per the OpenLineage spec)."""
    from urllib.parse import urlsplit

    from openlineage.client.event_v2 import Dataset

    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        namespace, name = "file", os.path.abspath(parts.path if parts.scheme else uri)
    else:
        netloc = parts.netloc.split("@", 1)[-1]  # Airflow's s3://conn_id@bucket/key: the bucket is the namespace
        namespace, name = f"{parts.scheme}://{netloc}", parts.path.lstrip("/") or "/"
    facets = {}
    if schema is not None:
        from openlineage.client.facet_v2 import schema_dataset

        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=[schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in schema]
        )
    return Dataset(namespace=namespace, name=name, facets=facets)


class _PoseLineage:
    """OpenLineage facets for the pose operators: inputs are what was analysed, outputs the Parquet tables
    (with a schema facet). Only used when the OpenLineage provider is installed."""

    lineage_inputs: list[str]
    lineage_outputs: list[tuple[str, str]]  # (uri, "keypoints" | "errors")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_kakaopose.tables import errors_schema, keypoints_schema

        schemas = {"keypoints": keypoints_schema(), "errors": errors_schema()}
        return OperatorLineage(
            inputs=[_ol_dataset(uri) for uri in getattr(self, "lineage_inputs", [])],
            outputs=[_ol_dataset(uri, schemas[kind]) for uri, kind in getattr(self, "lineage_outputs", [])],
        )


class Progress:
    """Logs ``n / total, rate, ETA`` every ``every`` seconds while a long batch runs."""

    def __init__(self, total: int, what: str, log: Any, every: float = 5.0) -> None:
        self.total, self.what, self.log, self.every = total, what, log, every
        self.count = 0
        self.start = self._last = time.monotonic()

    def step(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.every and self.count < self.total:
            self._last = now
            rate = self.count / (now - self.start)
            eta = (self.total - self.count) / rate if rate else float("inf")
            self.log.info(
                "Progress: %d/%d %ss (%.0f%%), %.1f/s, ETA %.0f s",
                self.count,
                self.total,
                self.what,
                100 * self.count / self.total,
                rate,
                eta,
            )

    def done(self) -> None:
        elapsed = time.monotonic() - self.start
        self.log.info(
            "Done: %d %ss in %.1f s (%.1f/s)", self.count, self.what, elapsed, self.count / max(elapsed, 1e-9)
        )


class KakaoPoseImageOperator(_PoseLineage, BaseOperator):
    """Detect poses in a batch of images, concurrently at the quota's pace; write keypoints and errors.

    :param images: one item or a list (templated). http(s) URLs are passed to the service as ``image_url``;
        anything else (local path, ``file://``, ``s3://conn_id@bucket/key``, …) is read through
        ObjectStoragePath and uploaded. The text of a list (what a Jinja template makes of an upstream task's
        list, ``"['a.jpg', 'b.jpg']"``) is read as that list (docs/image-operator.md).
    :param output_uri: where the keypoints Parquet goes (templated): local path or any
        ObjectStoragePath/fsspec URI, or an ``Asset`` (then it is also added to the task's outlets).
    :param errors_uri: where the errors Parquet goes (templated); default ``_kakaopose/<output stem>.errors.parquet``
        beside the output (out of the keypoints dataset).
        Always written (empty when nothing failed), so a rerun never leaves a stale one.
    :param max_concurrency: requests in flight at once; the connection's ``rate_limit_per_second`` still
        caps the pace for the whole batch, and quota answers slow the whole batch down.
    :param max_failed_ratio: share of images allowed to fail before the task fails (default 0: any failure
        fails the task — after both tables are written).
    :param pictures: also write a PNG contact sheet of the poses beside the Parquet (``_kakaopose/<stem>.png``),
        drawn over each image when it is a readable local file, else on a blank canvas (needs the ``pictures``
        extra).
    :param kakao_pose_conn_id: the ``kakao_pose`` connection (templated).

    An image that fails for good (a broken input rule, a 4xx other than quota, retries exhausted) becomes a
    row of the errors table and the batch goes on; a refused key stops the batch at once, and so does a service
    the batch never reached (:class:`~..hooks._client.UnreachableBreaker`). A retry of the
    same task instance re-sends only the images its previous try did not finish (see the docs).

    Returns (XCom) ``{"output_uri", "errors_uri", "images", "duplicates", "succeeded", "failed", "persons",
    "rows", "reused"}`` (plus ``"pictures"`` when asked) — never the raw answers.
    """

    template_fields: Sequence[str] = ("images", "output_uri", "errors_uri", "kakao_pose_conn_id")
    ui_color = "#fee500"

    def __init__(
        self,
        *,
        images: Any,
        output_uri: Any,
        errors_uri: str | None = None,
        max_concurrency: int = 16,
        max_failed_ratio: float = 0.0,
        pictures: bool = False,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency!r}")
        if not 0.0 <= max_failed_ratio <= 1.0:
            raise ValueError(f"max_failed_ratio must be between 0 and 1, not {max_failed_ratio!r}")
        self.images = images
        self.output_uri = output_uri
        self.errors_uri = errors_uri
        self.max_concurrency = max_concurrency
        self.max_failed_ratio = max_failed_ratio
        self.pictures = pictures
        self.kakao_pose_conn_id = kakao_pose_conn_id
        _add_asset_outlet(self, output_uri)

    #: How to hand a list to ``images`` without rendering it to text first (named by the log line and the error).
    LIST_FIXES = (
        "set render_template_as_native_obj=True on the DAG, or pass the upstream task's output itself "
        '(images=read_urls.output, or images=read_urls() in TaskFlow) instead of a "{{ ti.xcom_pull(...) }}" string'
    )

    @staticmethod
    def parse_rendered_list(text: str) -> list[str]:
        """The list a Jinja template rendered to text — ``"['a.jpg', 'b.jpg']"`` (Python) or ``'["a.jpg"]'``
        (JSON) — as a list of strings; :class:`KakaoPoseInputError` naming the fixes when it is not one.

        JSON is tried first: where both read a text of strings they agree, except on JSON's escapes (``\\/``),
        which Python keeps as a backslash; a Python list's text (single quotes) is no JSON and is read as a
        literal (``ast.literal_eval``: literals only, nothing is run)."""
        import ast
        import warnings

        try:
            value = json.loads(text)
        except ValueError:
            try:
                with warnings.catch_warnings():  # "invalid escape sequence" in a Windows path's text
                    warnings.simplefilter("ignore")
                    value = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
                raise KakaoPoseInputError(
                    f"images is a string that starts with '[' but is not a list of URLs or paths ({err}): "
                    f"{text[:200]!r}. A list from an upstream task was probably rendered to text by a template: "
                    f"{KakaoPoseImageOperator.LIST_FIXES}"
                ) from None
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise KakaoPoseInputError(
                f"images is a string that starts with '[' but is not a list of URLs or paths: {text[:200]!r}. "
                f"Give a list of strings; for a list from an upstream task, {KakaoPoseImageOperator.LIST_FIXES}"
            )
        return list(value)

    def _items(self) -> list[Any]:
        items = self.images
        if isinstance(items, str) and items.strip().startswith("[") and not os.path.exists(items):
            items = self.parse_rendered_list(items)
            self.log.info(
                "images was rendered to the text of a list; read it as that list of %d item(s). To hand the list "
                "over without the round trip through text, %s",
                len(items),
                self.LIST_FIXES,
            )
        if items is None or isinstance(items, str | bytes | os.PathLike) or not hasattr(items, "__iter__"):
            items = [items]
        items = list(items)
        if not items or any(i is None or (isinstance(i, str) and not i.strip()) for i in items):
            raise KakaoPoseInputError(f"images must be one or more URLs or paths, got {self.images!r}")
        return items

    def analyze_one(self, hook: KakaoPoseHook, item: Any) -> ImageOutcome:
        """Analyse one image; a failure that is the image's own becomes the outcome's error."""
        from airflow_provider_kakaopose.exceptions import KakaoPoseConnectionError

        breaker = getattr(hook, "breaker", None)
        if breaker is not None:
            breaker.check()  # the service proved unreachable: this image is not sent
        try:
            source, kwargs = open_input(item)
        except KakaoPoseError as err:
            return ImageOutcome(source=str(item), error=err)
        try:
            if "url" in kwargs:
                persons = hook.analyze_image(image_url=kwargs["url"])
            else:
                persons = hook.analyze_image(file=kwargs["file"])
        except KakaoPoseAuthError:
            raise  # the key is wrong for every image: stop the batch
        except KakaoPoseConnectionError as err:
            if breaker is not None and breaker.is_open:
                raise  # the service cannot be reached at all: stop the batch
            return ImageOutcome(source=source, error=err)
        except (KakaoPoseError, OSError) as err:
            return ImageOutcome(source=source, error=err)
        return ImageOutcome(source=source, persons=persons)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_kakaopose.tables import errors_table, owned_writes, write_parquet

        _check_pictures_dependency(self.pictures)
        output_uri = output_uri_of(self.output_uri)
        if not output_uri:
            raise KakaoPoseInputError("output_uri is required")
        errors_uri = self.errors_uri or default_errors_uri(output_uri)
        items = self._items()
        distinct, repeated = distinct_inputs(items)
        for label, times in repeated.items():
            self.log.warning("Image %s is listed %d times: it is analysed once and has one set of rows", label, times)
        run = run_identity(context)
        owner = prepare_outputs({"output_uri": output_uri, "errors_uri": errors_uri}, run, self.log, claim=output_uri)
        with owned_writes(owner):
            answers = BatchAnswers(output_uri, run, self.log)
            previous = answers.load()
            todo = [item for item in distinct if input_label(item) not in previous]
            failures = self._analyze(todo, answers, reused=len(distinct) - len(todo))
            answers.checkpoint(force=True)  # before any output: a failed write must not cost the answers
            table, persons = batch_table(distinct, answers.rows, run, len(failures))
            for outcome in failures:
                self.log.warning("Image %s failed: %s", outcome.source, outcome.error)
            OutputClaim(output_uri, run).check()
            write_parquet(table, output_uri)
            write_parquet(errors_table(o.error_row() for o in failures), errors_uri)
            self.lineage_inputs = [input_label(item) for item in distinct]
            self.lineage_outputs = [(output_uri, "keypoints"), (errors_uri, "errors")]
            summary = {
                "output_uri": output_uri,
                "errors_uri": errors_uri,
                "images": len(items),
                "duplicates": len(items) - len(distinct),
                "succeeded": len(distinct) - len(failures),
                "failed": len(failures),
                "persons": persons,
                "rows": table.num_rows,
                "reused": len(distinct) - len(todo),
            }
            if self.pictures and table.num_rows:
                from airflow_provider_kakaopose.render import write_pictures

                summary["pictures"] = write_pictures(table, pictures_base_uri(output_uri), background="source")
        self.log.info("Wrote %s", summary)
        if failures and len(failures) / len(distinct) > self.max_failed_ratio:
            raise KakaoPoseError(
                f"{len(failures)} of {len(distinct)} image(s) failed (more than max_failed_ratio="
                f"{self.max_failed_ratio}); both tables were written, see {errors_uri}"
            )
        answers.discard()  # the whole try succeeded: a rerun computes again
        return summary

    def _analyze(self, todo: list[Any], answers: BatchAnswers, *, reused: int) -> list[ImageOutcome]:
        """Send ``todo`` concurrently; keep each answer in ``answers`` (checkpointed); return the failures."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        from airflow_provider_kakaopose.hooks._client import UnreachableBreaker
        from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

        self.log.info(
            "Analysing %d image(s) with up to %d in flight%s",
            len(todo),
            self.max_concurrency,
            f" ({reused} answered by an earlier try, not sent again)" if reused else "",
        )
        failures: list[ImageOutcome] = []
        progress = Progress(len(todo), "image", self.log)
        workers = min(self.max_concurrency, max(len(todo), 1))
        with KakaoPoseHook(self.kakao_pose_conn_id) as hook, ThreadPoolExecutor(max_workers=workers) as pool:
            # An endpoint that refuses every connection from the start stops the batch with one error within
            # seconds, instead of every image failing on its own after all its retries (docs/troubleshooting.md).
            hook.breaker = UnreachableBreaker(len(todo))
            futures = [pool.submit(self.analyze_one, hook, item) for item in todo]
            try:
                for future in as_completed(futures):
                    outcome = future.result()
                    if outcome.error is None:
                        answers.add(outcome)
                        answers.checkpoint()
                    else:
                        failures.append(outcome)
                    progress.step()
            except BaseException:
                for future in futures:  # e.g. a refused key, an unreachable service: do not send the rest
                    future.cancel()
                try:
                    answers.checkpoint(force=True)  # what was answered is kept for the retry
                except Exception as err:
                    self.log.warning("Could not keep the %d answers for a retry: %s", len(answers.rows), err)
                raise
        progress.done()
        return failures


class _JobLoader(_PoseLineage):
    """Fetch a finished job's raw body and write its table (shared by the video and load operators)."""

    kakao_pose_conn_id: str
    log: Any
    track_people: bool = True
    pictures: bool = False

    def load_job(self, job_id: str, output_uri: str | None, source: str | None, run: str) -> dict[str, Any]:
        """Fetch the job's raw JSON and write its table (with ``track_id`` and pictures when asked).

        ``run`` is the task instance (:func:`~._outputs.run_identity`) that claimed ``output_uri``.

        The body is downloaded chunk by chunk into a temporary file (:class:`~..tables.BodySpool`, never whole in
        memory), flattened piece by piece, tracked in a bounded window (:func:`~..tracking.assign_tracks_reader`)
        and written row group by row group: memory does not grow with the video's length (docs/tracking.md).
        Pictures are drawn from the written file afterwards (that reads the whole table).
        """
        from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

        if output_uri is None:
            return {"job_id": job_id, "status": "success", "output_uri": None}
        from airflow_provider_kakaopose.tables import BodySpool, keypoints_reader, owned_writes, write_parquet

        if source is not None:
            self.lineage_inputs = [source]
        self.lineage_outputs = [(output_uri, "keypoints")]
        with BodySpool() as spool, owned_writes(owner_tag(run)):
            with KakaoPoseHook(self.kakao_pose_conn_id) as hook:
                size = hook.download_job(job_id, spool)
            self.log.info("Downloaded job %s: %d bytes", job_id, size)
            reader = keypoints_reader(spool, source=source)  # raises for failed / not found bodies too
            if self.track_people:
                from airflow_provider_kakaopose.tracking import assign_tracks_reader

                reader = assign_tracks_reader(reader)
            counter = _Counter(reader)
            OutputClaim(output_uri, run).check()
            rows = write_parquet(counter.reader(), output_uri)
            if self.pictures and rows:
                from airflow_provider_kakaopose.render import write_pictures

                pictures = write_pictures(output_uri, pictures_base_uri(output_uri))
        summary: dict[str, Any] = {
            "output_uri": output_uri,
            "job_id": job_id,
            "frames": counter.frames,
            "persons": counter.persons,
            "rows": rows,
        }
        if self.track_people:
            summary["tracks"] = counter.tracks
        if self.pictures and rows:
            summary["pictures"] = pictures
        self.log.info("Wrote %s", summary)
        return summary


class _Counter:
    """Pass a keypoints stream through while counting person detections and tracks; reads the frame count."""

    def __init__(self, reader: Any) -> None:
        import json

        self._source = reader
        self.persons = 0
        self.tracks = 0  # distinct track ids (numbered 0 … n-1 from the first appearance)
        meta = reader.schema.metadata or {}
        try:
            self.frames: int | None = int(json.loads(meta[b"kakaopose:video"])["frames"])
        except (KeyError, ValueError, TypeError):
            self.frames = None

    def reader(self) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        def batches():
            tracked = "track_id" in self._source.schema.names
            for batch in self._source:
                self.persons += int(pc.sum(pc.equal(batch["keypoint_id"], 1)).as_py() or 0)
                if tracked and batch.num_rows:
                    top = pc.max(batch["track_id"]).as_py()
                    if top is not None:
                        self.tracks = max(self.tracks, top + 1)
                yield batch

        return pa.RecordBatchReader.from_batches(self._source.schema, batches())


class KakaoPoseVideoOperator(_JobLoader, BaseOperator):
    """Analyse a video: submit the job, wait for it, write its keypoints as Parquet.

    :param video: an http(s) URL (sent as ``video_url``) or a path/URI to upload (templated).
    :param output_uri: where the Parquet goes (templated); ``None`` to only wait. May be an ``Asset``.
    :param smoothing: smooth keypoints between frames (the service's default, true).
    :param callback_url: the service calls it once when the job ends (templated).
    :param wait_for_completion: ``False`` returns right after the submission (submit → sensor → load DAGs).
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param poll_interval: seconds between status checks.
    :param timeout: how long to wait for the job (seconds or timedelta), an absolute deadline from the
        first attempt's submission.
    :param track_people: add a ``track_id`` column that follows each person across frames (default true;
        set false for very large results to stream them into Parquet with the least memory).
    :param pictures: also write a PNG contact sheet and an animated GIF of the poses beside the Parquet
        (``_kakaopose/<stem>.png``, ``.gif``; needs the ``pictures`` extra).
    :param kakao_pose_conn_id: the ``kakao_pose`` connection (templated).

    A retried task does not submit the same video again: the job id is kept in the task state store
    (Airflow 3.3+) and a retry re-attaches while the job is waiting, processing or succeeded.

    Returns (XCom ``return_value``) the job id, whether it waited or not. The id is also pushed as the
    ``job_id`` XCom as soon as it is known; a task that waited and wrote a table pushes its ``summary`` XCom,
    ``{"output_uri", "job_id", "frames", "persons", "rows", "unknown_submissions"}`` (plus ``"tracks"``,
    ``"pictures"``). While it waits in the worker, the status is logged every third poll, never more often
    than every 10 s (:class:`~airflow_provider_kakaopose._waitlog.WaitLog`).
    """

    template_fields: Sequence[str] = ("video", "output_uri", "callback_url", "kakao_pose_conn_id")
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
        track_people: bool = True,
        pictures: bool = False,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.track_people = track_people
        self.pictures = pictures
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

    def _video(self) -> Any:
        """``video``, refused before anything is sent when it is a list or the text of one (a rendered template)."""
        video = self.video
        if isinstance(video, list | tuple) or (
            isinstance(video, str) and video.strip().startswith("[") and not os.path.exists(video)
        ):
            raise KakaoPoseInputError(
                f"video is {'the text of ' if isinstance(video, str) else ''}a list ({str(video)[:200]!r}), but a "
                "video operator takes one video: for many, map it over the list "
                "(KakaoPoseVideoOperator.partial(...).expand(video=read_urls.output)); for one video from an "
                "upstream task, pull that one item (e.g. \"{{ ti.xcom_pull(task_ids='read_urls')[0] }}\")"
            )
        return video

    def _source(self) -> str:
        return open_input(self._video())[0]

    def _settings(self) -> dict[str, Any]:
        """What a stored job must match to be reused: the video and every setting sent with it."""
        return {"video": self._source(), "smoothing": self.smoothing, "callback_url": self.callback_url}

    def _records(self, context: Context) -> JobRecordStore:
        return JobRecordStore(context, self.log, output_uri=output_uri_of(self.output_uri))

    def _reattach(self, context: Context, hook: KakaoPoseHook, record: dict[str, Any]) -> dict | None:
        """The job a previous try submitted for the same video and settings, if it can still succeed."""
        job = record.get("job")
        if not isinstance(job, dict) or not job.get("job_id"):
            return None
        wanted = self._settings()
        differs = [k for k, v in wanted.items() if job.get(k, _OLD_RECORD_DEFAULTS.get(k)) != v]
        if differs:
            self.log.info(
                "Job %s from an earlier try was for another %s; submitting again", job["job_id"], " and ".join(differs)
            )
            return None
        status = hook.get_job_status(job["job_id"])["status"]
        if status in ("waiting", "processing", "success"):
            self.log.info("Re-attaching to job %s (%s) submitted by an earlier try", job["job_id"], status)
            return job
        self.log.warning("Job %s from an earlier try is %s; submitting again", job["job_id"], status)
        return None

    def _submit(self, store: JobRecordStore, hook: KakaoPoseHook, record: dict[str, Any]) -> dict:
        """Submit the video. The record says "a submission is under way" before the request is sent, so a
        try cut off mid-request (a killed worker) leaves a trace the next try counts and warns about."""
        source, kwargs = open_input(self._video())
        unknown = _settle_pending(record, self.log)
        if unknown:
            self.log.warning(
                "%d earlier submission(s) of this task had an unknown outcome (last: %s): the service may have "
                "created, and billed, a job this task cannot see. Submitting %s again (docs/troubleshooting.md).",
                unknown,
                record.get("last_unknown"),
                source,
            )
        record["pending"] = {**self._settings(), "since": time.time()}
        store.save(record)
        try:
            job_id = hook.submit_video_job(
                video_url=kwargs.get("url"),
                file=kwargs.get("file"),
                smoothing=self.smoothing,
                callback_url=self.callback_url,
            )
        except (KakaoPoseError, OSError) as err:
            record["pending"] = None
            if getattr(err, "outcome_unknown", False):
                record["unknown_submissions"] = unknown + 1
                record["last_unknown"] = f"{_utc_now()}: {err}"
                self.log.warning("The submission of %s may have created a job: %s", source, err)
            store.save(record)
            raise
        self.log.info("Submitted %s as job %s", source, job_id)  # first: the id is in the log whatever follows
        job = {"job_id": job_id, **self._settings(), "deadline": time.time() + self.timeout}
        record.update(job=job, pending=None)
        try:
            store.save(record, retry=True)
        except Exception as err:
            raise KakaoPoseError(
                f"Submitted {source} as job {job_id}, but the job record could not be saved to {store.where} "
                f"({type(err).__name__}: {err}). A retry cannot re-attach to job {job_id} and would submit the "
                f"video again (the next try warns of it); to load this job's result, use "
                f"KakaoPoseJobToParquetOperator(job_id={job_id!r}, ...)."
            ) from err
        return job

    def execute(self, context: Context) -> str:
        from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

        _check_pictures_dependency(self.pictures)
        with KakaoPoseHook(self.kakao_pose_conn_id) as hook:
            return self._execute(context, hook)

    def _execute(self, context: Context, hook: KakaoPoseHook) -> str:
        output_uri = output_uri_of(self.output_uri)
        if output_uri is not None and self.wait_for_completion:
            prepare_outputs({"output_uri": output_uri}, run_identity(context), self.log, claim=output_uri)
        store = self._records(context)
        record = store.load()
        job = self._reattach(context, hook, record) or self._submit(store, hook, record)
        job_id = job["job_id"]
        self.lineage_inputs = [self._source()]
        ti = context["ti"]
        ti.xcom_push(key="job_id", value=job_id)
        unknown = int(record.get("unknown_submissions") or 0)
        if unknown:
            ti.xcom_push(key="unknown_submissions", value=unknown)
        if not self.wait_for_completion:
            store.done()
            return job_id
        deadline = float(job.get("deadline") or time.time() + self.timeout)
        body = hook.get_job_status(job_id)
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
        from airflow_provider_kakaopose._waitlog import WaitLog

        wait = WaitLog(self.log, job_id, deadline, self.poll_interval)
        if body["status"] in ("waiting", "processing"):
            self.log.info("Waiting in the worker for Pose job %s; its status is logged every %g s", job_id, wait.every)
        while True:
            wait.log(body["status"])
            if raise_for_job(job_id, body):
                break
            if time.time() >= deadline:
                raise KakaoPoseError(f"Pose job {job_id} was still {body['status']} after {self.timeout:g} s")
            time.sleep(min(self.poll_interval, max(deadline - time.time(), 0.01)))
            body = hook.get_job_status(job_id)
        self._load(job_id, store, unknown, context)
        return job_id

    def _load(self, job_id: str, store: JobRecordStore, unknown_submissions: int, context: Context) -> None:
        """Write the finished job's table (if there is an ``output_uri``) and push its summary as the
        ``summary`` XCom."""
        summary = self.load_job(job_id, output_uri_of(self.output_uri), self._source(), store.run)
        if summary.get("output_uri") is not None:
            summary["unknown_submissions"] = unknown_submissions
            context["ti"].xcom_push(key="summary", value=summary)
        store.done()

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        """Resume in a worker after the trigger fired; fetch and write the result on success; return the job
        id."""
        if event.get("status") == "timeout":
            raise KakaoPoseError(event.get("message") or "Pose job timed out")
        job_id = raise_for_event(event)
        store = self._records(context)
        self._load(job_id, store, int(store.load().get("unknown_submissions") or 0), context)
        return job_id


#: Settings a job record from before they were stored is taken to have had.
_OLD_RECORD_DEFAULTS: dict[str, Any] = {"smoothing": True, "callback_url": None}


def _utc_now() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _settle_pending(record: dict[str, Any], log: Any) -> int:
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


class JobRecordStore:
    """Where a video task keeps, across its tries, the job it submitted and the submissions it is unsure of.

    The record is ``{"job": {"job_id", "video", "smoothing", "callback_url", "deadline"} | None,
    "pending": {...} | None, "unknown_submissions": int, "last_unknown": str | None}``, kept

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
        self._state = context.get("task_state_store")
        self.run = run_identity(context)
        self._file = default_job_record_uri(output_uri) if self._state is None and output_uri else None
        self._legacy_file = legacy_job_record_uri(output_uri) if self._file and output_uri else None
        self._variable = _variable_key(self.run) if self._state is None and not output_uri else None

    @property
    def where(self) -> str:
        """Where the record lives, for log lines."""
        if self._state is not None:
            return "the task state store"
        return f"the file {self._file}" if self._file else f"the Airflow Variable {self._variable}"

    def load(self) -> dict[str, Any]:
        saved = self._read()
        if not isinstance(saved, dict):
            return {"job": None, "pending": None, "unknown_submissions": 0, "last_unknown": None}
        if "job_id" in saved:  # a record written before the settings were stored: the job alone
            return {"job": saved, "pending": None, "unknown_submissions": 0, "last_unknown": None}
        return {k: v for k, v in saved.items() if k != "run"}

    def _read(self) -> Any:
        if self._state is not None:
            return self._state.get(JOB_STATE_KEY)
        if self._file:
            from airflow_provider_kakaopose.tables import read_bytes_if_exists

            for uri in (self._file, self._legacy_file):
                raw = read_bytes_if_exists(uri) if uri else None
                if raw:
                    saved = json.loads(raw)
                    if isinstance(saved, dict) and saved.get("run") != self.run:
                        self.log.info("%s was written by another task instance: not this task's job", uri)
                        return None
                    return saved
            return None
        from airflow_provider_kakaopose._compat import Variable

        raw = Variable.get(self._variable, None)
        return json.loads(raw) if raw else None

    def save(self, record: dict[str, Any], *, retry: bool = False) -> None:
        """Store ``record``; with ``retry``, a failing store is tried again a few times (a job id that is not
        saved costs a second job on the next try)."""
        if retry:
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
            return
        if self._state is not None:
            self._state.set(JOB_STATE_KEY, record, retention=JOB_RETENTION)
            return
        data = json.dumps({**record, "run": self.run}, sort_keys=True)
        if self._file:
            from airflow_provider_kakaopose.tables import write_atomically

            write_atomically(self._file, lambda sink: write_bytes_to(sink, data.encode()))
            return
        from airflow_provider_kakaopose._compat import Variable

        Variable.set(self._variable, data, description="kakao-pose video task's job record (deleted on success)")

    def done(self) -> None:
        """The task succeeded: a Variable record is no longer needed (a file record stays beside its table)."""
        if self._variable:
            from airflow_provider_kakaopose._compat import Variable

            try:
                Variable.delete(self._variable)
            except Exception as err:  # the task's work is done; a stale record only costs a re-attach
                self.log.warning("Could not delete the Variable %s: %s", self._variable, err)


def _variable_key(run: str) -> str:
    """A Variable name for one task instance (readable prefix, the run id hashed: keys hold 250 chars)."""
    import hashlib

    dag_id, run_id, task_id, map_index = json.loads(run)
    digest = hashlib.sha256(str(run_id).encode()).hexdigest()[:16]
    return f"kakao_pose_job__{dag_id}__{task_id}__{map_index}__{digest}"[:250]


class KakaoPoseJobToParquetOperator(_JobLoader, BaseOperator):
    """Fetch a finished video job and write its keypoints table (the load step after the sensor).

    :param job_id: the job (templated), e.g. ``"{{ ti.xcom_pull('submit') }}"``.
    :param output_uri: where the Parquet goes (templated); may be an ``Asset``.
    :param source: what was analysed, stored in the table's ``source`` column (templated, optional).
    :param track_people: add a ``track_id`` column (default true).
    :param pictures: also write a PNG contact sheet and an animated GIF beside the Parquet
        (``_kakaopose/<stem>.png``, ``.gif``; needs the ``pictures`` extra).
    :param kakao_pose_conn_id: the ``kakao_pose`` connection (templated).

    Returns (XCom) the summary ``{"output_uri", "job_id", "frames", "persons", "rows"}`` (plus ``"tracks"``,
    ``"pictures"``): its input is the job id, so there is no id to return.
    """

    template_fields: Sequence[str] = ("job_id", "output_uri", "source", "kakao_pose_conn_id")
    ui_color = "#fee500"

    def __init__(
        self,
        *,
        job_id: str,
        output_uri: Any,
        source: str | None = None,
        track_people: bool = True,
        pictures: bool = False,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.track_people = track_people
        self.pictures = pictures
        self.job_id = job_id
        self.output_uri = output_uri
        self.source = source
        self.kakao_pose_conn_id = kakao_pose_conn_id
        _add_asset_outlet(self, output_uri)

    def execute(self, context: Context) -> dict[str, Any]:
        _check_pictures_dependency(self.pictures)
        output_uri = output_uri_of(self.output_uri)
        if not output_uri:
            raise KakaoPoseInputError("output_uri is required")
        run = run_identity(context)
        prepare_outputs({"output_uri": output_uri}, run, self.log, claim=output_uri)
        return self.load_job(self.job_id, output_uri, self.source, run)


def _add_asset_outlet(op: BaseOperator, output: Any) -> None:
    """An ``Asset`` given as output is also declared as the task's outlet (downstream DAGs can use it)."""
    from airflow_provider_kakaopose._compat import Asset  # Dataset on Airflow 2

    if isinstance(output, Asset) and output not in op.outlets:
        op.outlets = [*op.outlets, output]
