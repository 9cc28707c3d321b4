"""Parquet writing and reading on any storage, atomically.

Also the storage helpers the operators and the pictures share: :func:`resolve_storage` and :func:`is_local`
(where a URI points), :func:`write_atomically` and :func:`write_bytes` (any file, atomically), and
:func:`parquet_stem` / :func:`sibling_uri` (the names of the files written beside a table).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import queue
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from airflow_provider_kakaopose.coco import decode_metadata
from airflow_provider_kakaopose.tables.schema import ROW_GROUP_SIZE

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

T = TypeVar("T")

_DICT_COLUMNS = ("source", "job_id", "keypoint")
#: Record batches queued between the producer (parsing, tracking) and the Parquet writer thread.
_QUEUED_BATCHES = 4
# Filesystems (fsspec protocols) whose rename is atomic: write a temporary name, then move it.
_RENAMING_PROTOCOLS = frozenset({"file", "local", "sftp", "ssh", "hdfs", "webhdfs", "arrow_hdfs", "smb"})
# Object stores whose fsspec files, opened with ``autocommit=False``, upload while written and publish only on
# ``commit()`` (``discard()`` throws the upload away): S3 multipart uploads (s3fs: parts go up as the buffer fills,
# CompleteMultipartUpload on commit, AbortMultipartUpload on discard) and GCS resumable uploads (gcsfs). Not
# fsspec's memory store: outside a transaction its files are visible from the moment they are opened.
_STAGING_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs"})
#: Bytes buffered before a part goes up to an object store (S3 needs at least 5 MiB per part but the last,
#: and at most 10,000 parts: 16 MiB parts allow files up to 156 GiB).
UPLOAD_PART_SIZE = 16 << 20

# --------------------------------------------------------------------------------------------- storage


def resolve_storage(uri: Any) -> tuple[Any, str]:
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


def is_local(fs: Any) -> bool:
    """Whether ``fs`` (from :func:`resolve_storage`) is the local disk: its paths can be opened with ``open``."""
    if fs is None:
        return True
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def parquet_stem(uri: str) -> tuple[str, str]:
    """``(folder, stem)`` of a path or URI: ``s3://b/dt=1/keypoints.parquet`` → ``("s3://b/dt=1/", "keypoints")``
    (a name that does not end in ``.parquet`` is its own stem)."""
    cut = uri.rfind("/") + 1
    folder, name = uri[:cut], uri[cut:]
    return folder, name[: -len(".parquet")] if name.endswith(".parquet") else name


def sibling_uri(uri: Any, suffix: str) -> Any:
    """``uri`` with its ``.parquet`` suffix (if any) replaced by ``suffix``: ``…/keypoints.parquet`` and ``.png``
    give ``…/keypoints.png``. A path or URI gives a ``str``, an ``ObjectStoragePath`` an ``ObjectStoragePath``."""
    if hasattr(uri, "fs") and hasattr(uri, "path") and hasattr(uri, "with_suffix"):
        return uri.with_suffix(suffix) if str(uri.path).endswith(".parquet") else uri.with_name(uri.name + suffix)
    text = os.fspath(uri)
    if isinstance(text, bytes):
        text = text.decode()
    folder, stem = parquet_stem(text)
    return folder + stem + suffix


def _protocols(fs: Any) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)


def _write_to(sink: Any, data: pa.Table | pa.RecordBatchReader, row_group_size: int, compression: str) -> int:
    """Write a table or a stream of batches as Parquet into ``sink`` (a path or a binary file); return the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = data.schema
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
        return _write_streamed(writer, data, row_group_size)


