"""Tests for :mod:`airflow_provider_kakaopose.render`: pixels land where the keypoints are."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from airflow_provider_kakaopose import render
from airflow_provider_kakaopose.render import (
    BLANK_COLOR,
    PALETTE,
    UNTRACKED_COLOR,
    animate,
    color_for,
    contact_sheet,
    draw_frame,
    save_png,
    write_pictures,
)
from airflow_provider_kakaopose.tables import keypoints_table, read_keypoints, write_parquet

# A standing figure in pixel coordinates, keypoint id -> (x, y). Limbs (6, 7) and (12, 13) are horizontal.
FIGURE = {
    1: (100, 40),
    2: (108, 32),
    3: (92, 32),
    4: (116, 38),
    5: (84, 38),
    6: (130, 80),
    7: (70, 80),
    8: (140, 130),
    9: (60, 130),
    10: (145, 175),
    11: (55, 175),
    12: (120, 170),
    13: (80, 170),
    14: (122, 230),
    15: (78, 230),
    16: (124, 290),
    17: (76, 290),
}
PLAIN = dict(line_width=3, point_radius=4)


def person(dx: float = 0, dy: float = 0, score: float = 0.9, scores: dict | None = None, undetected=()) -> dict:
    kps: list[float] = []
    for k in range(1, 18):
        x, y = FIGURE[k]
        if k in undetected:
            kps += [0, 0, 0]
        else:
            kps += [x + dx, y + dy, (scores or {}).get(k, score)]
    return {"area": 27000.0, "bbox": [50 + dx, 25 + dy, 100, 270], "category_id": 1, "keypoints": kps, "score": 0.95}


def video(frames: list[list[dict]], *, fps: float = 10, width: int = 480, height: int = 360, source="v.mp4"):
    answer = {
        "annotations": [{"frame_num": f, "objects": objs} for f, objs in enumerate(frames)],
        "categories": [{"id": 1}],
        "info": {},
        "job_id": "job-1",
        "status": "success",
        "video": {"fps": fps, "frames": len(frames), "width": width, "height": height},
    }
    return keypoints_table(answer, source=source)


def with_tracks(table: pa.Table, track_of: dict[tuple[int, int], int | None]) -> pa.Table:
    """Add a ``track_id`` column (int32) after ``person_idx``: ``track_of[(frame, person)]``."""
    frames = table.column("frame_num").to_pylist()
    persons = table.column("person_idx").to_pylist()
    tracks = pa.array([track_of[(f, p)] for f, p in zip(frames, persons, strict=True)], pa.int32())
    at = table.schema.get_field_index("person_idx") + 1
    return table.add_column(at, pa.field("track_id", pa.int32()), tracks)


def px(img: Image.Image, xy) -> tuple[int, int, int]:
    return img.convert("RGB").getpixel((round(xy[0]), round(xy[1])))


def mid(a: int, b: int, dx: float = 0, dy: float = 0) -> tuple[float, float]:
    (x1, y1), (x2, y2) = FIGURE[a], FIGURE[b]
    return (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy


# --------------------------------------------------------------------------------------------- draw_frame


def test_confident_keypoints_and_limbs_are_drawn_in_the_person_colour():
    table = keypoints_table([person()], source="a.jpg")
    img = draw_frame(table, **PLAIN)
    for k, xy in FIGURE.items():
        assert px(img, xy) == PALETTE[0], f"keypoint {k}"
    assert px(img, mid(6, 7)) == PALETTE[0]  # shoulders
    assert px(img, mid(12, 13)) == PALETTE[0]  # hips
    assert px(img, mid(14, 16)) == PALETTE[0]  # left shin
    assert px(img, (10, 10)) == BLANK_COLOR
    assert px(img, (100, 120)) == BLANK_COLOR  # inside the torso, not on a limb


def test_threshold_hides_keypoints_and_their_limbs():
    # left wrist (10) at 0.1: no dot, and the forearm 8-10 is not drawn; right wrist (11) exactly at 0.2: drawn
    table = keypoints_table([person(scores={10: 0.1, 11: 0.2})])
    img = draw_frame(table, threshold=0.2, **PLAIN)
    assert px(img, FIGURE[10]) == BLANK_COLOR
    assert px(img, mid(8, 10)) == BLANK_COLOR
    assert px(img, FIGURE[11]) == PALETTE[0]
    assert px(img, mid(9, 11)) == PALETTE[0]
    low = draw_frame(table, threshold=0.05, **PLAIN)
    assert px(low, FIGURE[10]) == PALETTE[0]
    assert px(low, mid(8, 10)) == PALETTE[0]
    high = draw_frame(table, threshold=0.95, **PLAIN)
    assert np.array_equal(np.asarray(high), np.zeros_like(np.asarray(high)))  # nothing confident enough


def test_undetected_keypoints_draw_nothing():
    table = keypoints_table([person(undetected=(16, 17))])
    assert table.column("x").null_count == 2
    img = draw_frame(table, threshold=0.0, **PLAIN)
    assert px(img, (0, 0)) == BLANK_COLOR  # the API's 0, 0 placeholder
    assert px(img, mid(14, 16)) == BLANK_COLOR  # shin 14-16 needs the ankle
    assert px(img, FIGURE[14]) == PALETTE[0]


def test_blank_canvas_has_the_video_size_and_scaling_follows_size():
    table = video([[person()], [person(dx=20)]], width=480, height=360)
    img = draw_frame(table, 1)
    assert img.size == (480, 360)
    assert img.mode == "RGB"
    assert px(img, (FIGURE[6][0] + 20, FIGURE[6][1])) == PALETTE[0]
    half = draw_frame(table, 1, size=(240, 180), **PLAIN)
    assert half.size == (240, 180)
    assert px(half, ((FIGURE[6][0] + 20) / 2, FIGURE[6][1] / 2)) == PALETTE[0]
    empty = draw_frame(video([[], [person()]]), 0)  # nobody in frame 0
    assert empty.size == (480, 360)
    assert not np.asarray(empty).any()


def test_image_table_canvas_fits_keypoints_and_boxes():
    table = keypoints_table([person(dx=300, dy=50)])
    img = draw_frame(table)
    # bbox right = 50 + 300 + 100 = 450, bottom = 25 + 50 + 270 = 345 (> ankles at 340); plus an 8 px margin
    assert img.size == (458, 353)
    assert draw_frame(keypoints_table([])).size == (640, 480)


OUTLIER_SCRIPT = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 2 GB: the old canvas hit MemoryError here fast
sys.path.insert(0, sys.argv[1])
from test_render import FIGURE, person, video
from PIL import Image
from airflow_provider_kakaopose import render
from airflow_provider_kakaopose.render import PALETTE, contact_sheet, draw_frame
from airflow_provider_kakaopose.tables import keypoints_table

out = {}
def timed(name, make):
    t0 = time.perf_counter()
    try:
        img = make()
    except Exception as e:  # recorded: the parent shows every failure at once
        out[name] = {"error": f"{type(e).__name__}: {e}"[:300], "s": time.perf_counter() - t0}
        return None
    out[name] = {"size": list(img.size), "s": time.perf_counter() - t0, "colours": len(img.getcolors(1 << 16) or [])}
    return img

far = person()
far["keypoints"][0:2] = [1e7, 1e7]  # the nose, 10 million px away: the canvas used to hold it
img = timed("outlier", lambda: draw_frame(keypoints_table([far]), boxes=True, labels=True))
huge = person()
huge["keypoints"][3:5] = [3e38, 3e38]  # near float32's largest
timed("float32 max", lambda: draw_frame(keypoints_table([huge, person(dx=200)]), labels=True))
flipped = person()
flipped["bbox"] = [150, 295, -100, -270]  # a negative size: validation accepts it
img = timed("negative bbox", lambda: draw_frame(keypoints_table([flipped]), boxes=True, line_width=4))
if img is not None:
    out["negative bbox"]["edge"] = list(img.getpixel((50, 160)))  # left edge of the box from 50 to 150
bg = Image.new("RGB", (640, 480), (9, 9, 9))
wide = person()
wide["keypoints"][0:2] = [1e9, 5e8]
wide["bbox"] = [50, 25, 1e9, 1e9]
timed("1-px lines to 1e9 px", lambda: draw_frame(keypoints_table([wide]), background=bg, boxes=True, line_width=1))
label = person()
label["bbox"] = [1e30, 1e30, 10, 10]
timed("label at 1e30", lambda: draw_frame(keypoints_table([label]), background=bg, boxes=True, labels=True))
tall = person()
tall["keypoints"][-3:-1] = [76, 1e7]  # right ankle (x, y), far below
timed("sheet", lambda: contact_sheet(keypoints_table([tall]), thumb_width=320))
timed("video 1e7 wide", lambda: draw_frame(video([[person()]], width=10**7, height=10**6)))
try:
    out["big size"] = list(draw_frame(keypoints_table([person()]), size=(10**5, 10)).size)
except Exception as e:
    out["big size"] = f"{type(e).__name__}: {e}"
out["max"] = getattr(render, "MAX_CANVAS_SIDE", None)
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def test_outliers_cannot_exhaust_memory_or_crash(tmp_path):
    """One keypoint at (1e7, 1e7) used to size the canvas to hold it (OOM-killed at 15 GB); a negative bbox size
    crashed Pillow. Run under a 2 GB address-space limit, so the old behaviour fails fast (MemoryError)."""
    script = tmp_path / "outliers.py"
    script.write_text(OUTLIER_SCRIPT)
    tests = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), tests], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {k: v["error"] for k, v in out.items() if isinstance(v, dict) and "error" in v}
    assert not failed, failed
    side = out["max"]
    assert side == render.MAX_CANVAS_SIDE == 4096
    for name in ("outlier", "float32 max", "video 1e7 wide"):
        assert max(out[name]["size"]) <= side, (name, out[name])
    assert out["sheet"]["size"] == [320 + 2 * 4, side + 20 + 2 * 4]  # a cell of at most the limit, label, gaps
    assert out["outlier"]["size"] == [side, side]  # scaled down to the limit, aspect kept
    assert out["outlier"]["colours"] > 1  # the person is still drawn (small, in a corner)
    assert out["video 1e7 wide"]["size"] == [side, round(side / 10)]
    assert out["negative bbox"]["size"] == [158, 303]  # the box's corners: (150, 295) and (50, 25)
    assert out["negative bbox"]["edge"] == list(PALETTE[0])  # drawn between its corners
    for name in ("1-px lines to 1e9 px", "label at 1e30"):
        assert out[name]["size"] == [640, 480] and out[name]["s"] < 2.0, (name, out[name])
    assert "ValueError: size must be at most 4096 px a side" in out["big size"]
    assert out["rss_mb"] < 1024


def test_clipping_keeps_what_is_on_the_canvas():
    """A limb to a far-away keypoint is drawn up to the canvas edge, in its direction; the rest is unchanged."""
    far = person()
    # left ankle: 45 degrees down-right of the knee, 10 million px away (exact in float32)
    far["keypoints"][15 * 3 : 15 * 3 + 2] = [122 + 1e7, 230 + 1e7]
    table = keypoints_table([far])
    bg = Image.new("RGB", (480, 400), BLANK_COLOR)
    img = np.asarray(draw_frame(table, background=bg, **PLAIN))
    near = person()
    near["keypoints"][15 * 3 : 15 * 3 + 2] = [122 + 1000, 230 + 1000]  # the same limb, 1000 px long
    ref = np.asarray(draw_frame(keypoints_table([near]), background=bg, **PLAIN))
    assert np.array_equal(img, ref)  # clipped to the canvas: the same picture
    assert px(Image.fromarray(img), (122 + 160, 230 + 160)) == PALETTE[0]  # the limb, on its way off the canvas
    with pytest.raises(ValueError, match="at most 4096"):
        contact_sheet(table, thumb_width=5000)


def test_colours_follow_track_id_across_frames():
    # frame 0: person 0 = track 7, person 1 = track 2; frame 1: the order in the answer swapped
    frames = [[person(), person(dx=200)], [person(dx=200, dy=5), person(dy=5)]]
    table = with_tracks(video(frames), {(0, 0): 7, (0, 1): 2, (1, 0): 2, (1, 1): 7})
    f0 = draw_frame(table, 0, **PLAIN)
    f1 = draw_frame(table, 1, **PLAIN)
    assert color_for(7) != color_for(2)
    assert px(f0, FIGURE[1]) == color_for(7) == PALETTE[7]
    assert px(f0, (FIGURE[1][0] + 200, FIGURE[1][1])) == color_for(2) == PALETTE[2]
    assert px(f1, (FIGURE[1][0], FIGURE[1][1] + 5)) == color_for(7)  # track 7 keeps its colour
    assert px(f1, (FIGURE[1][0] + 200, FIGURE[1][1] + 5)) == color_for(2)
    # without track_id, colours follow person_idx (which changed between the frames)
    plain = video(frames)
    assert px(draw_frame(plain, 1, **PLAIN), (FIGURE[1][0], FIGURE[1][1] + 5)) == PALETTE[1]


def test_untracked_people_are_white_and_palette_wraps():
    table = with_tracks(video([[person(), person(dx=200)]]), {(0, 0): None, (0, 1): 13})
    img = draw_frame(table, 0, **PLAIN)
    assert px(img, FIGURE[1]) == UNTRACKED_COLOR
    assert px(img, (FIGURE[1][0] + 200, FIGURE[1][1])) == PALETTE[3]
    assert color_for(None) == color_for(float("nan")) == color_for(-1) == UNTRACKED_COLOR
    assert len(set(PALETTE)) == len(PALETTE) == 10
    # nobody of the source tracked (an image after tracking): colours by person_idx
    nobody = with_tracks(video([[person(), person(dx=200)]]), {(0, 0): None, (0, 1): None})
    img = draw_frame(nobody, 0, **PLAIN)
    assert px(img, FIGURE[1]) == PALETTE[0]
    assert px(img, (FIGURE[1][0] + 200, FIGURE[1][1])) == PALETTE[1]
    assert BLANK_COLOR not in PALETTE and UNTRACKED_COLOR not in PALETTE


def test_background_is_kept_elsewhere(tmp_path):
    table = video([[person()]], width=480, height=360)
    green = Image.new("RGB", (480, 360), (10, 200, 30))
    img = draw_frame(table, 0, background=green, **PLAIN)
    assert px(img, FIGURE[6]) == PALETTE[0]
    assert px(img, (5, 5)) == px(img, (470, 350)) == (10, 200, 30)
    assert green.getpixel((130, 80)) == (10, 200, 30)  # the caller's image is not drawn on
    # a frame at half resolution: the canvas is the frame, keypoints are scaled to it
    small = np.full((180, 240, 3), 50, np.uint8)
    img = draw_frame(table, 0, background=small, **PLAIN)
    assert img.size == (240, 180)
    assert px(img, (FIGURE[6][0] / 2, FIGURE[6][1] / 2)) == PALETTE[0]
    assert px(img, (230, 170)) == (50, 50, 50)
    # a callable gets (source, frame_num)
    seen = []
    img = draw_frame(table, 0, background=lambda s, f: seen.append((s, f)) or green, **PLAIN)
    assert seen == [("v.mp4", 0)]
    assert px(img, (5, 5)) == (10, 200, 30)
    # encoded bytes and a path
    buf = io.BytesIO()
    green.save(buf, format="PNG")
    assert px(draw_frame(table, 0, background=buf.getvalue()), (5, 5)) == (10, 200, 30)
    green.save(tmp_path / "bg.png")
    assert px(draw_frame(table, 0, background=tmp_path / "bg.png"), (5, 5)) == (10, 200, 30)


def test_background_source_loads_a_local_image(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 320), (200, 20, 20)).save(photo)
    for source in (str(photo), photo.as_uri()):
        table = keypoints_table([person()], source=source)
        img = draw_frame(table, background="source", **PLAIN)
        assert img.size == (300, 320)  # the image's own size, not the fitted canvas
        assert px(img, (5, 5)) == (200, 20, 20)
        assert px(img, FIGURE[1]) == PALETTE[0]
    # not loadable (remote URL, a video, a missing file): blank canvas
    for source in ("https://example.com/a.jpg", str(tmp_path / "missing.jpg")):
        img = draw_frame(keypoints_table([person()], source=source), background="source")
        assert px(img, (5, 5)) == BLANK_COLOR


def test_dataframe_and_parquet_uri_draw_the_same(tmp_path):
    table = with_tracks(video([[person(), person(dx=200)], [person(dx=10)]]), {(0, 0): 4, (0, 1): 5, (1, 0): 4})
    path = tmp_path / "v.parquet"
    write_parquet(table, path)
    df = read_keypoints(path)
    assert "track_id" in df.columns
    expected = np.asarray(draw_frame(table, 0, boxes=True, labels=True))
    assert np.array_equal(np.asarray(draw_frame(df, 0, boxes=True, labels=True)), expected)
    assert np.array_equal(np.asarray(draw_frame(str(path), 0, boxes=True, labels=True)), expected)


def test_several_sources_pick_one():
    meta = None
    parts = []
    for i, name in enumerate(["a.jpg", "b.jpg"]):
        t = keypoints_table([person(dx=100 * i)], source=name)
        meta = meta or t.schema.metadata
        parts.append(t.replace_schema_metadata(meta))
    table = pa.concat_tables(parts)
    first = draw_frame(table, **PLAIN)
    assert px(first, FIGURE[1]) == PALETTE[0]
    second = draw_frame(table, source="b.jpg", **PLAIN)
    assert px(second, FIGURE[1]) == BLANK_COLOR
    assert px(second, (FIGURE[1][0] + 100, FIGURE[1][1])) == PALETTE[0]
    with pytest.raises(ValueError, match="not in the table"):
        draw_frame(table, source="c.jpg")
    sheet = contact_sheet(table, columns=4, thumb_width=100, labels=False, gap=2)
    assert sheet.size == (2 * 100 + 3 * 2, sheet.size[1])  # one cell per image


def test_not_a_keypoints_table():
    with pytest.raises(ValueError, match="keypoint_id"):
        draw_frame(pa.table({"frame_num": [0], "person_idx": [0]}))
    with pytest.raises(TypeError):
        draw_frame([1, 2, 3])


# --------------------------------------------------------------------------------------------- contact sheet


def test_contact_sheet_grid_and_cells():
    frames = [[person(dx=20 * f)] for f in range(10)]
    table = video(frames, width=400, height=300)
    sheet = contact_sheet(table, frames=7, columns=3, thumb_width=100, label_height=20, gap=4)
    thumb_h = 75  # 100 * 300 / 400
    assert sheet.size == (3 * 100 + 4 * 4, 3 * (thumb_h + 20) + 4 * 4)
    no_labels = contact_sheet(table, frames=[0, 9], columns=4, thumb_width=100, labels=False, gap=0)
    assert no_labels.size == (200, 75)
    # cell 0 is frame 0, cell 1 is frame 9: the nose lands at thumbnail scale 1/4
    assert px(no_labels, (FIGURE[1][0] / 4, FIGURE[1][1] / 4)) == PALETTE[0]
    assert px(no_labels, (100 + (FIGURE[1][0] + 180) / 4, FIGURE[1][1] / 4)) == PALETTE[0]
    assert px(no_labels, (100 + FIGURE[1][0] / 4, FIGURE[1][1] / 4)) == BLANK_COLOR
    default = contact_sheet(table, columns=5, thumb_width=40, labels=False, gap=0)
    assert default.size == (5 * 40, 2 * 30)  # 10 frames <= 12: all of them


@pytest.fixture
def drawn(monkeypatch):
    """The frame numbers drawn, in order (every frame goes through ``render._render``)."""
    frame_nums = []
    real = render._render

    def spy(poses, source, frame_num, **kw):
        frame_nums.append(frame_num)
        return real(poses, source, frame_num, **kw)

    monkeypatch.setattr(render, "_render", spy)
    return frame_nums


def test_contact_sheet_evenly_spaces_frames(drawn):
    table = video([[person()] for _ in range(101)])
    contact_sheet(table, frames=5, thumb_width=20)
    assert drawn == [0, 25, 50, 75, 100]
    drawn.clear()
    contact_sheet(table, thumb_width=20)
    assert len(drawn) == 12 and drawn[0] == 0 and drawn[-1] == 100


def test_sheet_and_animation_show_the_answers_frames_only(drawn):
    """A video answer with frames 0, 5, 10 (the metadata records them): three cells, not eleven."""
    answer = {
        "annotations": [{"frame_num": f, "objects": objs} for f, objs in ((0, [person()]), (5, []), (10, [person()]))],
        "categories": [{"id": 1}],
        "info": {},
        "job_id": "job-1",
        "status": "success",
        "video": {"fps": 10, "frames": 11, "width": 480, "height": 360},
    }
    table = keypoints_table(answer, source="v.mp4")
    contact_sheet(table, thumb_width=40)
    assert drawn == [0, 5, 10]
    drawn.clear()
    buf = io.BytesIO()
    assert animate(table, buf) == 3 and drawn == [0, 5, 10]
    assert gif_frames(buf.getvalue())[1] == [500, 500, 100]  # 5 video frames at 10 fps, then the last one


# --------------------------------------------------------------------------------------------- animation


def gif_frames(data: bytes) -> tuple[int, list[int]]:
    with Image.open(io.BytesIO(data)) as im:
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
        return im.n_frames, durations


def test_gif_has_every_frame_at_the_video_rate(tmp_path):
    table = video([[person(dx=10 * f)] for f in range(6)], fps=10)
    out = tmp_path / "v.gif"
    assert animate(table, out) == 6
    n, durations = gif_frames(out.read_bytes())
    assert (n, durations) == (6, [100] * 6)
    with Image.open(out) as im:
        assert im.format == "GIF"
        assert im.size == (480, 360)
        assert im.info.get("loop") == 0
        im.seek(2)
        assert im.convert("RGB").getpixel((FIGURE[6][0] + 20, FIGURE[6][1])) == PALETTE[0]


def test_gif_durations_track_real_time():
    table = video([[person(dx=f)] for f in range(30)], fps=30)
    buf = io.BytesIO()
    assert animate(table, buf, scale=0.25) == 30
    n, durations = gif_frames(buf.getvalue())
    assert n == 30
    assert set(durations) <= {30, 40}  # 33.3 ms in GIF's 10 ms steps
    assert sum(durations) == 1000
    # thinned: 6 of the 30 frames, each shown for the time of the frames it stands for
    buf = io.BytesIO()
    assert animate(table, buf, max_frames=6, scale=0.25, fps=30) == 6
    n, durations = gif_frames(buf.getvalue())
    assert n == 6
    assert abs(sum(durations) - 1000) <= 10
    buf = io.BytesIO()
    animate(table, buf, frames=[0, 10, 20], scale=0.5)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.n_frames == 3 and im.size == (240, 180)


def test_animation_formats(tmp_path):
    table = video([[person(dx=10 * f)] for f in range(3)], fps=5)
    animate(table, tmp_path / "v.webp")
    with Image.open(tmp_path / "v.webp") as im:
        assert im.format == "WEBP" and im.n_frames == 3
    animate(table, tmp_path / "v.png")
    with Image.open(tmp_path / "v.png") as im:
        assert im.format == "PNG" and im.n_frames == 3
    with pytest.raises(ValueError, match="mp4"):
        animate(table, tmp_path / "v.mp4")


# --------------------------------------------------------------------------------------------- writing


def test_save_png_local_is_atomic(tmp_path, monkeypatch):
    img = draw_frame(video([[person()]]), 0)
    out = tmp_path / "deep" / "dir" / "f.png"
    save_png(img, out)
    assert os.listdir(out.parent) == ["f.png"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (480, 360)
        assert im.convert("RGB").getpixel(FIGURE[1]) == PALETTE[0]
    # a failure while writing leaves the old file and no temporary file
    before = out.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_png(Image.new("RGB", (5, 5)), out)
    assert out.read_bytes() == before
    assert os.listdir(out.parent) == ["f.png"]


def test_save_png_to_memory_and_file_uri(tmp_path):
    img = draw_frame(keypoints_table([person()]))
    save_png(img, "memory://render-test/pics/a.png")
    fs = fsspec.filesystem("memory")
    try:
        assert fs.ls("/render-test/pics", detail=False) == ["/render-test/pics/a.png"]
        with Image.open(io.BytesIO(fs.cat_file("/render-test/pics/a.png"))) as im:
            assert im.format == "PNG" and im.convert("RGB").getpixel(FIGURE[1]) == PALETTE[0]
    finally:
        fs.rm("/render-test", recursive=True)
    save_png(img, (tmp_path / "b.png").as_uri())
    assert sorted(os.listdir(tmp_path)) == ["b.png"]


def test_write_pictures_next_to_the_parquet(tmp_path):
    table = video([[person(dx=10 * f)] for f in range(4)])
    written = write_pictures(table, str(tmp_path / "v.parquet"))
    assert written == {"png": str(tmp_path / "v.png"), "gif": str(tmp_path / "v.gif")}
    assert sorted(os.listdir(tmp_path)) == ["v.gif", "v.png"]
    assert gif_frames((tmp_path / "v.gif").read_bytes())[0] == 4
    # an image table: no animation
    written = write_pictures(keypoints_table([person()]), "memory://render-test2/i.parquet")
    fs = fsspec.filesystem("memory")
    try:
        assert written == {"png": "memory://render-test2/i.png"}
        assert fs.exists("/render-test2/i.png")
    finally:
        fs.rm("/render-test2", recursive=True)


def test_import_is_cheap():
    code = (
        "import sys; import airflow_provider_kakaopose.render as r; "
        "bad = [m for m in ('PIL', 'numpy', 'pyarrow', 'pandas', 'airflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
