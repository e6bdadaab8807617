"""Fill the feature cache from many processes or machines: ``torchrun -m cloud.training.distributed``.

The feature pass is the only expensive part of training and it is embarrassingly parallel:
each rank computes every ``WORLD_SIZE``-th view of the dataset's train files into the shared,
content-addressed cache. Nothing is trained or registered, so a failed rank can just be rerun;
``parkwatch cloud train`` afterwards finds the cache warm. Each rank uses its local GPU if any.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from cloud.config import DEFAULT_PATH, load
from cloud.registry.store import Registry
from cloud.training.backbone import PREPROCESS
from cloud.training.data import load_run_data
from cloud.training.features import FeatureStore


def shard(jobs: list[tuple[str, Path, int]], rank: int, world: int) -> list[tuple[str, Path, int]]:
    """Pure: this rank's share, disjoint from every other rank's and together covering all."""
    return jobs[rank::world]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--config", type=Path, default=Path(os.environ.get("PARKWATCH_CONFIG", DEFAULT_PATH)))
    args = ap.parse_args(argv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cfg = load(args.config)
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    with Registry(cfg.paths.registry_db) as reg:
        data = load_run_data(reg, args.dataset, cfg.train.val_fraction, verify=False)
    store = FeatureStore(
        cfg.paths.feature_cache_dir,
        PREPROCESS,
        cfg.train.seed,
        cfg.train.batch_size,
        device=device,
        engine=cfg.train.feature_engine,
    )
    views = 1 + cfg.train.augment_copies
    # Shard the full job list (not what is missing now): ranks start at different times, and a
    # list that shrinks under them would hand the same job to two ranks and another to none.
    every = [(i.sha256, i.path, v) for i in data.train for v in range(views)]
    todo = set(store.missing([(i.sha256, i.path) for i in data.train], views))
    mine = [job for job in shard(every, rank, world) if job in todo]
    store.compute(mine)
    print(f"rank {rank}/{world}: computed {len(mine)} feature vectors into {store.dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
