"""The benchmarks a–h. Each returns a `Result`: one figure, its goal, and Markdown details.

Cold runs of the video workload are shared: a, b, c, g and h read the same
`(max_concurrent, repeat)` runs when they run in one invocation, so their figures come from
runs taken side by side.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.harness import (
    WORK,
    BenchError,
    Context,
    Phases,
    RunSpan,
    Timed,
    cli_run,
    cli_status,
    fresh_dir,
    has_mode,
    materializations,
    median,
    open_instance,
    require_success,
    run_child,
    run_spans,
    step_seconds,
    sync_phases,
)
from bench.workloads import (
    ASYNC_WORKLOADS,
    AUDIO_ONLY,
    SLOW_CANDIDATE,
    VIDEO_CANDIDATES,
    VISUAL_ONLY,
    AsyncWorkload,
    async_config,
    digits_config,
    ingestion_source,
    scaling_config,
    video_config,
)

if TYPE_CHECKING:
    import numpy as np

    from ml_assets.ml.datasets import Dataset
    from ml_assets.ml.models import TrainedModel

VIDEOS: Final = WORK / "videos"
MB: Final = 2**20


@dataclass
class Result:
    key: str
    name: str
    title: str
    figure: str = "—"
    goal: str = "—"
    met: bool | None = None
    details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def new_result(key: str) -> Result:
    """An empty result titled from the registry."""
    benchmark = BENCHMARKS[key]
    return Result(key, benchmark.name, benchmark.title)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _runs(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


# --- shared cold runs of the video workload ---------------------------------------------------


@dataclass(frozen=True)
class SyncRun:
    home: Path
    config: Path
    timed: Timed
    phases: Phases


def sync_args(ctx: Context, concurrency: int) -> list[str]:
    mode = ["--mode", "sync"] if has_mode(ctx, "sync") else []
    return [*mode, "--max-concurrent", str(concurrency)]


def cold_sync(ctx: Context, concurrency: int, repeat: int) -> SyncRun:
    """Cold `ml-assets run --mode sync --max-concurrent N` on the videos (once per invocation)."""
    key = f"videos-c{concurrency}-r{repeat}"
    cached = ctx.shared.get(key)
    if isinstance(cached, SyncRun):
        return cached
    config = video_config(ctx, VIDEOS)
    home = VIDEOS / "homes" / f"c{concurrency}-r{repeat}"
    timed = cli_run(ctx, key, home, config, sync_args(ctx, concurrency), cold=True)
    run = SyncRun(home, config, timed, sync_phases(home, timed))
    ctx.shared[key] = run
    return run


def trained_home(ctx: Context) -> SyncRun:
    """A home where the video workload has run to the end (the first cold run at concurrency 2)."""
    return cold_sync(ctx, 2, 0)


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


# --- a. baseline ------------------------------------------------------------------------------


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
    result.details += _table(
        ["", "median wall (s)", "runs (s)", "/ baseline"],
        [
            [
                "plain script (bench/baseline.py)",
                f"{base_wall:.1f}",
                _runs([t.seconds for t, _ in base]),
                "1.00",
            ],
            [
                "cold run, max_concurrent 1",
                f"{wall1:.1f}",
                _runs([x.timed.seconds for x in c1]),
                f"{ratio1:.2f}",
            ],
            [
                "cold run, max_concurrent 2",
                f"{wall2:.1f}",
                _runs([x.timed.seconds for x in c2]),
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
    return _table(["phase", "script", "run, max_concurrent 1", "run, max_concurrent 2"], rows)


# --- b. fan-out speedup -----------------------------------------------------------------------


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
    result.details += _table(
        ["", "max_concurrent 1", "max_concurrent 2", "1 / 2"],
        [
            ["training phase (s), median", f"{train1:.1f}", f"{train2:.1f}", f"{speedup:.2f}"],
            [
                "… runs (s)",
                _runs([x.phases.training for x in c1]),
                _runs([x.phases.training for x in c2]),
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


# --- c. memoization ---------------------------------------------------------------------------


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
    result.details += _table(
        ["", "median wall (s)", "runs (s)", "models retrained", "training runs launched"],
        [
            [
                "cold (empty home)",
                f"{cold_wall:.1f}",
                _runs([x.timed.seconds for x in cold]),
                ", ".join(str(x.phases.retrained) for x in cold),
                ", ".join(str(x.phases.train_runs) for x in cold),
            ],
            [
                "warm (same home, same config)",
                f"{warm_wall:.1f}",
                _runs([t.seconds for t, _ in warm]),
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


# --- d. async ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsyncRun:
    """One cold run of the slow-candidate workload, seconds from launching `ml-assets run`."""

    wall: float
    first_predictions: float  # the first aggregated predictions landed
    slow_landed: float  # the slow candidate's model landed
    first_models: list[str]
    final_models: list[str]
    fit_seconds: dict[str, float]  # `training_seconds` per candidate
    hops: dict[str, float]  # where the seconds to the first predictions go (`first_hops`)


def first_hops(
    spans: Sequence[RunSpan],
    models: Sequence[tuple[float, str | None, dict[str, Any]]],
    first_aggregated: float,
    launched: float,
) -> dict[str, float]:
    """The seconds from launch to the first aggregated predictions, hop by hop, read from the
    run records (created, started, ended) and the materialization timestamps. Empty when the
    runs do not form the chain ingestion → training → serving (a warm run, say)."""
    ingests = [s for s in spans if s.job == "ingest_job" and s.ended]
    trains = [s for s in spans if s.job == "train_job" and s.started]
    serves = [
        s
        for s in spans
        if s.job == "serve_job" and s.started and s.started <= first_aggregated <= (s.ended or 0)
    ]
    if not (ingests and trains and serves and models):
        return {}
    ingest, serve = ingests[0], serves[0]
    landed, partition, _ = models[0]
    first = next((s for s in trains if s.partition == partition), None)
    if first is None or first.started is None or ingest.ended is None or serve.started is None:
        return {}
    return {
        "launch → ingestion run created": ingest.created - launched,
        "ingestion run": ingest.ended - ingest.created,
        "ingestion ended → training runs requested (sensor tick)": min(s.created for s in trains)
        - ingest.ended,
        "first model's run: requested → started": first.started - min(s.created for s in trains),
        "first model's run: started → model landed": landed - first.started,
        "model landed → serving run requested (sensor tick)": serve.created - landed,
        "serving run: requested → started": serve.started - serve.created,
        "serving run: started → aggregated predictions": first_aggregated - serve.started,
    }


def _slow_workload_run(ctx: Context, label: str, config: Path, args: list[str]) -> AsyncRun:
    home = WORK / "async" / "homes" / label
    timed = cli_run(ctx, label, home, config, args, cold=True)
    with open_instance(home) as instance:
        aggregated = materializations(instance, "aggregated_predictions", timed.started_at)
        models = materializations(instance, "trained_model", timed.started_at)
        spans = run_spans(instance, timed.started_at)
    slow = [ts for ts, partition, _ in models if partition == SLOW_CANDIDATE]
    if not aggregated or not slow:
        raise BenchError(f"{label}: no aggregated predictions, or {SLOW_CANDIDATE} never landed")
    return AsyncRun(
        wall=timed.seconds,
        first_predictions=aggregated[0][0] - timed.started_at,
        slow_landed=slow[0] - timed.started_at,
        first_models=list(aggregated[0][2].get("models", [])),
        final_models=list(aggregated[-1][2].get("models", [])),
        fit_seconds={str(p): float(m["training_seconds"]) for _, p, m in models},
        hops=first_hops(spans, models, aggregated[0][0], timed.started_at),
    )


def _with_retry(ctx: Context, label: str, config: Path, args: list[str]) -> AsyncRun | str:
    """The run, retried once (the daemon is a separate process); the error text if both fail."""
    errors = []
    for attempt in range(2):
        try:
            return _slow_workload_run(
                ctx, label + (f"-retry{attempt}" if attempt else ""), config, args
            )
        except BenchError as error:
            errors.append(str(error).splitlines()[0])
    return "; ".join(errors)


@dataclass(frozen=True)
class AsyncFigures:
    """Benchmark d on one workload: its async and sync runs, alternating."""

    workload: AsyncWorkload
    asyncs: list[AsyncRun]
    syncs: list[AsyncRun]
    failures: list[str]

    @property
    def ratios(self) -> list[float]:
        return [run.first_predictions / run.slow_landed for run in self.asyncs]

    @property
    def ratio(self) -> float:
        return median(self.ratios)

    @property
    def fits(self) -> dict[str, float]:
        """`training_seconds` per candidate in the first sync run (nothing else running)."""
        return self.syncs[0].fit_seconds

    @property
    def rest_fit(self) -> float:
        """The median fit of the candidates other than the slow one."""
        rest = [seconds for name, seconds in self.fits.items() if name != SLOW_CANDIDATE]
        return median(rest) if rest else 0.0

    @property
    def slow_factor(self) -> float:
        return self.fits.get(SLOW_CANDIDATE, 0.0) / self.rest_fit if self.rest_fit else 0.0

    @property
    def first(self) -> float:
        return median([run.first_predictions for run in self.asyncs])

    @property
    def slow(self) -> float:
        return median([run.slow_landed for run in self.asyncs])

    @property
    def sync_first(self) -> float:
        return median([run.first_predictions for run in self.syncs])

    @property
    def sync_slow(self) -> float:
        return median([run.slow_landed for run in self.syncs])


def _async_workload(ctx: Context, workload: AsyncWorkload) -> AsyncFigures:
    config = async_config(ctx, WORK / "async", workload)
    figures = AsyncFigures(workload, [], [], [])
    for r in range(ctx.repeats):  # async and sync alternate, so both see the same machine
        for mode, runs in (("async", figures.asyncs), ("sync", figures.syncs)):
            args = ["--mode", mode] + (["--max-concurrent", "2"] if mode == "sync" else [])
            outcome = _with_retry(ctx, f"{workload.name}-{mode}-r{r}", config, args)
            if isinstance(outcome, str):
                figures.failures.append(f"{workload.name} {mode} r{r}: {outcome}")
            else:
                runs.append(outcome)
    if not figures.asyncs or not figures.syncs:
        raise BenchError(
            f"{workload.name}: every async or every sync run failed: " + "; ".join(figures.failures)
        )
    return figures


def _async_details(figures: AsyncFigures) -> list[str]:
    asyncs, syncs, fits = figures.asyncs, figures.syncs, figures.fits

    def col(runs: list[AsyncRun], get: Callable[[AsyncRun], float]) -> list[str]:
        values = [get(run) for run in runs]
        return [f"{median(values):.1f}", _runs(values)]

    first, sync_first, sync_slow = figures.first, figures.sync_first, figures.sync_slow
    ranks = "ranks" if SLOW_CANDIDATE in asyncs[0].final_models else "does not rank"
    hops = [run.hops for run in asyncs if run.hops]
    lines = [
        "",
        f"**Workload `{figures.workload.name}` ({figures.workload.summary}): {figures.ratio:.2f}**",
        "",
        *_table(
            ["", "median (s)", "runs (s)"],
            [
                [
                    "async: first aggregated predictions",
                    *col(asyncs, lambda a: a.first_predictions),
                ],
                [f"async: {SLOW_CANDIDATE} landed", *col(asyncs, lambda a: a.slow_landed)],
                ["async: whole `ml-assets run`", *col(asyncs, lambda a: a.wall)],
                [
                    "sync baseline (train all, then serve): first aggregated predictions",
                    *col(syncs, lambda a: a.first_predictions),
                ],
                [f"sync baseline: {SLOW_CANDIDATE} landed", *col(syncs, lambda a: a.slow_landed)],
                ["sync baseline: whole `ml-assets run --mode sync`", *col(syncs, lambda a: a.wall)],
            ],
        ),
        "",
        f"Ratio per async run: {', '.join(f'{x:.2f}' for x in figures.ratios)}. "
        f"Async first predictions / the synchronous baseline's: {first / sync_first:.2f}. "
        f"Against the slow model's sync landing ({sync_slow:.1f}s; training is niced and shares "
        f"the cores with serving in async, so it lands later there): {first / sync_slow:.2f}.",
        f"{len(fits)} candidates; `{SLOW_CANDIDATE}` fits in {fits.get(SLOW_CANDIDATE, 0.0):.1f}s, "
        f"{figures.slow_factor:.1f}× the median of the rest ({figures.rest_fit:.1f}s; "
        f"`training_seconds` of the first sync run: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in fits.items())
        + ").",
        f"First predictions served {', '.join(asyncs[0].first_models)}; the final ones "
        f"{', '.join(asyncs[0].final_models)} ({SLOW_CANDIDATE} {ranks} in the top k).",
    ]
    if hops:
        lines += [
            "",
            "Where the async first predictions' seconds go (median of each hop over the runs; "
            "from the run records and materialization timestamps):",
            "",
            *_table(
                ["hop", "median (s)", "runs (s)"],
                [
                    [name, f"{median([h[name] for h in hops]):.1f}", _runs([h[name] for h in hops])]
                    for name in hops[0]
                    if all(name in h for h in hops)
                ],
            ),
        ]
    if figures.failures:
        lines += ["", f"{len(figures.failures)} failed attempt(s):"]
        lines += [f"- {failure}" for failure in figures.failures]
    return lines


def bench_async(ctx: Context) -> Result:
    result = new_result("d")
    if not has_mode(ctx, "async"):
        result.figure = "not available yet"
        result.details.append("`ml-assets run --help` offers no `--mode async`.")
        return result
    workloads = [_async_workload(ctx, workload) for workload in ASYNC_WORKLOADS]
    result.figure = "; ".join(
        f"{f.workload.name}: {f.ratio:.2f} "
        f"({f.first:.1f}s / {f.slow:.1f}s, sync baseline first at {f.sync_first:.1f}s)"
        for f in workloads
    )
    result.goal = "≤ 0.3"
    result.met = all(f.ratio <= 0.3 for f in workloads)
    result.details.append(
        "Each workload: one candidate ~10× slower than the median of the rest, listed first so "
        "it starts at once (the worst case for the ratio). Seconds from launching the cold run "
        "(empty home); `max_concurrent` 2; async and sync runs alternate."
    )
    for figures in workloads:
        result.details += _async_details(figures)
    return result


# --- e. candidate scaling ---------------------------------------------------------------------


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
    result.details += _table(
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

    from ml_assets.assets.selection import leaderboard
    from ml_assets.config import load_settings
    from ml_assets.lineage import latest_record
    from ml_assets.ml.selection import select_top_k

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

    from ml_assets.resources import ArtifactStoreResource, SettingsResource
    from ml_assets.sensors import candidates_sensor, dataset_sensor, model_landed_sensor

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


# --- f. ingestion -----------------------------------------------------------------------------

_PHASE_CAUSES: Final = {
    "read_source": "pyarrow's Parquet decode peaks near twice the table, `to_pandas` copies "
    "the features into one block while the table is alive, each record's tags become a NumPy "
    "object array, and memory Arrow frees stays in its mimalloc pool",
    "clean": "label parsing builds a Python list of tag strings per record and `np.isinf` a "
    "full-size mask (the float32 `astype` itself is free under pandas copy-on-write)",
    "split": "`Dataset.take` copies every split (`iloc`), i.e. the features once more, while "
    "the source frame and the cleaned dataset stay alive",
    "hash": "per-column `to_numpy` of the splits",
    "write": "`to_frame` concatenates ids, features and tags into a new frame per split, then "
    "`Table.from_pandas` copies that into Arrow",
}


def bench_ingestion(ctx: Context) -> Result:
    import pyarrow.parquet as pq

    s = ctx.sizes
    result = new_result("f")
    source = ingestion_source(ctx)
    table = pq.read_table(source)
    data_bytes = table.nbytes
    del table
    reports: list[dict[str, Any]] = []
    walls: list[float] = []
    for r in range(ctx.repeats):
        out = fresh_dir(WORK / "ingestion" / "out")
        ctx.log(f"  ingestion-r{r}: python -m bench.ingest_probe ({s.ingest_rows:,} rows)")
        timed = run_child(
            ctx,
            f"ingestion-r{r}",
            ["-m", "bench.ingest_probe", str(source), "tags", "video_id", str(out)],
            ctx.env(),
            WORK / "ingestion" / "logs",
        )
        ctx.log(f"    {timed.seconds:.1f}s")
        reports.append(json.loads(require_success(timed).stdout.strip().splitlines()[-1]))
        walls.append(timed.seconds)
    fresh_dir(WORK / "ingestion" / "out")  # hundreds of MB: not worth keeping
    rows = reports[0]["rows"]
    seconds = median([sum(p["seconds"] for p in rep["phases"]) for rep in reports])
    peak = median([max(p["peak"] for p in rep["phases"]) for rep in reports])
    start = median([rep["baseline"]["rss"] for rep in reports])
    net = peak - start
    ratio = net / data_bytes
    result.figure = f"{rows / seconds:,.0f} rows/s; peak {ratio:.1f}× the data"
    result.goal = "peak ≤ 2× the data"
    result.met = ratio <= 2.0
    result.details += [
        f"Source: {rows:,} videos × ({s.ingest_rgb_dims} rgb + {s.ingest_audio_dims} audio) "
        f"float32 features, {s.entities} entities ({source.stat().st_size / MB:,.0f} MB "
        f"Parquet). The full 1,152 dimensions would be {rows * 1152 * 4 / 2**30:.1f} GiB of "
        "float32 in memory, so the feature width is reduced; rows are what this benchmark "
        "scales. In memory as Arrow (what the figure divides by): "
        f"{data_bytes / MB:,.0f} MB; the cleaned features + labels: "
        f"{reports[0]['dataset_bytes'] / MB:,.0f} MB.",
        "",
    ]
    result.details += _table(
        ["", "median", "runs"],
        [
            [
                "read + clean + split + hash + write (s)",
                f"{seconds:.1f}",
                _runs([sum(p["seconds"] for p in rep["phases"]) for rep in reports]),
            ],
            ["rows/s", f"{rows / seconds:,.0f}", ""],
            ["child process wall incl. imports (s)", f"{median(walls):.1f}", _runs(walls)],
            ["RSS after imports (MB)", f"{start / MB:,.0f}", ""],
            [
                "peak RSS, ru_maxrss (MB)",
                f"{peak / MB:,.0f}",
                _runs([max(p["peak"] for p in rep["phases"]) / MB for rep in reports]),
            ],
            ["peak above start-up / data in memory", f"{ratio:.2f}×", ""],
            ["peak RSS / data in memory (gross)", f"{peak / data_bytes:.2f}×", ""],
        ],
    )
    result.details += ["", "Per phase (medians):", ""]
    phase_rows = []
    previous_peak = start
    for i, phase in enumerate(reports[0]["phases"]):
        name = phase["phase"]
        phase_peak = median([rep["phases"][i]["peak"] for rep in reports])
        phase_rows.append(
            [
                name,
                f"{median([rep['phases'][i]['seconds'] for rep in reports]):.2f}",
                f"{median([rep['phases'][i]['rss'] for rep in reports]) / MB:,.0f}",
                f"{phase_peak / MB:,.0f}",
                f"{max(0.0, phase_peak - previous_peak) / MB:+,.0f}",
            ]
        )
        previous_peak = max(previous_peak, phase_peak)
    result.details += _table(
        ["phase", "seconds", "RSS after (MB)", "peak so far (MB)", "peak grew (MB)"], phase_rows
    )
    result.details += [
        "",
        "The probe (bench/ingest_probe.py) runs the library calls of `ingested_dataset` in a "
        "fresh process and keeps the source frame, the cleaned dataset and the splits alive "
        "to the end, as the asset does; the asset also fingerprints the source file (not "
        "measured here).",
    ]
    if not result.met:
        growth = []
        previous = start
        for i, phase in enumerate(reports[0]["phases"]):
            phase_peak = median([rep["phases"][i]["peak"] for rep in reports])
            if phase_peak - previous > 0.1 * data_bytes:
                growth.append(
                    f"{phase['phase']} +{(phase_peak - previous) / MB:,.0f} MB "
                    f"({_PHASE_CAUSES.get(phase['phase'], '')})"
                )
            previous = max(previous, phase_peak)
        result.notes.append(
            f"Peak is {ratio:.1f}× the data (goal 2×). The peak grows in: " + "; ".join(growth)
        )
    return result


# --- g. serving -------------------------------------------------------------------------------


def _load_served(
    run: SyncRun, names: Sequence[str], status: dict[str, Any]
) -> tuple[Dataset, list[tuple[str, TrainedModel]]]:
    """The serving requests and the named models of a finished run, hash-checked."""
    from ml_assets.artifacts import read_dataset_part, read_model
    from ml_assets.store import ArtifactStore

    store = ArtifactStore(run.home / "store")
    dataset = store.verify("datasets", status["dataset"]["key"])
    requests = read_dataset_part(dataset, "requests")
    board = {entry["name"]: entry for entry in status["leaderboard"]}
    models = [
        (name, read_model(store, board[name]["model_key"], board[name]["model_digest"]))
        for name in names
    ]
    return requests, models


def bench_serving(ctx: Context) -> Result:
    from ml_assets.config import load_settings
    from ml_assets.ml.aggregate import aggregate

    result = new_result("g")
    run = trained_home(ctx)
    status = cli_status(ctx, run.home, run.config)
    if not status.get("selection"):
        raise BenchError(f"{run.home}: nothing selected")
    names = list(status["selection"]["selected"])
    requests, models = _load_served(run, names, status)
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
    result.details += _table(["", "median (ms)", "rows/s"], table_rows)
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


# --- h. ensemble quality ----------------------------------------------------------------------


@dataclass(frozen=True)
class Quality:
    dataset: str
    models: list[tuple[str, float, int]]  # name, hit@1, entities covered
    ensemble: tuple[float, int]
    entities: int
    pipeline_score: float | None

    def met(self) -> bool:
        return all(self.ensemble[1] >= covered for _, _, covered in self.models)


def _quality(label: str, run: SyncRun, names: Sequence[str], status: dict[str, Any]) -> Quality:
    from ml_assets.config import load_settings
    from ml_assets.ml.aggregate import aggregate
    from ml_assets.ml.metrics import entity_coverage, hit_at_1, predicted_tags

    requests, models = _load_served(run, names, status)
    threshold = load_settings(run.config).serving.tag_threshold
    task = requests.task
    matrices: list[np.ndarray] = [model.predict_scores(requests.X) for _, model in models]
    _, mean, tags = aggregate(requests.ids, requests.entities, matrices, task, threshold)
    per_model = [
        (
            name,
            hit_at_1(requests.Y, matrix),
            entity_coverage(predicted_tags(matrix, task, threshold), requests.Y),
        )
        for (name, _), matrix in zip(models, matrices, strict=True)
    ]
    aggregated = status.get("aggregated") or {}
    same = list(aggregated.get("models", [])) == list(names)
    return Quality(
        label,
        per_model,
        (hit_at_1(requests.Y, mean), entity_coverage(tags, requests.Y)),
        len(requests.entities),
        float(aggregated["ensemble_score"]) if same and "ensemble_score" in aggregated else None,
    )


def _best_with(status: dict[str, Any], features: list[str]) -> str:
    names = {c["name"] for c in VIDEO_CANDIDATES if c.get("features") == features}
    landed = [e for e in status["leaderboard"] if e["name"] in names and e["status"] == "landed"]
    if not landed:
        raise BenchError(f"no landed candidate restricted to {features}")
    best: str = max(landed, key=lambda e: e["score"])["name"]
    return best


def bench_quality(ctx: Context) -> Result:
    result = new_result("h")
    digits_dir = WORK / "digits"
    config = digits_config(digits_dir)
    timed = cli_run(ctx, "digits", digits_dir / "home", config, sync_args(ctx, 2), cold=True)
    digits = SyncRun(digits_dir / "home", config, timed, sync_phases(digits_dir / "home", timed))
    digits_status = cli_status(ctx, digits.home, digits.config)
    videos = trained_home(ctx)
    video_status = cli_status(ctx, videos.home, videos.config)
    pair = [_best_with(video_status, AUDIO_ONLY), _best_with(video_status, VISUAL_ONLY)]
    sets = [
        _quality(
            "digits: selected top 2", digits, digits_status["selection"]["selected"], digits_status
        ),
        _quality(
            "videos: selected top 2", videos, video_status["selection"]["selected"], video_status
        ),
        _quality("videos: best audio-only + best visual-only", videos, pair, video_status),
    ]
    rows = []
    for q in sets:
        best = max(q.models, key=lambda m: m[1])
        rows.append(
            [
                q.dataset,
                "; ".join(f"{n} {h:.4f} ({c}/{q.entities})" for n, h, c in q.models),
                f"{q.ensemble[0]:.4f} ({q.ensemble[1]}/{q.entities})",
                f"{q.ensemble[0] - best[1]:+.4f}",
                "—" if q.pipeline_score is None else f"{q.pipeline_score:.4f}",
            ]
        )
    result.details += _table(
        [
            "models",
            "hit@1 each (entities covered)",
            "ensemble hit@1 (covered)",
            "ensemble − best single",
            "pipeline's ensemble_score",
        ],
        rows,
    )
    result.details += [
        "",
        "hit@1 on the held-out serving requests; entities covered: distinct entities tagged "
        "correctly at least once (top entity for digits, score ≥ tag_threshold for videos). "
        "The perspective pair is served here in-process from the same run's models; it is not "
        "the pipeline's selection. Deterministic (seeded): computed once.",
    ]
    pair_set = sets[2]
    result.figure = (
        "ensemble − best single hit@1: "
        + ", ".join(
            f"{label} {q.ensemble[0] - max(h for _, h, _ in q.models):+.3f}"
            for label, q in zip(("digits", "videos top 2", "audio+visual"), sets, strict=True)
        )
        + f"; audio+visual covers {pair_set.ensemble[1]} vs "
        f"{max(c for _, _, c in pair_set.models)} entities"
    )
    result.goal = "ensemble covers ≥ entities than each model"
    result.met = all(q.met() for q in sets)
    if not result.met:
        result.notes.append(
            "The ensemble covers fewer entities than one of its models in: "
            + ", ".join(q.dataset for q in sets if not q.met())
        )
    return result


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    run: Callable[[Context], Result]


BENCHMARKS: Final[dict[str, Benchmark]] = {
    "a": Benchmark(
        "baseline", "Baseline: cold `ml-assets run --mode sync` / plain script", bench_baseline
    ),
    "b": Benchmark(
        "fanout", "Fan-out speedup: training wall at max_concurrent 1 / 2", bench_fanout
    ),
    "c": Benchmark(
        "memoization", "Memoization: warm / cold `ml-assets run` wall", bench_memoization
    ),
    "d": Benchmark(
        "async", "Async: first aggregated predictions / slowest model landed", bench_async
    ),
    "e": Benchmark("scaling", "Candidate scaling: cheap candidates on digits", bench_scaling),
    "f": Benchmark("ingestion", "Ingestion: rows/s and peak memory", bench_ingestion),
    "g": Benchmark(
        "serving", "Serving: aggregated predictions / the models' own predict", bench_serving
    ),
    "h": Benchmark("quality", "Ensemble quality on the serving requests", bench_quality),
}
