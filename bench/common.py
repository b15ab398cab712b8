"""Helpers several benchmarks share: the cold runs of the video workload and their models.

Cold runs of the video workload are shared: a, b, c, g and h read the same
`(max_concurrent, repeat)` runs when they run in one invocation, so their figures come from
runs taken side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.harness import WORK, Context, Phases, Timed, cli_run, has_mode, sync_phases
from bench.workloads import video_config

if TYPE_CHECKING:
    from ml_assets.ml.datasets import Dataset
    from ml_assets.ml.models import TrainedModel

VIDEOS: Final = WORK / "videos"


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


def load_served(
    run: SyncRun, names: Sequence[str], status: dict[str, Any]
) -> tuple[Dataset, list[tuple[str, TrainedModel]]]:
    """The serving requests and the named models of a finished run, hash-checked."""
    from ml_assets.storage.artifacts import read_dataset_part, read_model
    from ml_assets.storage.store import ArtifactStore

    store = ArtifactStore(run.home / "store")
    dataset = store.verify("datasets", status["dataset"]["key"])
    requests = read_dataset_part(dataset, "requests")
    board = {entry["name"]: entry for entry in status["leaderboard"]}
    models = [
        (name, read_model(store, board[name]["model_key"], board[name]["model_digest"]))
        for name in names
    ]
    return requests, models
