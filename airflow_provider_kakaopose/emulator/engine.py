"""A real pose model behind the emulator: MediaPipe BlazePose, run on this machine's CPU.

``python -m airflow_provider_kakaopose.emulator --engine mediapipe`` answers ``POST /pose`` and video jobs with
poses computed by MediaPipe's BlazePose (``mediapipe==0.10.14``, whose wheel bundles the pose models, so
nothing is downloaded). That package needs protobuf < 5 while Airflow's current dependencies need >= 5, so it
lives in its own environment (``make engine`` creates ``.venv-engine``); the provider never imports it.

This module imports neither mediapipe nor numpy at import time: :func:`person_from_landmarks` (the mapping of
BlazePose's 33 landmarks onto the service's 17 COCO keypoints) is pure Python and tested in the Airflow
environment too. ``python -m airflow_provider_kakaopose.emulator.engine samples DIR`` writes the sample
photos and a synthetic video (see docs/engine.md).
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from airflow_provider_kakaopose.validation import DEFAULT_LIMITS, Limits

from . import synth

#: Engines the emulator can answer with.
ENGINE_NAMES = ("synthetic", "mediapipe")
#: The mediapipe release this engine is written and tested against (its wheel still bundles the pose models).
MEDIAPIPE_VERSION = "0.10.14"
#: BlazePose landmark index of each of the service's 17 keypoints, in the service's order (nose, left_eye,
#: right_eye, left_ear, right_ear, shoulders, elbows, wrists, hips, knees, ankles; left before right).
BLAZEPOSE_TO_COCO: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
BLAZEPOSE_LANDMARKS = 33
#: The service analyses only the first 30 seconds of a video.
MAX_VIDEO_SECONDS = 30.0
#: What the engine tells about itself in a video result's ``info`` and in the ``X-Pose-Engine`` header.
ENGINE_INFO = {
    "engine": "mediapipe",
    "engine_model": "BlazePose full (model_complexity=1), mediapipe " + MEDIAPIPE_VERSION,
    "max_persons": 1,
    "description": "Human pose estimation by a local MediaPipe BlazePose engine (at most one person per frame)",
}


class EngineUnavailable(RuntimeError):
    """The engine's packages are missing or the wrong version (run ``make engine``)."""


class EngineInputError(ValueError):
    """An image or video the engine cannot read; the message is the answer's ``msg`` / job ``description``."""


def person_from_landmarks(landmarks: Sequence[Sequence[float]], width: int, height: int) -> dict | None:
    """One Person in the service's layout from BlazePose's 33 ``(x, y, visibility)`` (x, y normalised to 0..1).

    - keypoints: the 17 COCO landmarks in the service's order, in pixels (``x * width``, ``y * height``),
      score = the landmark's visibility; a landmark outside the image (BlazePose also guesses those) or
      with visibility that rounds to 0 is ``0, 0, 0`` (not detected), as the service answers.
    - bbox ``[x, y, w, h]``: the box around all 33 landmarks (hands and feet included), clipped to the image;
      ``area`` = w * h.
    - score: the mean of the 17 keypoint scores (undetected ones count 0), so a person half out of the frame
      scores lower.

    ``None`` when no keypoint lies inside the image.
    """
    if len(landmarks) != BLAZEPOSE_LANDMARKS:
        raise ValueError(f"expected {BLAZEPOSE_LANDMARKS} BlazePose landmarks, got {len(landmarks)}")
    keypoints: list[float] = []
    total = 0.0
    found = False
    for i in BLAZEPOSE_TO_COCO:
        x, y, vis = landmarks[i]
        px, py, score = x * width, y * height, round(min(max(vis, 0.0), 1.0), 4)
        if 0.0 <= px < width and 0.0 <= py < height and score > 0.0:
            keypoints += (round(px, 2), round(py, 2), score)
            total += score
            found = True
        else:
            keypoints += (0.0, 0.0, 0.0)
    if not found:
        return None
    xs = [min(max(lm[0] * width, 0.0), float(width)) for lm in landmarks]
    ys = [min(max(lm[1] * height, 0.0), float(height)) for lm in landmarks]
    x0, y0 = min(xs), min(ys)
    w, h = max(xs) - x0, max(ys) - y0
    return {
        "area": round(w * h, 4),
        "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
        "category_id": 1,
        "keypoints": keypoints,
        "score": round(total / len(BLAZEPOSE_TO_COCO), 4),
    }


