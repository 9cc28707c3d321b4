"""Operators that send images and videos to the Pose API and land the keypoints as Parquet.

- :class:`KakaoPoseImageOperator`: one image or a list → ``POST /pose`` each → one Parquet table.
- :class:`KakaoPoseVideoOperator`: ``POST /pose/job``, then (optionally) wait — in the triggerer when
  deferrable — and write the result's table. A retry re-attaches to the job it already submitted.
- :class:`KakaoPoseJobToParquetOperator`: the load step after :class:`~..sensors.pose.KakaoPoseJobSensor`.

Heavy libraries (pyarrow) are imported only when a task runs, never when a DAG file is parsed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_kakaopose._compat import BaseOperator
from airflow_provider_kakaopose.exceptions import KakaoPoseAuthError, KakaoPoseError, KakaoPoseInputError
from airflow_provider_kakaopose.get_provider_info import DEFAULT_CONN_ID
from airflow_provider_kakaopose.jobs import RUNNING, JobStatus, job_finished, job_id_from_event
from airflow_provider_kakaopose.operators._batch import (
    BatchAnswers,
    ImageOutcome,
    Progress,
    batch_table,
    distinct_inputs,
    input_label,
)
from airflow_provider_kakaopose.operators._callback import OurCallback
from airflow_provider_kakaopose.operators._inputs import (
    LIST_FIXES,
    add_asset_outlet,
    check_pictures_dependency,
    default_deferrable,
    open_input,
    output_uri_of,
    parse_rendered_list,
)
from airflow_provider_kakaopose.operators._job_record import (
    JOB_RETENTION,
    JOB_STATE_KEY,
    OLD_RECORD_DEFAULTS,
    SAVE_ATTEMPTS,
    JobRecordStore,
    settle_pending,
    utc_now,
)
from airflow_provider_kakaopose.operators._lineage import PoseLineage
from airflow_provider_kakaopose.operators._loader import JobLoader
from airflow_provider_kakaopose.operators._outputs import (
    OutputClaim,
    default_errors_uri,
    pictures_base_uri,
    prepare_outputs,
    run_identity,
)

if TYPE_CHECKING:
    from airflow_provider_kakaopose._compat import Context
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

#: The operators, and the public names importable from here before the helpers had modules of their own:
#: job records (``._job_record``), lineage (``._lineage``), batches (``._batch``), inputs (``._inputs``),
#: the shared load step (``._loader``), output paths (``._outputs``).
__all__ = [
    "JOB_RETENTION",
    "JOB_STATE_KEY",
    "SAVE_ATTEMPTS",
    "JobRecordStore",
    "KakaoPoseImageOperator",
    "KakaoPoseJobToParquetOperator",
    "KakaoPoseVideoOperator",
    "Progress",
    "default_errors_uri",
    "open_input",
    "output_uri_of",
]


class KakaoPoseImageOperator(PoseLineage, BaseOperator):
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
        add_asset_outlet(self, output_uri)

    #: How to hand a list to ``images`` without rendering it to text first (named by the log line and the error).
    LIST_FIXES = LIST_FIXES
    parse_rendered_list = staticmethod(parse_rendered_list)

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
        from airflow_provider_kakaopose.tables import owned_writes

        check_pictures_dependency(self.pictures)
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
            table, persons = self._write_tables(distinct, answers, failures, run, output_uri, errors_uri)
            summary: dict[str, Any] = {
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

    def _write_tables(
        self,
        distinct: list[Any],
        answers: BatchAnswers,
        failures: list[ImageOutcome],
        run: str,
        output_uri: str,
        errors_uri: str,
    ) -> tuple[Any, int]:
        """Write the keypoints table (each distinct image's answer, in input order) and the errors table; return
        the keypoints table and its person count."""
        from airflow_provider_kakaopose.tables import errors_table, write_parquet

        table, persons = batch_table(distinct, answers.rows, run, len(failures))
        for outcome in failures:
            self.log.warning("Image %s failed: %s", outcome.source, outcome.error)
        OutputClaim(output_uri, run).check()
        write_parquet(table, output_uri)
        write_parquet(errors_table(o.error_row() for o in failures), errors_uri)
        self.lineage_inputs = [input_label(item) for item in distinct]
        self.lineage_outputs = [(output_uri, "keypoints"), (errors_uri, "errors")]
        return table, persons

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


class KakaoPoseVideoOperator(JobLoader, BaseOperator):
    """Analyse a video: submit the job, wait for it, write its keypoints as Parquet.

    :param video: an http(s) URL (sent as ``video_url``) or a path/URI to upload (templated).
    :param output_uri: where the Parquet goes (templated); ``None`` to only wait. May be an ``Asset``.
    :param smoothing: smooth keypoints between frames (the service's default, true).
    :param callback_url: the service calls it once when the job ends (templated). Given, it is sent as it is
        and the wait polls; not given, a deferrable wait in a deployment with ``[kakao_pose] callback_base_url``,
        ``callback_secret`` and ``rate_limit_store`` sends the provider's signed callback URL and listens for
        it (docs/callbacks.md).
    :param wait_for_completion: ``False`` returns right after the submission (submit → sensor → load DAGs).
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param poll_interval: seconds between status checks.
    :param callback_poll_interval: seconds between the fallback checks of a wait that listens for the
        provider's callback; default ``[kakao_pose] callback_poll_interval`` (300).
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
        callback_poll_interval: float | None = None,
        timeout: float | timedelta = 3600.0,
        track_people: bool = True,
        pictures: bool = False,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._set_loading(output_uri, track_people, pictures, kakao_pose_conn_id)
        self.video = video
        self.smoothing = smoothing
        self.callback_url = callback_url
        self.wait_for_completion = wait_for_completion
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        self.poll_interval = float(poll_interval)
        if callback_poll_interval is not None and callback_poll_interval <= 0:
            raise ValueError(f"callback_poll_interval must be positive, not {callback_poll_interval!r}")
        self.callback_poll_interval = callback_poll_interval
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)

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

    def _reattach(self, hook: KakaoPoseHook, record: dict[str, Any]) -> dict[str, Any] | None:
        """The job a previous try submitted for the same video and settings, if it can still succeed."""
        job = record.get("job")
        if not isinstance(job, dict) or not job.get("job_id"):
            return None
        wanted = self._settings()
        differs = [k for k, v in wanted.items() if job.get(k, OLD_RECORD_DEFAULTS.get(k)) != v]
        if differs:
            self.log.info(
                "Job %s from an earlier try was for another %s; submitting again", job["job_id"], " and ".join(differs)
            )
            return None
        status = hook.get_job_status(job["job_id"])["status"]
        if status in RUNNING or status == JobStatus.SUCCESS:
            self.log.info("Re-attaching to job %s (%s) submitted by an earlier try", job["job_id"], status)
            return job
        self.log.warning("Job %s from an earlier try is %s; submitting again", job["job_id"], status)
        return None

    def _submit(self, store: JobRecordStore, hook: KakaoPoseHook, record: dict[str, Any]) -> dict[str, Any]:
        """Submit the video. The record says "a submission is under way" before the request is sent, so a
        try cut off mid-request (a killed worker) leaves a trace the next try counts and warns about."""
        source, kwargs = open_input(self._video())
        unknown = settle_pending(record, self.log)
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
        ours = self._our_callback()
        try:
            job_id = hook.submit_video_job(
                video_url=kwargs.get("url"),
                file=kwargs.get("file"),
                smoothing=self.smoothing,
                callback_url=ours.url if ours is not None else self.callback_url,
            )
        except (KakaoPoseError, OSError) as err:
            record["pending"] = None
            if getattr(err, "outcome_unknown", False):
                record["unknown_submissions"] = unknown + 1
                record["last_unknown"] = f"{utc_now()}: {err}"
                self.log.warning("The submission of %s may have created a job: %s", source, err)
            store.save(record)
            raise
        self.log.info("Submitted %s as job %s", source, job_id)  # first: the id is in the log whatever follows
        nonce = ours.nonce if ours is not None and ours.bind(job_id, self.log) else None
        return self._record_the_job(store, record, source, job_id, callback_nonce=nonce)

    def _our_callback(self) -> OurCallback | None:
        """The provider's signed callback for this submission, or ``None`` (the wait polls; says why once)."""
        if self.callback_url:
            self.log.info("callback_url was given: it is sent as given, and the wait polls for the job's end")
            return None
        if self.wait_for_completion and not self.deferrable:
            return None  # a wait in the worker polls; a deferred one, or a deferrable sensor after us, listens
        return OurCallback.make(self.timeout, self.log)

    def _record_the_job(
        self,
        store: JobRecordStore,
        record: dict[str, Any],
        source: str,
        job_id: str,
        callback_nonce: str | None = None,
    ) -> dict[str, Any]:
        """Save the submitted job in the record (tried again a few times): a retry re-attaches to it. The record
        says whether the provider's callback was requested (and its nonce, an id), never its URL (which holds
        the token's signature)."""
        job = {
            "job_id": job_id,
            **self._settings(),
            "deadline": time.time() + self.timeout,
            "callback_requested": callback_nonce is not None,
            "callback_nonce": callback_nonce,
        }
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

        check_pictures_dependency(self.pictures)
        with KakaoPoseHook(self.kakao_pose_conn_id) as hook:
            return self._execute(context, hook)

    def _execute(self, context: Context, hook: KakaoPoseHook) -> str:
        output_uri = output_uri_of(self.output_uri)
        if output_uri is not None and self.wait_for_completion:
            prepare_outputs({"output_uri": output_uri}, run_identity(context), self.log, claim=output_uri)
        store = self._records(context)
        record = store.load()
        reattached = self._reattach(hook, record)
        job = reattached or self._submit(store, hook, record)
        job_id = job["job_id"]
        self.lineage_inputs = [self._source()]
        unknown = self._push_job_id(context, job_id, record)
        if not self.wait_for_completion:
            store.done()
            return job_id
        deadline = float(job.get("deadline") or time.time() + self.timeout)
        if self.deferrable and reattached is None and job.get("callback_requested"):
            # Just submitted, and its end will be called back: no status GET before deferring (the trigger
            # reads the job's marker when it starts, so a job that ended meanwhile is not missed).
            self._defer_to_the_trigger(job_id, deadline, job)
        body = hook.get_job_status(job_id)
        if self.deferrable and body["status"] in RUNNING:
            self._defer_to_the_trigger(job_id, deadline, job)
        self._wait_in_the_worker(hook, job_id, body, deadline)
        self._load(job_id, store, unknown, context)
        return job_id

    def _push_job_id(self, context: Context, job_id: str, record: dict[str, Any]) -> int:
        """Push the ``job_id`` XCom (and ``unknown_submissions`` when there were some); return that count."""
        ti = context["ti"]
        ti.xcom_push(key="job_id", value=job_id)
        unknown = int(record.get("unknown_submissions") or 0)
        if unknown:
            ti.xcom_push(key="unknown_submissions", value=unknown)
        return unknown

    def _defer_to_the_trigger(self, job_id: str, deadline: float, job: dict[str, Any] | None = None) -> NoReturn:
        """Wait in the triggerer until ``deadline`` (absolute), listening for the job's callback when one was
        requested; :meth:`execute_complete` resumes."""
        from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger

        self.defer(
            trigger=KakaoPoseJobTrigger(
                job_id=job_id,
                kakao_pose_conn_id=self.kakao_pose_conn_id,
                poll_interval=self.poll_interval,
                end_time=deadline,
                callback=bool((job or {}).get("callback_requested")),
                callback_poll_interval=self.callback_poll_interval,
                callback_nonce=(job or {}).get("callback_nonce"),
                waiting_since=time.time(),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=max(deadline - time.time(), 0) + 300),
        )

    def _wait_in_the_worker(self, hook: KakaoPoseHook, job_id: str, body: dict[str, Any], deadline: float) -> None:
        """Poll until the job succeeds; raise when it failed, is not found or outlives ``deadline``."""
        from airflow_provider_kakaopose._waitlog import WaitLog

        wait = WaitLog(self.log, job_id, deadline, self.poll_interval)
        if body["status"] in RUNNING:
            self.log.info("Waiting in the worker for Pose job %s; its status is logged every %g s", job_id, wait.every)
        while True:
            wait.log(body["status"])
            if job_finished(job_id, body):
                return
            if time.time() >= deadline:
                raise KakaoPoseError(f"Pose job {job_id} was still {body['status']} after {self.timeout:g} s")
            time.sleep(min(self.poll_interval, max(deadline - time.time(), 0.01)))
            body = hook.get_job_status(job_id)

    def _load(self, job_id: str, store: JobRecordStore, unknown_submissions: int, context: Context) -> None:
        """Write the finished job's table (if there is an ``output_uri``) and push its summary as the
        ``summary`` XCom."""
        summary = self.load_job(job_id, output_uri_of(self.output_uri), self._source(), store.run)
        if summary.get("output_uri") is not None:
            summary["unknown_submissions"] = unknown_submissions
            context["ti"].xcom_push(key="summary", value=summary)
        store.done()

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        """Resume in a worker after the trigger fired; fetch and write the result on success; return the job
        id. Any other event (also a missing or malformed one) raises; a ``timeout`` a :class:`KakaoPoseError`."""
        job_id = job_id_from_event(event)
        store = self._records(context)
        self._load(job_id, store, int(store.load().get("unknown_submissions") or 0), context)
        return job_id


class KakaoPoseJobToParquetOperator(JobLoader, BaseOperator):
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
        self._set_loading(output_uri, track_people, pictures, kakao_pose_conn_id)
        self.job_id = job_id
        self.source = source

    def execute(self, context: Context) -> dict[str, Any]:
        check_pictures_dependency(self.pictures)
        output_uri = output_uri_of(self.output_uri)
        if not output_uri:
            raise KakaoPoseInputError("output_uri is required")
        run = run_identity(context)
        prepare_outputs({"output_uri": output_uri}, run, self.log, claim=output_uri)
        return self.load_job(self.job_id, output_uri, self.source, run)
