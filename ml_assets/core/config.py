"""The `ml_assets.yaml` schema and its loading, with errors that name the file and the key."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ml_assets.core.keys import stable_hash
from ml_assets.errors import UserError

CONFIG_ENV: Final = "ML_ASSETS_CONFIG"
HOME_ENV: Final = "ML_ASSETS_HOME"
STORE_ENV: Final = "ML_ASSETS_STORE"
CONFIG_FILENAME: Final = "ml_assets.yaml"
CANDIDATE_NAME_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ConfigError(UserError):
    """`ml_assets.yaml` cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    """Shares of the cleaned records held out for validation and as serving requests."""

    validation: float = Field(0.2, gt=0.0, lt=0.5)
    serving: float = Field(0.2, gt=0.0, lt=0.5)


class DatasetConfig(_Strict):
    source: str = "sklearn_digits"
    label: str | list[str] = "label"
    id: str | None = None
    # A YouTube-8M `vocabulary.csv` (columns `Index`, `Name`, …): names for label indices.
    vocabulary: str | None = None
    split: SplitConfig = SplitConfig()

    @field_validator("label")
    @classmethod
    def _label_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("expected a column name or a non-empty list of 0/1 columns")
            if len(set(value)) != len(value):
                raise ValueError("label columns must be distinct")
        elif not value:
            raise ValueError("expected a column name")
        return value


Metric = Literal["hit@1", "gap@20", "perr", "map"]
METRIC_ALIASES: Final[dict[str, Metric]] = {"accuracy": "hit@1"}


class SelectionConfig(_Strict):
    """How the served models are chosen.

    `metric` ranks the candidates and `min_score` applies to it. `strategy: top_k` serves the
    `top_k` best candidates; `ensemble` chooses up to `top_k` of those above the bar by greedy
    forward selection on the validation split, maximizing the ensemble's own `metric`
    (`weighted: true` lets a member count more than once).
    """

    metric: Metric = "hit@1"
    top_k: int = Field(2, ge=1, le=10)
    min_score: float = Field(0.90, ge=0.0, le=1.0)
    strategy: Literal["top_k", "ensemble"] = "top_k"
    weighted: bool = False

    @field_validator("metric", mode="before")
    @classmethod
    def _alias(cls, value: object) -> object:
        return METRIC_ALIASES.get(value, value) if isinstance(value, str) else value


class ServingConfig(_Strict):
    aggregation: Literal["auto", "mean"] = "auto"
    tag_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # A glob of request batch files (CSV, Parquet or TFRecord; relative to the config file): each
    # file is a partition of `serving_requests`, scored by the current selection.
    requests: str | None = None


class MemoizationConfig(_Strict):
    freshness_days: float = Field(14.0, ge=0.0)
    min_row_change: float = Field(0.10, ge=0.0)
    content_change: Literal["any", "significant"] = "any"
    cache_retention_days: float = Field(30.0, gt=0.0)


class TrainingConfig(_Strict):
    seed: int = 0
    max_concurrent: int = Field(2, ge=1, le=16)
    threads_per_model: int = Field(1, ge=1, le=64)
    # The OS niceness training processes run at (0: unchanged). Serving runs, the daemon and
    # the UI then get the CPU first while long fits keep the cores busy.
    niceness: int = Field(10, ge=0, le=19)


class RetriesConfig(_Strict):
    """Dagster `RetryPolicy` for every step: transient errors (I/O) are retried; bad
    configuration or data fails at once."""

    max_retries: int = Field(2, ge=0, le=10)
    delay_seconds: float = Field(2.0, ge=0.0, le=3600.0)


