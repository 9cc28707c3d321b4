"""Stable person identities across the frames of a video: add a ``track_id`` column to a keypoints table.

The API's ``person_idx`` is only the order of the people within one frame. :func:`assign_tracks` links the
detections of consecutive frames by an optimal assignment (box overlap + keypoint distance normalised by the
box size, with a constant-velocity motion model: three passes, each predicting with the velocities of the
links before), then re-links people who were missing — for up to ``max_gap`` frames anywhere near, for up to
``max_occlusion_s`` seconds near where they were heading or last seen, and only to a body of the same size and
proportions — most recently lost first (a matching cascade), and numbers the resulting tracks. How it works,
its parameters, its limits and its measured accuracy are in ``docs/tracking.md``.

Everything is vectorised with numpy over all the frames at once: the assignment problems of all frame pairs
with the same numbers of people are solved together by enumerating the possible assignments (up to 6 people
a side), larger ones with :func:`scipy.optimize.linear_sum_assignment`; problems where nobody has two
allowed links are not solved at all (their allowed links are the optimum). There is no Python loop per
frame for the usual few-people video.

Importing this module is cheap: numpy, scipy and pyarrow are imported inside the functions.
"""

from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_kakaopose._arrowcodes import value_codes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from concurrent.futures import Executor

    import numpy as np
    import pyarrow as pa

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MAX_OCCLUSION_S",
    "STREAM_CHUNK_ROWS",
    "TRACK_COLUMN",
    "assign_tracks",
    "assign_tracks_reader",
]

#: Name of the column :func:`assign_tracks` adds (right after ``person_idx``).
TRACK_COLUMN = "track_id"
#: The distance gate used when ``max_distance`` is ``None``, in box scales (``sqrt(bbox_w * bbox_h)``).
DEFAULT_MAX_DISTANCE = 1.0
#: How long (seconds) a hidden person may stay unseen and still be re-linked near their predicted position.
DEFAULT_MAX_OCCLUSION_S = 2.0
#: How much the distance gate widens per missing frame when re-linking after a gap (fraction of the gate).
GAP_WIDENING = 0.1
#: After a gap, the most two bodies' sizes (height estimates from the torso and legs) may differ by (a ratio)...
SIZE_RATIO = 1.3
#: ... and their leg / torso proportions.
SHAPE_RATIO = 1.5
#: The shortest gap (missing frames) after which the body check applies: nobody else can stand where someone
#: was a frame or two ago, and one odd keypoint should not break a track.
BODY_CHECK_GAP = 3
#: After a gap, the distance gate is this share of the frame-to-frame one (before widening; see _gate): the
#: distance is then the smaller of those to the predicted and to the last seen position.
GAP_GATE = 0.5
#: Links a track needs (frame to frame) for its end to be re-linked after more than ``max_gap`` frames.
CONFIRMED_LINKS = 10
#: Links looked back along a track to estimate its velocity.
VELOCITY_STEPS = 3
#: Largest number of possible assignments of one frame pair solved by enumeration (6 x 6 people = 720).
_MAX_ENUMERATED = 720
#: Largest distance gate for which a problem where nobody has two allowed links is not solved (see _links).
_EASY_GATE = 1000.0
_N_KP = 17
#: Problems x links solved per block in a link pass (sized so that the temporaries stay in the CPU cache).
_BLOCK_CELLS = 1 << 16
_TRACKING_KEY = b"kakaopose:tracking"
#: Tables with at least this many rows are tracked with two threads: none by default. On the 2-core machine here,
#: right after flattening (benchmarks/tracking.py), two threads were slower than one on the 1-hour smooth table
#: (0.28-0.31 s against 0.24-0.27 s, medians); on the random one they were faster (0.61 against 0.70 s).
_THREADED_ROWS = 1 << 62
#: Largest coordinate (px) for which every distance and area is finite in float32; beyond it (or with NaN), the
#: keypoint distances are computed for every cell of a contested problem, as the result may then depend on them.
_BOUND = 1e15
_BOX = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
#: The longest re-link window (frames) a video's frame rate can give (a bound, so that it fits in int64).
_MAX_WINDOW = float(1 << 60)


# --------------------------------------------------------------------------------------------- input


def _codes(column: pa.ChunkedArray, known: dict[Any, int]) -> np.ndarray:
    """int32 codes of a (dictionary or plain) string column: equal values get equal codes, null is -1
    (``known`` maps values to codes and is extended; see :func:`~airflow_provider_kakaopose._arrowcodes.value_codes`).
    """
    import numpy as np

    return value_codes(column, known).astype(np.int32)


