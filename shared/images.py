"""Decode untrusted image bytes only after their header says the result is a sane size.

Why: a few hundred bytes of JPEG can declare 12000×12000 pixels, and a decoder allocates what
the header declares (432 MB here) before it finds out the data is missing. A frame of 2×8192
pixels is small, but resizing its shorter side to 256 makes a 256×1048576 image (800 MB).
Both are refused here from the header alone: pixel count and aspect ratio are checked before
a single pixel is decoded, for JPEG, PNG, BMP and WebP (the formats cameras and folders give).
Anything whose size cannot be read from its header is refused too: OpenCV's own limit
(``OPENCV_IO_MAX_IMAGE_PIXELS``) is read once per process and far too large to protect a box.

The header parsers are pure (bytes in, numbers out) so they can be fuzzed without a disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.errors import ParkwatchError

U8 = npt.NDArray[np.uint8]

#: 4096×4096: above 4K UHD (3840×2160) and a 12 MP (4000×3000) camera; 50 MB decoded.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: files (data lake, package golden samples): a 50 MP phone photo passes, 12000×12000 does not
FILE_MAX_PIXELS = 50_000_000
#: wider than any panoramic camera (32:9 is 3.6); keeps the shorter-side resize bounded.
DEFAULT_MAX_ASPECT = 16.0

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

#: refusal kinds, as counted per camera and reported in telemetry
TOO_MANY_PIXELS = "too-many-pixels"
BAD_SHAPE = "bad-shape"
NO_HEADER = "no-size-in-header"
UNDECODABLE = "undecodable"


class ImageRefused(ParkwatchError):
    """An image was not decoded; ``kind`` is one of the constants above (counted by kind)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, walking the segments; None if absent."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in SOF_MARKERS:
            if i + 9 > n:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return (w, h) if w and h else None  # height 0 = "defined later by DNL": refused
        if marker in (0xDA, 0xD9) or length < 2:  # scan or end before any frame header
            return None
        i += 2 + length
    return None


def png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (w, h) if w and h else None


def bmp_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"BM" or len(data) < 26:
        return None
    header = int.from_bytes(data[14:18], "little")
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        w, h = int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    else:
        w = int.from_bytes(data[18:22], "little", signed=True)
        h = abs(int.from_bytes(data[22:26], "little", signed=True))  # negative = top-down
    return (w, h) if w > 0 and h > 0 else None


def webp_size(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w = int.from_bytes(data[26:28], "little") & 0x3FFF
        h = int.from_bytes(data[28:30], "little") & 0x3FFF
    elif chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
    else:
        return None
    return (w, h) if w and h else None


def image_header(data: bytes) -> Header | None:
    """Format and declared size, from the header alone; None when no known header gives a size."""
    for fmt, fn in (("JPEG", jpeg_size), ("PNG", png_size), ("BMP", bmp_size), ("WEBP", webp_size)):
        size = fn(data)
        if size is not None:
            return Header(fmt, *size)
    return None


def check_size(
    width: int,
    height: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    source: str = "image",
) -> None:
    """Refuse sizes no camera produces: more than ``max_pixels`` or a side ratio above ``max_aspect``."""
    if width <= 0 or height <= 0:
        raise ImageRefused(BAD_SHAPE, f"{source}: declares {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageRefused(
            TOO_MANY_PIXELS,
            f"{source}: declares {width}x{height} = {width * height} pixels, more than the "
            f"limit {max_pixels} (refused before decoding)",
        )
    if max(width, height) / min(width, height) > max_aspect:
        raise ImageRefused(
            BAD_SHAPE,
            f"{source}: {width}x{height} has a side ratio above {max_aspect:g}:1 (no camera image is "
            "shaped like that; resizing it would need huge memory)",
        )


def decode_capped(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    source: str = "image",
) -> U8:
    """BGR uint8 of ``data``, decoded only if its header declares an acceptable size."""
    header = image_header(data)
    if header is None:
        raise ImageRefused(NO_HEADER, f"{source}: not a JPEG, PNG, BMP or WebP whose size can be read")
    check_size(header.width, header.height, max_pixels, max_aspect, source)
    import cv2  # here, not at the top: edge.config imports this module's constants, and the CLI stays light

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageRefused(UNDECODABLE, f"{source}: {header.format} data does not decode")
    if sorted(img.shape[:2]) != sorted((header.width, header.height)):
        # the header we parsed is not the one the decoder used: never trust such a file
        # (sorted: the decoder applies EXIF orientation, which may swap the sides)
        raise ImageRefused(
            BAD_SHAPE,
            f"{source}: header says {header.width}x{header.height}, decoder gave "
            f"{img.shape[1]}x{img.shape[0]}",
        )
    return np.asarray(img, dtype=np.uint8)
