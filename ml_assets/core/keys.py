"""Memo keys and code versions: what decides whether a step's cached output can be reused.

Every key is `stable_hash` of the things that determine the output, so equal inputs give equal
keys on every machine, and the artifact store (content-addressed by these keys) is the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ml_assets.core.config import CandidateConfig, DatasetConfig, Settings

# Bump a code version when its step's code changes what the same inputs turn into: every cached
# output of that step (and, through the keys, of the steps downstream) is then computed again.
INGESTION_CODE_VERSION: Final = "2"  # cleaning and splitting (2: streamed, vocabulary)
TRAINING_CODE_VERSION: Final = "3"  # training and evaluation (3: every metric, predictions)
SELECTION_CODE_VERSION: Final = "2"  # 2: metrics, strategies, weights
SERVING_CODE_VERSION: Final = "1"


def short_digest(text: str, length: int = 24) -> str:
    """The first `length` hex digits of the SHA-256 of `text`: every key and version here."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def stable_hash(value: object, length: int = 24) -> str:
    """`short_digest` of `value` as canonical JSON (sorted keys, compact separators)."""
    return short_digest(
        json.dumps(value, sort_keys=True, separators=(",", ":"), default=str), length
    )


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def memo_key(*parts: object) -> str:
    """The key of a memoized artifact: a stable hash of what produced it."""
    return stable_hash(list(parts))


def model_memo_key(dataset_key: str, candidate: CandidateConfig, settings: Settings) -> str:
    """hash(dataset version, candidate config, code version, library versions, seed)."""
    # Imported here: `config` imports this module, and the command line's start-up should not
    # pay for the model libraries' imports.
    from ml_assets.ml.models import library_versions

    return memo_key(
        dataset_key,
        candidate.config_hash(),
        TRAINING_CODE_VERSION,
        library_versions(),
        settings.training.seed,
        settings.serving.tag_threshold,
    )


def dataset_config_hash(dataset: DatasetConfig, seed: int) -> str:
    """What, besides the source's content, decides what ingestion produces.

    Its JSON keeps the default separators: the value is stored in every ingestion's metadata,
    so another encoding would re-ingest every existing home once for nothing.
    """
    text = json.dumps([dataset.model_dump(), seed], sort_keys=True, default=str)
    return short_digest(text, length=16)