def _import_mediapipe() -> Any:
    """``mediapipe.solutions.pose``, quietly, or :class:`EngineUnavailable` saying how to get it."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mediapipe
            from mediapipe.python.solutions import pose as mp_pose
    except ImportError as err:
        raise EngineUnavailable(
            f"the mediapipe engine needs mediapipe=={MEDIAPIPE_VERSION} in this Python environment ({err}); "
            "create its own environment with `make engine` (it cannot share Airflow's: protobuf < 5)"
        ) from err
    version = getattr(mediapipe, "__version__", "?")
    if version != MEDIAPIPE_VERSION:
        raise EngineUnavailable(
            f"the mediapipe engine is built for mediapipe=={MEDIAPIPE_VERSION}, found {version} "
            "(later 0.10.x wheels do not bundle the pose models); run `make engine`"
        )
    return mp_pose


class MediaPipeEngine:
    """BlazePose on the CPU. Thread-safe: each thread gets its own image graph; each video job its own graph.

    :param min_detection_confidence: BlazePose's person-detector threshold (below it: no person, ``[]``).
    :param min_tracking_confidence: in videos, below this the detector runs again instead of tracking.
    """

    name = "mediapipe"

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5) -> None:
        self._mp_pose = _import_mediapipe()
        import cv2  # comes with mediapipe (opencv-contrib-python)

        self._cv2 = cv2
        self._detect = float(min_detection_confidence)
        self._track = float(min_tracking_confidence)
        self._local = threading.local()
        self._graphs: list[Any] = []
        self._graphs_lock = threading.Lock()

    def _graph(self, static: bool, smoothing: bool = True) -> Any:
        """A new BlazePose graph: ``static`` for independent images, else tracking across a video's frames."""
        return self._mp_pose.Pose(
            static_image_mode=static,
            model_complexity=1,  # the only landmark model the 0.10.14 wheel bundles
            smooth_landmarks=smoothing,
            enable_segmentation=False,
            min_detection_confidence=self._detect,
            min_tracking_confidence=self._track,
        )

    def _image_graph(self) -> Any:
        graph = getattr(self._local, "graph", None)
        if graph is None:
            graph = self._local.graph = self._graph(static=True)
            with self._graphs_lock:
                self._graphs.append(graph)
        return graph

    def close(self) -> None:
        """Release the per-thread image graphs."""
        with self._graphs_lock:
            graphs, self._graphs = self._graphs, []
        for graph in graphs:
            graph.close()

    def decode_image(self, data: bytes) -> Any:
        """RGB pixels (H x W x 3 uint8) of JPEG/PNG/WebP bytes; :class:`EngineInputError` if unreadable."""
        import numpy as np

        cv2 = self._cv2
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)  # applies EXIF rotation
        if pixels is None:
            raise EngineInputError("the local engine cannot decode this image (it reads JPEG, PNG and WebP; not HEIC)")
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)

    def persons(self, rgb: Any, graph: Any | None = None) -> list[dict]:
        """The Person list of one RGB frame (at most one person)."""
        result = (graph or self._image_graph()).process(rgb)
        if result.pose_landmarks is None:
            return []
        height, width = rgb.shape[:2]
        person = person_from_landmarks(
            [(lm.x, lm.y, lm.visibility) for lm in result.pose_landmarks.landmark], width, height
        )
        return [] if person is None else [person]

    def image_persons(self, data: bytes) -> list[dict]:
        """``POST /pose``'s answer for an image's bytes."""
        return self.persons(self.decode_image(data))

    def video_annotations(
        self,
        path: str,
        smoothing: bool = True,
        limits: Limits | None = DEFAULT_LIMITS,
        max_seconds: float = MAX_VIDEO_SECONDS,
        on_frame: Callable[[int], None] | None = None,
    ) -> tuple[list[dict], dict]:
        """``(annotations, video)`` of a video file: one annotation per frame of its first ``max_seconds``.

        ``smoothing`` is BlazePose's landmark smoothing across frames. ``limits`` (``None`` = unchecked) are
        the service's side and aspect rules, checked on the decoded frame size. Raises
        :class:`EngineInputError` for a file OpenCV cannot decode or a frame size the service would refuse.
        """
        cv2 = self._cv2
        cap = cv2.VideoCapture(path)
        try:
            if not cap.isOpened():
                raise EngineInputError("Failed to decode video: not a video format the local engine can read")
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            if not (math.isfinite(fps) and fps > 0):
                fps = 30.0
            last = max(1, math.floor(max_seconds * fps + 1e-6))  # frames analysed at most
            annotations: list[dict] = []
            width = height = 0
            graph = self._graph(static=False, smoothing=smoothing)
            try:
                while len(annotations) < last:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    if not annotations:
                        height, width = frame.shape[:2]
                        if limits is not None and (problems := _frame_problems(width, height, limits)):
                            raise EngineInputError("Failed to process video: " + "; ".join(problems))
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    annotations.append({"frame_num": len(annotations), "objects": self.persons(rgb, graph)})
                    if on_frame is not None:
                        on_frame(len(annotations))
            finally:
                graph.close()
            if not annotations:
                raise EngineInputError("Failed to decode video: no frame could be read")
        finally:
            cap.release()
        fps_out: float | int = int(fps) if fps.is_integer() else round(fps, 3)
        return annotations, {"fps": fps_out, "frames": len(annotations), "height": height, "width": width}

    def video_result_bytes(
        self, job_id: str, path: str, smoothing: bool = True, limits: Limits | None = DEFAULT_LIMITS
    ) -> bytes:
        """The whole JSON body of a successful job, in the service's layout, ``info`` naming the engine.

        ``limits``: as in :meth:`video_annotations` (``None`` = frame size unchecked).
        """
        annotations, video = self.video_annotations(path, smoothing, limits)
        body = {
            "annotations": annotations,
            "categories": synth.CATEGORIES,
            "info": {**synth.INFO, **ENGINE_INFO},
            "job_id": job_id,
            "status": "success",
            "video": video,
        }
        return json.dumps(body).encode()


def _frame_problems(width: int, height: int, limits: Limits) -> list[str]:
    long, short = max(width, height), min(width, height)
    problems = []
    if long > limits.max_long_side:
        problems.append(f"the video is {width}x{height}; the longer side must be at most {limits.max_long_side} px")
    if short < limits.min_short_side:
        problems.append(f"the video is {width}x{height}; the shorter side must be at least {limits.min_short_side} px")
    if short and long / short > limits.max_aspect_ratio + 1e-9:
        problems.append(f"the video is {width}x{height}; the aspect ratio must be between 16:9 and 9:16")
    return problems


def make_engine(name: str) -> MediaPipeEngine | None:
    """The engine called ``name``: ``None`` for the synthetic one (the emulator's own), else a loaded model."""
    if name == "synthetic":
        return None
    if name == "mediapipe":
        return MediaPipeEngine()
    raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINE_NAMES)}")
