"""JobStatusReader: a job body's top-level fields from chunks, whatever the split, without keeping the rest."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_kakaopose.exceptions import KakaoPoseResponseError
from airflow_provider_kakaopose.hooks._status import JobStatusReader, read_status

BODIES = [
    {  # strings with brackets, quotes and backslashes inside nested values and at the top level
        "annotations": [{"frame_num": 0, "objects": [{"a": [1, 2, {"x": '}]"[\\'}]}]}],
        "categories": [{"k": ["a", "b"]}],
        "info": {"d": 'x\\"y'},
        "job_id": "abc",
        "status": "success",
        "video": {"fps": 30},
    },
    {"description": 'Failed to get "video" [x] {y} \\', "job_id": "j", "status": "failed"},
    {"job_id": "n", "status": "not found"},
    {"status": "waiting", "job_id": "w", "number": 12345678, "flag": True, "none": None},
    {"job_id": "é☃", "status": "processing", "annotations": []},
]


def expected(body: dict) -> dict:
    return {k: None if isinstance(v, list | dict) else v for k, v in body.items()}


def read(chunks: list[bytes]) -> dict:
    reader = JobStatusReader()
    for chunk in chunks:
        if reader.feed(chunk):
            break
    return reader.fields()


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("indent", [None, 2])
def test_every_split_into_two_chunks_and_byte_by_byte(body, indent):
    raw = json.dumps(body, indent=indent, ensure_ascii=False).encode()
    want = expected(body)
    for cut in range(len(raw) + 1):
        got = read([raw[:cut], raw[cut:]])
        assert got.items() <= want.items() and got["status"] == body["status"], cut
    assert read([raw[i : i + 1] for i in range(len(raw))])["status"] == body["status"]
    assert read_status(raw) == want  # whole: every field


def test_reading_stops_once_the_status_is_known():
    reader = JobStatusReader()
    assert reader.feed(b'{"job_id": "a", "status": "processing", "annotations": [') is True
    assert reader.fields() == {"job_id": "a", "status": "processing"}


def test_a_failed_job_is_read_to_the_end_for_its_description():
    reader = JobStatusReader()
    assert reader.feed(b'{"status": "failed", ') is False
    assert reader.feed(b'"description": "Failed to get video"}') is True
    assert reader.fields()["description"] == "Failed to get video"


def test_only_the_top_level_text_is_kept():
    """A 20 MB nested value leaves a few bytes of top-level text behind."""
    reader = JobStatusReader()
    reader.feed(b'{"annotations": [')
    chunk = b'{"frame_num": 1, "objects": [{"keypoints": [1.5, 2.5, 0.9]}]}, ' * 10_000
    for _ in range(30):
        reader.feed(chunk)
    reader.feed(b'{"frame_num": 2, "objects": []}], "job_id": "j", "status": "success"}')
    assert reader.fields()["status"] == "success" and len(reader._top) < 100


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "is empty"),
        (b"[1, 2]", "not a JSON object"),
        (b"<html><body>502 Bad Gateway</body></html>", "not a JSON object"),
        (b'"just a string"', "not a JSON object"),
        (b'{"status": "success"', "before its JSON object was complete"),
        (b'{"annotations": [1, 2', "before its JSON object was complete"),
        (b'{"a": 1}}', "after the end"),
        (b'{"a": 1} trailing', "after the end"),
        (b'{"a" 1}', "malformed"),
        (b'{"a": 1 "b": 2}', "malformed"),
    ],
)
def test_bodies_that_are_not_one_json_object(body, says):
    with pytest.raises(KakaoPoseResponseError, match=says):
        read_status(body, "GET /pose/job/x")


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=12),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
            max_leaves=8,
        ),
        max_size=5,
    ),
    st.sampled_from(["waiting", "processing", "success", "failed", "not found"]),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=30),
)
def test_any_object_in_any_chunks(fields, status, sizes):
    body = {**fields, "status": status}
    raw = json.dumps(body).encode()
    chunks, pos = [], 0
    for size in sizes * (len(raw) // sum(sizes) + 1):
        chunks.append(raw[pos : pos + size])
        pos += size
    got = read(chunks)
    assert got["status"] == status
    assert got.items() <= expected(body).items()


@pytest.mark.parametrize("size", [0, 1, 4095, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 5])
def test_mark_finder_matches_the_translate_table(size):
    """The vectorised mark finder (both scanners use it) finds exactly the bytes of ``MARKS``, whatever the
    bytes (``|`` and non-ASCII bytes share bits with the marks) and whether a chunk spans several blocks."""
    import numpy as np

    from airflow_provider_kakaopose._jsonmarks import MARKS, MarkFinder

    rng = np.random.default_rng(size)
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    finder = MarkFinder()
    for chunk in (data, data[: size // 2], b'{"a": [1, "|\\\\"]}|'):
        idx, chars = finder.find(chunk)
        expected = np.flatnonzero(np.frombuffer(chunk.translate(MARKS), np.bool_))
        assert np.array_equal(idx, expected)
        assert bytes(chars) == bytes(chunk[i] for i in expected.tolist())
