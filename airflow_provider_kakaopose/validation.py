"""Pre-flight checks of inputs against the Pose API's published limits.

Pure Python with no Airflow import: the hook uses it to fail before spending quota, and the emulator uses the
same rules to answer like the service (HTTP 400, code -2). Each check returns a list of problems, one
sentence each, naming the input and the rule; an empty list means the input is fine.

The limits belong to the service and can change (a partnership raises them): pass your own :class:`Limits`
to the hook, or change :data:`DEFAULT_LIMITS` for the whole process.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Input limits of the Pose API (free tier defaults)."""

    max_image_bytes: int = 2 * MB
    max_video_bytes: int = 50 * MB
    max_long_side: int = 2048
    min_short_side: int = 320
    #: Longest side over shortest side: 16:9 … 9:16.
    max_aspect_ratio: float = 16 / 9
    image_formats: tuple[str, ...] = ("jpeg", "png", "heic", "webp")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ImageInfo:
    """Format and pixel size read from an image's header."""

    format: str
    width: int
    height: int


def sniff_image(data: bytes) -> ImageInfo | None:
    """Read the format and size of a JPEG, PNG, WebP or HEIC image from its bytes; ``None`` if unknown."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return ImageInfo("png", w, h)
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[4:8] == b"ftyp" and _is_heic_brand(data):
            return _heic_size(data)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _jpeg_size(data: bytes) -> ImageInfo | None:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return ImageInfo("jpeg", w, h)
        i += 2 + length
    return None


def _webp_size(data: bytes) -> ImageInfo | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return ImageInfo("webp", w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L":
        b = data[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return ImageInfo("webp", w, h)
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        return ImageInfo("webp", w, h)
    return None


_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def _is_heic_brand(data: bytes) -> bool:
    (size,) = struct.unpack(">I", data[:4])
    brands = [data[8:12]] + [data[i : i + 4] for i in range(16, min(size, len(data)), 4)]
    return any(b in _HEIC_BRANDS for b in brands)


def _heic_size(data: bytes) -> ImageInfo | None:
    # The 'ispe' property (image spatial extents) holds width and height; take the largest one found
    # (thumbnails carry their own, smaller 'ispe').
    best: tuple[int, int] | None = None
    start = 0
    while True:
        i = data.find(b"ispe", start)
        if i < 0 or i + 16 > len(data):
            break
        w, h = struct.unpack(">II", data[i + 8 : i + 16])
        if best is None or w * h > best[0] * best[1]:
            best = (w, h)
        start = i + 4
    return ImageInfo("heic", *best) if best else None


def check_image_bytes(data: bytes, name: str, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Problems with an image file's content: emptiness, size, format, sides and aspect ratio."""
    if not data:
        return [f"image {name!r} is empty (0 bytes)"]
    problems = []
    if len(data) > limits.max_image_bytes:
        problems.append(f"image {name!r} is {len(data):,} bytes; the limit is {limits.max_image_bytes:,} bytes")
    info = sniff_image(data)
    if info is None or info.format not in limits.image_formats:
        allowed = "/".join(f.upper() for f in limits.image_formats)
        problems.append(f"image {name!r} is not a {allowed} image (checked by content, not by name)")
        return problems
    problems.extend(_check_sides(info.width, info.height, f"image {name!r}", limits))
    return problems


def _check_sides(width: int, height: int, what: str, limits: Limits) -> list[str]:
    problems = []
    long_side, short_side = max(width, height), min(width, height)
    if long_side > limits.max_long_side:
        problems.append(f"{what} is {width}x{height} px; the longer side must be at most {limits.max_long_side} px")
    if short_side < limits.min_short_side:
        problems.append(f"{what} is {width}x{height} px; the shorter side must be at least {limits.min_short_side} px")
    if short_side > 0 and long_side / short_side > limits.max_aspect_ratio + 1e-9:
        problems.append(
            f"{what} is {width}x{height} px; the aspect ratio must be between 16:9 and 9:16"
            f" (at most {limits.max_aspect_ratio:.3f}:1), not {long_side / short_side:.3f}:1"
        )
    return problems


def check_video_size(size: int, name: str, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Problems with a video file's size (the service reads the pixels itself)."""
    if size == 0:
        return [f"video {name!r} is empty (0 bytes)"]
    if size > limits.max_video_bytes:
        return [f"video {name!r} is {size:,} bytes; the limit is {limits.max_video_bytes:,} bytes"]
    return []


def check_url(url: str, what: str = "URL", *, any_port: bool = False) -> list[str]:
    """Problems with a URL the service is asked to fetch: http on port 80 or https on port 443 only (any port
    with ``any_port``: the service only *recommends* HTTPS on 443 for a ``callback_url``)."""
    if not isinstance(url, str) or not url.strip():
        return [f"{what} {url!r} is empty"]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        return [f"{what} {url!r} is not a valid URL ({err})"]
    if parts.scheme not in ("http", "https"):
        return [f"{what} {url!r} must use http or https, not {parts.scheme or 'no scheme'!r}"]
    if not parts.hostname:
        return [f"{what} {url!r} has no host"]
    expected = 80 if parts.scheme == "http" else 443
    if port not in (None, expected) and not any_port:
        return [f"{what} {url!r} uses port {port}; the service only fetches {parts.scheme} on port {expected}"]
    return []
