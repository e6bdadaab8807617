"""Wide park-camera scenes built from photos: a pet pasted into a no-pet background. numpy + cv2.

A park camera sees 1280x720 frames with a small animal anywhere (edges included), at night in
greyscale, and mostly nothing at all. Close-up test accuracy says little about that, so the build
pipeline also scores the frame pipeline on such scenes. Scenes are *specs* (which photos, where,
how big) drawn deterministically from a seed and rendered one at a time, so hundreds of them
never sit in memory together.

Kinds: ``pet`` (a pet photo pasted at ``height_range`` of the frame height at a random place,
touching an edge in a quarter of the draws per axis), ``grey`` (the same scene in greyscale, as
an IR camera sees it at night) and ``empty`` (a background alone).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from edge.preprocess import load_image

U8 = npt.NDArray[np.uint8]
Kind = Literal["pet", "grey", "empty"]
FRAME = (1280, 720)  # width, height
EDGE_PROB = 0.25  # per axis: the pet touches that edge of the frame


@dataclass(frozen=True)
class SceneSpec:
    kind: Kind
    label: str  # the pet's label, or "none" for an empty scene
    background: Path
    pet: Path | None = None
    box: tuple[int, int, int, int] | None = None  # where the pet goes (x, y, w, h), frame pixels
    flip: bool = False  # background mirrored (more variety from few backgrounds)
    size: tuple[int, int] = FRAME


def cover(img: U8, size: tuple[int, int]) -> U8:
    """Resize to fill ``size`` (width, height) keeping the aspect ratio, then centre-crop."""
    w, h = size
    ih, iw = img.shape[:2]
    s = max(w / iw, h / ih)
    nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    big = cv2.resize(img, (nw, nh), interpolation=interp)
    x, y = (nw - w) // 2, (nh - h) // 2
    return np.ascontiguousarray(big[y : y + h, x : x + w])


def _place(
    rng: np.random.Generator,
    pet_wh: tuple[int, int],
    size: tuple[int, int],
    height_range: tuple[float, float],
) -> tuple[int, int, int, int]:
    fw, fh = size
    pw, ph = pet_wh
    h = round(fh * rng.uniform(*height_range))
    w = round(pw * h / ph)
    if w > fw:  # a panorama-shaped photo: fit the width instead
        w, h = fw, max(1, round(ph * fw / pw))
    x = _axis(rng, fw - w)
    y = _axis(rng, fh - h)
    return (x, y, w, h)


def _axis(rng: np.random.Generator, room: int) -> int:
    r = rng.random()
    if r < EDGE_PROB / 2:
        return 0
    if r < EDGE_PROB:
        return room
    return int(rng.integers(0, room + 1))


def _shape(path: Path) -> tuple[int, int]:
    img = load_image(path)
    return img.shape[1], img.shape[0]


def build_specs(
    pets: Sequence[tuple[Path, str]],
    backgrounds: Sequence[Path],
    n_pet: int,
    n_empty: int,
    seed: int,
    height_range: tuple[float, float] = (0.2, 0.4),
    grey: bool = True,
    size: tuple[int, int] = FRAME,
) -> list[SceneSpec]:
    """``n_pet`` pet scenes (plus as many greyscale copies when ``grey``) and ``n_empty`` empty ones.

    Pets are drawn without replacement while they last (then again), backgrounds likewise, so a
    small test split is used evenly. Same inputs and seed, same scenes.
    """
    if not backgrounds:
        raise ValueError("scenes need at least one no-pet background photo")
    if n_pet and not pets:
        raise ValueError("pet scenes need at least one pet photo")
    rng = np.random.default_rng(seed)
    pets = sorted(pets, key=lambda p: str(p[0]))
    backgrounds = sorted(backgrounds)

    def draw(pool_len: int, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            out += list(rng.permutation(pool_len))
        return out[:n]

    specs: list[SceneSpec] = []
    pet_idx = draw(len(pets), n_pet) if n_pet else []
    bg_idx = draw(len(backgrounds), n_pet + n_empty)
    for k, pi in enumerate(pet_idx):
        path, label = pets[pi]
        box = _place(rng, _shape(path), size, height_range)
        specs.append(
            SceneSpec("pet", label, backgrounds[bg_idx[k]], path, box, bool(rng.random() < 0.5), size)
        )
    if grey:
        specs += [SceneSpec("grey", s.label, s.background, s.pet, s.box, s.flip, s.size) for s in list(specs)]
    for k in range(n_empty):
        specs.append(
            SceneSpec(
                "empty", "none", backgrounds[bg_idx[n_pet + k]], flip=bool(rng.random() < 0.5), size=size
            )
        )
    return specs


def render(spec: SceneSpec) -> U8:
    frame = cover(load_image(spec.background), spec.size)
    if spec.flip:
        frame = np.ascontiguousarray(frame[:, ::-1])
    if spec.pet is not None and spec.box is not None:
        x, y, w, h = spec.box
        pet = load_image(spec.pet)
        interp = cv2.INTER_AREA if h < pet.shape[0] else cv2.INTER_LINEAR
        frame[y : y + h, x : x + w] = cv2.resize(pet, (w, h), interpolation=interp)
    if spec.kind == "grey":
        return np.asarray(cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR), np.uint8)
    return np.asarray(frame, dtype=np.uint8)


def render_all(specs: Sequence[SceneSpec]) -> Iterator[tuple[SceneSpec, U8]]:
    for s in specs:
        yield s, render(s)
