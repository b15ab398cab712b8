"""The selection being served: loaded off the request path, verified, swapped in whole.

A `Snapshot` is immutable and holds everything one answer needs (models, weights, features,
threshold). `CurrentSelection` polls the instance for the newest `model_selection`, loads a new
one in its own thread and publishes it with a single attribute assignment: a request takes
`current.snapshot` once and finishes on those models, whatever lands meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
from dagster import DagsterInstance

from ml_assets.core.names import MODEL_SELECTION
from ml_assets.ml.aggregate import answer
from ml_assets.ml.datasets import Task
from ml_assets.ml.models import TrainedModel
from ml_assets.serve.limits import DEFAULT_POLL_SECONDS, RETRY_FAILED_SECONDS
from ml_assets.state.records import Record, latest_record
from ml_assets.storage.artifacts import SELECTION_FILE, dataset_info, read_json, read_model
from ml_assets.storage.store import ArtifactError, ArtifactStore

ENSEMBLE: Final = "ensemble"  # the served name of the whole selection (KServe's model name)
WAITING: Final = (
    "no model selection yet: waiting for model_selection to materialize (run `ml-assets run`)"
)

logger = logging.getLogger(__name__)


class SelectionLoadError(ArtifactError):
    """A recorded selection cannot be served; the message names the selection and why."""


@dataclass(frozen=True)
class Member:
    """One selected model, loaded."""

    name: str
    model_key: str
    model_digest: str
    weight: float
    why: str
    model: TrainedModel


@dataclass(frozen=True)
class Answer:
    """One prediction request's result, and what produced it."""

    tags: list[list[str]]
    top_entity: list[str]
    scores: np.ndarray  # records × entities
    models: list[str]
    selection_key: str


@dataclass(frozen=True)
class Snapshot:
    """A loaded selection: never mutated, replaced whole."""

    selection_key: str
    dataset_key: str
    task: Task
    entities: tuple[str, ...]
    features: tuple[str, ...]
    threshold: float
    members: tuple[Member, ...]
    loaded_at: float  # time.time() of the swap

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def predict(self, values: np.ndarray, member: Member | None = None) -> Answer:
        """The ensemble's answer (or one member's alone) for a records × features matrix in
        the dataset's feature order: the same merge `aggregated_predictions` applies."""
        frame = pd.DataFrame(values, columns=list(self.features), copy=False)
        chosen = self.members if member is None else (member,)
        matrices = [m.model.predict_scores(frame) for m in chosen]
        # One member alone: equal weights, so its scores come back bit for bit.
        weights = [m.weight for m in chosen] if member is None else None
        mean, _, tags, top = answer(
            list(self.entities), matrices, self.task, self.threshold, weights
        )
        return Answer(
            tags=tags,
            top_entity=top,
            scores=mean,
            models=[m.name for m in chosen],
            selection_key=self.selection_key,
        )


def load_snapshot(
    store: ArtifactStore, selection_key: str, digest: str | None, threshold: float
) -> Snapshot:
    """Read and verify a selection, its dataset's description and every selected model (each
    SHA-256-checked against the digest the selection recorded before it is unpickled)."""
    try:
        selection: dict[str, Any] = read_json(
            store, "selections", selection_key, SELECTION_FILE, digest
        )
        dataset = store.verify("datasets", selection["dataset_key"], selection["dataset_digest"])
        info = dataset_info(dataset)
        selected = selection["selected"]
        if not selected:
            raise SelectionLoadError(f"selections/{selection_key}: selects no model")
        members = tuple(
            Member(
                name=str(entry["name"]),
                model_key=str(entry["model_key"]),
                model_digest=str(entry["model_digest"]),
                # The rule `aggregated_predictions` applies: equal weights unless recorded.
                weight=float(entry.get("weight", 1.0 / len(selected))),
                why=str(entry.get("why", "")),
                model=read_model(store, str(entry["model_key"]), str(entry["model_digest"])),
            )
            for entry in selected
        )
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise SelectionLoadError(
            f"selections/{selection_key}: cannot be read: {type(error).__name__}: {error}"
        ) from error
    for member in members:
        model = member.model
        unknown = [f for f in model.features if f not in set(info.features)]
        if list(model.entities) != list(info.entities) or model.task != info.task or unknown:
            raise SelectionLoadError(
                f"selections/{selection_key}: model {member.name!r} ({member.model_key}) does "
                f"not fit dataset {info.key} (entities, task or features {unknown[:5]} differ)"
            )
    return Snapshot(
        selection_key=selection_key,
        dataset_key=info.key,
        task=info.task,
        entities=tuple(info.entities),
        features=tuple(info.features),
        threshold=threshold,
        members=members,
        loaded_at=time.time(),
    )


