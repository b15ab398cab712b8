"""Request batches: each file matching `serving.requests` is a partition of `serving_requests`,
scored by the current selection (`batch_predictions_rank_<i>`, then
`batch_aggregated_predictions`), and scored again when the selection changes.

Requests carry no labels: the held-out split stays the evaluation set. Every edge here is a
`deps=` edge read from the instance (`_recorded`), not an input: a partitioned step would get an
unpartitioned upstream's input as an empty list in an op subset (see defs/io_manager.py).
"""

from typing import Any

import numpy as np
import pyarrow.parquet as pq
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ml_assets.core.keys import SERVING_CODE_VERSION, file_sha256, memo_key
from ml_assets.core.names import (
    BATCH_AGGREGATED_PREDICTIONS,
    BATCHES_GROUP,
    MODEL_SELECTION,
    SERVING_POOL,
    SERVING_REQUESTS,
    batch_prediction_key,
)
from ml_assets.defs.assets.serving import idle_rank, selected_model
from ml_assets.defs.failures import user_failure
from ml_assets.defs.resources import ArtifactStoreResource, SettingsResource
from ml_assets.ml.aggregate import aggregate, score_matrix, scores_frame
from ml_assets.ml.datasets import (
    Dataset,
    DatasetError,
    batch_files,
    read_request_batch,
    write_part,
)
from ml_assets.state.partitions import batch_partitions
from ml_assets.state.records import Record, latest_record, recorded_artifact
from ml_assets.storage.artifacts import (
    PREDICTIONS_FILE,
    SELECTION_FILE,
    artifact_frame,
    artifact_json,
    dataset_info,
    write_frame,
)
from ml_assets.storage.store import Artifact, ArtifactError, ArtifactStore

REQUESTS_FILE = "requests.parquet"
_PREVIEW_ROWS = 10

_BATCH_STEP: dict[str, Any] = {
    "partitions_def": batch_partitions,
    "group_name": BATCHES_GROUP,
    "code_version": SERVING_CODE_VERSION,
    "kinds": {"parquet"},
    "pool": SERVING_POOL,
}


def _recorded(
    context: AssetExecutionContext,
    key: AssetKey,
    store: ArtifactStore,
    why: str,
    partition: str | None = None,
) -> tuple[Record, Artifact]:
    """The latest materialization of `key` (one partition) and its artifact, verified."""
    record = latest_record(context.instance, key, partition)
    named = None if record is None else recorded_artifact(key, record)
    if record is None or named is None:
        where = f"[{partition}]" if partition else ""
        raise Failure(f"{key.to_user_string()}{where} has no artifact yet; {why}")
    try:
        return record, store.verify(*named)
    except ArtifactError as error:
        raise Failure(f"{key.to_user_string()}: {error}", allow_retries=False) from error


def _requests(artifact: Artifact) -> Dataset:
    """A stored request batch (ids and features)."""
    frame = pq.read_table(artifact.file(REQUESTS_FILE)).to_pandas()
    return Dataset.from_frame(frame, "multilabel", [])


