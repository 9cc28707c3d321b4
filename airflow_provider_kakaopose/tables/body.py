"""Raw job bodies that are not held in memory: a spooled or seekable file read in pieces.

A finished job's body can be gigabytes of JSON. :class:`BodySpool` is a writable sink for it: the hook
(:meth:`~airflow_provider_kakaopose.hooks.pose.KakaoPoseHook.download_job`) writes the body into it chunk by
chunk as it arrives from the socket; the spool keeps the bytes in an anonymous temporary file (never in
memory) and scans the ``annotations`` while they go by, so that the tables' fast path
(:mod:`.scanner`) only has to read the file once more, in pieces, to parse them. :class:`FileBody` is the
random-access view the scanner reads any seekable binary file through (``os.pread``, never a memory map,
whose touched pages would count as the process's memory).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

__all__ = ["BodySpool", "FileBody", "spool_chunks"]

#: Bytes kept of the last small read (the scanner walks the top level byte by byte).
_WINDOW = 1 << 16
#: Chunks written but not yet pre-scanned, at most (the download's chunks are 1 MB).
_QUEUED_CHUNKS = 8
#: Spools at least this large are closed (their temporary file freed) in a background thread.
_BACKGROUND_CLOSE_BYTES = 16 << 20
#: Seconds the interpreter's exit waits, at most, for the spools' background threads still running then.
_EXIT_WAIT_S = 30.0

# -- background threads the interpreter's exit waits for
#
# A daemon thread still running when the interpreter exits is not stopped cleanly: it is killed with
# pthread_exit (a forced unwind of its stack) wherever it next takes the GIL, or runs on while C and C++
# static destructors (Arrow's thread pools and memory pools among them) tear down what it uses. Inside C++
# code that can end the process with ``terminate called without an active exception`` (SIGABRT, status 134)
# after all its work was done. So the spools' threads are daemon threads (never a reason for the
# interpreter to hang) that an ``atexit`` hook asks to end and joins before the interpreter finalises; once
# that hook ran, no new one is started (the work is done in the caller's thread instead).

_threads_lock = threading.Lock()
#: Running background threads, each with what asks it to end soon (or None: it ends by itself).
_threads: dict[threading.Thread, Callable[[], None] | None] = {}
_exiting = False


def _start_thread(
    target: Callable[..., None], args: tuple = (), *, name: str, stop: Callable[[], None] | None = None
) -> threading.Thread | None:
    """Start ``target(*args)`` in a daemon thread that the interpreter's exit asks to end (``stop()``) and
    joins; ``None``, starting nothing, once the exit has begun (the caller then does the work itself)."""
    with _threads_lock:
        if _exiting or sys.is_finalizing():
            return None
        thread = threading.Thread(target=_run_thread, args=(target, args), name=name, daemon=True)
        _threads[thread] = stop
    try:
        thread.start()
    except BaseException:
        with _threads_lock:
            _threads.pop(thread, None)
        raise
    return thread


def _run_thread(target: Callable[..., None], args: tuple) -> None:
    try:
        target(*args)
    finally:
        with _threads_lock:
            _threads.pop(threading.current_thread(), None)


def _join_threads_at_exit() -> None:
    """The ``atexit`` hook: ask the running background threads to end, wait for them (at most
    :data:`_EXIT_WAIT_S` in all), and start no more."""
    global _exiting
    with _threads_lock:
        _exiting = True
        running = list(_threads.items())
    for _, stop in running:
        if stop is not None:
            with contextlib.suppress(Exception):  # best effort: the join below is bounded anyway
                stop()
    deadline = time.monotonic() + _EXIT_WAIT_S
    for thread, _ in running:
        thread.join(max(deadline - time.monotonic(), 0.0))


def _forget_threads_after_fork() -> None:  # a forked child has none of its parent's threads
    global _threads_lock
    _threads_lock = threading.Lock()
    _threads.clear()


atexit.register(_join_threads_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads_after_fork)


class FileBody:
    """A read-only, ``bytes``-like view of a seekable binary file from its current position to its end:
    ``len()``, ``body[i]`` (an int), ``body[a:b]`` (bytes), :meth:`piece` (a writable bytearray)."""

    def __init__(self, file: IO[bytes], *, keep: Any = None) -> None:
        self.file = file
        self._keep = keep  # an owner to keep alive as long as this view (a spool's temporary file)
        try:
            self._fd: int | None = file.fileno()
            file.flush()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None
        self._base = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(self._base)
        self._size = end - self._base
        self._win_start = 0
        self._win = b""

    def __len__(self) -> int:
        return self._size

    def _read(self, start: int, stop: int) -> bytes:
        n = stop - start
        if n <= 0:
            return b""
        if self._fd is not None:
            out = os.pread(self._fd, n, self._base + start)
            if len(out) == n:
                return out
            return out + self._read(start + len(out), stop) if out else out
        self.file.seek(self._base + start)
        return self.file.read(n)

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(self._size)
            if step != 1:
                raise ValueError("FileBody slices have no step")
            if stop - start <= 64:  # the scanner's small reads at the top level: from a cached window
                if not (self._win_start <= start and stop <= self._win_start + len(self._win)):
                    self._win_start, self._win = start, self._read(start, min(start + _WINDOW, self._size))
                return self._win[start - self._win_start : stop - self._win_start]
            return self._read(start, stop)
        if key < 0:
            key += self._size
        if not 0 <= key < self._size:
            raise IndexError("FileBody index out of range")
        return self[key : key + 1][0]

    def piece(self, start: int, stop: int) -> bytearray:
        """Bytes ``start:stop`` read straight into a new writable buffer."""
        buf = bytearray(max(stop - start, 0))
        view = memoryview(buf)
        done = 0
        while done < len(buf):
            if self._fd is not None:
                got = os.preadv(self._fd, [view[done:]], self._base + start + done)
            else:
                self.file.seek(self._base + start + done)
                got = self.file.readinto(view[done:])  # type: ignore[attr-defined]
            if not got:
                raise OSError(f"the body file ended at byte {start + done} of {self._size}")
            done += got
        return buf

    def whole(self) -> bytes:
        """All of it in memory (the Python fallback path needs the body whole)."""
        return self._read(0, self._size)


class BodySpool(io.RawIOBase):
    """A writable binary sink that keeps a raw job body in an anonymous temporary file, never in memory.

    Write the body into it chunk by chunk (``KakaoPoseHook.download_job(job_id, spool)`` does), then pass the
    spool to :func:`~airflow_provider_kakaopose.tables.keypoints_reader` or ``keypoints_table``. While the
    body goes by, the spool scans its ``annotations`` array (when it comes first, as the service sends it) in a
    thread of its own, so the socket is read on meanwhile and flattening only reads the file once more, in
    pieces. ``seek(0)`` + ``truncate()`` empty it (a retried download starts over). Closing it (or leaving a
    ``with`` block) deletes the file.

    :param dir: where the temporary file goes (default: ``tempfile``'s default, ``$TMPDIR``); it needs the
        body's size in free space.
    """

    def __init__(self, dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        from airflow_provider_kakaopose.tables.scanner import Prescan

        self._prescan_type = Prescan
        # unlinked at once: nothing is left behind, whatever happens to the process
        self._file = tempfile.TemporaryFile(dir=dir)  # noqa: SIM115 - closed by close()
        self._prescan = Prescan()
        self._size = 0
        # The pre-scan runs in a thread of its own, so the socket is read on while a chunk is scanned.
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
        self._scanner: threading.Thread | None = None

    # -- io.RawIOBase
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def write(self, chunk: Any) -> int:
        data = chunk if type(chunk) is bytes else bytes(chunk)  # the scanner thread keeps it: never a buffer reused
        self._file.write(data)
        if data:
            if self._scanner is None or not self._scanner.is_alive():
                # (the thread holds the queue and the scan, not the spool: close on delete). Ended by the exit
                # hook, or not started once the exit began: no pre-scan, flattening scans the file itself.
                chunks = self._chunks
                self._scanner = _start_thread(
                    _scan_chunks,
                    (chunks, self._prescan),
                    name="kakaopose-prescan",
                    stop=lambda: chunks.put(None, timeout=_EXIT_WAIT_S),
                )
                if self._scanner is None:
                    self._prescan.failed = True
            if self._scanner is not None:
                self._chunks.put(data)
        self._size += len(data)
        return len(data)

    def _stop_scanner(self) -> None:
        if self._scanner is not None:
            if self._scanner.is_alive():
                self._chunks.put(None)
                self._scanner.join()
            else:  # ended by the interpreter's exit, maybe before the last chunks: flattening scans the file
                self._prescan.failed = True
            self._scanner = None
            self._chunks = queue.Queue(maxsize=_QUEUED_CHUNKS)  # a fresh one: the old may hold a chunk or None

    def tell(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Only rewinding (``seek(0)``, which empties the spool: a download starting over) or staying put."""
        target = {os.SEEK_SET: offset, os.SEEK_CUR: self._size + offset, os.SEEK_END: self._size + offset}[whence]
        if target == 0:
            self.truncate(0)
        elif target != self._size:
            raise io.UnsupportedOperation("a BodySpool can only be rewound to 0 (which empties it) or appended to")
        return target

    def truncate(self, size: int | None = None) -> int:
        """Empty the spool (``truncate()`` after ``seek(0)``, or ``truncate(0)``)."""
        if size is None or size == 0:
            self._stop_scanner()
            self._file.seek(0)
            self._file.truncate(0)
            self._prescan = self._prescan_type()
            self._size = 0
            return 0
        if size == self._size:
            return size
        raise io.UnsupportedOperation("a BodySpool can only be emptied")

    def close(self) -> None:
        if not self.closed:
            if sys.is_finalizing():  # deleted at interpreter exit: threads can neither be joined nor started
                self._file.close()
            else:
                self._stop_scanner()
                # The kernel frees a large unlinked file's cached pages as it is closed (0.1-0.2 s per 200 MB
                # here): let that happen beside the caller's next steps, in a thread the interpreter's exit
                # waits for (at the end of a short process it used to be still running there, and killed).
                if self._size < _BACKGROUND_CLOSE_BYTES or (
                    _start_thread(self._file.close, name="kakaopose-spool-close") is None
                ):
                    self._file.close()
        super().close()

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def body(self) -> tuple[FileBody, Any]:
        """The spooled body (a :class:`FileBody`) and the scan of its annotations (or ``None``)."""
        self._stop_scanner()  # every chunk written so far scanned
        self._file.flush()
        self._file.seek(0)
        return FileBody(self._file, keep=self), self._prescan.finish()


def _scan_chunks(chunks: queue.Queue[bytes | None], prescan: Any) -> None:
    """The pre-scan thread: feed each chunk written to the scan, until ``None``."""
    while (data := chunks.get()) is not None:
        try:
            prescan.feed(data)
        except Exception:  # a bug, not a shape the scan refuses (that is FastPathGaveUp, handled in feed)
            prescan.failed = True


def spool_chunks(chunks: Iterable[bytes] | IO[bytes], dir: str | os.PathLike[str] | None = None) -> BodySpool:
    """A :class:`BodySpool` filled from an iterable of byte chunks or a (non-seekable) binary stream."""
    spool = BodySpool(dir)
    try:
        if hasattr(chunks, "read"):
            while chunk := chunks.read(1 << 20):
                spool.write(chunk)
        else:
            for chunk in chunks:
                spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    return spool
