"""Plumbing shared by the benchmarks: the work dir, isolated child processes, instance reads.

Every child process (`ml-assets run`, the baseline, the ingestion probe) gets its own
`ML_ASSETS_HOME` and `ML_ASSETS_CONFIG` under `bench/.work/`, never `DAGSTER_HOME` from the
caller, and is timed from launch to exit by the same clock, so walls compare like for like.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from dagster import DagsterInstance

REPO: Final = Path(__file__).resolve().parents[1]
WORK: Final = REPO / "bench" / ".work"
RESULTS: Final = REPO / "bench" / "results.md"
CHILD_TIMEOUT: Final = 1800.0
_BLAS_VARIABLES: Final = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class BenchError(RuntimeError):
    """A benchmark cannot produce its figure; the message says which step failed and why."""


def median(values: Sequence[float]) -> float:
    if not values:
        raise BenchError("median of no measurement")
    return float(statistics.median(values))


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the smoke run (`--quick`) and the medium run."""

    name: str
    videos: int
    rgb_dims: int
    audio_dims: int
    entities: int
    min_score: float
    ingest_rows: int
    ingest_rgb_dims: int
    ingest_audio_dims: int
    ingest_tfrecord_rows: int  # YouTube-8M-shaped shards at the full 1,024 + 128 dims
    scaling: tuple[int, ...]


MEDIUM: Final = Sizes(
    name="medium",
    videos=20_000,
    rgb_dims=1024,
    audio_dims=128,
    entities=20,
    min_score=0.70,
    ingest_rows=1_000_000,
    ingest_rgb_dims=64,
    ingest_audio_dims=16,
    ingest_tfrecord_rows=100_000,
    scaling=(5, 20, 50),
)
QUICK: Final = Sizes(
    name="quick",
    videos=2_000,
    rgb_dims=128,
    audio_dims=16,
    entities=20,
    min_score=0.70,
    ingest_rows=50_000,
    ingest_rgb_dims=64,
    ingest_audio_dims=16,
    ingest_tfrecord_rows=5_000,
    scaling=(5, 10),
)


@dataclass(frozen=True)
class Timed:
    """One child process: wall seconds from launch to exit, and what it printed."""

    label: str
    seconds: float
    started_at: float  # epoch seconds at launch, comparable with Dagster event timestamps
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Context:
    """What every benchmark needs: sizes, repeats, the interpreter and a log."""

    sizes: Sizes
    repeats: int
    python: str = sys.executable
    blas_threads: int | None = None
    log: Callable[[str], None] = print
    shared: dict[str, Any] = field(default_factory=dict)  # runs reused across benchmarks

    def env(self, home: Path | None = None, config: Path | None = None) -> dict[str, str]:
        """The caller's environment, isolated to `home`/`config`, with the repo importable."""
        env = dict(os.environ)
        env.pop("DAGSTER_HOME", None)  # derived from ML_ASSETS_HOME by `ml-assets`
        env.pop("ML_ASSETS_HOME", None)
        env.pop("ML_ASSETS_CONFIG", None)
        if home is not None:
            env["ML_ASSETS_HOME"] = str(home)
        if config is not None:
            env["ML_ASSETS_CONFIG"] = str(config)
        paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONWARNINGS"] = "ignore"
        if self.blas_threads is not None:
            for name in _BLAS_VARIABLES:
                env[name] = str(self.blas_threads)
        return env


