"""`model_selection`: the top k landed candidates that clear the bar (fan-in)."""

from typing import Final

from dagster import (
    AssetCheckEvaluation,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetPartitionStatus,
    DagsterInstance,
    DagsterRunStatus,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunsFilter,
    asset,
)

from ml_assets.artifacts import SELECTION_FILE, memo_key, read_training_meta, write_json
from ml_assets.assets.training import trained_model
from ml_assets.config import CandidateConfig, Settings
from ml_assets.lineage import Record, latest_record, require_record
from ml_assets.ml.models import CandidateError, validate_candidate
from ml_assets.ml.selection import (
    LeaderboardEntry,
    NoQualifyingModelError,
    leaderboard_markdown,
    rank,
    select_top_k,
)
from ml_assets.partitions import candidates_partitions
from ml_assets.pools import SERVING_POOL
from ml_assets.resources import ArtifactStoreResource, SettingsResource
from ml_assets.runs import RunFailure, run_failure
from ml_assets.store import ArtifactError, ArtifactStore

SELECTION_CODE_VERSION: Final = "1"


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
    statuses = (
        instance.get_status_by_partition(trained_model.key, names, candidates_partitions) or {}
    )
    entries = []
    for candidate in settings.candidates:
        name = candidate.name
        status = statuses.get(name)
        record = latest_record(instance, trained_model.key, name)
        # From the partition's latest run, not the partition status: Dagster's status cache
        # may not show FAILED yet when the run's failure is already recorded.
        failure = (
            None if status == AssetPartitionStatus.IN_PROGRESS else _last_failure(instance, name)
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
        common = {
            "score": float(record["score"]),
            "f1": float(record.get("macro_f1", record.get("micro_f1", 0.0))),
            "model_key": record["model_key"],
            "model_digest": record["digest"],
            "model_type": record["model_type"],
        }
        if record["dataset_key"] != dataset_key:
            entries.append(
                LeaderboardEntry(name, "stale", note="trained on an older dataset", **common)
            )
        elif record["config_hash"] != candidate.config_hash():
            note = "config changed since training"
            if failure is not None:
                note = f"{note}; retraining failed: {failure.message}"
            entries.append(
                LeaderboardEntry(
                    name,
                    "stale",
                    note=note,
                    user_error=failure is not None and failure.user_error,
                    **common,
                )
            )
        elif store is not None and isinstance(score := _verified_score(store, record), str):
            entries.append(LeaderboardEntry(name, "broken", note=score, **common))
        else:
            if store is not None:
                # The metadata's score is rounded for display; rank and apply the bar on the
                # full-precision score that the model's own artifact keeps.
                common["score"] = score
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


def _last_failure(instance: DagsterInstance, name: str) -> RunFailure | None:
    """The error of the partition's latest run, when that run failed (sensor, CLI or UI)."""
    records = instance.get_run_records(RunsFilter(tags={"dagster/partition": name}), limit=1)
    if not records or records[0].dagster_run.status != DagsterRunStatus.FAILURE:
        return None
    failure = run_failure(instance, records[0].dagster_run.run_id)
    return RunFailure(_one_line(failure.message, name), failure.user_error)


def _missing_or_invalid(candidate: CandidateConfig) -> LeaderboardEntry:
    """A candidate with no run yet: `invalid` (with why) when its model or params are bad."""
    try:
        validate_candidate(candidate.name, candidate.model, candidate.params)
    except CandidateError as error:
        return LeaderboardEntry(
            candidate.name, "invalid", note=_one_line(str(error), candidate.name), user_error=True
        )
    return LeaderboardEntry(candidate.name, "missing")


def _verified_score(store: ArtifactStore, record: Record) -> float | str:
    """The recorded model's full-precision score once its artifact verifies, or why it
    cannot be served."""
    try:
        artifact = store.verify("models", record["model_key"], record["digest"])
        return float(read_training_meta(artifact)["score"])
    except (ArtifactError, OSError, ValueError, KeyError, TypeError) as error:
        return f"model artifact unusable, passed over: {error}"


@asset(
    deps=[AssetDep(trained_model), AssetKey("ingested_dataset")],
    group_name="serving",
    code_version=SELECTION_CODE_VERSION,
    pool=SERVING_POOL,
)
def model_selection(
    context: AssetExecutionContext, settings: SettingsResource, store: ArtifactStoreResource
) -> MaterializeResult:
    """The top k models (score ≥ min_score) among the candidates that have landed so far."""
    cfg = settings.load()
    dataset = require_record(context.instance, AssetKey("ingested_dataset"), "ingest first")
    artifacts = store.get()
    entries = leaderboard(context.instance, cfg, dataset["dataset_key"], artifacts)
    try:
        selected = select_top_k(entries, cfg.selection.top_k, cfg.selection.min_score)
    except NoQualifyingModelError as error:
        # Visible as a failed check too; the previous selection and predictions stay in place.
        context.log_event(
            AssetCheckEvaluation(
                asset_key=model_selection.key,
                check_name="selected_models_meet_bar",
                passed=False,
                description=str(error)[:1000],
            )
        )
        raise Failure(
            str(error),
            metadata={
                "leaderboard": MetadataValue.md(
                    leaderboard_markdown(entries, [], cfg.selection.min_score)
                )
            },
            allow_retries=False,
        ) from error
    # The version covers what is served; the artifact key also covers the leaderboard it saw.
    version = memo_key(dataset["dataset_key"], [(e.name, e.model_key) for e in selected])
    key = memo_key(version, [(e.name, e.status, e.model_key) for e in entries])
    body = {
        "key": key,
        "version": version,
        "dataset_key": dataset["dataset_key"],
        "dataset_digest": dataset["digest"],
        "min_score": cfg.selection.min_score,
        "selected": [e.as_dict() for e in selected],
        "leaderboard": [e.as_dict() for e in rank(entries)],
    }
    counts = {
        s: sum(e.status == s for e in entries)
        for s in ("landed", "missing", "running", "failed", "stale", "broken")
    }
    computed_from = (
        f"{counts['landed']} landed candidates (top {cfg.selection.top_k} with score "
        f"≥ {cfg.selection.min_score})"
    )
    # The key covers the dataset, what is served and every candidate's status and model: an
    # intact artifact under it is this selection (and `write_json` would keep it anyway).
    cached, _ = artifacts.find("selections", key)
    memoized = cached is not None
    if cached is not None:
        artifacts.touch("selections", key)
        artifact = cached
        reason = f"memo hit: selection {key} from {computed_from} already stored"
    else:
        artifact = write_json(artifacts, "selections", key, SELECTION_FILE, body)
        reason = f"selected from {computed_from}"
    names = [e.name for e in selected]
    context.log.info(f"selected {names} (selection {key}; {reason})")
    return MaterializeResult(
        data_version=DataVersion(version),
        metadata={
            "selection_key": key,
            "digest": artifact.digest,
            "selected": names,
            "dataset_key": dataset["dataset_key"],
            "top_score": round(selected[0].score or 0.0, 4),
            "leaderboard": MetadataValue.md(
                leaderboard_markdown(entries, names, cfg.selection.min_score)
            ),
            **{f"candidates_{s}": n for s, n in counts.items()},
            "memoized": memoized,
            "reason": reason,
        },
    )
