"""Where a task's files go, and the checks made on them before anything is sent to the service.

The keypoints table is the dataset: ``…/dt=2026-01-01/keypoints.parquet``. Everything else a task writes for
that table — the errors table, the pictures, the job record (Airflow < 3.3), the answers kept for a retry and
the claim that says which task instance writes the table — goes into a ``_kakaopose/`` folder beside it::

    out/dt=2026-01-01/keypoints.parquet
    out/dt=2026-01-01/_kakaopose/keypoints.errors.parquet
    out/dt=2026-01-01/_kakaopose/keypoints.png

pyarrow and pandas (``pd.read_parquet(folder)``), Spark and Trino/Hive skip files and folders whose names start
with ``_``, and DuckDB's ``read_parquet('out/*/*.parquet')`` matches one level only: the folder reads as one
dataset of keypoints (docs/tables.md, "The output folder").
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from airflow_provider_kakaopose.exceptions import KakaoPoseInputError


def parquet_stem(output_uri: str) -> tuple[str, str]:
    """:func:`..tables.parquet_stem` (imported when used: DAG files import this module, never the tables)."""
    from airflow_provider_kakaopose.tables import parquet_stem

    return parquet_stem(output_uri)


#: The folder beside a keypoints table that holds everything that is not the dataset.
SIDECAR_FOLDER = "_kakaopose"


def sidecar_uri(output_uri: str, suffix: str) -> str:
    """``…/keypoints.parquet`` + ``.errors.parquet`` → ``…/_kakaopose/keypoints.errors.parquet``."""
    folder, stem = parquet_stem(output_uri)
    return f"{folder}{SIDECAR_FOLDER}/{stem}{suffix}"


def default_errors_uri(output_uri: str) -> str:
    """``…/keypoints.parquet`` → ``…/_kakaopose/keypoints.errors.parquet`` (out of the keypoints dataset)."""
    return sidecar_uri(output_uri, ".errors.parquet")


def default_job_record_uri(output_uri: str) -> str:
    """``…/keypoints.parquet`` → ``…/_kakaopose/keypoints.job.json``: a video task's job record (Airflow < 3.3)."""
    return sidecar_uri(output_uri, ".job.json")


def legacy_job_record_uri(output_uri: str) -> str:
    """Where releases before 0.3 kept the job record: beside the table (read, never written)."""
    folder, stem = parquet_stem(output_uri)
    return f"{folder}{stem}.job.json"


def pictures_base_uri(output_uri: str) -> str:
    """The name the pictures are derived from (``<stem>.png``, ``<stem>.gif``), in the sidecar folder."""
    return sidecar_uri(output_uri, ".parquet")


# ------------------------------------------------------------------------------------------ identities


def run_identity(context: Any) -> str:
    """Which task instance is running: ``[dag_id, run_id, task_id, map_index]`` as JSON. Stored with what the
    task writes, so a retry can tell its own earlier files from another task instance's."""
    ti = context.get("ti")
    parts = [getattr(ti, name, None) for name in ("dag_id", "run_id", "task_id", "map_index")]
    return json.dumps(parts)


def owner_tag(run: str) -> str:
    """A short tag of a task instance for temporary file names (the same across its tries)."""
    return hashlib.sha256(run.encode()).hexdigest()[:12]


def _other_map_index(theirs: Any, mine: str) -> int | None:
    """The map index of ``theirs`` when it is another mapped instance of the same task in the same run."""
    try:
        other, me = json.loads(theirs) if isinstance(theirs, str | bytes) else theirs, json.loads(mine)
    except (TypeError, ValueError):
        return None
    if not (isinstance(other, list) and len(other) == 4 and me[1] is not None):
        return None
    same_task = other[:3] == me[:3]
    return other[3] if same_task and other[3] != me[3] else None


class OutputClaim:
    """Which task instance writes a keypoints table: ``_kakaopose/<stem>.task.json``.

    Mapped task instances given one ``output_uri`` would overwrite each other's rows, the last writer winning.
    Before anything is sent, a task claims its output; the claim of another map index of the same task in the
    same run refuses the task with an error that names the fix. The claim is read back after it is written
    (instances that start together see each other's), and checked again just before the table is written.
    A later run, another task or a later try of the same instance simply takes the claim over.
    """

    def __init__(self, output_uri: str, run: str) -> None:
        self.output_uri, self.run = output_uri, run
        self.uri = sidecar_uri(output_uri, ".task.json")

    def _refuse_if_taken(self) -> None:
        from airflow_provider_kakaopose.tables import read_bytes_if_exists

        raw = read_bytes_if_exists(self.uri)
        try:
            theirs = json.loads(raw)["run"] if raw else None
        except (ValueError, KeyError, TypeError):
            theirs = None
        other = _other_map_index(theirs, self.run) if theirs else None
        if other is not None:
            raise KakaoPoseInputError(
                f"output_uri {self.output_uri!r} is also the output of map index {other} of this task in this run: "
                "mapped task instances given one output_uri overwrite each other's rows. Give each instance its "
                "own file, e.g. output_uri='…/part-{{ ti.map_index }}.parquet' (docs/operators.md, "
                '"Mapped tasks"). Nothing was sent.'
            )

    def take(self) -> None:
        """Claim the output before anything is sent; raise when another map index holds it."""
        from airflow_provider_kakaopose.tables import write_bytes

        self._refuse_if_taken()
        write_bytes(self.uri, json.dumps({"run": self.run, "claimed_at": time.time()}).encode())
        self._refuse_if_taken()  # read back: an instance that claimed it at the same moment wins, this one stops

    def check(self) -> None:
        """Just before the table is written: still ours (or nobody's)."""
        self._refuse_if_taken()


#: Every file a task may write in the sidecar folder, by suffix (for the leftovers of a killed try).
SIDECAR_SUFFIXES = (".errors.parquet", ".answers.parquet", ".job.json", ".task.json", ".png", ".gif", ".webp")


def prepare_outputs(writes: dict[str, str | None], run: str, log: Any, *, claim: str | None = None) -> str:
    """Before anything is sent: check that each output can be written, claim ``claim`` (the keypoints table)
    and remove what an earlier, killed try of this task instance left half-written. Returns the owner tag
    to write with (:func:`~..tables.owned_writes`).

    :param writes: ``{"output_uri": uri, "errors_uri": uri, …}`` (``None`` values are skipped).
    """
    from airflow_provider_kakaopose.tables import check_writable, remove_leftovers

    targets: list[str | os.PathLike | Any] = [uri for uri in writes.values() if uri is not None]
    for what, uri in writes.items():
        if uri is None:
            continue
        try:
            check_writable(uri, what)
        except ValueError as err:
            raise KakaoPoseInputError(f"{err}. Nothing was sent.") from None
    from airflow_provider_kakaopose.tables import owned_writes

    owner = owner_tag(run)
    started = time.time()
    if claim is not None:
        with owned_writes(owner):
            OutputClaim(claim, run).take()
        targets += [sidecar_uri(claim, suffix) for suffix in SIDECAR_SUFFIXES]
    for leftover in remove_leftovers(targets, owner, started_before=started):
        log.info("Removed %s, left half-written by an earlier try of this task", leftover)
    return owner
