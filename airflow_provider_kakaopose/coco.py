"""The COCO person category the Pose API answers with (keypoint names and skeleton), the frame-number runs, and
the decoding of a keypoints table's ``kakaopose:*`` schema metadata.

Standard library only: the tables, the pictures and the emulator (which must not import Airflow) share it.
"""

from __future__ import annotations

import json
from typing import Any

#: The 17 keypoint names, in id order (id = index + 1).
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

#: The 19 limbs as pairs of keypoint ids, as in the service's ``categories[0].skeleton``.
SKELETON: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 3),
    (2, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
    (6, 7),
    (6, 8),
    (6, 12),
    (7, 9),
    (7, 13),
    (8, 10),
    (9, 11),
    (12, 13),
    (14, 12),
    (15, 13),
    (16, 14),
    (17, 15),
)


def frame_runs(frame_nums: list[int]) -> list[list[int]] | None:
    """Encode a video answer's increasing frame numbers for the ``kakaopose:frame_nums`` metadata.

    ``None`` when they are ``0, 1, …, n-1`` (the usual case: the count alone says it); else runs
    ``[first, step, count]`` of evenly spaced numbers, e.g. ``[5, 6, 7, 20, 30]`` → ``[[5, 1, 3], [20, 10, 2]]``
    (every 3rd frame of an hour at 30 fps is one run). Inverse of :func:`expand_frame_runs`.
    """
    n = len(frame_nums)
    if n == 0 or (frame_nums[0] == 0 and frame_nums[-1] == n - 1):  # increasing from 0: exactly 0..n-1
        return None
    runs: list[list[int]] = []
    i = 0
    while i < n:
        first = frame_nums[i]
        if i + 1 == n:
            runs.append([first, 1, 1])
            break
        step = frame_nums[i + 1] - first
        j = i + 1
        while j + 1 < n and frame_nums[j + 1] - frame_nums[j] == step:
            j += 1
        runs.append([first, step, j - i + 1])
        i = j + 1
    return runs


def expand_frame_runs(runs: list[list[int]]) -> list[int]:
    """The frame numbers of ``kakaopose:frame_nums`` runs (see :func:`frame_runs`).

    :raises ValueError: the runs are not ``[first, step, count]`` integer triples (``step``, ``count`` > 0)
        giving strictly increasing numbers from 0 up.
    """
    out: list[int] = []
    for run in runs:
        if not isinstance(run, (list, tuple)) or len(run) != 3 or any(type(v) is not int for v in run):
            raise ValueError(f"a frame run must be [first, step, count] integers, got {run!r:.80}")
        first, step, count = run
        if step < 1 or count < 1 or first < (out[-1] + 1 if out else 0):
            raise ValueError(f"frame runs must give increasing frame numbers from 0 up, got {run!r}")
        out.extend(range(first, first + step * count, step))
    return out


#: The prefix of a keypoints table's schema metadata keys (``kakaopose:video``, ``kakaopose:skeleton``, …).
METADATA_PREFIX = "kakaopose:"


def decode_metadata(metadata: dict | None, *, skip_invalid: bool = False) -> dict[str, Any]:
    """The ``kakaopose:*`` entries of a schema's metadata (``bytes`` or ``str`` keys), JSON-decoded, by key without
    the prefix: ``{b"kakaopose:video": b'{"fps": 30}'}`` → ``{"video": {"fps": 30}}``.

    :param skip_invalid: leave out a value that is not valid JSON (or not UTF-8) instead of raising
        ``ValueError`` (the pictures draw what they can from a damaged file).
    """
    out: dict[str, Any] = {}
    for k, v in (metadata or {}).items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        if key.startswith(METADATA_PREFIX):
            try:
                out[key[len(METADATA_PREFIX) :]] = json.loads(v)
            except ValueError:
                if not skip_invalid:
                    raise
    return out
