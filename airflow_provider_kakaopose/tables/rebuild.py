"""Back to the service's answer: :func:`to_coco` rebuilds the COCO-shaped JSON from a keypoints table."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose._arrowcodes import value_codes
from airflow_provider_kakaopose.coco import decode_metadata, expand_frame_runs
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
)
from airflow_provider_kakaopose.jobs import JobStatus
from airflow_provider_kakaopose.tables.schema import COLUMNS, N_KEYPOINTS

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

# --------------------------------------------------------------------------------------------- back to COCO


#: The columns :func:`to_coco` reads from every table (in table order).
_NEEDED = tuple(c for c in COLUMNS if c not in ("source", "job_id", "time_s", "keypoint"))


def _columns(table: Any) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray, list[str | None]]:
    """The columns :func:`to_coco` needs as numpy arrays, the decoded metadata, and the sources: a code per
    row (numbered in order of first appearance) and the source of each code."""
    import numpy as np

    cols: dict[str, np.ndarray] = {}
    if hasattr(table, "schema") and hasattr(table, "column") and hasattr(table, "num_rows"):
        meta = decode_metadata(table.schema.metadata)
        for name in _NEEDED:
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
        try:
            import pandas as pd
        except ImportError as err:  # optional (the pandas extra); a pyarrow.Table needs none
            raise ModuleNotFoundError(
                f"to_coco got a {type(table).__name__}, not a pyarrow.Table: reading a DataFrame needs pandas, "
                f"which is not installed ({err}); pip install 'airflow-provider-kakaopose[pandas]'",
                name="pandas",
            ) from None

        meta = dict(table.attrs.get("kakaopose") or {})
        for name in _NEEDED:
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
    known: dict[str | None, int] = {}
    codes = value_codes(column, known, code_nulls=True)
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
    if time_s is not None and (usable := timed & (frame > 0) & (time_s > 0)).any():
        fps = float(f"{float(np.median(frame[usable] / time_s[usable])):.12g}")
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
    n_p = n // N_KEYPOINTS
    blocks = not (
        (kp_id.reshape(n_p, N_KEYPOINTS) != np.arange(1, N_KEYPOINTS + 1)).any()
        or (person.reshape(n_p, N_KEYPOINTS) != person[::N_KEYPOINTS, None]).any()
        or (frame.reshape(n_p, N_KEYPOINTS) != frame[::N_KEYPOINTS, None]).any()
        or (src.reshape(n_p, N_KEYPOINTS) != src[::N_KEYPOINTS, None]).any()
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
    try:
        cols, meta, src, names = _columns(table)
    except (KeyError, AttributeError) as e:
        raise KakaoPoseError(f"not a keypoints table: {e}") from e
    n = len(cols["frame_num"])
    if n % N_KEYPOINTS:
        raise KakaoPoseError(f"not a keypoints table: {n} rows is not a multiple of {N_KEYPOINTS}")
    listed = [s for s in (meta.get("sources") or []) if isinstance(s, str)]
    if meta.get("source") is not None:
        listed.append(meta["source"])
    if source is not None:
        cols, src, names = _only_source(cols, src, names, listed, source)
        n = len(cols["frame_num"])
    if "kind" not in meta:  # the metadata was lost (a re-export): what the columns tell
        meta = _meta_from_columns(cols, n, meta.pop("_job_names", []))
    kind = meta.get("kind") or ("video" if meta.get("video") else "image")
    if kind == "video":
        _check_one_video(meta, names, source, by_source)
    cols, frame, src = _in_person_order(cols, src, names, kind)
    persons = _persons(cols, decimals)
    if kind != "image":
        return _video_answer(persons, frame[::N_KEYPOINTS], meta)
    if not by_source:
        return persons
    out: dict[str | None, list[dict]] = {s: [] for s in listed}
    for name in names:
        out.setdefault(name, [])
    for p, code in zip(persons, src[::N_KEYPOINTS].tolist(), strict=True):
        out[names[code]].append(p)
    return out


def _video_answer(persons: list[dict], person_frame: np.ndarray, meta: dict[str, Any]) -> dict:
    """The job answer: every frame of the video (:func:`_answer_frames`) with its persons, and the metadata."""
    import numpy as np

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
        "status": JobStatus.SUCCESS.value,
        "video": meta.get("video"),
    }


def _only_source(
    cols: dict[str, np.ndarray], src: np.ndarray, names: list[str | None], listed: list[str], source: str
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str | None]]:
    """``(cols, src, names)`` of the rows of ``source`` only (none when it is only ``listed`` in the metadata)."""
    import numpy as np

    if source not in names and source not in listed:
        raise KakaoPoseError(f"source {source!r} is not in the table (it has {names[:5]!r:.200})")
    keep = src == (names.index(source) if source in names else -1)
    if not keep.all():
        cols = {k: v[keep] for k, v in cols.items()}
    return cols, np.zeros(len(cols["frame_num"]), dtype=np.int64), [source]


def _check_one_video(meta: dict[str, Any], names: list[str | None], source: str | None, by_source: bool) -> None:
    """A video table is one answer: of one source, the one its metadata names (if ``source`` is given)."""
    if source is not None and meta.get("source") not in (None, source):
        raise KakaoPoseError(f"source {source!r}: this video table's metadata is of {meta['source']!r}")
    if by_source:
        raise KakaoPoseError("by_source is for image tables; a video table is one answer")
    if len(names) > 1:
        raise KakaoPoseError(
            f"a video table holds one video, this one has rows of {len(names)} sources "
            f"({', '.join(map(repr, names[:3]))}{', …' if len(names) > 3 else ''}): pass source= to pick one"
        )


def _in_person_order(
    cols: dict[str, np.ndarray], src: np.ndarray, names: list[str | None], kind: str
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``(cols, frame, src)`` with the rows in blocks of 17 (one person's keypoints 1..17), sorted by (source,
    frame_num, person_idx, keypoint_id) unless they already are; ``frame``: the frame numbers as int64."""
    import numpy as np

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
            frame, src = s_frame, s_src
        elif not (blocks and kind == "image"):  # image blocks in table order (one image twice) are kept as is
            raise KakaoPoseError("not a keypoints table: every person needs exactly keypoints 1..17 once")
    return cols, frame, src


def _persons(cols: dict[str, np.ndarray], decimals: int | None) -> list[dict]:
    """The persons of the rows (blocks of 17) as the service sends them; undetected keypoints as ``0.0, 0.0, 0.0``
    and the float32 columns rounded to ``decimals``."""
    import numpy as np

    n_p = len(cols["frame_num"]) // N_KEYPOINTS

    def rnd(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        return np.round(a, decimals) if decimals is not None else a

    x = np.nan_to_num(rnd(cols["x"]), nan=0.0)
    y = np.nan_to_num(rnd(cols["y"]), nan=0.0)
    kps = np.stack([x, y, rnd(cols["score"])], axis=1).reshape(n_p, 3 * N_KEYPOINTS).tolist()
    first = slice(None, None, N_KEYPOINTS)
    bbox = np.stack([rnd(cols[k][first]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")], axis=1).tolist()
    area = cols["area"][first].astype(np.float64).tolist()
    score = rnd(cols["person_score"][first]).tolist()
    return [
        {"area": a, "bbox": b, "category_id": 1, "keypoints": k, "score": s}
        for a, b, k, s in zip(area, bbox, kps, score, strict=True)
    ]