def _code_runs(column: pa.ChunkedArray, known: dict[Any, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_codes` without a per-row array when every chunk is one dictionary value without nulls (the
    usual case): the code of each chunk and where it ends, or ``None`` (then ``known`` holds a prefix of what
    :func:`_codes` adds, in the same order, so :func:`_codes` may follow).
    """
    import numpy as np
    import pyarrow as pa

    codes, ends = [], []
    end = 0
    for chunk in column.chunks:
        if not len(chunk):
            continue
        if not pa.types.is_dictionary(chunk.type) or chunk.null_count or len(chunk.dictionary) != 1:
            return None
        codes.append(known.setdefault(chunk.dictionary[0].as_py(), len(known)))
        end += len(chunk)
        ends.append(end)
    return np.array(codes, dtype=np.int32), np.array(ends, dtype=np.int64)


def _column_codes(table: pa.Table, name: str, known: dict[Any, int]) -> Any:
    """The codes of a string column: per-chunk runs (see :func:`_code_runs`) or a per-row array."""
    column = table.column(name)
    runs = _code_runs(column, known)
    return runs if runs is not None else _codes(column, known)


def _codes_every(codes: Any, step: int) -> np.ndarray:
    """The codes (from :func:`_column_codes`) of rows ``0, step, 2 * step, ...`` (canonical first rows)."""
    import numpy as np

    if isinstance(codes, tuple):  # chunk k holds the rows ends[k-1] <= r < ends[k]
        values, ends = codes
        return np.repeat(values, np.diff(-(-ends // step), prepend=0))
    return codes[::step]


def _codes_per_row(codes: Any) -> np.ndarray:
    import numpy as np

    if isinstance(codes, tuple):
        values, ends = codes
        return np.repeat(values, np.diff(ends, prepend=0))
    return codes


def _numpy(table: pa.Table, name: str, dtype: Any = None) -> np.ndarray:
    import numpy as np

    return np.asarray(table.column(name).to_numpy(), dtype=dtype)


def _fill_floats(dst: np.ndarray, column: pa.ChunkedArray) -> None:
    """Write a float column into ``dst`` (nulls as 0), chunk by chunk: no intermediate array."""
    import numpy as np

    off = 0
    for chunk in column.chunks:
        m = len(chunk)
        part = dst[off : off + m]
        if chunk.null_count:  # the values buffer as it is, then its bits times the validity bit (0.0 if null)
            first, (validity, values) = chunk.offset, chunk.buffers()
            with np.errstate(over="ignore", invalid="ignore"):  # (what a null slot holds is dropped)
                part[:] = np.frombuffer(values, dtype=chunk.type.to_pandas_dtype(), count=first + m)[first:]
            raw = np.frombuffer(validity, dtype=np.uint8, count=(first + m + 7) // 8)
            bits = part.view(np.uint32)  # (dst is float32)
            np.multiply(bits, np.unpackbits(raw, bitorder="little")[first : first + m], out=bits)
        else:
            part[:] = chunk.to_numpy()
        off += m


def _fill_valid(dst: np.ndarray, column: pa.ChunkedArray) -> None:
    """Write 1 where ``column`` is valid, 0 where null, into ``dst``."""
    import numpy as np

    off = 0
    for chunk in column.chunks:
        m = len(chunk)
        bitmap = chunk.buffers()[0] if chunk.null_count else None
        if bitmap is None:
            dst[off : off + m] = 1
        else:  # the validity bitmap, unpacked (LSB first) from the chunk's bit offset
            first = chunk.offset
            raw = np.frombuffer(bitmap, dtype=np.uint8, count=(first + m + 7) // 8)
            dst[off : off + m] = np.unpackbits(raw, bitorder="little")[first : first + m]
        off += m


def _gather_floats(column: pa.ChunkedArray, rows: np.ndarray, step: int = 0, dtype: Any = None) -> np.ndarray:
    """Values (float32, or ``dtype``) of a float column without nulls at ascending ``rows``, from zero-copy
    chunk views.

    ``step``: ``rows`` is ``arange(0, step * len(rows), step)`` (then it is not read).
    """
    import numpy as np

    out = np.empty(len(rows), dtype=dtype or np.float32)
    start = 0
    if step:  # rows == arange(0, step * len(rows), step): strided zero-copy slices, no index arrays
        for chunk in column.chunks:
            end = start + len(chunk)
            lo = -(-start // step)  # first wanted row at or after start
            if lo * step < end:
                values = chunk.to_numpy()[lo * step - start :: step]
                out[lo : lo + len(values)] = values
            start = end
        return out
    for chunk in column.chunks:
        end = start + len(chunk)
        lo, hi = np.searchsorted(rows, (start, end))
        if hi > lo:
            out[lo:hi] = chunk.to_numpy()[rows[lo:hi] - start]
        start = end
    return out


class _RowLayout(NamedTuple):
    """How the rows of a keypoints table make detections. A detection is a *run* of rows (one person in one
    frame of one video) in *sorted-row order*: the table's own order when ``canonical``, else ``row_order``.
    The runs are in sorted-row order too, not necessarily in (video, frame, person_idx) order (see
    :func:`_detection_order`).
    """

    #: The usual layout (that of keypoints_table): 17 rows per person, keypoints 1..17 in order.
    canonical: bool
    #: The table row at each sorted row (a stable sort by video, frame, person_idx, keypoint_id); None if canonical.
    row_order: np.ndarray | None
    #: The run of each sorted row; None if canonical.
    row_run: np.ndarray | None
    #: The first sorted row of each run, and the table row it is.
    starts: np.ndarray
    first_rows: np.ndarray
    #: The keypoint_id of each sorted row; None if canonical.
    kp_id: np.ndarray | None
    #: Per run: the video's code (from source and job_id), frame_num and person_idx (int64).
    group: np.ndarray
    frame: np.ndarray
    person: np.ndarray


def _row_layout(table: pa.Table) -> _RowLayout:
    """Find the runs of rows that make each detection: cut every 17 rows when the table is canonical, else
    sort the rows (stable) so that each person's rows are together and cut where the person changes."""
    import numpy as np

    n = table.num_rows
    known: dict[Any, int] = {}
    src_code = _column_codes(table, "source", known)
    job_code = _column_codes(table, "job_id", known)
    per_person = _canonical_chunks(table)  # (the usual case: without reading the columns whole)
    if per_person is not None and _is_canonical(n, None, (src_code, job_code)):
        return _canonical_layout(n, src_code, job_code, *per_person)
    frame = _numpy(table, "frame_num")
    person = _numpy(table, "person_idx")
    kp_id = _numpy(table, "keypoint_id")
    if _is_canonical(n, kp_id, (frame, person, src_code, job_code)):
        starts = np.arange(0, n, _N_KP)
        return _canonical_layout(n, src_code, job_code, frame[starts], person[starts])
    group = _codes_per_row(src_code).astype(np.int64) * (1 << 31) + _codes_per_row(job_code)
    row_order = np.lexsort((kp_id, person, frame, group))
    frame, person, kp_id, group = frame[row_order], person[row_order], kp_id[row_order], group[row_order]
    change = np.ones(n, dtype=bool)
    change[1:] = (frame[1:] != frame[:-1]) | (person[1:] != person[:-1]) | (group[1:] != group[:-1])
    starts = np.flatnonzero(change)
    row_run = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n)))
    run_frame, run_person = frame[starts].astype(np.int64), person[starts].astype(np.int64)
    return _RowLayout(False, row_order, row_run, starts, row_order[starts], kp_id, group[starts], run_frame, run_person)


def _canonical_layout(n: int, src_code: Any, job_code: Any, frame: np.ndarray, person: np.ndarray) -> _RowLayout:
    """The layout of a canonical table of ``n`` rows, from the frame and person of each 17 rows."""
    import numpy as np

    starts = np.arange(0, n, _N_KP)
    group = _codes_every(src_code, _N_KP).astype(np.int64) * (1 << 31) + _codes_every(job_code, _N_KP)
    return _RowLayout(True, None, None, starts, starts, None, group, frame.astype(np.int64), person.astype(np.int64))


def _canonical_chunks(table: pa.Table) -> tuple[np.ndarray, np.ndarray] | None:
    """frame_num and person_idx of each 17 rows when the chunks of those and of keypoint_id are aligned, whole
    numbers of people without nulls, and in the canonical layout (see :func:`_is_canonical`); else ``None``.
    Chunk by chunk, from zero-copy views."""
    import numpy as np
    import pyarrow as pa

    cols = [table.column(name) for name in ("frame_num", "person_idx", "keypoint_id")]
    if not all(pa.types.is_integer(col.type) for col in cols):
        return None
    sizes = [[len(chunk) for chunk in col.chunks] for col in cols]
    if (
        sizes[1] != sizes[0]
        or sizes[2] != sizes[0]
        or any(m % _N_KP for m in sizes[0])
        or any(c.null_count for c in cols)
    ):
        return None
    ids = np.tile(np.arange(1, _N_KP + 1, dtype=cols[2].type.to_pandas_dtype()), max(sizes[0], default=0) // _N_KP)
    frames, persons = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for chunks in zip(*(col.chunks for col in cols), strict=True):
        frame, person, kp_id = (np.asarray(chunk.to_numpy()) for chunk in chunks)
        if not (np.array_equal(kp_id, ids[: len(kp_id)]) and _per_person(frame) and _per_person(person)):
            return None
        frames.append(frame[::_N_KP])
        persons.append(person[::_N_KP])
    return np.concatenate(frames), np.concatenate(persons)


def _per_person(values: np.ndarray) -> bool:
    """Whether ``values`` change only every 17 rows (flat comparisons: faster than on (n, 17) rows)."""
    same = values[1:] == values[:-1]
    same[_N_KP - 1 :: _N_KP] = True
    return bool(same.all())


def _is_canonical(n: int, kp_id: np.ndarray | None, per_person: Iterable[Any]) -> bool:
    """Whether the ``n`` rows are 17 per person with keypoints 1..17 in order (``kp_id``; ``None``: known),
    each of the ``per_person`` columns (arrays, or per-chunk codes from :func:`_column_codes`) constant within
    each 17 (an empty table is)."""
    import numpy as np

    if n % _N_KP:
        return False
    if not n:
        return True
    blocks = n // _N_KP
    if kp_id is not None and not (kp_id.reshape(blocks, _N_KP) == np.arange(1, _N_KP + 1, dtype=kp_id.dtype)).all():
        return False
    for a in per_person:
        if isinstance(a, tuple):  # per-chunk codes: they may change only between people
            values, ends = a
            if not (ends[:-1][values[1:] != values[:-1]] % _N_KP == 0).all():
                return False
        else:
            a2 = a.reshape(blocks, _N_KP)
            if not (a2 == a2[:, :1]).all():
                return False
    return True


def _detection_order(group: np.ndarray, frame: np.ndarray, person: np.ndarray) -> np.ndarray | None:
    """The permutation that sorts the runs by (video, frame, person_idx); ``None`` when they already are (as
    for a table from keypoints_table)."""
    import numpy as np

    if len(group) < 2:
        return None
    later = (group[1:] > group[:-1]) | (
        (group[1:] == group[:-1])
        & ((frame[1:] > frame[:-1]) | ((frame[1:] == frame[:-1]) & (person[1:] > person[:-1])))
    )
    return None if bool(later.all()) else np.lexsort((person, frame, group))


def _row_keypoints(table: pa.Table, pool: Executor | None) -> tuple[Any, Any, Any, np.ndarray | None]:
    """x, y (nulls as 0) and seen (1 where x is valid, else 0) of every row, in table order. Float columns are
    written straight into one (3, rows) float32 array (the three are its rows), which is returned too (else
    ``None``): for a canonical table it is the (3, detections, 17) keypoints, without a copy."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    x_col, y_col = table.column("x"), table.column("y")
    if not (pa.types.is_floating(x_col.type) and pa.types.is_floating(y_col.type)):
        x = pc.fill_null(x_col, 0).to_numpy()
        y = pc.fill_null(y_col, 0).to_numpy()
        seen = np.asarray(x_col.is_valid().to_numpy(zero_copy_only=False), dtype=np.float32)
        return x, y, seen, None
    flat_kp = np.empty((3, table.num_rows), dtype=np.float32)
    fills = (
        (_fill_floats, flat_kp[0], x_col),
        (_fill_floats, flat_kp[1], y_col),
        (_fill_valid, flat_kp[2], x_col),
    )
    if pool is not None:  # memory-bound copies: in threads
        list(pool.map(lambda job: job[0](job[1], job[2]), fills))
    else:
        for fill, dst, col in fills:
            fill(dst, col)
    return flat_kp[0], flat_kp[1], flat_kp[2], flat_kp


def _keypoint_arrays(
    table: pa.Table, rows: _RowLayout, pool: Executor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """x, y and seen (1/0) of the 17 keypoints of each run, as (runs, 17) arrays (a keypoint without a row: 0),
    and the (3, rows) float32 array of :func:`_row_keypoints` (or ``None``)."""
    import numpy as np

    x, y, seen, flat_kp = _row_keypoints(table, pool)
    n_runs = len(rows.starts)
    if rows.canonical:  # views: run k is rows 17k..17k+16
        return x.reshape(n_runs, _N_KP), y.reshape(n_runs, _N_KP), seen.reshape(n_runs, _N_KP), flat_kp
    row_order, row_run, kp_id = rows.row_order, rows.row_run, rows.kp_id
    assert row_order is not None and row_run is not None and kp_id is not None  # (not canonical)
    x, y, seen = x[row_order], y[row_order], seen[row_order]
    ok = (kp_id >= 1) & (kp_id <= _N_KP)
    kx, ky, km = (np.zeros((n_runs, _N_KP), dtype=np.float32) for _ in range(3))
    for dst, src in ((kx, x), (ky, y), (km, seen)):
        dst[row_run[ok], kp_id[ok].astype(np.int64) - 1] = src[ok]
    return kx, ky, km, flat_kp


def _box_and_is_video(table: pa.Table, rows: _RowLayout) -> tuple[list[np.ndarray], np.ndarray]:
    """The box (bbox_x, bbox_y, bbox_w, bbox_h; float32) of each run, read at its first row, and whether the
    run is a video frame (``time_s`` not null: images are not tracked)."""
    import numpy as np
    import pyarrow as pa

    take = pa.array(rows.first_rows, type=pa.int64())
    box = []
    for c in _BOX:
        col = table.column(c)
        if rows.canonical and not col.null_count and pa.types.is_floating(col.type):  # every 17th row: no copy
            box.append(_gather_floats(col, rows.first_rows, _N_KP))
        else:
            box.append(np.asarray(col.take(take).to_numpy(), np.float32))
    time_col = table.column("time_s")
    if time_col.null_count:
        is_video = np.asarray(time_col.take(take).is_valid().to_numpy(zero_copy_only=False), bool)
    else:
        is_video = np.ones(len(rows.starts), dtype=bool)
    return box, is_video


def _times(table: pa.Table, rows: np.ndarray) -> np.ndarray:
    """``time_s`` (float64, NaN if null) at table ``rows``."""
    import numpy as np
    import pyarrow as pa

    column = table.column("time_s")
    out = np.empty(len(rows), dtype=np.float64)
    ends = np.cumsum([len(chunk) for chunk in column.chunks])
    which = np.searchsorted(ends, rows, side="right")
    for k in np.unique(which).tolist():  # chunk by chunk (a take on the whole column would concatenate it)
        at = np.flatnonzero(which == k)
        chunk = column.chunk(k)
        taken = chunk.take(pa.array(rows[at] - (ends[k] - len(chunk)), type=pa.int64()))
        out[at] = np.asarray(taken.to_numpy(zero_copy_only=False), dtype=np.float64)
    return out


def _frame_axis(group: np.ndarray, frame: np.ndarray, max_gap: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The largest gap that can link anything, and for each detection its frame on one axis over all videos
    (``gframe``) and its video's number (``gcode``, from 0 in order).

    A gap of g frames joins frames g + 1 apart, so no gap reaches past the frame span of the table (a huge
    ``max_gap``, meaning "never drop an id", costs nothing more). On the frame axis the videos follow one
    another with a spacer wider than that gap, so that no link crosses from one video to the next.
    """
    import numpy as np

    n = len(frame)
    frame_range = int(frame.max() - frame.min()) if n else 0
    useful_gap = min(max_gap, max(frame_range - 1, 0))
    if not n:
        none = np.zeros(0, dtype=np.int64)
        return useful_gap, none, none
    gstart = np.flatnonzero(np.append(True, group[1:] != group[:-1]))
    gcode = np.repeat(np.arange(len(gstart)), np.diff(np.append(gstart, n)))
    span = frame_range + useful_gap + 2
    return useful_gap, frame - frame.min() + gcode * span, gcode


def _windows(
    group: np.ndarray,
    frame: np.ndarray,
    time_s: Callable[[np.ndarray], np.ndarray],
    max_gap: int,
    max_occlusion_s: float,
) -> np.ndarray:
    """Per detection, the most frames its track may stay unlinked and still be re-linked: ``max_gap``, or
    ``max_occlusion_s`` seconds at its video's frame rate (``frame_num / time_s`` at the video's last frame,
    as keypoints_table writes ``time_s``) when that is more frames. ``time_s``: the ``time_s`` of detections
    (only the videos' last ones are read)."""
    import numpy as np

    n = len(frame)
    window = np.full(n, max_gap, dtype=np.int64)
    if not n or not max_occlusion_s:
        return window
    last = np.flatnonzero(np.append(group[1:] != group[:-1], True))  # each video's last detection
    with np.errstate(invalid="ignore", divide="ignore"):
        fps = frame[last] / time_s(last)
    fps = np.where(np.isfinite(fps) & (fps > 0), fps, 0.0)
    frames = np.minimum(np.ceil(max_occlusion_s * fps), _MAX_WINDOW).astype(np.int64)
    per_video = np.repeat(frames, np.diff(last, prepend=-1))
    return np.maximum(window, per_video)


#: Keypoint pairs (COCO indices) whose lengths measure a body: torso sides (the first two), thighs, shins.
#: Nearly the same whichever way the person faces.
_SEGMENTS = ((5, 11), (6, 12), (11, 13), (12, 14), (13, 15), (14, 16))
_MEASURED = 1 << len(_SEGMENTS)


@cache
def _bits() -> np.ndarray:
    """Row b: the bits of b (b < 64) as 0/1 float32, segment k in column k."""
    import numpy as np

    return ((np.arange(1 << len(_SEGMENTS))[:, None] >> np.arange(len(_SEGMENTS))) & 1).astype(np.float32)


def _measure_bodies(p: _Detections, dets: np.ndarray) -> None:
    """Fill ``p.bodies`` for those of ``dets`` not measured yet: the lengths of their :data:`_SEGMENTS`
    ((n, 6) float32, 0 where unseen) and which are seen (bits 0-5; bit 6: measured)."""
    import numpy as np

    if len(p.bodies[0]) != p.n:
        p.bodies = (np.zeros((p.n, len(_SEGMENTS)), np.float32), np.zeros(p.n, np.int64))
    todo = np.unique(dets[p.bodies[1][dets] == 0])
    lengths, seen = _segments(p, todo)
    p.bodies[0][todo] = lengths * seen
    p.bodies[1][todo] = (seen > 0) @ (1 << np.arange(len(_SEGMENTS))) | _MEASURED


def _segments(p: _Detections, dets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths (px) of the :data:`_SEGMENTS` of ``dets`` (any shape), as (..., 6), and whether each is seen
    (both its keypoints detected; 1/0)."""
    import numpy as np

    flat = p.kp.reshape(3, -1)
    i, j = (np.asarray(ends) for ends in zip(*_SEGMENTS, strict=True))
    at_i = dets[..., None] * _N_KP + i  # (..., 6) flat indices of each segment's two keypoints
    at_j = dets[..., None] * _N_KP + j
    (xi, yi, mi), (xj, yj, mj) = flat.take(at_i, axis=1), flat.take(at_j, axis=1)
    return np.hypot(xi - xj, yi - yj), mi * mj


def _keypoint_centres(kp: np.ndarray, box: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Centre (float32) of each detection's detected keypoints (``kp``: (3, n, 17)); the box centre when none is."""
    import numpy as np

    kx, ky, km = kp
    bx, by, bw, bh = box
    count = np.einsum("pk->p", km)  # a count: exact in any order (and faster than .sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.einsum("pk,pk->p", kx, km) / count
        cy = np.einsum("pk,pk->p", ky, km) / count
    none = np.flatnonzero(count == 0)  # (float32 throughout: written in place)
    cx[none], cy[none] = bx[none] + bw[none] / 2, by[none] + bh[none] / 2
    return cx, cy


class _Detections:
    """The detections (person-frames) of a keypoints table, one entry each, sorted by (video, frame,
    person_idx), with what the tracker compares.

    Per detection: ``kp`` (3, n, 17), x, y and seen (1/0) of the keypoints (``kx``, ``ky``, ``km`` are its
    rows); the box ``bx``, ``by``, ``bw``, ``bh`` (and ``x1``, ``y1``, ``area``); ``cx``, ``cy``, the centre
    of the keypoints; ``scale``, ``sqrt(bw * bh)`` (at least 1); ``feat``, those box/centre features stacked;
    ``frame``, ``gframe`` and ``gcode`` (see :func:`_frame_axis`); ``is_video`` (False for images).
    ``max_gap``: the largest gap that can link anything. :meth:`row_values` spreads a per-detection array
    back to the table's rows (in any layout of the table).
    """

    def __init__(
        self, table: pa.Table, max_gap: int, pool: Executor | None = None, max_occlusion_s: float = 0.0
    ) -> None:
        import numpy as np

        rows = _row_layout(table)
        kx, ky, km, flat_kp = _keypoint_arrays(table, rows, pool)
        box, is_video = _box_and_is_video(table, rows)
        group, frame, first_rows = rows.group, rows.frame, rows.first_rows
        order = _detection_order(group, frame, rows.person)
        if order is not None:
            kx, ky, km = kx[order], ky[order], km[order]
            box = [b[order] for b in box]
            group, frame, is_video, first_rows = group[order], frame[order], is_video[order], first_rows[order]
        # Where the rows are (see row_values): run_to_det is the detection of each run (None: the same).
        self.canonical = rows.canonical
        self.row_order, self.row_run = rows.row_order, rows.row_run
        self.run_to_det = None if order is None else np.argsort(order)
        self.n = len(frame)
        # x, y and seen (1/0) of the 17 keypoints, as one (3, n, 17) float32 array: one gather for all three.
        if rows.canonical and order is None and flat_kp is not None:
            self.kp = flat_kp.reshape(3, self.n, _N_KP)
        else:
            self.kp = np.stack([np.asarray(a, dtype=np.float32) for a in (kx, ky, km)])
        self.kx, self.ky, self.km = self.kp
        self.frame = frame
        self.is_video = is_video
        #: Per detection: how many frames its track may stay unlinked and still be re-linked (see _windows).
        self.window = _windows(group, frame, lambda d: _times(table, first_rows[d]), max_gap, max_occlusion_s)
        self.max_gap, self.gframe, self.gcode = _frame_axis(group, frame, int(self.window.max(initial=max_gap)))
        # The box/centre features, written straight into one stacked array (one gather per side in _benefit):
        # bx, by, x1, y1, area, cx, cy, scale, bw, bh. bw, bh last: only a moving previous side needs them, so
        # the others gather just the first 8 rows.
        self.feat = feat = np.empty((10, self.n), dtype=np.float32)
        bx, by, bw, bh = box
        feat[0], feat[1], feat[8], feat[9] = bx, by, bw, bh
        np.add(bx, bw, out=feat[2])
        np.add(by, bh, out=feat[3])
        np.multiply(bw, bh, out=feat[4])
        feat[5], feat[6] = _keypoint_centres(self.kp, box)
        np.multiply(np.maximum(bw, 0), np.maximum(bh, 0), out=feat[7])
        np.maximum(np.sqrt(feat[7], out=feat[7]), 1.0, out=feat[7])
        self.bx, self.by, self.x1, self.y1, self.area, self.cx, self.cy, self.scale, self.bw, self.bh = feat
        self._bounded: bool | None = None
        #: Body measures of the detections the gap cascade compares (see _measure_bodies).
        self.bodies: tuple[np.ndarray, np.ndarray] = (np.zeros((0, 6), np.float32), np.zeros(0, np.int64))

    def bounded(self) -> bool:
        """Whether every coordinate is finite and within ``_BOUND`` (so that no distance or area overflows)."""
        import numpy as np

        if self._bounded is None:
            values = (self.kp[:2], self.feat[:4])
            self._bounded = all(bool(np.abs(v.min()) <= _BOUND and np.abs(v.max()) <= _BOUND) for v in values)
        return self._bounded

    def row_values(self, per_det: np.ndarray) -> np.ndarray:
        """Spread a per-detection array to the table's rows, in the table's row order."""
        import numpy as np

        per_run = per_det if self.run_to_det is None else per_det[self.run_to_det]
        if self.canonical:  # 17 rows per detection: a broadcast copy (faster than np.repeat)
            return np.broadcast_to(per_run[:, None], (len(per_run), _N_KP)).reshape(-1)
        assert self.row_order is not None and self.row_run is not None  # (not canonical)
        out = np.empty(len(self.row_run), dtype=per_run.dtype)
        out[self.row_order] = per_run[self.row_run]
        return out


# --------------------------------------------------------------------------------------------- matching


@cache
def _assignments(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """All maximal one-to-one assignments between ``a`` rows and ``b`` columns, as (K, min(a, b)) indices."""
    from itertools import permutations

    import numpy as np

    n, m = min(a, b), max(a, b)
    perms = np.array(list(permutations(range(m), n)), dtype=np.int64).reshape(-1, n)
    fixed = np.broadcast_to(np.arange(n), perms.shape)
    return (fixed, perms) if a <= b else (perms, fixed)


def _n_assignments(a: int, b: int) -> int:
    from math import perm

    return perm(max(a, b), min(a, b))


def _ancestors(pred: np.ndarray, dets: np.ndarray) -> np.ndarray:
    """The detection :data:`VELOCITY_STEPS` links before each of ``dets`` (or the track's first, if nearer)."""
    import numpy as np

    anc = dets.copy()
    for _ in range(VELOCITY_STEPS):
        back = pred[anc]
        anc = np.where(back >= 0, back, anc)
    return anc


def _velocity(
    p: _Detections, pred: np.ndarray, dets: np.ndarray, anc: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Velocity (px per frame) of ``dets`` along their links: mean shift of the keypoints seen at both ends
    (``anc``: their :func:`_ancestors`, if known)."""
    import numpy as np

    anc = _ancestors(pred, dets) if anc is None else anc
    dt = (p.frame[dets] - p.frame[anc]).astype(np.float32)
    moving = dt > 0
    vx = np.zeros(len(dets), dtype=np.float32)
    vy = np.zeros(len(dets), dtype=np.float32)
    # Consecutive dets (all of a table's): every one, read in place (a view, no gather); the others dropped.
    consecutive = len(dets) > 0 and int(dets[-1] - dets[0]) == len(dets) - 1
    where = np.arange(len(dets)) if consecutive else np.flatnonzero(moving)
    step = _BLOCK_CELLS // _N_KP  # in blocks, so that the temporaries stay in the CPU cache
    for lo in range(0, len(where), step):
        w = where[lo : lo + step]
        d, a, t = dets[w], anc[w], dt[w]
        kd = p.kp[:, d[0] : d[-1] + 1] if consecutive else p.kp.take(d, axis=1)
        ka = p.kp.take(a, axis=1)
        both = np.multiply(kd[2], ka[2], out=ka[2])
        cnt = np.einsum("pk->p", both)  # a count: exact in any order (and faster than .sum(axis=1))
        dx, dy = np.subtract(kd[0], ka[0], out=ka[0]), np.subtract(kd[1], ka[1], out=ka[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            mx, my = np.einsum("pk,pk->p", dx, both), np.einsum("pk,pk->p", dy, both)
            mx /= cnt
            my /= cnt
            none = np.flatnonzero(cnt == 0)  # no keypoint seen at both ends (rare): the centres' shift
            mx[none], my[none] = p.cx[d[none]] - p.cx[a[none]], p.cy[d[none]] - p.cy[a[none]]
            mx /= t
            my /= t
        if consecutive:
            keep = moving[w]
            w, mx, my = w[keep], mx[keep], my[keep]
        vx[w], vy[w] = mx, my
    return vx, vy


def _contested(allowed: np.ndarray) -> np.ndarray:
    """(G,) whether someone has more than one allowed link in each (a, b, G) problem."""
    import numpy as np

    a, b, g_n = allowed.shape
    out = np.zeros(g_n, dtype=bool)
    for lines in ([allowed[i] for i in range(a)], [allowed[:, j] for j in range(b)]):
        for line in lines:  # (k, G): more than one True along k
            seen = line[0].copy()
            for k in range(1, len(line)):
                out |= seen & line[k]
                seen |= line[k]
    return out


def _benefit(
    p: _Detections,
    prev: np.ndarray,
    cur: np.ndarray,
    gap: int,
    velocity: tuple[np.ndarray, np.ndarray] | None,
    min_iou: float,
    gate: float,
    use_keypoints: bool,
    cache: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Benefit of linking ``prev`` (G, a) to ``cur`` (G, b): ``limit - cost`` where allowed, else 0, as (a, b, G);
    and ``allowed`` itself.

    cost = (1 - IoU of the predicted box) + distance / mean box scale, the distance being between the
    predicted and the actual centre of the keypoints; allowed when the distance is within the (gap-widened)
    ``gate`` and, between consecutive frames, the IoU is at least ``min_iou``; after a gap, within the end's
    re-link window, the distance being the smaller of those from the predicted and the last seen centre. With
    ``use_keypoints``, the problems where someone has more than one allowed link are scored again with the mean
    distance of the
    keypoints seen in both detections instead of the centres. ``velocity`` ``(vx, vy)`` per detection, or
    ``None``: no motion (all velocities 0). ``cache``: where the gathered features of these problems are kept
    for the next pass over them (empty), or were kept by the one before (then taken out).

    The problems are on the last axis so that every elementwise operation runs over long contiguous rows.
    """
    import numpy as np

    fp, fc = (cache.pop("prev", None), cache.pop("cur", None)) if cache is not None else (None, None)
    if fp is None or fc is None:
        # One gather of the box/centre features of each side: (F, a, 1, G), and (8, 1, b, G) as they are. bw, bh
        # (the last 2 of F = 10) only to move the boxes, or for a next pass.
        moving = velocity is not None or cache is not None
        fp = (p.feat if moving else p.feat[:8]).take(prev.T, axis=1)[:, :, None, :]
        fc = p.feat[:8].take(cur.T, axis=1)[:, None, :, :]
        if cache is not None:
            cache.update(prev=fp, cur=fc)
    ahead = _predicted(fp, prev, gap, velocity)
    iou = _iou(ahead, fc)
    scale = ahead.scale + fc[7]  # the mean box scale of the two sides
    scale *= 0.5
    norm = _centre_distance(ahead.centre, fc, scale)
    if gap:  # near where they were predicted, or near where they were last seen (they turned back)
        np.minimum(norm, _centre_distance(ahead.last, fc, scale), out=norm)
    base = iou >= min_iou if gap == 0 else np.broadcast_to((p.window.take(prev.T) >= gap)[:, None, :], iou.shape)
    allowed = norm <= gate
    allowed &= base
    if use_keypoints and (prev.shape[1] > 1 or cur.shape[1] > 1):
        _rescore_contested(p, prev, cur, ahead.shift, scale, gate, base, norm, allowed)
    limit = np.float32(2 + gate)
    # limit - (1 - iou) - norm where allowed, else 0 (in place, float32 throughout).
    out = np.subtract(1, iou, out=iou)
    np.subtract(limit, out, out=out)
    out -= norm
    out *= allowed
    return out, allowed


class _Prediction(NamedTuple):
    """Where the previous side of the problems is predicted to be, as (a, 1, G) arrays (see :func:`_predicted`)."""

    #: (x0, y0, x1, y1), moved by the shift.
    box: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    #: (cx, cy): the centre of the keypoints, moved by the shift.
    centre: tuple[np.ndarray, np.ndarray]
    #: Area and scale of the box (the shift does not change them).
    area: np.ndarray
    scale: np.ndarray
    #: (sx, sy): the shift (velocity x frames), or None without velocities.
    shift: tuple[np.ndarray, np.ndarray] | None
    #: (cx, cy): the centre of the keypoints where last seen.
    last: tuple[np.ndarray, np.ndarray]


def _predicted(
    fp: np.ndarray, prev: np.ndarray, gap: int, velocity: tuple[np.ndarray, np.ndarray] | None
) -> _Prediction:
    """Where the ``prev`` (G, a) detections (their box/centre features ``fp``: (F, a, 1, G), see :func:`_benefit`)
    are predicted ``gap + 1`` frames later, with ``velocity``."""
    bx, by, x1, y1, area, cx, cy, scale = fp[:8]
    if velocity is None:
        # Zero velocity: adding 0 changes nothing, so the prediction is the box itself (bx + bw == x1).
        return _Prediction((bx, by, x1, y1), (cx, cy), area, scale, None, (cx, cy))
    dt = gap + 1
    vx, vy = velocity
    sx = (vx[prev.T] * dt)[:, None, :]
    sy = (vy[prev.T] * dt)[:, None, :]
    bw, bh = fp[8:]
    x0, y0 = bx + sx, by + sy
    return _Prediction((x0, y0, x0 + bw, y0 + bh), (cx + sx, cy + sy), area, scale, (sx, sy), (cx, cy))


def _same_body(p: _Detections, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Whether each ``prev`` and ``cur`` detection (pairs: (m,) each) may be the same person, measured on the
    :data:`_SEGMENTS` seen in both: body sizes (summed lengths) within :data:`SIZE_RATIO` of each other, and
    leg / torso proportions within :data:`SHAPE_RATIO` (True where a measure has nothing to compare)."""
    import numpy as np

    _measure_bodies(p, np.concatenate((prev, cur)))
    lengths, bits = p.bodies
    both = _bits().take(bits[prev] & bits[cur] & (_MEASURED - 1), axis=0)  # (m, 6): 1 where the segment is seen in both
    len_p, len_c = lengths[prev] * both, lengths[cur] * both
    torso_p, torso_c = len_p[:, :2].sum(axis=1), len_c[:, :2].sum(axis=1)
    legs_p, legs_c = len_p[:, 2:].sum(axis=1), len_c[:, 2:].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        size = np.abs(np.log((torso_p + legs_p) / (torso_c + legs_c)))
        shape = np.abs(np.log((legs_p * torso_c) / (torso_p * legs_c)))
    return ~(size > np.log(SIZE_RATIO)) & ~(shape > np.log(SHAPE_RATIO))


def _iou(ahead: _Prediction, fc: np.ndarray) -> np.ndarray:
    """IoU of each predicted box (a, 1, G) with each current box (features ``fc``: (8, 1, b, G))."""
    import numpy as np

    ax0, ay0, ax1, ay1 = ahead.box
    bx_c, by_c, x1_c, y1_c, area_c = fc[:5]
    iw = np.minimum(ax1, x1_c)
    iw -= np.maximum(ax0, bx_c)
    ih = np.minimum(ay1, y1_c)
    ih -= np.maximum(ay0, by_c)
    np.maximum(iw, 0, out=iw)
    np.maximum(ih, 0, out=ih)
    inter = np.multiply(iw, ih, out=iw)
    union = ahead.area + area_c
    with np.errstate(invalid="ignore"):  # an infinite box: inf - inf is NaN, and NaN is no overlap
        union -= inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _centre_distance(centre_p: tuple[np.ndarray, np.ndarray], fc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Distance from each predicted centre ``centre_p`` (a, 1, G) to each current one (in ``fc``), in ``scale``s."""
    import numpy as np

    pcx, pcy = centre_p
    dx = pcx - fc[5]
    dy = pcy - fc[6]
    norm = np.hypot(dx, dy, out=dx)
    norm /= scale
    return norm


def _rescore_contested(
    p: _Detections,
    prev: np.ndarray,
    cur: np.ndarray,
    shift: tuple[np.ndarray, np.ndarray] | None,
    scale: np.ndarray,
    gate: float,
    base: np.ndarray,
    norm: np.ndarray,
    allowed: np.ndarray,
) -> None:
    """In the problems where someone has more than one allowed link, replace (in place) the centre distance
    ``norm`` by the keypoint distance (:func:`_keypoint_distance`, in ``scale``s) and ``allowed`` accordingly
    (``base``: the IoU gate). ``shift``: the predicted shifts of the previous side (a, 1, G), or ``None``."""
    import numpy as np

    contested = np.flatnonzero(_contested(allowed))
    if not len(contested):
        return
    # The cells (row, col, problem) of the contested problems whose distance matters: only those the
    # IoU gate lets through (the others stay disallowed, and their benefit is 0 whatever the distance,
    # as long as every value is finite: else all cells, as a NaN distance would give a NaN benefit).
    cells = base[:, :, contested] if p.bounded() else np.ones((*base.shape[:2], len(contested)), bool)
    i, j, c = np.nonzero(cells)
    g = contested[c]
    cell_shift = None if shift is None else (shift[0][i, 0, g], shift[1][i, 0, g])
    kd = _keypoint_distance(p, prev[g, i], cur[g, j], cell_shift)
    kd /= scale[i, j, g]
    norm[i, j, g] = kd
    allowed[:, :, contested] = False
    allowed[i, j, g] = base[i, j, g] & (kd <= gate)


def _keypoint_distance(
    p: _Detections, prev: np.ndarray, cur: np.ndarray, shift: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """Mean distance (px) of the keypoints seen in both, from each predicted ``prev`` (M,) to ``cur`` (M,);
    ``shift``: the predicted shifts ``(sx, sy)``, (M,) each (``None``: no shift). The centre distance where
    none is shared.
    """
    import numpy as np

    kxp, kyp, kmp = p.kp.take(prev, axis=1)  # (M, 17) each, contiguous
    kxc, kyc, kmc = p.kp.take(cur, axis=1)
    dx = np.subtract(kxp, kxc, out=kxp)
    dy = np.subtract(kyp, kyc, out=kyp)
    pcx, pcy = p.cx.take(prev), p.cy.take(prev)
    if shift is not None:
        sx, sy = shift
        dx += sx[:, None]
        dy += sy[:, None]
        pcx += sx
        pcy += sy
    np.multiply(dx, dx, out=dx)
    np.multiply(dy, dy, out=dy)
    dx += dy
    np.sqrt(dx, out=dx)
    cnt = np.einsum("...k,...k->...", kmp, kmc)  # a count: exact in any order
    both = np.multiply(kmp, kmc, out=kmp)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.einsum("...k,...k->...", dx, both) / cnt
    pcx -= p.cx.take(cur)
    pcy -= p.cy.take(cur)
    centre = np.hypot(pcx, pcy, out=pcx)
    return np.where(cnt > 0, dist, centre)


def _solve(benefit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum-benefit one-to-one assignment of each (a, b, G) problem; returns (problem, row, col) of the links."""
    import numpy as np

    a, b, g_n = benefit.shape
    safe = benefit
    if _n_assignments(a, b) <= _MAX_ENUMERATED:
        rows, cols = _assignments(a, b)
        cells = rows * b + cols  # (K, n) flat (row, col) of each link
        flat = benefit.reshape(a * b, g_n)
        total = flat.take(cells[:, 0], axis=0)  # (K, G), summed in order (as .sum(axis=-1) does)
        for j in range(1, rows.shape[1]):
            total += flat.take(cells[:, j], axis=0)
        best = np.argmax(total, axis=0)
        r, c = rows[best], cols[best]  # (G, n)
        g = np.broadcast_to(np.arange(g_n)[:, None], r.shape)
        g, r, c = g.ravel(), r.ravel(), c.ravel()
    else:
        from scipy.optimize import linear_sum_assignment

        gs, rs, cs = [], [], []
        # A NaN or infinite benefit (a NaN, infinite or null box or keypoint) is no link: scipy refuses them.
        finite = np.isfinite(benefit)
        safe = benefit if finite.all() else np.where(finite, benefit, 0)
        for i in range(g_n):
            r, c = linear_sum_assignment(safe[:, :, i], maximize=True)
            gs.append(np.full(len(r), i))
            rs.append(r)
            cs.append(c)
        g, r, c = np.concatenate(gs), np.concatenate(rs), np.concatenate(cs)
    keep = safe.reshape(-1).take((r * b + c) * g_n + g) > 0
    return g[keep], r[keep], c[keep]


def _links(benefit: np.ndarray, allowed: np.ndarray, gate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_solve`'s links, without solving the problems where nobody has two allowed links (most of them).

    There the allowed links form a matching. With finite benefits and ``gate <= _EASY_GATE``, each allowed link
    has a benefit >= 0.999 (``limit - (1 - IoU) - distance``, ``distance <= gate``, ``limit = 2 + gate``) and
    every other cell 0; the enumerated totals (float32, at most 6 links) stay below 8192, where rounding is
    < 0.0005 a step (``linear_sum_assignment`` works in float64). So an assignment without one of them totals
    less than one with all of them: every optimum holds them all and keeps exactly them (nothing else is > 0).
    The other problems go to :func:`_solve`.
    """
    import numpy as np

    hard = _contested(allowed)
    if gate > _EASY_GATE:
        hard[:] = True
    elif not np.isfinite(benefit).all():  # (the usual case checked at once, as one flat array)
        hard |= ~np.isfinite(benefit).all(axis=(0, 1))
    r, c, g = np.nonzero(allowed & ~hard)
    if hard.any():
        tough = np.flatnonzero(hard)
        g2, r2, c2 = _solve(benefit[:, :, tough])
        g, r, c = np.concatenate((g, tough[g2])), np.concatenate((r, r2)), np.concatenate((c, c2))
    return g, r, c


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values, first index and count of each run of a sorted, non-empty array (``np.unique``'s)."""
    import numpy as np

    change = np.empty(len(values), dtype=bool)
    change[0] = True
    np.not_equal(values[1:], values[:-1], out=change[1:])
    first = np.flatnonzero(change)
    return values[first], first, np.diff(first, append=len(values))


def _link_pass(
    p: _Detections,
    pred: np.ndarray,
    succ: np.ndarray,
    gap: int,
    *,
    velocity: tuple[np.ndarray, np.ndarray] | None,
    min_iou: float,
    max_distance: float,
    use_keypoints: bool,
    widen_until: int = 0,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
    pool: Executor | None = None,
    blocks: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]] | None = None,
    keep_features: bool = False,
) -> list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]]:
    """Link unlinked ends of frame ``f`` to unlinked starts of frame ``f + gap + 1``, for every f at once.

    ``pred``/``succ``: the linked detection before/after each detection, -1 for none, -2 for images (updated
    in place). ``velocity``: per-detection velocities ``(vx, vy)`` (px per frame) used to predict where people
    went (``None``: nobody moves). The distance gate widens with the gap up to ``widen_until`` frames (see
    :func:`_gate`). ``candidates``: the unlinked ``(ends, starts)`` if the caller knows them; ``blocks``: their
    :func:`_problem_blocks`, if already made (then ``candidates`` is not read), each with the features a pass
    kept for it (``keep_features``: this one keeps them; a next pass over the blocks takes them out). Returns
    the blocks.
    """
    import numpy as np

    if blocks is None:
        if candidates is not None:  # kept up to date by the caller (cheaper than scanning every detection)
            ends, starts = candidates
        else:
            ends, starts = np.flatnonzero(succ == -1), np.flatnonzero(pred == -1)
        blocks = [(a, b, {} if keep_features else None) for a, b in _problem_blocks(p, ends, starts, gap)]
    gate = _gate(max_distance, gap, widen_until)

    def solve(block: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]) -> tuple[np.ndarray, np.ndarray]:
        prev_b, cur_b, cache = block
        benefit, allowed = _benefit(p, prev_b, cur_b, gap, velocity, min_iou, gate, use_keypoints, cache)
        g, r, c = _links(benefit, allowed, gate)
        return prev_b[g, r], cur_b[g, c]

    # Each detection is in one problem of a pass, and solving only reads features: the blocks can be solved in
    # threads (numpy releases the GIL in its loops) and their links applied afterwards.
    solved = list(pool.map(solve, blocks) if pool is not None and len(blocks) > 1 else map(solve, blocks))
    if not solved:
        return blocks
    linked_prev, linked_cur = (np.concatenate(side) for side in zip(*solved, strict=True))
    if gap >= BODY_CHECK_GAP:  # after a gap, a link between bodies of another size or shape is dropped
        same = _same_body(p, linked_prev, linked_cur)
        linked_prev, linked_cur = linked_prev[same], linked_cur[same]
    pred[linked_cur] = linked_prev
    succ[linked_prev] = linked_cur
    return blocks


