"""d. Async: how soon `--mode async` serves predictions while a slow candidate still trains.

On each slow-candidate workload (one candidate ~10× slower than the median of the rest),
cold `--mode async` and `--mode sync --max-concurrent 2` runs alternate; the figure is the
seconds from launch to the first `aggregated_predictions` materialization over the seconds
until the slow candidate's model landed (median of the per-run ratios), with the sync
baseline beside it and where the async first predictions' seconds go, hop by hop. Goal:
≤ 0.3 for each workload; "not available yet" when the CLI has no `--mode async`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    WORK,
    BenchError,
    Context,
    RunSpan,
    cli_run,
    has_mode,
    materializations,
    median,
    open_instance,
    run_spans,
)
from bench.result import Result, md_runs, md_table, new_result
from bench.workloads import ASYNC_WORKLOADS, SLOW_CANDIDATE, AsyncWorkload, async_config


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
        return [f"{median(values):.1f}", md_runs(values)]

    first, sync_first, sync_slow = figures.first, figures.sync_first, figures.sync_slow
    ranks = "ranks" if SLOW_CANDIDATE in asyncs[0].final_models else "does not rank"
    hops = [run.hops for run in asyncs if run.hops]
    lines = [
        "",
        f"**Workload `{figures.workload.name}` ({figures.workload.summary}): {figures.ratio:.2f}**",
        "",
        *md_table(
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
            *md_table(
                ["hop", "median (s)", "runs (s)"],
                [
                    [
                        name,
                        f"{median([h[name] for h in hops]):.1f}",
                        md_runs([h[name] for h in hops]),
                    ]
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
