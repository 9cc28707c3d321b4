"""The fast path: a raw video job body flattened by a vectorised structural scan and pyarrow's JSON reader.

See docs/tables.md, "How the fast path works".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose._jsonmarks import (
    BACKSLASH,
    LBRACE,
    LBRACKET,
    QUOTE,
    RBRACE,
    RBRACKET,
    WS,
    MarkFinder,
)
from airflow_provider_kakaopose.coco import frame_runs
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseResponseError,
)
from airflow_provider_kakaopose.tables.schema import (
    N_KEYPOINTS,
    TableMeta,
    build_batch,
    in_float32_range,
    shape_error,
    video_meta,
    where_in_answer,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

# Tunables (module constants; the tests lower them to exercise boundaries with small bodies).
#: Bytes of the raw body parsed per piece on the fast path (bounds the memory of the intermediate copies).
PIECE_BYTES = 4 << 20
#: Bytes of the body scanned at a time for the annotations' boundaries.
SCAN_CHUNK = 16 << 20

# --------------------------------------------------------------------------------------------- raw JSON fast path


class FastPathGaveUp(Exception):
    """The fast path cannot prove it reads this body right: use the json module instead."""


COMMA = 0x2C
#: A raw body: bytes in memory, or a file read in pieces (``body.FileBody``: len, indexing, slicing, piece).
Body = Any


def _skip_ws(body: Body, pos: int) -> int:
    n = len(body)
    while pos < n and body[pos] in WS:
        pos += 1
    return pos


def _decode_value(body: Body, pos: int) -> tuple[Any, int]:
    """Parse one JSON value at byte ``pos`` with the json module; return it and the byte just after it."""
    decoder = json.JSONDecoder()
    window = 1 << 12
    while True:
        raw = body[pos : pos + window]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(raw) - 4 or pos + window >= len(body):
                raise FastPathGaveUp from e
            text = raw[: e.start].decode("utf-8")
        try:
            value, end = decoder.raw_decode(text)
        except json.JSONDecodeError as e:
            if pos + window >= len(body):
                raise FastPathGaveUp from e
            window *= 4
            continue
        if end == len(text) and pos + window < len(body):
            window *= 4  # a number may continue past the window
            continue
        return value, pos + len(text[:end].encode("utf-8"))


class _ArrayScan:
    """The element boundaries of a JSON array of objects, found chunk by chunk as the bytes go by.

    Fed the bytes after the array's ``[`` (at ``open_``) in order, in chunks of any size (a slice of a body in
    memory, a block of a spooled file, a chunk as it arrives from the socket). Vectorised over the positions of
    ``" \\ { } [ ]`` only: strings are tracked by quote parity, nesting by a cumulative sum, so a backslash (an
    escape) anywhere in the array, an element that is not an object, or anything but one comma and whitespace
    between elements raises :class:`FastPathGaveUp`. Keeps three int64 per element (start, end, separating comma).
    """

    def __init__(self, open_: int) -> None:
        self.open = open_
        self.pos = open_ + 1  # absolute position of the next byte to be fed
        self.close: int | None = None  # position of the array's "]" once seen
        self._depth = 0
        self._in_string = 0
        self._starts: list[np.ndarray] = []
        self._ends: list[np.ndarray] = []
        self._commas: list[np.ndarray] = []
        self._count = 0  # elements opened so far
        # The bytes after the last closed element (or after "[") not yet checked, when a chunk ended between
        # elements: the separator then spans chunks.
        self._gap = bytearray()
        self._gap_start = self.pos
        self._marks = MarkFinder()

    def feed(self, chunk: bytes | bytearray | memoryview) -> bool:
        """Scan the next chunk; ``True`` once the array's ``]`` was seen (later bytes are ignored)."""
        import numpy as np

        if self.close is not None:
            return True
        data = chunk if isinstance(chunk, bytes | bytearray) else bytes(chunk)
        if not data:
            return False
        base = self.pos
        self.pos += len(data)
        arr = np.frombuffer(data, np.uint8)
        idx, chars = self._marks.find(data)
        is_quote = chars == QUOTE
        parity = (np.cumsum(is_quote, dtype=np.int64) + self._in_string) & 1
        backslashes = idx[chars == BACKSLASH]
        outside = (parity == 0) & ~is_quote & (chars != BACKSLASH)
        brackets = chars[outside]
        where = idx[outside]
        step = np.where((brackets == LBRACE) | (brackets == LBRACKET), 1, -1).astype(np.int64)
        level = np.cumsum(step) + self._depth
        below = np.flatnonzero(level < 0)
        close = int(where[below[0]]) if len(below) else None
        if len(backslashes) and (close is None or backslashes[0] < close):
            raise FastPathGaveUp("a backslash (escape) inside the annotations")
        if close is not None:
            cut = int(below[0])
            step, level, where, brackets = step[:cut], level[:cut], where[:cut], brackets[:cut]
        opening = (step == 1) & (level == 1)
        starts = where[opening]
        ends = where[(step == -1) & (level == 0)]
        if (brackets[opening] != LBRACE).any():
            raise FastPathGaveUp("an annotation that is not an object")
        commas = self._separators(data, arr, starts, ends, close)
        self._count += len(starts)
        if len(level):
            self._depth = int(level[-1])
        if len(parity):
            self._in_string = int(parity[-1])
        self._starts.append(starts + base)
        self._ends.append(ends + base)
        self._commas.append(commas + base)
        if close is not None:
            self.close = base + close
            return True
        # Between elements at the end of the chunk: keep what follows the last one for the next chunk.
        if self._depth == 0:
            tail = int(ends[-1]) + 1 if len(ends) else (0 if not len(starts) else len(data))
            if len(ends) or len(starts):
                self._gap = bytearray(data[tail:])
                self._gap_start = base + tail
            else:
                self._gap += data
            if len(self._gap) > 1 << 20:
                raise FastPathGaveUp("more than 1 MB between two annotations")
        return False

    def _separators(
        self, data: bytes | bytearray, arr: np.ndarray, starts: np.ndarray, ends: np.ndarray, close: int | None
    ) -> np.ndarray:
        """Check what is between the elements of a chunk; return the comma before each start (chunk positions,
        -1 for the array's first element). Between the last element and the ``]`` only whitespace may be."""
        import numpy as np

        commas = np.full(len(starts), -1, dtype=np.int64)
        prev = np.searchsorted(ends, starts) - 1  # the end before each start in this chunk, -1: none
        if len(starts) and prev[0] < 0:  # the first start's separator began in an earlier chunk (or at "[")
            between = bytes(self._gap) + data[: int(starts[0])]
            if self._count == 0:
                if between.strip(WS):
                    raise FastPathGaveUp("something before the first annotation")
            else:
                if between.strip(WS) != b",":
                    raise FastPathGaveUp("not one comma between two annotations")
                commas[0] = self._gap_start + between.index(b",") - (self.pos - len(data))
        inner = np.flatnonzero(prev >= 0)
        if len(inner):
            after = ends[prev[inner]] + 1
            nxt = starts[inner]
            gap = nxt - after
            # Common formattings: the comma right after the element, then only whitespace up to the next one.
            ok = arr[np.minimum(after, len(arr) - 1)] == COMMA
            for k in range(1, int(gap.max(initial=1))):
                pending = ok & (gap > k)
                if not pending.any():
                    break
                c = arr[np.where(pending, after + k, 0)]
                ok &= ~pending | (c == 0x20) | (c == 0x0A) | (c == 0x0D) | (c == 0x09)
            found = after.copy()
            for i in np.flatnonzero(~ok):  # e.g. whitespace before the comma: check those one by one
                a, b = int(after[i]), int(nxt[i])
                between = bytes(data[a:b])
                if between.strip(WS) != b",":
                    raise FastPathGaveUp("not one comma between two annotations")
                found[i] = a + between.index(b",")
            commas[inner] = found
        if close is not None:  # only whitespace after the last element
            if len(ends) and (not len(starts) or ends[-1] > starts[-1]):
                rest = data[int(ends[-1]) + 1 : close]
            elif not len(starts):
                rest = bytes(self._gap) + data[:close]
            else:  # pragma: no cover - an element opened and not closed before "]" is below level 0
                raise FastPathGaveUp("unbalanced annotations")
            if rest.strip(WS):
                raise FastPathGaveUp("something after the last annotation")
        return commas

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, commas)``: each element's first and last byte, and the comma before each element
        after the first (``len(starts) - 1`` of them). :class:`FastPathGaveUp` if the array is not closed."""
        import numpy as np

        if self.close is None:
            raise FastPathGaveUp("unterminated annotations array")
        starts = np.concatenate(self._starts) if self._starts else np.empty(0, np.int64)
        ends = np.concatenate(self._ends) if self._ends else np.empty(0, np.int64)
        commas = np.concatenate(self._commas) if self._commas else np.empty(0, np.int64)
        if len(starts) != len(ends):  # pragma: no cover - the close is only found at level 0
            raise FastPathGaveUp("unbalanced annotations")
        return starts, ends, commas[1:]


def _scan_array(body: Body, open_: int) -> _ArrayScan:
    """Scan the array whose ``[`` is at ``open_`` in pieces of ``SCAN_CHUNK`` bytes."""
    scan = _ArrayScan(open_)
    pos, n = open_ + 1, len(body)
    while pos < n:
        if scan.feed(body[pos : pos + SCAN_CHUNK]):
            return scan
        pos += SCAN_CHUNK
    raise FastPathGaveUp("unterminated annotations array")


#: The usual start of a job body: the annotations first (the service's order). A spool can then scan them
#: while they arrive.
_LEADING_ANNOTATIONS = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"annotations"[ \t\r\n]*:[ \t\r\n]*\[')


class Prescan:
    """Scans a body's annotations while the body is written chunk by chunk (when they come first)."""

    HEAD = 256

    def __init__(self) -> None:
        self.scan: _ArrayScan | None = None
        self._head: bytearray | None = bytearray()  # the first bytes, until the layout is known
        self.failed = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.failed:
            return
        if self._head is not None:
            self._head += chunk
            if len(self._head) < self.HEAD:
                return
            self._start()
            return
        if self.scan is not None and self.scan.close is None:
            try:
                self.scan.feed(chunk)
            except FastPathGaveUp:
                self.failed, self.scan = True, None

    def _start(self) -> None:
        head = self._head if self._head is not None else bytearray()
        self._head = None
        m = _LEADING_ANNOTATIONS.match(head)
        if m is None:
            self.failed = True
            return
        self.scan = _ArrayScan(m.end() - 1)
        try:
            self.scan.feed(bytes(head[m.end() :]))
        except FastPathGaveUp:
            self.failed, self.scan = True, None

    def finish(self) -> _ArrayScan | None:
        """The scan of the annotations, if they came first and the scan could read them."""
        if self._head is not None:
            self._start()
        return None if self.failed or self.scan is None or self.scan.close is None else self.scan


def fast_video(
    body: Body, source: str | None, prescan: _ArrayScan | None = None
) -> tuple[TableMeta, Iterator[pa.RecordBatch]]:
    """Read a video job answer from raw bytes (in memory or a :class:`FileBody`); :class:`FastPathGaveUp` if unsure.

    ``prescan``: the annotations' scan done while the body was spooled (used if it is that array's).
    """
    pos = _skip_ws(body, 0)
    if pos >= len(body) or body[pos] != 0x7B:  # {
        raise FastPathGaveUp
    pos = _skip_ws(body, pos + 1)
    top: dict[str, Any] = {}
    array: _ArrayScan | None = None
    if body[pos : pos + 1] != b"}":
        while True:
            key, pos = _decode_value(body, pos)
            if not isinstance(key, str) or key in top:
                raise FastPathGaveUp
            pos = _skip_ws(body, pos)
            if body[pos : pos + 1] != b":":
                raise FastPathGaveUp
            pos = _skip_ws(body, pos + 1)
            if key == "annotations" and body[pos : pos + 1] == b"[":
                array = prescan if prescan is not None and prescan.open == pos else _scan_array(body, pos)
                top[key] = None
                pos = array.close + 1  # type: ignore[operator]
            else:
                top[key], pos = _decode_value(body, pos)
            pos = _skip_ws(body, pos)
            if body[pos : pos + 1] == b",":
                pos = _skip_ws(body, pos + 1)
                continue
            if body[pos : pos + 1] == b"}":
                break
            raise FastPathGaveUp
    if _skip_ws(body, pos + 1) != len(body):
        raise FastPathGaveUp
    if array is None:
        if "annotations" in top:
            raise FastPathGaveUp  # not an array: let the slow path name the problem
        video_meta(top, source, 0)  # raises: status, missing fields
        raise FastPathGaveUp  # pragma: no cover - video_meta raised
    starts, ends, commas = array.result()
    meta = video_meta(top, source, len(starts))
    expected = _frame_nums(body, starts, ends)
    if expected is not None:
        meta.frame_runs = frame_runs(expected.tolist())
    return meta, _fast_batches(meta, body, starts, ends, commas, expected)


_FRAME_NUM = re.compile(rb'\{[ \t\r\n]*"frame_num"[ \t\r\n]*:[ \t\r\n]*(-?[0-9]{1,18})[ \t\r\n]*[,}]')


def _frame_nums(body: Body, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """The annotations' frame numbers, read before any row (they go in the schema metadata), or ``None``
    when they are ``0 … n-1``.

    Valid frame numbers increase from 0, so they are ``0 … n-1`` exactly when the last one is ``n - 1``: only
    the last annotation is parsed (the usual case). Otherwise each annotation's leading ``"frame_num"`` is
    read with a regular expression (:class:`FastPathGaveUp` if one does not start so); the rows' own frame numbers
    are checked against them as they are parsed.
    """
    import numpy as np

    n = len(starts)
    if not n:
        return None
    try:
        last = json.loads(body[int(starts[-1]) : int(ends[-1]) + 1])
    except (ValueError, RecursionError) as e:
        raise FastPathGaveUp from e
    if not isinstance(last, dict):
        raise FastPathGaveUp
    if type(last.get("frame_num")) is int and last["frame_num"] == n - 1:
        return None
    nums = []
    block = max(SCAN_CHUNK, 1 << 16)  # holds a whole leading "frame_num" however small the scan's chunks
    window, w0 = (body, 0) if isinstance(body, bytes) else (b"", 0)
    for s in starts.tolist():
        if s + 256 > w0 + len(window) and w0 + len(window) < len(body):  # a file body: the next block
            window, w0 = body[s : s + block], s
        m = _FRAME_NUM.match(window, s - w0)
        if m is None and w0 + len(window) < len(body):  # a long run of whitespace may reach past the block
            window, w0 = body[s : s + block], s
            m = _FRAME_NUM.match(window, 0)
        if m is None:
            raise FastPathGaveUp  # another key first, a float, a huge number...: the slow path decides
        nums.append(int(m.group(1)))
    return np.array(nums, dtype=np.int64)


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
    meta: TableMeta,
    body: Body,
    starts: np.ndarray,
    ends: np.ndarray,
    commas: np.ndarray,
    expected: np.ndarray | None = None,
) -> Iterator[pa.RecordBatch]:
    """The rows of the annotations ``starts``/``ends`` of ``body``, parsed piece by piece (see
    :func:`_piece_parser`); ``expected``: their frame numbers, if read beforehand (:func:`_frame_nums`)."""
    if len(starts) == 0:
        return
    parse = _piece_parser(body, starts, ends, commas)
    bounds = _piece_bounds(starts, ends)
    state: dict[str, Any] = {"last": -1, "expected": expected}
    # The next piece is parsed (in pyarrow's threads) while this one's rows are built and consumed.
    with ThreadPoolExecutor(1, thread_name_prefix="kakaopose-json") if len(bounds) > 1 else nullcontext() as ahead:
        pending = ahead.submit(parse, *bounds[0]) if ahead is not None else None
        for k, (i, j) in enumerate(bounds):
            table = pending.result() if pending is not None else parse(i, j)
            pending = ahead.submit(parse, *bounds[k + 1]) if ahead is not None and k + 1 < len(bounds) else None
            yield from _piece_rows(meta, table, i, state)
            del table


def _piece_bounds(starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int]]:
    """``(i, j)`` ranges of annotations cutting the array into pieces of about ``PIECE_BYTES``, whole
    annotations each (at least one)."""
    import numpy as np

    n = len(starts)
    bounds = []
    i = 0
    while i < n:
        j = min(max(i + 1, int(np.searchsorted(ends, int(starts[i]) + PIECE_BYTES, side="left"))), n)
        bounds.append((i, j))
        i = j
    return bounds


