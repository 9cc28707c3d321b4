"""What the tables tests share: the service's sample bodies, a video answer builder and a tolerant comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path

#: The service guide's sample bodies (a copy in the repository).
SAMPLES = Path(__file__).parents[1] / "data" / "samples"


def sample(name: str) -> bytes:
    """The bytes of one sample body."""
    return (SAMPLES / name).read_bytes()


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


#: Formattings of the same JSON the service might send (json.dumps keyword arguments).
FORMATS = {
    "default": {},
    "compact": {"separators": (",", ":")},
    "indent": {"indent": 2},
    "tabs": {"indent": "\t"},
}
