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
import json
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

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
        self.src = None if src is None else np.array([None if s is None else str(s) for s in src], dtype=object)
        if self.src is not None:
            self.src[[isinstance(s, float) for s in src]] = None
        video = meta.get("video") or {}
        self.fps = float(video["fps"]) if video.get("fps") else None
        self.video_size = (int(video["width"]), int(video["height"])) if video.get("width") else None
        skeleton = meta.get("skeleton")
        if not skeleton:
            from airflow_provider_kakaopose.tables import SKELETON

            skeleton = SKELETON
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

        from airflow_provider_kakaopose.coco import expand_frame_runs

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
        if self.is_video_source(source):
            assert self.video_size is not None
            return self.video_size
        return self.extent(source)

    def rows(self, source: str | None, frame_num: int) -> np.ndarray:
        import numpy as np

        return np.flatnonzero(self.source_mask(source) & (self.frame == frame_num))


def _decode_meta(metadata: dict | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (metadata or {}).items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        if key.startswith("kakaopose:"):
            with contextlib.suppress(ValueError):
                out[key[len("kakaopose:") :]] = json.loads(v)
    return out


def _load(data: Any) -> _Poses:
    import numpy as np

    if isinstance(data, _Poses):
        return data
    if isinstance(data, (str, bytes, os.PathLike)) or (hasattr(data, "fs") and hasattr(data, "path")):
        from airflow_provider_kakaopose.tables.storage import _read_table

        data = _read_table(data)
    cols: dict[str, Any] = {}
    if hasattr(data, "schema") and hasattr(data, "column") and hasattr(data, "num_rows"):  # pyarrow
        import pyarrow as pa

        meta = _decode_meta(data.schema.metadata)
        names = set(data.schema.names)
        for name in _REQUIRED + _OPTIONAL:
            if name not in names:
                if name in _REQUIRED:
                    raise ValueError(f"not a keypoints table: no column {name!r}")
                continue
            col = data.column(name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            cols[name] = np.asarray(col.to_numpy(zero_copy_only=False))
    elif hasattr(data, "columns") and hasattr(data, "attrs"):  # pandas
        meta = dict(data.attrs.get("kakaopose") or {})
        for name in _REQUIRED + _OPTIONAL:
            if name not in data.columns:
                if name in _REQUIRED:
                    raise ValueError(f"not a keypoints table: no column {name!r}")
                continue
            series = data[name]
            if name == "source":
                cols[name] = np.array([None if v is None or v != v else str(v) for v in series], dtype=object)
            else:
                cols[name] = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        raise TypeError(f"expected a keypoints pyarrow.Table, pandas.DataFrame or URI, got {type(data).__name__}")
    return _Poses(cols, meta)


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
            from airflow_provider_kakaopose.tables.storage import _is_local, _resolve

            fs, path = _resolve(text)
            if not _is_local(fs):
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


def _render(
    poses: _Poses,
    source: str | None,
    frame_num: int,
    *,
    background: Background,
    threshold: float,
    size: tuple[int, int] | None,
    line_width: int | None,
    point_radius: int | None,
    boxes: bool,
    labels: bool,
    reference: tuple[int, int] | None = None,
) -> Image.Image:
    require_pillow()
    import numpy as np
    from PIL import Image, ImageDraw

    bg = _background(background, source, frame_num)
    if reference is None:
        # an image's keypoints are in the pixels of the image itself
        reference = poses.reference_size(source) if poses.is_video_source(source) or bg is None else bg.size
    if size is not None:
        canvas_size = (int(size[0]), int(size[1]))
        if max(canvas_size) > MAX_CANVAS_SIDE:
            raise ValueError(f"size must be at most {MAX_CANVAS_SIDE} px a side (MAX_CANVAS_SIDE), got {canvas_size}")
    else:
        canvas_size = bg.size if bg is not None else _bounded(reference)
    if canvas_size[0] < 1 or canvas_size[1] < 1:
        raise ValueError(f"size must be positive, got {canvas_size}")
    if bg is None:
        img = Image.new("RGB", canvas_size, BLANK_COLOR)
    else:
        img = bg if bg.size == canvas_size else bg.resize(canvas_size, Image.Resampling.BILINEAR)
    sx = canvas_size[0] / reference[0]
    sy = canvas_size[1] / reference[1]
    short = min(canvas_size)
    lw = max(1, int(line_width)) if line_width is not None else max(2, round(short / 240))
    r = max(0, int(point_radius)) if point_radius is not None else max(3, round(short / 160))
    draw = ImageDraw.Draw(img)
    # What lies outside the canvas (plus a margin wider than any stroke) is clipped or skipped.
    margin = lw + r + 2
    clip = (-margin, -margin, canvas_size[0] + margin, canvas_size[1] + margin)
    rows = poses.rows(source, frame_num)
    if not len(rows):
        return img
    persons = poses.person[rows]
    order = np.argsort(persons, kind="stable")
    rows = rows[order]
    persons = persons[order]
    starts = np.flatnonzero(np.r_[True, persons[1:] != persons[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    font = _font(max(10, lw * 6)) if labels else None
    # a source nobody of which is tracked (e.g. an image, which the tracker leaves null) colours by person_idx
    tracks = poses.track
    if tracks is not None and not np.isfinite(tracks[poses.source_mask(source)]).any():
        tracks = None
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        idx = rows[a:b]
        ident = tracks[idx[0]] if tracks is not None else poses.person[idx[0]]
        color = color_for(ident)
        x, y, s = poses.x[idx], poses.y[idx], poses.score[idx]
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(s) & (s >= threshold)
        points = {
            int(k): (float(px) * sx, float(py) * sy)
            for k, px, py, good in zip(poses.kp_id[idx], x, y, ok, strict=True)
            if good
        }
        if boxes and poses.cols.get("bbox_x") is not None:
            bx, by, bw, bh = (float(poses.cols[c][idx[0]]) for c in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
            if all(math.isfinite(v) for v in (bx, by, bw, bh)):
                # between the box's two corners, whatever the sign of its size; clamped to the clip area
                left, right = sorted((bx * sx, (bx + bw) * sx))
                top, bottom = sorted((by * sy, (by + bh) * sy))
                if left <= clip[2] and right >= clip[0] and top <= clip[3] and bottom >= clip[1]:
                    corners = [
                        max(left, clip[0]),
                        max(top, clip[1]),
                        min(right, clip[2]),
                        min(bottom, clip[3]),
                    ]
                    draw.rectangle(corners, outline=color, width=max(1, lw // 2))
        for k1, k2 in poses.skeleton:
            if k1 in points and k2 in points:
                part = _clip_segment(points[k1], points[k2], clip)
                if part is not None:
                    draw.line(list(part), fill=color, width=lw)
        for px, py in points.values():
            if not (clip[0] <= px <= clip[2] and clip[1] <= py <= clip[3]):
                continue
            if r:
                draw.ellipse([px - r, py - r, px + r, py + r], fill=color)
            else:
                draw.point((px, py), fill=color)
        if labels and font is not None:
            text = f"#{int(ident)}" if ident is not None and math.isfinite(float(ident)) else "#?"
            if poses.cols.get("bbox_x") is not None and math.isfinite(float(poses.cols["bbox_x"][idx[0]])):
                anchor = (float(poses.cols["bbox_x"][idx[0]]) * sx, float(poses.cols["bbox_y"][idx[0]]) * sy)
            elif points:
                anchor = min(points.values(), key=lambda p: p[1])
            else:
                continue
            if not (-canvas_size[0] <= anchor[0] <= canvas_size[0] and anchor[1] <= canvas_size[1] + font.size + 2):
                continue  # off the canvas (Pillow fails on text at coordinates beyond C's int)
            draw.text((anchor[0] + 2, max(0.0, anchor[1] - font.size - 2)), text, fill=color, font=font)
    return img


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
    src = poses.pick_source(source)
    return _render(
        poses,
        src,
        int(frame_num),
        background=background,
        threshold=threshold,
        size=size,
        line_width=line_width,
        point_radius=point_radius,
        boxes=boxes,
        labels=labels,
    )


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
    if columns < 1 or thumb_width < 1:
        raise ValueError("columns and thumb_width must be positive")
    if thumb_width > MAX_CANVAS_SIDE:
        raise ValueError(f"thumb_width must be at most {MAX_CANVAS_SIDE} px (MAX_CANVAS_SIDE), got {thumb_width}")
    first_ref = poses.reference_size(cells[0][0])
    thumb_w = int(thumb_width)
    # a very tall reference (e.g. one outlier keypoint far below) must not make a cell taller than the limit
    thumb_h = min(MAX_CANVAS_SIDE, max(1, round(thumb_w * first_ref[1] / first_ref[0])))
    strip = int(label_height) if labels else 0
    cols = min(int(columns), len(cells))
    rows = math.ceil(len(cells) / cols)
    sheet = Image.new(
        "RGB",
        (cols * thumb_w + (cols + 1) * gap, rows * (thumb_h + strip) + (rows + 1) * gap),
        _SHEET_COLOR,
    )
    draw = ImageDraw.Draw(sheet)
    font = _font(max(6, strip - 6))
    for i, (src, f) in enumerate(cells):
        bg = _background(background, src, f)
        ref = poses.reference_size(src) if poses.is_video_source(src) or bg is None else bg.size
        fit = _fit(ref, (thumb_w, thumb_h))
        thumb = _render(
            poses,
            src,
            f,
            background=bg,
            threshold=threshold,
            size=fit,
            line_width=line_width,
            point_radius=point_radius,
            boxes=False,
            labels=False,
            reference=ref,
        )
        col, row = i % cols, i // cols
        left = gap + col * (thumb_w + gap)
        top = gap + row * (thumb_h + strip + gap)
        sheet.paste(thumb, (left + (thumb_w - fit[0]) // 2, top + (thumb_h - fit[1]) // 2))
        if strip:
            text = _label(poses, src, f, not single)
            while len(text) > 4 and draw.textlength(text, font=font) > thumb_w - 4:
                text = text[: len(text) - 2] + "…"
            draw.text((left + 2, top + thumb_h + (strip - font.size) // 2 - 1), text, fill=_TEXT_COLOR, font=font)
    return sheet


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
    from PIL import ImageDraw

    poses = _load(table)
    fmt = _format_for(path_or_file, format)
    single = source is not None or len(poses.sources) <= 1
    cells = poses.cells(source)
    rate = float(fps) if fps else (poses.fps or 1.0)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if frames is None:
        limit = max(1, int(max_frames))
        if fmt == "GIF" and rate * _GIF_MIN_MS > 1000:
            stride = math.ceil(rate * _GIF_MIN_MS / 1000)
            limit = min(limit, math.ceil(len(cells) / stride))
        cells = _select(cells, limit, limit, single)
    else:
        cells = _select(cells, frames, None, single)
    if not cells:
        raise ValueError("no frames to draw")
    ref = poses.reference_size(cells[0][0])
    factor = float(scale) if scale is not None else min(1.0, 640 / max(ref))
    out_size = (max(1, round(ref[0] * factor)), max(1, round(ref[1] * factor)))
    images = []
    font = _font(max(10, out_size[1] // 30)) if label else None
    for src, f in cells:
        img = _render(
            poses,
            src,
            f,
            background=background,
            threshold=threshold,
            size=out_size,
            line_width=line_width,
            point_radius=point_radius,
            boxes=False,
            labels=False,
            reference=ref if poses.is_video_source(src) else None,
        )
        if font is not None:
            text = _label(poses, src, f, not single)
            ImageDraw.Draw(img).text((6, 4), text, fill=_TEXT_COLOR, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
        images.append(img)
    durations = _durations([f for _, f in cells], rate, 10 if fmt == "GIF" else 1, frames is None)
    buf = io.BytesIO()
    params: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": durations, "loop": loop}
    if fmt == "GIF":
        params["disposal"] = 1
    images[0].save(buf, format=fmt, **params)
    _emit(buf.getvalue(), path_or_file)
    return len(images)


# --------------------------------------------------------------------------------------------- writing


def _emit(data: bytes, target: Any) -> None:
    if hasattr(target, "write") and not (hasattr(target, "fs") and hasattr(target, "path")):
        target.write(data)
    else:
        _write_bytes(data, target)


def _write_bytes(data: bytes, uri: Any) -> None:
    """Write ``data`` atomically on any storage (see :func:`~airflow_provider_kakaopose.tables.write_atomically`)."""
    from airflow_provider_kakaopose.tables import write_atomically

    def write(sink: Any) -> None:
        if isinstance(sink, str):
            with open(sink, "wb") as f:
                f.write(data)
        else:
            sink.write(data)

    write_atomically(uri, write)


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


def _sibling(uri: Any, suffix: str) -> Any:
    """``uri`` with its ``.parquet`` suffix (if any) replaced by ``suffix``."""
    if hasattr(uri, "fs") and hasattr(uri, "path") and hasattr(uri, "with_suffix"):
        return uri.with_suffix(suffix) if str(uri.path).endswith(".parquet") else uri.with_name(uri.name + suffix)
    text = os.fspath(uri)
    if isinstance(text, bytes):
        text = text.decode()
    return (text[: -len(".parquet")] if text.endswith(".parquet") else text) + suffix


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
    poses = _load(table)
    written: dict[str, Any] = {}
    if sheet:
        png_uri = _sibling(parquet_uri, ".png")
        save_png(contact_sheet(poses, threshold=threshold, background=background), png_uri)
        written["png"] = png_uri
    single = len(poses.sources) <= 1
    if animation and single and poses.is_video_source(poses.sources[0]) and len(poses.cells(None)) > 1:
        ext = animation_format.lower().lstrip(".")
        anim_uri = _sibling(parquet_uri, f".anim.{ext}" if ext == "png" else f".{ext}")
        animate(poses, anim_uri, threshold=threshold, background=background)
        written[ext if ext != "png" else "apng"] = anim_uri
    return written
