"""The fast path: a raw video job body flattened by a vectorised structural scan and pyarrow's JSON reader.

See docs/tables.md, "How the fast path works".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose.coco import frame_runs
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseResponseError,
)
from airflow_provider_kakaopose.tables.schema import (
    _N_KP,
    _bad,
    _build_batch,
    _in_f32,
    _Meta,
    _video_meta,
    _where,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

# Bytes of the raw body parsed per piece on the fast path (bounds the memory of the intermediate copies).
_PIECE_BYTES = 16 << 20
_SCAN_CHUNK = 16 << 20

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
