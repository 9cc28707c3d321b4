"""Tests for :mod:`airflow_provider_kakaopose.tables.schema`: the columns, types and the checks of an answer's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import random_person as person
from tables_cases import sample, video

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
    keypoints_reader,
    keypoints_table,
)

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
    doc = (Path(__file__).parents[2] / "docs" / "tables.md").read_text()
    section = doc.split("## Columns", 1)[1].split("Rules:", 1)[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines() if line.startswith("| `")]
    names = {"float": "float32", "double": "float64"}

    def arrow_type(t: pa.DataType) -> str:
        if pa.types.is_dictionary(t):
            return f"dictionary<{t.index_type}, {t.value_type}>"
        return names.get(str(t), str(t))

    documented = [(r[0].strip("`"), r[1]) for r in rows]
    assert documented == [(f.name, arrow_type(f.type)) for f in tables.keypoints_schema()]


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
