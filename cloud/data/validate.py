"""Check one file: readable, not too big, decodes completely, large enough; hash it.

Runs in worker processes, so it takes and returns plain picklable values. The header (size,
format) is parsed directly for JPEG and PNG (Pillow for anything else) without decoding; the full
entropy-coded stream is then decoded by OpenCV at 1/8 scale, which still reads every byte
(truncation and most corruption fail) at about four times the speed of a full decode.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from shared.images import DEFAULT_MAX_ASPECT, FILE_MAX_PIXELS, PNG_SIGNATURE, jpeg_size

JPEG_EOI = b"\xff\xd9"
PNG_IEND = b"IEND"


@dataclass(frozen=True)
class Checked:
    path: str
    sha256: str | None
    size: int
    width: int = 0
    height: int = 0
    problem: tuple[str, str] | None = None


def _header(data: bytes) -> tuple[str | None, int, int]:
    """Format and size from the header alone: JPEG and PNG parsed directly (3x faster than Pillow)."""
    if (size := jpeg_size(data)) is not None:
        return ("JPEG", *size)
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return ("PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return (im.format, *im.size)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None, 0, 0


def structural_problem(fmt: str | None, data: bytes) -> str | None:
    """Pure: truncation signs decoders forgive (a JPEG without its end marker, a PNG without IEND)."""
    tail = data[-4096:].rstrip(b"\x00\r\n ")
    if fmt == "JPEG" and JPEG_EOI not in tail[-64:]:
        return "JPEG ends without its end-of-image marker (truncated)"
    if fmt == "PNG" and PNG_IEND not in tail[-64:]:
        return "PNG has no IEND chunk (truncated)"
    return None


def check_file(path: str, min_side: int, max_bytes: int) -> Checked:
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as e:
        return Checked(path, None, 0, problem=("unreadable", e.strerror or str(e)))
    size = len(data)
    if size > max_bytes:
        return Checked(path, None, size, problem=("too-large", f"bigger than max_bytes={max_bytes}"))
    if size == 0:
        return Checked(path, None, 0, problem=("empty", "file is empty (0 bytes)"))
    digest = hashlib.sha256(data).hexdigest()
    fmt, width, height = _header(data)
    if fmt is None:
        return Checked(path, digest, size, problem=("not-an-image", "not a recognised image format"))
    if why := structural_problem(fmt, data):
        return Checked(path, digest, size, width, height, ("corrupt", why))
    # Before decoding: a 333-byte JPEG can declare 12000x12000 and cost the trainer ~890 MB.
    if width * height > FILE_MAX_PIXELS:
        return Checked(
            path,
            digest,
            size,
            width,
            height,
            ("too-many-pixels", f"{width}x{height} is more than {FILE_MAX_PIXELS} pixels"),
        )
    if min(width, height) and max(width, height) / min(width, height) > DEFAULT_MAX_ASPECT:
        return Checked(
            path,
            digest,
            size,
            width,
            height,
            ("bad-shape", f"{width}x{height}: sides more than {DEFAULT_MAX_ASPECT:g}:1 apart"),
        )
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if img is None or img.size == 0:
        return Checked(path, digest, size, width, height, ("corrupt", f"{fmt} data does not decode"))
    if min(width, height) < min_side:
        return Checked(
            path, digest, size, width, height, ("too-small", f"{width}x{height} is below min_side={min_side}")
        )
    return Checked(path, digest, size, width, height)
