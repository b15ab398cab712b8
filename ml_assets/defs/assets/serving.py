"""Serving: one `predictions_rank_<i>` step per selected model, then `aggregated_predictions`."""

import time
from typing import Any, Final

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    DagsterInstance,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunsFilter,
    asset,
)

from ml_assets.core.keys import SERVING_CODE_VERSION, memo_key
from ml_assets.core.names import (
    AGGREGATED_PREDICTIONS,
    DATASET_TAG,
    MODEL_SELECTION,
    SERVING_POOL,
    prediction_key,
)
from ml_assets.defs.io_manager import Upstream
from ml_assets.defs.resources import ArtifactStoreResource, SettingsResource
from ml_assets.ml.aggregate import aggregate, score_matrix, scores_frame
from ml_assets.ml.metrics import (
    all_metrics,
    entities_covered,
    evaluate,
    metric_label,
    predicted_tags,
)
from ml_assets.ml.models import TrainedModel
from ml_assets.storage.artifacts import (
    PREDICTIONS_FILE,
    SELECTION_FILE,
    artifact_frame,
    artifact_json,
    read_dataset_part,
    read_model,
    write_frame,
)
from ml_assets.storage.store import ArtifactError, ArtifactStore

# What every serving step shares: its group, code version, output kind and pool.
_SERVING_STEP: Final[dict[str, Any]] = {
    "group_name": "serving",
    "code_version": SERVING_CODE_VERSION,
    "kinds": {"parquet"},
    "pool": SERVING_POOL,
}


def _selection(upstream: Upstream) -> dict[str, Any]:
    """The selection `model_selection` recorded (its artifact verified on load)."""
    selection: dict[str, Any] = artifact_json(
        upstream.artifact("run model_selection first"), SELECTION_FILE
    )
    return selection


def idle_rank(
    context: AssetExecutionContext, selection: dict[str, Any], rank: int
) -> MaterializeResult:
    """A serving step whose rank the selection does not fill (fewer models than ranks)."""
    reason = f"the selection has {len(selection['selected'])} model(s); rank {rank} serves none"
    context.log.info(reason)
    return MaterializeResult(
        data_version=DataVersion(f"none-{selection['version']}"),
        metadata={
            "selection_key": selection["key"],
            "candidate": "none",
            "rows": 0,
            "memoized": False,
            "reason": reason,
        },
    )


def selected_model(store: ArtifactStore, entry: dict[str, Any]) -> TrainedModel:
    """A selected model, loaded only once its files match the digest the selection recorded."""
    try:
        return read_model(store, entry["model_key"], entry["model_digest"])
    except ArtifactError as error:
        raise Failure(f"candidate {entry['name']!r}: {error}", allow_retries=False) from error


def build_prediction_asset(rank: int) -> AssetsDefinition:
    """The serving step for the model at `rank` in the current selection."""

    @asset(
        key=prediction_key(rank),
        description=(
            f"Predictions of the model at rank {rank} of the current selection for every "
            "serving request (per-entity scores, Parquet)."
        ),
        ins={"selection_input": AssetIn(MODEL_SELECTION)},
        **_SERVING_STEP,
    )
    def _predictions(
        context: AssetExecutionContext,
        settings: SettingsResource,
        store: ArtifactStoreResource,
        selection_input: Upstream,
    ) -> MaterializeResult:
        artifacts = store.get()
        selection = _selection(selection_input)
        selected = selection["selected"]
        if rank > len(selected):
            return idle_rank(context, selection, rank)
        entry = selected[rank - 1]
        key = memo_key(entry["model_key"], selection["dataset_key"], SERVING_CODE_VERSION)
        cached, miss = artifacts.find("predictions", key)
        memoized = cached is not None
        started = time.perf_counter()
        if cached is None:
            reason = (
                f"computed: cached predictions unusable ({miss})"
                if artifacts.path("predictions", key).exists()
                else "computed: no cached predictions of this model on this dataset"
            )
            model = selected_model(artifacts, entry)
            dataset = artifacts.verify(
                "datasets", selection["dataset_key"], selection["dataset_digest"]
            )
            requests = read_dataset_part(dataset, "requests", columns=model.features)
            scores = model.predict_scores(requests.X)
            cached = write_frame(
                artifacts, "predictions", key, scores_frame(requests.ids, model.entities, scores)
            )
        else:
            artifacts.touch("predictions", key)
            reason = (
                f"memo hit: predictions of model {entry['model_key']} on dataset "
                f"{selection['dataset_key']} already stored"
            )
        context.log.info(f"rank {rank}: {entry['name']} served (predictions {key}; {reason})")
        return MaterializeResult(
            data_version=DataVersion(key),
            metadata={
                "selection_key": selection["key"],
                "candidate": entry["name"],
                "model_key": entry["model_key"],
                "predictions_key": key,
                "digest": cached.digest,
                "path": MetadataValue.path(str(cached.path)),
                "seconds": round(time.perf_counter() - started, 3),
                "memoized": memoized,
                "reason": reason,
            },
        )

    return _predictions


def _since_training_started(instance: DagsterInstance, dataset_key: str) -> dict[str, float]:
    """Seconds from the first training run on this dataset (the fan-out's start) until now."""
    first = instance.get_run_records(
        RunsFilter(tags={DATASET_TAG: dataset_key}), limit=1, ascending=True
    )
    if not first:
        return {}
    since = time.time() - first[0].create_timestamp.timestamp()
    return {"seconds_since_training_started": round(since, 3)}


