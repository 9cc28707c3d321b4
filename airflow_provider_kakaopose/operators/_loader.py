"""The load step the video operator and :class:`~.pose.KakaoPoseJobToParquetOperator` share: fetch a finished
job's body and write its keypoints table, streaming (memory does not grow with the video's length).

Imported when a DAG file is parsed: pyarrow, the tables and the hook are imported when a job is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose.jobs import JobStatus
from airflow_provider_kakaopose.operators._lineage import PoseLineage
from airflow_provider_kakaopose.operators._outputs import OutputClaim, owner_tag, pictures_base_uri

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

    from airflow_provider_kakaopose.tables import BodySpool


class JobLoader(PoseLineage):
    """Fetch a finished job's raw body and write its table (shared by the video and load operators)."""

    kakao_pose_conn_id: str
    log: Any
    track_people: bool = True
    pictures: bool = False

    def _set_loading(self, output_uri: Any, track_people: bool, pictures: bool, kakao_pose_conn_id: str) -> None:
        """Keep the arguments every job-loading operator takes; ``output_uri`` becomes the task's asset outlet."""
        from airflow_provider_kakaopose.operators._inputs import add_asset_outlet

        self.output_uri = output_uri
        self.track_people = track_people
        self.pictures = pictures
        self.kakao_pose_conn_id = kakao_pose_conn_id
        add_asset_outlet(self, output_uri)  # type: ignore[arg-type]  # mixed into a BaseOperator

    def load_job(self, job_id: str, output_uri: str | None, source: str | None, run: str) -> dict[str, Any]:
        """Fetch the job's raw JSON and write its table (with ``track_id`` and pictures when asked).

        ``run`` is the task instance (:func:`~._outputs.run_identity`) that claimed ``output_uri``.

        The body is downloaded chunk by chunk into a temporary file (:class:`~..tables.BodySpool`, never whole in
        memory), flattened piece by piece, tracked in a bounded window (:func:`~..tracking.assign_tracks_reader`)
        and written row group by row group: memory does not grow with the video's length (docs/tracking.md).
        Pictures are drawn from the written file afterwards (that reads the whole table).
        """
        if output_uri is None:
            return {"job_id": job_id, "status": JobStatus.SUCCESS.value, "output_uri": None}
        from airflow_provider_kakaopose.tables import BodySpool, owned_writes, write_parquet

        if source is not None:
            self.lineage_inputs = [source]
        self.lineage_outputs = [(output_uri, "keypoints")]
        pictures = None
        with BodySpool() as spool, owned_writes(owner_tag(run)):
            self._download(job_id, spool)
            counter = _Counter(self._keypoints(spool, source))
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

    def _download(self, job_id: str, spool: BodySpool) -> None:
        """The job's body into ``spool``, chunk by chunk."""
        from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

        with KakaoPoseHook(self.kakao_pose_conn_id) as hook:
            size = hook.download_job(job_id, spool)
        self.log.info("Downloaded job %s: %d bytes", job_id, size)

    def _keypoints(self, spool: BodySpool, source: str | None) -> pa.RecordBatchReader:
        """The spooled body's keypoints, streamed (with ``track_id`` when tracking people)."""
        from airflow_provider_kakaopose.tables import keypoints_reader

        reader = keypoints_reader(spool, source=source)  # raises for failed / not found bodies too
        if self.track_people:
            from airflow_provider_kakaopose.tracking import assign_tracks_reader

            reader = assign_tracks_reader(reader)
        return reader


class _Counter:
    """Pass a keypoints stream through while counting person detections and tracks; reads the frame count."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        import json

        self._source = reader
        self.persons = 0
        self.tracks = 0  # distinct track ids (numbered 0 … n-1 from the first appearance)
        meta = reader.schema.metadata or {}
        try:
            self.frames: int | None = int(json.loads(meta[b"kakaopose:video"])["frames"])
        except (KeyError, ValueError, TypeError):
            self.frames = None

    def reader(self) -> pa.RecordBatchReader:
        import pyarrow as pa
        import pyarrow.compute as pc

        def batches() -> Iterator[pa.RecordBatch]:
            tracked = "track_id" in self._source.schema.names
            for batch in self._source:
                self.persons += int(pc.sum(pc.equal(batch["keypoint_id"], 1)).as_py() or 0)
                if tracked and batch.num_rows:
                    top = pc.max(batch["track_id"]).as_py()
                    if top is not None:
                        self.tracks = max(self.tracks, top + 1)
                yield batch

        return pa.RecordBatchReader.from_batches(self._source.schema, batches())
