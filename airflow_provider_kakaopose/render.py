"""Draw pose skeletons from a keypoints table: single frames, PNG contact sheets and animated GIFs.

The input is a keypoints table as built by :mod:`airflow_provider_kakaopose.tables` (a ``pyarrow.Table``,
the pandas DataFrame of ``read_keypoints``, or the URI of a written Parquet file). The API, the palette and
the exact rules are documented in ``docs/render.md``.

This module is pure (no Airflow import) and cheap to import: Pillow, numpy and pyarrow are imported inside
the functions. Only the writing helpers (and a table passed as a URI) import :mod:`tables` for its storage
resolution, which loads Airflow's exception class when Airflow is installed. Pillow is optional (the ``pictures``
extra): without it, drawing raises ModuleNotFoundError naming the extra (:func:`require_pillow`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlsplit

from airflow_provider_kakaopose.coco import SKELETON, decode_metadata, expand_frame_runs

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = [
    "BLANK_COLOR",
    "DEFAULT_THRESHOLD",
    "MAX_CANVAS_SIDE",
    "PALETTE",
    "UNTRACKED_COLOR",
    "animate",
    "color_for",
    "contact_sheet",
    "draw_frame",
    "save_image",
    "save_png",
    "write_pictures",
]

#: The service's own sample draws keypoints whose score is at least 0.2.
DEFAULT_THRESHOLD = 0.2

#: Person colours (Tableau 10): ``PALETTE[id % 10]`` for a ``track_id`` (or, without one, a ``person_idx``).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (78, 121, 167),  # blue
    (242, 142, 43),  # orange
    (225, 87, 89),  # red
    (118, 183, 178),  # teal
    (89, 161, 79),  # green
    (237, 201, 72),  # yellow
    (176, 122, 161),  # purple
    (255, 157, 167),  # pink
    (156, 117, 95),  # brown
    (186, 176, 172),  # grey
)

#: Colour of a person whose ``track_id`` is null or negative (not tracked).
UNTRACKED_COLOR: tuple[int, int, int] = (255, 255, 255)

#: Colour of a blank canvas (no background image).
BLANK_COLOR: tuple[int, int, int] = (0, 0, 0)

#: Largest side (px) of a drawn canvas: a default canvas (the video's size, or one holding every keypoint of an
#: image) beyond it is scaled down to fit, and a larger ``size`` (or contact-sheet cell) raises ``ValueError``,
#: so one outlier keypoint or a wrong ``video.width`` cannot allocate gigabytes (4096 x 4096 RGB is 64 MB).
MAX_CANVAS_SIDE = 4096

_SHEET_COLOR = (32, 32, 32)
_TEXT_COLOR = (235, 235, 235)
_FALLBACK_SIZE = (640, 480)
_FIT_MARGIN = 8
_DEFAULT_SHEET_FRAMES = 12
_GIF_MIN_MS = 20  # browsers show GIF frames shorter than 20 ms for 100 ms
_FORMATS = {".gif": "GIF", ".png": "PNG", ".apng": "PNG", ".webp": "WEBP"}

Background = Any  # None | "source" | PIL image | path | bytes | numpy array | callable(source, frame_num)

#: How to get Pillow, which pictures need and the provider does not install by default.
PICTURES_INSTALL = "pip install 'airflow-provider-kakaopose[pictures]'"


def require_pillow() -> None:
    """Raise ModuleNotFoundError naming the ``pictures`` extra when Pillow is not installed.

    Pillow is an optional dependency: only the drawing functions here (and ``pictures=True`` on the operators,
    which check it before sending anything) need it.
    """
    try:
        from PIL import Image  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            f"Pose pictures need Pillow, which is not installed ({err}); install the pictures extra: "
            f"{PICTURES_INSTALL}",
            name="PIL",
        ) from None


def color_for(ident: Any) -> tuple[int, int, int]:
    """The colour of a track (or person) id: ``PALETTE[id % 10]``; :data:`UNTRACKED_COLOR` for null/NaN/< 0."""
    if ident is None:
        return UNTRACKED_COLOR
    try:
        value = float(ident)
    except (TypeError, ValueError):
        return UNTRACKED_COLOR
    if not math.isfinite(value) or value < 0:
        return UNTRACKED_COLOR
    return PALETTE[int(value) % len(PALETTE)]


# --------------------------------------------------------------------------------------------- input


_REQUIRED = ("frame_num", "person_idx", "keypoint_id", "x", "y", "score")
_OPTIONAL = ("source", "time_s", "track_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h")


class _Poses:
    """The columns the drawing needs, as numpy arrays, plus the decoded ``kakaopose:*`` metadata."""

    def __init__(self, cols: dict[str, Any], meta: dict[str, Any]) -> None:
        import numpy as np

        self.cols = cols
        self.meta = meta
        self.n = len(cols["frame_num"])
        src = cols.get("source")
        self.sources: list[str | None] = []
        if src is not None and self.n:
            seen: dict[Any, None] = {}
            for s in src:
                seen.setdefault(None if s is None or (isinstance(s, float) and math.isnan(s)) else str(s), None)
            self.sources = list(seen)
        if not self.sources:
            self.sources = [meta.get("source")]
        self.frame = np.asarray(cols["frame_num"], dtype=np.int64)
        self.person = np.asarray(cols["person_idx"], dtype=np.int64)
        self.kp_id = np.asarray(cols["keypoint_id"], dtype=np.int64)
        self.x = np.asarray(cols["x"], dtype=np.float64)
        self.y = np.asarray(cols["y"], dtype=np.float64)
        self.score = np.asarray(cols["score"], dtype=np.float64)
        self.track = None if cols.get("track_id") is None else np.asarray(cols["track_id"], dtype=np.float64)
        self.src: np.ndarray | None = None
        if src is not None:
            self.src = np.array([None if s is None else str(s) for s in src], dtype=object)
            self.src[[isinstance(s, float) for s in src]] = None
        video = meta.get("video") or {}
        self.fps = float(video["fps"]) if video.get("fps") else None
        self.video_size = (int(video["width"]), int(video["height"])) if video.get("width") else None
        skeleton = meta.get("skeleton") or SKELETON
        self.skeleton = [(int(a), int(b)) for a, b in skeleton]

    # -- selections

    def source_mask(self, source: str | None) -> np.ndarray:
        import numpy as np

        if self.src is None or (len(self.sources) <= 1 and source in (None, self.sources[0])):
            return np.ones(self.n, dtype=bool)
        return np.array([s == source for s in self.src], dtype=bool)

    def pick_source(self, source: str | None) -> str | None:
        if source is None:
            return self.sources[0]
        if source not in self.sources and not (len(self.sources) == 1 and self.sources[0] is None):
            raise ValueError(f"source {source!r} is not in the table (it has {self.sources[:5]!r:.200})")
        return source

    def is_video_source(self, source: str | None) -> bool:
        return self.video_size is not None and (len(self.sources) <= 1 or source == self.meta.get("source"))

    def frames_of(self, source: str | None) -> list[int]:
        """Frame numbers of a source: a video's frames from the metadata (``frame_nums`` runs, else 0..N-1
        with N = ``annotations``) plus any other frame with rows; else the frames with rows."""
        import numpy as np

        present = np.unique(self.frame[self.source_mask(source)]).tolist()
        if self.is_video_source(source):
            listed: list[int] | None = None
            if self.meta.get("frame_nums"):
                with contextlib.suppress(ValueError, TypeError):
                    listed = expand_frame_runs(self.meta["frame_nums"])
            if listed is None:
                count = self.meta.get("annotations") or (self.meta.get("video") or {}).get("frames") or 0
                listed = list(range(int(count)))
            if not set(present) <= set(listed):  # rows of a frame the metadata does not list: shown too
                listed = sorted(set(listed) | set(present))
            return listed
        return present or [0]

    def cells(self, source: str | None) -> list[tuple[str | None, int]]:
        """``(source, frame_num)`` cells: every frame of one source, or every drawn frame of every source."""
        if source is not None or len(self.sources) <= 1:
            s = self.pick_source(source)
            return [(s, f) for f in self.frames_of(s)]
        import numpy as np

        out: list[tuple[str | None, int]] = []
        for s in self.sources:
            present = np.unique(self.frame[self.source_mask(s)]).tolist()
            out.extend((s, int(f)) for f in present)
        return out

    def extent(self, source: str | None) -> tuple[int, int]:
        """A canvas size holding every keypoint and box of a source (all frames): for tables without size."""
        import numpy as np

        m = self.source_mask(source)
        right = [self.x[m]]
        bottom = [self.y[m]]
        if self.cols.get("bbox_x") is not None:
            bx = np.asarray(self.cols["bbox_x"], dtype=np.float64)[m]
            by = np.asarray(self.cols["bbox_y"], dtype=np.float64)[m]
            # both corners: a box with a negative size (which validation accepts) is drawn between them
            right += [bx, bx + np.asarray(self.cols["bbox_w"], dtype=np.float64)[m]]
            bottom += [by, by + np.asarray(self.cols["bbox_h"], dtype=np.float64)[m]]
        r = np.concatenate(right)
        b = np.concatenate(bottom)
        r, b = r[np.isfinite(r)], b[np.isfinite(b)]
        if not len(r) or not len(b):
            return _FALLBACK_SIZE
        return math.ceil(max(r.max(), 0)) + _FIT_MARGIN, math.ceil(max(b.max(), 0)) + _FIT_MARGIN

    def reference_size(self, source: str | None) -> tuple[int, int]:
        """The size of the space a source's coordinates are in: the video's size, else :meth:`extent`."""
        if self.is_video_source(source):
            assert self.video_size is not None
            return self.video_size
        return self.extent(source)

    def coordinate_size(self, source: str | None, background: Image.Image | None) -> tuple[int, int]:
        """:meth:`reference_size`, but an image's keypoints are in the pixels of its background image, if any."""
        return self.reference_size(source) if self.is_video_source(source) or background is None else background.size

    def tracks_of(self, source: str | None) -> np.ndarray | None:
        """The ``track_id`` column, or None when nobody of ``source`` is tracked (an image, which the tracker
        leaves null): then persons are coloured by ``person_idx``."""
        import numpy as np

        if self.track is not None and not np.isfinite(self.track[self.source_mask(source)]).any():
            return None
        return self.track

    def rows(self, source: str | None, frame_num: int) -> np.ndarray:
        import numpy as np

        return np.flatnonzero(self.source_mask(source) & (self.frame == frame_num))