def build_aggregation_asset(ranks: int) -> AssetsDefinition:
    """`aggregated_predictions`, fed by `ranks` serving steps."""

    @asset(
        key=AGGREGATED_PREDICTIONS,
        ins={
            "selection_input": AssetIn(MODEL_SELECTION),
            **{f"rank_{r}": AssetIn(prediction_key(r)) for r in range(1, ranks + 1)},
        },
        **_SERVING_STEP,
    )
    def _aggregated(
        context: AssetExecutionContext,
        settings: SettingsResource,
        store: ArtifactStoreResource,
        selection_input: Upstream,
        **served: Upstream,
    ) -> MaterializeResult:
        """The ensemble's per-request tags: the mean of the selected models' entity scores."""
        cfg = settings.load()
        artifacts = store.get()
        selection = _selection(selection_input)
        selected = selection["selected"]
        if len(selected) > ranks:
            raise Failure(
                f"the selection has {len(selected)} models but only {ranks} serving steps "
                "exist; reload the code location after changing selection.top_k"
            )
        frames = []
        for rank, entry in enumerate(selected, start=1):
            upstream = served[f"rank_{rank}"]
            record = upstream.record("serve first")
            if record["selection_key"] != selection["key"]:
                raise Failure(
                    f"predictions_rank_{rank} comes from selection "
                    f"{record['selection_key']}, not the current {selection['key']}; "
                    "re-run serving",
                    allow_retries=False,
                )
            frames.append((entry, artifact_frame(upstream.artifact("serve first"))))
        dataset = artifacts.verify(
            "datasets", selection["dataset_key"], selection["dataset_digest"]
        )
        requests = read_dataset_part(dataset, "requests", columns=[])
        entities, task = requests.entities, requests.task
        matrices = [score_matrix(frame, entities) for _, frame in frames]
        for entry, frame in frames:
            if list(frame["request_id"]) != list(requests.ids):
                raise Failure(
                    f"predictions of {entry['name']!r} do not have one row per serving request"
                )
        threshold = cfg.serving.tag_threshold
        weights = [float(e.get("weight", 1.0 / len(selected))) for e in selected]
        output, mean, tags = aggregate(requests.ids, entities, matrices, task, threshold, weights)
        key = memo_key(selection["version"], threshold, SERVING_CODE_VERSION)
        # The key covers the served models, the dataset and the threshold: an intact artifact
        # under it holds these very predictions.
        cached, _ = artifacts.find("aggregated", key)
        memoized = cached is not None
        if cached is not None:
            artifacts.touch("aggregated", key)
            artifact = cached
            reason = (
                f"memo hit: aggregated predictions {key} of these {len(selected)} "
                "selected model(s) already stored"
            )
        else:
            artifact = write_frame(artifacts, "aggregated", key, output)
            reason = f"aggregated the per-entity scores of {len(selected)} selected model(s)"
        metric = selection.get("metric", "hit@1")
        ensemble = evaluate(requests.Y, mean, task, threshold)
        ensemble_metrics = all_metrics(requests.Y, mean)
        per_model: dict[str, dict[str, float]] = {}
        covered: dict[str, list[str]] = {}
        for (entry, _), matrix in zip(frames, matrices, strict=True):
            per_model[entry["name"]] = all_metrics(requests.Y, matrix)
            model_tags = predicted_tags(matrix, task, threshold)
            covered[entry["name"]] = entities_covered(model_tags, requests.Y, entities)
        covered["ensemble"] = entities_covered(tags, requests.Y, entities)
        members = set().union(*(set(covered[e["name"]]) for e in selected))
        best_single = max(scores[metric] for scores in per_model.values())
        context.log.info(
            f"ensemble {metric} {ensemble_metrics[metric]:.4f} vs best single {best_single:.4f}; "
            f"entities tagged correctly: ensemble {len(covered['ensemble'])}, "
            + ", ".join(f"{e['name']} {len(covered[e['name']])}" for e in selected)
        )
        return MaterializeResult(
            data_version=DataVersion(key),
            metadata={
                "selection_key": selection["key"],
                "models": [e["name"] for e in selected],
                "weights": [round(w, 4) for w in weights],
                "rows": len(output),
                "metric": metric,
                "ensemble_score": round(ensemble_metrics[metric], 4),
                **{
                    f"ensemble_{metric_label(name)}": round(value, 4)
                    for name, value in ensemble_metrics.items()
                },
                f"ensemble_{ensemble.f1_kind}": round(ensemble.f1, 4),
                "best_single_score": round(best_single, 4),
                "model_scores": MetadataValue.json(
                    {
                        name: {m: round(v, 4) for m, v in scores.items()}
                        for name, scores in per_model.items()
                    }
                ),
                # Which entities each model (and the ensemble) tags correctly at least once on
                # the serving requests: two perspectives together cover more.
                "entity_coverage": MetadataValue.json(
                    {name: len(names) for name, names in covered.items()}
                ),
                "entities_covered": MetadataValue.json(covered),
                "entities_beyond_best_member": MetadataValue.json(
                    sorted(
                        set(covered["ensemble"])
                        - max((set(covered[e["name"]]) for e in selected), key=len)
                    )
                ),
                "entities_tagged_ensemble": len(covered["ensemble"]),
                "entities_tagged_any_member": len(members),
                "aggregated_key": key,
                "digest": artifact.digest,
                "path": MetadataValue.path(str(artifact.file(PREDICTIONS_FILE))),
                "landed_at": MetadataValue.timestamp(time.time()),
                **_since_training_started(context.instance, selection["dataset_key"]),
                "memoized": memoized,
                "reason": reason,
            },
        )

    return _aggregated
