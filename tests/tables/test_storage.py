"""Tests for :mod:`airflow_provider_kakaopose.tables.storage`: Parquet settings, readers (pandas, DuckDB), object
storage and atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import duckdb
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import random_person as person
from tables_cases import SAMPLES, approx_equal, video

from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
)
from airflow_provider_kakaopose.tables import (
    COLUMNS,
    keypoints_reader,
    keypoints_table,
    read_keypoints,
    to_coco,
    write_parquet,
)

# ------------------------------------------------------------------------------------------ storage


@pytest.fixture
def table():
    return keypoints_table(video([[person(1, undetected=(3,))], [], [person(2), person(3)]]), source="v.mp4")


def test_local_write_read(tmp_path, table):
    path = tmp_path / "sub" / "k.parquet"  # missing folders are created
    assert write_parquet(table, path) == table.num_rows
    assert [p.name for p in path.parent.iterdir()] == ["k.parquet"]
    df = read_keypoints(path)
    assert list(df.columns) == list(COLUMNS)
    assert str(df.x.dtype) == "float32" and df.x.isna().sum() == 1
    assert str(df.keypoint.dtype) == "category" and str(df.source.dtype) == "category"
    assert str(df.frame_num.dtype) == "int32" and str(df.person_idx.dtype) == "int16"
    assert str(df.keypoint_id.dtype) == "int8" and str(df.area.dtype) == "float64"
    assert df.attrs["kakaopose"]["video"]["fps"] == 30.0
    approx_equal(to_coco(df), to_coco(table))
    # file:// URIs too, and overwriting
    write_parquet(table.slice(0, 17), f"file://{path}")
    assert read_keypoints(str(path)).shape[0] == 17


def test_parquet_settings(tmp_path, table):
    write_parquet(table, tmp_path / "k.parquet")
    md = pq.ParquetFile(tmp_path / "k.parquet").metadata
    col = md.row_group(0).column(COLUMNS.index("keypoint"))
    assert col.compression == "ZSTD"
    assert "RLE_DICTIONARY" in col.encodings or "PLAIN_DICTIONARY" in col.encodings
    assert md.row_group(0).column(COLUMNS.index("x")).statistics is not None
    assert b"kakaopose:skeleton" in md.metadata


def test_duckdb_reads_documented_types(tmp_path, table):
    path = tmp_path / "k.parquet"
    write_parquet(table, path)
    con = duckdb.connect()
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
    assert [(r[0], r[1]) for r in described] == [
        ("source", "VARCHAR"),
        ("job_id", "VARCHAR"),
        ("frame_num", "INTEGER"),
        ("time_s", "DOUBLE"),
        ("person_idx", "SMALLINT"),
        ("keypoint_id", "TINYINT"),
        ("keypoint", "VARCHAR"),
        ("x", "FLOAT"),
        ("y", "FLOAT"),
        ("score", "FLOAT"),
        ("person_score", "FLOAT"),
        ("bbox_x", "FLOAT"),
        ("bbox_y", "FLOAT"),
        ("bbox_w", "FLOAT"),
        ("bbox_h", "FLOAT"),
        ("area", "DOUBLE"),
    ]
    q = f"SELECT count(*), count(x), avg(score) FROM read_parquet('{path}') WHERE keypoint = 'right_eye'"
    n, n_x, _ = con.execute(q).fetchall()[0]
    assert (n, n_x) == (3, 2)


def test_memory_uri_and_object_storage_path(table):
    fs = fsspec.filesystem("memory")
    uri = "memory://bucket/run/k.parquet"
    write_parquet(table, uri)
    assert fs.ls("/bucket/run", detail=False) == ["/bucket/run/k.parquet"]
    assert read_keypoints(uri).shape == (table.num_rows, len(COLUMNS))
    osp = types.SimpleNamespace(fs=fs, path="/bucket/run/other.parquet")  # duck-typed ObjectStoragePath
    write_parquet(keypoints_reader(json.dumps(to_coco(table)).encode()), osp)
    assert read_keypoints(osp).shape[0] == table.num_rows
    fs.rm("/bucket", recursive=True)


def fails_midway(table: pa.Table) -> pa.RecordBatchReader:
    """Rows that break after the first row group is written: the disk fills up mid-file."""

    def batches():
        yield from table.slice(0, 17).to_batches()
        raise OSError("disk on fire")

    return pa.RecordBatchReader.from_batches(table.schema, batches())


def test_atomic_local_write(tmp_path, table):
    path = tmp_path / "k.parquet"
    write_parquet(table, path)
    before = path.read_bytes()
    with pytest.raises(OSError, match="disk on fire"):
        write_parquet(fails_midway(table), path, row_group_size=17)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["k.parquet"]  # no temporary left behind


def test_atomic_memory_write(table):
    uri = "memory://atomic/k.parquet"
    write_parquet(table, uri)
    fs = fsspec.filesystem("memory")
    before = fs.cat("/atomic/k.parquet")
    with pytest.raises(OSError, match="disk on fire"):
        write_parquet(fails_midway(table), uri, row_group_size=17)
    assert fs.cat("/atomic/k.parquet") == before
    assert fs.ls("/atomic", detail=False) == ["/atomic/k.parquet"]
    fs.rm("/atomic", recursive=True)


def test_atomic_write_when_the_stream_fails_midway(tmp_path, table):
    path = tmp_path / "k.parquet"
    write_parquet(table, path)
    before = path.read_bytes()
    r = video([[person(i)] for i in range(30)])
    r["annotations"][25]["objects"][0]["keypoints"] = [1.0] * 3
    with pytest.raises(KakaoPoseError, match=r"annotations\[25\]"):
        write_parquet(keypoints_reader(json.dumps(r).encode()), path, row_group_size=17 * 4)
    assert path.read_bytes() == before


def test_import_is_light():
    code = (
        "import sys; import airflow_provider_kakaopose.tables as t; "
        "import json; print(json.dumps([m for m in ('pyarrow', 'pandas') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "pyarrow" not in loaded and "pandas" not in loaded


def test_dataframe_types_in_pandas(table):
    df = table.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert df.time_s.iloc[0] == 0.0 and df.time_s.iloc[-1] == pytest.approx(2 / 30)


def test_a_batch_with_many_sources_round_trips(tmp_path):
    """Hundreds of sources in one table (an image batch) must still write and read back."""

    persons = json.loads((SAMPLES / "image_response.json").read_text())
    table = pa.concat_tables([keypoints_table(persons, source=f"https://example.com/{n}.jpg") for n in range(300)])
    path = tmp_path / "batch.parquet"
    write_parquet(table, path)
    back = read_keypoints(path)
    assert back["source"].nunique() == 300 and len(back) == table.num_rows
