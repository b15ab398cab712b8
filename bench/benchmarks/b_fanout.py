"""b. Fan-out speedup: how much a second training worker buys.

Measures the training phase of cold video runs at `--max-concurrent` 1 divided by the same
at 2 (from the first `train_job` run's creation to the last one's end, worker start-up
excluded), beside the whole run's ratio and the sum of `training_seconds`, with
`threads_per_model: 1`. Goal: ≥ 1.7.
"""

from __future__ import annotations

from bench.common import SyncRun, cold_sync
from bench.harness import Context, median
from bench.result import Result, md_runs, md_table, new_result


def bench_fanout(ctx: Context) -> Result:
    result = new_result("b")
    c1: list[SyncRun] = []
    c2: list[SyncRun] = []
    for r in range(ctx.repeats):
        c1.append(cold_sync(ctx, 1, r))
        c2.append(cold_sync(ctx, 2, r))
    train1 = median([x.phases.training for x in c1])
    train2 = median([x.phases.training for x in c2])
    speedup = train1 / train2
    whole = median([x.timed.seconds for x in c1]) / median([x.timed.seconds for x in c2])
    fit1 = median([x.phases.training_seconds for x in c1])
    fit2 = median([x.phases.training_seconds for x in c2])
    # The best two workers can do with these runs: the longest run, or half of all of them.
    bound = train1 / max(
        median([x.phases.longest_train_run for x in c1]),
        median([x.phases.train_run_seconds for x in c1]) / 2,
    )
    result.figure = f"{speedup:.2f}× (whole cold run {whole:.2f}×)"
    result.goal = "≥ 1.7"
    result.met = speedup >= 1.7
    result.details += md_table(
        ["", "max_concurrent 1", "max_concurrent 2", "1 / 2"],
        [
            ["training phase (s), median", f"{train1:.1f}", f"{train2:.1f}", f"{speedup:.2f}"],
            [
                "… runs (s)",
                md_runs([x.phases.training for x in c1]),
                md_runs([x.phases.training for x in c2]),
                "",
            ],
            [
                "whole cold run (s), median",
                f"{median([x.timed.seconds for x in c1]):.1f}",
                f"{median([x.timed.seconds for x in c2]):.1f}",
                f"{whole:.2f}",
            ],
            ["sum of `training_seconds` (s)", f"{fit1:.1f}", f"{fit2:.1f}", f"{fit1 / fit2:.2f}"],
        ],
    )
    result.details += [
        "",
        "Training phase: from the first `train_job` run's creation to the last one's end, read "
        "from the instance; the workers' start-up before it is excluded (it is in the whole-run "
        "figure). threads_per_model = 1. Best possible with these candidate durations on 2 "
        f"workers (longest run vs half the total): {bound:.2f}×.",
    ]
    if not result.met:
        result.notes.append(
            f"Model fitting itself takes {fit2 / fit1:.2f}× as long when two candidates train "
            "at once (the sum of `training_seconds`), and the schedule allows at most "
            f"{bound:.2f}×. Per-run bookkeeping on the shared SQLite instance also runs twice "
            "at once. If fitting slows down, look at the BLAS threads in the machine table: "
            "threads_per_model sets n_jobs and LightGBM's threads, not OpenBLAS's, so two "
            "logistic regressions can run four threads on two cores. To check: "
            "`python -m bench.run --only b --blas-threads 1 --output bench/.work/blas1.md`."
        )
    return result
