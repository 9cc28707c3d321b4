"""Tests for :mod:`airflow_provider_kakaopose.tables.flatten` and the fast path: the service's sample answers,
every formatting of the JSON, the streamed reader and the fallback."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import random_person as person
from tables_cases import FORMATS, SAMPLES, approx_equal, sample, video

from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
)
from airflow_provider_kakaopose.tables import (
    KEYPOINT_NAMES,
    SKELETON,
    keypoints_reader,
    keypoints_table,
    scanner,
    to_coco,
    write_parquet,
)

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


# ------------------------------------------------------------------------------------------ formatting, fast path


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
    monkeypatch.setattr(scanner, "PIECE_BYTES", 2000)
    monkeypatch.setattr(scanner, "SCAN_CHUNK", 777)
    r = video([[person(i)] * (i % 3) for i in range(40)])
    t = keypoints_table(json.dumps(r, indent=1).encode())
    approx_equal(to_coco(t), r)


def test_fallback_half_way_replays_the_rest(monkeypatch):
    monkeypatch.setattr(scanner, "PIECE_BYTES", 3000)
    r = video([[person(i)] for i in range(20)])
    text = json.dumps(r)
    # a duplicated key deep in the body: valid JSON (last wins) that pyarrow refuses -> fallback mid-stream
    needle = json.dumps(r["annotations"][15]["objects"][0])
    text = text.replace(needle, needle[:-1] + ', "score": ' + str(r["annotations"][15]["objects"][0]["score"]) + "}")
    approx_equal(to_coco(keypoints_table(text.encode())), r)
    r["annotations"][17]["objects"][0]["keypoints"][4] = "oops"
    with pytest.raises(KakaoPoseError, match=r"annotations\[17\] \(frame_num 17\) person 0: keypoints\[4\]"):
        keypoints_table(json.dumps(r).encode())
