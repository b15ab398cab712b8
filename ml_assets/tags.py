"""Run tags the project reads or writes, in one place."""

from collections.abc import Mapping
from typing import Final

FORCE_TAG: Final = "ml_assets/force"  # "all", or comma-separated steps / candidate names
DATASET_TAG: Final = "ml_assets/dataset"  # the dataset version a training run fans out from


def is_forced(run_tags: Mapping[str, str], step: str) -> bool:
    """True when the run's `ml_assets/force` tag names `step` (or says `all`)."""
    value = run_tags.get(FORCE_TAG, "")
    return value == "all" or step in {v.strip() for v in value.split(",")}
