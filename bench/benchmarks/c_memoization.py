"""c. Memoization: what a warm run of an unchanged config costs.

Measures the wall of a warm `ml-assets run` (the same config on the home of a cold run) over
the cold run's wall, and counts the models the warm run retrained (`trained_model`
materializations with `memoized: false`). Goal: 0 models retrained when nothing changed.
"""

from __future__ import annotations

from bench.common import SyncRun, cold_sync, sync_args
from bench.harness import Context, Phases, Timed, cli_run, median, sync_phases
from bench.result import Result, md_runs, md_table, new_result
from bench.workloads import VIDEO_CANDIDATES


def bench_memoization(ctx: Context) -> Result:
    result = new_result("c")
    cold: list[SyncRun] = []
    warm: list[tuple[Timed, Phases]] = []
    for r in range(ctx.repeats):
        run = cold_sync(ctx, 2, r)
        timed = cli_run(
            ctx, f"videos-c2-r{r}-warm", run.home, run.config, sync_args(ctx, 2), cold=False
        )
        cold.append(run)
        warm.append((timed, sync_phases(run.home, timed)))
    cold_wall = median([x.timed.seconds for x in cold])
    warm_wall = median([t.seconds for t, _ in warm])
    retrained = [p.retrained for _, p in warm]
    candidates = len(VIDEO_CANDIDATES)
    result.figure = f"{warm_wall / cold_wall:.3f} ({max(retrained)}/{candidates} retrained warm)"
    result.goal = "0 retrained when nothing changed"
    result.met = max(retrained) == 0
    result.details += md_table(
        ["", "median wall (s)", "runs (s)", "models retrained", "training runs launched"],
        [
            [
                "cold (empty home)",
                f"{cold_wall:.1f}",
                md_runs([x.timed.seconds for x in cold]),
                ", ".join(str(x.phases.retrained) for x in cold),
                ", ".join(str(x.phases.train_runs) for x in cold),
            ],
            [
                "warm (same home, same config)",
                f"{warm_wall:.1f}",
                md_runs([t.seconds for t, _ in warm]),
                ", ".join(map(str, retrained)),
                ", ".join(str(p.train_runs) for _, p in warm),
            ],
        ],
    )
    result.details += [
        "",
        "Models retrained: `trained_model` materializations with `memoized: false` recorded "
        "during the run (a warm run may also launch no training run at all).",
    ]
    if not result.met:
        result.notes.append(
            f"The warm run retrained {max(retrained)} model(s): see the warm runs' logs under "
            "bench/.work/videos/homes/logs."
        )
    return result
