"""i. Past one machine: training on Celery workers, the instance on Postgres.

Cold `ml-assets run --mode sync` on the YouTube-8M-shaped videos with the video candidates (one
thread each; the workload of a–d), on this machine's Postgres and RabbitMQ, each run with a
fresh database and queues of its own:

- **workers**: the training phase with 1, 2 and 4 training workers (`max_concurrent` = workers);
- **Postgres + Celery / SQLite + in-process** (the default), both at 2: the whole cold run;
- **request → fit**: per training run, from when a process gets it (its creation; a queued run's
  dequeue) to its `trained_model` step's start, on
  warm Celery workers, in the sync mode's reused run processes, and in a fresh process per run
  (the daemon's launcher; see dagster-io/dagster#19607);
- **200 candidates**: one cold run of 200 cheap candidates on digits on each setup (SQLite +
  in-process, Postgres + 2 Celery workers), at 2 at a time: runs per minute, then one
  `candidates_sensor` plan (the sensor tick's main cost) and the `model_selection` step;
- **10 machines**: a list-scheduling model (each candidate's measured fit plus the measured
  per-run overhead, on W workers), checked against the measured 1/2/4-worker walls, then asked
  about 200 candidates on 10 two-core machines.

Goal: 2 workers ≥ 1.7× one. The ratio to the default is measured, with no goal: on one machine
the distributed setup can only cost (a broker, a database over TCP, a step polled once a second).
"""

from __future__ import annotations

import heapq
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.harness import (
    WORK,
    BenchError,
    Context,
    Timed,
    fresh_dir,
    median,
    open_instance,
    require_success,
    run_child,
    run_spans,
    step_seconds,
    sync_phases,
)
from bench.result import Result, md_runs, md_table, new_result
from bench.workloads import VIDEO_CANDIDATES, scaling_candidates, video_config, write_config

