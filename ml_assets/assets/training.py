"""`trained_model`: one partition per candidate (fan-out), memoized by content."""

import os
from typing import Any, Final

from dagster import (
    AssetExecutionContext,
    AssetKey,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ml_assets.artifacts import (
    dataset_info,
    memo_key,
    read_dataset_part,
    read_training_meta,
    write_model,
)
from ml_assets.assets.ingestion import ingested_dataset
from ml_assets.config import CandidateConfig, ConfigError, Settings
from ml_assets.failures import user_failure
from ml_assets.lineage import require_record
from ml_assets.ml.metrics import evaluate
from ml_assets.ml.models import CandidateError, library_versions, select_features, train_candidate
from ml_assets.partitions import candidates_partitions
from ml_assets.pools import TRAINING_POOL
from ml_assets.resources import ArtifactStoreResource, SettingsResource
from ml_assets.store import Artifact, ArtifactStore
from ml_assets.tags import FORCE_TAG, is_forced

# Bump when training or evaluation changes what a candidate config turns into.
TRAINING_CODE_VERSION: Final = "2"


def model_memo_key(dataset_key: str, candidate: CandidateConfig, settings: Settings) -> str:
    """hash(dataset version, candidate config, code version, library versions, seed)."""
    return memo_key(
        dataset_key,
        candidate.config_hash(),
        TRAINING_CODE_VERSION,
        library_versions(),
        settings.training.seed,
        settings.serving.tag_threshold,
    )


def lower_priority(niceness: int) -> None:
    """Run this process at OS niceness `niceness` or lower priority; never raises priority back
    (an unprivileged process cannot) and never stacks (`os.nice` is relative).

    Linux sets niceness per thread, so every thread of the process is lowered, including the
    BLAS and OpenMP pools started at import; threads started later inherit it.
    """
    if niceness <= 0 or not hasattr(os, "getpriority"):
        return
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the process as a whole
        threads = [0]
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError:  # the thread ended meanwhile
            continue


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
    scores = evaluate(
        validation.Y,
        result.model.predict_scores(validation.X),
        validation.task,
        settings.serving.tag_threshold,
    )
    context.log.info(
        f"{candidate.name}: hit@1 {scores.hit_at_1:.4f}, {scores.f1_kind} {scores.f1:.4f}, "
        f"trained in {result.seconds:.2f}s on {result.rows} rows"
    )
    training = {
        "candidate": candidate.name,
        "model_type": candidate.model,
        "config_hash": candidate.config_hash(),
        "dataset_key": dataset.key,
        **scores.as_metadata(),
        "training_seconds": result.seconds,
        "rows": result.rows,
        "features": len(result.model.features),
        "params": result.params,
        "produced_by_run": context.run.run_id,
    }
    return write_model(store, key, result.model, training)


@asset(
    partitions_def=candidates_partitions,
    deps=[ingested_dataset],
    group_name="training",
    code_version=TRAINING_CODE_VERSION,
    kinds={"lightgbm", "scikitlearn"},
    pool=TRAINING_POOL,
)
def trained_model(
    context: AssetExecutionContext, settings: SettingsResource, store: ArtifactStoreResource
) -> MaterializeResult:
    """One candidate model trained on the ingested dataset, scored on the validation split."""
    name = context.partition_key
    cfg = settings.load()
    try:
        candidate = cfg.candidate(name)
    except ConfigError as error:
        raise user_failure(error) from error
    record = require_record(context.instance, AssetKey("ingested_dataset"), "ingest first")
    artifacts = store.get()
    dataset = artifacts.verify("datasets", record["dataset_key"], record["digest"])
    try:  # fail fast on a bad feature glob before any work
        select_features(name, dataset_info(dataset).features, candidate.features)
    except CandidateError as error:
        raise user_failure(error) from error

    key = model_memo_key(dataset.key, candidate, cfg)
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
        model = _train(context, artifacts, candidate, cfg, dataset, key)
    # The artifact's training.json keeps full precision; the UI shows rounded figures.
    meta = read_training_meta(model)
    metadata: dict[str, Any] = {
        "score": round(meta["score"], 4),
        "hit_at_1": round(meta["hit_at_1"], 4),
        **{k: round(meta[k], 4) for k in ("macro_f1", "micro_f1") if k in meta},
        "training_seconds": round(meta["training_seconds"], 3),
        "rows": meta["rows"],
        "features": meta["features"],
        "params": MetadataValue.json(meta["params"]),
        "model_type": candidate.model,
        "config_hash": candidate.config_hash(),
        "dataset_key": dataset.key,
        "model_key": key,
        "digest": model.digest,
        "path": MetadataValue.path(str(model.path)),
        "memoized": memoized,
        "reason": reason,
        "produced_by_run": meta["produced_by_run"],
    }
    return MaterializeResult(data_version=DataVersion(key), metadata=metadata)
