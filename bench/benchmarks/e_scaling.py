"""e. Candidate scaling: whether the cost per candidate stays flat as candidates multiply.

Runs cheap candidates (naive Bayes and decision trees) on digits at each count of the sizes
(5, 20, 50 at medium) and measures, per candidate, the wall and the training phase; at the
largest count, the time of `leaderboard` + `select_top_k` in-process and the
`model_selection` step's duration; at each count, one evaluation of the three sensors on the
finished home (what every 5-second daemon loop costs). Goal: training per candidate at the
largest / smallest count ≤ 1.25, and selection < 1 s.
"""

from __future__ import annotations

import time

from bench.common import SyncRun, sync_args
from bench.harness import (
    WORK,
    BenchError,
    Context,
    cli_run,
    median,
    open_instance,
    run_spans,
    step_seconds,
    sync_phases,
)
from bench.result import Result, md_table, new_result
from bench.workloads import scaling_config


def bench_scaling(ctx: Context) -> Result:
    result = new_result("e")
    directory = WORK / "scaling"
    rows: list[list[str]] = []
    per_candidate: dict[int, float] = {}
    training: dict[int, float] = {}
    selection_seconds: list[float] = []
    selection_steps: list[float] = []
    ticks: dict[int, list[float]] = {}
    largest = max(ctx.sizes.scaling)
    for count in ctx.sizes.scaling:
        config = scaling_config(directory, count)
        runs: list[SyncRun] = []
        for r in range(ctx.repeats):
            home = directory / "homes" / f"n{count}-r{r}"
            timed = cli_run(ctx, f"scale-{count}-r{r}", home, config, sync_args(ctx, 2), cold=True)
            run = SyncRun(home, config, timed, sync_phases(home, timed))
            runs.append(run)
            if count == largest:
                selection_seconds.append(_time_selection(run))
                selection_steps.append(_step(run, "model_selection"))
            ticks.setdefault(count, []).append(_time_sensor_ticks(run))
        wall = median([x.timed.seconds for x in runs])
        training[count] = median([x.phases.training for x in runs])
        per_candidate[count] = training[count] / count
        rows.append(
            [
                str(count),
                f"{wall:.1f}",
                f"{wall / count:.2f}",
                f"{training[count]:.1f}",
                f"{per_candidate[count]:.2f}",
                f"{median(ticks[count]):.3f}",
                f"{median(selection_seconds):.3f}" if count == largest else "",
            ]
        )
    smallest = min(ctx.sizes.scaling)
    growth = per_candidate[largest] / per_candidate[smallest]
    marginal = (training[largest] - training[smallest]) / (largest - smallest)
    select = median(selection_seconds)
    result.figure = (
        f"{growth:.2f} (per-candidate training time at {largest} / at {smallest}); "
        f"selection {select:.2f}s"
    )
    result.goal = "≤ 1.25 (linear); selection < 1 s"
    result.met = growth <= 1.25 and select < 1.0
    result.details += md_table(
        [
            "candidates",
            "wall (s)",
            "wall / candidate (s)",
            "training phase (s)",
            "training / candidate (s)",
            "sensor tick (s)",
            "selection (s)",
        ],
        rows,
    )
    result.details += [
        "",
        f"Each training run costs {marginal:.2f}s of training phase at max_concurrent 2 "
        f"(slope between {smallest} and {largest}); model fitting is milliseconds here, so this "
        "is the per-run cost of the orchestration. Selection: `leaderboard` + `select_top_k` "
        f"over {largest} candidates against the instance, in-process; the whole "
        f"`model_selection` step takes {median(selection_steps):.2f}s (median, from the serving "
        "run's events). Sensor tick: one evaluation each of `candidates_sensor`, "
        "`dataset_sensor` and `model_landed_sensor`, in-process on the finished home; the "
        "daemon runs them every 5 seconds.",
    ]
    if not result.met:
        result.notes.append(
            "Per-candidate cost grows with the number of candidates: the instance (SQLite) and "
            "the leaderboard read one record per candidate."
        )
    return result


def _time_selection(run: SyncRun) -> float:
    """Median seconds of `leaderboard` + `select_top_k` over the run's instance."""
    from dagster import AssetKey

    from ml_assets.core.config import load_settings
    from ml_assets.ml.ranking import select_top_k
    from ml_assets.state.leaderboard import leaderboard
    from ml_assets.state.records import latest_record

    settings = load_settings(run.config)
    times = []
    with open_instance(run.home) as instance:
        record = latest_record(instance, AssetKey("ingested_dataset"))
        if record is None:
            raise BenchError(f"{run.home}: nothing ingested")
        for _ in range(5):
            started = time.perf_counter()
            entries = leaderboard(instance, settings, record["dataset_key"])
            select_top_k(entries, settings.selection.top_k, settings.selection.min_score)
            times.append(time.perf_counter() - started)
    return median(times)


def _time_sensor_ticks(run: SyncRun) -> float:
    """Median seconds of one evaluation of each sensor (summed) on the run's finished home:
    what every 5-second loop of the daemon costs at this many candidates."""
    from dagster import build_sensor_context

    from ml_assets.defs.resources import ArtifactStoreResource, SettingsResource
    from ml_assets.defs.sensors import candidates_sensor, dataset_sensor, model_landed_sensor

    resources = {
        "settings": SettingsResource(config_path=str(run.config)),
        "store": ArtifactStoreResource(root=str(run.home / "store")),
    }
    times = []
    with open_instance(run.home) as instance:
        for _ in range(5):
            started = time.perf_counter()
            results = [
                sensor(build_sensor_context(instance=instance, resources=resources))
                for sensor in (candidates_sensor, dataset_sensor, model_landed_sensor)
            ]
            times.append(time.perf_counter() - started)
            # A finished home: each sensor must have planned and found nothing to do (a wrong
            # path would instead skip early with "config invalid" and look cheap).
            text = " ".join(str(r) for r in results)
            if "config invalid" in text or "RunRequest(" in text:
                raise BenchError(f"{run.home}: unexpected sensor results: {text[:300]}")
    return median(times[1:])  # the first pays one-off imports


def _step(run: SyncRun, step: str) -> float:
    with open_instance(run.home) as instance:
        spans = [s for s in run_spans(instance, run.timed.started_at) if s.job == "serve_job"]
        if not spans:
            raise BenchError(f"{run.home}: no serving run")
        return step_seconds(instance, spans[-1].run_id).get(step, float("nan"))
