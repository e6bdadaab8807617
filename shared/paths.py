"""Where things live by default, overridable by environment for tests and the demo."""

from __future__ import annotations

import os
from pathlib import Path

DATASETS_ENV = "PARKWATCH_DATASETS"


def datasets_root() -> Path:
    """The sample data lake: ``$PARKWATCH_DATASETS`` or ``../shared/datasets`` beside the checkout."""
    env = os.environ.get(DATASETS_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    return repo.parent / "shared" / "datasets"


def sample_lake() -> Path:
    return datasets_root() / "pets-sample"