def _load(data: Any) -> _Poses:
    """The poses of a keypoints ``pyarrow.Table``, a ``read_keypoints`` DataFrame or the URI of a Parquet file."""
    if isinstance(data, _Poses):
        return data
    if isinstance(data, (str, bytes, os.PathLike)) or (hasattr(data, "fs") and hasattr(data, "path")):
        from airflow_provider_kakaopose.tables import read_table

        data = read_table(data)
    if hasattr(data, "schema") and hasattr(data, "column") and hasattr(data, "num_rows"):  # pyarrow
        # the pictures draw what they can from a damaged file: a value that does not decode is left out
        return _Poses(_arrow_columns(data), decode_metadata(data.schema.metadata, skip_invalid=True))
    if hasattr(data, "columns") and hasattr(data, "attrs"):  # pandas
        return _Poses(_pandas_columns(data), dict(data.attrs.get("kakaopose") or {}))
    raise TypeError(f"expected a keypoints pyarrow.Table, pandas.DataFrame or URI, got {type(data).__name__}")


def _present_columns(names: Any) -> list[str]:
    """The columns the drawing uses that are among ``names``; ``ValueError`` if a required one is not."""
    for name in _REQUIRED:
        if name not in names:
            raise ValueError(f"not a keypoints table: no column {name!r}")
    return [name for name in _REQUIRED + _OPTIONAL if name in names]


