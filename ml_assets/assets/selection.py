"""`model_selection`: the top k landed candidates that clear the bar (fan-in)."""

from typing import Final

from dagster import (
    AssetCheckEvaluation,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetPartitionStatus,
    DagsterInstance,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ml_assets.artifacts import SELECTION_FILE, memo_key, write_json
from ml_assets.assets.training import trained_model
from ml_assets.config import Settings
from ml_assets.lineage import Record, latest_record, require_record
from ml_assets.ml.selection import (
    LeaderboardEntry,
    NoQualifyingModelError,
    leaderboard_markdown,
    rank,
    select_top_k,
)
from ml_assets.partitions import candidates_partitions
from ml_assets.resources import ArtifactStoreResource, SettingsResource
from ml_assets.store import ArtifactError, ArtifactStore

SELECTION_CODE_VERSION: Final = "1"


def leaderboard(
    instance: DagsterInstance,
    settings: Settings,
    dataset_key: str,
    store: ArtifactStore | None = None,
) -> list[LeaderboardEntry]:
    """Every configured candidate with its state; only current, landed models are eligible."""
    names = [c.name for c in settings.candidates]
    statuses = (
        instance.get_status_by_partition(trained_model.key, names, candidates_partitions) or {}
    )
    entries = []
    for candidate in settings.candidates:
        name = candidate.name
        status = statuses.get(name)
        record = latest_record(instance, trained_model.key, name)
        if record is None:
            state = (
                {
                    AssetPartitionStatus.IN_PROGRESS: "running",
                    AssetPartitionStatus.FAILED: "failed",
                }.get(status, "missing")
                if status
                else "missing"
            )
            entries.append(LeaderboardEntry(name, state))  # type: ignore[arg-type]
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
            entries.append(
                LeaderboardEntry(name, "stale", note="config changed since training", **common)
            )
        elif store is not None and (problem := _artifact_problem(store, record)):
            entries.append(LeaderboardEntry(name, "broken", note=problem, **common))
        else:
            note = (
                {
                    AssetPartitionStatus.IN_PROGRESS: "retraining now",
                    AssetPartitionStatus.FAILED: "last run failed; previous model kept",
                }.get(status, "")
                if status
                else ""
            )
            entries.append(LeaderboardEntry(name, "landed", note=note, **common))
    return entries


def _artifact_problem(store: ArtifactStore, record: Record) -> str:
    """Why a recorded model cannot be served ("" when it verifies)."""
    try:
        store.verify("models", record["model_key"], record["digest"])
    except ArtifactError as error:
        return f"model artifact unusable, passed over: {error}"
    return ""


@asset(
    deps=[AssetDep(trained_model), AssetKey("ingested_dataset")],
    group_name="serving",
    code_version=SELECTION_CODE_VERSION,
    pool="serving",
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
    artifact = write_json(artifacts, "selections", key, SELECTION_FILE, body)
    names = [e.name for e in selected]
    context.log.info(f"selected {names} (selection {key})")
    counts = {
        s: sum(e.status == s for e in entries)
        for s in ("landed", "missing", "running", "failed", "stale", "broken")
    }
    return MaterializeResult(
        data_version=DataVersion(version),
        metadata={
            "selection_key": key,
            "digest": artifact.digest,
            "selected": names,
            "dataset_key": dataset["dataset_key"],
            "top_score": selected[0].score,
            "leaderboard": MetadataValue.md(
                leaderboard_markdown(entries, names, cfg.selection.min_score)
            ),
            **{f"candidates_{s}": n for s, n in counts.items()},
        },
    )