@asset(key=SERVING_REQUESTS, deps=[MODEL_SELECTION], **_BATCH_STEP)
def serving_requests(
    context: AssetExecutionContext, settings: SettingsResource, store: ArtifactStoreResource
) -> MaterializeResult:
    """One request batch file, checked against the features the selected models know."""
    cfg = settings.load()
    artifacts = store.get()
    batch = context.partition_key
    if cfg.serving.requests is None:
        raise user_failure(DatasetError("serving.requests is not set in ml_assets.yaml"))
    try:
        path = batch_files(cfg.serving.requests, settings.base_dir()).get(batch)
        if path is None:
            raise DatasetError(
                f"request batch {batch!r}: no such file matches serving.requests "
                f"{cfg.serving.requests!r} any more"
            )
        selection = _selection(context, artifacts)
        data = artifacts.verify("datasets", selection["dataset_key"], selection["dataset_digest"])
        stat = path.stat()
        requests = read_request_batch(path, dataset_info(data).features, cfg.dataset.id)
        digest = file_sha256(path)
    except DatasetError as error:
        raise user_failure(error) from error
    except OSError as error:  # removed or unreadable since the glob matched it
        raise user_failure(
            DatasetError(f"request batch {batch!r}: cannot read {path}: {error.strerror}")
        ) from error
    key = memo_key(digest, data.key, SERVING_CODE_VERSION)
    cached, _ = artifacts.find("requests", key)
    if cached is not None:
        artifacts.touch("requests", key)
        reason = f"memo hit: this file's records are stored already ({key})"
    else:
        reason = "read: a new or changed file"
    artifact = cached or artifacts.put(
        "requests",
        key,
        lambda directory: write_part(requests, np.arange(len(requests)), directory / REQUESTS_FILE),
    )
    context.log.info(f"request batch {batch}: {len(requests)} records from {path} ({reason})")
    return MaterializeResult(
        data_version=DataVersion(key),
        metadata={
            "file": MetadataValue.path(str(path)),
            "file_sha256": digest,
            # What `state/planning.py::stale_batches` compares: a changed file is read again.
            "file_size": stat.st_size,
            "file_mtime_ns": str(stat.st_mtime_ns),
            "rows": len(requests),
            "dataset_key": data.key,
            "requests_key": key,
            "digest": artifact.digest,
            "memoized": cached is not None,
            "reason": reason,
        },
    )


def _selection(context: AssetExecutionContext, store: ArtifactStore) -> dict[str, Any]:
    _, artifact = _recorded(context, MODEL_SELECTION, store, "run model_selection first")
    selection: dict[str, Any] = artifact_json(artifact, SELECTION_FILE)
    return selection


def build_batch_prediction_asset(rank: int) -> AssetsDefinition:
    """The model at `rank` of the current selection, scoring one request batch."""

    @asset(
        key=batch_prediction_key(rank),
        deps=[MODEL_SELECTION, SERVING_REQUESTS],
        description=(
            f"The per-entity scores of the model at rank {rank} of the current selection for "
            "one request batch (Parquet)."
        ),
        **_BATCH_STEP,
    )
    def _batch_predictions(
        context: AssetExecutionContext, store: ArtifactStoreResource
    ) -> MaterializeResult:
        artifacts = store.get()
        batch = context.partition_key
        selection = _selection(context, artifacts)
        selected = selection["selected"]
        if rank > len(selected):
            return idle_rank(context, selection, rank)
        entry = selected[rank - 1]
        _, requests_artifact = _recorded(
            context, SERVING_REQUESTS, artifacts, "materialize serving_requests first", batch
        )
        key = memo_key(entry["model_key"], requests_artifact.key, SERVING_CODE_VERSION)
        cached, _ = artifacts.find("predictions", key)
        memoized = cached is not None
        if cached is None:
            model = selected_model(artifacts, entry)
            requests = _requests(requests_artifact)
            try:
                scores = model.predict_scores(requests.X)
            except ValueError as error:  # records without the model's features
                raise user_failure(
                    DatasetError(f"request batch {batch!r}, candidate {entry['name']!r}: {error}")
                ) from error
            cached = write_frame(
                artifacts, "predictions", key, scores_frame(requests.ids, model.entities, scores)
            )
        else:
            artifacts.touch("predictions", key)
        context.log.info(f"batch {batch}: rank {rank} scored by {entry['name']}")
        return MaterializeResult(
            data_version=DataVersion(key),
            metadata={
                "selection_key": selection["key"],
                "candidate": entry["name"],
                "model_key": entry["model_key"],
                "requests_key": requests_artifact.key,
                "predictions_key": key,
                "digest": cached.digest,
                "memoized": memoized,
                "reason": "memo hit: this model scored these records already"
                if memoized
                else "scored the batch",
            },
        )

    return _batch_predictions


