"""Asset checks: quality gates on the dataset, the selection and the predictions."""

from collections.abc import Sequence

import numpy as np
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetKey,
    MetadataValue,
    asset_check,
)

from ml_assets.core.names import INGESTED_DATASET, MODEL_SELECTION, ON_TRAINING_QUEUE
from ml_assets.defs.resources import ArtifactStoreResource, SettingsResource
from ml_assets.ml.datasets import PARTS
from ml_assets.state.records import recorded_artifact, require_record
from ml_assets.storage.artifacts import (
    SELECTION_FILE,
    dataset_info,
    read_dataset_part,
    read_frame,
    read_json,
)
from ml_assets.storage.store import ArtifactError


@asset_check(asset=INGESTED_DATASET, blocking=True, op_tags=ON_TRAINING_QUEUE)
def dataset_schema_and_rows(
    context: AssetCheckExecutionContext, store: ArtifactStoreResource
) -> AssetCheckResult:
    """Every split is non-empty, ids are unique, features exist and every entity is a 0/1 column."""
    record = require_record(context.instance, INGESTED_DATASET, "nothing to check")
    try:
        artifact = store.get().verify("datasets", record["dataset_key"], record["digest"])
    except ArtifactError as error:
        return AssetCheckResult(passed=False, description=str(error))
    info = dataset_info(artifact)
    problems: list[str] = []
    if not info.features:
        problems.append("no feature columns")
    if len(info.entities) < 2:
        problems.append(f"{len(info.entities)} entity; at least 2 are needed")
    ids: list[str] = []
    for part in PARTS:
        data = read_dataset_part(artifact, part)
        if len(data) == 0:
            problems.append(f"split {part!r} is empty")
        if data.Y.shape[1] != len(info.entities) or not np.isin(data.Y, (0, 1)).all():
            problems.append(f"split {part!r}: labels are not a 0/1 matrix over the entities")
        ids.extend(map(str, data.ids))
    if len(set(ids)) != len(ids):
        problems.append("record ids repeat across splits")
    return AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or "schema and rows look right",
        metadata={"rows": MetadataValue.json(info.rows), "features": len(info.features)},
    )


@asset_check(asset=MODEL_SELECTION)
def selected_models_meet_bar(
    context: AssetCheckExecutionContext, settings: SettingsResource, store: ArtifactStoreResource
) -> AssetCheckResult:
    """Every selected model scores at least `selection.min_score`."""
    record = require_record(context.instance, MODEL_SELECTION, "nothing to check")
    selection = read_json(
        store.get(), "selections", record["selection_key"], SELECTION_FILE, record["digest"]
    )
    bar = settings.load().selection.min_score
    below = [s["name"] for s in selection["selected"] if s["score"] < bar]
    return AssetCheckResult(
        passed=bool(selection["selected"]) and not below,
        description=f"below {bar}: {below}" if below else f"all selected models ≥ {bar}",
        metadata={"selected": [s["name"] for s in selection["selected"]]},
    )


def build_prediction_checks(keys: Sequence[AssetKey]) -> list[AssetChecksDefinition]:
    """One 'no NaN, one row per request' check per predictions asset."""
    return [_prediction_check(key) for key in keys]


def _prediction_check(key: AssetKey) -> AssetChecksDefinition:
    @asset_check(asset=key, name="predictions_complete")
    def _check(
        context: AssetCheckExecutionContext, store: ArtifactStoreResource
    ) -> AssetCheckResult:
        """No NaN score and exactly one row per serving request."""
        record = require_record(context.instance, key, "nothing to check")
        named = recorded_artifact(key, record)
        if named is None:  # a rank the selection has no model for
            return AssetCheckResult(passed=True, description="no model at this rank")
        artifacts = store.get()
        frame = read_frame(artifacts, *named)
        selection = read_json(
            artifacts, "selections", record["selection_key"], SELECTION_FILE, None
        )
        dataset = artifacts.verify(
            "datasets", selection["dataset_key"], selection["dataset_digest"]
        )
        expected = dataset_info(dataset).rows["requests"]
        scores = frame.filter(like="score:")
        nan = int(scores.isna().to_numpy().sum())
        duplicates = int(frame["request_id"].duplicated().sum())
        problems = []
        if nan:
            problems.append(f"{nan} NaN score(s)")
        if len(frame) != expected or duplicates:
            problems.append(
                f"{len(frame)} rows ({duplicates} duplicate ids) for {expected} requests"
            )
        return AssetCheckResult(
            passed=not problems,
            description="; ".join(problems) or f"{expected} requests, no NaN",
            metadata={"rows": len(frame), "nan_scores": nan},
        )

    return _check