def _piece_parser(body: Body, starts: np.ndarray, ends: np.ndarray, commas: np.ndarray) -> Callable[[int, int], Any]:
    """``parse(i, j)``: annotations ``i … j-1`` copied out of the body, one per line, and read by pyarrow's
    newline-delimited JSON reader into a table of ``frame_num`` and ``objects`` (:class:`FastPathGaveUp` if
    pyarrow rejects them)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.json as pj

    longest = int((ends - starts).max()) + 1
    read_options = pj.ReadOptions(block_size=max(1 << 20, 2 * longest + 2), use_threads=True)
    parse_options = pj.ParseOptions(
        explicit_schema=_annotation_schema(), unexpected_field_behavior="ignore", newlines_in_values=False
    )
    view = memoryview(body) if isinstance(body, bytes) else None
    # The system allocator gives the parsed pieces back to the OS; mimalloc would keep their pages resident.
    pool = pa.system_memory_pool()

    def parse(i: int, j: int) -> pa.Table:
        s0, e1 = int(starts[i]), int(ends[j - 1]) + 1
        piece = bytearray(view[s0:e1]) if view is not None else body.piece(s0, e1)
        arr = np.frombuffer(piece, np.uint8)
        if piece.find(b"\n") != -1 or piece.find(b"\r") != -1:
            arr[(arr == 10) | (arr == 13)] = 32  # newlines are whitespace outside strings (no raw ones inside)
        arr[commas[i : j - 1] - s0] = 10
        del arr
        try:
            table = pj.read_json(
                pa.py_buffer(piece), read_options=read_options, parse_options=parse_options, memory_pool=pool
            )
        except pa.ArrowInvalid as e:
            raise FastPathGaveUp(str(e)) from e
        if table.num_rows != j - i:
            raise FastPathGaveUp("row count mismatch")
        return table

    return parse


def _piece_rows(meta: TableMeta, table: pa.Table, first: int, state: dict) -> Iterator[pa.RecordBatch]:
    """The rows of a parsed piece whose first annotation is number ``first``, batch by batch."""
    ann_index = first
    for batch in table.to_batches():
        if batch.num_rows:
            out = _explode(meta, batch, ann_index, state)
            if out is not None:
                yield out
        ann_index += batch.num_rows


#: The fields of a person, in the order of :func:`_annotation_schema`.
_PERSON_FIELDS = ("area", "bbox", "category_id", "keypoints", "score")


def _explode(meta: TableMeta, batch: pa.RecordBatch, first: int, state: dict) -> pa.RecordBatch | None:
    """Rows of a batch of parsed annotations (``first`` = index of its first annotation)."""
    import numpy as np

    frame_nums = _checked_frame_nums(batch, first, state)
    objects = batch.column(1)
    offsets = objects.offsets.to_numpy()
    counts = np.diff(offsets)
    if len(counts) and counts.max() > 2**15 - 1:
        k = int(np.argmax(counts))
        raise shape_error(f"{where_in_answer(first + k, frame_nums[k])}: more than 32767 persons in one frame")
    n_p = int(offsets[-1] - offsets[0])
    if n_p == 0:
        return None
    person_ann = np.repeat(np.arange(len(frame_nums)), counts)
    person_idx = np.arange(n_p) - np.repeat(offsets[:-1] - offsets[0], counts)

    def fail(p: int, message: str) -> KakaoPoseResponseError:
        k = int(person_ann[p])
        return shape_error(f"{where_in_answer(first + k, frame_nums[k], int(person_idx[p]))}: {message}")

    flat = _person_values(objects.flatten(), fail)
    return build_batch(
        meta,
        frame_nums[person_ann],
        person_idx,
        flat["keypoints"],
        flat["bbox"],
        flat["area"],
        flat["score"],
    )


def _checked_frame_nums(batch: pa.RecordBatch, first: int, state: dict) -> np.ndarray:
    """The batch's frame numbers, checked: present, with their ``objects``, increasing (from ``state["last"]``,
    which is moved on) and, if they were read beforehand (``state["expected"]``), the same."""
    import numpy as np

    frame_col, objects = batch.column(0), batch.column(1)
    if frame_col.null_count:
        k = int(np.flatnonzero(frame_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise shape_error(f"{where_in_answer(first + k)}: missing field frame_num")
    frame_nums = frame_col.to_numpy()
    if objects.null_count:
        k = int(np.flatnonzero(objects.is_null().to_numpy(zero_copy_only=False))[0])
        raise shape_error(f"{where_in_answer(first + k, frame_nums[k])}: missing field objects (or null)")
    prev = np.concatenate(([state["last"]], frame_nums[:-1]))
    bad = np.flatnonzero((frame_nums <= prev) | (frame_nums > 2**31 - 1))
    if len(bad):
        k = int(bad[0])
        raise shape_error(
            f"{where_in_answer(first + k, frame_nums[k])}: frame_num must be increasing and below 2**31 "
            f"(previous {prev[k]})"
        )
    state["last"] = int(frame_nums[-1])
    expected = state["expected"]
    if expected is not None and not np.array_equal(frame_nums, expected[first : first + len(frame_nums)]):
        raise FastPathGaveUp("frame numbers differ from the pre-scan")  # e.g. a duplicated "frame_num" key
    return frame_nums


def _person_values(persons: pa.StructArray, fail: Callable[[int, str], Exception]) -> dict[str, np.ndarray]:
    """The numeric fields of every person of a batch as flat numpy arrays (``keypoints`` P*51, ``bbox`` P*4,
    ``area`` and ``score`` P), checked: no field missing, ``category_id`` 1, lists of the right length, no null,
    values within range. ``fail(p, message)`` is the error naming person ``p`` of the batch."""
    import numpy as np
    import pyarrow.compute as pc

    fields = dict(zip(_PERSON_FIELDS, persons.flatten(), strict=True))
    for key in _PERSON_FIELDS:
        col = fields[key]
        if col.null_count:
            p = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise fail(p, f"missing field {key} (or null)")
    cat = fields["category_id"].to_numpy()
    if (cat != 1).any():
        p = int(np.flatnonzero(cat != 1)[0])
        raise fail(p, f"category_id must be 1, got {cat[p]}")
    flat = {}
    for key, width in (("keypoints", 3 * N_KEYPOINTS), ("bbox", 4)):
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
        if not (np.isfinite(flat[key]).all() if key == "area" else in_float32_range(flat[key])):
            # a value beyond float32 (float64 for area); pyarrow reads an overflowing literal (1e400, an integer
            # of 400 digits) as inf, the json module keeps it: the slow path names the annotation, person, field
            # and value exactly as for parsed input
            raise FastPathGaveUp(f"{key}: a value out of range")
    return flat


# --------------------------------------------------------------------------------------------- bodies cut short

#: Bytes read at a time when a body is checked for completeness (the check's memory is a few times this).
CHECK_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_KEY_BEFORE = re.compile(rb'"((?:[^"\\]|\\.)*)"[ \t\r\n]*:[ \t\r\n]*\Z')


class _Nesting:
    """The bracket nesting of a raw JSON body, fed chunk by chunk and never parsed: whether its top-level
    object or array closes, and if not, where the body ends inside it.

    Vectorised over the positions of ``" \\ { } [ ]`` (:class:`MarkFinder`): the byte after an odd run of
    backslashes is escaped, strings are tracked by quote parity, nesting by a cumulative sum, and each closing
    bracket is checked against the one it closes. Exact for valid JSON and every prefix of it. Keeps the
    kinds of the open brackets and a few integers, whatever the body's size.
    """

    def __init__(self) -> None:
        self.size = 0  # bytes fed
        self.depth = 0
        self.in_string = 0
        #: The question is settled: the top level closed, or a bracket closed one of another kind, or the body
        #: opens no object or array (a scalar, UTF-16): it is not cut short, or not only (json.loads tells).
        self.settled = False
        self._head = b""  # the body's first 4 bytes
        self._first: int | None = None  # its first byte that is neither blank nor a byte-order mark
        self._escape_next = False  # the last chunk ended with an odd run of backslashes
        self._open: list[int] = []  # the open brackets (their bytes), outermost first
        #: level -> position of the last bracket opened at levels 1-3 (the open ones, at the end).
        self.opened: dict[int, int] = {}
        #: level -> brackets opened at that level since the last one a level above (levels 2, 3).
        self.count = {2: 0, 3: 0}
        self._marks = MarkFinder()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Follow the nesting through the next chunk of the body (nothing more once :attr:`settled`)."""
        import numpy as np

        base = self.size
        self.size += len(data)
        if self.settled or not len(data) or self._settled_by_start(data, base):
            return
        where, brackets = self._brackets_outside_strings(data)
        if not len(brackets):
            return
        opens = (brackets == LBRACE) | (brackets == LBRACKET)
        level = np.cumsum(np.where(opens, 1, -1), dtype=np.int64) + self.depth
        if (level <= 0).any():  # the top level ended (complete, or something after it: json.loads tells)
            self.settled = True
            return
        if not self._close_brackets(brackets, opens, level):
            self.settled = True  # e.g. "[1, 2}": malformed, not cut short
            return
        self._note_openings(base, where, opens, level)

    def _settled_by_start(self, data: bytes | bytearray | memoryview, base: int) -> bool:
        """Settle (and say so) when the body's first bytes show it is UTF-16/32 or opens no object or array."""
        if base < 4:
            self._head += bytes(data[: 4 - base])
            if b"\x00" in self._head:
                self.settled = True  # UTF-16/32: for json.loads to judge
                return True
        if self._first is None:  # does the body open an object or an array?
            rest = bytes(data).lstrip(WS + _BOM)
            self._first = rest[0] if rest else None
            if self._first not in (None, LBRACE, LBRACKET):
                self.settled = True  # a scalar (or garbage): for json.loads to judge
                return True
        return False

    def _brackets_outside_strings(self, data: bytes | bytearray | memoryview) -> tuple[Any, Any]:
        """``(positions, bytes)`` of the chunk's brackets that are not inside a string (escapes followed)."""
        import numpy as np

        idx, chars = self._marks.find(data)  # type: ignore[arg-type]
        bs = chars == BACKSLASH
        if self._escape_next or bs.any():
            idx, chars = self._unescaped(idx, chars, bs, len(data))
        is_quote = chars == QUOTE
        parity = (np.cumsum(is_quote, dtype=np.int64) + self.in_string) & 1
        if len(parity):
            self.in_string = int(parity[-1])
        outside = (parity == 0) & ~is_quote
        return idx[outside], chars[outside]

    def _close_brackets(self, brackets: Any, opens: Any, level: Any) -> bool:
        """Check that each closing bracket closes one of its kind and update the open brackets and the depth;
        ``False`` (nothing updated) on a mismatch. ``level``: the nesting after each bracket."""
        import numpy as np

        # Each closing bracket closes the previous bracket at its level: the one before it at that level in
        # this chunk, or one still open from an earlier chunk. "}" - "{" == "]" - "[" == 2.
        key = np.where(opens, level, level + 1)
        order = np.argsort(key, kind="stable")
        ks, kinds = key[order], brackets[order].astype(np.int16)
        same = np.concatenate(([False], ks[1:] == ks[:-1]))
        before = np.concatenate(([0], kinds[:-1])).astype(np.int16)
        for i in np.flatnonzero(~same).tolist():  # the first bracket at each level: maybe opened earlier
            if kinds[i] in (RBRACE, RBRACKET):
                before[i] = self._open[int(ks[i]) - 1]
        closing = (kinds == RBRACE) | (kinds == RBRACKET)
        if (closing & (kinds - before != 2)).any():
            return False
        self.depth = int(level[-1])
        last = np.flatnonzero(np.concatenate((ks[1:] != ks[:-1], [True])))  # the last bracket at each level
        del self._open[self.depth :]
        for i in last.tolist():
            lv = int(ks[i])
            if lv <= self.depth and not closing[i]:  # opened here and still open
                if lv <= len(self._open):
                    self._open[lv - 1] = int(kinds[i])
                else:
                    self._open.append(int(kinds[i]))
        return True

    def _note_openings(self, base: int, where: Any, opens: Any, level: Any) -> None:
        """Record where the last bracket at levels 1-3 opened and how many opened at levels 2 and 3 since the
        last one a level above (for :meth:`cut_short`'s message)."""
        import numpy as np

        for lv in (1, 2, 3):
            mine = opens & (level == lv)
            hits = np.flatnonzero(mine)
            if len(hits):
                self.opened[lv] = base + int(where[hits[-1]])
            if lv > 1:
                parents = np.flatnonzero(opens & (level == lv - 1))
                if len(parents):
                    self.count[lv] = int(np.count_nonzero(mine[parents[-1] + 1 :]))
                else:
                    self.count[lv] += len(hits)

    def _unescaped(self, idx: Any, chars: Any, bs: Any, n: int) -> tuple[Any, Any]:
        """The marks of a chunk of ``n`` bytes without its backslashes and the bytes they escape."""
        import numpy as np

        bpos = idx[bs]
        escaped = np.empty(0, np.int64)
        continued = bool(self._escape_next and len(bpos) and bpos[0] == 0)
        if len(bpos):
            run_start = np.flatnonzero(np.concatenate(([True], np.diff(bpos) != 1)))
            run_last = np.concatenate((run_start[1:], [len(bpos)])) - 1
            lengths = run_last - run_start + 1
            if continued:
                lengths[0] += 1  # a run begun in the last chunk: only its parity counts
            escaped = bpos[run_last[lengths % 2 == 1]] + 1  # the byte after an odd run
        if self._escape_next and not continued:
            escaped = np.concatenate(([0], escaped))
        self._escape_next = bool(len(escaped)) and int(escaped[-1]) == n
        keep = ~bs & ~np.isin(idx, escaped)
        return idx[keep], chars[keep]

    def cut_short(self, body: Body) -> str | None:
        """Where the body (all of it fed) ends inside its top-level value, or ``None`` if it does not."""
        if self.settled or not self._open:
            return None
        where = "inside the top-level " + ("object" if self._open[0] == LBRACE else "array")
        if self.depth >= 2 and self._open[0] == LBRACKET:
            where = f"inside element [{self.count[2] - 1}] of the top-level array"
        elif self.depth >= 2:  # inside a field of the top-level object: name it
            pos = self.opened[2]
            m = _KEY_BEFORE.search(bytes(body[max(0, pos - 256) : pos]))
            try:
                name = json.loads(b'"' + m.group(1) + b'"') if m else None
            except ValueError:
                name = None
            field = repr(name) if isinstance(name, str) else "a top-level field"
            n, in_array = self.count[3], self._open[1] == LBRACKET
            if in_array and self.depth >= 3:  # inside one of its elements (n - 1 complete ones before it)
                path = f"{name}[{n - 1}]" if isinstance(name, str) else f"element [{n - 1}] of {field}"
                where = f"inside {path}, after {_elements(n - 1)}"
            else:
                where = f"inside {field}" + (f", after {_elements(n)}" if in_array and n else "")
        string = ", inside a string" if self.in_string else ""
        return (
            f"the body is cut short (a truncated download?): its {self.size:,} bytes end {where}{string}, "
            f"with {self.depth} bracket{'s' if self.depth > 1 else ''} left open"
        )


def _elements(n: int) -> str:
    return f"{n:,} complete element" + ("" if n == 1 else "s")


def last_nonblank_byte(body: Body) -> int | None:
    """The body's last byte that is not whitespace (``None`` if there is none), read from its end."""
    end = len(body)
    while end > 0:
        block = bytes(body[max(0, end - 4096) : end]).rstrip(WS)
        if block:
            return block[-1]
        end -= 4096
    return None


def cut_short_message(body: Body) -> str | None:
    """How a raw body (``bytes`` or a ``FileBody``) is cut short, or ``None`` when its top-level object or
    array closes (or it opens none, or is malformed before its end): read in pieces, never parsed."""
    nesting = _Nesting()
    view = memoryview(body) if isinstance(body, bytes) else body
    for pos in range(0, len(body), CHECK_CHUNK):
        nesting.feed(view[pos : pos + CHECK_CHUNK])
        if nesting.settled:
            return None
    return nesting.cut_short(body)