class SchedulesConfig(_Strict):
    """Cron strings (UTC) of the periodic refresh and of the cache garbage collection."""

    refresh_cron: str = "0 4 * * 1"
    cache_gc_cron: str = "0 3 * * *"

    @field_validator("refresh_cron", "cache_gc_cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"expected a 5-field cron string such as '0 4 * * 1', got {value!r}")
        return value


class CandidateConfig(_Strict):
    """One candidate model: a partition of `trained_model`.

    `model` is checked when that candidate trains (not here), so one unknown model type fails
    its own partition and the other candidates go on.
    """

    name: str
    model: str
    params: dict[str, Any] = Field(default_factory=dict)
    features: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not CANDIDATE_NAME_PATTERN.fullmatch(value):
            raise ValueError(
                f"candidate name {value!r} must match {CANDIDATE_NAME_PATTERN.pattern} "
                "(lower-case letters, digits, '_' and '-', at most 64 characters): "
                "it is a partition key and a path segment"
            )
        return value

    @field_validator("features")
    @classmethod
    def _features_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("expected a non-empty list of column globs, or leave it out")
        return value

    def config_hash(self) -> str:
        """A stable hash of what the candidate trains with (name excluded)."""
        body = {"model": self.model, "params": self.params, "features": self.features}
        return stable_hash(body, length=16)


class Settings(_Strict):
    """The whole `ml_assets.yaml`."""

    dataset: DatasetConfig = DatasetConfig()
    selection: SelectionConfig = SelectionConfig()
    serving: ServingConfig = ServingConfig()
    memoization: MemoizationConfig = MemoizationConfig()
    training: TrainingConfig = TrainingConfig()
    schedules: SchedulesConfig = SchedulesConfig()
    retries: RetriesConfig = RetriesConfig()
    candidates: list[CandidateConfig]

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for candidate in self.candidates:
            if candidate.name in seen:
                raise ValueError(f"duplicate candidate name {candidate.name!r}")
            seen.add(candidate.name)
        if not self.candidates:
            raise ValueError("candidates: expected at least one candidate")
        return self

    def candidate(self, name: str) -> CandidateConfig:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        known = ", ".join(c.name for c in self.candidates)
        raise ConfigError(f"candidate {name!r} is not in the config (known: {known})")


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or Path.cwd() / CONFIG_FILENAME)


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    home = (os.environ if environ is None else environ).get(HOME_ENV)
    return Path(home or Path.cwd() / ".ml_assets").absolute()


class StoreLocationError(UserError):
    """The artifact store cannot be used; the message names the variable."""


@dataclass(frozen=True)
class StoreLocation:
    """Where artifacts live: a folder (`local`), or an object store (`remote`, an fsspec URL)
    read and written through `local` as this machine's verified cache of it."""

    local: Path
    remote: str | None = None

    def describe(self) -> str:
        return self.remote or str(self.local)


def store_location(environ: Mapping[str, str] | None = None) -> StoreLocation:
    """`ML_ASSETS_STORE`: a path (or `file://` URL) on storage every worker mounts at the same
    place, or an object-store URL (`s3://bucket/prefix`); unset, `<home>/store`."""
    value = (os.environ if environ is None else environ).get(STORE_ENV, "").strip()
    if not value:
        return StoreLocation(default_home(environ) / "store")
    parts = urlsplit(value)
    if parts.scheme == "file":
        return StoreLocation(Path(unquote(parts.path)).absolute())
    if parts.scheme:
        return StoreLocation(default_home(environ) / "store-cache", value.rstrip("/"))
    return StoreLocation(Path(value).expanduser().absolute())


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] not in {"value_error", "missing"} and "input" in item:
                message += f" (got {item['input']!r})"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def parse_settings(raw: Any, path: Path) -> Settings:
    """Validate an already-parsed YAML document."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Settings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(path, error)) from None


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def load_settings(path: Path | None = None) -> Settings:
    """Read and validate `ml_assets.yaml` (or `$ML_ASSETS_CONFIG`)."""
    path = path or default_config_path()
    if not path.is_file():
        hint = f" (from ${CONFIG_ENV})" if os.environ.get(CONFIG_ENV) else ""
        raise ConfigError(f"{path}: config file not found{hint}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config file: {_reason(error)}") from None
    return parse_settings(raw, path)
