"""g. Serving: what aggregating the selected models' predictions adds to predicting.

Loads the two selected models of a cold video run and times, in-process, `predict_scores`
of each on the serving requests and then `aggregate()`; the figure is (predict +
aggregate) / (predict), beside the serving run's own step durations. Goal: ≤ 1.2.
"""

from __future__ import annotations

import re
import time

from bench.common import SyncRun, load_served, trained_home
from bench.harness import (
    BenchError,
    Context,
    cli_status,
    median,
    open_instance,
    run_spans,
    step_seconds,
)
from bench.result import Result, md_table, new_result


def bench_serving(ctx: Context) -> Result:
    from ml_assets.core.config import load_settings
    from ml_assets.ml.aggregate import aggregate

    result = new_result("g")
    run = trained_home(ctx)
    status = cli_status(ctx, run.home, run.config)
    if not status.get("selection"):
        raise BenchError(f"{run.home}: nothing selected")
    names = list(status["selection"]["selected"])
    requests, models = load_served(run, names, status)
    threshold = load_settings(run.config).serving.tag_threshold
    predict: list[list[float]] = [[] for _ in models]
    merge: list[float] = []
    for _ in range(max(5, ctx.repeats)):
        matrices = []
        for i, (_, model) in enumerate(models):
            started = time.perf_counter()
            matrices.append(model.predict_scores(requests.X))
            predict[i].append(time.perf_counter() - started)
        started = time.perf_counter()
        aggregate(requests.ids, requests.entities, matrices, requests.task, threshold)
        merge.append(time.perf_counter() - started)
    rows = len(requests)
    own = [sum(times) for times in zip(*predict, strict=True)]
    total = [o + m for o, m in zip(own, merge, strict=True)]
    ratio = median(total) / median(own)
    result.figure = f"{ratio:.2f}× ({rows / median(total):,.0f} rows/s aggregated)"
    result.goal = "≤ 1.2× the models' own predict"
    result.met = ratio <= 1.2
    table_rows = [
        [
            f"`predict_scores` of {name}",
            f"{median(predict[i]) * 1e3:.1f}",
            f"{rows / median(predict[i]):,.0f}",
        ]
        for i, (name, _) in enumerate(models)
    ]
    table_rows += [
        ["sum of the models' predict", f"{median(own) * 1e3:.1f}", f"{rows / median(own):,.0f}"],
        ["`aggregate()` alone", f"{median(merge) * 1e3:.1f}", f"{rows / median(merge):,.0f}"],
        ["predict + aggregate", f"{median(total) * 1e3:.1f}", f"{rows / median(total):,.0f}"],
    ]
    result.details += md_table(["", "median (ms)", "rows/s"], table_rows)
    steps = _serving_steps(run)
    result.details += [
        "",
        f"{rows:,} serving requests, {len(requests.entities)} entities, the two selected models "
        f"of a cold run, timed in-process {max(5, ctx.repeats)} times. As assets (steps of "
        "that run's serving run, with artifact reads, hash checks and writes): "
        + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items())
        + ".",
    ]
    if not result.met:
        result.notes.append(
            "`aggregate()` builds each request's ranked tag list in a Python loop "
            "(`[[names[j] for j in row if tags[i, j]] …]`) and a pandas frame of object "
            "columns; the mean and the union are vectorised."
        )
    return result


def _serving_steps(run: SyncRun) -> dict[str, float]:
    with open_instance(run.home) as instance:
        spans = [s for s in run_spans(instance, run.timed.started_at) if s.job == "serve_job"]
        if not spans:
            return {}
        steps = step_seconds(instance, spans[0].run_id)
    wanted = re.compile(r"predictions_rank_\d+|aggregated_predictions")
    return {k: v for k, v in sorted(steps.items()) if wanted.fullmatch(k)}