POSTGRES: Final = os.environ.get(
    "ML_ASSETS_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1/postgres"
)
BROKER: Final = os.environ.get("ML_ASSETS_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
WORKERS: Final = (1, 2, 4)
DIRECTORY: Final = WORK / "workers"


def _config(name: str, candidates: list[dict[str, Any]]) -> Path:
    return write_config(
        DIRECTORY / f"{name}.yaml", {"source": "sklearn_digits", "label": "label"}, candidates, 0.5
    )


@dataclass(frozen=True)
class Measured:
    timed: Timed
    training: float  # first train_job run created → last ended
    fits: dict[str, float]  # candidate → its `training_seconds`
    overheads: list[float]  # each training run's duration minus its fit
    request_to_fit: list[float]  # each training run: created → trained_model step start


def _admin(statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(POSTGRES, connect_timeout=5)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@contextmanager
def _postgres() -> Iterator[str]:
    """A fresh database on the server, dropped afterwards; its URL."""
    from urllib.parse import urlsplit, urlunsplit

    name = f"ml_assets_bench_{uuid.uuid4().hex[:10]}"
    try:
        _admin(f"CREATE DATABASE {name}")
    except Exception as error:
        raise BenchError(f"Postgres at {POSTGRES} is not usable: {error}") from None
    try:
        yield urlunsplit(urlsplit(POSTGRES)._replace(path=f"/{name}"))
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def _distributed(ctx: Context, home: Path, config: Path, workers: int) -> Iterator[dict[str, str]]:
    """Postgres, a queue namespace of its own and `workers` training workers plus one serving
    worker, all running; the environment the `ml-assets run` then needs."""
    with _postgres() as url:
        env = {
            **ctx.env(home, config),
            "ML_ASSETS_POSTGRES_URL": url,
            "ML_ASSETS_CELERY_BROKER": BROKER,
            "ML_ASSETS_CELERY_NAMESPACE": f"bench_{uuid.uuid4().hex[:10]}",
        }
        logs = home.parent / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        started: list[subprocess.Popen[bytes]] = []
        try:
            queues = ["training"] * workers + ["serving"]
            for i, queue in enumerate(queues):
                log = logs / f"{home.name}-worker-{i}.log"
                with log.open("wb") as out:
                    started.append(
                        subprocess.Popen(
                            [ctx.python, "-m", "ml_assets.cli", "worker", "--queue", queue],
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                _wait_ready(log, started[-1])
            previous = os.environ.get("ML_ASSETS_POSTGRES_URL")
            from ml_assets.cli.postgres import dagster_url

            os.environ["ML_ASSETS_POSTGRES_URL"] = dagster_url(url)  # to read the instance here
            try:
                yield env
            finally:
                if previous is None:
                    os.environ.pop("ML_ASSETS_POSTGRES_URL", None)
                else:
                    os.environ["ML_ASSETS_POSTGRES_URL"] = previous
        finally:
            for process in started:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_ready(log: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if b" ready." in log.read_bytes():
            return
        if process.poll() is not None:
            raise BenchError(f"a worker exited ({process.returncode}); see {log}")
        time.sleep(0.2)
    raise BenchError(f"no worker ready after 120 s; see {log}")


def _cold(
    ctx: Context, label: str, home: Path, config: Path, args: list[str], env: dict[str, str]
) -> Measured:
    ctx.log(f"  {label}: ml-assets run {' '.join(args)} (cold)")
    timed = require_success(
        run_child(ctx, label, ["-m", "ml_assets.cli", "run", *args], env, home.parent / "logs")
    )
    ctx.log(f"    {timed.seconds:.1f}s")
    phases = sync_phases(home, timed)
    return Measured(timed, phases.training, *_per_run(home, timed))


def _local(ctx: Context, label: str, config: Path, args: list[str]) -> Measured:
    """A cold run on the default setup: SQLite, steps in their run's process."""
    home = fresh_dir(DIRECTORY / "homes" / label)
    return _cold(ctx, label, home, config, args, ctx.env(home, config))


def _per_run(home: Path, timed: Timed) -> tuple[dict[str, float], list[float], list[float]]:
    from dagster import DagsterEventType

    fits: dict[str, float] = {}
    overheads: list[float] = []
    latencies: list[float] = []
    with open_instance(home) as instance:
        for span in run_spans(instance, timed.started_at):
            if span.job != "train_job" or span.ended is None:
                continue
            starts = instance.all_logs(span.run_id, of_type=DagsterEventType.STEP_START)
            # From when the run was handed to a process: a queued run's dequeue (its STARTING
            # event, under the daemon), else its creation (`execute_job` starts it at once).
            handed = instance.all_logs(span.run_id, of_type=DagsterEventType.PIPELINE_STARTING)
            since = handed[0].timestamp if handed else span.created
            metadata = _fit_seconds(instance, span.run_id)
            if starts:
                latencies.append(starts[0].timestamp - since)
            if metadata is not None and span.partition is not None:
                fits[span.partition] = metadata
                overheads.append(max(0.0, span.seconds - metadata))
    return fits, overheads, latencies


def _fit_seconds(instance: Any, run_id: str) -> float | None:
    from dagster import DagsterEventType

    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        event = entry.dagster_event
        if event is None:
            continue
        value = event.step_materialization_data.materialization.metadata.get("training_seconds")
        if value is not None:
            return float(value.value)
    return None


def _selection_seconds(home: Path, timed: Timed) -> float:
    """The `model_selection` step's seconds in the run's (last) serving run."""
    with open_instance(home) as instance:
        serving = [s for s in run_spans(instance, timed.started_at) if s.job == "serve_job"]
        if not serving:
            raise BenchError(f"{home}: no serving run")
        return step_seconds(instance, serving[-1].run_id).get("model_selection", float("nan"))


def simulate(durations: Sequence[float], workers: int) -> float:
    """The makespan of running `durations` in order, each on the first free of `workers`
    (what the run queue and the training pool do)."""
    free = [0.0] * workers
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def _plan_seconds(home: Path, config: Path) -> float:
    """One `plan_training` (what candidates_sensor does each tick) on a finished home."""
    from ml_assets.core.config import load_settings
    from ml_assets.state.planning import plan_training
    from ml_assets.storage.store import ArtifactStore

    settings = load_settings(config)
    store = ArtifactStore(home / "store")
    with open_instance(home) as instance:
        plan_training(instance, settings, store)  # warms the store's verified-file memo
        times = []
        for _ in range(5):
            started = time.perf_counter()
            plan_training(instance, settings, store)
            times.append(time.perf_counter() - started)
    return median(times)


def bench_workers(ctx: Context) -> Result:
    result = new_result("i")
    config = video_config(ctx, DIRECTORY)
    runs: dict[str, list[Measured]] = {}
    sync2 = ["--mode", "sync", "--max-concurrent", "2"]
    for r in range(ctx.repeats):
        runs.setdefault("local", []).append(_local(ctx, f"local-c2-r{r}", config, sync2))
        for w in WORKERS:
            home = fresh_dir(DIRECTORY / "homes" / f"celery-w{w}-r{r}")
            with _distributed(ctx, home, config, w) as env:
                args = ["--mode", "sync", "--max-concurrent", str(w)]
                runs.setdefault(f"w{w}", []).append(
                    _cold(ctx, f"celery-w{w}-r{r}", home, config, args, env)
                )
        async2 = ["--max-concurrent", "2"]
        runs.setdefault("async", []).append(_local(ctx, f"async-c2-r{r}", config, async2))
    training = {w: median([m.training for m in runs[f"w{w}"]]) for w in WORKERS}
    speedup = training[1] / training[2]
    local_wall = median([m.timed.seconds for m in runs["local"]])
    celery_wall = median([m.timed.seconds for m in runs["w2"]])
    ratio = celery_wall / local_wall
    result.figure = (
        f"2 workers {speedup:.2f}× one, 4 workers {training[1] / training[4]:.2f}×; "
        f"Postgres+Celery / SQLite+in-process {ratio:.2f}"
    )
    result.goal = "2 workers ≥ 1.7× one (the ratio to the default: measured, no goal)"
    result.met = speedup >= 1.7
    result.details += md_table(
        ["", "training phase (s), median", "runs", "× one worker"],
        [
            [
                f"{w} training worker(s)",
                f"{training[w]:.1f}",
                md_runs([m.training for m in runs[f"w{w}"]]),
                f"{training[1] / training[w]:.2f}",
            ]
            for w in WORKERS
        ],
    )
    result.details += [
        "",
        *md_table(
            [
                "at max_concurrent 2",
                "whole cold run (s), median",
                "runs",
                "training phase (s)",
                "per training run: overhead beyond the fit (s)",
            ],
            [
                [
                    "SQLite + in-process (default)",
                    f"{local_wall:.1f}",
                    md_runs([m.timed.seconds for m in runs["local"]]),
                    f"{median([m.training for m in runs['local']]):.1f}",
                    f"{median([v for m in runs['local'] for v in m.overheads]):.2f}",
                ],
                [
                    "Postgres + Celery (2 workers)",
                    f"{celery_wall:.1f}",
                    md_runs([m.timed.seconds for m in runs["w2"]]),
                    f"{training[2]:.1f}",
                    f"{median([v for m in runs['w2'] for v in m.overheads]):.2f}",
                ],
            ],
        ),
    ]

    def latency(key: str) -> str:
        values = [v for m in runs[key] for v in m.request_to_fit]
        return f"{median(values):.2f} (max {max(values):.2f}, {len(values)} runs)"

    result.details += [
        "",
        *md_table(
            ["request → fit: run handed to a process → `trained_model` step start (s)", "median"],
            [
                ["Celery: warm workers (2), sync mode", latency("w2")],
                ["in-process: sync mode's reused run processes", latency("local")],
                ["in-process: the daemon's fresh process per run (async mode)", latency("async")],
            ],
        ),
    ]
    warm = median([v for m in runs["w2"] for v in m.request_to_fit])
    fresh = median([v for m in runs["async"] for v in m.request_to_fit])
    reused = median([v for m in runs["local"] for v in m.request_to_fit])
    result.details += [
        "",
        f"A process that is already up starts the fit {fresh / max(warm, reused):.0f}× sooner "
        f"than a fresh one ({fresh:.1f}s: interpreter, imports, loading the definitions, "
        "resources); the local default already keeps its run processes warm in `--mode sync` "
        f"({reused:.2f}s), while the daemon's launcher starts one per run. Celery workers on one "
        f"machine ({warm:.2f}s, plus a broker) are the way to warm processes under the daemon.",
    ]
    # The model: each candidate's fit plus the per-run overhead, measured with 1 worker.
    names = [c["name"] for c in VIDEO_CANDIDATES]
    fits = [median([m.fits[n] for m in runs["w1"] if n in m.fits]) for n in names]
    overhead = median([v for m in runs["w1"] for v in m.overheads])
    durations = [f + overhead for f in fits]
    rows = []
    for w in WORKERS:
        predicted = simulate(durations, w)
        rows.append(
            [str(w), f"{predicted:.1f}", f"{training[w]:.1f}", f"{predicted / training[w]:.2f}"]
        )
    result.details += [
        "",
        "Schedule model (fits measured with 1 worker, plus the median per-run overhead of "
        f"{overhead:.2f}s):",
        "",
        *md_table(
            ["workers", "predicted training phase (s)", "measured (s)", "predicted / measured"],
            rows,
        ),
    ]
    # 200 cheap candidates, once on each setup: runs per minute, the sensor plan, selection.
    config200 = _config("cheap200", scaling_candidates(200))
    scale: dict[str, tuple[Measured, float, float]] = {}
    local200 = _local(ctx, "local-200", config200, sync2)
    home = DIRECTORY / "homes" / "local-200"
    scale["SQLite + in-process"] = (
        local200,
        _plan_seconds(home, config200),
        _selection_seconds(home, local200.timed),
    )
    home = fresh_dir(DIRECTORY / "homes" / "celery-200")
    with _distributed(ctx, home, config200, 2) as env:
        big = _cold(ctx, "celery-200", home, config200, sync2, env)
        scale["Postgres + Celery (2 workers)"] = (
            big,
            _plan_seconds(home, config200),
            _selection_seconds(home, big.timed),
        )
    rows = [
        [
            name,
            f"{m.training:.0f}",
            f"{200 / m.training * 60:.0f}",
            f"{median(list(m.fits.values())):.3f}",
            f"{median(m.overheads):.2f}",
            f"{plan * 1000:.0f}",
            f"{selection:.2f}",
        ]
        for name, (m, plan, selection) in scale.items()
    ]
    result.details += [
        "",
        "200 cheap candidates (naive Bayes and trees on digits), 2 at a time, cold:",
        "",
        *md_table(
            [
                "",
                "training phase (s)",
                "training runs per minute",
                "fit per run (s), median",
                "overhead per run (s), median",
                "`candidates_sensor` plan (ms)",
                "`model_selection` step (s)",
            ],
            rows,
        ),
    ]
    cheap = [f + median(big.overheads) for f in big.fits.values()]
    ten = {"the 6 video candidates, ×34 (204)": durations * 34, "the 200 cheap candidates": cheap}
    predictions = "; ".join(
        f"{name}: {simulate(d, 20):.0f}s (one worker: {simulate(d, 1):.0f}s)"
        for name, d in ten.items()
    )
    result.details += [
        "",
        "Predicted training phase on 10 two-core machines (20 training workers), from the "
        f"model above: {predictions}. The model assumes what it cannot see here: every worker "
        "on its own cores, the orchestrating run processes (on the launching machine, one per "
        "training run in flight) and the instance keeping up, and the store's bandwidth not "
        "binding.",
    ]
    if not result.met:
        result.notes.append(
            "This machine has 2 cores: 4 training workers contend with each other, the run "
            "processes that orchestrate them and Postgres; a second worker can only win what a "
            "second core gives. Per-run overhead (a run process, its instance writes, the step "
            "sent and its result polled once a second by dagster-celery) is paid per candidate."
        )
    return result
