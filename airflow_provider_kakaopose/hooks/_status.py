"""Read a job's status from its body chunk by chunk, without keeping (or parsing) the result.

A finished job's ``GET /pose/job/{id}`` body is the whole result: hundreds of MB of ``annotations``, and the
service puts ``status`` after them. A status check needs only the body's top-level scalars (``job_id``,
``status``, ``description``), so :class:`JobStatusReader` scans each chunk with numpy for the JSON structure
(quotes and brackets), keeps the bytes at the top level with every nested array or object replaced by ``[]``,
and drops the rest at once. Memory stays at one chunk plus the top-level text, and each chunk costs about a
millisecond per MB, so an event loop that feeds it chunk by chunk is never blocked for long.

Pure: no Airflow, no I/O. Both hooks feed it from their HTTP responses.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from airflow_provider_kakaopose._jsonmarks import BACKSLASH, LBRACE, MARKS, QUOTE, WS, MarkFinder
from airflow_provider_kakaopose.exceptions import KakaoPoseResponseError
from airflow_provider_kakaopose.jobs import RUNNING, JobStatus

#: Most bytes of top-level text (keys and scalar values) a job body may have; a real one has ~100.
MAX_TOP_BYTES = 1 << 20
#: Statuses after which the rest of the body cannot change the answer, so reading may stop (any other body is
#: read to its end: a failed job's ``description`` may follow its status).
EARLY_STATUSES = frozenset({*RUNNING, JobStatus.SUCCESS})


_MARKS = MARKS  # the structural bytes, shared with the tables' scanner
_WS = WS
_QUOTE, _BACKSLASH, _LBRACE = QUOTE, BACKSLASH, LBRACE
_OPENERS = frozenset(b"{[")


class JobStatusReader:
    """Incremental reader of a job body's top-level fields.

    :param what: names the request in error messages, e.g. ``"GET /pose/job/…"``.

    :meth:`feed` each chunk; it returns ``True`` once the answer is known and the rest of the body may be
    skipped (status ``waiting``, ``processing`` or ``success``, or the end of the object). :meth:`fields` then,
    or at the end of the body, returns the top-level fields with nested values as ``None``, e.g.
    ``{"annotations": None, "job_id": "…", "status": "success", "video": None}``. A body that is not one JSON
    object, or ends early, raises :class:`KakaoPoseResponseError`.
    """

    def __init__(self, what: str = "The job request", max_top_bytes: int = MAX_TOP_BYTES) -> None:
        self.what = what
        self.max_top_bytes = max_top_bytes
        #: Bytes fed so far.
        self.size = 0
        self._depth = 0  # JSON nesting depth after the last chunk (1 = inside the top-level object)
        self._in_string = False
        self._escape_pending = False  # the last chunk ended inside a string, right after a backslash
        self._started = False  # the top-level "{" was seen
        self._closed = False  # ... and its "}"
        self._top = bytearray()  # the top-level text, nested values replaced by []
        self._fields: dict[str, Any] = {}
        self._parsed = 1  # characters of the decoded top-level text already parsed into _fields
        self._marks = MarkFinder()

    def feed(self, chunk: bytes | bytearray | memoryview) -> bool:
        """Scan one chunk of the body; ``True`` when the status is known and reading may stop."""
        data = bytes(chunk)
        self.size += len(data)
        if self._closed:
            if data.strip(_WS):
                raise self._error("has data after the end of its JSON object")
            return True
        if not data:
            return False
        start_depth = self._depth
        slow = self._escape_pending or _BACKSLASH in data
        events = self._scan_slow(data) if slow else self._scan_fast(data)
        self._take(data, events, start_depth)
        if len(self._top) > self.max_top_bytes:
            raise self._error(f"has more than {self.max_top_bytes} bytes of top-level fields")
        self._parse_pairs()
        return self.done

    @property
    def done(self) -> bool:
        """Whether the status is known (reading more cannot change it)."""
        return self._closed or self._fields.get("status") in EARLY_STATUSES

    def fields(self) -> dict[str, Any]:
        """The top-level fields, nested values as ``None``; raises if the body ended before the status was known."""
        if not self.done:
            if not self._started:
                raise self._error("is empty" if not self.size else "is not a JSON object")
            raise self._error(f"ended after {self.size} bytes, before its JSON object was complete")
        if self._closed:
            try:
                top = json.loads(self._top)
            except ValueError as err:
                raise self._error(f"has malformed top-level fields ({err})") from None
            return {k: None if isinstance(v, list) else v for k, v in top.items()}
        return dict(self._fields)

    # ------------------------------------------------------------------------------------------ scanning

    def _scan_fast(self, data: bytes) -> tuple[list[int], list[int], list[int]]:
        """Brackets crossing depth 1 in a chunk without backslashes: strings by quote parity, in numpy."""
        idx, chars = self._marks.find(data)
        is_quote = chars == _QUOTE
        parity = (np.cumsum(is_quote, dtype=np.int64) + int(self._in_string)) & 1
        if len(parity):
            self._in_string = bool(parity[-1])
        outside = (parity == 0) & ~is_quote
        pos = idx[outside]
        brackets = chars[outside]
        after = np.cumsum(np.where((brackets == 0x7B) | (brackets == 0x5B), 1, -1), dtype=np.int64) + self._depth
        if len(after):
            before = np.empty_like(after)
            before[0] = self._depth
            before[1:] = after[:-1]
            self._depth = int(after[-1])
            edges = np.flatnonzero((before <= 1) | (after <= 1))
            return pos[edges].tolist(), before[edges].tolist(), after[edges].tolist()
        return [], [], []

    def _scan_slow(self, data: bytes) -> tuple[list[int], list[int], list[int]]:
        """The same for a chunk with escapes: walk its marked bytes one by one (rare in job bodies)."""
        positions: list[int] = []
        befores: list[int] = []
        afters: list[int] = []
        depth, in_string = self._depth, self._in_string
        escaped_at = 0 if self._escape_pending else -1  # the byte a backslash escapes
        for i in np.flatnonzero(np.frombuffer(data.translate(_MARKS), np.bool_)).tolist():
            c = data[i]
            if in_string:
                if i == escaped_at:
                    continue
                if c == _BACKSLASH:
                    escaped_at = i + 1
                elif c == _QUOTE:
                    in_string = False
            elif c == _QUOTE:
                in_string = True
            elif c == _BACKSLASH:
                raise self._error("has a backslash outside a string")
            else:
                before = depth
                depth += 1 if c in _OPENERS else -1
                if before <= 1 or depth <= 1:
                    positions.append(i)
                    befores.append(before)
                    afters.append(depth)
        self._depth, self._in_string = depth, in_string
        self._escape_pending = in_string and escaped_at == len(data)
        return positions, befores, afters

    def _take(self, data: bytes, events: tuple[list[int], list[int], list[int]], start_depth: int) -> None:
        """Append the chunk's top-level bytes to ``_top``, given its brackets that cross depth 1."""
        cursor: int | None = 0 if self._started and start_depth == 1 else None  # collecting from here
        for pos, before, after in zip(*events, strict=True):
            if after < 0:
                raise self._error("closes more brackets than it opens")
            if before == 0:  # the top-level value opens
                if self._started:
                    raise self._error("has more than one top-level value")
                if data[pos] != _LBRACE or data[:pos].strip(_WS):
                    raise self._error(f"is not a JSON object; it starts with {data.lstrip(_WS)[:80]!r}")
                self._started = True
                self._top += b"{"
                cursor = pos + 1
            elif after == 2:  # a nested value starts: "[]" stands in for it
                if cursor is not None:
                    self._top += data[cursor:pos]
                self._top += b"[]"
                cursor = None
            elif before == 2:  # ... and ends
                cursor = pos + 1
            else:  # the top-level object ends
                if cursor is not None:
                    self._top += data[cursor : pos + 1]
                self._closed = True
                if data[pos + 1 :].strip(_WS):
                    raise self._error("has data after the end of its JSON object")
                return
        if not self._started:
            if data.strip(_WS):
                raise self._error(f"is not a JSON object; it starts with {data.lstrip(_WS)[:80]!r}")
            return
        if cursor is not None:
            self._top += data[cursor:]

    # ----------------------------------------------------------------------------------------- parsing

    def _parse_pairs(self) -> None:
        """Parse the complete ``"key": value`` pairs of the top-level text seen so far."""
        if not self._started or self._closed:
            return  # fields() parses a closed object whole
        text = self._top.decode("utf-8", "replace")  # a cut multi-byte char can only be at the very end
        decoder = json.JSONDecoder()
        pos = self._parsed
        while True:
            pos = _skip(text, pos)
            if pos >= len(text) or text[pos] == "}":
                return
            if text[pos] == ",":
                pos += 1
                continue
            try:
                key, end = decoder.raw_decode(text, pos)
                colon = _skip(text, end)
                if colon >= len(text):
                    return
                if text[colon] != ":" or not isinstance(key, str):
                    raise self._error("has a malformed top-level field")
                value, end = decoder.raw_decode(text, _skip(text, colon + 1))
            except json.JSONDecodeError:
                return  # incomplete: wait for the next chunk
            after = _skip(text, end)
            if after >= len(text):
                return  # a number may go on in the next chunk
            if text[after] not in ",}":
                raise self._error("has a malformed top-level field")
            self._fields[key] = None if isinstance(value, list) else value
            pos = self._parsed = after

    def _error(self, what: str) -> KakaoPoseResponseError:
        return KakaoPoseResponseError(f"{self.what} answered a body that {what}")


def _skip(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def read_status(body: bytes, what: str = "The job request") -> dict[str, Any]:
    """:class:`JobStatusReader` over a whole body at once (for callers that already hold it)."""
    reader = JobStatusReader(what)
    reader.feed(body)
    return reader.fields()