def build_batch_aggregation_asset(ranks: int) -> AssetsDefinition:
    """`batch_aggregated_predictions`: the ensemble's answer for one request batch."""

    @asset(
        key=BATCH_AGGREGATED_PREDICTIONS,
        deps=[MODEL_SELECTION, *(batch_prediction_key(r) for r in range(1, ranks + 1))],
        **_BATCH_STEP,
    )
    def _batch_aggregated(
        context: AssetExecutionContext,
        settings: SettingsResource,
        store: ArtifactStoreResource,
    ) -> MaterializeResult:
        """Tags, top entity and per-entity scores for every request of one batch."""
        cfg = settings.load()
        artifacts = store.get()
        batch = context.partition_key
        selection = _selection(context, artifacts)
        selected = selection["selected"]
        if len(selected) > ranks:
            raise Failure(
                f"the selection has {len(selected)} models but only {ranks} batch serving "
                "steps exist; reload the code location after changing selection.top_k"
            )
        data = artifacts.verify("datasets", selection["dataset_key"], selection["dataset_digest"])
        info = dataset_info(data)
        entities, task = info.entities, info.task
        stored, _ = _recorded(
            context, SERVING_REQUESTS, artifacts, "materialize serving_requests first", batch
        )
        frames, read = [], []
        for rank, _entry in enumerate(selected, start=1):
            record, artifact = _recorded(
                context, batch_prediction_key(rank), artifacts, "score the batch first", batch
            )
            if record["selection_key"] != selection["key"]:
                raise Failure(
                    f"batch_predictions_rank_{rank}[{batch}] comes from selection "
                    f"{record['selection_key']}, not the current {selection['key']}; re-run it",
                    allow_retries=False,
                )
            if record.get("requests_key") != stored["requests_key"]:
                # Another run of this batch read the file as it was before (or after): never
                # merge answers to different records.
                raise Failure(
                    f"batch_predictions_rank_{rank}[{batch}] scored other records than the "
                    f"current serving_requests[{batch}] ({stored['requests_key']}); re-run it"
                )
            frames.append(artifact_frame(artifact))
            read.append(str(record["predictions_key"]))
        ids = frames[0]["request_id"].to_numpy()
        matrices = [score_matrix(frame, entities) for frame in frames]
        weights = [float(e.get("weight", 1.0 / len(selected))) for e in selected]
        output, _, _ = aggregate(ids, entities, matrices, task, cfg.serving.tag_threshold, weights)
        # The key covers the served models and weights, the predictions read (which requests)
        # and the threshold: an intact artifact under it holds these very answers.
        key = memo_key(selection["version"], read, cfg.serving.tag_threshold, SERVING_CODE_VERSION)
        cached, _ = artifacts.find("aggregated", key)
        if cached is not None:
            artifacts.touch("aggregated", key)
        artifact = cached or write_frame(artifacts, "aggregated", key, output)
        preview = output[["request_id", "top_entity", "tags"]].head(_PREVIEW_ROWS)
        context.log.info(
            f"batch {batch}: {len(output)} requests answered by {[e['name'] for e in selected]}"
        )
        return MaterializeResult(
            data_version=DataVersion(key),
            metadata={
                "selection_key": selection["key"],
                "models": [e["name"] for e in selected],
                "weights": [round(w, 4) for w in weights],
                "rows": len(output),
                "requests_key": stored["requests_key"],
                "aggregated_key": key,
                "digest": artifact.digest,
                "path": MetadataValue.path(str(artifact.file(PREDICTIONS_FILE))),
                "preview": MetadataValue.md(
                    preview.assign(tags=preview["tags"].map(", ".join)).to_markdown(index=False)
                ),
                "memoized": cached is not None,
                "reason": "memo hit: these models answered these records already"
                if cached is not None
                else f"merged the scores of {len(selected)} selected model(s)",
            },
        )

    return _batch_aggregated