class _RowGroupWriter:
    """The writer thread's work: gather the queued batches into row groups of ``row_group_size`` rows and write
    them, until ``None`` comes; a failure is kept for the producer (and the queue drained so it never blocks)."""

    def __init__(self, writer: Any, schema: pa.Schema, row_group_size: int) -> None:
        self.writer, self.schema, self.row_group_size = writer, schema, row_group_size
        self.batches: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=_QUEUED_BATCHES)
        self.failure: list[BaseException] = []
        self.written = 0
        self.ended = threading.Event()

    def run(self) -> None:
        import pyarrow as pa

        size = self.row_group_size
        pending: list[pa.RecordBatch] = []
        n = 0
        try:
            while (batch := self.batches.get()) is not None:
                pending.append(batch)
                n += batch.num_rows
                while n >= size:
                    table = pa.Table.from_batches(pending, schema=self.schema)
                    self.writer.write_table(table.slice(0, size), row_group_size=size)
                    rest = table.slice(size)
                    del table
                    pending, n = rest.to_batches(), rest.num_rows
                    self.written += size
            if n:
                self.writer.write_table(pa.Table.from_batches(pending, schema=self.schema), row_group_size=size)
                self.written += n
        except BaseException as err:  # reported to the producer by _write_streamed
            self.failure.append(err)
            while self.batches.get() is not None:  # drain so the producer never blocks
                pass
        finally:
            self.ended.set()


def _write_streamed(writer: Any, data: pa.RecordBatchReader, row_group_size: int) -> int:
    """Write a stream of batches, row group by row group; return the rows written.

    Parse (this thread) and encode/compress (a writer thread) overlap; both release the GIL in Arrow. The writer
    thread gathers the batches of one row group and writes it; the queue between the two holds a few batches,
    so memory stays at about one row group whatever the length.
    """
    groups = _RowGroupWriter(writer, data.schema, row_group_size)
    thread = threading.Thread(target=groups.run, name="kakaopose-parquet-writer", daemon=True)
    thread.start()
    try:
        for batch in data:
            if groups.failure:
                break
            if batch.num_rows:
                groups.batches.put(batch)
    finally:
        _end_writer_thread(groups, thread)
    if groups.failure:
        raise groups.failure[0]
    return groups.written


