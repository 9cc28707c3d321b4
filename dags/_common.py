"""Settings shared by the example DAGs: where inputs come from and where the Parquet lands.

Everything can be changed with environment variables, so the same DAGs run against the bundled emulator
(the default, used by ``make demo`` and the tests) and against the real API with a real key.
"""

from __future__ import annotations

import os

import pendulum

#: Root folder or URI for the Parquet outputs (local path, file://, s3://conn_id@bucket/prefix, ...).
OUTPUT_ROOT = os.environ.get("KAKAO_POSE_OUTPUT", "/tmp/kakao_pose_output").rstrip("/")


def _list_from_env(name: str, default: str) -> list[str]:
    """A comma-separated list from the environment variable ``name`` (``default`` when unset)."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


#: Images to analyse: comma-separated URLs or paths. The emulator makes up people for any URL.
IMAGES = _list_from_env(
    "KAKAO_POSE_DEMO_IMAGES",
    "https://example.com/pose/street.jpg,https://example.com/pose/dance.jpg,https://example.com/pose/park.jpg",
)

#: Videos to analyse. The emulator reads ``frames``/``persons`` knobs from the URL's query.
VIDEOS = _list_from_env(
    "KAKAO_POSE_DEMO_VIDEOS",
    "https://example.com/pose/walk.mp4?frames=90&persons=2,https://example.com/pose/jump.mp4?frames=60&persons=1",
)

#: Seconds between job status checks (the emulator finishes jobs in a couple of seconds).
POLL_INTERVAL = float(os.environ.get("KAKAO_POSE_POLL_INTERVAL", "2"))

#: Deterministic per run: a rerun of the same logical date replaces its output. A run without a logical date
#: (Airflow 3: `airflow dags trigger` without --logical-date) uses the day it was due (run_after).
RUN_DIR = "{{ dag.dag_id }}/{{ ds_nodash if ds_nodash is defined else dag_run.run_after | ds_nodash }}"

#: Asset updated by the video example each time it lands a table; downstream DAGs can be scheduled on it.
POSE_VIDEO_ASSET_URI = (
    f"{OUTPUT_ROOT}/kakao_pose_video" if "://" in OUTPUT_ROOT else f"file://{OUTPUT_ROOT}/kakao_pose_video"
)

#: The local pose engine (docs/engine.md): its connection and the folder holding its sample photos and video
#: (``python -m airflow_provider_kakaopose.emulator.samples DIR`` writes them; ``make demo-engine`` does it all).
ENGINE_CONN_ID = os.environ.get("KAKAO_POSE_ENGINE_CONN_ID", "kakao_pose_engine")
ENGINE_SAMPLES = os.environ.get("KAKAO_POSE_ENGINE_SAMPLES", "/tmp/kakao_pose_engine_samples").rstrip("/")

#: What every example DAG shares: run on demand (or on its asset), from a fixed start, never catching up.
EXAMPLE_DAG_ARGS = {
    "schedule": None,
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "catchup": False,
    "tags": ["kakao-pose", "example"],
}
