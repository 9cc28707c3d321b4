"""The Python path: parsed answers (``list``/``dict``) and raw bodies the fast scanner cannot prove it reads.

``json.loads`` (for raw bytes), then one loop per person with precise errors, then a vectorised conversion.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose.coco import frame_runs
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseResponseError,
)
from airflow_provider_kakaopose.tables.schema import (
    _F32_MAX,
    _N_KP,
    _bad,
    _build_batch,
    _in_f32,
    _is_num,
    _Meta,
    _show,
    _video_meta,
    _where,
)

if TYPE_CHECKING:
    import pyarrow as pa

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


def _slow(data: Any, source: str | None) -> tuple[_Meta, Iterator[pa.RecordBatch]]:
    """Parse a raw body (``bytes``, or a file body read whole: this path needs it in memory) with ``json``."""
    if not isinstance(data, bytes):
        data = data.whole()
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise KakaoPoseResponseError(f"Pose result is not valid JSON: {e}") from e
    if isinstance(parsed, list):
        return _python_image(parsed, source)
    if isinstance(parsed, dict):
        return _python_video(parsed, source)
    raise _bad(f"expected a list of persons or a job answer object, got {type(parsed).__name__}")
