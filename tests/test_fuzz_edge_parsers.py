"""Fuzzing the box's parsers of untrusted bytes (issue 12): image headers and the capped decode,
and the model package reader (tar, manifest, ONNX metadata). 10,000+ generated cases each.

A crash is any exception other than the documented refusal; every refusal is counted by kind,
and the counts are printed (``-s``) and checked to cover the kinds the generators aim at.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.images import ImageRefused, decode_capped, image_header
from shared.modelpkg import META_LABELS, META_PREPROCESS, META_VERSION, PackageError, parse_metadata
from shared.pkgtar import TarRefused, extract_package

pytestmark = pytest.mark.slow

CASES = 10_000
FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
MAX_PIXELS = 256 * 256  # small, so a mutated header never makes a case slow


def _seed(ext: str, w: int, h: int) -> bytes:
    rng = np.random.default_rng(w * 1000 + h)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return bytes(cv2.imencode(ext, img)[1].tobytes())


SEEDS = [_seed(ext, w, h) for ext in (".jpg", ".png", ".bmp", ".webp") for (w, h) in ((16, 12), (40, 40))]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Valid images with bytes flipped, sizes patched, cut short or extended, or plain noise."""
    how = draw(st.sampled_from(["mutate", "patch-size", "truncate", "noise", "splice"]))
    if how == "noise":
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "splice":
        return bytes(data[: draw(st.integers(0, 40))]) + draw(st.binary(max_size=512))
    if how == "patch-size":
        pos = draw(st.integers(0, min(len(data), 40) - 4))
        data[pos : pos + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
        return bytes(data)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


def test_fuzz_image_headers_and_capped_decode() -> None:
    kinds: Counter[str] = Counter()

    @FUZZ
    @given(image_bytes())
    def one(data: bytes) -> None:
        header = image_header(data)
        if header is not None:
            assert header.width > 0 and header.height > 0
        try:
            img = decode_capped(data, MAX_PIXELS)
        except ImageRefused as e:
            kinds[e.kind] += 1
            return
        kinds["decoded"] += 1
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.shape[0] * img.shape[1] <= MAX_PIXELS

    one()
    print("image refusals by kind:", dict(kinds))
    assert sum(kinds.values()) >= CASES
    assert {"decoded", "too-many-pixels", "no-size-in-header", "undecodable"} <= set(kinds)


# -- the package reader ------------------------------------------------------------------------------

NAMES = [
    "model.onnx",
    "manifest.json",
    "golden/golden.json",
    "golden/a.jpg",
    "golden",
    "../evil",
    "/abs",
    "./model.onnx",
    "a/../../b",
    "x" * 300,
    "",
    "model.onnx/",
]


@st.composite
def package_tar(draw: st.DrawFn) -> tuple[bytes, int]:
    """A tarball with a (maybe lying) manifest; returns its bytes and what the manifest allows."""
    files = draw(
        st.dictionaries(
            st.sampled_from(["model.onnx", "golden/golden.json", "golden/a.jpg", "card.md", "../up"]),
            st.integers(0, 64),
            max_size=4,
        )
    )
    body = {n: draw(st.binary(min_size=s, max_size=s)) for n, s in files.items()}

    manifest: dict[str, object] = {
        "format": draw(st.sampled_from([1] * 9 + [2])),
        "model_version": draw(st.sampled_from(["1.0"] * 9 + ["x" * 100])),
        "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in body.items()},
    }
    lie = draw(st.sampled_from(["none", "none", "size", "extra", "digest", "bad-json"]))
    raw_manifest = json.dumps(manifest).encode()
    if lie == "bad-json":
        raw_manifest = raw_manifest[: draw(st.integers(0, len(raw_manifest)))]
    members: list[tuple[str, bytes, bytes]] = [("manifest.json", raw_manifest, tarfile.REGTYPE)]
    for n, b in body.items():
        if lie == "size":
            b = b + draw(st.binary(min_size=1, max_size=200))
        if lie == "digest" and b:
            b = bytes([b[0] ^ 1]) + b[1:]
        members.append((n, b, tarfile.REGTYPE))
    if lie == "extra" or draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(NAMES))
        kind = draw(
            st.sampled_from(
                [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
            )
        )
        members.insert(draw(st.integers(0, len(members))), (name, draw(st.binary(max_size=300)), kind))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=draw(st.sampled_from(["w", "w:gz"]))) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "model.onnx" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
                tar.addfile(info)
    raw = buf.getvalue()
    if draw(st.integers(0, 19)) == 0:  # corrupt the container itself
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :]
    allowed = sum(files.values()) + len(raw_manifest)
    return raw, allowed


