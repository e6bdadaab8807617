"""Photometric and geometric augmentation applied *before* the edge's own preprocessing.

An augmented view is a different photo of the same animal (another crop, mirrored, other light);
it then goes through exactly ``edge.preprocess`` like any camera frame. View 0 is always the
plain image, so test features are precisely what the edge computes. Every view is a pure
function of (seed, content hash, view index), which makes feature caching and runs repeatable.
"""

from __future__ import annotations

import hashlib

import numpy as np

from edge.preprocess import U8

AUG_VERSION = "aug-v2"  # bump when the recipe changes: it is part of the feature-cache key


IR_PROB = 1 / 3


def view_rng(seed: int, sha256: str, view: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{AUG_VERSION}:{seed}:{sha256}:{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def augment(img: U8, rng: np.random.Generator) -> U8:
    """Random resized crop (50-100 % of the area), horizontal flip, brightness/contrast/saturation,
    and in a third of the views a night (IR) look: greyscale with its own gamma and contrast, so
    the head has seen pets without colour before a camera switches to infrared."""
    h, w = img.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(0.5, 1.0)
        ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw, ch = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = img[y : y + ch, x : x + cw]
            break
    if rng.random() < 0.5:
        img = img[:, ::-1]
    alpha = rng.uniform(0.75, 1.25)  # contrast
    beta = rng.uniform(-25, 25)  # brightness
    out = img.astype(np.float32) * alpha + beta
    sat = rng.uniform(0.7, 1.3)
    grey = out.mean(axis=2, keepdims=True)
    out = grey + (out - grey) * sat
    if rng.random() < IR_PROB:
        lum = out[..., 2:3] * 0.299 + out[..., 1:2] * 0.587 + out[..., 0:1] * 0.114  # BGR
        lum = 255.0 * (np.clip(lum, 0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
        out = np.repeat(lum, 3, axis=2)
    return np.ascontiguousarray(np.clip(out, 0, 255).astype(np.uint8))


def make_view(img: U8, seed: int, sha256: str, view: int) -> U8:
    if view == 0:
        return img
    return augment(img, view_rng(seed, sha256, view))


__all__ = ["AUG_VERSION", "augment", "make_view", "view_rng"]
