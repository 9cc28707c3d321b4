"""Flatten Pose API answers into one Arrow/Parquet table of keypoints, and back.

One row per (frame, person, keypoint); the columns and their null rules are documented in ``docs/tables.md``.
The schema metadata (keys ``kakaopose:*``) carries the video facts, ``info``, the categories and the
skeleton, so a reader can draw or time-align without the original JSON, and :func:`to_coco` can rebuild the
service's answer from a table.

Large video results are read from the raw JSON bytes without building Python objects: the ``annotations``
array is located and split into newline-delimited JSON by a vectorised structural scan, then parsed in pieces
by pyarrow's JSON reader and exploded with numpy, so only the raw body, one piece and the output are held at
once. A formatting the fast path cannot prove it handles falls back to ``json`` and a Python loop (correct,
slower); either way a body that is not of the documented shape raises :class:`KakaoPoseError`.

Importing this module is cheap: pyarrow, pandas, numpy and fsspec are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from airflow_provider_kakaopose.coco import KEYPOINT_NAMES, SKELETON, expand_frame_runs, frame_runs
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
    KakaoPoseJobFailedError,
    KakaoPoseJobNotFoundError,
    KakaoPoseResponseError,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

T = TypeVar("T")

__all__ = [
    "COLUMNS",
    "ERROR_COLUMNS",
    "KEYPOINT_NAMES",
    "ROW_GROUP_SIZE",
    "SKELETON",
    "errors_table",
    "keypoints_reader",
    "keypoints_schema",
    "keypoints_table",
    "read_bytes_if_exists",
    "read_keypoints",
    "read_metadata_if_exists",
    "read_table_if_exists",
    "to_coco",
    "write_atomically",
    "write_parquet",
]

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

#: Rows per Parquet row group (about 1 M: large enough for DuckDB/Spark scans, small enough to stream).
ROW_GROUP_SIZE = 1 << 20

_N_KP = len(KEYPOINT_NAMES)
_META = "kakaopose:"
_DICT_COLUMNS = ("source", "job_id", "keypoint")
# Filesystems (fsspec protocols) whose rename is atomic: write a temporary name, then move it.
_RENAMING_PROTOCOLS = frozenset({"file", "local", "sftp", "ssh", "hdfs", "webhdfs", "arrow_hdfs", "smb"})
# Bytes of the raw body parsed per piece on the fast path (bounds the memory of the intermediate copies).
_PIECE_BYTES = 16 << 20
_SCAN_CHUNK = 16 << 20

Result = list | dict | bytes | bytearray | memoryview | str | IO[bytes]


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


def _bad(message: str) -> KakaoPoseResponseError:
    return KakaoPoseResponseError(f"Pose result is not of the documented shape: {message}")


def _where(ann_index: int | None, frame_num: Any = None, person: int | None = None) -> str:
    if ann_index is None:
        parts = ["image"]
    else:
        parts = [f"annotations[{ann_index}]"]
        if frame_num is not None:
            parts.append(f"(frame_num {_show(frame_num) if type(frame_num) is int else _show(frame_num, str_=True)})")
    if person is not None:
        parts.append(f"person {person}")
    return " ".join(parts)


def _show(v: Any, width: int = 80, *, str_: bool = False) -> str:
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
_F32_MAX = 3.4028234663852886e38


def _in_f32(a: np.ndarray) -> bool:
    """Every value of a float64 array is finite and within float32's range (NaN fails both comparisons)."""
    return not len(a) or bool(a.min() >= -_F32_MAX and a.max() <= _F32_MAX)


def _is_num(v: Any) -> bool:
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


class _Meta:
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

    def skeleton(self) -> list[list[int]]:
        try:
            return [list(p) for p in self.categories[0]["skeleton"]]
        except (TypeError, KeyError, IndexError):
            return [list(p) for p in SKELETON]

    def keypoint_names(self) -> list[str]:
        try:
            names = list(self.categories[0]["keypoints"])
            if len(names) == _N_KP:
                return names
        except (TypeError, KeyError, IndexError):
            pass
        return list(KEYPOINT_NAMES)

    def to_metadata(self) -> dict[bytes, bytes]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "source": self.source,
            "job_id": self.job_id,
            "status": "success" if self.kind == "video" else None,
            "video": self.video,
            "info": self.info,
            "categories": self.categories,
            "annotations": self.annotations,
            "frame_nums": self.frame_runs,
            "skeleton": self.skeleton(),
            "keypoints": self.keypoint_names(),
        }
        return {(_META + k).encode(): json.dumps(v).encode() for k, v in d.items()}


