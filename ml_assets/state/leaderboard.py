"""The leaderboard: every configured candidate and where it stands, read from the instance.

Selection ranks it, `ml-assets status` prints it, and the sensors and the CLI decide from it. Only
current, landed models whose artifact verifies are eligible; a candidate that did not land says
why (its invalid config, or its last run's error).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from dagster import (
    AssetPartitionStatus,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)

from ml_assets.core.config import CandidateConfig, Settings
from ml_assets.core.names import PARTITION_TAG, TRAINED_MODEL
from ml_assets.ml.metrics import METRICS, metric_label
from ml_assets.ml.models import CandidateError, validate_candidate
from ml_assets.ml.ranking import LeaderboardEntry
from ml_assets.state.partitions import candidates_partitions
from ml_assets.state.records import Record, latest_records
from ml_assets.state.runs import RunFailure, run_failure
from ml_assets.storage.artifacts import read_training_meta
from ml_assets.storage.store import ArtifactError, ArtifactStore

_RUNS_PAGE: Final = 500


def leaderboard(
    instance: DagsterInstance,
    settings: Settings,
    dataset_key: str,
    store: ArtifactStore | None = None,
) -> list[LeaderboardEntry]:
    """Every configured candidate with its state; only current, landed models are eligible.

    A candidate that did not land says why: its invalid config, or its last run's error.
    """
    names = [c.name for c in settings.candidates]
    statuses = instance.get_status_by_partition(TRAINED_MODEL, names, candidates_partitions) or {}
    latest_runs = _latest_runs(instance, names)
    models = latest_records(instance, TRAINED_MODEL, names)
    entries = []
    for candidate in settings.candidates:
        name = candidate.name
        status = statuses.get(name)
        record = models.get(name)
        # From the partition's latest run, not the partition status: Dagster's status cache
        # may not show FAILED yet when the run's failure is already recorded.
        failure = (
            None
            if status == AssetPartitionStatus.IN_PROGRESS
            else _failure(instance, latest_runs.get(name), name)
        )
        if record is None:
            if status == AssetPartitionStatus.IN_PROGRESS:
                entries.append(LeaderboardEntry(name, "running"))
            elif failure is not None:
                entries.append(
                    LeaderboardEntry(
                        name, "failed", note=failure.message, user_error=failure.user_error
                    )
                )
            else:
                entries.append(_missing_or_invalid(candidate))
            continue
        metric = settings.selection.metric
        # The metadata's figures are rounded for display; with a store, the model's own
        # artifact gives them in full precision below.
        recorded = {
            m: float(record[metric_label(m)]) for m in METRICS if metric_label(m) in record.metadata
        }
        common: dict[str, Any] = {
            "score": recorded.get(metric, float(record["score"])),
            "f1": float(record.get("macro_f1", record.get("micro_f1", 0.0))),
            "model_key": record["model_key"],
            "model_digest": record["digest"],
            "model_type": record["model_type"],
            "metrics": recorded,
        }
        if record["dataset_key"] != dataset_key:
            entries.append(
                LeaderboardEntry(name, "stale", note="trained on an older dataset", **common)
            )
        elif record["config_hash"] != candidate.config_hash():
            note = "config changed since training"
            problem = _config_problem(candidate)
            if problem:
                # No run will retrain it: say so, rather than wait for a retraining.
                note = f"{note}; the new config is invalid: {problem}"
            elif failure is not None:
                note = f"{note}; retraining failed: {failure.message}"
            entries.append(
                LeaderboardEntry(
                    name,
                    "stale",
                    note=note,
                    user_error=bool(problem) or (failure is not None and failure.user_error),
                    **common,
                )
            )
        elif store is not None and isinstance(verified := _verified_metrics(store, record), str):
            entries.append(LeaderboardEntry(name, "broken", note=verified, **common))
        else:
            if store is not None:
                # Rank and apply the bar on the full-precision figures the artifact keeps.
                assert isinstance(verified, dict)
                common["metrics"] = verified
                common["score"] = verified[metric]
            note = ""
            if status == AssetPartitionStatus.IN_PROGRESS:
                note = "retraining now"
            elif failure is not None:
                note = f"last run failed ({failure.message}); previous model kept"
            entries.append(LeaderboardEntry(name, "landed", note=note, **common))
    return entries


def _one_line(text: str, name: str, limit: int = 300) -> str:
    """A note fit for the candidate's table row: the first line, without the candidate's name
    (the row has it), bounded, without table separators."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.removeprefix(f"candidate {name!r}: ")
    line = line.replace("|", "/")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _latest_runs(instance: DagsterInstance, names: Sequence[str]) -> dict[str, DagsterRun]:
    """The latest run of each candidate's partition (sensor, CLI or UI), newest first in pages:
    a few queries for every candidate, not one each."""
    latest: dict[str, DagsterRun] = {}
    wanted, cursor = set(names), None
    while wanted - set(latest):
        records = instance.get_run_records(
            RunsFilter(tags={PARTITION_TAG: sorted(wanted - set(latest))}),
            limit=_RUNS_PAGE,
            cursor=cursor,
        )
        for record in records:
            latest.setdefault(record.dagster_run.tags[PARTITION_TAG], record.dagster_run)
        if len(records) < _RUNS_PAGE:
            break
        cursor = records[-1].dagster_run.run_id
    return latest


def _failure(instance: DagsterInstance, run: DagsterRun | None, name: str) -> RunFailure | None:
    """The error of the partition's latest run, when that run failed."""
    if run is None or run.status != DagsterRunStatus.FAILURE:
        return None
    failure = run_failure(instance, run.run_id)
    return RunFailure(_one_line(failure.message, name), failure.user_error)


def _config_problem(candidate: CandidateConfig) -> str:
    """Why the candidate's model or params are bad (one line), or ""."""
    try:
        validate_candidate(candidate.name, candidate.model, candidate.params)
    except CandidateError as error:
        return _one_line(str(error), candidate.name)
    return ""


def _missing_or_invalid(candidate: CandidateConfig) -> LeaderboardEntry:
    """A candidate with no run yet: `invalid` (with why) when its model or params are bad."""
    if problem := _config_problem(candidate):
        return LeaderboardEntry(candidate.name, "invalid", note=problem, user_error=True)
    return LeaderboardEntry(candidate.name, "missing")


def _verified_metrics(store: ArtifactStore, record: Record) -> dict[str, float] | str:
    """The recorded model's full-precision validation metrics once its artifact verifies, or
    why it cannot be served."""
    try:
        artifact = store.verify("models", record["model_key"], record["digest"])
        metrics = read_training_meta(artifact).get("metrics")
        if not isinstance(metrics, dict) or set(METRICS) - set(metrics):
            return "model artifact lacks validation metrics (trained by an older version)"
        return {name: float(metrics[name]) for name in METRICS}
    except (ArtifactError, OSError, ValueError, KeyError, TypeError) as error:
        return f"model artifact unusable, passed over: {error}"