def _arrow_columns(table: Any) -> dict[str, Any]:
    """The columns of a ``pyarrow.Table`` as numpy arrays (dictionary columns decoded)."""
    import numpy as np
    import pyarrow as pa

    cols: dict[str, Any] = {}
    for name in _present_columns(set(table.schema.names)):
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        cols[name] = np.asarray(col.to_numpy(zero_copy_only=False))
    return cols


def _pandas_columns(df: Any) -> dict[str, Any]:
    """The columns of a DataFrame as numpy arrays: ``source`` as objects (``None`` for NA), the others as floats."""
    import numpy as np

    cols: dict[str, Any] = {}
    for name in _present_columns(df.columns):
        series = df[name]
        if name == "source":
            cols[name] = np.array([None if v is None or v != v else str(v) for v in series], dtype=object)
        else:
            cols[name] = series.to_numpy(dtype=np.float64, na_value=np.nan)
    return cols


# --------------------------------------------------------------------------------------------- images


def _source_image(source: str | None) -> Image.Image | None:
    """The source image when ``source`` is a readable local image path or ``file://`` URI, else None."""
    from PIL import Image, UnidentifiedImageError

    if not source:
        return None
    parts = urlsplit(source)
    if parts.scheme == "file":
        path = unquote(parts.path)
    elif len(parts.scheme) <= 1:
        path = source
    else:
        return None
    try:
        with Image.open(os.path.expanduser(path)) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _as_image(value: Any) -> Image.Image:
    """A PIL image from a PIL image, bytes, a path/URI or a numpy array (HxW, HxWx3 or HxWx4, uint8)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(value))) as im:
            return im.convert("RGB")
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if len(urlsplit(text).scheme) > 1:
            from airflow_provider_kakaopose.tables import is_local, resolve_storage

            fs, path = resolve_storage(text)
            if not is_local(fs):
                return _as_image(fs.cat_file(path))
            text = path
        with Image.open(os.path.expanduser(text)) as im:
            return im.convert("RGB")
    if hasattr(value, "__array_interface__") or hasattr(value, "__array__"):
        import numpy as np

        arr = np.asarray(value)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    raise TypeError(f"cannot use {type(value).__name__} as a background image")


def _background(background: Background, source: str | None, frame_num: int) -> Image.Image | None:
    if background is None:
        return None
    if isinstance(background, str) and background == "source":
        return _source_image(source)
    if callable(background) and not hasattr(background, "__array__"):
        got = background(source, frame_num)
        return None if got is None else _as_image(got)
    return _as_image(background)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(6, size))
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


class _Style(NamedTuple):
    """How the persons are drawn (the drawing options of :func:`draw_frame`)."""

    threshold: float = DEFAULT_THRESHOLD
    line_width: int | None = None
    point_radius: int | None = None
    boxes: bool = False
    labels: bool = False


class _Pen(NamedTuple):
    """The scale from coordinates to canvas pixels, the stroke sizes, and the area outside which nothing is drawn
    (the canvas plus a margin wider than any stroke)."""

    sx: float
    sy: float
    width: int
    radius: int
    clip: tuple[float, float, float, float]

    @classmethod
    def for_canvas(cls, canvas_size: tuple[int, int], reference: tuple[int, int], style: _Style) -> _Pen:
        sx = canvas_size[0] / reference[0]
        sy = canvas_size[1] / reference[1]
        short = min(canvas_size)
        lw = max(1, int(style.line_width)) if style.line_width is not None else max(2, round(short / 240))
        r = max(0, int(style.point_radius)) if style.point_radius is not None else max(3, round(short / 160))
        margin = lw + r + 2
        return cls(sx, sy, lw, r, (-margin, -margin, canvas_size[0] + margin, canvas_size[1] + margin))


def _render(
    poses: _Poses,
    source: str | None,
    frame_num: int,
    *,
    background: Background,
    style: _Style,
    size: tuple[int, int] | None,
    reference: tuple[int, int] | None = None,
) -> Image.Image:
    """Draw every person of one frame of one source.

    :param size: the canvas size (default: the background's, else :meth:`_Poses.reference_size` bounded).
    :param reference: the size of the coordinates' space (default :meth:`_Poses.coordinate_size`).
    """
    require_pillow()
    from PIL import ImageDraw

    img, reference = _canvas(poses, source, frame_num, background, size, reference)
    pen = _Pen.for_canvas(img.size, reference, style)
    draw = ImageDraw.Draw(img)
    rows = poses.rows(source, frame_num)
    if not len(rows):
        return img
    font = _font(max(10, pen.width * 6)) if style.labels else None
    tracks = poses.tracks_of(source)
    for idx in _by_person(poses, rows):
        ident = tracks[idx[0]] if tracks is not None else poses.person[idx[0]]
        color = color_for(ident)
        points = _points(poses, idx, style.threshold, pen)
        if style.boxes and poses.cols.get("bbox_x") is not None:
            _draw_box(draw, poses, idx[0], pen, color)
        _draw_skeleton(draw, poses.skeleton, points, pen, color)
        if font is not None:
            _draw_ident(draw, poses, idx[0], ident, points, pen, color, font, img.size)
    return img


def _canvas(
    poses: _Poses,
    source: str | None,
    frame_num: int,
    background: Background,
    size: tuple[int, int] | None,
    reference: tuple[int, int] | None,
) -> tuple[Image.Image, tuple[int, int]]:
    """The image to draw on (the background scaled to the canvas size, or a blank canvas) and the size of the
    coordinates' space (``reference`` if given)."""
    from PIL import Image

    bg = _background(background, source, frame_num)
    if reference is None:
        reference = poses.coordinate_size(source, bg)
    if size is not None:
        canvas_size = (int(size[0]), int(size[1]))
        if max(canvas_size) > MAX_CANVAS_SIDE:
            raise ValueError(f"size must be at most {MAX_CANVAS_SIDE} px a side (MAX_CANVAS_SIDE), got {canvas_size}")
    else:
        canvas_size = bg.size if bg is not None else _bounded(reference)
    if canvas_size[0] < 1 or canvas_size[1] < 1:
        raise ValueError(f"size must be positive, got {canvas_size}")
    if bg is None:
        return Image.new("RGB", canvas_size, BLANK_COLOR), reference
    return (bg if bg.size == canvas_size else bg.resize(canvas_size, Image.Resampling.BILINEAR)), reference


def _by_person(poses: _Poses, rows: np.ndarray) -> list[np.ndarray]:
    """The rows of a frame grouped by person (``person_idx`` order, row order within a person)."""
    import numpy as np

    persons = poses.person[rows]
    order = np.argsort(persons, kind="stable")
    rows = rows[order]
    persons = persons[order]
    starts = np.flatnonzero(np.r_[True, persons[1:] != persons[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    return [rows[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def _points(poses: _Poses, idx: np.ndarray, threshold: float, pen: _Pen) -> dict[int, tuple[float, float]]:
    """Keypoint id → canvas position of a person's keypoints that are drawn (finite, score ``>= threshold``)."""
    import numpy as np

    x, y, s = poses.x[idx], poses.y[idx], poses.score[idx]
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(s) & (s >= threshold)
    return {
        int(k): (float(px) * pen.sx, float(py) * pen.sy)
        for k, px, py, good in zip(poses.kp_id[idx], x, y, ok, strict=True)
        if good
    }


def _draw_box(draw: Any, poses: _Poses, row: int, pen: _Pen, color: tuple[int, int, int]) -> None:
    """A person's bounding box (of row ``row``), between its two corners whatever the sign of its size, clamped
    to the clip area."""
    bx, by, bw, bh = (float(poses.cols[c][row]) for c in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
    if not all(math.isfinite(v) for v in (bx, by, bw, bh)):
        return
    clip = pen.clip
    left, right = sorted((bx * pen.sx, (bx + bw) * pen.sx))
    top, bottom = sorted((by * pen.sy, (by + bh) * pen.sy))
    if left <= clip[2] and right >= clip[0] and top <= clip[3] and bottom >= clip[1]:
        corners = [
            max(left, clip[0]),
            max(top, clip[1]),
            min(right, clip[2]),
            min(bottom, clip[3]),
        ]
        draw.rectangle(corners, outline=color, width=max(1, pen.width // 2))


def _draw_skeleton(
    draw: Any,
    skeleton: list[tuple[int, int]],
    points: dict[int, tuple[float, float]],
    pen: _Pen,
    color: tuple[int, int, int],
) -> None:
    """The limbs whose two ends are drawn (clipped), then the keypoints' dots (those in the clip area)."""
    clip = pen.clip
    for k1, k2 in skeleton:
        if k1 in points and k2 in points:
            part = _clip_segment(points[k1], points[k2], clip)
            if part is not None:
                draw.line(list(part), fill=color, width=pen.width)
    r = pen.radius
    for px, py in points.values():
        if not (clip[0] <= px <= clip[2] and clip[1] <= py <= clip[3]):
            continue
        if r:
            draw.ellipse([px - r, py - r, px + r, py + r], fill=color)
        else:
            draw.point((px, py), fill=color)


def _draw_ident(
    draw: Any,
    poses: _Poses,
    row: int,
    ident: Any,
    points: dict[int, tuple[float, float]],
    pen: _Pen,
    color: tuple[int, int, int],
    font: Any,
    canvas_size: tuple[int, int],
) -> None:
    """``#<track_id>`` (or ``#<person_idx>``) above a person: at its box's top-left corner, else its top keypoint."""
    text = f"#{int(ident)}" if ident is not None and math.isfinite(float(ident)) else "#?"
    if poses.cols.get("bbox_x") is not None and math.isfinite(float(poses.cols["bbox_x"][row])):
        anchor = (float(poses.cols["bbox_x"][row]) * pen.sx, float(poses.cols["bbox_y"][row]) * pen.sy)
    elif points:
        anchor = min(points.values(), key=lambda p: p[1])
    else:
        return
    if not (-canvas_size[0] <= anchor[0] <= canvas_size[0] and anchor[1] <= canvas_size[1] + font.size + 2):
        return  # off the canvas (Pillow fails on text at coordinates beyond C's int)
    draw.text((anchor[0] + 2, max(0.0, anchor[1] - font.size - 2)), text, fill=color, font=font)


def draw_frame(
    table: Any,
    frame_num: int = 0,
    *,
    source: str | None = None,
    background: Background = None,
    threshold: float = DEFAULT_THRESHOLD,
    size: tuple[int, int] | None = None,
    line_width: int | None = None,
    point_radius: int | None = None,
    boxes: bool = False,
    labels: bool = False,
) -> Image.Image:
    """Draw every person of one frame (of one source) of a keypoints table; returns an RGB PIL image.

    :param table: a keypoints ``pyarrow.Table``, a ``read_keypoints`` DataFrame, or the URI of a Parquet file.
    :param frame_num: the frame to draw (0 for images).
    :param source: which source to draw when the table holds several (default: the first in row order).
    :param background: ``None`` (blank canvas), ``"source"`` (the source image when it is a readable local
        file, else blank), a PIL image, image bytes, a path/URI of an image, a numpy array, or a callable
        ``(source, frame_num) -> any of those or None``.
    :param threshold: draw keypoints whose score is ``>= threshold``, and limbs whose two ends are drawn.
    :param size: output ``(width, height)``, each at most :data:`MAX_CANVAS_SIDE`; default the background's
        size, else the video's size from the metadata, else a canvas holding every keypoint and box of the
        source, either scaled down to :data:`MAX_CANVAS_SIDE` when larger. Coordinates are scaled; what lies
        outside the canvas is clipped.
    :param line_width: limb width in px (default ``max(2, round(short side / 240))``).
    :param point_radius: keypoint dot radius in px (default ``max(3, round(short side / 160))``).
    :param boxes: also draw each person's bounding box (between its corners, whatever the sign of its size).
    :param labels: also write ``#<track_id>`` (or ``#<person_idx>``) above each person.
    :raises ValueError: ``size`` is not positive or exceeds :data:`MAX_CANVAS_SIDE`.
    """
    poses = _load(table)
    style = _Style(threshold, line_width, point_radius, boxes, labels)
    return _render(poses, poses.pick_source(source), int(frame_num), background=background, style=style, size=size)


def _select(cells: list, frames: int | Sequence[int] | None, default: int | None, single: bool) -> list:
    import numpy as np

    if frames is None:
        if default is None or len(cells) <= default:
            return cells
        frames = default
    if isinstance(frames, (int, np.integer)):
        n = int(frames)
        if n < 1:
            raise ValueError(f"frames must be at least 1, got {n}")
        if len(cells) <= n:
            return cells
        picks = np.unique(np.round(np.linspace(0, len(cells) - 1, n)).astype(int))
        return [cells[i] for i in picks.tolist()]
    wanted = [int(f) for f in frames]
    if single:
        src = cells[0][0] if cells else None
        return [(src, f) for f in wanted]
    keep = set(wanted)
    return [c for c in cells if c[1] in keep]


def _label(poses: _Poses, source: str | None, frame_num: int, several: bool) -> str:
    name = os.path.basename(urlsplit(source).path.rstrip("/")) if source else ""
    if poses.is_video_source(source) or len(poses.frames_of(source)) > 1:
        text = f"frame {frame_num}"
        if poses.fps:
            text += f" · {frame_num / poses.fps:.2f} s"
        return f"{name} {text}" if several and name else text
    return name or f"frame {frame_num}"


def _bounded(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled down (aspect kept, each side at least 1 px) so that its longer side is at most
    :data:`MAX_CANVAS_SIDE`."""
    longest = max(size)
    if longest <= MAX_CANVAS_SIDE:
        return size
    scale = MAX_CANVAS_SIDE / longest
    return min(MAX_CANVAS_SIDE, max(1, round(size[0] * scale))), min(MAX_CANVAS_SIDE, max(1, round(size[1] * scale)))


def _clip_segment(
    p: tuple[float, float], q: tuple[float, float], box: tuple[float, float, float, float]
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The part of segment ``p``-``q`` inside ``box`` (left, top, right, bottom), or ``None`` (Liang-Barsky).

    Pillow walks every pixel of a thin line, even far outside the image (seconds for a keypoint at 1e9 px), and
    fails on coordinates beyond C's int: the renderer clips to the canvas plus a margin first. Endpoints
    inside the box are returned unchanged (so in-canvas drawing is exactly as before).
    """
    (x0, y0), (x1, y1) = p, q
    dx, dy = x1 - x0, y1 - y0
    t0, t1 = 0.0, 1.0
    for pk, qk in ((-dx, x0 - box[0]), (dx, box[2] - x0), (-dy, y0 - box[1]), (dy, box[3] - y0)):
        if pk == 0:
            if qk < 0:
                return None
            continue
        t = qk / pk
        if pk < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return None
    start = p if t0 == 0.0 else (x0 + t0 * dx, y0 + t0 * dy)
    end = q if t1 == 1.0 else (x0 + t1 * dx, y0 + t1 * dy)
    return start, end


def _fit(reference: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    scale = min(box[0] / reference[0], box[1] / reference[1])
    return max(1, round(reference[0] * scale)), max(1, round(reference[1] * scale))


def contact_sheet(
    table: Any,
    *,
    frames: int | Sequence[int] | None = None,
    source: str | None = None,
    columns: int = 4,
    thumb_width: int = 320,
    threshold: float = DEFAULT_THRESHOLD,
    background: Background = None,
    labels: bool = True,
    label_height: int = 20,
    gap: int = 4,
    line_width: int | None = None,
    point_radius: int | None = None,
) -> Image.Image:
    """A grid of drawn frames (row by row), each with a frame number/time (or file name) label.

    :param frames: ``None``: up to 12 evenly spaced frames; an int ``n``: ``n`` evenly spaced frames (first
        and last included); a list: exactly those frame numbers.
    :param source: the source to show; ``None`` with several sources shows every (source, frame) drawn.
    :param columns: cells per row (fewer when there are fewer cells).
    :param thumb_width: width of a cell in px; its height follows the first cell's aspect ratio.
    :param labels: write a label under each cell in a strip of ``label_height`` px.
    :param gap: px between cells and around the grid.

    Size: ``cols * thumb_width + (cols + 1) * gap`` by ``rows * (thumb_h + label_height) + (rows + 1) * gap``
    (``label_height`` counted only with ``labels``), with ``cols = min(columns, cells)``.
    """
    require_pillow()
    from PIL import Image, ImageDraw

    poses = _load(table)
    single = source is not None or len(poses.sources) <= 1
    cells = _select(poses.cells(source), frames, _DEFAULT_SHEET_FRAMES, single)
    if not cells:
        raise ValueError("no frames to draw")
    grid = _Grid.of(poses.reference_size(cells[0][0]), len(cells), columns, thumb_width, gap, label_height, labels)
    sheet = Image.new("RGB", grid.size(), _SHEET_COLOR)
    draw = ImageDraw.Draw(sheet)
    font = _font(max(6, grid.strip - 6))
    style = _Style(threshold, line_width, point_radius)
    for i, (src, f) in enumerate(cells):
        left, top = grid.corner(i)
        bg = _background(background, src, f)
        ref = poses.coordinate_size(src, bg)
        fit = _fit(ref, (grid.thumb_w, grid.thumb_h))
        thumb = _render(poses, src, f, background=bg, style=style, size=fit, reference=ref)
        sheet.paste(thumb, (left + (grid.thumb_w - fit[0]) // 2, top + (grid.thumb_h - fit[1]) // 2))
        if grid.strip:
            text = _label(poses, src, f, not single)
            while len(text) > 4 and draw.textlength(text, font=font) > grid.thumb_w - 4:
                text = text[: len(text) - 2] + "…"
            y = top + grid.thumb_h + (grid.strip - font.size) // 2 - 1
            draw.text((left + 2, y), text, fill=_TEXT_COLOR, font=font)
    return sheet


class _Grid(NamedTuple):
    """A contact sheet's layout: ``cols`` x ``rows`` cells of ``thumb_w`` x ``thumb_h`` px, each with a label strip
    of ``strip`` px below it, ``gap`` px between the cells and around them."""

    thumb_w: int
    thumb_h: int
    strip: int
    cols: int
    rows: int
    gap: int

    @classmethod
    def of(
        cls,
        first_ref: tuple[int, int],
        cells: int,
        columns: int,
        thumb_width: int,
        gap: int,
        label_height: int,
        labels: bool,
    ) -> _Grid:
        """The layout of ``cells`` cells whose height follows the aspect ratio ``first_ref`` (the first cell's)."""
        if columns < 1 or thumb_width < 1:
            raise ValueError("columns and thumb_width must be positive")
        if thumb_width > MAX_CANVAS_SIDE:
            raise ValueError(f"thumb_width must be at most {MAX_CANVAS_SIDE} px (MAX_CANVAS_SIDE), got {thumb_width}")
        thumb_w = int(thumb_width)
        # a very tall reference (e.g. one outlier keypoint far below) must not make a cell taller than the limit
        thumb_h = min(MAX_CANVAS_SIDE, max(1, round(thumb_w * first_ref[1] / first_ref[0])))
        cols = min(int(columns), cells)
        return cls(thumb_w, thumb_h, int(label_height) if labels else 0, cols, math.ceil(cells / cols), gap)

    def size(self) -> tuple[int, int]:
        return (
            self.cols * self.thumb_w + (self.cols + 1) * self.gap,
            self.rows * (self.thumb_h + self.strip) + (self.rows + 1) * self.gap,
        )

    def corner(self, i: int) -> tuple[int, int]:
        """The top-left corner of cell ``i`` (row by row)."""
        col, row = i % self.cols, i // self.cols
        return self.gap + col * (self.thumb_w + self.gap), self.gap + row * (self.thumb_h + self.strip + self.gap)


def _durations(frame_nums: list[int], fps: float, unit: int, whole: bool) -> list[int]:
    """Display time of each frame (ms, multiples of ``unit``) so the cumulative time tracks the video's.

    A frame shows until the next drawn one; the last for one video frame when ``whole`` (the whole video was
    thinned, so its last frame is drawn), else for the mean step between the drawn frames.
    """
    n = len(frame_nums)
    increasing = all(b > a for a, b in itertools.pairwise(frame_nums))
    if n > 1 and increasing:
        step = 1 if whole else (frame_nums[-1] - frame_nums[0]) / (n - 1)
        ends = [(f - frame_nums[0]) for f in frame_nums[1:]] + [frame_nums[-1] - frame_nums[0] + step]
    else:
        ends = list(range(1, n + 1))
    bounds = [0] + [round(e * 1000 / fps / unit) * unit for e in ends]
    return [max(unit, b - a) for a, b in itertools.pairwise(bounds)]


def _format_for(target: Any, fmt: str | None) -> str:
    if fmt:
        return fmt.upper()
    name = target if isinstance(target, str) else getattr(target, "name", None) or ""
    if isinstance(target, os.PathLike) or (hasattr(target, "fs") and hasattr(target, "path")):
        name = str(getattr(target, "path", None) or os.fspath(target))
    suffix = os.path.splitext(urlsplit(str(name)).path)[1].lower()
    if suffix in (".mp4", ".mov", ".webm", ".avi", ".mkv"):
        raise ValueError(f"{suffix} is not supported: write a .gif (or .webp / .png) and convert it with ffmpeg")
    return _FORMATS.get(suffix, "GIF")


def animate(
    table: Any,
    path_or_file: Any,
    *,
    frames: int | Sequence[int] | None = None,
    source: str | None = None,
    fps: float | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    max_frames: int = 300,
    scale: float | None = None,
    background: Background = None,
    label: bool = True,
    format: str | None = None,
    loop: int = 0,
    line_width: int | None = None,
    point_radius: int | None = None,
) -> int:
    """Write an animation of a video's poses (animated GIF by default); returns the number of frames drawn.

    :param path_or_file: a local path or URI (written atomically, see :func:`save_image`) or a binary file.
    :param frames: ``None``: every frame, evenly thinned to at most ``max_frames`` (and, for GIF, to at
        most 50 frames/s); an int ``n``: ``n`` evenly spaced frames; a list: exactly those frame numbers.
    :param fps: frames per second of the *video* (default ``video.fps`` from the metadata, else 1); frames
        are shown so that playback runs in real time whatever the thinning.
    :param scale: size factor (default: fit the longer side in 640 px, never enlarge).
    :param label: write ``frame N · t s`` in the top-left corner (keeps consecutive frames distinct: Pillow
        merges identical consecutive GIF frames into one longer frame).
    :param format: ``"GIF"``, ``"WEBP"`` or ``"PNG"`` (APNG); default from the file suffix, else GIF.
    :param loop: GIF/WebP/APNG loop count (0 = forever).
    """
    require_pillow()
    poses = _load(table)
    fmt = _format_for(path_or_file, format)
    single = source is not None or len(poses.sources) <= 1
    cells = poses.cells(source)
    rate = float(fps) if fps else (poses.fps or 1.0)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    cells = _animation_cells(cells, frames, max_frames, rate if fmt == "GIF" else None, single)
    if not cells:
        raise ValueError("no frames to draw")
    ref = poses.reference_size(cells[0][0])
    factor = float(scale) if scale is not None else min(1.0, 640 / max(ref))
    out_size = (max(1, round(ref[0] * factor)), max(1, round(ref[1] * factor)))
    style = _Style(threshold, line_width, point_radius)
    images = _animation_frames(poses, cells, background, style, out_size, ref, label, not single)
    durations = _durations([f for _, f in cells], rate, 10 if fmt == "GIF" else 1, frames is None)
    buf = io.BytesIO()
    params: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": durations, "loop": loop}
    if fmt == "GIF":
        params["disposal"] = 1
    images[0].save(buf, format=fmt, **params)
    _emit(buf.getvalue(), path_or_file)
    return len(images)


def _animation_cells(
    cells: list, frames: int | Sequence[int] | None, max_frames: int, gif_rate: float | None, single: bool
) -> list:
    """The cells :func:`animate` draws: ``frames`` as asked; by default every cell, evenly thinned to at most
    ``max_frames`` and, for a GIF of a video at ``gif_rate`` frames/s, to at most 50 frames/s."""
    if frames is not None:
        return _select(cells, frames, None, single)
    limit = max(1, int(max_frames))
    if gif_rate is not None and gif_rate * _GIF_MIN_MS > 1000:
        stride = math.ceil(gif_rate * _GIF_MIN_MS / 1000)
        limit = min(limit, math.ceil(len(cells) / stride))
    return _select(cells, limit, limit, single)


def _animation_frames(
    poses: _Poses,
    cells: list[tuple[str | None, int]],
    background: Background,
    style: _Style,
    out_size: tuple[int, int],
    ref: tuple[int, int],
    label: bool,
    several: bool,
) -> list[Image.Image]:
    """The drawn frames of an animation, each labelled ``frame N · t s`` in its top-left corner if ``label``."""
    from PIL import ImageDraw

    images = []
    font = _font(max(10, out_size[1] // 30)) if label else None
    for src, f in cells:
        reference = ref if poses.is_video_source(src) else None
        img = _render(poses, src, f, background=background, style=style, size=out_size, reference=reference)
        if font is not None:
            text = _label(poses, src, f, several)
            ImageDraw.Draw(img).text((6, 4), text, fill=_TEXT_COLOR, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
        images.append(img)
    return images


# --------------------------------------------------------------------------------------------- writing


def _emit(data: bytes, target: Any) -> None:
    """Write ``data`` to a binary file object, or atomically to a path or URI (any storage the tables write)."""
    if hasattr(target, "write") and not (hasattr(target, "fs") and hasattr(target, "path")):
        target.write(data)
    else:
        from airflow_provider_kakaopose.tables import write_bytes

        write_bytes(target, data)


def save_image(image: Image.Image, uri: Any, *, format: str | None = None, **params: Any) -> None:
    """Encode ``image`` (format from ``format`` or the suffix, default PNG) and write it atomically.

    :param uri: a local path, ``file://`` or other fsspec URI (``s3://…``, ``memory://…``), an Airflow
        ``s3://conn_id@bucket/key`` URI or ``ObjectStoragePath``, or a binary file object.
    :param params: passed to ``PIL.Image.Image.save`` (e.g. ``optimize=True``).
    """
    fmt = format.upper() if format else None
    if fmt is None:
        name = str(getattr(uri, "path", None) or getattr(uri, "name", None) or "") if hasattr(uri, "write") else ""
        if not name:
            name = str(getattr(uri, "path", None) or os.fspath(uri)) if not hasattr(uri, "write") else ""
        suffix = os.path.splitext(urlsplit(name).path)[1].lower()
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".webp": "WEBP"}.get(suffix, "PNG")
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    _emit(buf.getvalue(), uri)


def save_png(image: Image.Image, uri: Any) -> None:
    """Write ``image`` as PNG to a path, URI or binary file, atomically (see :func:`save_image`)."""
    save_image(image, uri, format="PNG")


def write_pictures(
    table: Any,
    parquet_uri: Any,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    sheet: bool = True,
    animation: bool = True,
    animation_format: str = "gif",
    background: Background = None,
) -> dict[str, Any]:
    """Write the pictures of a keypoints table next to its Parquet file; returns ``{"png": uri, "gif": uri}``.

    ``<stem>.png`` is the :func:`contact_sheet`; ``<stem>.gif`` (or ``.webp`` / ``.png``... per
    ``animation_format``) the :func:`animate` output, written only for video tables with more than one frame.
    Both are written atomically on the Parquet's storage.
    """
    require_pillow()
    from airflow_provider_kakaopose.tables import sibling_uri

    poses = _load(table)
    written: dict[str, Any] = {}
    if sheet:
        png_uri = sibling_uri(parquet_uri, ".png")
        save_png(contact_sheet(poses, threshold=threshold, background=background), png_uri)
        written["png"] = png_uri
    single = len(poses.sources) <= 1
    if animation and single and poses.is_video_source(poses.sources[0]) and len(poses.cells(None)) > 1:
        ext = animation_format.lower().lstrip(".")
        anim_uri = sibling_uri(parquet_uri, f".anim.{ext}" if ext == "png" else f".{ext}")
        animate(poses, anim_uri, threshold=threshold, background=background)
        written[ext if ext != "png" else "apng"] = anim_uri
    return written