def fresh_dir(path: Path) -> Path:
    """An empty directory under the work dir (what a cold run starts from)."""
    if WORK not in path.resolve().parents:
        raise BenchError(f"refusing to clear {path}: not under {WORK}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def run_child(
    ctx: Context, label: str, args: Sequence[str], env: dict[str, str], log_dir: Path
) -> Timed:
    """Run `python args…` from the repo root, timed; output kept in `log_dir/<label>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started_at = time.time()
    started = time.perf_counter()
    process = subprocess.Popen(
        [ctx.python, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a timeout can stop its whole process group, nothing else
    )
    try:
        stdout, stderr = process.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise BenchError(f"{label}: no exit after {CHILD_TIMEOUT:.0f}s; killed") from None
    seconds = time.perf_counter() - started
    (log_dir / f"{label}.log").write_text(
        f"$ {' '.join(args)}\n# {seconds:.2f}s, exit {process.returncode}\n"
        f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
    )
    return Timed(label, seconds, started_at, process.returncode, stdout, stderr)


def require_success(timed: Timed) -> Timed:
    if timed.returncode != 0:
        tail = "\n".join((timed.stderr or timed.stdout).strip().splitlines()[-6:])
        raise BenchError(f"{timed.label} exited {timed.returncode}: {tail}")
    return timed


def cli_help(ctx: Context) -> str:
    """`ml-assets run --help`, to see which options this version of the CLI has."""
    cached = ctx.shared.get("cli_help")
    if isinstance(cached, str):
        return cached
    result = subprocess.run(
        [ctx.python, "-m", "ml_assets.cli", "run", "--help"],
        cwd=REPO,
        env=ctx.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise BenchError(f"ml-assets run --help exited {result.returncode}: {result.stderr[-500:]}")
    ctx.shared["cli_help"] = result.stdout
    return result.stdout


def has_mode(ctx: Context, mode: str) -> bool:
    """True when `ml-assets run --mode <mode>` exists."""
    text = cli_help(ctx)
    marker = "--mode {"
    start = text.find(marker)
    if start < 0:
        return False
    start += len(marker)
    return mode in text[start : text.find("}", start)].split(",")


def cli_run(
    ctx: Context,
    label: str,
    home: Path,
    config: Path,
    args: Sequence[str],
    *,
    cold: bool,
) -> Timed:
    """`ml-assets run args…` on `home` (emptied first when `cold`)."""
    if cold:
        fresh_dir(home)
    ctx.log(f"  {label}: ml-assets run {' '.join(args)}{' (cold)' if cold else ''}")
    timed = run_child(
        ctx,
        label,
        ["-m", "ml_assets.cli", "run", *args],
        ctx.env(home, config),
        home.parent / "logs",
    )
    ctx.log(f"    {timed.seconds:.1f}s")
    return require_success(timed)


def cli_status(ctx: Context, home: Path, config: Path) -> dict[str, Any]:
    """`ml-assets status --json` of a home."""
    timed = run_child(
        ctx,
        f"status-{home.name}",
        ["-m", "ml_assets.cli", "status", "--json"],
        ctx.env(home, config),
        home.parent / "logs",
    )
    body: dict[str, Any] = json.loads(require_success(timed).stdout)
    return body


# --- reading what a run recorded on its Dagster instance --------------------------------------


@contextmanager
def open_instance(home: Path) -> Iterator[DagsterInstance]:
    """The Dagster instance of a home (`$ML_ASSETS_HOME/dagster`), read in this process."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        yield instance


@dataclass(frozen=True)
class RunSpan:
    job: str
    partition: str | None
    run_id: str
    created: float
    started: float | None
    ended: float | None

    @property
    def seconds(self) -> float:
        return (self.ended or self.created) - (self.started or self.created)


def run_spans(instance: DagsterInstance, since: float) -> list[RunSpan]:
    """Every run created at or after `since` (epoch seconds), oldest first."""
    spans = []
    for record in instance.get_run_records(limit=10_000):
        created = record.create_timestamp.timestamp()
        if created < since - 1.0:  # timestamps are the child's; allow clock rounding
            continue
        run = record.dagster_run
        spans.append(
            RunSpan(
                run.job_name,
                run.tags.get("dagster/partition"),
                run.run_id,
                created,
                record.start_time,
                record.end_time,
            )
        )
    return sorted(spans, key=lambda s: s.created)


