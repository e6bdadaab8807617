"""Which files a run trains, validates and tests on, checked against the registered dataset."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cloud.data.split import unit
from cloud.registry.datasets import DatasetFile, DatasetRecord
from cloud.registry.store import Registry
from cloud.training.errors import TrainingError

VAL_SALT = b"parkwatch-val-v1:"


@dataclass(frozen=True)
class Item:
    sha256: str
    path: Path
    label: str


@dataclass
class RunData:
    dataset: DatasetRecord
    labels: list[str]
    fit: list[Item]
    val: list[Item]
    test: list[Item]

    @property
    def train(self) -> list[Item]:
        return sorted(self.fit + self.val, key=lambda i: i.sha256)


def _items(root: Path, files: list[DatasetFile]) -> list[Item]:
    return [Item(f.sha256, root / f.path, f.label) for f in files]


def verify_contents(items: list[Item]) -> None:
    """Refuse to train when the lake changed under a dataset version (the version would lie)."""
    for it in items:
        try:
            digest = hashlib.sha256(it.path.read_bytes()).hexdigest()
        except OSError as e:
            raise TrainingError(
                f"{it.path}: cannot read ({e.strerror}); the data lake moved or changed since "
                "ingest: run `parkwatch cloud ingest` again and train on the new version"
            ) from e
        if digest != it.sha256:
            raise TrainingError(
                f"{it.path} changed since ingest (content hash differs); run `parkwatch cloud "
                "ingest` again and train on the new dataset version"
            )


def load_run_data(reg: Registry, dataset_id: str, val_fraction: float, verify: bool = True) -> RunData:
    ds = reg.get_dataset(dataset_id)
    root = Path(ds.source)
    train = _items(root, reg.dataset_files(ds.id, "train"))
    test = _items(root, reg.dataset_files(ds.id, "test"))
    if verify:
        verify_contents(train + test)
    # The validation part is carved from train by a second, independent content hash, so it is
    # stable across dataset versions like the train/test split itself.
    val = [i for i in train if unit(i.sha256, VAL_SALT) < val_fraction]
    fit = [i for i in train if unit(i.sha256, VAL_SALT) >= val_fraction]
    labels = sorted(ds.labels)
    for lab in labels:
        if not any(i.label == lab for i in val) or not any(i.label == lab for i in fit):
            raise TrainingError(
                f"label {lab!r} has too few training images to carve a validation part; "
                "add images or lower train.val_fraction"
            )
    return RunData(ds, labels, fit, val, test)
