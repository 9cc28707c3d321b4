"""What the published package declares and needs.

- Pillow and pandas are optional extras (``pictures``, ``pandas``): the default path — an image batch and a video
  with tracking (``track_people=True``, the default), no pictures — runs in a process where neither can be
  imported, and ``pictures=True`` without Pillow fails before any request is sent, naming the extra.
- pyproject.toml: test and tool requirements live in dependency groups, never in the published extras; the
  version has a changelog section.

The runs without Pillow or pandas are subprocesses where a finder placed first on ``sys.meta_path`` before
anything is imported makes ``import PIL`` (``import pandas``) fail as if it were not installed; they talk to the
test's emulator through the ``AIRFLOW_CONN_…`` variable ``make_conn`` sets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest
from helpers import API_KEY, ROOT, image_bytes

VIDEO_URL = "https://example.com/walk.mp4?frames=12&persons=2"

#: Prepended to every script: block the modules, then a task context like tests/test_operators.py's.
PRELUDE = textwrap.dedent(
    """
    import json, sys

    BLOCKED = tuple(json.loads(sys.argv[1]))


    # A finder that says the blocked packages are not installed. Not sys.modules[name] = None: Cython's import
    # fast path (pyarrow's pandas shim among others) takes a None found there for the module.
    class Block:

        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None


    sys.meta_path.insert(0, Block)


    class Store:  # Airflow 3.3's task state store
        def __init__(self):
            self.data = {}

        def get(self, key, default=None):
            return self.data.get(key, default)

        def set(self, key, value, *, retention=None):
            self.data[key] = value


    class TI:
        dag_id, run_id, task_id, map_index = "packaging", "run", "task", -1
        max_tries, try_number = 0, 1

        def __init__(self):
            self.xcom = {}

        def xcom_push(self, key, value):
            self.xcom[key] = value

        def get_first_reschedule_date(self, context):
            return None


    def context():
        return {"ti": TI(), "task_state_store": Store()}


    args = json.loads(sys.argv[2])
    """
)


def run_blocked(blocked: list[str], script: str, args: dict) -> dict:
    """Run ``script`` (after PRELUDE) in a fresh interpreter with ``blocked`` modules unimportable; it prints
    one JSON line last, returned here."""
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script), json.dumps(blocked), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=os.environ.copy(),  # AIRFLOW_HOME, the test connection, ... (set by conftest and make_conn)
    )
    output = result.stdout + result.stderr
    assert API_KEY not in output, "the API key leaked into the subprocess's output"
    assert result.returncode == 0, output[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


PICTURES_WITHOUT_PILLOW = """
from airflow_provider_kakaopose.exceptions import KakaoPoseInputError
from airflow_provider_kakaopose.operators.pose import (
    KakaoPoseImageOperator,
    KakaoPoseJobToParquetOperator,
    KakaoPoseVideoOperator,
)

common = {"kakao_pose_conn_id": args["conn_id"], "pictures": True}
operators = {
    "image": KakaoPoseImageOperator(
        task_id="i", images=["https://example.com/1.jpg"], output_uri=args["out"] + "/i/k.parquet", **common
    ),
    "video": KakaoPoseVideoOperator(
        task_id="v", video=args["video"], output_uri=args["out"] + "/v/k.parquet", deferrable=False, **common
    ),
    "load": KakaoPoseJobToParquetOperator(
        task_id="l", job_id="some-job", output_uri=args["out"] + "/l/k.parquet", **common
    ),
}
errors = {}
for name, op in operators.items():
    try:
        op.execute(context())
    except KakaoPoseInputError as err:
        errors[name] = str(err)
    else:
        errors[name] = None
print(json.dumps({"errors": errors}))
"""


def test_pictures_without_pillow_fail_before_sending(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    out = tmp_path / "out"
    seen = run_blocked(["PIL"], PICTURES_WITHOUT_PILLOW, {"conn_id": conn_id, "out": str(out), "video": VIDEO_URL})
    assert set(seen["errors"]) == {"image", "video", "load"}
    for name, message in seen["errors"].items():
        assert message is not None, f"{name}: pictures=True without Pillow did not fail"
        assert "pip install 'airflow-provider-kakaopose[pictures]'" in message, (name, message)
        assert "Pillow" in message, (name, message)
    assert emulator.requests == []  # nothing sent: no image, no job submitted, no job fetched
    assert not out.exists()  # nothing written or claimed either


DEFAULT_PATH = """
import pyarrow.parquet as pq

from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator, KakaoPoseVideoOperator