@dataclass(frozen=True)
class _Failure:
    selection_key: str
    storage_id: int  # which landing of it failed: a new landing of the same key is tried again
    at: float
    message: str


class CurrentSelection:
    """The served snapshot, and the watcher thread that replaces it as selections land.

    Read `snapshot` once per request. `check()` is one poll (the watcher calls it every
    `poll_seconds`; tests may call it directly).
    """

    def __init__(
        self,
        instance: DagsterInstance,
        store: ArtifactStore,
        threshold: float,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        retry_seconds: float = RETRY_FAILED_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instance = instance
        self.store = store
        self.threshold = threshold
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.snapshot: Snapshot | None = None  # replaced by one assignment, never mutated
        self.loading: str | None = None  # the selection key being loaded now, if any
        self.swaps = 0
        self.load_failures = 0
        self._failure: _Failure | None = None
        self._poll_error: str | None = None
        self._lock = threading.Lock()  # one check at a time (the watcher, or a test)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def last_error(self) -> str | None:
        """Why the newest selection is not served (a failed load, or the instance unreadable),
        or None."""
        if self._poll_error is not None:
            return self._poll_error
        return None if self._failure is None else self._failure.message

    def unavailable(self) -> str:
        """Why there is no snapshot to answer with (for the 503)."""
        if self.loading is not None:
            return f"model selection {self.loading} is loading; ready shortly"
        if self.last_error is not None:
            return f"no model selection loaded: {self.last_error}"
        return WAITING

    def check(self) -> Snapshot | None:
        """Poll the instance once; load and swap in a newer selection. Returns the snapshot
        swapped in, or None when nothing changed or the load failed."""
        with self._lock:
            record = latest_record(self.instance, MODEL_SELECTION)
            self._poll_error = None
            if record is None or "selection_key" not in record.metadata:
                return None
            key = str(record["selection_key"])
            served = self.snapshot
            if served is not None and served.selection_key == key:
                self._failure = None
                return None
            if not self._due(key, record):
                return None
            return self._load(key, record)

    def _due(self, key: str, record: Record) -> bool:
        failed = self._failure
        return (
            failed is None
            or failed.selection_key != key
            or failed.storage_id != record.storage_id
            or self.clock() - failed.at >= self.retry_seconds
        )

    def _load(self, key: str, record: Record) -> Snapshot | None:
        self.loading = key
        started = time.perf_counter()
        try:
            snapshot = load_snapshot(self.store, key, record.get("digest"), self.threshold)
        except ArtifactError as error:  # SelectionLoadError included
            self.load_failures += 1
            kept = self.snapshot.selection_key if self.snapshot else "nothing"
            message = f"model selection {key} not loaded (still serving {kept}): {error}"
            self._failure = _Failure(key, record.storage_id, self.clock(), message)
            logger.error(message)
            return None
        finally:
            self.loading = None
        previous = self.snapshot
        self.snapshot = snapshot  # the swap: requests from here on use the new models
        self._failure = None
        self.swaps += 1
        logger.info(
            "serving model selection %s (%s) in %.2f s%s",
            key,
            ", ".join(snapshot.names),
            time.perf_counter() - started,
            f"; was {previous.selection_key}" if previous else "",
        )
        return snapshot

    # --- the watcher thread ------------------------------------------------------------------

    def start(self) -> None:
        """Poll in a daemon thread from now on (the first poll at once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="selection-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._tick()
            self._stop.wait(self.poll_seconds)

    def _tick(self) -> None:
        try:
            self.check()
        except Exception as error:
            # The watcher outlives anything one poll meets (the instance's database briefly
            # unreachable or locked, a bug in a newer selection's files): a dead watcher would
            # silently stop every later swap. The served snapshot is untouched; say why.
            message = f"cannot read the newest model selection: {type(error).__name__}: {error}"
            if message != self._poll_error:
                logger.exception(message)
            self._poll_error = message


def served_names(snapshot: Snapshot | None) -> Sequence[str]:
    """Every model name a request may name: the ensemble, then its members."""
    return [ENSEMBLE, *(snapshot.names if snapshot else [])]
