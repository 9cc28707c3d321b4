"""Tests for :mod:`airflow_provider_kakaopose.tables`."""

from __future__ import annotations

import copy
import io
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import duckdb
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import random_person as person
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_kakaopose import tables
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
    KakaoPoseJobFailedError,
    KakaoPoseJobNotFoundError,
    KakaoPoseResponseError,
)
from airflow_provider_kakaopose.tables import (
    COLUMNS,
    KEYPOINT_NAMES,
    SKELETON,
    decode_metadata,
    flatten,
    keypoints_reader,
    keypoints_table,
    read_keypoints,
    scanner,
    storage,
    to_coco,
    write_parquet,
)

SAMPLES = Path(__file__).parent / "data" / "samples"  # the service guide's sample bodies
if not SAMPLES.exists():  # pragma: no cover - the repo's own copy, if the shared folder is absent
    SAMPLES = Path(__file__).parent / "data" / "samples"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.fixture
def fast_only(monkeypatch):
    """Fail if the raw-bytes path falls back to json + Python loop."""

    def no_slow(*a, **k):
        raise AssertionError("fell back to the slow path")

    monkeypatch.setattr(flatten, "json_fallback", no_slow)


def video(frames: list[list[dict]], fps: float = 30.0, frame_nums: list[int] | None = None) -> dict:
    nums = range(len(frames)) if frame_nums is None else frame_nums
    return {
        "annotations": [{"frame_num": i, "objects": objs} for i, objs in zip(nums, frames, strict=True)],
        "categories": json.loads(sample("job_success_response.json"))["categories"],
        "info": {"version": "191227"},
        "job_id": "job-1",
        "status": "success",
        "video": {"fps": fps, "frames": len(frames), "height": 720, "width": 1280},
    }


