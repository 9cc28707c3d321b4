"""The keypoints table's schema and metadata, the errors table, and building rows from numpy arrays.

Shared by both parsers (:mod:`.scanner`, :mod:`.fallback`): the columns (``docs/tables.md``), the
``kakaopose:*`` schema metadata (:class:`TableMeta`), the validation error messages, and :func:`build_batch`,
which turns the persons of some frames into rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose.coco import KEYPOINT_NAMES, METADATA_PREFIX, SKELETON
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseJobFailedError,
    KakaoPoseJobNotFoundError,
    KakaoPoseResponseError,
)
from airflow_provider_kakaopose.jobs import JobStatus, failure_reason, is_running, not_found_message

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

#: Column names, in table order.
COLUMNS: tuple[str, ...] = (
    "source",
    "job_id",
    "frame_num",
    "time_s",
    "person_idx",
    "keypoint_id",
    "keypoint",
    "x",
    "y",
    "score",
    "person_score",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "area",
)

#: Rows per Parquet row group (262,144 = 15,420 persons: large enough for DuckDB/Spark scans; small enough that a
#: streamed write holds little: the writer gathers a whole row group before encoding it).
ROW_GROUP_SIZE = 1 << 18

N_KEYPOINTS = len(KEYPOINT_NAMES)

# --------------------------------------------------------------------------------------------- schema


_SCHEMA: pa.Schema | None = None


def keypoints_schema() -> pa.Schema:
    """The Arrow schema of a keypoints table (without the per-table ``kakaopose:*`` metadata)."""
    global _SCHEMA
    if _SCHEMA is None:
        import pyarrow as pa

        dict_str = pa.dictionary(pa.int32(), pa.string())  # a batch may hold thousands of sources
        dict_kp = pa.dictionary(pa.int8(), pa.string())
        f32 = pa.float32()
        _SCHEMA = pa.schema(
            [
                pa.field("source", dict_str),
                pa.field("job_id", dict_str),
                pa.field("frame_num", pa.int32(), nullable=False),
                pa.field("time_s", pa.float64()),
                pa.field("person_idx", pa.int16(), nullable=False),
                pa.field("keypoint_id", pa.int8(), nullable=False),
                pa.field("keypoint", dict_kp, nullable=False),
                pa.field("x", f32),
                pa.field("y", f32),
                pa.field("score", f32, nullable=False),
                pa.field("person_score", f32, nullable=False),
                pa.field("bbox_x", f32, nullable=False),
                pa.field("bbox_y", f32, nullable=False),
                pa.field("bbox_w", f32, nullable=False),
                pa.field("bbox_h", f32, nullable=False),
                pa.field("area", pa.float64(), nullable=False),
            ]
        )
    return _SCHEMA


# --------------------------------------------------------------------------------------------- errors


def shape_error(message: str) -> KakaoPoseResponseError:
    """The error for an answer that is not of the documented shape (``message`` says where and how)."""
    return KakaoPoseResponseError(f"Pose result is not of the documented shape: {message}")


def where_in_answer(ann_index: int | None, frame_num: Any = None, person: int | None = None) -> str:
    """Where a shape error is, for its message: ``annotations[3] (frame_num 5) person 2``, ``image person 0``."""
    if ann_index is None:
        parts = ["image"]
    else:
        parts = [f"annotations[{ann_index}]"]
        if frame_num is not None:
            shown = show_value(frame_num) if type(frame_num) is int else show_value(frame_num, str_=True)
            parts.append(f"(frame_num {shown})")
    if person is not None:
        parts.append(f"person {person}")
    return " ".join(parts)


def show_value(v: Any, width: int = 80, *, str_: bool = False) -> str:
    """A short repr (``str_``: str) of a value for an error message; a huge integer by its first digits and
    digit count (``repr`` fails past 4300 digits and 400 digits are no help)."""
    if type(v) is int and not -(10**20) < v < 10**20:
        try:
            digits = str(abs(v))
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return f"an integer of about {int(v.bit_length() * math.log10(2)) + 1} digits"
        return f"{'-' if v < 0 else ''}{digits[:12]}…({len(digits)} digits)"
    try:
        return f"{v!s:.{width}}" if str_ else f"{v!r:.{width}}"
    except ValueError:  # a huge integer somewhere inside
        return f"a {type(v).__name__}"


#: The largest float32: x, y, score, person_score and bbox_* are float32 columns, so larger values are refused.
FLOAT32_MAX = 3.4028234663852886e38


def in_float32_range(a: np.ndarray) -> bool:
    """Every value of a float64 array is finite and within float32's range (NaN fails both comparisons)."""
    return not len(a) or bool(a.min() >= -FLOAT32_MAX and a.max() <= FLOAT32_MAX)


