"""Integrity flags on real photos from the sample lake and on frames spoiled on purpose."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.config import IntegrityConfig
from edge.integrity import IntegrityChecker


def photo(pets_sample: Path, i: int = 0) -> np.ndarray:
    p = sorted((pets_sample / "dog").glob("*.jpg"))[i]
    img = cv2.imread(str(p))
    assert img is not None
    return cv2.resize(img, (640, 480))


def flags(checker: IntegrityChecker, img: np.ndarray) -> list[str]:
    return checker.check(img)[0].flags


def test_real_photos_are_clean(pets_sample: Path) -> None:
    c = IntegrityChecker(IntegrityConfig())
    for i in range(6):
        assert flags(c, photo(pets_sample, i)) == []


def test_black_overexposed_covered_blurred(pets_sample: Path) -> None:
    cfg = IntegrityConfig()
    assert flags(IntegrityChecker(cfg), np.zeros((480, 640, 3), np.uint8)) == ["black"]
    assert flags(IntegrityChecker(cfg), np.full((480, 640, 3), 252, np.uint8)) == ["overexposed"]
    assert flags(IntegrityChecker(cfg), np.full((480, 640, 3), 120, np.uint8)) == ["covered"]
    blurred = cv2.GaussianBlur(photo(pets_sample), (0, 0), 12)
    assert flags(IntegrityChecker(cfg), blurred) == ["blurred"]


def test_frozen_after_n_identical_frames(pets_sample: Path) -> None:
    cfg = IntegrityConfig(frozen_min_frames=4)
    c = IntegrityChecker(cfg)
    img = photo(pets_sample)
    got = [flags(c, img) for _ in range(5)]
    assert got[:3] == [[], [], []]
    assert got[3] == ["frozen"] and got[4] == ["frozen"]
    assert flags(c, photo(pets_sample, 1)) == []  # a change ends it
    assert c.snapshot()["frozen"] == 2


def test_tampered_when_the_view_changes_and_stays(pets_sample: Path) -> None:
    c = IntegrityChecker(IntegrityConfig(frozen_min_frames=1000))
    scene = photo(pets_sample, 0)
    for _ in range(20):
        assert flags(c, scene) == []
    moved = np.clip(255 - scene.astype(np.int16), 0, 255).astype(np.uint8)  # a very different steady view
    results = [flags(c, moved) for _ in range(3)]
    assert "tampered" in results[1] and "tampered" in results[2]


def test_motion_is_measured_against_the_last_classified_frame(pets_sample: Path) -> None:
    c = IntegrityChecker(IntegrityConfig())
    img = photo(pets_sample)
    check, thumb = c.check(img)
    assert check.motion is None
    c.classified(thumb)
    assert c.check(img)[0].motion == 0.0
    assert (c.check(photo(pets_sample, 3))[0].motion or 0) > 5
