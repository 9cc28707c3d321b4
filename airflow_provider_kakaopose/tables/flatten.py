"""Flattening entry points: :func:`keypoints_table` and :func:`keypoints_reader` choose the parser."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, cast

from airflow_provider_kakaopose._jsonmarks import WS
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
    KakaoPoseResponseError,
)
from airflow_provider_kakaopose.tables.body import BodySpool, FileBody, spool_chunks
from airflow_provider_kakaopose.tables.fallback import (
    json_fallback,
    python_image,
    python_video,
)
from airflow_provider_kakaopose.tables.scanner import (
    FastPathGaveUp,
    cut_short_message,
    fast_video,
    last_nonblank_byte,
)
from airflow_provider_kakaopose.tables.schema import (
    TableMeta,
    schema_with_metadata,
    shape_error,
)

if TYPE_CHECKING:
    import pyarrow as pa

Result = list | dict | bytes | bytearray | memoryview | str | IO[bytes] | BodySpool | Iterator[bytes]


# --------------------------------------------------------------------------------------------- public: flatten


def _as_input(result: Result) -> tuple[Any, Any]:
    """``(data, prescan)``: a parsed answer, raw ``bytes``, or a :class:`FileBody` over a file (never read
    whole: seekable binary files are read in pieces, other streams and iterables of chunks are spooled to a
    temporary file first); ``prescan`` is a spool's scan of the annotations, if it has one."""
    if isinstance(result, (list, dict, bytes)):
        return result, None
    if isinstance(result, (bytearray, memoryview)):
        return bytes(result), None
    if isinstance(result, str):
        return result.encode("utf-8"), None
    if isinstance(result, BodySpool):
        return result.body()
    if isinstance(result, io.TextIOBase):
        return result.read().encode("utf-8"), None
    read = getattr(result, "read", None)
    if callable(read):
        if _seekable(result):
            if isinstance(read(0), str):  # a text stream of another kind
                return read().encode("utf-8"), None
            return FileBody(cast("IO[bytes]", result)), None
        return spool_chunks(result).body()
    if hasattr(result, "__iter__") and hasattr(result, "__next__"):  # an iterator of byte chunks
        return spool_chunks(result).body()
    raise KakaoPoseError(
        "result must be a parsed answer (list or dict), raw JSON bytes, a binary file object or an iterator "
        f"of byte chunks, got {type(result).__name__}"
    )


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable()) and callable(getattr(f, "seek", None)) and callable(getattr(f, "tell", None))
    except (AttributeError, OSError, ValueError):
        return False


def _batches(result: Result, source: str | None) -> tuple[TableMeta, Iterator[pa.RecordBatch]]:
    data, prescan = _as_input(result)
    if source is not None and not isinstance(source, str):
        source = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    if isinstance(data, list):
        return python_image(data, source)
    if isinstance(data, dict):
        return python_video(data, source)
    head = data[:64].lstrip(b"\xef\xbb\xbf" + WS)
    # The fast path needs the body to end with its object's "}": a body that does not (cut short, as a rule)
    # skips it, rather than being scanned whole to find that out.
    if head[:1] == b"{" and last_nonblank_byte(data) == 0x7D:
        try:
            meta, batches = fast_video(data, source, prescan)
        except FastPathGaveUp:
            pass
        else:
            return meta, _guarded(batches, data, source, meta)
    # A body cut short (a truncated download) is reported from its bracket nesting alone: json.loads would
    # build everything before the cut (several times its size in memory) just to say where it fails.
    cut = cut_short_message(data)
    if cut is not None:
        raise KakaoPoseResponseError(f"Pose result is not valid JSON: {cut}")
    return json_fallback(data, source)


def _guarded(
    batches: Iterator[pa.RecordBatch], data: Any, source: str | None, fast_meta: TableMeta | None = None
) -> Iterator[pa.RecordBatch]:
    """Run the fast path; if it gives up half-way, replay the slow path's rows (or its precise error)."""
    done = 0
    try:
        for batch in batches:
            done += batch.num_rows
            yield batch
    except FastPathGaveUp as e:
        meta, slow = json_fallback(data, source)  # raises the precise error if the body is malformed
        if fast_meta is not None and meta.to_metadata() != fast_meta.to_metadata():
            # the rows so far, and the schema, came from the fast path's reading of the top level
            raise shape_error(f"the body reads differently with the json module (a duplicated key?): {e}") from e
        skipped = 0
        for batch in slow:
            if skipped + batch.num_rows <= done:
                skipped += batch.num_rows
                continue
            yield batch.slice(done - skipped)
            skipped = done
        if skipped < done:  # pragma: no cover - the two paths disagree
            raise shape_error(f"the body could not be read ({e})") from e


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
    return pa.RecordBatchReader.from_batches(schema_with_metadata(meta), batches)


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
    schema = schema_with_metadata(meta)
    return pa.Table.from_batches(list(batches), schema=schema)
