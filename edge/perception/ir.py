"""Is a frame from an infrared (night) camera? IR frames have (almost) no colour."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

# Mean per-pixel chroma (max - min of B, G, R) below this is "no colour". Colour daylight
# scenes measure tens; a greyscale frame re-encoded as JPEG measures about 0-2; IR cameras'
# slight tint stays under this.
IR_CHROMA = 6.0
THUMB = 64


def chroma(image: npt.NDArray[np.uint8]) -> float:
    """Mean chroma of a small thumbnail (cheap on a 1280x720 frame)."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return 0.0
    h, w = image.shape[:2]
    scale = THUMB / max(h, w)
    small = (
        image
        if scale >= 1
        else cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    )
    px = small[..., :3].astype(np.int16)
    return float((px.max(axis=2) - px.min(axis=2)).mean())


def is_ir(image: npt.NDArray[np.uint8], threshold: float = IR_CHROMA) -> bool:
    return chroma(image) < threshold
