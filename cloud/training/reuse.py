"""Train once, reuse after: what ``make demo`` (and anyone wanting "a good model for this lake") calls.

Ingest is idempotent, so the same lake gives the same dataset version; if a gate-passing model
trained on that version is registered and its package is still on disk, it is returned instead
of training again (minutes on a CPU).
"""

from __future__ import annotations

from pathlib import Path

from cloud.config import CloudConfig
from cloud.data.ingest import ingest
from cloud.registry.models import ModelRecord
from cloud.registry.store import Registry
from cloud.training.trainer import TrainOptions, train


def train_or_reuse(cfg: CloudConfig, reg: Registry, lake: Path, show_progress: bool = True) -> ModelRecord:
    dataset = ingest(lake, reg, cfg.datasets_dir, cfg.ingest, show_progress=show_progress).dataset_version
    for m in reg.list_models():
        if m.dataset_id == dataset and m.gate_passed and Path(m.package_dir, "model.onnx").is_file():
            return m
    result = train(cfg, reg, TrainOptions(dataset, show_progress=show_progress))
    return reg.get_model(result.model_version)