def _end_writer_thread(groups: _RowGroupWriter, thread: threading.Thread) -> None:
    """Tell the writer thread that no batch follows and wait for it to end, even when interrupted meanwhile.

    Interrupted: by Ctrl-C, or a signal handler that raises, such as a task's SIGTERM. The thread must neither
    write on into the ParquetWriter closed next, nor still be inside Arrow when the interpreter exits (a daemon
    thread there is killed mid-call, which can abort the process). Its work left is a row group or so; the
    interruption is raised once it ended. (An Event, not join(): on Python 3.11 a join() interrupted by a signal
    marks the thread ended while it runs on.)
    """
    interrupted: BaseException | None = None
    told = False
    while True:
        try:
            if not told:
                groups.batches.put(None)
                told = True
            groups.ended.wait()
            break
        except BaseException as err:  # raised by a signal handler while waiting: wait on, raise it after
            interrupted = interrupted or err
    thread.join()  # (it has ended its work: at once)
    if interrupted is not None:
        raise interrupted


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
    written under a temporary name in the same directory, then moved; S3 and GCS get a multipart (resumable)
    upload that goes up part by part while the file is written and is completed only once it is whole (a
    failure aborts it: nothing appears at the key); other object stores get the whole file in a single put.
    See :func:`write_atomically`.
    """
    return write_atomically(uri, lambda sink: _write_to(sink, table, row_group_size, compression))


#: The writer named in temporary file names (see :func:`owned_writes`).
_WRITE_OWNER: contextvars.ContextVar[str | None] = contextvars.ContextVar("kakaopose_write_owner", default=None)


@contextlib.contextmanager
def owned_writes(owner: str) -> Iterator[None]:
    """Within the block, :func:`write_atomically` puts ``owner`` (letters and digits) into its temporary names,
    so that what a writer killed mid-write left behind can be found and removed by its next try
    (:func:`remove_leftovers`). A task wraps its writes in it."""
    token = _WRITE_OWNER.set(_owner_tag(owner))
    try:
        yield
    finally:
        _WRITE_OWNER.reset(token)


def write_atomically(uri: str | os.PathLike | Any, write: Callable[[Any], T]) -> T:
    """Run ``write(sink)`` so that readers of ``uri`` see the old file or the whole new one, never a part.

    ``sink`` is one of

    * a temporary local path (local files): then fsync and ``os.replace``;
    * a binary file open on a temporary name (stores that can rename: sftp, hdfs, smb, …): then ``mv``;
    * a binary file open on the final key without autocommit (S3 through s3fs, GCS through gcsfs): the bytes
      go up in parts of :data:`UPLOAD_PART_SIZE` while ``write`` runs, so memory
      holds about one part, and the upload is completed (S3: ``CompleteMultipartUpload``) only after ``write``
      returned; if ``write`` raises, the upload is discarded (S3: ``AbortMultipartUpload``) and nothing
      appears at the key (an old object there stays as it was);
    * an in-memory buffer sent in one put (other object stores, e.g. Azure, memory).

    Missing folders are created. Returns what ``write`` returns. Shared by the Parquet tables and the pictures.
    Temporary names carry the owner set by :func:`owned_writes`.
    """
    fs, path = resolve_storage(uri)
    owner = _WRITE_OWNER.get()
    tag = f"{owner}." if owner else ""
    if is_local(fs):
        return _write_local(path, tag, write)
    if _protocols(fs) & _RENAMING_PROTOCOLS:
        return _write_renamed(fs, path, tag, write)
    if _protocols(fs) & _STAGING_PROTOCOLS:
        return _write_staged(fs, path, write)
    return _write_in_one_put(fs, path, write)


def write_bytes(uri: str | os.PathLike | Any, data: bytes) -> None:
    """Write ``data`` as the whole file at ``uri`` (any storage), atomically (see :func:`write_atomically`)."""

    def write(sink: Any) -> None:
        if isinstance(sink, str):  # a temporary local path
            with open(sink, "wb") as f:
                f.write(data)
        else:
            sink.write(data)

    write_atomically(uri, write)


def _write_local(path: str, tag: str, write: Callable[[Any], T]) -> T:
    """Write a temporary file beside ``path`` (named with ``tag``), fsync it, then ``os.replace`` it."""
    path = os.path.abspath(os.path.expanduser(path))
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{tag}", suffix=".tmp", dir=directory or ".")
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


def _write_renamed(fs: Any, path: str, tag: str, write: Callable[[Any], T]) -> T:
    """On a store that can rename: write ``<path>.tmp-<tag><uuid>``, then ``mv`` it to ``path``."""
    tmp = f"{path}.tmp-{tag}{uuid.uuid4().hex}"
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


def _write_in_one_put(fs: Any, path: str, write: Callable[[Any], T]) -> T:
    """Other stores: the whole file built in memory, then sent in one put."""
    buffer = io.BytesIO()
    result = write(buffer)
    fs.pipe_file(path, buffer.getvalue())
    return result


def _write_staged(fs: Any, path: str, write: Callable[[Any], T]) -> T:
    """Upload while ``write`` writes; publish at ``path`` only once it returned (see :func:`write_atomically`).

    The file is opened with ``autocommit=False``: its ``close()`` uploads the last part but publishes nothing,
    ``commit()`` publishes, ``discard()`` aborts. (Leaving a ``with fs.open(...)`` block on an exception would
    *close* the file, which with autocommit completes the upload: a half-written file at the key.)
    """
    f = fs.open(path, "wb", block_size=UPLOAD_PART_SIZE, autocommit=False)
    try:
        result = write(f)
        f.close()
        f.commit()
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: the error that matters is the one raised
            f.discard()
        with contextlib.suppress(Exception):
            f.closed = True  # discarded: a later close() (the file's __del__) must not flush or upload
        raise
    return result


def _owner_tag(owner: str) -> str:
    if not owner.isalnum():
        raise ValueError(f"owner must be letters and digits, not {owner!r}")
    return owner


def remove_leftovers(
    uris: Sequence[str | os.PathLike | Any], owner: str, *, started_before: float | None = None
) -> list[str]:
    """Remove what writes of ``uris`` by ``owner`` left when they were killed mid-way; return what was removed.

    A killed :func:`write_atomically` leaves its temporary file (local files and renaming stores) or, on S3, a
    pending multipart upload, which is billed until it is aborted. Only ``owner``'s temporary files are removed
    (their names carry the tag); S3 uploads carry no owner, so those for exactly these keys that were started
    before ``started_before`` (seconds since the epoch; default now) are aborted. GCS drops unfinished resumable
    uploads itself after a week. One listing per folder (local) or bucket (S3). Best effort: a failure to list
    or remove is not an error.
    """
    import time

    tag = f"{_owner_tag(owner)}."
    cutoff = time.time() if started_before is None else started_before
    removed: list[str] = []
    local: dict[str, set[str]] = {}
    s3: dict[tuple[int, str], tuple[Any, set[str]]] = {}
    for uri in uris:
        try:
            fs, path = resolve_storage(uri)
            if is_local(fs):
                directory, name = os.path.split(os.path.abspath(os.path.expanduser(path)))
                local.setdefault(directory, set()).add(f".{name}.{tag}")
            elif _protocols(fs) & _RENAMING_PROTOCOLS:
                for leftover in fs.glob(f"{path}.tmp-{tag}*"):
                    fs.rm(leftover)
                    removed.append(leftover)
            elif _protocols(fs) & {"s3", "s3a"} and hasattr(fs, "call_s3"):
                bucket, _, key = path.partition("/")
                s3.setdefault((id(fs), bucket), (fs, set()))[1].add(key)
        except Exception:  # leftovers cost disk or money, not correctness: never fail a task over them
            continue
    for directory, prefixes in local.items():
        with contextlib.suppress(OSError):
            for entry in os.listdir(directory):
                if entry.endswith(".tmp") and entry.startswith(tuple(prefixes)):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, entry))
                        removed.append(os.path.join(directory, entry))
    for (_, bucket), (fs, keys) in s3.items():
        with contextlib.suppress(Exception):
            first, last = min(keys), max(keys)  # the longest prefix all keys share: one listing for them all
            prefix = first[: next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first))]
            listing = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
            for upload in listing.get("Uploads", []):
                initiated = upload.get("Initiated")
                if upload.get("Key") not in keys or (initiated is not None and initiated.timestamp() >= cutoff):
                    continue
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                removed.append(f"s3://{bucket}/{upload['Key']} (multipart upload {upload['UploadId']})")
    return removed


def delete_if_exists(uri: str | os.PathLike | Any) -> bool:
    """Delete the file at ``uri`` (any storage :func:`write_atomically` accepts); False if there was none."""
    fs, path = resolve_storage(uri)
    if is_local(fs):
        try:
            os.unlink(os.path.abspath(os.path.expanduser(path)))
        except FileNotFoundError:
            return False
        return True
    if not fs.exists(path):
        return False
    fs.rm(path)
    return True


#: What to install for a storage scheme that has no filesystem, by scheme.
_FILESYSTEM_HINTS = {
    "s3": "s3://conn_id@bucket/… needs apache-airflow-providers-amazon; s3://bucket/… needs s3fs",
    "s3a": "s3fs",
    "gs": "gs://conn_id@bucket/… needs apache-airflow-providers-google; gs://bucket/… needs gcsfs",
    "gcs": "gcsfs",
    "abfs": "apache-airflow-providers-microsoft-azure or adlfs",
    "az": "apache-airflow-providers-microsoft-azure or adlfs",
}


def check_writable(uri: str | os.PathLike | Any, what: str = "output") -> None:
    """Raise ``ValueError`` naming the fix when ``uri`` cannot be written: no filesystem for its scheme (a
    missing provider or fsspec package), an unknown connection id, a local folder that cannot be created or
    written, or a folder where the file should be. Cheap: nothing is written, no object store is listed."""
    try:
        fs, path = resolve_storage(uri)
    except Exception as err:  # the class varies: ValueError, ImportError, AirflowNotFoundException, ...
        scheme = urlsplit(os.fspath(uri) if not hasattr(uri, "protocol") else str(uri)).scheme
        hint = _FILESYSTEM_HINTS.get(scheme)
        raise ValueError(
            f"Cannot write the {what} {str(uri)!r}: {type(err).__name__}: {err}" + (f" ({hint})" if hint else "")
        ) from None
    if not is_local(fs):
        return
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise ValueError(f"Cannot write the {what} {str(uri)!r}: it is a folder; give a file name (….parquet)")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):  # the nearest folder that exists decides
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and (not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK)):
        raise ValueError(f"Cannot write the {what} {str(uri)!r}: {parent} is not a folder this process can write")


def read_table(uri: str | os.PathLike | Any) -> pa.Table:
    """The Parquet table at ``uri`` (any storage :func:`write_parquet` accepts)."""
    import pyarrow.parquet as pq

    fs, path = resolve_storage(uri)
    if is_local(fs):
        return pq.read_table(path)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def _exists(uri: Any) -> bool:
    fs, path = resolve_storage(uri)
    if is_local(fs):
        return os.path.exists(os.path.abspath(os.path.expanduser(path)))
    return fs.exists(path)


def read_table_if_exists(uri: str | os.PathLike | Any) -> pa.Table | None:
    """The Parquet table at ``uri`` (any storage), or ``None`` when there is no file there yet."""
    return read_table(uri) if _exists(uri) else None


def read_bytes_if_exists(uri: str | os.PathLike | Any) -> bytes | None:
    """The whole file at ``uri`` (any storage :func:`write_atomically` accepts), or ``None`` if absent."""
    if not _exists(uri):
        return None
    fs, path = resolve_storage(uri)
    if is_local(fs):
        with open(os.path.abspath(os.path.expanduser(path)), "rb") as f:
            return f.read()
    with fs.open(path, "rb") as f:
        return f.read()


def read_metadata_if_exists(uri: str | os.PathLike | Any) -> dict[bytes, bytes] | None:
    """The schema metadata of the Parquet file at ``uri`` (reads only the footer), or ``None`` if absent."""
    import pyarrow.parquet as pq

    if not _exists(uri):
        return None
    fs, path = resolve_storage(uri)
    if is_local(fs):
        return pq.read_schema(os.path.abspath(os.path.expanduser(path))).metadata or {}
    with fs.open(path, "rb") as f:
        return pq.read_schema(f).metadata or {}


def read_keypoints(uri: str | os.PathLike | Any) -> pd.DataFrame:
    """Read a keypoints Parquet file (any URI :func:`write_parquet` accepts) into a pandas DataFrame.

    Null ``x``/``y`` (undetected keypoints) and ``time_s`` (images) become NaN; ``source``, ``job_id`` and
    ``keypoint`` are categoricals. The table's metadata (video, info, categories, skeleton, …) is in
    ``df.attrs["kakaopose"]``, so ``to_coco(df)`` works too. Needs pandas, an optional dependency (the
    ``pandas`` extra); without it this raises ModuleNotFoundError naming the extra, before reading anything.
    """
    try:
        import pandas  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            f"read_keypoints returns a pandas DataFrame, and pandas is not installed ({err}); install the pandas "
            "extra: pip install 'airflow-provider-kakaopose[pandas]' (or read the Parquet with pyarrow, DuckDB, …)",
            name="pandas",
        ) from None
    table = read_table(uri)
    df = table.to_pandas()
    df.attrs["kakaopose"] = decode_metadata(table.schema.metadata)
    return df
