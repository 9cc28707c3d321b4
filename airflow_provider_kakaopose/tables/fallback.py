"""The Python path: parsed answers (``list``/``dict``) and raw bodies the fast scanner cannot prove it reads.

``json.loads`` (for raw bytes), then one loop per person with precise errors, then a vectorised conversion.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_kakaopose.coco import frame_runs
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseResponseError,
)
from airflow_provider_kakaopose.tables.schema import (
    FLOAT32_MAX,
    N_KEYPOINTS,
    TableMeta,
    build_batch,
    in_float32_range,
    is_finite_number,
    shape_error,
    show_value,
    video_meta,
    where_in_answer,
)

if TYPE_CHECKING:
    import pyarrow as pa

# --------------------------------------------------------------------------------------------- Python input


def _python_batches(meta: TableMeta, frames: Sequence[tuple[int | None, Any, Any]]) -> Iterator[pa.RecordBatch]:
    """Rows from parsed frames ``(annotation index or None, frame_num, persons)``, validated (a generator: the
    errors are raised when the batch is taken)."""
    import numpy as np

    person_frame: list[int] = []
    person_idx: list[int] = []
    kps: list = []
    bboxes: list = []
    areas: list = []
    scores: list = []
    last = -1
    for ann_index, frame_num, persons in frames:
        last = _check_frame(ann_index, frame_num, persons, last)
        for p_i, p in enumerate(persons):
            _check_person(p, where_in_answer(ann_index, frame_num, p_i))
            person_frame.append(frame_num if ann_index is not None else 0)
            person_idx.append(p_i)
            kps.extend(p["keypoints"])
            bboxes.extend(p["bbox"])
            areas.append(p["area"])
            scores.append(p["score"])
    kp_arr, bb_arr = _coordinates(kps, bboxes, frames)
    if person_frame:
        yield build_batch(
            meta,
            np.array(person_frame, dtype=np.int64),
            np.array(person_idx, dtype=np.int64),
            kp_arr,
            bb_arr,
            np.array(areas, dtype=np.float64),
            np.array(scores, dtype=np.float64),
        )


def _check_frame(ann_index: int | None, frame_num: Any, persons: Any, last: int) -> int:
    """Check a frame (a video's annotation, or an image: ``ann_index`` None) but its persons; return the frame
    number the next annotation's must exceed."""
    if ann_index is not None:
        if type(frame_num) is not int:
            raise shape_error(f"{where_in_answer(ann_index)}: frame_num must be an integer, got {frame_num!r}")
        if frame_num <= last or frame_num > 2**31 - 1:
            raise shape_error(
                f"{where_in_answer(ann_index, frame_num)}: frame_num must be increasing and below 2**31 "
                f"(previous {last})"
            )
        last = frame_num
    if not isinstance(persons, list):
        what = "objects" if ann_index is not None else "the answer"
        where = where_in_answer(ann_index, frame_num)
        raise shape_error(f"{where}: {what} must be a list of persons, got {show_value(persons)}")
    if len(persons) > 2**15 - 1:
        raise shape_error(f"{where_in_answer(ann_index, frame_num)}: more than 32767 persons in one frame")
    return last


def _check_person(p: Any, where: str) -> None:
    """Check one person's fields (the keypoint and bbox values are checked all at once, by :func:`_coordinates`)."""
    if not isinstance(p, dict):
        raise shape_error(f"{where}: a person must be an object, got {show_value(p)}")
    missing = [k for k in ("area", "bbox", "category_id", "keypoints", "score") if k not in p]
    if missing:
        raise shape_error(f"{where}: missing field(s) {', '.join(missing)}")
    kp, bb = p["keypoints"], p["bbox"]
    if not isinstance(kp, list) or len(kp) != 3 * N_KEYPOINTS:
        got = f"{len(kp)} values" if isinstance(kp, list) else repr(kp)[:80]
        raise shape_error(f"{where}: keypoints must be a list of 51 numbers, got {got}")
    if not isinstance(bb, list) or len(bb) != 4:
        raise shape_error(f"{where}: bbox must be a list of 4 numbers, got {show_value(bb)}")
    if type(p["category_id"]) is not int or p["category_id"] != 1:
        raise shape_error(f"{where}: category_id must be 1, got {show_value(p['category_id'])}")
    for key in ("area", "score"):
        if not is_finite_number(p[key]) or (key == "score" and abs(p[key]) > FLOAT32_MAX):
            raise _not_a_number(where, key, p[key])


def _coordinates(kps: list, bboxes: list, frames: Sequence[tuple[int | None, Any, Any]]) -> tuple[Any, Any]:
    """The keypoint and bbox values as float64 arrays; if one is not a number within float32's range, the error
    names it (found in ``frames``)."""
    import numpy as np

    if not ({type(v) for v in kps} | {type(v) for v in bboxes}) <= {int, float}:
        _locate_non_numeric(frames)
    try:
        kp_arr = np.array(kps, dtype=np.float64)
        bb_arr = np.array(bboxes, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        _locate_non_numeric(frames)
    if not (in_float32_range(kp_arr) and in_float32_range(bb_arr)):
        _locate_non_numeric(frames)
    return kp_arr, bb_arr


def _not_a_number(where: str, field: str, v: Any) -> KakaoPoseResponseError:
    """The error for a value of a numeric field that is not a finite number in the column's range."""
    limit = " of at most 3.4e38 in size (float32)" if is_finite_number(v) else ""
    return shape_error(f"{where}: {field} must be a finite number{limit}, got {show_value(v)}")


def _locate_non_numeric(frames: Sequence[tuple[int | None, Any, Any]]) -> NoReturn:
    """Raise the error naming the first keypoint or bbox value that is not a number within float32's range."""
    for ann_index, frame_num, persons in frames:
        for p_i, p in enumerate(persons):
            for key in ("keypoints", "bbox"):
                for j, v in enumerate(p[key]):
                    if not is_finite_number(v) or abs(v) > FLOAT32_MAX:
                        raise _not_a_number(where_in_answer(ann_index, frame_num, p_i), f"{key}[{j}]", v)
    raise shape_error("a keypoint or bbox value is not a finite number")  # pragma: no cover - defensive


def python_video(result: dict, source: str | None) -> tuple[TableMeta, Iterator[pa.RecordBatch]]:
    """The metadata and rows of a parsed video job answer (the top level checked now, the rows as taken)."""
    if not isinstance(result, dict):
        raise shape_error(f"a video job answer must be a JSON object, got {type(result).__name__}")
    anns = result.get("annotations")
    meta = video_meta(result, source, len(anns) if isinstance(anns, list) else 0)
    if not isinstance(anns, list):
        raise shape_error(f"'annotations' must be a list, got {type(anns).__name__}")
    frames = []
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise shape_error(f"{where_in_answer(i)}: an annotation must be an object, got {show_value(a)}")
        if "frame_num" not in a:
            raise shape_error(f"{where_in_answer(i)}: missing field frame_num")
        if "objects" not in a:
            raise shape_error(f"{where_in_answer(i, a['frame_num'])}: missing field objects")
        frames.append((i, a["frame_num"], a["objects"]))
    nums = [f for _, f, _ in frames]
    if all(type(f) is int for f in nums):  # else _python_batches raises, naming the annotation
        meta.frame_runs = frame_runs(nums)
    return meta, _python_batches(meta, frames)


def python_image(result: list, source: str | None) -> tuple[TableMeta, Iterator[pa.RecordBatch]]:
    """The metadata and rows of a parsed image answer (the list of persons)."""
    meta = TableMeta("image", source)
    return meta, _python_batches(meta, [(None, 0, result)])


def json_fallback(data: Any, source: str | None) -> tuple[TableMeta, Iterator[pa.RecordBatch]]:
    """Parse a raw body (``bytes``, or a file body read whole: this path needs it in memory) with ``json``."""
    if not isinstance(data, bytes):
        data = data.whole()
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise KakaoPoseResponseError(f"Pose result is not valid JSON: {e}") from e
    if isinstance(parsed, list):
        return python_image(parsed, source)
    if isinstance(parsed, dict):
        return python_video(parsed, source)
    raise shape_error(f"expected a list of persons or a job answer object, got {type(parsed).__name__}")
