"""a. Baseline: the overhead of the orchestration against a plain script.

Measures the wall of a cold `ml-assets run --mode sync` on the videos, at `--max-concurrent`
1 and 2, divided by the wall of `bench/baseline.py` (the same library calls in one plain
process), both from process launch to exit, interleaved; a table splits each wall into
phases read from the run's Dagster instance. Goal: ≤ 1.25 at 1 and < 1.0 at 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import VIDEOS, SyncRun, cold_sync
from bench.harness import (
    WORK,
    Context,
    Phases,
    Timed,
    fresh_dir,
    median,
    require_success,
    run_child,
)
from bench.result import Result, md_runs, md_table, new_result
from bench.workloads import video_config


def baseline_run(ctx: Context, config: Path, repeat: int) -> tuple[Timed, dict[str, Any]]:
    out = fresh_dir(WORK / "baseline" / f"r{repeat}")
    ctx.log(f"  baseline-r{repeat}: python -m bench.baseline")
    timed = run_child(
        ctx,
        f"baseline-r{repeat}",
        ["-m", "bench.baseline", str(config), str(out)],
        ctx.env(WORK / "baseline" / "unused_home", config),
        WORK / "baseline" / "logs",
    )
    ctx.log(f"    {timed.seconds:.1f}s")
    report: dict[str, Any] = json.loads(require_success(timed).stdout.strip().splitlines()[-1])
    return timed, report


def bench_baseline(ctx: Context) -> Result:
    result = new_result("a")
    config = video_config(ctx, VIDEOS)
    base: list[tuple[Timed, dict[str, Any]]] = []
    c1: list[SyncRun] = []
    c2: list[SyncRun] = []
    for r in range(ctx.repeats):  # interleaved, so drift hits all three alike
        base.append(baseline_run(ctx, config, r))
        c1.append(cold_sync(ctx, 1, r))
        c2.append(cold_sync(ctx, 2, r))
    base_wall = median([t.seconds for t, _ in base])
    wall1 = median([run.timed.seconds for run in c1])
    wall2 = median([run.timed.seconds for run in c2])
    ratio1, ratio2 = wall1 / base_wall, wall2 / base_wall
    result.figure = f"{ratio1:.2f} (max_concurrent 1), {ratio2:.2f} (max_concurrent 2)"
    result.goal = "≤ 1.25 at 1; < 1.0 at 2"
    result.met = ratio1 <= 1.25 and ratio2 < 1.0
    result.details += md_table(
        ["", "median wall (s)", "runs (s)", "/ baseline"],
        [
            [
                "plain script (bench/baseline.py)",
                f"{base_wall:.1f}",
                md_runs([t.seconds for t, _ in base]),
                "1.00",
            ],
            [
                "cold run, max_concurrent 1",
                f"{wall1:.1f}",
                md_runs([x.timed.seconds for x in c1]),
                f"{ratio1:.2f}",
            ],
            [
                "cold run, max_concurrent 2",
                f"{wall2:.1f}",
                md_runs([x.timed.seconds for x in c2]),
                f"{ratio2:.2f}",
            ],
        ],
    )
    result.details += ["", "Where the time goes (medians, seconds):", ""]
    result.details += _phase_table(base, c1, c2)
    p1 = c1[0].phases
    overhead = wall1 - base_wall
    if not result.met:
        per_run = median([(x.phases.train_run_seconds - x.phases.training_seconds) for x in c1])
        start_up = median([x.phases.before_ingest for x in c1])
        workers = median([x.phases.pool_start for x in c1])
        serve = median([x.phases.serve for x in c1])
        exit_ = median([x.phases.after_serve for x in c1])
        fitting = median([sum(r["fit_seconds"].values()) for _, r in base])
        result.notes.append(
            f"At max_concurrent 1 the orchestrated run spends {overhead:.1f}s more than the "
            f"script: start-up before ingestion {start_up:.1f}s, training workers' start "
            f"{workers:.1f}s, {per_run:.1f}s over {p1.train_runs} training runs beyond model "
            "fitting (run bookkeeping, reading the splits, evaluation, hashing and writing the "
            f"model), the serving run {serve:.1f}s and {exit_:.1f}s of status output before "
            "exit. These costs are fixed per run or per candidate, so the ratio falls as "
            f"training grows: model fitting is {fitting:.0f}s of the script's "
            f"{base_wall:.0f}s here. At max_concurrent 2 the fan-out (b) has to win back "
            "these fixed costs."
        )
    return result


def _phase_table(
    base: list[tuple[Timed, dict[str, Any]]], c1: list[SyncRun], c2: list[SyncRun]
) -> list[str]:
    def col(runs: list[SyncRun], get: Callable[[Phases], float]) -> str:
        return f"{median([get(run.phases) for run in runs]):.1f}"

    def bcol(get: Callable[[Timed, dict[str, Any]], float]) -> str:
        return f"{median([get(t, r) for t, r in base]):.1f}"

    rows: list[list[str]] = [
        [
            "start-up: interpreter, imports, planning",
            bcol(lambda t, r: t.seconds - r["phases"]["total"]),
            col(c1, lambda p: p.before_ingest),
            col(c2, lambda p: p.before_ingest),
        ],
        [
            "ingestion",
            bcol(lambda t, r: r["phases"]["ingest"]),
            col(c1, lambda p: p.ingest),
            col(c2, lambda p: p.ingest),
        ],
        [
            "training workers start",
            "—",
            col(c1, lambda p: p.pool_start),
            col(c2, lambda p: p.pool_start),
        ],
        [
            "training (first run created → last ended)",
            bcol(lambda t, r: r["phases"]["training"]),
            col(c1, lambda p: p.training),
            col(c2, lambda p: p.training),
        ],
        [
            "… of which model fitting (sum)",
            bcol(lambda t, r: sum(r["fit_seconds"].values())),
            col(c1, lambda p: p.training_seconds),
            col(c2, lambda p: p.training_seconds),
        ],
        [
            "training → serving",
            "—",
            col(c1, lambda p: p.after_training),
            col(c2, lambda p: p.after_training),
        ],
        [
            "selection, serving, aggregation",
            bcol(
                lambda t, r: (
                    r["phases"]["selection"] + r["phases"]["serving"] + r["phases"]["aggregation"]
                )
            ),
            col(c1, lambda p: p.serve),
            col(c2, lambda p: p.serve),
        ],
        [
            "status output, exit",
            "—",
            col(c1, lambda p: p.after_serve),
            col(c2, lambda p: p.after_serve),
        ],
        [
            "wall",
            bcol(lambda t, r: t.seconds),
            col(c1, lambda p: p.wall),
            col(c2, lambda p: p.wall),
        ],
    ]
    return md_table(["phase", "script", "run, max_concurrent 1", "run, max_concurrent 2"], rows)
