"""Real photographs and a synthetic video for trying the local engine, with nothing downloaded.

``python -m airflow_provider_kakaopose.emulator.samples DIR`` (in the engine's environment, ``.venv-engine``)
writes into DIR:

- ``astronaut.png`` and ``camera.png``: scikit-image's bundled photographs (``skimage.data``), each with one
  person (512 x 512);
- ``astronaut_slide.mp4``: the astronaut photo sliding left to right across a 960 x 540 black canvas
  (30 fps, 2 s), and ``astronaut_slide.json``: the photo's offset ``[dx, dy]`` in every frame, so a test
  knows where the person must be.

Needs scikit-image and OpenCV (both in the ``engine`` extra); imports neither at module level.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

PHOTOS = ("astronaut", "camera")
SLIDE_CANVAS = (960, 540)  # width, height: 16:9, inside the service's limits
SLIDE_FPS = 30
SLIDE_FRAMES = 60
SLIDE_Y = 14


def photo(name: str) -> Any:
    """RGB pixels (512 x 512 x 3 uint8) of one of :data:`PHOTOS`."""
    import numpy as np
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; known: {', '.join(PHOTOS)}")
    pixels = getattr(skimage.data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3])


def slide_offsets(
    frames: int = SLIDE_FRAMES, canvas: tuple[int, int] = SLIDE_CANVAS, size: int = 512
) -> list[list[int]]:
    """``[dx, dy]`` of the photo's top-left corner in each frame of the sliding video."""
    span = canvas[0] - size
    return [[round(span * f / max(frames - 1, 1)), SLIDE_Y] for f in range(frames)]


def write_slide_video(
    path: str | os.PathLike, name: str = "astronaut", frames: int = SLIDE_FRAMES, fps: float = SLIDE_FPS
) -> list[list[int]]:
    """Write the sliding video of photo ``name`` (MPEG-4 in .mp4, ``fps`` frames per second); returns the offsets."""
    import cv2
    import numpy as np

    pixels = cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR)
    h, w = pixels.shape[:2]
    width, height = SLIDE_CANVAS
    offsets = slide_offsets(frames, SLIDE_CANVAS, w)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write an MPEG-4 video to {path}")
    try:
        for dx, dy in offsets:
            canvas = np.zeros((height, width, 3), dtype=np.uint8)
            canvas[dy : dy + h, dx : dx + w] = pixels
            writer.write(canvas)
    finally:
        writer.release()
    return offsets


def write_samples(directory: str | os.PathLike) -> dict[str, str]:
    """Write the photos, the sliding video and its offsets into ``directory``; returns name -> path."""
    import cv2

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for name in PHOTOS:
        target = out / f"{name}.png"
        if not cv2.imwrite(str(target), cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR)):
            raise RuntimeError(f"cannot write {target}")
        written[name] = str(target)
    video = out / "astronaut_slide.mp4"
    offsets = write_slide_video(video)
    meta = {
        "photo": "astronaut.png",
        "fps": SLIDE_FPS,
        "frames": len(offsets),
        "canvas": list(SLIDE_CANVAS),
        "offsets": offsets,
    }
    (out / "astronaut_slide.json").write_text(json.dumps(meta))
    written["astronaut_slide"] = str(video)
    written["astronaut_slide_offsets"] = str(out / "astronaut_slide.json")
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m airflow_provider_kakaopose.emulator.samples DIR", file=sys.stderr)
        return 2
    for name, path in write_samples(args[0]).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
