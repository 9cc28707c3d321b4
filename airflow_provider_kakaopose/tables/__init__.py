"""Flatten Pose API answers into one Arrow/Parquet table of keypoints, and back.

One row per (frame, person, keypoint); the columns and their null rules are documented in ``docs/tables.md``.
The schema metadata (keys ``kakaopose:*``) carries the video facts, ``info``, the categories and the
skeleton, so a reader can draw or time-align without the original JSON, and :func:`to_coco` can rebuild the
service's answer from a table.

The package is split by concern; everything public is importable from here:

* :mod:`.schema`: the columns, the ``kakaopose:*`` metadata, the errors table, building rows;
* :mod:`.body`: :class:`BodySpool`, a job body spooled to a temporary file (never whole in memory);
* :mod:`.scanner`: the fast path, a vectorised structural scan of raw JSON and pyarrow's JSON reader;
* :mod:`.fallback`: the Python path (``json`` and a loop per person) for parsed answers and odd bodies;
* :mod:`.flatten`: :func:`keypoints_table` and :func:`keypoints_reader`, which choose between them;
* :mod:`.storage`: atomic Parquet writes and reads on local files and fsspec stores;
* :mod:`.rebuild`: :func:`to_coco`.

Importing this package is cheap: pyarrow, pandas, numpy and fsspec are imported inside the functions.

Inside the package, a module's names without a leading underscore are what the other modules use (its
internal API, e.g. :func:`.schema.build_batch`); underscored names are used by their own module only. Code
outside the package (the operators, the pictures) imports from here, ``__all__`` below.
"""

from __future__ import annotations

from airflow_provider_kakaopose.coco import KEYPOINT_NAMES, SKELETON, decode_metadata, expand_frame_runs, frame_runs
from airflow_provider_kakaopose.tables.body import BodySpool
from airflow_provider_kakaopose.tables.flatten import Result, keypoints_reader, keypoints_table
from airflow_provider_kakaopose.tables.rebuild import to_coco
from airflow_provider_kakaopose.tables.schema import (
    COLUMNS,
    ERROR_COLUMNS,
    ROW_GROUP_SIZE,
    errors_schema,
    errors_table,
    keypoints_schema,
)
from airflow_provider_kakaopose.tables.storage import (
    check_writable,
    delete_if_exists,
    is_local,
    owned_writes,
    parquet_stem,
    read_bytes_if_exists,
    read_keypoints,
    read_metadata_if_exists,
    read_table,
    read_table_if_exists,
    remove_leftovers,
    resolve_storage,
    sibling_uri,
    write_atomically,
    write_bytes,
    write_parquet,
)

__all__ = [
    "COLUMNS",
    "ERROR_COLUMNS",
    "KEYPOINT_NAMES",
    "ROW_GROUP_SIZE",
    "SKELETON",
    "BodySpool",
    "Result",
    "check_writable",
    "decode_metadata",
    "delete_if_exists",
    "errors_schema",
    "errors_table",
    "expand_frame_runs",
    "frame_runs",
    "is_local",
    "keypoints_reader",
    "keypoints_schema",
    "keypoints_table",
    "owned_writes",
    "parquet_stem",
    "read_bytes_if_exists",
    "read_keypoints",
    "read_metadata_if_exists",
    "read_table",
    "read_table_if_exists",
    "remove_leftovers",
    "resolve_storage",
    "sibling_uri",
    "to_coco",
    "write_atomically",
    "write_bytes",
    "write_parquet",
]