def is_finite_number(v: Any) -> bool:
    """A finite JSON number that fits a float64 (booleans and integers beyond float64's range are not)."""
    t = type(v)
    if t is float:
        return math.isfinite(v)
    if t is int:
        try:
            float(v)
        except OverflowError:
            return False
        return True
    return False


# --------------------------------------------------------------------------------------------- metadata


class TableMeta:
    """What a table knows besides its rows (stored as schema metadata)."""

    def __init__(
        self,
        kind: str,
        source: str | None,
        *,
        job_id: str | None = None,
        video: dict | None = None,
        info: Any = None,
        categories: Any = None,
        annotations: int | None = None,
        frame_runs: list[list[int]] | None = None,
    ) -> None:
        self.kind = kind
        self.source = source
        self.job_id = job_id
        self.video = video
        self.info = info
        self.categories = categories
        self.annotations = annotations
        # the answer's frame numbers when they are not 0..annotations-1 (see coco.frame_runs), else None
        self.frame_runs = frame_runs
        self.fps = float(video["fps"]) if video else None
        #: Built once per answer, by :func:`schema_with_metadata` and :func:`build_batch`.
        self.schema: pa.Schema | None = None
        self.constant: _Constant | None = None

    def skeleton(self) -> list[list[int]]:
        try:
            return [list(p) for p in self.categories[0]["skeleton"]]
        except (TypeError, KeyError, IndexError):
            return [list(p) for p in SKELETON]

    def keypoint_names(self) -> list[str]:
        try:
            names = list(self.categories[0]["keypoints"])
            if len(names) == N_KEYPOINTS:
                return names
        except (TypeError, KeyError, IndexError):
            pass
        return list(KEYPOINT_NAMES)

    def to_metadata(self) -> dict[bytes, bytes]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "source": self.source,
            "job_id": self.job_id,
            "status": JobStatus.SUCCESS.value if self.kind == "video" else None,
            "video": self.video,
            "info": self.info,
            "categories": self.categories,
            "annotations": self.annotations,
            "frame_nums": self.frame_runs,
            "skeleton": self.skeleton(),
            "keypoints": self.keypoint_names(),
        }
        return {(METADATA_PREFIX + k).encode(): json.dumps(v).encode() for k, v in d.items()}


def video_meta(top: dict, source: str | None, n_annotations: int) -> TableMeta:
    """Validate the top-level fields of a video job answer (everything except ``annotations``)."""
    if not isinstance(top, dict):
        raise shape_error(f"a video job answer must be a JSON object, got {type(top).__name__}")
    status = top.get("status")
    job_id = top.get("job_id")
    if status != JobStatus.SUCCESS:
        if status == JobStatus.FAILED:
            raise KakaoPoseJobFailedError(f"video job {job_id} failed: {failure_reason(top)}")
        if status == JobStatus.NOT_FOUND:
            raise KakaoPoseJobNotFoundError(not_found_message(str(job_id), "video job"))
        if is_running(status):
            raise KakaoPoseResponseError(f"video job {job_id} is not finished (status {status!r})")
        raise shape_error(f"status is {status!r}, expected 'success'")
    for key in ("annotations", "categories", "info", "video"):
        if key not in top:
            raise shape_error(f"video job answer has no {key!r}")
    if job_id is not None and not isinstance(job_id, str):
        raise shape_error(f"job_id must be a string, got {type(job_id).__name__}")
    video = top["video"]
    if not isinstance(video, dict):
        raise shape_error("'video' must be an object")
    for key in ("fps", "frames", "height", "width"):
        if key not in video:
            raise shape_error(f"'video' has no {key!r}")
        if not is_finite_number(video[key]):
            raise shape_error(f"video.{key} must be a finite number, got {show_value(video[key])}")
    if video["fps"] <= 0:
        raise shape_error(f"video.fps must be positive, got {video['fps']!r}")
    cats = top["categories"]
    if not isinstance(cats, list):
        raise shape_error("'categories' must be a list")
    return TableMeta(
        "video",
        source,
        job_id=job_id,
        video=video,
        info=top["info"],
        categories=cats,
        annotations=n_annotations,
    )


# --------------------------------------------------------------------------------------------- building rows


def _dict_column(value: str | None, n: int) -> pa.Array:
    import numpy as np
    import pyarrow as pa

    if value is None:
        return pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int32()), pa.array([], pa.string()))
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], pa.string()))


