"""The workflow as one plain Python process, without Dagster: the baseline of benchmark a.

Same library calls as the assets, in order: read, clean and split the source and write the
splits as Parquet; train every candidate one after another, score it on the validation split
and save it; select the top k; score the serving requests with each selected model; aggregate
and write the result. No instance, no artifact hashing, no memoization: what a careful script
would do. Prints one JSON object with the time of each phase.

    python -m bench.baseline CONFIG OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ml_assets.core.config import load_settings
from ml_assets.ml.aggregate import aggregate
from ml_assets.ml.datasets import PARTS, clean, read_source, split, write_parquet
from ml_assets.ml.metrics import entity_coverage, evaluate, predicted_tags
from ml_assets.ml.models import CandidateError, TrainedModel, save_model, train_candidate
from ml_assets.ml.ranking import LeaderboardEntry, select_top_k


def run(config: Path, out: Path) -> dict[str, Any]:
    """Ingest, train all, select, serve and aggregate; returns timings and scores."""
    phases: dict[str, float] = {}
    started = time.perf_counter()
    settings = load_settings(config)
    source = settings.dataset
    frame = read_source(source.source, config.absolute().parent)
    dataset, _ = clean(frame, source.label, source.id, source.source)
    parts = split(
        dataset,
        validation=source.split.validation,
        serving=source.split.serving,
        seed=settings.training.seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        write_parquet(parts[name].to_frame(), out / f"{name}.parquet")
    phases["ingest"] = time.perf_counter() - started

    threshold = settings.serving.tag_threshold
    train, validation, requests = parts["train"], parts["validation"], parts["requests"]
    entries: list[LeaderboardEntry] = []
    models: dict[str, TrainedModel] = {}
    fit: dict[str, float] = {}
    mark = time.perf_counter()
    for candidate in settings.candidates:
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
            entries.append(LeaderboardEntry(candidate.name, "failed", note=str(error)))
            continue
        scores = evaluate(
            validation.Y, result.model.predict_scores(validation.X), validation.task, threshold
        )
        directory = out / "models" / candidate.name
        directory.mkdir(parents=True, exist_ok=True)
        save_model(result.model, directory)
        models[candidate.name] = result.model
        fit[candidate.name] = result.seconds
        entries.append(
            LeaderboardEntry(candidate.name, "landed", score=scores.hit_at_1, f1=scores.f1)
        )
    phases["training"] = time.perf_counter() - mark

    mark = time.perf_counter()
    selected = select_top_k(entries, settings.selection.top_k, settings.selection.min_score)
    phases["selection"] = time.perf_counter() - mark

    mark = time.perf_counter()
    matrices = [models[e.name].predict_scores(requests.X) for e in selected]
    phases["serving"] = time.perf_counter() - mark
    mark = time.perf_counter()
    output, mean, tags = aggregate(
        requests.ids, requests.entities, matrices, requests.task, threshold
    )
    write_parquet(output, out / "aggregated.parquet")
    phases["aggregation"] = time.perf_counter() - mark
    phases["total"] = time.perf_counter() - started

    task = requests.task
    return {
        "phases": phases,
        "fit_seconds": fit,
        "scores": {e.name: e.score for e in entries},
        "selected": [e.name for e in selected],
        "model_hit_at_1": {
            e.name: evaluate(requests.Y, m, task, threshold).hit_at_1
            for e, m in zip(selected, matrices, strict=True)
        },
        "ensemble_hit_at_1": evaluate(requests.Y, mean, task, threshold).hit_at_1,
        "coverage": {
            **{
                e.name: entity_coverage(predicted_tags(m, task, threshold), requests.Y)
                for e, m in zip(selected, matrices, strict=True)
            },
            "ensemble": entity_coverage(tags, requests.Y),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="an ml_assets.yaml")
    parser.add_argument("out", type=Path, help="where to write the splits, models, predictions")
    args = parser.parse_args(argv)
    json.dump(run(args.config, args.out), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
