"""`model_selection`: the top k landed candidates that clear the bar (fan-in)."""

from typing import get_args

from dagster import (
    AssetCheckEvaluation,
    AssetDep,
    AssetExecutionContext,
    AssetIn,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ml_assets.core.keys import SELECTION_CODE_VERSION, memo_key
from ml_assets.core.names import INGESTED_DATASET, MODEL_SELECTION, SERVING_POOL, TRAINED_MODEL
from ml_assets.defs.io_manager import Upstream
from ml_assets.defs.resources import ArtifactStoreResource, SettingsResource
from ml_assets.ml.ranking import (
    NoQualifyingModelError,
    Status,
    leaderboard_markdown,
    rank,
    select_top_k,
)
from ml_assets.state.leaderboard import leaderboard
from ml_assets.storage.artifacts import SELECTION_FILE, write_json


@asset(
    key=MODEL_SELECTION,
    # The fan-in reads every candidate's state from the instance (state/leaderboard.py), not the
    # models themselves: see defs/io_manager.py.
    deps=[AssetDep(TRAINED_MODEL)],
    ins={"dataset": AssetIn(INGESTED_DATASET)},
    group_name="serving",
    code_version=SELECTION_CODE_VERSION,
    pool=SERVING_POOL,
)
def model_selection(
    context: AssetExecutionContext,
    settings: SettingsResource,
    store: ArtifactStoreResource,
    dataset: Upstream,
) -> MaterializeResult:
    """The top k models (score ≥ min_score) among the candidates that have landed so far."""
    cfg = settings.load()
    artifacts = store.get()
    # The dataset's key and digest only: selection reads no dataset file.
    data = dataset.record("ingest first")
    dataset_key = data["dataset_key"]
    entries = leaderboard(context.instance, cfg, dataset_key, artifacts)
    try:
        selected = select_top_k(entries, cfg.selection.top_k, cfg.selection.min_score)
    except NoQualifyingModelError as error:
        # Visible as a failed check too; the previous selection and predictions stay in place.
        context.log_event(
            AssetCheckEvaluation(
                asset_key=MODEL_SELECTION,
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
    version = memo_key(dataset_key, [(e.name, e.model_key) for e in selected])
    key = memo_key(version, [(e.name, e.status, e.model_key) for e in entries])
    body = {
        "key": key,
        "version": version,
        "dataset_key": dataset_key,
        "dataset_digest": data["digest"],
        "min_score": cfg.selection.min_score,
        "selected": [e.as_dict() for e in selected],
        "leaderboard": [e.as_dict() for e in rank(entries)],
    }
    counts = {s: sum(e.status == s for e in entries) for s in get_args(Status) if s != "invalid"}
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
            "dataset_key": dataset_key,
            "top_score": round(selected[0].score or 0.0, 4),
            "leaderboard": MetadataValue.md(
                leaderboard_markdown(entries, names, cfg.selection.min_score)
            ),
            **{f"candidates_{s}": n for s, n in counts.items()},
            "memoized": memoized,
            "reason": reason,
        },
    )