def _read_metadata(metadata: dict | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (metadata or {}).items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        if key.startswith(_META):
            out[key[len(_META) :]] = json.loads(v)
    return out


def _video_meta(top: dict, source: str | None, n_annotations: int) -> _Meta:
    """Validate the top-level fields of a video job answer (everything except ``annotations``)."""
    if not isinstance(top, dict):
        raise _bad(f"a video job answer must be a JSON object, got {type(top).__name__}")
    status = top.get("status")
    job_id = top.get("job_id")
    if status != "success":
        if status == "failed":
            raise KakaoPoseJobFailedError(f"video job {job_id} failed: {top.get('description') or 'no description'}")
        if status == "not found":
            raise KakaoPoseJobNotFoundError(f"video job {job_id} was not found (unknown, or older than 7 days)")
        if status in ("waiting", "processing"):
            raise KakaoPoseResponseError(f"video job {job_id} is not finished (status {status!r})")
        raise _bad(f"status is {status!r}, expected 'success'")
    for key in ("annotations", "categories", "info", "video"):
        if key not in top:
            raise _bad(f"video job answer has no {key!r}")
    if job_id is not None and not isinstance(job_id, str):
        raise _bad(f"job_id must be a string, got {type(job_id).__name__}")
    video = top["video"]
    if not isinstance(video, dict):
        raise _bad("'video' must be an object")
    for key in ("fps", "frames", "height", "width"):
        if key not in video:
            raise _bad(f"'video' has no {key!r}")
        if not _is_num(video[key]):
            raise _bad(f"video.{key} must be a finite number, got {_show(video[key])}")
    if video["fps"] <= 0:
        raise _bad(f"video.fps must be positive, got {video['fps']!r}")
    cats = top["categories"]
    if not isinstance(cats, list):
        raise _bad("'categories' must be a list")
    return _Meta(
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


def _build_batch(
    meta: _Meta,
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
    n = n_p * _N_KP
    kp = keypoints.reshape(n_p, _N_KP, 3)
    undetected = ((kp[:, :, 0] == 0) & (kp[:, :, 1] == 0) & (kp[:, :, 2] == 0)).ravel()
    mask = undetected if undetected.any() else None
    bb = bbox.reshape(n_p, 4).astype(np.float32)
    frame32 = person_frame.astype(np.int32)
    frame_rows = np.repeat(frame32, _N_KP)
    time_s = pa.nulls(n, pa.float64()) if meta.fps is None else pa.array(frame_rows / meta.fps)
    kp_index = np.tile(np.arange(_N_KP, dtype=np.int8), n_p)
    arrays = [
        _dict_column(meta.source, n),
        _dict_column(meta.job_id, n),
        pa.array(frame_rows),
        time_s,
        pa.array(np.repeat(person_idx.astype(np.int16), _N_KP)),
        pa.array(kp_index + np.int8(1)),
        pa.DictionaryArray.from_arrays(pa.array(kp_index), pa.array(KEYPOINT_NAMES, pa.string())),
        pa.array(kp[:, :, 0].astype(np.float32).ravel(), mask=mask),
        pa.array(kp[:, :, 1].astype(np.float32).ravel(), mask=mask),
        pa.array(kp[:, :, 2].astype(np.float32).ravel()),
        pa.array(np.repeat(score.astype(np.float32), _N_KP)),
        pa.array(np.repeat(bb[:, 0], _N_KP)),
        pa.array(np.repeat(bb[:, 1], _N_KP)),
        pa.array(np.repeat(bb[:, 2], _N_KP)),
        pa.array(np.repeat(bb[:, 3], _N_KP)),
        pa.array(np.repeat(area.astype(np.float64), _N_KP)),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=_schema_with(meta))


def _schema_with(meta: _Meta) -> pa.Schema:
    cached = getattr(meta, "_schema", None)
    if cached is None:
        cached = keypoints_schema().with_metadata(meta.to_metadata())
        meta._schema = cached  # type: ignore[attr-defined]
    return cached


# --------------------------------------------------------------------------------------------- Python input


def _python_batches(meta: _Meta, frames: list[tuple[int | None, Any, Any]]) -> Iterator[pa.RecordBatch]:
    """Rows from parsed frames ``(annotation index or None, frame_num, persons)``, validated."""
    import numpy as np

    person_frame: list[int] = []
    person_idx: list[int] = []
    kps: list = []
    bboxes: list = []
    areas: list = []
    scores: list = []
    last = -1
    for ann_index, frame_num, persons in frames:
        if ann_index is not None:
            if type(frame_num) is not int:
                raise _bad(f"{_where(ann_index)}: frame_num must be an integer, got {frame_num!r}")
            if frame_num <= last or frame_num > 2**31 - 1:
                raise _bad(
                    f"{_where(ann_index, frame_num)}: frame_num must be increasing and below 2**31 (previous {last})"
                )
            last = frame_num
        if not isinstance(persons, list):
            what = "objects" if ann_index is not None else "the answer"
            raise _bad(f"{_where(ann_index, frame_num)}: {what} must be a list of persons, got {_show(persons)}")
        if len(persons) > 2**15 - 1:
            raise _bad(f"{_where(ann_index, frame_num)}: more than 32767 persons in one frame")
        for p_i, p in enumerate(persons):
            where = _where(ann_index, frame_num, p_i)
            if not isinstance(p, dict):
                raise _bad(f"{where}: a person must be an object, got {_show(p)}")
            missing = [k for k in ("area", "bbox", "category_id", "keypoints", "score") if k not in p]
            if missing:
                raise _bad(f"{where}: missing field(s) {', '.join(missing)}")
            kp, bb = p["keypoints"], p["bbox"]
            if not isinstance(kp, list) or len(kp) != 3 * _N_KP:
                got = f"{len(kp)} values" if isinstance(kp, list) else repr(kp)[:80]
                raise _bad(f"{where}: keypoints must be a list of 51 numbers, got {got}")
            if not isinstance(bb, list) or len(bb) != 4:
                raise _bad(f"{where}: bbox must be a list of 4 numbers, got {_show(bb)}")
            if type(p["category_id"]) is not int or p["category_id"] != 1:
                raise _bad(f"{where}: category_id must be 1, got {_show(p['category_id'])}")
            for key in ("area", "score"):
                if not _is_num(p[key]) or (key == "score" and abs(p[key]) > _F32_MAX):
                    raise _not_a_number(where, key, p[key])
            person_frame.append(frame_num if ann_index is not None else 0)
            person_idx.append(p_i)
            kps.extend(kp)
            bboxes.extend(bb)
            areas.append(p["area"])
            scores.append(p["score"])
    if not ({type(v) for v in kps} | {type(v) for v in bboxes}) <= {int, float}:
        _locate_non_numeric(frames)
    try:
        kp_arr = np.array(kps, dtype=np.float64)
        bb_arr = np.array(bboxes, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        _locate_non_numeric(frames)
    if not (_in_f32(kp_arr) and _in_f32(bb_arr)):
        _locate_non_numeric(frames)
    if person_frame:
        yield _build_batch(
            meta,
            np.array(person_frame, dtype=np.int64),
            np.array(person_idx, dtype=np.int64),
            kp_arr,
            bb_arr,
            np.array(areas, dtype=np.float64),
            np.array(scores, dtype=np.float64),
        )


def _not_a_number(where: str, field: str, v: Any) -> KakaoPoseResponseError:
    """The error for a value of a numeric field that is not a finite number in the column's range."""
    limit = " of at most 3.4e38 in size (float32)" if _is_num(v) else ""
    return _bad(f"{where}: {field} must be a finite number{limit}, got {_show(v)}")


def _locate_non_numeric(frames: list[tuple[int | None, Any, Any]]) -> None:
    for ann_index, frame_num, persons in frames:
        for p_i, p in enumerate(persons):
            for key in ("keypoints", "bbox"):
                for j, v in enumerate(p[key]):
                    if not _is_num(v) or abs(v) > _F32_MAX:
                        raise _not_a_number(_where(ann_index, frame_num, p_i), f"{key}[{j}]", v)
    raise _bad("a keypoint or bbox value is not a finite number")  # pragma: no cover - defensive


def _python_video(result: dict, source: str | None) -> tuple[_Meta, Iterator[pa.RecordBatch]]:
    if not isinstance(result, dict):
        raise _bad(f"a video job answer must be a JSON object, got {type(result).__name__}")
    anns = result.get("annotations")
    meta = _video_meta(result, source, len(anns) if isinstance(anns, list) else 0)
    if not isinstance(anns, list):
        raise _bad(f"'annotations' must be a list, got {type(anns).__name__}")
    frames = []
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise _bad(f"{_where(i)}: an annotation must be an object, got {_show(a)}")
        if "frame_num" not in a:
            raise _bad(f"{_where(i)}: missing field frame_num")
        if "objects" not in a:
            raise _bad(f"{_where(i, a['frame_num'])}: missing field objects")
        frames.append((i, a["frame_num"], a["objects"]))
    nums = [f for _, f, _ in frames]
    if all(type(f) is int for f in nums):  # else _python_batches raises, naming the annotation
        meta.frame_runs = frame_runs(nums)
    return meta, _python_batches(meta, frames)


def _python_image(result: list, source: str | None) -> tuple[_Meta, Iterator[pa.RecordBatch]]:
    meta = _Meta("image", source)
    return meta, _python_batches(meta, [(None, 0, result)])


# --------------------------------------------------------------------------------------------- raw JSON fast path


class _Fallback(Exception):
    """The fast path cannot prove it reads this body right: use the json module instead."""


_WS = b" \t\r\n"


def _skip_ws(body: bytes, pos: int) -> int:
    n = len(body)
    while pos < n and body[pos] in _WS:
        pos += 1
    return pos


def _decode_value(body: bytes, pos: int) -> tuple[Any, int]:
    """Parse one JSON value at byte ``pos`` with the json module; return it and the byte just after it."""
    decoder = json.JSONDecoder()
    window = 1 << 12
    while True:
        raw = body[pos : pos + window]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(raw) - 4 or pos + window >= len(body):
                raise _Fallback from e
            text = raw[: e.start].decode("utf-8")
        try:
            value, end = decoder.raw_decode(text)
        except json.JSONDecodeError as e:
            if pos + window >= len(body):
                raise _Fallback from e
            window *= 4
            continue
        if end == len(text) and pos + window < len(body):
            window *= 4  # a number may continue past the window
            continue
        return value, pos + len(text[:end].encode("utf-8"))


def _structural_table() -> bytes:
    table = bytearray(256)
    for c in b'{}[]"':
        table[c] = 1
    return bytes(table)


_STRUCTURAL = _structural_table()


def _scan_array(body: bytes, start: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Element boundaries of the JSON array whose ``[`` is at ``start``.

    Returns (starts, ends, close): byte positions of each top-level element's opening and closing bracket,
    and of the array's ``]``. Vectorised over the positions of ``{}[]"`` only; strings are tracked by quote
    parity, so a backslash anywhere in the array (an escape) makes the caller fall back.
    """
    import numpy as np

    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    depth = 0
    in_string = 0
    pos = start + 1
    n = len(body)
    view = memoryview(body)
    while pos < n:
        chunk = view[pos : pos + _SCAN_CHUNK]
        marks = np.frombuffer(bytes(chunk).translate(_STRUCTURAL), np.bool_)
        idx = np.flatnonzero(marks)
        chars = np.frombuffer(chunk, np.uint8)[idx]
        is_quote = chars == 34
        parity = (np.cumsum(is_quote, dtype=np.int64) + in_string) & 1
        if len(parity):
            in_string = int(parity[-1])
        outside = (parity == 0) & ~is_quote
        chars = chars[outside]
        idx = idx[outside] + pos
        step = np.where((chars == 123) | (chars == 91), 1, -1).astype(np.int64)
        level = np.cumsum(step) + depth
        opened = idx[(step == 1) & (level == 1)]
        closed = idx[(step == -1) & (level == 0)]
        below = np.flatnonzero(level < 0)
        if len(below):
            close = int(idx[below[0]])
            starts.append(opened[opened < close])
            ends.append(closed[closed < close])
            return np.concatenate(starts), np.concatenate(ends), close
        starts.append(opened)
        ends.append(closed)
        if len(level):
            depth = int(level[-1])
        pos += _SCAN_CHUNK
    raise _Fallback("unterminated annotations array")


def _fast_video(body: bytes, source: str | None) -> tuple[_Meta, Iterator[pa.RecordBatch]]:
    """Read a video job answer from raw bytes; raises :class:`_Fallback` if unsure."""
    import numpy as np

    pos = _skip_ws(body, 0)
    if pos >= len(body) or body[pos] != 0x7B:  # {
        raise _Fallback
    pos = _skip_ws(body, pos + 1)
    top: dict[str, Any] = {}
    array: tuple[np.ndarray, np.ndarray, int, int] | None = None
    if body[pos : pos + 1] != b"}":
        while True:
            key, pos = _decode_value(body, pos)
            if not isinstance(key, str) or key in top:
                raise _Fallback
            pos = _skip_ws(body, pos)
            if body[pos : pos + 1] != b":":
                raise _Fallback
            pos = _skip_ws(body, pos + 1)
            if key == "annotations" and body[pos : pos + 1] == b"[":
                s, e, close = _scan_array(body, pos)
                if body.find(b"\\", pos, close) != -1:
                    raise _Fallback  # escapes would break the quote-parity scan
                array = (s, e, pos, close)
                top[key] = None
                pos = close + 1
            else:
                top[key], pos = _decode_value(body, pos)
            pos = _skip_ws(body, pos)
            if body[pos : pos + 1] == b",":
                pos = _skip_ws(body, pos + 1)
                continue
            if body[pos : pos + 1] == b"}":
                break
            raise _Fallback
    if _skip_ws(body, pos + 1) != len(body):
        raise _Fallback
    if array is None:
        if "annotations" in top:
            raise _Fallback  # not an array: let the slow path name the problem
        _video_meta(top, source, 0)  # raises: status, missing fields
        raise _Fallback  # pragma: no cover - _video_meta raised
    starts, ends, open_, close = array
    if len(starts) != len(ends) or not np.all(np.frombuffer(body, np.uint8)[starts] == 0x7B):
        raise _Fallback
    commas = _separators(body, starts, ends, open_, close)
    meta = _video_meta(top, source, len(starts))
    expected = _frame_nums(body, starts, ends)
    if expected is not None:
        meta.frame_runs = frame_runs(expected.tolist())
    return meta, _fast_batches(meta, body, starts, ends, commas, expected)


_FRAME_NUM = re.compile(rb'\{[ \t\r\n]*"frame_num"[ \t\r\n]*:[ \t\r\n]*(-?[0-9]{1,18})[ \t\r\n]*[,}]')


def _frame_nums(body: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """The annotations' frame numbers, read before any row (they go in the schema metadata), or ``None``
    when they are ``0 … n-1``.

    Valid frame numbers increase from 0, so they are ``0 … n-1`` exactly when the last one is ``n - 1``: only
    the last annotation is parsed (the usual case). Otherwise each annotation's leading ``"frame_num"`` is
    read with a regular expression (:class:`_Fallback` if one does not start so); the rows' own frame numbers
    are checked against them as they are parsed.
    """
    import numpy as np

    n = len(starts)
    if not n:
        return None
    try:
        last = json.loads(body[int(starts[-1]) : int(ends[-1]) + 1])
    except (ValueError, RecursionError) as e:
        raise _Fallback from e
    if not isinstance(last, dict):
        raise _Fallback
    if type(last.get("frame_num")) is int and last["frame_num"] == n - 1:
        return None
    nums = []
    for s in starts.tolist():
        m = _FRAME_NUM.match(body, s)
        if m is None:
            raise _Fallback  # another key first, a float, a huge number...: the slow path decides
        nums.append(int(m.group(1)))
    return np.array(nums, dtype=np.int64)


def _separators(body: bytes, starts: np.ndarray, ends: np.ndarray, open_: int, close: int) -> np.ndarray:
    """Byte positions of the commas between elements; :class:`_Fallback` if anything else is between."""
    import numpy as np

    if len(starts) == 0:
        if body[open_ + 1 : close].strip(_WS):
            raise _Fallback
        return np.empty(0, np.int64)
    if body[open_ + 1 : int(starts[0])].strip(_WS) or body[int(ends[-1]) + 1 : close].strip(_WS):
        raise _Fallback
    after = ends[:-1] + 1
    arr = np.frombuffer(body, np.uint8)
    gap = starts[1:] - after
    # Common formattings: the comma right after the element, then only whitespace up to the next one.
    ok = arr[after] == 0x2C
    for k in range(1, int(gap.max(initial=1))):
        pending = ok & (gap > k)
        if not pending.any():
            break
        c = arr[np.where(pending, after + k, 0)]
        ok &= ~pending | (c == 0x20) | (c == 0x0A) | (c == 0x0D) | (c == 0x09)
    commas = after.copy()
    for i in np.flatnonzero(~ok):  # e.g. whitespace before the comma: check those one by one
        a, b = int(after[i]), int(starts[i + 1])
        between = body[a:b]
        if between.strip(_WS) != b",":
            raise _Fallback
        commas[i] = a + between.index(b",")
    return commas


def _annotation_schema() -> pa.Schema:
    import pyarrow as pa

    person = pa.struct(
        [
            ("area", pa.float64()),
            ("bbox", pa.list_(pa.float64())),
            ("category_id", pa.int64()),
            ("keypoints", pa.list_(pa.float64())),
            ("score", pa.float64()),
        ]
    )
    return pa.schema([("frame_num", pa.int64()), ("objects", pa.list_(person))])


def _fast_batches(
    meta: _Meta,
    body: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    commas: np.ndarray,
    expected: np.ndarray | None = None,
) -> Iterator[pa.RecordBatch]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.json as pj

    n = len(starts)
    if n == 0:
        return
    longest = int((ends - starts).max()) + 1
    read_options = pj.ReadOptions(block_size=max(4 << 20, 2 * longest + 2), use_threads=True)
    parse_options = pj.ParseOptions(
        explicit_schema=_annotation_schema(), unexpected_field_behavior="ignore", newlines_in_values=False
    )
    view = memoryview(body)
    # The system allocator gives the parsed pieces back to the OS; mimalloc would keep their pages resident.
    pool = pa.system_memory_pool()
    state: dict[str, Any] = {"last": -1, "expected": expected}
    i = 0
    while i < n:
        limit = int(starts[i]) + _PIECE_BYTES
        j = max(i + 1, int(np.searchsorted(ends, limit, side="left")))
        j = min(j, n)
        s0, e1 = int(starts[i]), int(ends[j - 1]) + 1
        piece = bytearray(view[s0:e1])
        arr = np.frombuffer(piece, np.uint8)
        if body.find(b"\n", s0, e1) != -1 or body.find(b"\r", s0, e1) != -1:
            arr[(arr == 10) | (arr == 13)] = 32  # newlines are whitespace outside strings (no raw ones inside)
        arr[commas[i : j - 1] - s0] = 10
        del arr
        try:
            table = pj.read_json(
                pa.py_buffer(piece), read_options=read_options, parse_options=parse_options, memory_pool=pool
            )
        except pa.ArrowInvalid as e:
            raise _Fallback(str(e)) from e
        del piece
        if table.num_rows != j - i:
            raise _Fallback("row count mismatch")
        ann_index = i
        for batch in table.to_batches():
            if batch.num_rows:
                out = _explode(meta, batch, ann_index, state)
                if out is not None:
                    yield out
            ann_index += batch.num_rows
        del table
        i = j


def _explode(meta: _Meta, batch: pa.RecordBatch, first: int, state: dict) -> pa.RecordBatch | None:
    """Rows of a batch of parsed annotations (``first`` = index of its first annotation)."""
    import numpy as np
    import pyarrow.compute as pc

    frame_col, objects = batch.column(0), batch.column(1)
    if frame_col.null_count:
        k = int(np.flatnonzero(frame_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise _bad(f"{_where(first + k)}: missing field frame_num")
    frame_nums = frame_col.to_numpy()
    if objects.null_count:
        k = int(np.flatnonzero(objects.is_null().to_numpy(zero_copy_only=False))[0])
        raise _bad(f"{_where(first + k, frame_nums[k])}: missing field objects (or null)")
    prev = np.concatenate(([state["last"]], frame_nums[:-1]))
    bad = np.flatnonzero((frame_nums <= prev) | (frame_nums > 2**31 - 1))
    if len(bad):
        k = int(bad[0])
        raise _bad(
            f"{_where(first + k, frame_nums[k])}: frame_num must be increasing and below 2**31 (previous {prev[k]})"
        )
    state["last"] = int(frame_nums[-1])
    expected = state["expected"]
    if expected is not None and not np.array_equal(frame_nums, expected[first : first + len(frame_nums)]):
        raise _Fallback("frame numbers differ from the pre-scan")  # e.g. a duplicated "frame_num" key
    offsets = objects.offsets.to_numpy()
    counts = np.diff(offsets)
    if len(counts) and counts.max() > 2**15 - 1:
        k = int(np.argmax(counts))
        raise _bad(f"{_where(first + k, frame_nums[k])}: more than 32767 persons in one frame")
    n_p = int(offsets[-1] - offsets[0])
    if n_p == 0:
        return None
    person_ann = np.repeat(np.arange(len(frame_nums)), counts)
    person_idx = np.arange(n_p) - np.repeat(offsets[:-1] - offsets[0], counts)
    persons = objects.flatten()
    fields = dict(zip(("area", "bbox", "category_id", "keypoints", "score"), persons.flatten(), strict=True))

    def fail(p: int, message: str) -> KakaoPoseResponseError:
        k = int(person_ann[p])
        return _bad(f"{_where(first + k, frame_nums[k], int(person_idx[p]))}: {message}")

    for key in ("area", "bbox", "category_id", "keypoints", "score"):
        col = fields[key]
        if col.null_count:
            p = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise fail(p, f"missing field {key} (or null)")
    cat = fields["category_id"].to_numpy()
    if (cat != 1).any():
        p = int(np.flatnonzero(cat != 1)[0])
        raise fail(p, f"category_id must be 1, got {cat[p]}")
    flat = {}
    for key, width in (("keypoints", 3 * _N_KP), ("bbox", 4)):
        col = fields[key]
        lengths = pc.list_value_length(col).to_numpy()
        wrong = np.flatnonzero(lengths != width)
        if len(wrong):
            p = int(wrong[0])
            raise fail(p, f"{key} must be a list of {width} numbers, got {lengths[p]} values")
        values = col.flatten()
        if values.null_count:
            v = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise fail(v // width, f"{key}[{v % width}] must be a finite number, got null")
        flat[key] = values.to_numpy()
    for key in ("area", "score"):
        flat[key] = fields[key].to_numpy()
    for key in ("keypoints", "bbox", "score", "area"):
        if not (np.isfinite(flat[key]).all() if key == "area" else _in_f32(flat[key])):
            # a value beyond float32 (float64 for area); pyarrow reads an overflowing literal (1e400, an integer
            # of 400 digits) as inf, the json module keeps it: the slow path names the annotation, person, field
            # and value exactly as for parsed input
            raise _Fallback(f"{key}: a value out of range")
    del fields, persons
    return _build_batch(
        meta,
        frame_nums[person_ann],
        person_idx,
        flat["keypoints"],
        flat["bbox"],
        flat["area"],
        flat["score"],
    )


# --------------------------------------------------------------------------------------------- public: flatten


def _as_input(result: Result) -> Any:
    if isinstance(result, (list, dict, bytes)):
        return result
    if isinstance(result, (bytearray, memoryview)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode("utf-8")
    read = getattr(result, "read", None)
    if callable(read):
        data = read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    raise KakaoPoseError(
        "result must be a parsed answer (list or dict), raw JSON bytes or a binary file object, "
        f"got {type(result).__name__}"
    )


def _batches(result: Result, source: str | None) -> tuple[_Meta, Iterator[pa.RecordBatch]]:
    data = _as_input(result)
    if source is not None and not isinstance(source, str):
        source = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    if isinstance(data, list):
        return _python_image(data, source)
    if isinstance(data, dict):
        return _python_video(data, source)
    head = data[:64].lstrip(b"\xef\xbb\xbf" + _WS)
    if head[:1] == b"{":
        try:
            meta, batches = _fast_video(data, source)
        except _Fallback:
            pass
        else:
            return meta, _guarded(batches, data, source, meta)
    return _slow(data, source)


def _slow(data: bytes, source: str | None) -> tuple[_Meta, Iterator[pa.RecordBatch]]:
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise KakaoPoseResponseError(f"Pose result is not valid JSON: {e}") from e
    if isinstance(parsed, list):
        return _python_image(parsed, source)
    if isinstance(parsed, dict):
        return _python_video(parsed, source)
    raise _bad(f"expected a list of persons or a job answer object, got {type(parsed).__name__}")


def _guarded(
    batches: Iterator[pa.RecordBatch], data: bytes, source: str | None, fast_meta: _Meta | None = None
) -> Iterator[pa.RecordBatch]:
    """Run the fast path; if it gives up half-way, replay the slow path's rows (or its precise error)."""
    done = 0
    try:
        for batch in batches:
            done += batch.num_rows
            yield batch
    except _Fallback as e:
        meta, slow = _slow(data, source)  # raises the precise error if the body is malformed
        if fast_meta is not None and meta.to_metadata() != fast_meta.to_metadata():
            # the rows so far, and the schema, came from the fast path's reading of the top level
            raise _bad(f"the body reads differently with the json module (a duplicated key?): {e}") from e
        skipped = 0
        for batch in slow:
            if skipped + batch.num_rows <= done:
                skipped += batch.num_rows
                continue
            yield batch.slice(done - skipped)
            skipped = done
        if skipped < done:  # pragma: no cover - the two paths disagree
            raise _bad(f"the body could not be read ({e})") from e


def keypoints_reader(result: Result, *, source: str | None = None) -> pa.RecordBatchReader:
    """Stream the rows of a Pose answer as Arrow record batches (the memory-light form of the table).

    :param result: an image answer (the list of persons) or a video job answer with status ``success``,
        either parsed (``list``/``dict``) or as raw JSON (``bytes`` or a binary file object).
    :param source: what was analysed (URL or file name), stored in the ``source`` column and metadata.
    :raises KakaoPoseError: the answer is not of the documented shape (the message names frame and person),
        or the job did not succeed. Shape errors found while streaming are raised by the reader's iteration,
        before the last batch.
    """
    import pyarrow as pa

    meta, batches = _batches(result, source)
    return pa.RecordBatchReader.from_batches(_schema_with(meta), batches)


def keypoints_table(result: Result, *, source: str | None = None) -> pa.Table:
    """One row per (frame, person, keypoint) of a Pose answer; see ``docs/tables.md`` for the columns.

    :param result: an image answer (the list of persons) or a video job answer with status ``success``,
        either parsed (``list``/``dict``) or as raw JSON (``bytes`` or a binary file object; the fast path).
    :param source: what was analysed (URL or file name), stored in the ``source`` column and metadata.
    :raises KakaoPoseError: the answer is not of the documented shape (the message names frame and person),
        or the job did not succeed.
    """
    import pyarrow as pa

    meta, batches = _batches(result, source)
    schema = _schema_with(meta)
    return pa.Table.from_batches(list(batches), schema=schema)


# --------------------------------------------------------------------------------------------- storage


def _resolve(uri: Any) -> tuple[Any, str]:
    """``(fsspec filesystem or None for local, path)`` for a path, URI or ObjectStoragePath."""
    if not isinstance(uri, (str, bytes)) and hasattr(uri, "fs") and hasattr(uri, "path"):
        return uri.fs, str(uri.path)  # an Airflow ObjectStoragePath (or any UPath)
    text = os.fspath(uri)
    if isinstance(text, bytes):
        text = text.decode()
    parts = urlsplit(text)
    if len(parts.scheme) <= 1:  # no scheme, or a Windows drive letter
        return None, text
    if parts.scheme != "file" and "@" in parts.netloc:
        from airflow_provider_kakaopose._compat import (
            ObjectStoragePath,  # conn_id@bucket syntax: resolve the Airflow connection
        )

        p = ObjectStoragePath(text)
        return p.fs, str(p.path)
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(text)
    return fs, path


def _is_local(fs: Any) -> bool:
    if fs is None:
        return True
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _protocols(fs: Any) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)


def _write_to(sink: Any, data: pa.Table | pa.RecordBatchReader, row_group_size: int, compression: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = data.schema
    rows = 0
    with pq.ParquetWriter(
        sink,
        schema,
        compression=compression,
        use_dictionary=[c for c in _DICT_COLUMNS if c in schema.names] or False,
        write_statistics=True,
    ) as writer:
        if isinstance(data, pa.Table):
            writer.write_table(data, row_group_size=row_group_size)
            return data.num_rows
        # Parse (this thread) and encode/compress (a writer thread) overlap; both release the GIL in Arrow.
        # The queue holds at most two row groups, so memory stays bounded.
        groups: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        failure: list[BaseException] = []

        def write_groups() -> None:
            try:
                while (group := groups.get()) is not None:
                    writer.write_table(group, row_group_size=row_group_size)
            except BaseException as err:  # reported to the producer below
                failure.append(err)
                while groups.get() is not None:  # drain so the producer never blocks
                    pass

        thread = threading.Thread(target=write_groups, name="kakaopose-parquet-writer", daemon=True)
        thread.start()
        try:
            pending: list[pa.RecordBatch] = []
            n = 0
            for batch in data:
                if failure:
                    break
                pending.append(batch)
                n += batch.num_rows
                while n >= row_group_size:
                    table = pa.Table.from_batches(pending, schema=schema)
                    groups.put(table.slice(0, row_group_size))
                    rest = table.slice(row_group_size)
                    pending, n = rest.to_batches(), rest.num_rows
                    rows += row_group_size
            if n and not failure:
                groups.put(pa.Table.from_batches(pending, schema=schema))
                rows += n
        finally:
            groups.put(None)
            thread.join()
        if failure:
            raise failure[0]
    return rows


def write_parquet(
    table: pa.Table | pa.RecordBatchReader,
    uri: str | os.PathLike | Any,
    *,
    row_group_size: int = ROW_GROUP_SIZE,
    compression: str = "zstd",
) -> int:
    """Write a keypoints table (or a :func:`keypoints_reader` stream) to Parquet, atomically.

    :param table: a table from :func:`keypoints_table`, or a ``RecordBatchReader`` (streamed row group by
        row group, so a large result never exists whole in memory).
    :param uri: a local path, a ``file://`` or other fsspec URI (``s3://bucket/key``, ``gs://…``,
        ``memory://…``), an Airflow ``s3://conn_id@bucket/key`` URI, or an Airflow ``ObjectStoragePath``.
    :param row_group_size: rows per row group (default about 1 M).
    :param compression: Parquet codec (default zstd).
    :return: the number of rows written.

    A reader sees the old file or the whole new one, never a part: local files and renaming stores are
    written under a temporary name in the same directory, then moved; object stores (s3, gs, memory, …),
    which have no atomic rename, get the whole file in a single put.
    """
    return write_atomically(uri, lambda sink: _write_to(sink, table, row_group_size, compression))


def write_atomically(uri: str | os.PathLike | Any, write: Callable[[Any], T]) -> T:
    """Run ``write(sink)`` so that readers of ``uri`` see the old file or the whole new one, never a part.

    ``sink`` is a temporary local path (local files: then fsync, ``os.replace``), a binary file open on a
    temporary name (stores that can rename: then ``mv``), or an in-memory buffer sent in one put (object
    stores: s3, gs, memory, …). Missing folders are created. Returns what ``write`` returns. Shared by the
    Parquet tables and the pictures.
    """
    import io

    fs, path = _resolve(uri)
    if _is_local(fs):
        path = os.path.abspath(os.path.expanduser(path))
        directory, name = os.path.split(path)
        os.makedirs(directory or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
        os.close(fd)
        try:
            result = write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return result
    if _protocols(fs) & _RENAMING_PROTOCOLS:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        try:
            with fs.open(tmp, "wb") as f:
                result = write(f)
            fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):  # best-effort cleanup
                if fs.exists(tmp):
                    fs.rm(tmp)
            raise
        return result
    buffer = io.BytesIO()
    result = write(buffer)
    fs.pipe_file(path, buffer.getvalue())
    return result


def _read_table(uri: Any) -> pa.Table:
    import pyarrow.parquet as pq

    fs, path = _resolve(uri)
    if _is_local(fs):
        return pq.read_table(path)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def _exists(uri: Any) -> bool:
    fs, path = _resolve(uri)
    if _is_local(fs):
        return os.path.exists(os.path.abspath(os.path.expanduser(path)))
    return fs.exists(path)


def read_table_if_exists(uri: str | os.PathLike | Any) -> pa.Table | None:
    """The Parquet table at ``uri`` (any storage), or ``None`` when there is no file there yet."""
    return _read_table(uri) if _exists(uri) else None


def read_bytes_if_exists(uri: str | os.PathLike | Any) -> bytes | None:
    """The whole file at ``uri`` (any storage :func:`write_atomically` accepts), or ``None`` if absent."""
    if not _exists(uri):
        return None
    fs, path = _resolve(uri)
    if _is_local(fs):
        with open(os.path.abspath(os.path.expanduser(path)), "rb") as f:
            return f.read()
    with fs.open(path, "rb") as f:
        return f.read()


def read_metadata_if_exists(uri: str | os.PathLike | Any) -> dict[bytes, bytes] | None:
    """The schema metadata of the Parquet file at ``uri`` (reads only the footer), or ``None`` if absent."""
    import pyarrow.parquet as pq

    if not _exists(uri):
        return None
    fs, path = _resolve(uri)
    if _is_local(fs):
        return pq.read_schema(os.path.abspath(os.path.expanduser(path))).metadata or {}
    with fs.open(path, "rb") as f:
        return pq.read_schema(f).metadata or {}


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
        metadata={f"{_META}kind".encode(): b'"errors"'},
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


def read_keypoints(uri: str | os.PathLike | Any) -> pd.DataFrame:
    """Read a keypoints Parquet file (any URI :func:`write_parquet` accepts) into a pandas DataFrame.

    Null ``x``/``y`` (undetected keypoints) and ``time_s`` (images) become NaN; ``source``, ``job_id`` and
    ``keypoint`` are categoricals. The table's metadata (video, info, categories, skeleton, …) is in
    ``df.attrs["kakaopose"]``, so ``to_coco(df)`` works too.
    """
    table = _read_table(uri)
    df = table.to_pandas()
    df.attrs["kakaopose"] = _read_metadata(table.schema.metadata)
    return df


# --------------------------------------------------------------------------------------------- back to COCO


def _columns(table: Any) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray, list[str | None]]:
    """The columns :func:`to_coco` needs as numpy arrays, the decoded metadata, and the sources: a code per
    row (numbered in order of first appearance) and the source of each code."""
    import numpy as np

    needed = ("frame_num", "person_idx", "keypoint_id", "x", "y", "score", "person_score")
    needed += ("bbox_x", "bbox_y", "bbox_w", "bbox_h", "area")
    cols: dict[str, np.ndarray] = {}
    if hasattr(table, "schema") and hasattr(table, "column") and hasattr(table, "num_rows"):
        meta = _read_metadata(table.schema.metadata)
        for name in needed:
            cols[name] = np.asarray(table.column(name).to_numpy())
        n = table.num_rows
        codes, names = _arrow_codes(table.column("source")) if "source" in table.schema.names else (None, [])
        if "kind" not in meta:  # no kakaopose:* metadata (re-exported): what the columns tell instead
            import pyarrow.compute as pc

            for name in ("time_s", "job_id"):
                if name in table.schema.names:
                    column = table.column(name)
                    if name == "job_id":  # codes, -1 for null
                        job_codes, job_names = _arrow_codes(column)
                        if None in job_names:
                            null = job_names.index(None)
                            job_codes = np.where(job_codes == null, -1, job_codes)
                        cols[name], meta["_job_names"] = job_codes, job_names
                    else:
                        cols[name] = np.asarray(pc.fill_null(column.cast("float64"), math.nan).to_numpy())
    else:  # a pandas DataFrame (e.g. from read_keypoints)
        import pandas as pd

        meta = dict(table.attrs.get("kakaopose") or {})
        for name in needed:
            cols[name] = table[name].to_numpy(dtype=np.float64 if name in ("x", "y") else None)
        n = len(table)
        codes, names = None, []
        if "source" in table.columns:
            codes, uniques = pd.factorize(table["source"], use_na_sentinel=False)
            names = [None if pd.isna(v) else str(v) for v in uniques]
        if "kind" not in meta:  # e.g. pd.read_parquet, which keeps no kakaopose:* metadata
            if "time_s" in table.columns:
                cols["time_s"] = table["time_s"].to_numpy(dtype=np.float64, na_value=np.nan)
            if "job_id" in table.columns:  # codes, -1 for null
                job_codes, job_uniques = pd.factorize(table["job_id"])
                cols["job_id"], meta["_job_names"] = np.asarray(job_codes, np.int64), [str(v) for v in job_uniques]
    if codes is None or not n or len(names) <= 1:
        return cols, meta, np.zeros(n, dtype=np.int64), (names if n else [])[:1] or [None]
    return cols, meta, *_by_first_appearance(np.asarray(codes, dtype=np.int64), names)


def _arrow_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str | None]]:
    """An int64 code per row of a (dictionary or plain) string column, and the value of each code."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    known: dict[str | None, int] = {}
    pieces = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        values = chunk.dictionary.to_pylist()
        remap = np.array([known.setdefault(v, len(known)) for v in values] + [-1], dtype=np.int64)
        if len(values) == 1 and not chunk.null_count:  # the usual chunk: one source
            pieces.append(np.full(len(chunk), remap[0], dtype=np.int64))
            continue
        if chunk.null_count:
            remap[-1] = known.setdefault(None, len(known))
        indices = np.asarray(chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        pieces.append(remap[indices])  # -1 (null) picks the last entry
    codes = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return codes, list(known)


def _by_first_appearance(codes: np.ndarray, names: list[str | None]) -> tuple[np.ndarray, list[str | None]]:
    """Renumber codes in order of first appearance in the rows (unused values dropped)."""
    import numpy as np

    runs = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])  # few for a table of whole images / videos
    present, first = np.unique(codes[runs], return_index=True)
    order = present[np.argsort(first, kind="stable")]
    if len(order) == len(names) and (order == np.arange(len(names))).all():
        return codes, names
    rank = np.zeros(len(names), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[codes], [names[c] for c in order.tolist()]


def _answer_frames(meta: dict[str, Any], person_frame: np.ndarray) -> np.ndarray:
    """The frame numbers of a video answer: those the metadata records (``frame_nums`` runs, else
    ``0 … annotations-1``), plus any frame that has rows but is not recorded (never a person dropped)."""
    import numpy as np

    if meta.get("no_metadata"):  # the frames with rows are all that is known
        return np.unique(person_frame)
    count = meta.get("annotations")
    runs = meta.get("frame_nums")
    if runs:
        try:
            listed = np.array(expand_frame_runs(runs), dtype=np.int64)
        except ValueError as e:
            raise KakaoPoseError(f"not a keypoints table: metadata kakaopose:frame_nums is corrupt ({e})") from e
        if count is not None and len(listed) != count:
            raise KakaoPoseError(
                f"not a keypoints table: kakaopose:frame_nums gives {len(listed)} frames, "
                f"kakaopose:annotations says {count}"
            )
    else:
        n_frames = int(count if count is not None else (meta.get("video") or {}).get("frames") or 0)
        listed = np.arange(n_frames, dtype=np.int64)
    present = np.unique(person_frame)
    if len(present) and not np.isin(present, listed, assume_unique=True).all():
        listed = np.union1d(listed, present)
    return listed


def _meta_from_columns(cols: dict[str, np.ndarray], n: int, job_names: list[str | None]) -> dict[str, Any]:
    """What the columns tell of a table that lost its ``kakaopose:*`` metadata (a DuckDB or pandas re-export):
    video or image (``time_s`` / ``job_id`` not null), the ``job_id``, and the fps (``frame_num / time_s``).
    The frames are those with rows; ``categories``, ``info`` and the video's size and frame count are unknown.
    """
    import numpy as np

    if not n:
        raise KakaoPoseError(
            "the table has no kakaopose:* metadata (re-exported without it?) and no rows: "
            "it cannot tell an image from a video; read the file written by write_parquet with read_keypoints"
        )
    time_s = cols.pop("time_s", None)
    job = cols.pop("job_id", None)  # codes into job_names, -1 for null
    timed = ~np.isnan(time_s) if time_s is not None else np.zeros(n, dtype=bool)
    has_job = job >= 0 if job is not None else np.zeros(n, dtype=bool)
    frame = cols["frame_num"].astype(np.float64)
    if not (timed.any() or has_job.any() or (frame != 0).any()):  # images: frame 0, no time, no job
        return {"kind": "image"}
    if time_s is not None and not timed.all():
        raise KakaoPoseError("the table has no kakaopose:* metadata and mixes image rows (time_s null) with video rows")
    if has_job.any() and not has_job.all():
        raise KakaoPoseError("a video table holds one video, this one has rows with and without a job_id")
    job_ids = [job_names[c] for c in np.unique(job[has_job]).tolist()] if job is not None else []
    if len(job_ids) > 1:
        raise KakaoPoseError(f"a video table holds one video, this one has rows of {len(job_ids)} job_ids")
    fps = None
    usable = timed & (frame > 0) & (time_s > 0) if time_s is not None else timed
    if usable.any():
        estimates = frame[usable] / time_s[usable]
        fps = float(f"{float(np.median(estimates)):.12g}")
        if not np.allclose(frame[timed] / fps, time_s[timed], rtol=1e-9, atol=1e-9):
            raise KakaoPoseError("the table has no kakaopose:* metadata and its time_s is not frame_num / fps")
    return {
        "kind": "video",
        "job_id": job_ids[0] if job_ids else None,
        "video": {"fps": fps, "frames": None, "height": None, "width": None},
        "annotations": None,
        "frame_nums": None,
        "categories": None,
        "info": None,
        "no_metadata": True,
    }


def _person_blocks(frame: np.ndarray, person: np.ndarray, kp_id: np.ndarray, src: np.ndarray) -> tuple[bool, bool]:
    """``(blocks, increasing)``: the rows are blocks of 17 (keypoints 1..17, one source, frame and person
    each), and the rows increase in (source, frame_num, person_idx, keypoint_id)."""
    import numpy as np

    n = len(frame)
    if not n:
        return True, True
    n_p = n // _N_KP
    blocks = not (
        (kp_id.reshape(n_p, _N_KP) != np.arange(1, _N_KP + 1)).any()
        or (person.reshape(n_p, _N_KP) != person[::_N_KP, None]).any()
        or (frame.reshape(n_p, _N_KP) != frame[::_N_KP, None]).any()
        or (src.reshape(n_p, _N_KP) != src[::_N_KP, None]).any()
    )
    key = (frame << 24) | (person << 5) | kp_id
    up = np.diff(key) > 0
    ds = np.diff(src)
    increasing = bool(((ds > 0) | ((ds == 0) & up)).all())
    return blocks, increasing


def to_coco(
    table: pa.Table | pd.DataFrame,
    *,
    decimals: int | None = 4,
    source: str | None = None,
    by_source: bool = False,
) -> list[dict] | dict:
    """Rebuild the service's COCO-shaped answer from a keypoints table (or :func:`read_keypoints` frame).

    For an image table: the list of persons. A batch table of several images (``KakaoPoseImageOperator``'s)
    gives all their persons in one list, image by image in table order (person_idx order within each);
    ``source=`` gives one image's answer, ``by_source=True`` a dict ``{source: persons}`` of every image,
    ``[]`` for an image listed in ``kakaopose:sources`` that had nobody. For a video table: the job answer
    (``annotations`` for every frame, including empty ones, then ``categories``, ``info``, ``job_id``,
    ``status``, ``video``). Undetected keypoints (null x/y) come back as ``0.0, 0.0, 0.0``.

    A table without ``kakaopose:*`` metadata (a DuckDB or ``pd.read_parquet`` re-export) is rebuilt from its
    columns: a video when ``time_s``/``job_id`` are set (``job_id`` and ``fps`` from the columns, only the
    frames that have rows, ``categories``/``info``/size null), else the list of persons; see docs/tables.md.

    :param decimals: round the float32 columns to this many decimals (the API sends at most 4), or ``None``.
    :param source: only the rows of this source (an image of a batch; for a video table, its own source).
    :param by_source: image tables: return ``{source: list of persons}`` (sources in ``kakaopose:sources``
        order, then any other in table order).
    :raises KakaoPoseError: the table is not a keypoints table (missing columns, a person without its 17
        keypoints), a video table holds several sources, ``source`` is not in the table, or a table without
        metadata cannot be told apart (no rows, image and video rows mixed, several job ids).
    """
    import numpy as np

    try:
        cols, meta, src, names = _columns(table)
    except (KeyError, AttributeError) as e:
        raise KakaoPoseError(f"not a keypoints table: {e}") from e
    n = len(cols["frame_num"])
    if n % _N_KP:
        raise KakaoPoseError(f"not a keypoints table: {n} rows is not a multiple of {_N_KP}")
    listed = [s for s in (meta.get("sources") or []) if isinstance(s, str)]
    if meta.get("source") is not None:
        listed.append(meta["source"])
    if source is not None:
        if source not in names and source not in listed:
            raise KakaoPoseError(f"source {source!r} is not in the table (it has {names[:5]!r:.200})")
        keep = src == (names.index(source) if source in names else -1)
        if not keep.all():
            cols = {k: v[keep] for k, v in cols.items()}
            n = len(cols["frame_num"])
        src, names = np.zeros(n, dtype=np.int64), [source]
    if "kind" not in meta:  # the metadata was lost (a re-export): what the columns tell
        meta = _meta_from_columns(cols, n, meta.pop("_job_names", []))
    kind = meta.get("kind") or ("video" if meta.get("video") else "image")
    if source is not None and kind == "video" and meta.get("source") not in (None, source):
        raise KakaoPoseError(f"source {source!r}: this video table's metadata is of {meta['source']!r}")
    if kind == "video":
        if by_source:
            raise KakaoPoseError("by_source is for image tables; a video table is one answer")
        if len(names) > 1:
            raise KakaoPoseError(
                f"a video table holds one video, this one has rows of {len(names)} sources "
                f"({', '.join(map(repr, names[:3]))}{', …' if len(names) > 3 else ''}): pass source= to pick one"
            )
    frame = cols["frame_num"].astype(np.int64)
    person = cols["person_idx"].astype(np.int64)
    kp_id = cols["keypoint_id"].astype(np.int64)
    blocks, increasing = _person_blocks(frame, person, kp_id, src)
    if not (blocks and increasing):
        sort_key = (frame << 24) | (person << 5) | kp_id
        order = np.argsort(sort_key, kind="stable") if len(names) <= 1 else np.lexsort((sort_key, src))
        s_frame, s_person, s_kp, s_src = frame[order], person[order], kp_id[order], src[order]
        if all(_person_blocks(s_frame, s_person, s_kp, s_src)):
            cols = {k: v[order] for k, v in cols.items()}
            frame, person, kp_id, src = s_frame, s_person, s_kp, s_src
        elif not (blocks and kind == "image"):  # image blocks in table order (one image twice) are kept as is
            raise KakaoPoseError("not a keypoints table: every person needs exactly keypoints 1..17 once")
    n_p = n // _N_KP

    def rnd(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        return np.round(a, decimals) if decimals is not None else a

    x = np.nan_to_num(rnd(cols["x"]), nan=0.0)
    y = np.nan_to_num(rnd(cols["y"]), nan=0.0)
    kps = np.stack([x, y, rnd(cols["score"])], axis=1).reshape(n_p, 3 * _N_KP).tolist()
    first = slice(None, None, _N_KP)
    bbox = np.stack([rnd(cols[k][first]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")], axis=1).tolist()
    area = cols["area"][first].astype(np.float64).tolist()
    score = rnd(cols["person_score"][first]).tolist()
    persons = [
        {"area": a, "bbox": b, "category_id": 1, "keypoints": k, "score": s}
        for a, b, k, s in zip(area, bbox, kps, score, strict=True)
    ]
    if kind == "image":
        if not by_source:
            return persons
        out: dict[str | None, list[dict]] = {s: [] for s in listed}
        for name in names:
            out.setdefault(name, [])
        for p, code in zip(persons, src[first].tolist(), strict=True):
            out[names[code]].append(p)
        return out
    person_frame = frame[first]
    frame_nums = _answer_frames(meta, person_frame)
    lo = np.searchsorted(person_frame, frame_nums, side="left").tolist()
    hi = np.searchsorted(person_frame, frame_nums, side="right").tolist()
    annotations = [
        {"frame_num": f, "objects": persons[a:b]} for f, a, b in zip(frame_nums.tolist(), lo, hi, strict=True)
    ]
    return {
        "annotations": annotations,
        "categories": meta.get("categories"),
        "info": meta.get("info"),
        "job_id": meta.get("job_id"),
        "status": "success",
        "video": meta.get("video"),
    }
