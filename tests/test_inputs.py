"""What the operators read from their templated inputs: a list rendered to text by a Jinja template (issue 21)."""

from __future__ import annotations

import importlib
import json
import sys

import pyarrow.parquet as pq
import pytest
from airflow_versions import prepare_dag_test
from helpers import context, use_emulator_as_default_conn
from test_batches import ti_context

from airflow_provider_kakaopose.exceptions import KakaoPoseInputError
from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator, KakaoPoseVideoOperator

FIXES = ("render_template_as_native_obj=True", "images=read_urls.output", "images=read_urls() in TaskFlow")


def items(images) -> list:
    return KakaoPoseImageOperator(task_id="i", images=images, output_uri="/tmp/never.parquet")._items()


# ------------------------------------------------------------------------------------- parsing rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "['https://example.com/a.jpg', 'https://example.com/b.jpg']",
            ["https://example.com/a.jpg", "https://example.com/b.jpg"],
        ),
        # commas and quotes inside the items: read as Python literals, never split on commas
        (
            "['https://example.com/a,b.jpg?size=640,480', \"/data/it's, here.png\"]",
            ["https://example.com/a,b.jpg?size=640,480", "/data/it's, here.png"],
        ),
        ("['/data/my photos/a 1.jpg', '/data/b.jpg']", ["/data/my photos/a 1.jpg", "/data/b.jpg"]),
        ('["https://example.com/a.jpg", "/data/b c.jpg"]', ["https://example.com/a.jpg", "/data/b c.jpg"]),  # JSON
        ('["https:\\/\\/example.com\\/a.jpg"]', ["https://example.com/a.jpg"]),  # JSON's escaped slashes
        ("  ['s3://conn@bucket/a.jpg']\n", ["s3://conn@bucket/a.jpg"]),  # whitespace around, one item
        ("('https://example.com/a.jpg', 'https://example.com/b.jpg')", None),  # a tuple's text: not a list
    ],
)
def test_a_rendered_list_is_read_as_the_list(text, expected, capsys):
    got = items(text)
    if expected is None:  # does not start with "[": one item, as before
        assert got == [text]
        return
    assert got == expected
    logged = capsys.readouterr().out
    assert "read it as that list" in logged or not logged  # the INFO line (Airflow 3 logs to stdout)


@pytest.mark.parametrize(
    "text",
    [
        "['https://example.com/a.jpg', 'https://exa",  # cut short
        "[https://example.com/a.jpg, https://example.com/b.jpg]",  # no quotes: neither Python nor JSON
        "[1, 2]",  # not strings
        "[['a.jpg']]",
        "[{'url': 'a.jpg'}]",
    ],
)
def test_text_that_starts_like_a_list_but_is_not_one_is_refused_naming_the_fixes(text, emulator):
    with pytest.raises(KakaoPoseInputError) as info:
        items(text)
    message = str(info.value)
    assert "starts with '['" in message and all(fix in message for fix in FIXES), message
    assert emulator.count() == 0


def test_a_plain_string_a_path_and_an_empty_list():
    assert items("https://example.com/a.jpg") == ["https://example.com/a.jpg"]
    assert items("/data/photos [2024]/a.jpg") == ["/data/photos [2024]/a.jpg"]  # "[" not first
    with pytest.raises(KakaoPoseInputError, match="one or more URLs or paths"):
        items("[]")


def test_a_file_whose_name_starts_with_a_bracket_is_still_a_path(tmp_path):
    path = tmp_path / "[2024] a.png"
    path.write_bytes(b"x")
    assert items(str(path)) == [str(path)]
    named = tmp_path / "['a.png']"
    named.write_bytes(b"x")
    assert items(str(named)) == [str(named)]


def test_the_log_line_says_the_text_was_read_as_a_list_and_how_to_avoid_it(emulator, make_conn, tmp_path, capsys):
    from helpers import caplog_text

    op = KakaoPoseImageOperator(
        task_id="i",
        images=str(["https://example.com/a.jpg", "https://example.com/b.jpg"]),
        output_uri=str(tmp_path / "k.parquet"),
        kakao_pose_conn_id=make_conn(),
    )
    summary = op.execute(ti_context())
    assert (summary["images"], summary["succeeded"]) == (2, 2)
    logged = capsys.readouterr().out + "".join(caplog_text())
    assert "images was rendered to the text of a list; read it as that list of 2 item(s)" in logged
    assert all(fix in logged for fix in FIXES)
    assert sorted(r.fields["image_url"] for r in emulator.requests) == [
        "https://example.com/a.jpg",
        "https://example.com/b.jpg",
    ]


@pytest.mark.parametrize("video", ["['https://example.com/a.mp4']", ["https://example.com/a.mp4"]])
def test_a_video_operator_refuses_a_list_before_sending(emulator, make_conn, tmp_path, video):
    op = KakaoPoseVideoOperator(
        task_id="v", video=video, output_uri=str(tmp_path / "v.parquet"), kakao_pose_conn_id=make_conn()
    )
    with pytest.raises(KakaoPoseInputError, match=r"a video operator takes one video: for many, map it") as info:
        op.execute(context())
    assert ".expand(video=read_urls.output)" in str(info.value)
    assert emulator.count() == 0


# ------------------------------------------------------------------------------------ under dag.test()


@pytest.fixture
def run_rendered(airflow_db, emulator, monkeypatch, tmp_path):
    use_emulator_as_default_conn(monkeypatch, emulator)
    monkeypatch.setenv("KAKAO_POSE_OUTPUT", str(tmp_path / "out"))
    sys.modules.pop("kakao_pose_test_rendered_list", None)  # re-read the environment
    module = importlib.import_module("kakao_pose_test_rendered_list")

    def run(dag):
        prepare_dag_test(dag)
        return dag.test()

    return module, run, tmp_path / "out"


def test_a_list_from_an_upstream_task_through_a_template_under_dag_test(run_rendered, emulator):
    """``images="{{ ti.xcom_pull(task_ids='read_urls') }}"`` in a DAG that renders strings: the list's text is
    read as the list (it was one input, "['https://…', …]", that failed: "Cannot read input")."""
    module, run, out = run_rendered
    dag_run = run(module.dag)
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"read_urls": "success", "rendered": "success", "passed": "success"}, states
    for name in ("rendered", "passed"):
        sources = json.loads(pq.read_schema(out / f"{name}.parquet").metadata[b"kakaopose:sources"])
        assert sorted(sources) == sorted(module.URLS), (name, sources)
    sent = [r.fields["image_url"] for r in emulator.requests if r.path == "/pose"]
    assert sorted(sent) == sorted(module.URLS * 2)


def test_a_dag_that_renders_native_objects_hands_the_list_over(run_rendered, emulator):
    module, run, out = run_rendered
    dag_run = run(module.native_dag)
    assert dag_run.state == "success"
    sources = json.loads(pq.read_schema(out / "native.parquet").metadata[b"kakaopose:sources"])
    assert sorted(sources) == sorted(module.URLS)
