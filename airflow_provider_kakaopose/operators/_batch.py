"""An image batch's bookkeeping: each image's outcome, the answers kept for a retry, the batch's table, the
progress lines.

The service is paid per image answered. What it answered is kept in ``_kakaopose/<stem>.answers.parquet``
beside the output (checkpointed while the batch runs, and before any output is written) until the whole try
has succeeded, so a retry after any failure — images that failed, a full disk while writing the errors
table, an object store failing its final commit, a killed worker — re-sends only the images that were not
answered. A try that succeeds deletes it: a rerun after success computes again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from airflow_provider_kakaopose.operators._outputs import sidecar_uri

#: Seconds between checkpoints of the answers while a batch runs.
CHECKPOINT_EVERY_S = 30.0


@dataclass
class ImageOutcome:
    """What happened to one image of a batch: its persons, or the error that stopped it."""

    source: str
    persons: list[dict] | None = None
    error: BaseException | None = None

    def error_row(self) -> dict[str, Any]:
        err = self.error
        return {
            "source": self.source,
            "error_type": type(err).__name__,
            "status_code": getattr(err, "status_code", None),
            "code": getattr(err, "code", None),
            "message": str(err),
            "attempts": getattr(err, "attempts", None),
        }


def input_label(item: Any) -> str:
    """The ``source`` value an input gets in the tables (and the key it is de-duplicated and resumed by)."""
    return str(item)


def distinct_inputs(items: list[Any]) -> tuple[list[Any], dict[str, int]]:
    """The inputs with repeats removed (first one kept, order kept), and how often each repeated one was given."""
    seen: dict[str, int] = {}
    distinct = []
    for item in items:
        label = input_label(item)
        if label not in seen:
            distinct.append(item)
            seen[label] = 0
        seen[label] += 1
    return distinct, {label: n for label, n in seen.items() if n > 1}


class BatchAnswers:
    """The rows of every image the service answered in this task instance's tries, until one succeeds.

    :param output_uri: the batch's keypoints table (the answers live in its sidecar folder).
    :param run: the task instance (see :func:`~._outputs.run_identity`): another instance's answers are ignored.
    """

    def __init__(self, output_uri: str, run: str, log: Any) -> None:
        self.uri = sidecar_uri(output_uri, ".answers.parquet")
        self.run, self.log = run, log
        self.rows: dict[str, Any] = {}  # label → its keypoints rows (a pyarrow Table)
        self._saved = 0  # how many answers the file holds
        self._last = time.monotonic()

    def load(self) -> dict[str, Any]:
        """Read what earlier tries of this task instance kept; returns ``{label: rows}``."""
        from airflow_provider_kakaopose.tables import read_metadata_if_exists, read_table_if_exists

        meta = read_metadata_if_exists(self.uri)
        if meta is None or meta.get(b"kakaopose:run", b"").decode() != self.run:
            return {}
        table = read_table_if_exists(self.uri)
        if table is None:
            return {}
        done = json.loads(meta.get(b"kakaopose:sources", b"[]"))
        self.rows = rows_by_source(table, done)
        self._saved = len(self.rows)
        self.log.info("Found %d image(s) answered by an earlier try of this task (%s)", len(done), self.uri)
        return dict(self.rows)

    def add(self, outcome: ImageOutcome) -> None:
        """Keep an answered image's rows."""
        from airflow_provider_kakaopose.tables import keypoints_table

        self.rows[outcome.source] = keypoints_table(outcome.persons or [], source=outcome.source)

    def checkpoint(self, *, force: bool = False) -> None:
        """Save the answers if some are new and (unless ``force``) the last save is old enough."""
        if len(self.rows) == self._saved or not (force or time.monotonic() - self._last >= CHECKPOINT_EVERY_S):
            return
        from airflow_provider_kakaopose.tables import write_parquet

        labels = list(self.rows)
        table = concat_rows([self.rows[label] for label in labels], labels, self.run, failed=0, kind="answers")
        write_parquet(table, self.uri)
        self._saved, self._last = len(labels), time.monotonic()

    def discard(self) -> None:
        """The whole try succeeded: a rerun must compute again."""
        from airflow_provider_kakaopose.tables import delete_if_exists

        try:
            delete_if_exists(self.uri)
        except Exception as err:  # the outputs are written; a stale file only saves a rerun some requests
            self.log.warning("Could not delete %s: %s (a rerun of this task instance would reuse it)", self.uri, err)


def rows_by_source(table: Any, sources: list[str]) -> dict[str, Any]:
    """Split ``table`` into its rows per source (one pass; a source without rows gets an empty table)."""
    import numpy as np
    import pyarrow as pa

    encoded = table["source"].cast(pa.string()).combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(encoded.dictionary) + 1))
    code_of = {label: n for n, label in enumerate(encoded.dictionary.to_pylist())}
    parts = {}
    for source in dict.fromkeys(sources):
        n = code_of.get(source)
        rows = order[bounds[n] : bounds[n + 1]] if n is not None else np.array([], dtype=np.int64)
        parts[source] = table.take(pa.array(rows, pa.int64()))
    return parts


def concat_rows(parts: list[Any], labels: list[str], run: str, *, failed: int, kind: str = "image") -> Any:
    """One keypoints table of ``parts`` (in order); its metadata lists ``labels``, the run and the failures."""
    import pyarrow as pa

    from airflow_provider_kakaopose.tables import keypoints_schema

    schema = keypoints_schema()
    meta = dict(parts[0].schema.metadata or {}) if parts else {}
    meta.pop(b"kakaopose:source", None)
    meta[b"kakaopose:kind"] = json.dumps(kind).encode()
    meta[b"kakaopose:sources"] = json.dumps(labels).encode()
    meta[b"kakaopose:run"] = run.encode()
    meta[b"kakaopose:failed"] = str(failed).encode()
    schema = schema.with_metadata(meta)
    table = pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()
    return table.replace_schema_metadata(meta)


def batch_table(items: list[Any], answers: dict[str, Any], run: str, failed: int) -> tuple[Any, int]:
    """The batch's keypoints table in input order (each distinct image once) and its person count."""
    import pyarrow.compute as pc

    labels = [label for label in dict.fromkeys(input_label(item) for item in items) if label in answers]
    parts = [answers[label] for label in labels]
    persons = sum(int(pc.sum(pc.equal(part["keypoint_id"], 1)).as_py() or 0) for part in parts)
    return concat_rows(parts, labels, run, failed=failed), persons


class Progress:
    """Logs ``n / total, rate, ETA`` every ``every`` seconds while a long batch runs."""

    def __init__(self, total: int, what: str, log: Any, every: float = 5.0) -> None:
        self.total, self.what, self.log, self.every = total, what, log, every
        self.count = 0
        self.start = self._last = time.monotonic()

    def step(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.every and self.count < self.total:
            self._last = now
            rate = self.count / (now - self.start)
            eta = (self.total - self.count) / rate if rate else float("inf")
            self.log.info(
                "Progress: %d/%d %ss (%.0f%%), %.1f/s, ETA %.0f s",
                self.count,
                self.total,
                self.what,
                100 * self.count / self.total,
                rate,
                eta,
            )

    def done(self) -> None:
        elapsed = time.monotonic() - self.start
        self.log.info(
            "Done: %d %ss in %.1f s (%.1f/s)", self.count, self.what, elapsed, self.count / max(elapsed, 1e-9)
        )
