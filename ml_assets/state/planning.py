"""What needs to run, read from the instance: shared by the sensors and `ml-assets run`.

Launch-level skipping lives here: a step whose inputs' versions are unchanged gets no run at all.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from ml_assets.core.config import CandidateConfig, Settings
from ml_assets.core.keys import SELECTION_CODE_VERSION, model_memo_key
from ml_assets.core.names import (
    AGGREGATED_PREDICTIONS,
    ATTEMPT_TAG,
    BATCH_AGGREGATED_PREDICTIONS,
    INGESTED_DATASET,
    MODEL_SELECTION,
    PARTITION_TAG,
    SERVING_REQUESTS,
    TRAINED_MODEL,
)
from ml_assets.ml.datasets import batch_files
from ml_assets.ml.models import CandidateError, validate_candidate
from ml_assets.state.records import latest_record, latest_records
from ml_assets.state.runs import run_failure
from ml_assets.storage.artifacts import SELECTION_FILE, read_json
from ml_assets.storage.store import ArtifactError, ArtifactStore


@dataclass(frozen=True)
class TrainingAttempt:
    """Where training one candidate stands, for `candidates_sensor` and `ml-assets run` alike."""

    group: str  # the candidate's config and the dataset: the runs that try the same thing
    failures: int  # failed or canceled runs of that group so far
    landed: int  # storage id of the partition's latest materialization (0: none)
    user_error: bool = False  # the last failure was the candidate's own mistake

    @property
    def run_key(self) -> str:
        # Names the model the instance records now: when that model's artifact is damaged or
        # deleted, the plan asks again with a new key (Dagster skips a key it has seen).
        return f"{self.group}:{self.landed}:{self.failures}"

    def given_up(self, max_retries: int) -> bool:
        """No more runs: retried `max_retries` times, or failed on a mistake that a retry
        cannot fix (bad hyperparameter values; a config edit makes a new group)."""
        return self.user_error or self.failures > max_retries


def training_attempt(
    instance: DagsterInstance, candidate: CandidateConfig, dataset_key: str, landed: int
) -> TrainingAttempt:
    """`landed`: the storage id of the partition's latest materialization when the plan was
    made (`TrainingPlan.landed`), not read again here: a model that lands in between would give
    a new run key, and Dagster would launch a second run for a candidate that just landed."""
    group = f"train:{candidate.name}:{candidate.config_hash()}:{dataset_key}"
    # Canceled counts too: its run key is used, so Dagster would skip asking again with it.
    ended = [DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
    failures = instance.get_runs_count(RunsFilter(tags={ATTEMPT_TAG: group}, statuses=ended))
    user_error = False
    if failures:
        last = instance.get_run_records(RunsFilter(tags={ATTEMPT_TAG: group}, statuses=ended), 1)
        user_error = run_failure(instance, last[0].dagster_run.run_id).user_error
    return TrainingAttempt(group, failures, landed, user_error)


@dataclass(frozen=True)
class TrainingPlan:
    to_train: list[CandidateConfig]
    up_to_date: list[str]
    invalid: dict[str, str]
    dataset_key: str | None
    # candidate → storage id of its latest materialization as the plan saw it (0: none)
    landed: dict[str, int] = field(default_factory=dict)


def plan_training(
    instance: DagsterInstance,
    settings: Settings,
    store: ArtifactStore,
    force: frozenset[str] = frozenset(),
) -> TrainingPlan:
    """Candidates whose current memo key has no intact, recorded model (or that are forced).

    This runs on every sensor tick: `ArtifactStore.present` hashes a model only the first time
    this process sees it (or after its files changed).
    """
    dataset = latest_record(instance, INGESTED_DATASET)
    dataset_key = None if dataset is None else dataset["dataset_key"]
    invalid: dict[str, str] = {}
    landed: dict[str, int] = {}
    to_train, up_to_date = [], []
    models = latest_records(instance, TRAINED_MODEL, [c.name for c in settings.candidates])
    for candidate in settings.candidates:
        record = models.get(candidate.name)
        landed[candidate.name] = 0 if record is None else record.storage_id
        if dataset_key is not None and not ("all" in force or candidate.name in force):
            key = model_memo_key(dataset_key, candidate, settings)
            if (
                record is not None
                and record["model_key"] == key
                and store.present("models", key, record["digest"])
            ):
                # Trained from this very config (its hash is in the key): valid, and validating
                # again would import the model's library for nothing.
                up_to_date.append(candidate.name)
                continue
        try:
            validate_candidate(candidate.name, candidate.model, candidate.params)
        except CandidateError as error:
            invalid[candidate.name] = str(error)
            continue
        to_train.append(candidate)
    return TrainingPlan(to_train, up_to_date, invalid, dataset_key, landed)


def failed_since_selection(instance: DagsterInstance, settings: Settings) -> list[str]:
    """Ids of the configured candidates' training runs that failed after the latest selection:
    its leaderboard still shows them as running, without the reason they failed."""
    selection = latest_record(instance, MODEL_SELECTION)
    if selection is None:
        return []
    names = {c.name for c in settings.candidates}
    # From when the selecting run started, not when it materialized: the leaderboard was read
    # in between, so a failure recorded meanwhile may be missing from it.
    run = instance.get_run_record_by_id(selection.run_id)
    seen_at = run.start_time if run is not None and run.start_time else selection.timestamp
    records = instance.get_run_records(
        RunsFilter(
            statuses=[DagsterRunStatus.FAILURE],
            updated_after=datetime.fromtimestamp(seen_at, tz=UTC),
        ),
        limit=100,
    )
    return sorted(
        r.dagster_run.run_id for r in records if r.dagster_run.tags.get(PARTITION_TAG) in names
    )


def serving_is_current(instance: DagsterInstance, settings: Settings, store: ArtifactStore) -> bool:
    """True when the aggregated predictions come from a selection that saw every landed model
    and every failed training run (so its leaderboard says why a candidate did not land)."""
    selection_record = latest_record(instance, MODEL_SELECTION)
    aggregated = latest_record(instance, AGGREGATED_PREDICTIONS)
    if selection_record is None or aggregated is None:
        return False
    if failed_since_selection(instance, settings):
        return False
    if aggregated["selection_key"] != selection_record["selection_key"]:
        return False
    try:
        selection = read_json(
            store, "selections", selection_record["selection_key"], SELECTION_FILE, None
        )
    except ArtifactError:
        return False
    if selection.get("settings") != settings.selection.model_dump():
        return False  # `selection:` in ml_assets.yaml changed since (metric, bar, strategy, …)
    if selection.get("code_version") != SELECTION_CODE_VERSION:
        return False
    seen = {(e["name"], e["model_key"]) for e in selection["leaderboard"] if e["model_key"]}
    models = latest_records(instance, TRAINED_MODEL, [c.name for c in settings.candidates])
    if any((name, record["model_key"]) not in seen for name, record in models.items()):
        return False
    dataset = latest_record(instance, INGESTED_DATASET)
    return dataset is not None and dataset["dataset_key"] == selection["dataset_key"]


def stale_batches(
    instance: DagsterInstance,
    settings: Settings,
    base_dir: Path,
    files: Mapping[str, Path] | None = None,
) -> list[str]:
    """The request batches (`serving.requests`) whose latest answer is not from the current
    selection and the file as it is now (its size and mtime); none before the first
    selection. Shared by `request_batches_sensor` and `ml-assets run`; `files`: the batch files,
    when the caller has listed them already."""
    if settings.serving.requests is None:
        return []
    selection = latest_record(instance, MODEL_SELECTION)
    if selection is None:
        return []
    if files is None:
        files = batch_files(settings.serving.requests, base_dir)
    answers = latest_records(instance, BATCH_AGGREGATED_PREDICTIONS, list(files))
    requests = latest_records(instance, SERVING_REQUESTS, list(files))
    stale = []
    for name, path in files.items():
        answer, stored = answers.get(name), requests.get(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # removed since the glob matched it
        if (
            answer is None
            or stored is None
            or answer["selection_key"] != selection["selection_key"]
            or answer.get("requests_key") != stored["requests_key"]
            or stored.get("file_size") != stat.st_size
            or stored.get("file_mtime_ns") != str(stat.st_mtime_ns)
        ):
            stale.append(name)
    return stale