def _gate(max_distance: float, gap: int, widen_until: int) -> float:
    """The distance gate after ``gap`` missing frames: ``max_distance`` (times :data:`GAP_GATE` after a gap),
    widened by :data:`GAP_WIDENING` of it per missing frame up to ``widen_until`` frames (``max_gap``); beyond,
    as wide as at ``widen_until``."""
    return max_distance * (GAP_GATE if gap else 1.0) * (1 + GAP_WIDENING * min(gap, widen_until))


def _problem_blocks(
    p: _Detections, ends: np.ndarray, starts: np.ndarray, gap: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The assignment problems of a pass: for each frame f with track ends (``ends``, ascending) and starts
    (``starts``, ascending) in frame ``f + gap + 1``, the ends (a,) and the starts (b,). Problems of the same
    shape are stacked, (G, a) and (G, b), in blocks of at most ``_BLOCK_CELLS`` links (so that the temporaries
    stay in the CPU cache); in order of shape, then of frame."""
    import numpy as np

    if not len(ends) or not len(starts):
        return []
    # Candidate counts per frame (gframe), and where each frame's candidates begin.
    e_frames, e_first, e_count = _runs(p.gframe[ends])
    s_frames, s_first, s_count = _runs(p.gframe[starts])
    target = e_frames + gap + 1
    pos = np.minimum(np.searchsorted(s_frames, target), len(s_frames) - 1)
    hit = s_frames[pos] == target
    ei, si = np.flatnonzero(hit), pos[hit]
    if not len(ei):
        return []
    a_all, b_all = e_count[ei], s_count[si]
    shapes = a_all * 65536 + b_all
    blocks = []
    for shape in np.unique(shapes):
        sel = shapes == shape
        a, b = int(shape // 65536), int(shape % 65536)
        prev = ends[e_first[ei[sel]][:, None] + np.arange(a)]
        cur = starts[s_first[si[sel]][:, None] + np.arange(b)]
        step = max(1, _BLOCK_CELLS // (a * b))  # the problems are independent
        blocks += [(prev[lo : lo + step], cur[lo : lo + step]) for lo in range(0, len(prev), step)]
    return blocks


def _next_gap(p: _Detections, ends: np.ndarray, starts: np.ndarray, gap: int) -> int | None:
    """The smallest gap ``>= gap`` at which some track end (``ends``) has a start (``starts``) to link to,
    i.e. a start ``gap + 1`` frames after it on the frame axis; ``None`` when there is none.

    ``ends`` and ``starts`` are ascending detection indices, so their frames (``gframe``) are sorted.
    """
    import numpy as np

    if not len(ends) or not len(starts):
        return None
    e_frames = p.gframe[ends]
    s_frames = p.gframe[starts]
    pos = np.searchsorted(s_frames, e_frames + (gap + 1), side="left")
    ok = pos < len(s_frames)
    if not ok.any():
        return None
    return int((s_frames[pos[ok]] - e_frames[ok]).min()) - 1


class _Links:
    """The links of detections, pass by pass, and what a later chunk needs of them (see :class:`_StreamTracker`).

    ``pred1``/``succ1``: pass 1 (frame to frame, no motion); ``v1x``/``v1y``: the velocities from it;
    ``pred2``/``succ2``: pass 2 (frame to frame with those velocities); ``v2x``/``v2y``: the velocities from
    it; ``pred3``/``succ3``: pass 3 (the same with those); ``vcx``/``vcy``: the velocities of pass 3's track
    ends (the cascade predicts with them); ``age``: the frame-to-frame links (pass 3) behind each detection, at
    most :data:`CONFIRMED_LINKS`; ``pred``/``succ``: pass 3 plus the gap cascade.
    Links are detection indices, -1 for none, -2 for images; a context's links to detections it no longer
    holds are -1 (predecessors: never followed that far back) or ``_GONE`` (successors: "linked").
    """

    pred1: np.ndarray
    pred2: np.ndarray
    pred3: np.ndarray
    pred: np.ndarray
    succ1: np.ndarray
    succ2: np.ndarray
    succ3: np.ndarray
    succ: np.ndarray
    v1x: np.ndarray
    v1y: np.ndarray
    v2x: np.ndarray
    v2y: np.ndarray
    vcx: np.ndarray
    vcy: np.ndarray
    age: np.ndarray
    _PREDS = ("pred1", "pred2", "pred3", "pred")
    _SUCCS = ("succ1", "succ2", "succ3", "succ")
    _PER_DET = ("v1x", "v1y", "v2x", "v2y", "vcx", "vcy", "age")
    __slots__ = _PREDS + _SUCCS + _PER_DET

    def __init__(self, **arrays: np.ndarray) -> None:
        for name in self.__slots__:
            setattr(self, name, arrays[name])

    @classmethod
    def empty(cls) -> _Links:
        import numpy as np

        i, f = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return cls(**{name: f if name in cls._PER_DET[:-1] else i for name in cls.__slots__})

    def take(self, keep: np.ndarray, n: int) -> _Links:
        """The links of detections ``keep`` (ascending) of ``n``, renumbered (links outside ``keep``: see above)."""
        import numpy as np

        new = np.full(n + 1, -1, dtype=np.int64)
        new[keep] = np.arange(len(keep))

        def kept(links: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # the links of keep, and their new index
            a = links[keep]
            return a, new[np.where((a >= 0) & (a < n), a, n)]  # -1 if gone

        def predecessors(links: np.ndarray) -> np.ndarray:  # renumbered, -1 when gone
            a, at = kept(links)
            return np.where(a >= 0, at, a)

        def successors(links: np.ndarray) -> np.ndarray:  # only "linked or not" matters later
            a, at = kept(links)
            return np.where(a >= 0, np.where(at >= 0, at, _GONE), a)

        arrays = {name: predecessors(getattr(self, name)) for name in self._PREDS}
        arrays.update({name: successors(getattr(self, name)) for name in self._SUCCS})
        arrays.update({name: getattr(self, name)[keep] for name in self._PER_DET})
        return _Links(**arrays)


#: A successor link to a detection a context no longer holds ("linked": such an end is not a candidate).
_GONE = 1 << 62


def _link(
    p: _Detections,
    ctx: _Links,
    max_gap: int,
    min_iou: float,
    max_distance: float,
    pool: Executor | None = None,
) -> _Links:
    """Link the detections of ``p`` whose frames are new; the first ``len(ctx.pred)`` detections are a
    context of earlier frames linked by earlier calls (their links in ``ctx``). With an empty context this is
    the whole-table tracker; with one it makes exactly the links the whole-table tracker makes for these
    frames, as every problem it solves has a new frame as its later side and those are solved in the same
    order as the whole-table tracker solves them (see docs/tracking.md, "Streaming")."""
    import numpy as np

    c = len(ctx.pred)
    video = np.flatnonzero(p.is_video)
    new_video = video[video >= c]
    opts: dict[str, Any] = {"min_iou": min_iou, "max_distance": max_distance, "pool": pool}
    arrays = _frame_to_frame(p, ctx, new_video, opts)
    pred3, succ3 = arrays["pred3"], arrays["succ3"]
    # 4. the cascade over gaps: people missing for 1, 2, ... frames, most recent first, predicted with the
    #    velocity at the end of their frame-to-frame track. Gaps at which no unlinked track end has an
    #    unlinked start to reach are skipped (their pass would link nothing), and the cascade stops when no
    #    such gap is left: a huge max_gap ("never drop an id") costs no more than the video's frame span.
    #    Ages where they are read: track ends (the cascade) and the last frames (a next chunk's context).
    last = p.frame[new_video].max(initial=0) - (_CONTEXT_FRAMES - 1)
    age = _ages(pred3, ctx.age, new_video[(succ3[new_video] == -1) | (p.frame[new_video] >= last)])
    pred = pred3.copy()
    succ = np.concatenate((np.where(succ3[:c] >= 0, succ3[:c], ctx.succ), succ3[c:]))
    zeros = np.zeros(p.n - c, dtype=np.float32)
    vcx, vcy = np.concatenate((ctx.vcx, zeros)), np.concatenate((ctx.vcy, zeros))
    new_ends = new_video[succ3[new_video] == -1]
    vcx[new_ends], vcy[new_ends] = _velocity(p, pred3, new_ends)
    if p.max_gap:  # (each video's re-link window, at most its frame span)
        _cascade(p, pred, succ, (vcx, vcy), (video, new_video, age), opts, max_gap)
    return _Links(**arrays, pred=pred, succ=succ, vcx=vcx, vcy=vcy, age=age)


def _frame_to_frame(p: _Detections, ctx: _Links, new_video: np.ndarray, opts: dict[str, Any]) -> dict[str, Any]:
    """Passes 1-3 of :func:`_link` (consecutive frames): their links and the velocities from passes 1 and 2,
    by :class:`_Links` field name."""
    import numpy as np

    n, c = p.n, len(ctx.pred)
    video = np.flatnonzero(p.is_video)
    init = np.where(p.is_video[c:], -1, -2).astype(np.int64)
    zeros = np.zeros(n - c, dtype=np.float32)
    # 1. consecutive frames, without motion, for the velocities.
    pred1, succ1 = np.concatenate((ctx.pred1, init)), np.concatenate((ctx.succ1, init))
    pred2, succ2 = np.concatenate((ctx.pred2, init)), np.concatenate((ctx.succ2, init))
    cands1, cands = (np.flatnonzero(succ1 == -1), new_video), (np.flatnonzero(succ2 == -1), new_video)
    same = np.array_equal(cands[0], cands1[0])  # (always, without a context): pass 2 solves pass 1's problems
    opts1 = {**opts, "candidates": cands1, "keep_features": same}
    blocks = _link_pass(p, pred1, succ1, 0, velocity=None, use_keypoints=True, **opts1)
    v1x, v1y = np.concatenate((ctx.v1x, zeros)), np.concatenate((ctx.v1y, zeros))
    anc1 = _ancestors(pred1, new_video)
    v1x[new_video], v1y[new_video] = _velocity(p, pred1, new_video, anc1)
    # 2. again, predicting with them; 3. once more with the velocities of those links (a crossing that pass 1
    #    swapped gave wrong velocities just after it).
    opts2 = {**opts, "blocks": blocks if same else None}  # (with the features pass 1 gathered)
    _link_pass(p, pred2, succ2, 0, velocity=(v1x, v1y), use_keypoints=True, candidates=cands, **opts2)
    # A velocity depends only on the detection and its ancestor: recomputed where pass 2 changed the ancestor.
    v2x, v2y = np.concatenate((ctx.v2x, v1x[c:])), np.concatenate((ctx.v2y, v1y[c:]))
    anc2 = _ancestors(pred2, new_video)
    moved = anc2 != anc1
    v2x[new_video[moved]], v2y[new_video[moved]] = _velocity(p, pred2, new_video[moved], anc2[moved])
    pred3, succ3 = np.concatenate((ctx.pred3, pred2[c:])), np.concatenate((ctx.succ3, succ2[c:]))
    from_ctx = np.flatnonzero((pred2[c:] >= 0) & (pred2[c:] < c)) + c  # pass 2's links from the context
    succ3[pred2[from_ctx]] = from_ctx
    _repass(p, (pred3, succ3), ((v1x, v1y), (v2x, v2y)), (video, new_video), opts)
    return {
        "pred1": pred1,
        "succ1": succ1,
        "v1x": v1x,
        "v1y": v1y,
        "pred2": pred2,
        "succ2": succ2,
        "v2x": v2x,
        "v2y": v2y,
        "pred3": pred3,
        "succ3": succ3,
    }


def _repass(
    p: _Detections,
    links: tuple[np.ndarray, np.ndarray],
    velocities: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    dets: tuple[np.ndarray, np.ndarray],
    opts: dict[str, Any],
) -> None:
    """Pass 3 (see :func:`_link`), in place on ``links`` (a copy of pass 2's): the frame-to-frame pass again
    with the new velocities, solved only for the frame pairs where some earlier-frame velocity changed (elsewhere
    the problem, and so its solution, is pass 2's). ``dets``: the video detections and the new ones."""
    import numpy as np

    pred, succ = links
    (v1x, v1y), (v2x, v2y) = velocities
    video, new_video = dets
    changed = video[(v1x[video] != v2x[video]) | (v1y[video] != v2y[video])]
    frames = np.unique(p.gframe[changed])
    frames = frames[np.isin(frames + 1, p.gframe[new_video])]  # problems whose later frame is new
    if not len(frames):
        return
    ends = video[np.isin(p.gframe[video], frames)]  # every detection of those frames, as a fresh pass has
    starts = new_video[np.isin(p.gframe[new_video], frames + 1)]
    linked = ends[succ[ends] >= 0]  # (pass 2 links only to the next frame: into starts)
    pred[succ[linked]] = -1
    succ[linked] = -1
    opts = {**opts, "candidates": (ends, starts)}
    _link_pass(p, pred, succ, 0, velocity=(v2x, v2y), use_keypoints=True, **opts)


def _cascade(
    p: _Detections,
    pred: np.ndarray,
    succ: np.ndarray,
    velocity: tuple[np.ndarray, np.ndarray],
    dets: tuple[np.ndarray, np.ndarray, np.ndarray],
    opts: dict[str, Any],
    max_gap: int,
) -> None:
    """The gap cascade (see :func:`_link`): link unlinked track ends to unlinked starts ``gap + 1`` frames
    later for gap = 1, 2, ... (each video's re-link window), in place. ``dets``: the video detections, the new
    ones, and the ``age`` of each detection (see :class:`_Links`): beyond ``max_gap`` frames, only ends of
    tracks of at least :data:`CONFIRMED_LINKS` links are re-linked (a person seen a moment is not waited for)."""
    video, new_video, age = dets
    ends = video[succ[video] == -1]  # only track ends are linked across gaps
    starts = new_video[pred[new_video] == -1]
    gap = _next_gap(p, ends, starts, 1)
    while gap is not None and gap <= p.max_gap:
        if gap > max_gap and not (age[ends] >= CONFIRMED_LINKS).all():  # from here on, confirmed tracks only
            ends = ends[age[ends] >= CONFIRMED_LINKS]
            gap = _next_gap(p, ends, starts, gap)
            continue
        opts["candidates"] = (ends, starts)
        _link_pass(p, pred, succ, gap, velocity=velocity, use_keypoints=False, widen_until=max_gap, **opts)
        # The still unlinked (ends whose re-link window is over are done).
        ends, starts = ends[(succ[ends] == -1) & (p.window[ends] > gap)], starts[pred[starts] == -1]
        gap = _next_gap(p, ends, starts, gap + 1)


def _ages(pred: np.ndarray, ctx_age: np.ndarray, dets: np.ndarray) -> np.ndarray:
    """Per detection, the links behind it along ``pred`` (at most :data:`CONFIRMED_LINKS`), computed for
    ``dets`` (new detections; 0 for the others). The first ``len(ctx_age)`` detections are a context whose ages
    are known: a walk that reaches one adds its age."""
    import numpy as np

    c = len(ctx_age)
    age = np.zeros(len(pred), dtype=np.int64)
    age[:c] = ctx_age
    walked = np.zeros(len(dets), dtype=np.int64)
    at = dets.copy()
    for _ in range(CONFIRMED_LINKS):
        back = pred[at]
        step = (back >= 0) & (at >= c)  # (a context detection's age is known: the walk stops there)
        walked += step
        at = np.where(step, back, at)
    from_ctx = at < c
    walked[from_ctx] += ctx_age[at[from_ctx]]
    age[dets] = np.minimum(walked, CONFIRMED_LINKS)
    return age


def _roots(before: np.ndarray) -> np.ndarray:
    """Each detection's first along its links, by pointer jumping (``before``: the detection before each on
    its track, itself for a first). Checked for convergence at the track ends only: once the last detection
    of a track points at its first, every detection of the track does."""
    import numpy as np

    followed = np.zeros(len(before), dtype=bool)
    followed[before[before != np.arange(len(before))]] = True  # (a first points at itself)
    ends = np.flatnonzero(~followed)
    root = before
    while True:
        nxt = root[root]
        if np.array_equal(nxt[ends], root[ends]):
            return nxt
        root = nxt


def _track_ids(
    p: _Detections, max_gap: int, min_iou: float, max_distance: float, pool: Executor | None = None
) -> np.ndarray:
    """Track id per detection (int64, numbered from 0 per video by first appearance; -1 for images)."""
    import numpy as np

    n = p.n
    video = np.flatnonzero(p.is_video)
    pred = _link(p, _Links.empty(), max_gap, min_iou, max_distance, pool).pred
    # Tracks are the chains of links: find each detection's first detection by pointer jumping.
    all_dets = np.arange(n)
    root = _roots(np.where(pred < 0, all_dets, pred))
    is_root = root == all_dets
    rank = np.cumsum(is_root) - 1
    track = rank[root]
    # Number from 0 within each video: subtract the rank of the video's first track.
    out = np.full(n, -1, dtype=np.int64)
    if len(video):
        gcode = p.gcode[video]
        _, first = np.unique(gcode, return_index=True)
        first_rank = np.zeros(int(gcode.max()) + 1, dtype=np.int64)
        first_rank[gcode[first]] = track[video][first]
        out[video] = track[video] - first_rank[gcode]
    return out


# --------------------------------------------------------------------------------------------- public


def assign_tracks(
    table: pa.Table,
    *,
    max_gap: int = 10,
    min_iou: float = 0.1,
    max_distance: float | None = None,
    max_occlusion_s: float = DEFAULT_MAX_OCCLUSION_S,
) -> pa.Table:
    """Add a stable ``track_id`` column (int32, right after ``person_idx``) to a keypoints table.

    People are linked from frame to frame by an optimal assignment on box overlap and keypoint distance (with
    a constant-velocity prediction); a person missing for up to ``max_gap`` frames, or hidden for up to
    ``max_occlusion_s`` seconds, who comes back near where they were heading or last seen, with the same body
    size and proportions, keeps their id; everyone else gets a new id. Ids are numbered from 0 per video (per
    ``(source, job_id)``) in order of first appearance. Image rows (``time_s`` null) get a null ``track_id``.

    :param table: a keypoints table (:func:`~airflow_provider_kakaopose.tables.keypoints_table`), possibly
        holding several videos and images. Rows keep their order; an existing ``track_id`` column is replaced.
    :param max_gap: frames a person may be missing and still be re-linked with a search area that grows with
        each missing frame (0: none). Any value above the video's frame span acts, and costs, like the frame
        span (``10**9``: never drop an id).
    :param min_iou: the least overlap between a person's predicted box and a box of the next frame for a
        frame-to-frame link.
    :param max_distance: the largest mean keypoint distance for a link, in box scales
        (``sqrt(bbox_w * bbox_h)``); ``None`` means :data:`DEFAULT_MAX_DISTANCE` (1.0). After a gap of
        ``g`` frames the limit is ``max_distance * 0.5 * (1 + 0.1 * min(g, max_gap))``.
    :param max_occlusion_s: seconds (at the video's frame rate, ``frame_num / time_s``) a person followed for
        at least 10 frames may stay hidden and still get their id back, when longer than ``max_gap`` frames
        (0: only ``max_gap`` counts, the behaviour before this parameter).
    :return: the table with the column added; schema metadata kept, plus ``kakaopose:tracking`` (the
        parameters, JSON).
    """
    import numpy as np
    import pyarrow as pa

    max_gap, min_iou, distance, occlusion = _params(max_gap, min_iou, max_distance, max_occlusion_s)
    _check_columns(table.column_names)
    metadata = dict(table.schema.metadata or {})
    if TRACK_COLUMN in table.column_names:
        table = table.drop_columns([TRACK_COLUMN])
    # Tables of at least _THREADED_ROWS rows (none by default): two threads read the keypoints and solve the
    # link passes' blocks (numpy's loops run without the GIL).
    threads = min(2, os.cpu_count() or 1) if table.num_rows >= _THREADED_ROWS else 1
    with ThreadPoolExecutor(threads) if threads > 1 else nullcontext() as pool:
        dets = _Detections(table, max_gap, pool, occlusion)
        per_det = _track_ids(dets, int(max_gap), float(min_iou), distance, pool) if dets.n else np.zeros(0, np.int64)
    # int32 and the null mask per detection first, then spread to the rows (fewer large temporaries).
    null = per_det < 0
    values = dets.row_values(per_det.astype(np.int32))
    mask = dets.row_values(null) if null.any() else None
    column = pa.array(values, type=pa.int32(), mask=mask)
    at = table.column_names.index("person_idx") + 1
    table = table.add_column(at, pa.field(TRACK_COLUMN, pa.int32()), column)
    metadata[_TRACKING_KEY] = json.dumps(_params_json(max_gap, min_iou, distance, occlusion)).encode()
    return table.replace_schema_metadata(metadata)


# --------------------------------------------------------------------------------------------- streaming

#: Rows the streaming tracker gathers before it links them (then its work per chunk is that of the whole-table
#: tracker on a table of this size; its memory, these rows and their features).
STREAM_CHUNK_ROWS = 1 << 18
#: Frames of a video's last linked chunk kept whole for the next one: links between consecutive frames and the
#: velocities (3 links back) never reach further.
_CONTEXT_FRAMES = VELOCITY_STEPS + 1


def _params(
    max_gap: int, min_iou: float, max_distance: float | None, max_occlusion_s: float
) -> tuple[int, float, float, float]:
    if int(max_gap) != max_gap or max_gap < 0:
        raise ValueError(f"max_gap must be a non-negative integer, got {max_gap!r}")
    if not 0 <= min_iou <= 1:
        raise ValueError(f"min_iou must be between 0 and 1, got {min_iou!r}")
    distance = DEFAULT_MAX_DISTANCE if max_distance is None else float(max_distance)
    if not distance > 0:
        raise ValueError(f"max_distance must be positive, got {max_distance!r}")
    if not max_occlusion_s >= 0:
        raise ValueError(f"max_occlusion_s must be a non-negative number of seconds, got {max_occlusion_s!r}")
    return int(max_gap), float(min_iou), distance, float(max_occlusion_s)


def _params_json(max_gap: int, min_iou: float, distance: float, occlusion: float) -> dict[str, Any]:
    """The parameters as recorded in the ``kakaopose:tracking`` metadata."""
    return {
        "max_gap": max_gap,
        "min_iou": min_iou,
        "max_distance": distance,
        "max_occlusion_s": occlusion,
        "method": "cascade",
    }


def _check_columns(names: list[str]) -> None:
    needed = ("source", "job_id", "frame_num", "time_s", "person_idx", "keypoint_id", "x", "y", *_BOX)
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(f"not a keypoints table: no column(s) {', '.join(missing)}")


def _tracked_schema(schema: pa.Schema, params: dict[str, Any]) -> pa.Schema:
    import pyarrow as pa

    metadata = dict(schema.metadata or {})
    metadata[_TRACKING_KEY] = json.dumps(params).encode()
    if TRACK_COLUMN in schema.names:
        schema = schema.remove(schema.get_field_index(TRACK_COLUMN))
    at = schema.get_field_index("person_idx") + 1
    return schema.insert(at, pa.field(TRACK_COLUMN, pa.int32())).with_metadata(metadata)


class _StreamTracker:
    """The state of :func:`assign_tracks_reader` between chunks: the rows of the detections a later frame can
    still be linked to (the last frames, and the unlinked track ends still within their re-link window), their
    links and ids, and the rows waiting to be linked."""

    def __init__(self, schema: pa.Schema, params: tuple[int, float, float, float], chunk_rows: int) -> None:
        self.max_gap, self.min_iou, self.distance, self.occlusion = params
        self.chunk_rows = max(int(chunk_rows), 1)
        self.in_schema = schema.remove(schema.get_field_index(TRACK_COLUMN)) if TRACK_COLUMN in schema.names else schema
        self.out_schema = _tracked_schema(schema, _params_json(*params))
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.group: Any = None
        self.seen: set[Any] = set()
        self.known: dict[Any, int] = {}
        self.pool: ThreadPoolExecutor | None = None
        if min(2, os.cpu_count() or 1) > 1 and self.chunk_rows >= _THREADED_ROWS:
            self.pool = ThreadPoolExecutor(2)
        self._reset()

    def _reset(self) -> None:
        import numpy as np

        self.ctx_table: pa.Table | None = None
        self.ctx = _Links.empty()
        self.ctx_ids = np.zeros(0, dtype=np.int64)
        self.next_id = 0
        self.last_frame: int | None = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def push(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        if TRACK_COLUMN in batch.schema.names:
            batch = batch.drop_columns([TRACK_COLUMN])
        for key, part in self._group_runs(batch):
            if key != self.group:
                yield from self._link_pending(final=True)
                if key in self.seen:
                    raise ValueError(
                        "assign_tracks_reader needs each video's rows together (a video's rows came back after "
                        "another's); use assign_tracks on the whole table"
                    )
                self.seen.add(key)
                self.group = key
                self._reset()
            self.pending.append(part)
            self.pending_rows += part.num_rows
        if self.pending_rows >= self.chunk_rows:
            yield from self._link_pending(final=False)

    def finish(self) -> Iterator[pa.RecordBatch]:
        yield from self._link_pending(final=True)

    def _group_runs(self, batch: pa.RecordBatch) -> list[tuple[Any, pa.RecordBatch]]:
        """The batch cut where its video (``source``, ``job_id``) changes, with each part's key."""
        import numpy as np
        import pyarrow as pa

        n = batch.num_rows
        if not n:
            return []
        codes = []
        for name in ("source", "job_id"):
            col = batch.column(name)
            codes.append(value_codes(pa.chunked_array([col], type=col.type), self.known))
        key = codes[0] * (1 << 31) + codes[1]
        cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
        bounds = [0, *cuts.tolist(), n]
        return [(int(key[a]), batch.slice(a, b - a)) for a, b in itertools.pairwise(bounds)]

    def _link_pending(self, *, final: bool) -> Iterator[pa.RecordBatch]:
        import numpy as np
        import pyarrow as pa

        if not self.pending_rows:
            return
        table = pa.Table.from_batches(self.pending, schema=self.in_schema)
        frames = np.asarray(table.column("frame_num").to_numpy(), dtype=np.int64)
        if (np.diff(frames) < 0).any() or (self.last_frame is not None and frames[0] <= self.last_frame):
            raise ValueError(
                "assign_tracks_reader needs each video's rows in frame order (as keypoints_reader gives them); "
                "use assign_tracks on the whole table"
            )
        # The last frame may go on in the next batch: it waits, unless this is the video's end.
        cut = len(frames) if final else int(np.searchsorted(frames, frames[-1], side="left"))
        if cut == 0:
            return
        chunk, rest = table.slice(0, cut), table.slice(cut)
        self.pending, self.pending_rows = rest.to_batches(), rest.num_rows
        self.last_frame = int(frames[cut - 1])
        yield from self._link_chunk(chunk).to_batches()

    def _link_chunk(self, chunk: pa.Table) -> pa.Table:
        import numpy as np
        import pyarrow as pa

        c = len(self.ctx.pred)
        combined = chunk if self.ctx_table is None else pa.concat_tables([self.ctx_table, chunk])
        p = _Detections(combined, self.max_gap, self.pool, self.occlusion)
        if not p.canonical or p.run_to_det is not None:
            raise ValueError(
                "assign_tracks_reader needs keypoints_reader's layout (17 rows per person, in person_idx order "
                "within a frame); use assign_tracks on the whole table"
            )
        links = _link(p, self.ctx, self.max_gap, self.min_iou, self.distance, self.pool)
        n = p.n
        # Ids: a new detection takes its predecessor's id; a new track start the next id (first appearance).
        every = np.arange(n)
        root = _roots(np.where((links.pred < 0) | (every < c), every, links.pred))
        ids = np.full(n, -1, dtype=np.int64)
        ids[:c] = self.ctx_ids
        starts = np.flatnonzero((every >= c) & (links.pred == -1))
        ids[starts] = self.next_id + np.arange(len(starts))
        self.next_id += len(starts)
        new = every[c:]
        ids[new] = np.where(p.is_video[new], ids[root[new]], -1)
        # What the next chunk needs: the last frames whole, and the unlinked ends it may still link to.
        last = int(p.frame.max()) if n else 0
        keep = np.flatnonzero(
            p.is_video
            & ((p.frame >= last - (_CONTEXT_FRAMES - 1)) | ((links.succ == -1) & (p.frame >= last - p.window)))
        )
        rows = (keep[:, None] * _N_KP + np.arange(_N_KP)).ravel()
        self.ctx_table = combined.take(pa.array(rows, type=pa.int64()))
        self.ctx = links.take(keep, n)
        self.ctx_ids = ids[keep]
        per_det = ids[c:]
        values = np.broadcast_to(per_det.astype(np.int32)[:, None], (len(per_det), _N_KP)).reshape(-1)
        null = per_det < 0
        mask = np.repeat(null, _N_KP) if null.any() else None
        column = pa.array(values, type=pa.int32(), mask=mask)
        at = chunk.column_names.index("person_idx") + 1
        out = chunk.add_column(at, pa.field(TRACK_COLUMN, pa.int32()), column)
        return out.replace_schema_metadata(self.out_schema.metadata)


def assign_tracks_reader(
    data: pa.RecordBatchReader | pa.Table | Iterable[pa.RecordBatch],
    *,
    max_gap: int = 10,
    min_iou: float = 0.1,
    max_distance: float | None = None,
    max_occlusion_s: float = DEFAULT_MAX_OCCLUSION_S,
    chunk_rows: int = STREAM_CHUNK_ROWS,
) -> pa.RecordBatchReader:
    """:func:`assign_tracks` on a stream: the same ``track_id``s, batch by batch, without the whole table.

    :param data: a :func:`~airflow_provider_kakaopose.tables.keypoints_reader` (or any record batches in its
        layout: each video's rows together and in frame order, 17 rows per person in ``person_idx`` order),
        a table, or an iterable of record batches (its first batch gives the schema).
    :param max_gap, min_iou, max_distance, max_occlusion_s: as for :func:`assign_tracks`.
    :param chunk_rows: rows gathered before they are linked (memory: a few hundred bytes per person-frame of
        a chunk, plus the rows themselves).
    :return: a reader of the input's rows with ``track_id`` (same schema and metadata as
        :func:`assign_tracks`). A frame's ids are final once the frame is complete (the next frame's first row
        arrived, or the stream ended), so rows come out at most one chunk behind the input; memory does not
        grow with the video's length. Raises ``ValueError`` while iterating when the input is not in that
        layout.
    """
    import pyarrow as pa

    params = _params(max_gap, min_iou, max_distance, max_occlusion_s)
    if isinstance(data, pa.Table):
        schema, batches = data.schema, iter(data.to_batches())
    elif isinstance(data, pa.RecordBatchReader):
        schema, batches = data.schema, iter(data)
    else:
        batches = iter(data)
        first = next(batches, None)
        if first is None:
            raise ValueError("assign_tracks_reader needs a schema: give a reader or a table for an empty stream")
        schema = first.schema
        batches = itertools.chain([first], batches)
    _check_columns(schema.names)
    tracker = _StreamTracker(schema, params, chunk_rows)

    def run() -> Iterator[pa.RecordBatch]:
        try:
            for batch in batches:
                yield from tracker.push(batch)
            yield from tracker.finish()
        finally:
            tracker.close()

    return pa.RecordBatchReader.from_batches(tracker.out_schema, run())
