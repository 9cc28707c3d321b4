"""Tests for :mod:`airflow_provider_kakaopose.tables.rebuild` (``to_coco``): a table round-trips to the answer
it came from."""

from __future__ import annotations

import copy
import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import random_person as person
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tables_cases import FORMATS, approx_equal, sample, video

from airflow_provider_kakaopose import tables
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
)
from airflow_provider_kakaopose.tables import (
    decode_metadata,
    keypoints_reader,
    keypoints_table,
    read_keypoints,
    to_coco,
    write_parquet,
)

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
