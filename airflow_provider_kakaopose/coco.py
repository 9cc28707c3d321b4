"""The COCO person category the Pose API answers with: keypoint names and skeleton.

No imports at all: the tables, the pictures and the emulator (which must not import Airflow) share it.
"""

from __future__ import annotations

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