def materializations(
    instance: DagsterInstance, asset: str, since: float
) -> list[tuple[float, str | None, dict[str, Any]]]:
    """(timestamp, partition, metadata) of every materialization of `asset` since `since`."""
    from dagster import AssetKey, AssetRecordsFilter

    result = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), after_timestamp=since - 1.0), limit=10_000
    )
    rows = []
    for record in result.records:
        materialization = record.asset_materialization
        if materialization is None:
            continue
        metadata = {name: value.value for name, value in materialization.metadata.items()}
        rows.append((record.event_log_entry.timestamp, materialization.partition, metadata))
    return sorted(rows, key=lambda row: row[0])


def step_seconds(instance: DagsterInstance, run_id: str) -> dict[str, float]:
    """Seconds from STEP_START to STEP_SUCCESS of each step of a run."""
    from dagster import DagsterEventType

    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for entry in instance.all_logs(
        run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
    ):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        target = starts if event.event_type == DagsterEventType.STEP_START else ends
        target[event.step_key] = entry.timestamp
    return {key: ends[key] - starts[key] for key in ends if key in starts}


@dataclass(frozen=True)
class Phases:
    """Where the wall time of one `ml-assets run --mode sync` went, from its instance."""

    wall: float
    before_ingest: float  # interpreter start, imports, partition sync, planning
    ingest: float
    pool_start: float  # ingestion end → first training run created (worker processes start)
    training: float  # first training run created → last one ended (the fan-out)
    train_runs: int
    train_run_seconds: float  # sum of the training runs' own durations
    longest_train_run: float
    training_seconds: float  # sum of `training_seconds` metadata (model fitting only)
    retrained: int  # trained_model materializations with memoized: false
    reused: int  # … with memoized: true
    after_training: float  # last training run ended → serving run created
    serve: float
    after_serve: float  # serving run ended → process exit (status printing)


def sync_phases(home: Path, timed: Timed) -> Phases:
    """Split a sync run's wall time into phases from the runs it recorded."""
    with open_instance(home) as instance:
        spans = run_spans(instance, timed.started_at)
        models = materializations(instance, "trained_model", timed.started_at)
    end = timed.started_at + timed.seconds
    ingest = [s for s in spans if s.job == "ingest_job"]
    train = [s for s in spans if s.job == "train_job"]
    serve = [s for s in spans if s.job == "serve_job"]
    first = min([s.created for s in spans], default=end)
    ingest_end = max([s.ended or s.created for s in ingest], default=first)
    train_start = min([s.created for s in train], default=ingest_end)
    train_end = max([s.ended or s.created for s in train], default=train_start)
    serve_start = min([s.created for s in serve], default=train_end)
    serve_end = max([s.ended or s.created for s in serve], default=serve_start)
    return Phases(
        wall=timed.seconds,
        before_ingest=first - timed.started_at,
        ingest=sum(s.seconds for s in ingest),
        pool_start=train_start - ingest_end if train else 0.0,
        training=train_end - train_start,
        train_runs=len(train),
        train_run_seconds=sum(s.seconds for s in train),
        longest_train_run=max([s.seconds for s in train], default=0.0),
        training_seconds=sum(
            float(m.get("training_seconds", 0.0)) for _, _, m in models if not m.get("memoized")
        ),
        retrained=sum(1 for _, _, m in models if m.get("memoized") is False),
        reused=sum(1 for _, _, m in models if m.get("memoized") is True),
        after_training=serve_start - train_end if serve else 0.0,
        serve=serve_end - serve_start if serve else 0.0,
        after_serve=end - serve_end if serve else 0.0,
    )


# --- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """Cores, RAM, CPU, Python and library versions, and the commit measured."""
    import platform
    from importlib import metadata

    info = {
        "cores": str(os.cpu_count()),
        "ram": _ram(),
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for package in ("dagster", "pandas", "pyarrow", "numpy", "scikit-learn", "lightgbm"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["blas threads"] = _blas_threads()
    info["commit"] = _commit()
    return info


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _blas_threads() -> str:
    try:
        import numpy  # noqa: F401  (loads the BLAS whose threads we report)
        from threadpoolctl import threadpool_info

        pools = [f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info()]
        return ", ".join(pools) or "none loaded"
    except ImportError:
        return "unknown"


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ml_assets"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted changes in ml_assets/' if dirty else ''}" or "unknown"