def test_fuzz_package_reader() -> None:
    kinds: Counter[str] = Counter()
    work = Path(tempfile.mkdtemp(prefix="fuzz-pkg-"))
    try:

        @FUZZ
        @given(package_tar())
        def one(case: tuple[bytes, int]) -> None:
            raw, allowed = case
            tar_path = work / "p.tar"
            tar_path.write_bytes(raw)
            dest = work / "out"
            shutil.rmtree(dest, ignore_errors=True)
            try:
                extract_package(tar_path, dest)
            except TarRefused as e:
                kinds[e.kind] += 1
                assert not dest.exists()  # a refusal leaves nothing behind
                return
            kinds["unpacked"] += 1
            written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
            assert written <= allowed  # never more than the manifest declares

        one()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("package refusals by kind:", dict(kinds))
    assert sum(kinds.values()) >= CASES
    assert {
        "unpacked",
        "size-mismatch",
        "unsafe-path",
        "not-a-file",
        "bad-manifest",
        "digest-mismatch",
    } <= set(kinds)


SIDE = st.one_of(st.integers(8, 1024), st.integers(-5, 200_000))
NUMBER = st.one_of(st.floats(0.01, 10), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def metadata_props(draw: st.DrawFn) -> dict[str, str]:
    spec = {
        "input_size": [draw(SIDE), draw(SIDE)],
        "resize_to": draw(SIDE),
        "scale": draw(st.one_of(st.floats(0.001, 1), st.floats(allow_nan=True, allow_infinity=True))),
        "mean": draw(st.lists(NUMBER, min_size=3, max_size=3) | st.lists(NUMBER, max_size=4)),
        "std": draw(st.lists(NUMBER, min_size=3, max_size=3) | st.lists(NUMBER, max_size=4)),
        "layout": draw(st.sampled_from(["NCHW", "NHWC", "CHW"])),
    }
    spec = {k: v for k, v in spec.items() if draw(st.integers(0, 3))}
    props = {
        META_LABELS: draw(
            st.sampled_from([json.dumps(["cat", "dog"])] * 5 + ["[", json.dumps(["abstain", "x"]), "{}"])
        ),
        META_PREPROCESS: json.dumps(spec) if draw(st.integers(0, 9)) else draw(st.text(max_size=40)),
        META_VERSION: draw(st.sampled_from(["1.0", ""])),
    }
    return {k: v for k, v in props.items() if draw(st.integers(0, 29))}


def test_fuzz_model_metadata() -> None:
    kinds: Counter[str] = Counter()

    @FUZZ
    @given(metadata_props())
    def one(props: dict[str, str]) -> None:
        try:
            meta = parse_metadata(props)
        except PackageError as e:
            kinds[type(e).__name__] += 1
            return
        kinds["accepted"] += 1
        h, w = meta.preprocess.input_size
        assert 8 <= h <= 4096 and 8 <= w <= 4096 and 8 <= meta.preprocess.resize_to <= 4096

    one()
    print("metadata refusals by kind:", dict(kinds))
    assert sum(kinds.values()) >= CASES and kinds["accepted"] and kinds["MissingMetadata"]
