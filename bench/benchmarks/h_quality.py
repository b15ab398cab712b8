"""h. Ensemble quality: whether the ensemble covers what its models cover.

Measures hit@1 and the entities covered of each selected model and of their ensemble on the
serving requests, for digits, the videos' selection, and the videos' best audio-only + best
visual-only pair. Deterministic: computed once. Goal: the ensemble covers at least as many
entities as each of its models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.common import SyncRun, load_served, sync_args, trained_home
from bench.harness import WORK, BenchError, Context, cli_run, cli_status, sync_phases
from bench.result import Result, md_table, new_result
from bench.workloads import AUDIO_ONLY, VIDEO_CANDIDATES, VISUAL_ONLY, digits_config

if TYPE_CHECKING:
    import numpy as np


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
    from ml_assets.core.config import load_settings
    from ml_assets.ml.aggregate import aggregate
    from ml_assets.ml.metrics import entity_coverage, hit_at_1, predicted_tags

    requests, models = load_served(run, names, status)
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
    result.details += md_table(
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
