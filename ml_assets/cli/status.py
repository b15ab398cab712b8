"""What `ml-assets status` reports: leaderboard, selection, latest aggregated predictions."""

from __future__ import annotations

from typing import Any

from dagster import DagsterInstance

from ml_assets.core.config import Settings
from ml_assets.core.names import (
    AGGREGATED_PREDICTIONS,
    BATCH_AGGREGATED_PREDICTIONS,
    BATCH_PARTITIONS,
    INGESTED_DATASET,
    MODEL_SELECTION,
    TRAINED_MODEL,
)
from ml_assets.ml.ranking import rank
from ml_assets.state.leaderboard import leaderboard
from ml_assets.state.records import latest_record, latest_records
from ml_assets.storage.store import ArtifactStore


def collect_status(
    instance: DagsterInstance, settings: Settings, store: ArtifactStore | None = None
) -> dict[str, Any]:
    dataset = latest_record(instance, INGESTED_DATASET)
    status: dict[str, Any] = {
        "dataset": None,
        "leaderboard": [],
        "selection": None,
        "aggregated": None,
    }
    if dataset is None:
        return status
    status["dataset"] = {
        "key": dataset["dataset_key"],
        "task": dataset["task"],
        "records": dataset["records"],
        "entities": dataset["entities"],
    }
    models = latest_records(instance, TRAINED_MODEL, [c.name for c in settings.candidates])
    status["leaderboard"] = [
        {
            **e.as_dict(),
            # Where the model was fit (`host:pid`), for a landed one.
            "worker": models[e.name].get("worker") if e.model_key and e.name in models else None,
        }
        for e in rank(leaderboard(instance, settings, dataset["dataset_key"], store))
    ]
    selection = latest_record(instance, MODEL_SELECTION)
    if selection is not None:
        status["selection"] = {"key": selection["selection_key"], "selected": selection["selected"]}
    aggregated = latest_record(instance, AGGREGATED_PREDICTIONS)
    if aggregated is not None:
        status["aggregated"] = {
            "path": aggregated["path"],
            "rows": aggregated["rows"],
            "models": aggregated["models"],
            "metric": aggregated.get("metric", "hit@1"),
            "ensemble_score": aggregated["ensemble_score"],
            "best_single_score": aggregated["best_single_score"],
            "entity_coverage": aggregated.get("entity_coverage"),
            "model_scores": aggregated["model_scores"],
            "selection_key": aggregated["selection_key"],
            "seconds_since_training_started": aggregated.get("seconds_since_training_started"),
            "current": selection is not None
            and aggregated["selection_key"] == selection["selection_key"],
        }
    status["batches"] = _batches(instance, selection)
    return status


def _batches(instance: DagsterInstance, selection: Any) -> list[dict[str, Any]]:
    """Each request batch's latest answer: rows, path, whether the current selection gave it."""
    names = sorted(instance.get_dynamic_partitions(BATCH_PARTITIONS))
    answers = latest_records(instance, BATCH_AGGREGATED_PREDICTIONS, names)
    result = []
    for name in names:
        answer = answers.get(name)
        result.append(
            {
                "batch": name,
                "rows": None if answer is None else answer["rows"],
                "path": None if answer is None else answer["path"],
                "models": None if answer is None else answer["models"],
                "current": answer is not None
                and selection is not None
                and answer["selection_key"] == selection["selection_key"],
            }
        )
    return result


def format_status(status: dict[str, Any], min_score: float, metric: str) -> str:
    if status["dataset"] is None:
        return "Nothing ingested yet: run `ml-assets run` (or `make run`)."
    d = status["dataset"]
    lines = [
        f"Dataset {d['key']}: {d['records']} records, {d['entities']} entities ({d['task']})",
        "",
    ]
    lines.append(f"Leaderboard (score: {metric} on the validation split; bar >= {min_score:.2f})")
    workers = any(e.get("worker") for e in status["leaderboard"])
    where = f"  {'fit on':<24}" if workers else ""
    lines.append(f"  {'candidate':<24} {'status':<8} {'score':>7}{where}  note")
    selected = set(status["selection"]["selected"]) if status["selection"] else set()
    for e in status["leaderboard"]:
        score = "" if e["score"] is None else f"{e['score']:.4f}"
        mark = " *" if e["name"] in selected else ""
        fit_on = f"  {e.get('worker') or '':<24}" if workers else ""
        lines.append(
            f"  {e['name'] + mark:<24} {e['status']:<8} {score:>7}{fit_on}  {e['note']}".rstrip()
        )
    lines.append("  (* selected)")
    if status["selection"]:
        lines.append(f"\nSelected: {', '.join(status['selection']['selected'])}")
    a = status["aggregated"]
    if a:
        lines.append(
            f"Ensemble {a['metric']} {a['ensemble_score']:.4f} vs best single model "
            f"{a['best_single_score']:.4f} on {a['rows']} serving requests"
        )
        if a.get("entity_coverage"):
            counts = ", ".join(f"{name} {n}" for name, n in a["entity_coverage"].items())
            lines.append(f"Entities tagged correctly at least once: {counts}")
        lines.append(f"Aggregated predictions: {a['path']}")
        if a.get("seconds_since_training_started") is not None:
            lines.append(
                f"  from {', '.join(a['models'])}, landed "
                f"{a['seconds_since_training_started']:.1f}s after training started"
            )
        if not a["current"]:
            lines.append("  (from an earlier selection: serving has not caught up yet)")
    if status.get("batches"):
        lines.append("\nRequest batches:")
        for b in status["batches"]:
            if b["path"] is None:
                lines.append(f"  {b['batch']:<24} no answer yet")
                continue
            note = "" if b["current"] else " (earlier selection)"
            lines.append(f"  {b['batch']:<24} {b['rows']} answers{note}: {b['path']}")
    return "\n".join(lines)
