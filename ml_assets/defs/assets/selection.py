"""`model_selection`: the top k landed candidates that clear the bar (fan-in)."""

from dataclasses import dataclass
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

from ml_assets.core.config import SelectionConfig
from ml_assets.core.keys import SELECTION_CODE_VERSION, memo_key
from ml_assets.core.names import INGESTED_DATASET, MODEL_SELECTION, SERVING_POOL, TRAINED_MODEL
from ml_assets.defs.io_manager import Upstream
from ml_assets.defs.resources import ArtifactStoreResource, SettingsResource
from ml_assets.ml.ensemble import select_ensemble
from ml_assets.ml.metrics import METRICS
from ml_assets.ml.ranking import (
    LeaderboardEntry,
    NoQualifyingModelError,
    Status,
    leaderboard_markdown,
    qualifying,
    rank,
)
from ml_assets.state.leaderboard import leaderboard
from ml_assets.state.records import Record
from ml_assets.storage.artifacts import (
    SELECTION_FILE,
    read_dataset_part,
    read_validation_scores,
    write_json,
)
from ml_assets.storage.store import ArtifactError, ArtifactStore


@dataclass(frozen=True)
class Choice:
    """The served members, their weights and why each was picked."""

    members: list[str]
    weights: list[float]
    why: dict[str, str]
    reason: str
    strategy_used: str
    score: float | None  # the chosen ensemble's validation score (None: not computed)
    top_k_score: float | None


def _choose(
    selection: SelectionConfig,
    qualified: list[LeaderboardEntry],
    store: ArtifactStore,
    dataset: Record,
) -> Choice:
    """`top_k`: the best k by score (the seed's rule). `ensemble`: greedy forward selection on
    the validation split among the qualified candidates (`ml.ensemble`)."""
    metric, k = selection.metric, selection.top_k
    if selection.strategy == "top_k":
        top = qualified[:k]
        return Choice(
            members=[e.name for e in top],
            weights=[1.0 / len(top)] * len(top),
            why={e.name: f"rank {i} by {metric}" for i, e in enumerate(top, start=1)},
            reason=f"top {k} by {metric}",
            strategy_used="top_k",
            score=None,
            top_k_score=None,
        )
    try:
        artifact = store.verify("datasets", dataset["dataset_key"], dataset["digest"])
        truth = read_dataset_part(artifact, "validation", columns=[]).Y
        scores = {
            e.name: read_validation_scores(store.verify("models", str(e.model_key), e.model_digest))
            for e in qualified
        }
    except (ArtifactError, OSError, ValueError) as error:
        raise Failure(
            f"ensemble selection cannot read the validation scores: {error}", allow_retries=False
        ) from error
    try:
        choice = select_ensemble(
            scores,
            truth,
            METRICS[metric],
            k=k,
            eligible=[e.name for e in qualified],
            weighted=selection.weighted,
            metric_name=metric,
        )
    except ValueError as error:  # scores of another shape than the validation split, NaN
        raise Failure(f"ensemble selection: {error}", allow_retries=False) from error
    if choice.picks:
        why = {p.name: p.reason for p in choice.picks}
    else:
        why = {name: f"rank {i} by {metric}" for i, name in enumerate(choice.members, start=1)}
    return Choice(
        members=choice.members,
        weights=choice.weights,
        why=why,
        reason=choice.reason,
        strategy_used=choice.strategy_used,
        score=choice.score,
        top_k_score=choice.top_k_score,
    )


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
    metric_names = list(METRICS)
    try:
        qualified = qualifying(entries, cfg.selection.min_score)
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
                    leaderboard_markdown(entries, [], cfg.selection.min_score, metric_names)
                )
            },
            allow_retries=False,
        ) from error
    choice = _choose(cfg.selection, qualified, artifacts, data)
    by_name = {e.name: e for e in qualified}
    selected = [by_name[name] for name in choice.members]
    # The version covers what is served; the artifact key also covers the leaderboard it saw.
    served = [(e.name, e.model_key, w) for e, w in zip(selected, choice.weights, strict=True)]
    version = memo_key(dataset_key, served)
    key = memo_key(
        version,
        cfg.selection,
        SELECTION_CODE_VERSION,
        [(e.name, e.status, e.model_key) for e in entries],
    )
    body = {
        "key": key,
        "version": version,
        "dataset_key": dataset_key,
        "dataset_digest": data["digest"],
        "code_version": SELECTION_CODE_VERSION,
        "settings": cfg.selection.model_dump(),
        "metric": cfg.selection.metric,
        "min_score": cfg.selection.min_score,
        "strategy": cfg.selection.strategy,
        "strategy_used": choice.strategy_used,
        "reason": choice.reason,
        "validation_score": choice.score,
        "top_k_validation_score": choice.top_k_score,
        "selected": [
            {**e.as_dict(), "weight": w, "why": choice.why[e.name]}
            for e, w in zip(selected, choice.weights, strict=True)
        ],
        "leaderboard": [e.as_dict() for e in rank(entries)],
    }
    counts = {s: sum(e.status == s for e in entries) for s in get_args(Status) if s != "invalid"}
    computed_from = (
        f"{counts['landed']} landed candidates ({choice.reason}; "
        f"{cfg.selection.metric} ≥ {cfg.selection.min_score})"
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
            "weights": [round(w, 4) for w in choice.weights],
            "metric": cfg.selection.metric,
            "strategy": cfg.selection.strategy,
            "strategy_used": choice.strategy_used,
            "why": choice.reason,
            **(
                {}
                if choice.score is None or choice.top_k_score is None
                else {
                    "validation_ensemble_score": round(choice.score, 4),
                    "validation_top_k_score": round(choice.top_k_score, 4),
                }
            ),
            "dataset_key": dataset_key,
            "top_score": round(selected[0].score or 0.0, 4),
            "leaderboard": MetadataValue.md(
                leaderboard_markdown(entries, choice.why, cfg.selection.min_score, metric_names)
            ),
            **{f"candidates_{s}": n for s, n in counts.items()},
            "memoized": memoized,
            "reason": reason,
        },
    )
