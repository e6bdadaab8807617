"""THE preprocessing: the one implementation that turns camera frames or photos into model input.

Training (cloud) and inference (edge) both call this, driven by the model's
``parkwatch.preprocess`` metadata, so a model sees the same pixels in the field as in its test
set. Geometry (resize, crop) is per image through OpenCV; colour order, scaling and
normalisation are one vectorised affine step over the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from shared.errors import ParkwatchError
from shared.images import FILE_MAX_PIXELS, ImageRefused, decode_capped
from shared.modelpkg import PreprocessSpec

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


class ImageError(ParkwatchError):
    """An image cannot be decoded or is not a 3-channel 8-bit picture."""


#: the shorter-side resize may make at most this many times ``resize_to`` squared (or the input
#: area): a 2x8192 frame would otherwise become 256x1048576 (800 MB) before the crop
MAX_RESIZE_AREA_FACTOR = 64


def decode_image(data: bytes, source: str = "image", max_pixels: int = FILE_MAX_PIXELS) -> U8:
    """Decode encoded bytes (JPEG/PNG/BMP/WebP) to BGR uint8, refusing decompression bombs
    from their header before decoding (see shared/images.py)."""
    try:
        return decode_capped(data, max_pixels, source=source)
    except ImageRefused as e:
        raise ImageError(str(e)) from e


def load_image(path: str | Path) -> U8:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(f"{p}: cannot read: {e.strerror}") from e
    return decode_image(data, str(p))


def _as_bgr(img: U8) -> U8:
    if img.ndim == 2:
        return np.asarray(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        return np.asarray(cv2.cvtColor(img, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ImageError(f"expected an HxWx3 uint8 BGR frame, got {img.shape} {img.dtype}")
    return img


def geometry(img_bgr: U8, spec: PreprocessSpec) -> U8:
    """Resize and crop one BGR frame to ``spec.input_size`` (still uint8 BGR)."""
    img = _as_bgr(img_bgr)
    out_h, out_w = spec.input_size
    interp = _INTERP[spec.interpolation]
    h, w = img.shape[:2]
    if spec.resize == "stretch":
        resized = cv2.resize(img, (out_w, out_h), interpolation=interp)
    else:
        scale = spec.resize_to / min(h, w)
        nh, nw = max(out_h, round(h * scale)), max(out_w, round(w * scale))
        if nh * nw > MAX_RESIZE_AREA_FACTOR * max(out_h * out_w, spec.resize_to**2):
            raise ImageError(
                f"a {w}x{h} frame would be resized to {nw}x{nh}: its sides' ratio is too extreme "
                "for a camera image (refused to bound memory)"
            )
        resized = cv2.resize(img, (nw, nh), interpolation=interp)
    if spec.crop == "center":
        rh, rw = resized.shape[:2]
        top, left = (rh - out_h) // 2, (rw - out_w) // 2
        resized = resized[top : top + out_h, left : left + out_w]
    elif resized.shape[:2] != (out_h, out_w):
        resized = cv2.resize(resized, (out_w, out_h), interpolation=interp)
    return np.ascontiguousarray(resized, dtype=np.uint8)


class Preprocessor:
    """Callable turning a list of BGR frames into one float32 batch for ONNX Runtime."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        # x_norm = (x * scale - mean) / std  ==  x * a + b, per channel in model colour order.
        self._a = (spec.scale / std).astype(np.float32)
        self._b = (-mean / std).astype(np.float32)
        self._rgb = spec.colour == "RGB"

    def geometry(self, img_bgr: U8) -> U8:
        return geometry(img_bgr, self.spec)

    def normalise(self, batch_bgr: U8) -> F32:
        """(N, H, W, 3) uint8 BGR, already sized → model tensor."""
        x = batch_bgr[..., ::-1] if self._rgb else batch_bgr
        out = x.astype(np.float32) * self._a + self._b
        if self.spec.layout == "NCHW":
            out = out.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out, dtype=np.float32)

    def __call__(self, frames: Sequence[U8]) -> F32:
        if not frames:
            raise ImageError("no frames to preprocess")
        batch = np.stack([self.geometry(f) for f in frames])
        return self.normalise(batch)


def preprocess(frames: Sequence[U8], spec: PreprocessSpec) -> F32:
    return Preprocessor(spec)(frames)