def approx_equal(a, b, tol: float = 1e-3, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            approx_equal(a[k], b[k], tol, f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            approx_equal(x, y, tol, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, abs_tol=tol), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------------------ constants, schema


def test_constants_match_the_service():
    cat = json.loads(sample("job_success_response.json"))["categories"][0]
    assert list(KEYPOINT_NAMES) == cat["keypoints"]
    assert [list(p) for p in SKELETON] == cat["skeleton"]
    assert len(SKELETON) == 19


def test_columns_and_types():
    t = keypoints_table(sample("job_success_response.json"))
    assert tuple(t.column_names) == COLUMNS
    types_ = {f.name: str(f.type) for f in t.schema}
    assert types_ == {
        "source": "dictionary<values=string, indices=int32, ordered=0>",
        "job_id": "dictionary<values=string, indices=int32, ordered=0>",
        "frame_num": "int32",
        "time_s": "double",
        "person_idx": "int16",
        "keypoint_id": "int8",
        "keypoint": "dictionary<values=string, indices=int8, ordered=0>",
        "x": "float",
        "y": "float",
        "score": "float",
        "person_score": "float",
        "bbox_x": "float",
        "bbox_y": "float",
        "bbox_w": "float",
        "bbox_h": "float",
        "area": "double",
    }


def test_docs_schema_table_matches_code():
    doc = (Path(__file__).parents[1] / "docs" / "tables.md").read_text()
    section = doc.split("## Columns", 1)[1].split("Rules:", 1)[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines() if line.startswith("| `")]
    names = {"float": "float32", "double": "float64"}

    def arrow_type(t: pa.DataType) -> str:
        if pa.types.is_dictionary(t):
            return f"dictionary<{t.index_type}, {t.value_type}>"
        return names.get(str(t), str(t))

    documented = [(r[0].strip("`"), r[1]) for r in rows]
    assert documented == [(f.name, arrow_type(f.type)) for f in tables.keypoints_schema()]


# ------------------------------------------------------------------------------------------ samples


def test_image_sample_rows():
    raw = sample("image_response.json")
    answer = json.loads(raw)[0]
    for t in (keypoints_table(raw, source="pose.jpg"), keypoints_table(json.loads(raw), source="pose.jpg")):
        assert t.num_rows == 17
        d = t.to_pydict()
        assert d["source"] == ["pose.jpg"] * 17
        assert d["job_id"] == [None] * 17
        assert d["frame_num"] == [0] * 17
        assert d["time_s"] == [None] * 17
        assert d["person_idx"] == [0] * 17
        assert d["keypoint_id"] == list(range(1, 18))
        assert d["keypoint"] == list(KEYPOINT_NAMES)
        kp = np.array(answer["keypoints"]).reshape(17, 3)
        np.testing.assert_allclose(d["x"], kp[:, 0], atol=1e-3)
        np.testing.assert_allclose(d["y"], kp[:, 1], atol=1e-3)
        np.testing.assert_allclose(d["score"], kp[:, 2], atol=1e-6)
        assert d["x"][0] == pytest.approx(805.4897, abs=1e-3)
        np.testing.assert_allclose(d["person_score"], [0.7185] * 17, atol=1e-6)
        for col, v in zip(("bbox_x", "bbox_y", "bbox_w", "bbox_h"), answer["bbox"], strict=True):
            np.testing.assert_allclose(d[col], [v] * 17, atol=1e-3)
        assert d["area"] == [101090.2833] * 17
    meta = t.schema.metadata
    assert json.loads(meta[b"kakaopose:kind"]) == "image"
    assert json.loads(meta[b"kakaopose:skeleton"]) == [list(p) for p in SKELETON]
    approx_equal(to_coco(t), json.loads(raw), tol=1e-9)  # rounded back to the API's 4 decimals


def test_video_sample_rows(fast_only):
    raw = sample("job_success_response.json")
    parsed = json.loads(raw)
    t = keypoints_table(raw, source="https://example.com/v.mp4")
    assert t.equals(keypoints_table(parsed, source="https://example.com/v.mp4"))
    assert t.num_rows == 17
    d = t.to_pydict()
    assert set(d["job_id"]) == {"bb91c265-341d-4661-813b-870cff0de1d3"}
    assert d["frame_num"] == [0] * 17 and d["time_s"] == [0.0] * 17
    # right_ear (id 5) was not detected: 0.0, 0.0, 0.0 -> null x/y, score 0
    assert d["keypoint"][4] == "right_ear"
    assert d["x"][4] is None and d["y"][4] is None and d["score"][4] == 0.0
    assert d["x"][0] == pytest.approx(517.0) and d["y"][0] == pytest.approx(185.81, abs=1e-3)
    assert d["area"][0] == 211350.1765
    meta = t.schema.metadata
    assert json.loads(meta[b"kakaopose:video"]) == {"fps": 29.97, "frames": 30, "height": 720, "width": 1280}
    assert json.loads(meta[b"kakaopose:info"]) == parsed["info"]
    assert json.loads(meta[b"kakaopose:skeleton"]) == parsed["categories"][0]["skeleton"]
    assert json.loads(meta[b"kakaopose:annotations"]) == 1
    approx_equal(to_coco(t), parsed, tol=1e-9)


def test_file_object_and_str_inputs(fast_only):
    raw = sample("job_success_response.json")
    t = keypoints_table(raw)
    assert keypoints_table(io.BytesIO(raw)).equals(t)
    assert keypoints_table(raw.decode()).equals(t)
    assert keypoints_table(bytearray(raw)).equals(t)
    with (SAMPLES / "job_success_response.json").open("rb") as f:
        assert keypoints_table(f).equals(t)


# ------------------------------------------------------------------------------------------ semantics


def test_undetected_keypoints_do_not_drag_averages():
    r = video([[person(1, undetected=(1, 2)), person(2)], [person(3, undetected=(1,))]])
    t = keypoints_table(r)
    df = t.to_pandas()
    nose = df[df.keypoint == "nose"]
    assert nose.x.isna().sum() == 2 and (nose.score[nose.x.isna()] == 0).all()
    expected = r["annotations"][0]["objects"][1]["keypoints"][0]
    assert nose.x.mean() == pytest.approx(expected, abs=1e-3)
    # a keypoint at the origin with a score is a detection, not a gap
    p = person(4)
    p["keypoints"][0:3] = [0.0, 0.0, 0.5]
    d = keypoints_table([p]).to_pydict()
    assert d["x"][0] == 0.0 and d["y"][0] == 0.0 and d["score"][0] == 0.5


def test_empty_frames_have_no_rows_but_come_back():
    r = video([[], [person(1)], [], [], [person(2), person(3)], []])
    t = keypoints_table(json.dumps(r).encode())
    assert t.num_rows == 3 * 17
    assert sorted(set(t.column("frame_num").to_pylist())) == [1, 4]
    assert t.column("time_s").to_pylist()[0] == pytest.approx(1 / 30)
    approx_equal(to_coco(t), r)
    nobody = video([[], [], []])
    t = keypoints_table(json.dumps(nobody).encode())
    assert t.num_rows == 0 and json.loads(t.schema.metadata[b"kakaopose:job_id"]) == "job-1"
    approx_equal(to_coco(t), nobody)
    assert to_coco(keypoints_table([])) == []


def test_many_persons():
    crowd = [person(i) for i in range(300)]
    r = video([crowd, crowd[:5]])
    t = keypoints_table(json.dumps(r, separators=(",", ":")).encode())
    assert t.num_rows == 305 * 17
    d = t.select(["frame_num", "person_idx"]).to_pandas()
    assert d[d.frame_num == 0].person_idx.max() == 299
    assert d[d.frame_num == 1].person_idx.tolist() == [i for i in range(5) for _ in range(17)]
    approx_equal(to_coco(t), r)


def test_to_coco_accepts_unsorted_tables_and_dataframes():
    r = video([[person(1), person(2)], [person(3)]])
    t = keypoints_table(r)
    shuffled = t.take(np.random.default_rng(0).permutation(t.num_rows))
    approx_equal(to_coco(shuffled), r)
    df = t.to_pandas()
    df.attrs["kakaopose"] = decode_metadata(t.schema.metadata)
    approx_equal(to_coco(df), r)
    with pytest.raises(KakaoPoseError, match="keypoints 1..17"):
        to_coco(t.slice(0, 17 * 2).take(list(range(17)) * 2))


FRAME_NUMBERINGS = {
    "0, 5, 10": [0, 5, 10],
    "from 3": [3, 4, 5],
    "irregular": [2, 3, 4, 10, 11, 40],
    "large": [2**31 - 3, 2**31 - 2, 2**31 - 1],
}


@pytest.mark.parametrize("name", sorted(FRAME_NUMBERINGS))
def test_frame_numbers_not_from_zero_come_back_as_they_were(name, fast_only):
    """Frames 0, 5, 10 used to come back as 11 annotations (0..10, invented empty ones): the metadata now
    records the answer's frame numbers, so every frame comes back, empty ones too, and no other."""
    nums = FRAME_NUMBERINGS[name]
    frames = [[person(i)] if i % 2 == 0 else [] for i in range(len(nums))]  # some frames have nobody
    r = video(frames, frame_nums=nums)
    for fmt in sorted(FORMATS):
        raw = json.dumps(r, **FORMATS[fmt]).encode()
        table = keypoints_table(raw)  # the fast path (fast_only: no fallback)
        assert table.equals(keypoints_table(copy.deepcopy(r)))  # the Python path: the same table, metadata too
        assert keypoints_reader(raw).read_all().equals(table)
        approx_equal(to_coco(table), r)
        assert [a["frame_num"] for a in to_coco(table)["annotations"]] == nums
    meta = json.loads(table.schema.metadata[b"kakaopose:frame_nums"])
    assert tables.expand_frame_runs(meta) == nums
    assert len(meta) <= 3  # compact: runs of evenly spaced numbers


def test_frame_runs_are_compact():
    assert tables.frame_runs(list(range(108_000))) is None  # the usual case: nothing beyond the count
    assert tables.frame_runs([0, 5, 10]) == [[0, 5, 3]]
    assert tables.frame_runs(list(range(0, 108_000, 3))) == [[0, 3, 36_000]]  # every 3rd frame: one run
    assert tables.frame_runs([5, 6, 7, 20, 30]) == [[5, 1, 3], [20, 10, 2]]
    assert tables.frame_runs([7]) == [[7, 1, 1]]
    for nums in ([0, 5, 10], [3], [1, 2, 3, 9, 10, 100], [*range(5, 500, 7), 1000]):
        assert tables.expand_frame_runs(tables.frame_runs(nums)) == nums
    t = keypoints_table(video([[person(1)], [], [person(2)]]))
    assert json.loads(t.schema.metadata[b"kakaopose:frame_nums"]) is None
    for bad in ([[0, 0, 3]], [[5, 1, 2], [5, 1, 1]], [["0", 1, 1]], [[0, 1]]):
        with pytest.raises(ValueError):
            tables.expand_frame_runs(bad)


def test_frame_numbers_with_other_layouts_fall_back_correctly():
    """An annotation whose first key is not frame_num cannot be pre-scanned: the Python path reads it, right."""
    nums = [4, 8, 9]
    r = video([[person(1)], [], [person(2)]], frame_nums=nums)
    r["annotations"] = [{"objects": a["objects"], "frame_num": a["frame_num"]} for a in r["annotations"]]
    table = keypoints_table(json.dumps(r).encode())
    assert [a["frame_num"] for a in to_coco(table)["annotations"]] == nums
    # a duplicated "frame_num" key (json keeps the last, the pre-scan saw the first): a clear error, no wrong table
    text = json.dumps(video([[person(1)], [], [person(2)]], frame_nums=nums))
    dup = text.replace('{"frame_num": 8, "objects": []}', '{"frame_num": 8, "objects": [], "frame_num": 7}')
    assert dup != text
    with pytest.raises(KakaoPoseError, match="duplicated key"):
        keypoints_table(dup.encode())
    # a table whose rows hold a frame the metadata does not list: that frame comes back too (nothing dropped)
    t = keypoints_table(video([[person(1)], [person(2)]], frame_nums=[0, 5]))
    moved = t.slice(17).set_column(2, t.schema.field("frame_num"), pa.array([9] * 17, pa.int32()))
    more = pa.concat_tables([t, moved])
    assert [a["frame_num"] for a in to_coco(more)["annotations"]] == [0, 5, 9]
    broken = t.replace_schema_metadata({**t.schema.metadata, b"kakaopose:frame_nums": b"[[0, 5, 3]]"})
    with pytest.raises(KakaoPoseError, match="frame_nums gives 3 frames, kakaopose:annotations says 2"):
        to_coco(broken)


def image_batch(images: dict[str, list[dict]]) -> pa.Table:
    """The image operator's batch table, built by its own ``batch_table`` (one ``keypoints_table`` per image)."""
    from airflow_provider_kakaopose.operators._batch import batch_table

    answers = {src: keypoints_table(persons, source=src) for src, persons in images.items()}
    table, n_persons = batch_table(list(images), answers, json.dumps(["d", "r", "t", -1]), 0)
    assert n_persons == sum(len(p) for p in images.values())
    return table


def test_to_coco_on_an_image_batch_table(tmp_path):
    """Two images with one person each used to raise 'every person needs exactly keypoints 1..17 once'
    (both are frame 0 person 0): the persons come back image by image, per image with source= or by_source."""
    a, b, c = [person(1)], [person(2), person(3, undetected=(4,))], []
    table = image_batch({"https://example.com/a.jpg": a, "b.jpg": b, "nobody.jpg": c})
    assert json.loads(table.schema.metadata[b"kakaopose:kind"]) == "image"
    write_parquet(table, tmp_path / "batch.parquet")
    df = read_keypoints(tmp_path / "batch.parquet")
    shuffled = table.take(np.random.default_rng(1).permutation(table.num_rows))
    for t in (table, df):
        approx_equal(to_coco(t), a + b)  # every person, image by image in table order
        approx_equal(to_coco(t, by_source=True), {"https://example.com/a.jpg": a, "b.jpg": b, "nobody.jpg": c})
        approx_equal(to_coco(t, source="b.jpg"), b)
        assert to_coco(t, source="nobody.jpg") == []  # listed in kakaopose:sources, no rows
        with pytest.raises(KakaoPoseError, match="'other.jpg' is not in the table"):
            to_coco(t, source="other.jpg")
    approx_equal(to_coco(shuffled, by_source=True), to_coco(table, by_source=True))
    assert sorted(map(json.dumps, to_coco(shuffled))) == sorted(map(json.dumps, to_coco(table)))
    # the same image twice in one batch: both answers' persons, in table order (nothing lost)
    twice = image_batch({"a.jpg": a, "b.jpg": b}).slice(0, 17)
    twice = pa.concat_tables([twice, image_batch({"b.jpg": b}), twice]).replace_schema_metadata(
        image_batch({"a.jpg": a, "b.jpg": b}).schema.metadata
    )
    approx_equal(to_coco(twice), a + b + a)
    approx_equal(to_coco(twice, by_source=True), {"a.jpg": a + a, "b.jpg": b})


def test_to_coco_single_image_and_video_sources():
    persons = json.loads(sample("image_response.json"))
    one = keypoints_table(persons, source="pose.jpg")
    approx_equal(to_coco(one), persons, tol=1e-9)  # unchanged: the list of persons
    approx_equal(to_coco(one, source="pose.jpg"), persons, tol=1e-9)
    approx_equal(to_coco(one, by_source=True), {"pose.jpg": persons}, tol=1e-9)
    approx_equal(to_coco(keypoints_table(persons), by_source=True), {None: persons}, tol=1e-9)
    r = video([[person(1)], [person(2)]])
    v = keypoints_table(r, source="v.mp4")
    approx_equal(to_coco(v, source="v.mp4"), r)
    with pytest.raises(KakaoPoseError, match="by_source is for image tables"):
        to_coco(v, by_source=True)
    two = pa.concat_tables([v, keypoints_table(r, source="w.mp4")])
    with pytest.raises(KakaoPoseError, match=r"a video table holds one video.*2 sources.*pass source="):
        to_coco(two)
    approx_equal(to_coco(two, source="v.mp4"), r)
    with pytest.raises(KakaoPoseError, match="metadata is of 'v.mp4'"):
        to_coco(two, source="w.mp4")


def without_metadata(r: dict) -> dict:
    """What to_coco can rebuild from the columns alone: the frames with rows, job_id, fps."""
    fps = r["video"]["fps"] if any(a["objects"] for a in r["annotations"] if a["frame_num"] > 0) else None
    return {
        "annotations": [a for a in r["annotations"] if a["objects"]],
        "categories": None,
        "info": None,
        "job_id": r["job_id"],
        "status": "success",
        "video": {"fps": fps, "frames": None, "height": None, "width": None},
    }


def test_to_coco_after_a_re_export_without_the_metadata(tmp_path):
    """DuckDB (COPY ... TO) and pd.read_parquet drop the kakaopose:* metadata: to_coco used to return a flat
    image-style list (frames, job_id and video silently gone); now it rebuilds the video from the columns."""
    r = video([[person(1)], [], [person(2), person(3, undetected=(2,))], [person(4)], []], fps=29.97)
    r["annotations"][4]["frame_num"] = 9  # frame numbers 0, 1, 2, 3, 9
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_parquet(keypoints_table(r, source="v.mp4"), a)
    duckdb.sql(f"COPY (SELECT * FROM read_parquet('{a}')) TO '{b}' (FORMAT parquet)")
    exported = pq.read_table(b)
    assert not any(k.startswith(b"kakaopose:") for k in (exported.schema.metadata or {}))
    assert exported.schema.field("source").type == pa.string()  # plain strings, not dictionaries
    expected = without_metadata(r)
    assert [f["frame_num"] for f in expected["annotations"]] == [0, 2, 3]
    for t in (exported, pd.read_parquet(a), pd.read_parquet(b), exported.to_pandas()):
        answer = to_coco(t)
        approx_equal(answer, expected)
        assert answer["video"]["fps"] == 29.97 and answer["job_id"] == "job-1"
    approx_equal(to_coco(exported, source="v.mp4"), expected)
    # an image batch re-exported: the list of persons (images with nobody are not in the rows)
    batch = pa.concat_tables(
        [keypoints_table([person(1)], source="x.jpg"), keypoints_table([person(2)], source="y.jpg")]
    )
    write_parquet(batch, a)
    duckdb.sql(f"COPY (SELECT * FROM read_parquet('{a}')) TO '{b}' (FORMAT parquet)")
    approx_equal(to_coco(pq.read_table(b)), [person(1), person(2)])
    approx_equal(to_coco(pd.read_parquet(b), by_source=True), {"x.jpg": [person(1)], "y.jpg": [person(2)]})


def test_to_coco_without_metadata_refuses_what_it_cannot_tell():
    r = video([[person(1)], [person(2)]])
    bare = keypoints_table(r, source="v.mp4").replace_schema_metadata(None)
    approx_equal(to_coco(bare), without_metadata(r))
    # no time_s / job_id columns, but frame numbers beyond 0: a video (fps unknown), not an image
    frames_only = bare.drop_columns(["time_s", "job_id"])
    answer = to_coco(frames_only)
    assert [f["frame_num"] for f in answer["annotations"]] == [0, 1] and answer["video"]["fps"] is None
    with pytest.raises(KakaoPoseError, match="no rows: it cannot tell an image from a video"):
        to_coco(bare.slice(0, 0))
    image = keypoints_table([person(3)], source="i.jpg").replace_schema_metadata(None)
    mixed = pa.concat_tables([bare, image.cast(bare.schema)])
    with pytest.raises(KakaoPoseError, match="mixes image rows"):
        to_coco(mixed)
    other = keypoints_table({**r, "job_id": "job-2"}, source="v.mp4").replace_schema_metadata(None)
    with pytest.raises(KakaoPoseError, match="2 job_ids"):
        to_coco(pa.concat_tables([bare, other]))
    edited = bare.set_column(3, bare.schema.field("time_s"), pa.array(np.linspace(0, 5, bare.num_rows)))
    with pytest.raises(KakaoPoseError, match="time_s is not frame_num / fps"):
        to_coco(edited)


# ------------------------------------------------------------------------------------------ formatting, fast path

FORMATS = {
    "default": {},
    "compact": {"separators": (",", ":")},
    "indent": {"indent": 2},
    "tabs": {"indent": "\t"},
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fast_path_handles_formattings(fmt, fast_only):
    r = video([[person(1)], [], [person(2), person(3, undetected=(5,))]])
    expected = keypoints_table(r)
    assert keypoints_table(json.dumps(r, **FORMATS[fmt]).encode()).equals(expected)


def test_fast_path_key_order_and_odd_whitespace(fast_only):
    r = video([[person(1)], [person(2)]])
    reordered = {k: r[k] for k in ("video", "status", "job_id", "info", "categories", "annotations")}
    reordered["annotations"] = [
        {"objects": [dict(reversed(list(p.items()))) for p in a["objects"]], "frame_num": a["frame_num"]}
        for a in r["annotations"]
    ]
    expected = keypoints_table(r)
    assert keypoints_table(json.dumps(reordered).encode()).equals(expected)
    odd = " \n" + json.dumps(reordered).replace("}]}, {", "}]} \r\n ,\t{") + "\n\n"
    assert keypoints_table(odd.encode()).equals(expected)


def test_fallback_is_correct_for_escapes_and_strings():
    r = video([[person(1)], [person(2)]])
    r["annotations"][0]["note"] = 'he said "}, {" \\ ok'
    r["annotations"][1]["objects"][0]["extra"] = {"a": ["]", "{"]}
    r["info"]["url"] = "https:\\/\\/www.kakaobrain.com"
    t = keypoints_table(json.dumps(r).encode())
    assert t.num_rows == 34
    clean = video([[person(1)], [person(2)]])
    assert t.drop_columns([]).equals(keypoints_table(clean).replace_schema_metadata(t.schema.metadata))


def test_reader_streams_the_same_rows(tmp_path):
    r = video([[person(i), person(i + 100)] for i in range(50)])
    raw = json.dumps(r).encode()
    reader = keypoints_reader(raw, source="v.mp4")
    assert isinstance(reader, pa.RecordBatchReader)
    assert reader.read_all().equals(keypoints_table(raw, source="v.mp4"))
    n = write_parquet(keypoints_reader(raw, source="v.mp4"), tmp_path / "s.parquet", row_group_size=1000)
    assert n == 100 * 17
    f = pq.ParquetFile(tmp_path / "s.parquet")
    assert [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)] == [1000, 700]
    assert f.read().equals(keypoints_table(raw, source="v.mp4").cast(f.schema_arrow))


def test_small_pieces_cover_everything(monkeypatch, fast_only):
    monkeypatch.setattr(scanner, "_PIECE_BYTES", 2000)
    monkeypatch.setattr(scanner, "_SCAN_CHUNK", 777)
    r = video([[person(i)] * (i % 3) for i in range(40)])
    t = keypoints_table(json.dumps(r, indent=1).encode())
    approx_equal(to_coco(t), r)


def test_fallback_half_way_replays_the_rest(monkeypatch):
    monkeypatch.setattr(scanner, "_PIECE_BYTES", 3000)
    r = video([[person(i)] for i in range(20)])
    text = json.dumps(r)
    # a duplicated key deep in the body: valid JSON (last wins) that pyarrow refuses -> fallback mid-stream
    needle = json.dumps(r["annotations"][15]["objects"][0])
    text = text.replace(needle, needle[:-1] + ', "score": ' + str(r["annotations"][15]["objects"][0]["score"]) + "}")
    approx_equal(to_coco(keypoints_table(text.encode())), r)
    r["annotations"][17]["objects"][0]["keypoints"][4] = "oops"
    with pytest.raises(KakaoPoseError, match=r"annotations\[17\] \(frame_num 17\) person 0: keypoints\[4\]"):
        keypoints_table(json.dumps(r).encode())


# ------------------------------------------------------------------------------------------ property-based

coord = st.floats(0, 4096, allow_nan=False).map(lambda v: round(v, 2))
unit = st.floats(0, 1, allow_nan=False).map(lambda v: round(v, 4))


@st.composite
def persons_st(draw):
    kps = []
    for _ in range(17):
        if draw(st.integers(0, 9)) == 0:
            kps += [0.0, 0.0, 0.0]
        else:
            kps += [draw(coord), draw(coord), draw(unit)]
    return {
        "area": draw(st.floats(0, 4e6, allow_nan=False).map(lambda v: round(v, 4))),
        "bbox": [draw(coord) for _ in range(4)],
        "category_id": 1,
        "keypoints": kps,
        "score": draw(unit),
    }


@st.composite
def videos_st(draw):
    frames = draw(st.lists(st.lists(persons_st(), max_size=4), max_size=6))
    nums = None  # 0..n-1, or any increasing frame numbers (validation accepts them)
    if draw(st.booleans()):
        nums = sorted(draw(st.sets(st.integers(0, 2**31 - 1), min_size=len(frames), max_size=len(frames))))
    return video(frames, fps=draw(st.sampled_from([1.0, 24.0, 29.97, 30.0, 59.94, 120.0])), frame_nums=nums)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(r=videos_st(), fmt=st.sampled_from(sorted(FORMATS)), raw=st.booleans())
def test_round_trip_video(r, fmt, raw):
    given_ = json.dumps(r, **FORMATS[fmt]).encode() if raw else copy.deepcopy(r)
    approx_equal(to_coco(keypoints_table(given_)), r)


@settings(max_examples=40, deadline=None)
@given(r=st.lists(persons_st(), max_size=5), raw=st.booleans())
def test_round_trip_image(r, raw):
    approx_equal(to_coco(keypoints_table(json.dumps(r).encode() if raw else r)), r)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(r=videos_st())
def test_round_trip_without_metadata(r):
    table = keypoints_table(copy.deepcopy(r)).replace_schema_metadata(None)
    if not table.num_rows:
        return
    approx_equal(to_coco(table), without_metadata(r))


# ------------------------------------------------------------------------------------------ malformed shapes


def _mutate(path, value):
    def f(r):
        obj = r
        for key in path[:-1]:
            obj = obj[key]
        if value is _DELETE:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
        return r

    return f


_DELETE = object()
P = ("annotations", 1, "objects", 1)
MALFORMED = {
    "keypoints 50": (_mutate((*P, "keypoints"), [1.0] * 50), r"annotations\[1\] \(frame_num 1\) person 1.*51"),
    "keypoints 52": (_mutate((*P, "keypoints"), [1.0] * 52), r"person 1: keypoints.*52"),
    "keypoints missing": (_mutate((*P, "keypoints"), _DELETE), r"person 1: missing field.*keypoints"),
    "keypoints null": (_mutate((*P, "keypoints"), None), r"person 1.*keypoints"),
    "keypoint string": (_mutate((*P, "keypoints", 7), "1.5"), r"person 1: keypoints\[7\]"),
    "keypoint bool": (_mutate((*P, "keypoints", 7), True), r"person 1: keypoints\[7\]"),
    "keypoint null": (_mutate((*P, "keypoints", 7), None), r"person 1: keypoints\[7\]"),
    "keypoint nested": (_mutate((*P, "keypoints", 7), [1.0]), r"person 1.*keypoints"),
    "bbox short": (_mutate((*P, "bbox"), [1.0, 2.0]), r"person 1: bbox.*4"),
    "bbox string": (_mutate((*P, "bbox", 2), "x"), r"person 1: bbox\[2\]"),
    "score missing": (_mutate((*P, "score"), _DELETE), r"person 1: missing field.*score"),
    "score string": (_mutate((*P, "score"), "high"), r"person 1: score"),
    "area missing": (_mutate((*P, "area"), _DELETE), r"person 1: missing field.*area"),
    "category 2": (_mutate((*P, "category_id"), 2), r"person 1: category_id must be 1"),
    "person not object": (_mutate(P, [1, 2]), r"annotations\[1\].*person 1"),
    "objects missing": (_mutate(("annotations", 1, "objects"), _DELETE), r"annotations\[1\].*objects"),
    "objects not list": (_mutate(("annotations", 1, "objects"), {"a": 1}), r"annotations\[1\].*objects"),
    "frame_num missing": (_mutate(("annotations", 1, "frame_num"), _DELETE), r"annotations\[1\].*frame_num"),
    "frame_num string": (_mutate(("annotations", 1, "frame_num"), "1"), r"annotations\[1\].*frame_num"),
    "frame_num repeated": (_mutate(("annotations", 1, "frame_num"), 0), r"annotations\[1\].*increasing"),
    "annotation not object": (_mutate(("annotations", 1), 5), r"annotations\[1\]"),
    "annotations not list": (_mutate(("annotations",), {"x": 1}), r"'annotations' must be a list"),
    "annotations missing": (_mutate(("annotations",), _DELETE), r"no 'annotations'"),
    "video missing": (_mutate(("video",), _DELETE), r"no 'video'"),
    "fps missing": (_mutate(("video", "fps"), _DELETE), r"'video' has no 'fps'"),
    "fps zero": (_mutate(("video", "fps"), 0), r"fps must be positive"),
    "categories missing": (_mutate(("categories",), _DELETE), r"no 'categories'"),
    "info missing": (_mutate(("info",), _DELETE), r"no 'info'"),
    "status processing": (_mutate(("status",), "processing"), r"not finished"),
    "status odd": (_mutate(("status",), "done"), r"status is 'done'"),
}


@pytest.mark.parametrize("raw", [False, True], ids=["parsed", "raw"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_raises_with_location(case, raw):
    mutate, pattern = MALFORMED[case]
    r = mutate(video([[person(1)], [person(2), person(3)], [person(4)]]))
    with pytest.raises(KakaoPoseError, match=pattern):
        keypoints_table(json.dumps(r).encode() if raw else r)


@pytest.mark.parametrize(
    "body, error",
    [
        (b"", "not valid JSON"),
        (b'{"annotations": [', "not valid JSON"),
        (b"[1, 2]", "image person 0: a person must be an object"),
        (b"42", "expected a list of persons"),
        (b'{"annotations": [], "status": "success"} trailing', "not valid JSON"),
        (sample("job_failed_response.json"), "Failed to get video"),
        (sample("job_processing_response.json"), "not finished"),
        (sample("error_invalid_key.json"), "status is None"),
    ],
)
def test_malformed_bodies(body, error):
    with pytest.raises(KakaoPoseError, match=error):
        keypoints_table(body)


def test_job_status_errors_are_specific():
    with pytest.raises(KakaoPoseJobFailedError, match="Failed to get video"):
        keypoints_table(json.loads(sample("job_failed_response.json")))
    with pytest.raises(KakaoPoseJobNotFoundError):
        keypoints_table({"job_id": "x", "status": "not found"})
    with pytest.raises(KakaoPoseError, match="must be a parsed answer"):
        keypoints_table(12)  # type: ignore[arg-type]


HUGE = "1" + "0" * 400  # an integer literal beyond float64 (json keeps it as a Python int)
OUT_OF_RANGE = {  # field -> (where the literal goes, the message's field)
    "area": (("annotations", 1, "objects", 1, "area"), "area"),
    "score": (("annotations", 1, "objects", 1, "score"), "score"),
    "bbox": (("annotations", 1, "objects", 1, "bbox", 2), r"bbox\[2\]"),
    "keypoints": (("annotations", 1, "objects", 1, "keypoints", 7), r"keypoints\[7\]"),
    "category_id": (("annotations", 1, "objects", 1, "category_id"), "category_id"),
}


@pytest.mark.parametrize("literal", [HUGE, "-" + HUGE, "1e400", "1e39"], ids=["int400", "-int400", "1e400", "1e39"])
@pytest.mark.parametrize("field", [*sorted(OUT_OF_RANGE), "frame_num"])
def test_huge_numbers_raise_the_same_error_on_both_paths(field, literal):
    """Parsed input used to raise a bare OverflowError, raw bytes a message without the index: now both
    give KakaoPoseResponseError naming annotation, frame, person and field, with the same message."""
    r = video([[person(1)], [person(2), person(3)], [person(4)]])
    if field == "frame_num":
        path, pattern = ("annotations", 1, "frame_num"), r"annotations\[1\]( \(frame_num .*\))?: frame_num must be"
    else:
        path, label = OUT_OF_RANGE[field]
        pattern = rf"annotations\[1\] \(frame_num 1\) person 1: {label} must be"
    marker = 987654.125  # a float written exactly by json, replaced by the literal in the text
    _mutate(path, marker)(r)
    raw = json.dumps(r).replace(str(marker), literal).encode()
    assert raw.count(literal.encode()) == 1
    parsed = json.loads(raw)
    if (field, literal) == ("area", "1e39"):  # area is float64: 1e39 is a (silly) value it holds exactly
        assert keypoints_table(raw).equals(keypoints_table(parsed))
        assert keypoints_table(raw).column("area")[2 * 17].as_py() == 1e39  # frame 1 person 1
        return
    if literal == "1e39" and field not in ("area", "category_id", "frame_num"):
        pattern += r" a finite number of at most 3.4e38 in size \(float32\)"  # a float32 column
    messages = []
    for given_ in (parsed, raw):
        with pytest.raises(KakaoPoseResponseError, match=pattern) as err:
            keypoints_table(given_)
        with pytest.raises(KakaoPoseResponseError, match=pattern):
            keypoints_reader(given_).read_all()
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "(401 digits)" in messages[0] if "0" * 400 in literal else True
    assert len(messages[0]) < 300  # the 401 digits are not all printed


def test_huge_numbers_in_an_image_answer():
    p = person(1)
    p["area"] = 10**400
    for given_ in ([p], json.dumps([p]).encode()):
        with pytest.raises(KakaoPoseResponseError, match=r"image person 0: area must be a finite number, got 1000"):
            keypoints_table(given_)
    q = person(2)
    q["keypoints"][4] = -(10**5000)  # more digits than Python prints: still a clear error
    with pytest.raises(KakaoPoseResponseError, match=r"image person 0: keypoints\[4\] .* about 5001 digits"):
        keypoints_table([q])
    # a large but representable area is kept (float64), a representable keypoint beyond float32 is not
    p["area"] = 10**300
    assert keypoints_table([p]).column("area")[0].as_py() == 1e300


def test_image_person_errors_name_the_person():
    with pytest.raises(KakaoPoseError, match=r"image person 1: keypoints must be a list of 51"):
        keypoints_table([person(1), {**person(2), "keypoints": [1.0] * 3}])


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


def _failing_writer(monkeypatch):
    real = storage._write_to

    def half_then_fail(sink, data, row_group_size, compression):
        if isinstance(sink, str):
            Path(sink).write_bytes(b"PAR1 half a file")
        else:
            sink.write(b"PAR1 half a file")
        raise OSError("disk on fire")

    monkeypatch.setattr(storage, "_write_to", half_then_fail)
    return real


def test_atomic_local_write(tmp_path, table, monkeypatch):
    path = tmp_path / "k.parquet"
    write_parquet(table, path)
    before = path.read_bytes()
    _failing_writer(monkeypatch)
    with pytest.raises(OSError, match="disk on fire"):
        write_parquet(table.slice(0, 17), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["k.parquet"]  # no temporary left behind


def test_atomic_memory_write(table, monkeypatch):
    uri = "memory://atomic/k.parquet"
    write_parquet(table, uri)
    fs = fsspec.filesystem("memory")
    before = fs.cat("/atomic/k.parquet")
    _failing_writer(monkeypatch)
    with pytest.raises(OSError):
        write_parquet(table.slice(0, 17), uri)
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
    import pyarrow as pa

    persons = json.loads((SAMPLES / "image_response.json").read_text())
    table = pa.concat_tables([keypoints_table(persons, source=f"https://example.com/{n}.jpg") for n in range(300)])
    path = tmp_path / "batch.parquet"
    write_parquet(table, path)
    back = read_keypoints(path)
    assert back["source"].nunique() == 300 and len(back) == table.num_rows


# ------------------------------------------------------------------------------------------ bodies cut short


def escaped_body(frames: int = 3) -> bytes:
    """A complete raw answer with escapes, quotes, brackets and non-ASCII text in its strings (the nesting
    check must see through them)."""
    r = video([[person(1)], [], [person(2), person(3)]][:frames])
    r["info"] = {"version": '19\\12"27 [{', "note\\": "é ü \\\\", 'k"ey': "}]", "path": "C:\\"}
    return json.dumps(r, ensure_ascii=False).encode()


def test_a_body_cut_at_any_byte_is_reported_as_cut_short():
    body = escaped_body()
    assert keypoints_table(body).num_rows == 3 * 17  # complete, it reads
    for n in range(1, len(body)):
        with pytest.raises(KakaoPoseResponseError) as caught:
            keypoints_table(body[:n])
        message = str(caught.value)
        assert message.startswith("Pose result is not valid JSON: the body is cut short"), (n, message)
        assert f"its {n:,} bytes end inside" in message, (n, message)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_the_cut_short_check_reads_in_pieces_of_any_size(monkeypatch, chunk):
    """The check reads a body in pieces (``_CHECK_CHUNK``): an escape, a string or a bracket split between
    two pieces gives the same verdict."""
    body = escaped_body(frames=2)
    cuts = [*range(1, len(body), 61), *(i + 1 for i in range(len(body)) if body[i] == 0x5C)]  # after "\\"
    want = {n: scanner.cut_short_message(body[:n]) for n in cuts}
    assert all(want.values()) and scanner.cut_short_message(body) is None
    monkeypatch.setattr(scanner, "_CHECK_CHUNK", chunk)
    assert {n: scanner.cut_short_message(body[:n]) for n in cuts} == want
    assert scanner.cut_short_message(body) is None


def test_a_cut_short_body_says_where_it_ends():
    r = video([[person(1)], [person(2)], [person(3)]])
    body = json.dumps(r).encode()
    in_second = body.index(b'{"frame_num": 1') + 40
    cases = {
        b'{"annotations": [': r"its 17 bytes end inside 'annotations', with 2 brackets left open$",
        body[:in_second]: r"end inside annotations\[1\], after 1 complete element(, inside a string)?, with",
        body[: body.index(b'"video"') + 20]: r"end inside 'video', with 2 brackets left open$",
        body[:-1]: rf"its {len(body) - 1:,} bytes end inside the top-level object, with 1 bracket left open$",
        json.dumps([person(1), person(2)]).encode()[:-30]: r"end inside element \[1\] of the top-level array",
    }
    for cut, pattern in cases.items():
        with pytest.raises(KakaoPoseResponseError, match=pattern):
            keypoints_table(cut)
        with pytest.raises(KakaoPoseResponseError, match=pattern):
            keypoints_reader(io.BytesIO(cut))  # a file: read in pieces, not whole


@pytest.mark.parametrize(
    "body, error",
    [
        (b'{"annotations": [], "status": "success"} trailing', r"not valid JSON: Extra data: line 1 column 42"),
        (b'{"annotations": [1, 2}, "status": "success"}', r"not valid JSON: Expecting ',' delimiter: .*\(char 21\)"),
        (b'{"annotations": [1, 2}', r"not valid JSON: Expecting ',' delimiter: .*\(char 21\)"),
        (b'[{"area": 1]', r"not valid JSON: Expecting ',' delimiter: .*\(char 11\)"),
        (b'"cut', r"not valid JSON: Unterminated string"),
    ],
)
def test_malformed_bodies_that_are_not_cut_short_keep_the_json_modules_message(body, error):
    """Mismatched brackets or data after the end are not a cut: the json module's exact message is kept."""
    with pytest.raises(KakaoPoseResponseError, match=error):
        keypoints_table(body)


CUT_BODY_CHILD = r"""
import json, os, sys
import numpy, pyarrow, pyarrow.json  # loaded before the baseline, as in a task
from airflow_provider_kakaopose.exceptions import KakaoPoseError
from airflow_provider_kakaopose.tables import BodySpool, keypoints_reader, keypoints_table

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def peak():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024

path, how = sys.argv[1], sys.argv[2]
spool = BodySpool()
if how == "spool":  # the operator's path: the download written into a spool, then read
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            spool.write(chunk)
base = rss()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak mark
try:
    if how == "spool":
        keypoints_reader(spool).read_all()
    else:
        with open(path, "rb") as f:
            keypoints_table(f)
    error = None
except KakaoPoseError as e:
    error = str(e)
print(json.dumps([peak() - base, error]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_a_large_body_cut_short_is_reported_in_little_memory(tmp_path):
    """A ~35 MB body cut off mid-array used to be parsed whole by json.loads just to report it (~7x its size in
    working memory); its nesting alone now says it is cut short, in a few MB."""
    from airflow_provider_kakaopose.emulator import synth

    body = synth.video_result_bytes("job-cut", synth.VideoSpec(frames=22_000, persons=3), "cut")
    cut = body[: len(body) * 9 // 10]
    del body
    assert cut.rstrip()[-1:] != b"}"  # (a cut that ends with "}" is tried on the fast path first: bounded too)
    path = tmp_path / "cut.json"
    path.write_bytes(cut)
    for how in ("file", "spool"):
        out = subprocess.run(
            [sys.executable, "-c", CUT_BODY_CHILD, str(path), how], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        working, error = json.loads(out.stdout.strip().splitlines()[-1])
        assert working < len(cut) / 3, f"{how}: {working / 1e6:.0f} MB of working memory for {len(cut) / 1e6:.0f} MB"
        assert error and "not valid JSON: the body is cut short" in error and f"its {len(cut):,} bytes" in error
        assert "inside annotations[" in error, error
