"""How a step receives its upstream asset: the latest materialization the instance recorded,
and the artifact it names, verified (SHA-256) before use.

These edges are inputs loaded here: ingested_dataset → model_selection, model_selection →
predictions_rank_i and aggregated_predictions, predictions_rank_i → aggregated_predictions.
The value is read lazily (`Upstream`), so a step first validates its config and reads only what
it uses. ingested_dataset → trained_model is a `deps=` edge whose step calls `load_upstream`
itself: Dagster 1.13 hands a partitioned asset's input from an unpartitioned upstream an empty
list, without calling `load_input`, when the run is an op subset of an asset job
(`dagster job launch -o trained_model`).

Each step writes its own output to the content-addressed store (the key is a memo key, known only
once the step has decided whether to reuse a cached artifact) and returns a `MaterializeResult`
naming it, so Dagster never calls `handle_output` for those assets.

The fan-in trained_model → model_selection stays a `deps=` edge read from the instance
(`state/leaderboard.py`): selection must see every candidate, also those running, failed or
invalid, not only the partitions that landed, and it needs their scores, not their models.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import (
    AssetKey,
    ConfigurableIOManager,
    DagsterInstance,
    Failure,
    InputContext,
    OutputContext,
)

from ml_assets.defs.resources import ArtifactStoreResource
from ml_assets.state.records import Record, latest_record, recorded_artifact
from ml_assets.storage.store import Artifact, ArtifactStore


@dataclass(frozen=True)
class Upstream:
    """An upstream asset as a step receives it: read lazily, so the step decides when (after
    validating its config) and what (only the ranks it serves) to read and verify."""

    key: AssetKey
    latest: Record | None  # its latest materialization; None when it has none
    store: ArtifactStore

    def record(self, why: str) -> Record:
        """The latest materialization; a step failure saying `why` it is needed when none."""
        if self.latest is None:
            raise Failure(f"{self.key.to_user_string()} has never been materialized; {why}")
        return self.latest

    def artifact(self, why: str) -> Artifact:
        """The artifact the latest materialization names, verified (SHA-256) before use."""
        record = self.record(why)
        named = recorded_artifact(self.key, record)
        if named is None:
            raise Failure(f"{self.key.to_user_string()} stored no artifact; {why}")
        return self.store.verify(*named)


class RecordedArtifactIOManager(ConfigurableIOManager):
    """Loads the artifact the instance recorded for an upstream asset; stores nothing itself."""

    store: ArtifactStoreResource

    def handle_output(self, context: OutputContext, obj: object) -> None:
        # Steps return `MaterializeResult`s (their artifact is already in the store) or nothing
        # (`cache_gc_job`'s op); there is no value to store.
        if obj is not None:
            raise TypeError(
                f"{context.step_key}: return a MaterializeResult naming the stored artifact, "
                f"not a {type(obj).__name__}"
            )

    def load_input(self, context: InputContext) -> Upstream:
        return load_upstream(context.instance, context.asset_key, self.store.get())


def load_upstream(instance: DagsterInstance, key: AssetKey, store: ArtifactStore) -> Upstream:
    """`key` as a step receives it (nothing is read from the store yet)."""
    return Upstream(key, latest_record(instance, key), store)