images = KakaoPoseImageOperator(
    task_id="i",
    images=[args["photo"], "https://example.com/1.jpg", "https://example.com/2.jpg"],
    output_uri=args["out"] + "/images/keypoints.parquet",
    kakao_pose_conn_id=args["conn_id"],
).execute(context())
ctx = context()
video = KakaoPoseVideoOperator(
    task_id="v",
    video=args["video"],
    output_uri=args["out"] + "/video/keypoints.parquet",
    deferrable=False,
    poll_interval=0.1,
    kakao_pose_conn_id=args["conn_id"],
)
assert video.track_people  # the default
video.execute(ctx)
image_table = pq.read_table(args["out"] + "/images/keypoints.parquet")
video_table = pq.read_table(args["out"] + "/video/keypoints.parquet")
loaded = [name for name in ("PIL", "pandas") if name in sys.modules]
print(json.dumps({
    "images": images,
    "image_rows": image_table.num_rows,
    "image_sources": sorted(set(image_table["source"].to_pylist())),
    "video_rows": video_table.num_rows,
    "tracks": len(set(video_table["track_id"].to_pylist())),
    "summary": ctx["ti"].xcom["summary"],
    "loaded": loaded,
}, default=str))
"""


def test_default_path_needs_neither_pillow_nor_pandas(emulator, make_conn, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(640, 480))
    args = {"conn_id": make_conn(), "out": str(tmp_path / "out"), "photo": str(photo), "video": VIDEO_URL}
    seen = run_blocked(["PIL", "pandas"], DEFAULT_PATH, args)
    assert seen["loaded"] == []
    assert seen["image_rows"] > 0
    assert seen["image_sources"] == sorted([str(photo), "https://example.com/1.jpg", "https://example.com/2.jpg"])
    assert seen["video_rows"] > 0
    assert seen["tracks"] >= 2  # track_id assigned (scipy, a required dependency)
    assert "pictures" not in seen["summary"]
    assert emulator.count("POST", "/pose") == 3 and emulator.count("POST", "/pose/job") == 1


LIBRARY_WITHOUT_EXTRAS = """
import importlib
import pkgutil

import airflow_provider_kakaopose

found = pkgutil.walk_packages(airflow_provider_kakaopose.__path__, "airflow_provider_kakaopose.")
modules = [m.name for m in found if not m.name.endswith(".__main__")]
for name in modules:  # every module imports without them (the emulator's engine loads mediapipe only when used)
    importlib.import_module(name)

from airflow_provider_kakaopose import render
from airflow_provider_kakaopose.tables import keypoints_table, read_keypoints, to_coco, write_parquet

person = {"keypoints": [v for i in range(17) for v in (10.0 + i, 20.0 + i, 0.9)], "bbox": [0, 0, 50, 80],
          "score": 0.9, "area": 4000.0, "category_id": 1}
table = keypoints_table([person], source="a.png")
path = args["out"] + "/k.parquet"
write_parquet(table, path)
errors = {}
for name, call in {
    "draw_frame": lambda: render.draw_frame(table),
    "write_pictures": lambda: render.write_pictures(table, path),
    "read_keypoints": lambda: read_keypoints(path),
    "to_coco_of_other": lambda: to_coco([1, 2, 3]),
}.items():
    try:
        call()
    except ModuleNotFoundError as err:
        errors[name] = str(err)
print(json.dumps({"errors": errors, "persons": len(to_coco(table)), "modules": modules}))
"""


def test_library_names_the_missing_extra(tmp_path):
    seen = run_blocked(["PIL", "pandas"], LIBRARY_WITHOUT_EXTRAS, {"out": str(tmp_path)})
    assert "airflow_provider_kakaopose.operators.pose" in seen["modules"] and len(seen["modules"]) > 20
    assert seen["persons"] == 1  # to_coco of a pyarrow.Table needs no pandas
    errors = seen["errors"]
    for name in ("draw_frame", "write_pictures"):
        assert "pip install 'airflow-provider-kakaopose[pictures]'" in errors[name], errors
    for name in ("read_keypoints", "to_coco_of_other"):
        assert "pip install 'airflow-provider-kakaopose[pandas]'" in errors[name], errors


# --------------------------------------------------------------------------------------------- pyproject


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower() for line in requirements}


def test_published_requirements_hold_no_test_or_tool(pyproject):
    project = pyproject["project"]
    assert set(project["optional-dependencies"]) == {"redis", "pictures", "pandas", "all"}
    published = _names(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        published |= _names(extra)
    tools = {"pytest", "hypothesis", "ruff", "duckdb", "moto", "s3fs", "mediapipe", "build", "twine", "asyncpg"}
    tools |= {"motmetrics", "norfair"}  # the tracker's scoring and its benchmark's anchor
    assert not published & tools
    required = _names(project["dependencies"])
    assert "scipy" in required  # tracking, on by default in the video operators
    assert not required & {"pillow", "pandas", "redis"}
    groups = pyproject["dependency-groups"]
    assert {"test", "test-s3", "cluster", "engine", "dist", "tracking-eval", "tracking-anchor"} <= set(groups)
    assert "mediapipe" in _names(groups["engine"])


def test_version_has_a_changelog_section():
    from airflow_provider_kakaopose import __version__
    from airflow_provider_kakaopose.get_provider_info import get_provider_info

    assert get_provider_info()["versions"][0] == __version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(__version__)}\b", changelog, re.M), f"CHANGELOG.md has no ## {__version__}"