class _Constant:
    """The columns that are the same in every batch of one answer (source, job_id, keypoint_id, keypoint), built
    once at the largest size asked so far and sliced (Arrow slices share the immutable buffers)."""

    def __init__(self, meta: TableMeta) -> None:
        self.meta = meta
        self.rows = 0
        self.columns: tuple[pa.Array, ...] = ()

    def get(self, n: int) -> tuple[pa.Array, ...]:
        import numpy as np
        import pyarrow as pa

        if n > self.rows:
            self.rows = max(n, 2 * self.rows, 1 << 16) // N_KEYPOINTS * N_KEYPOINTS + N_KEYPOINTS
            kp_index = np.tile(np.arange(N_KEYPOINTS, dtype=np.int8), self.rows // N_KEYPOINTS)
            self.columns = (
                _dict_column(self.meta.source, self.rows),
                _dict_column(self.meta.job_id, self.rows),
                pa.array(kp_index + np.int8(1)),
                pa.DictionaryArray.from_arrays(pa.array(kp_index), pa.array(KEYPOINT_NAMES, pa.string())),
            )
        return tuple(c.slice(0, n) for c in self.columns)


def build_batch(
    meta: TableMeta,
    person_frame: np.ndarray,
    person_idx: np.ndarray,
    keypoints: np.ndarray,
    bbox: np.ndarray,
    area: np.ndarray,
    score: np.ndarray,
) -> pa.RecordBatch:
    """Rows of ``P`` persons: ``keypoints`` (P*51,), ``bbox`` (P*4,), the others (P,)."""
    import numpy as np
    import pyarrow as pa

    n_p = len(person_frame)
    n = n_p * N_KEYPOINTS
    kp = keypoints.reshape(n_p, N_KEYPOINTS, 3)
    undetected = ((kp[:, :, 0] == 0) & (kp[:, :, 1] == 0) & (kp[:, :, 2] == 0)).ravel()
    mask = undetected if undetected.any() else None
    bb = bbox.reshape(n_p, 4).astype(np.float32)
    frame32 = person_frame.astype(np.int32)
    frame_rows = np.repeat(frame32, N_KEYPOINTS)
    time_s = pa.nulls(n, pa.float64()) if meta.fps is None else pa.array(frame_rows / meta.fps)
    if meta.constant is None:
        meta.constant = _Constant(meta)
    source, job_id, keypoint_id, keypoint = meta.constant.get(n)
    arrays = [
        source,
        job_id,
        pa.array(frame_rows),
        time_s,
        pa.array(np.repeat(person_idx.astype(np.int16), N_KEYPOINTS)),
        keypoint_id,
        keypoint,
        pa.array(kp[:, :, 0].astype(np.float32).ravel(), mask=mask),
        pa.array(kp[:, :, 1].astype(np.float32).ravel(), mask=mask),
        pa.array(kp[:, :, 2].astype(np.float32).ravel()),
        pa.array(np.repeat(score.astype(np.float32), N_KEYPOINTS)),
        pa.array(np.repeat(bb[:, 0], N_KEYPOINTS)),
        pa.array(np.repeat(bb[:, 1], N_KEYPOINTS)),
        pa.array(np.repeat(bb[:, 2], N_KEYPOINTS)),
        pa.array(np.repeat(bb[:, 3], N_KEYPOINTS)),
        pa.array(np.repeat(area.astype(np.float64), N_KEYPOINTS)),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema_with_metadata(meta))


def schema_with_metadata(meta: TableMeta) -> pa.Schema:
    """The keypoints schema with ``meta``'s ``kakaopose:*`` metadata (built once per answer)."""
    if meta.schema is None:
        meta.schema = keypoints_schema().with_metadata(meta.to_metadata())
    return meta.schema


#: Columns of the errors table written beside a batch's keypoints: one row per input that failed for good.
ERROR_COLUMNS: tuple[str, ...] = ("source", "error_type", "status_code", "code", "message", "attempts")


def errors_schema() -> pa.Schema:
    """Arrow schema of the errors table (see :data:`ERROR_COLUMNS`)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("source", pa.string()),
            pa.field("error_type", pa.dictionary(pa.int8(), pa.string()), nullable=False),
            pa.field("status_code", pa.int16()),
            pa.field("code", pa.int32()),
            pa.field("message", pa.string(), nullable=False),
            pa.field("attempts", pa.int16()),
        ],
        metadata={f"{METADATA_PREFIX}kind".encode(): b'"errors"'},
    )


def errors_table(errors: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> pa.Table:
    """Build the errors table from dicts with the :data:`ERROR_COLUMNS` keys (missing keys are null)."""
    import pyarrow as pa

    rows = list(errors)
    schema = errors_schema()
    columns = {}
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_dictionary(field.type):
            columns[field.name] = pa.array(values, pa.string()).dictionary_encode().cast(field.type)
        else:
            columns[field.name] = pa.array(values, field.type)
    return pa.Table.from_pydict(columns, schema=schema)
