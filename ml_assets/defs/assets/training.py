"""`trained_model`: one partition per candidate (fan-out), memoized by content."""

from typing import Any

from dagster import (
    AssetExecutionContext,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ml_assets.core.config import CandidateConfig, ConfigError, Settings
from ml_assets.core.keys import TRAINING_CODE_VERSION, model_memo_key
from ml_assets.core.names import (
    FORCE_TAG,
    INGESTED_DATASET,
    ON_TRAINING_QUEUE,
    TRAINING_POOL,
    is_forced,
)
from ml_assets.core.process import lower_priority, worker_id
from ml_assets.defs.failures import user_failure
from ml_assets.defs.io_manager import load_upstream
from ml_assets.defs.resources import ArtifactStoreResource, SettingsResource
from ml_assets.ml.metrics import all_metrics, evaluate, metric_label
from ml_assets.ml.models import CandidateError, select_features, train_candidate
from ml_assets.state.partitions import candidates_partitions
from ml_assets.storage.artifacts import (
    dataset_info,
    read_dataset_part,
    read_training_meta,
    write_model,
)
from ml_assets.storage.store import Artifact, ArtifactStore


def _train(
    context: AssetExecutionContext,
    store: ArtifactStore,
    candidate: CandidateConfig,
    settings: Settings,
    dataset: Artifact,
    key: str,
) -> Artifact:
    # Each run is its own process: lowering its priority leaves serving runs the CPU they need.
    lower_priority(settings.training.niceness)
    train = read_dataset_part(dataset, "train")
    validation = read_dataset_part(dataset, "validation")
    try:
        result = train_candidate(
            candidate.name,
            candidate.model,
            candidate.params,
            candidate.features,
            train,
            seed=settings.training.seed,
            threads=settings.training.threads_per_model,
        )
    except CandidateError as error:
        raise user_failure(error) from error
    predictions = result.model.predict_scores(validation.X)
    scores = evaluate(validation.Y, predictions, validation.task, settings.serving.tag_threshold)
    metrics = all_metrics(validation.Y, predictions)
    shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    context.log.info(
        f"{candidate.name}: {shown}, {scores.f1_kind} {scores.f1:.4f}, "
        f"trained in {result.seconds:.2f}s on {result.rows} rows"
    )
    training = {
        "candidate": candidate.name,
        "model_type": candidate.model,
        "config_hash": candidate.config_hash(),
        "dataset_key": dataset.key,
        **scores.as_metadata(),
        "metrics": metrics,
        "training_seconds": result.seconds,
        "rows": result.rows,
        "features": len(result.model.features),
        "params": result.params,
        "produced_by_run": context.run.run_id,
        "worker": worker_id(),
    }
    # Kept with the model: ensemble selection scores combinations on the validation split.
    return write_model(store, key, result.model, training, predictions)


@asset(
    partitions_def=candidates_partitions,
    # Loaded in the step, not as an input: see defs/io_manager.py.
    deps=[INGESTED_DATASET],
    group_name="training",
    code_version=TRAINING_CODE_VERSION,
    kinds={"lightgbm", "scikitlearn"},
    pool=TRAINING_POOL,
    op_tags=ON_TRAINING_QUEUE,
)
def trained_model(
    context: AssetExecutionContext,
    settings: SettingsResource,
    store: ArtifactStoreResource,
) -> MaterializeResult:
    """One candidate model trained on the ingested dataset, scored on the validation split."""
    name = context.partition_key
    cfg = settings.load()
    try:
        candidate = cfg.candidate(name)
    except ConfigError as error:
        raise user_failure(error) from error
    artifacts = store.get()
    data = load_upstream(context.instance, INGESTED_DATASET, artifacts).artifact("ingest first")
    try:  # fail fast on a bad feature glob before any work
        select_features(name, dataset_info(data).features, candidate.features)
    except CandidateError as error:
        raise user_failure(error) from error

    key = model_memo_key(data.key, candidate, cfg)
    cached, miss_reason = artifacts.find("models", key)
    forced = is_forced(context.run.tags, name)
    memoized = cached is not None and not forced
    if memoized:
        assert cached is not None
        artifacts.touch("models", key)
        model = cached
        reason = f"memo hit: model {key} already trained from this config and dataset"
        context.log.info(f"{name}: memo hit {key}; reusing the model, no training")
    else:
        damaged = cached is None and artifacts.path("models", key).exists()  # there, unverified
        if damaged:
            context.log.warning(f"{name}: cached model unusable, retraining: {miss_reason}")
        if forced:
            reason = f"trained: forced by the {FORCE_TAG} tag"
        elif damaged:
            reason = f"trained: cached model unusable ({miss_reason})"
        else:
            reason = "trained: no cached model for this memo key"
        model = _train(context, artifacts, candidate, cfg, data, key)
    # The artifact's training.json keeps full precision; the UI shows rounded figures.
    meta = read_training_meta(model)
    metrics = meta["metrics"]
    metadata: dict[str, Any] = {
        "score": round(metrics[cfg.selection.metric], 4),
        "metric": cfg.selection.metric,
        **{metric_label(name): round(value, 4) for name, value in metrics.items()},
        **{k: round(meta[k], 4) for k in ("macro_f1", "micro_f1") if k in meta},
        "training_seconds": round(meta["training_seconds"], 3),
        "rows": meta["rows"],
        "features": meta["features"],
        "params": MetadataValue.json(meta["params"]),
        "model_type": candidate.model,
        "config_hash": candidate.config_hash(),
        "dataset_key": data.key,
        "model_key": key,
        "digest": model.digest,
        "path": MetadataValue.path(str(model.path)),
        "memoized": memoized,
        "reason": reason,
        "produced_by_run": meta["produced_by_run"],
        # Where the model was fit (`host:pid`); a memo hit shows the process that fit it.
        "worker": meta.get("worker", "unknown"),
    }
    return MaterializeResult(data_version=DataVersion(key), metadata=metadata)
