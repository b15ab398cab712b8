"""h. Ensemble quality: whether the ensemble covers what its models cover, and which strategy
serves the better ensemble.

Measures hit@1, GAP@20, PERR and MAP and the entities covered of each served model and of their
ensemble on the serving requests, for digits, the videos' selection, and the videos' best
audio-only + best visual-only pair (with the entities only one of the pair covers). Then
compares the two selection strategies on three datasets (digits, a binary table, the videos):
from the landed candidates' validation scores (their model artifacts) and the validation truth
(the dataset artifact), `select_ensemble` (greedy forward selection, k = 2) against the top 2,
each scored on validation and on the held-out serving requests. Deterministic: computed once.
Goal: the ensemble covers at least as many entities as each of its models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.common import SyncRun, load_served, sync_args, trained_home
from bench.harness import WORK, BenchError, Context, cli_run, cli_status, sync_phases
from bench.result import Result, md_table, new_result
from bench.workloads import (
    AUDIO_ONLY,
    BINARY_CANDIDATES,
    BINARY_MIN_SCORE,
    DIGITS_MIN_SCORE,
    VIDEO_CANDIDATES,
    VIDEO_GAP_MIN_SCORE,
    VISUAL_ONLY,
    binary_config,
    digits_config,
)

if TYPE_CHECKING:
    import numpy as np

    from ml_assets.ml.datasets import Dataset

K: Final = 2  # members of either strategy's ensemble
MULTICLASS_ORDER: Final = ("hit@1", "gap@20", "perr", "map")
VIDEO_ORDER: Final = ("gap@20", "hit@1", "perr", "map")


@dataclass(frozen=True)
class Scored:
    """One model, or an ensemble, on the serving requests."""

    name: str
    metrics: dict[str, float]  # every metric of `ml.metrics.METRICS`
    covered: list[str]  # entities tagged correctly at least once, in entity order


@dataclass(frozen=True)
class Quality:
    dataset: str
    order: tuple[str, ...]  # metrics, the headline first
    models: list[Scored]
    ensemble: Scored
    entities: list[str]
    pipeline: tuple[str, float] | None  # the pipeline's (metric, ensemble_score), same models

    @property
    def headline(self) -> str:
        return self.order[0]

    def best(self) -> Scored:
        return max(self.models, key=lambda m: m.metrics[self.headline])

    def gain(self) -> float:
        return self.ensemble.metrics[self.headline] - self.best().metrics[self.headline]

    def met(self) -> bool:
        return all(len(self.ensemble.covered) >= len(m.covered) for m in self.models)


def _served(
    requests: Dataset,
    named: Sequence[tuple[str, np.ndarray]],
    threshold: float,
    weights: Sequence[float] | None = None,
) -> Scored:
    """The ensemble of `named` score matrices as `aggregate` serves it, scored."""
    from ml_assets.ml.aggregate import aggregate
    from ml_assets.ml.metrics import all_metrics, entities_covered

    _, mean, tags = aggregate(
        requests.ids,
        requests.entities,
        [m for _, m in named],
        requests.task,
        threshold,
        weights,
    )
    return Scored(
        " + ".join(n for n, _ in named),
        all_metrics(requests.Y, mean),
        entities_covered(tags, requests.Y, requests.entities),
    )


def _single(requests: Dataset, name: str, matrix: np.ndarray, threshold: float) -> Scored:
    from ml_assets.ml.metrics import all_metrics, entities_covered, predicted_tags

    tags = predicted_tags(matrix, requests.task, threshold)
    return Scored(
        name,
        all_metrics(requests.Y, matrix),
        entities_covered(tags, requests.Y, requests.entities),
    )


def _threshold(run: SyncRun) -> float:
    from ml_assets.core.config import load_settings

    return load_settings(run.config).serving.tag_threshold


def _quality(
    label: str,
    run: SyncRun,
    names: Sequence[str],
    status: dict[str, Any],
    order: tuple[str, ...],
) -> Quality:
    requests, models = load_served(run, names, status)
    threshold = _threshold(run)
    matrices = [(name, model.predict_scores(requests.X)) for name, model in models]
    aggregated = status.get("aggregated") or {}
    same = list(aggregated.get("models", [])) == list(names)
    pipeline = None
    if same and "ensemble_score" in aggregated:
        pipeline = (str(aggregated.get("metric", "hit@1")), float(aggregated["ensemble_score"]))
    return Quality(
        label,
        order,
        [_single(requests, name, matrix, threshold) for name, matrix in matrices],
        _served(requests, matrices, threshold),
        list(requests.entities),
        pipeline,
    )


def _best_with(status: dict[str, Any], features: list[str]) -> str:
    names = {c["name"] for c in VIDEO_CANDIDATES if c.get("features") == features}
    landed = [e for e in status["leaderboard"] if e["name"] in names and e["status"] == "landed"]
    if not landed:
        raise BenchError(f"no landed candidate restricted to {features}")
    best: str = max(landed, key=lambda e: e["score"])["name"]
    return best


def _quality_table(q: Quality) -> list[str]:
    n = len(q.entities)

    def row(scored: Scored, label: str) -> list[object]:
        return [
            label,
            *(f"{scored.metrics[m]:.4f}" for m in q.order),
            f"{len(scored.covered)}/{n}",
        ]

    rows = [row(m, m.name) for m in q.models]
    rows.append(row(q.ensemble, "**ensemble** (mean of the scores)"))
    best = q.best()
    rows.append(
        [
            f"ensemble − best single ({best.name})",
            *(f"{q.ensemble.metrics[m] - best.metrics[m]:+.4f}" for m in q.order),
            f"{len(q.ensemble.covered) - len(best.covered):+d}",
        ]
    )
    lines = [f"**{q.dataset}**", ""]
    lines += md_table(["model", *q.order, "entities covered"], rows)
    if q.pipeline is not None:
        metric, score = q.pipeline
        lines += [
            "",
            f"The pipeline's own `ensemble_score` ({metric}) for these models: {score:.4f} "
            f"(here: {q.ensemble.metrics.get(metric, float('nan')):.4f}).",
        ]
    return lines


def _with_perspective(names: Sequence[str], entities: Sequence[str]) -> str:
    """The names, each with the perspective the generator put its signal in (videos)."""
    from ml_assets.ml.synthetic import entity_names, entity_perspectives

    if not names:
        return "none"
    where: dict[str, str] = {}
    if list(entities) == entity_names(len(entities)):
        where = dict(entity_perspectives(len(entities)))
    return ", ".join(f"{n} ({where[n]})" if n in where else n for n in names)


def _coverage_lists(q: Quality) -> list[str]:
    """For the audio-only + visual-only pair: what only one of them covers, and the ensemble."""
    audio, visual = q.models
    a, v, e = set(audio.covered), set(visual.covered), set(q.ensemble.covered)
    in_order = q.entities
    only_audio = [x for x in in_order if x in a and x not in v]
    only_visual = [x for x in in_order if x in v and x not in a]
    missed = [x for x in in_order if x not in e]
    return [
        f"Entities covered on the requests by the pair ({len(q.entities)} in all; in "
        "parentheses where the generator put the entity's signal):",
        "",
        f"- only {audio.name} ({len(only_audio)}): {_with_perspective(only_audio, in_order)}",
        f"- only {visual.name} ({len(only_visual)}): {_with_perspective(only_visual, in_order)}",
        f"- both: {len(a & v)}",
        f"- the ensemble: {len(e)}/{len(q.entities)}"
        + (f"; misses {_with_perspective(missed, in_order)}" if missed else " (every entity)"),
    ]


# --- strategy: ensemble vs top_k --------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One strategy's members on validation and on the serving requests."""

    strategy: str
    members: list[str]
    weights: list[float]
    validation: float
    requests: Scored


@dataclass(frozen=True)
class Strategies:
    dataset: str
    metric: str
    min_score: float
    eligible: list[tuple[str, float]]  # name, validation score; ranked
    below: list[tuple[str, float]]  # landed but under the bar
    top_k: Served
    ensemble: Served  # what `strategy: ensemble` serves (top-k when greedy did not beat it)
    greedy: Served | None  # greedy's own pick when the ensemble strategy fell back to top-k
    best_single: Served
    strategy_used: str
    reason: str
    picks: list[str]  # the greedy steps' reasons

    def gain(self) -> float:
        """Ensemble strategy − top-k on the requests, in the metric."""
        ensemble, top_k = self.ensemble.requests.metrics, self.top_k.requests.metrics
        return ensemble[self.metric] - top_k[self.metric]


def _strategies(
    label: str, run: SyncRun, status: dict[str, Any], metric: str, min_score: float
) -> Strategies:

    from ml_assets.ml.ensemble import combine, select_ensemble
    from ml_assets.ml.metrics import METRICS
    from ml_assets.storage.artifacts import read_dataset_part, read_model, read_validation_scores
    from ml_assets.storage.store import ArtifactStore

    score = METRICS[metric]
    store = ArtifactStore(run.home / "store")
    dataset = store.verify("datasets", status["dataset"]["key"])
    truth = read_dataset_part(dataset, "validation", columns=[]).Y
    requests = read_dataset_part(dataset, "requests")
    landed = {e["name"]: e for e in status["leaderboard"] if e["status"] == "landed"}
    validation: dict[str, np.ndarray] = {
        name: read_validation_scores(store.verify("models", e["model_key"], e["model_digest"]))
        for name, e in landed.items()
    }
    singles = {name: float(score(truth, matrix)) for name, matrix in validation.items()}
    # As `ml.ranking` ranks: higher metric, then higher F1, then the name.
    ranked = sorted(singles, key=lambda n: (-singles[n], -(landed[n].get("f1") or 0.0), n))
    eligible = [n for n in ranked if singles[n] >= min_score]
    if not eligible:
        raise BenchError(f"{label}: no landed candidate reaches {metric} ≥ {min_score}")
    choice = select_ensemble(
        validation, truth, score, k=K, eligible=eligible, weighted=False, metric_name=metric
    )
    threshold = _threshold(run)
    predictions: dict[str, np.ndarray] = {}

    def served(strategy: str, members: list[str], weights: list[float]) -> Served:
        for name in members:
            if name not in predictions:
                e = landed[name]
                model = read_model(store, e["model_key"], e["model_digest"])
                predictions[name] = model.predict_scores(requests.X)
        on_validation = float(score(truth, combine([validation[m] for m in members], weights)))
        named = [(m, predictions[m]) for m in members]
        return Served(
            strategy,
            members,
            weights,
            on_validation,
            _served(requests, named, threshold, weights),
        )

    top = choice.top_k_members
    top_k = served("top-k", top, [1.0 / len(top)] * len(top))
    ensemble = served("ensemble", choice.members, choice.weights)
    greedy = None
    if choice.strategy_used == "top_k":
        # What greedy picked before `select_ensemble` kept the top-k.
        members = choice.greedy_members
        if set(members) != set(choice.top_k_members):
            greedy = served("greedy (not kept)", members, [1.0 / len(members)] * len(members))
    return Strategies(
        label,
        metric,
        min_score,
        [(n, singles[n]) for n in eligible],
        [(n, singles[n]) for n in ranked if n not in eligible],
        top_k,
        ensemble,
        greedy,
        served("best single", [eligible[0]], [1.0]),
        choice.strategy_used,
        choice.reason,
        [p.reason for p in choice.picks],
    )


def _strategy_rows(s: Strategies) -> list[list[object]]:
    rows: list[list[object]] = []
    for served in [s.top_k, s.ensemble, *([s.greedy] if s.greedy else []), s.best_single]:
        label = served.strategy
        if served is s.ensemble:
            label = f"**ensemble** (used: {s.strategy_used})"
        members = ", ".join(
            m if len(set(served.weights)) == 1 else f"{m} ×{w:.2f}"
            for m, w in zip(served.members, served.weights, strict=True)
        )
        gain = served.requests.metrics[s.metric] - s.top_k.requests.metrics[s.metric]
        rows.append(
            [
                f"{s.dataset}, {s.metric}",
                label,
                members,
                f"{served.validation:.4f}",
                f"{served.requests.metrics[s.metric]:.4f}",
                "—" if served is s.top_k else f"{gain:+.4f}",
                str(len(served.requests.covered)),
            ]
        )
    return rows


def _strategy_notes(s: Strategies) -> str:
    eligible = ", ".join(f"{n} {v:.4f}" for n, v in s.eligible)
    below = ", ".join(f"{n} {v:.4f}" for n, v in s.below) or "none"
    picks = "; ".join(s.picks) if s.picks else "—"
    return (
        f"- {s.dataset}: eligible ({s.metric} ≥ {s.min_score} on validation, ranked): "
        f"{eligible}; below the bar: {below}. `select_ensemble`: {s.reason}. Greedy steps: "
        f"{picks}."
    )


def _cold(ctx: Context, name: str, config: Path) -> tuple[SyncRun, dict[str, Any]]:
    directory = config.parent
    home = directory / "home"
    timed = cli_run(ctx, name, home, config, sync_args(ctx, 2), cold=True)
    run = SyncRun(home, config, timed, sync_phases(home, timed))
    return run, cli_status(ctx, home, config)


def bench_quality(ctx: Context) -> Result:
    result = new_result("h")
    digits, digits_status = _cold(ctx, "digits", digits_config(WORK / "digits"))
    binary, binary_status = _cold(ctx, "binary", binary_config(WORK / "binary"))
    videos = trained_home(ctx)
    video_status = cli_status(ctx, videos.home, videos.config)
    pair = [_best_with(video_status, AUDIO_ONLY), _best_with(video_status, VISUAL_ONLY)]
    sets = [
        _quality(
            "digits: selected top 2",
            digits,
            digits_status["selection"]["selected"],
            digits_status,
            MULTICLASS_ORDER,
        ),
        _quality(
            "videos: selected top 2",
            videos,
            video_status["selection"]["selected"],
            video_status,
            VIDEO_ORDER,
        ),
        _quality(
            "videos: best audio-only + best visual-only",
            videos,
            pair,
            video_status,
            VIDEO_ORDER,
        ),
    ]
    strategies = [
        _strategies("digits", digits, digits_status, "hit@1", DIGITS_MIN_SCORE),
        _strategies("breast cancer", binary, binary_status, "hit@1", BINARY_MIN_SCORE),
        _strategies("videos", videos, video_status, "gap@20", VIDEO_GAP_MIN_SCORE),
        # The bar above may leave only the two best: then both strategies serve them. Without
        # a bar greedy can also reach for the perspective-restricted models.
        _strategies("videos (no bar)", videos, video_status, "gap@20", 0.0),
    ]

    for q in sets:
        result.details += [*_quality_table(q), ""]
    result.details += [*_coverage_lists(sets[2]), ""]
    result.details += [
        "All metrics on the held-out serving requests (`ml.metrics.all_metrics`); the ensemble "
        "is what `aggregate` serves: the mean of the models' scores, its tags the top entity "
        "(digits) or the union of the models' tags at `tag_threshold` (videos). Entities "
        "covered: distinct entities tagged correctly at least once (`entities_covered`). The "
        "perspective pair is served here in-process from the same run's models; it is not the "
        "pipeline's selection (which ranks by hit@1, the workloads' `selection.metric`).",
        "",
        "**Strategy: ensemble vs top_k**",
        "",
    ]
    rows = [row for s in strategies for row in _strategy_rows(s)]
    result.details += md_table(
        [
            "dataset, metric",
            "strategy",
            "members",
            "validation",
            "requests",
            "requests − top-k",
            "entities covered (requests)",
        ],
        rows,
    )
    result.details += [
        "",
        f"k = {K}. Validation: each landed candidate's `validation_scores.npy` (its model "
        "artifact) against the dataset artifact's validation truth; eligible: the candidates at "
        "or above the bar in the metric, ranked by it. `select_ensemble` (unweighted greedy "
        "forward selection) keeps the top-k set unless greedy beats it on validation; a "
        "`greedy (not kept)` row shows greedy's own pick when it did not. Requests: the same "
        "members and weights served in-process (`aggregate`) on the held-out serving requests. "
        f"Datasets: digits (the run above, bar {DIGITS_MIN_SCORE:.2f}), breast cancer "
        "(scikit-learn's 569 records, 2 classes, written to CSV, the candidates "
        + ", ".join(f"`{c['name']}`" for c in BINARY_CANDIDATES)
        + f"; bar {BINARY_MIN_SCORE:.2f}), the videos (the run "
        f"above, ranked by GAP@20 with examples/yt8m.yaml's bar {VIDEO_GAP_MIN_SCORE:.2f}, and "
        "again with every landed candidate eligible).",
        "",
        *(_strategy_notes(s) for s in strategies),
        "",
        "Strategy note: on the held-out requests, ensemble − top-k: "
        + ", ".join(
            f"{s.dataset} {s.gain():+.4f} {s.metric} ({s.strategy_used} used)" for s in strategies
        )
        + ". Deterministic (seeded): computed once.",
    ]
    pair_set = sets[2]
    result.figure = (
        "ensemble − best single: "
        + ", ".join(
            f"{label} {q.gain():+.3f} {q.headline}"
            for label, q in zip(("digits", "videos top 2", "audio+visual"), sets, strict=True)
        )
        + f"; audio+visual covers {len(pair_set.ensemble.covered)} vs "
        f"{max(len(m.covered) for m in pair_set.models)} entities; ensemble − top-k on "
        "requests: " + ", ".join(f"{s.dataset} {s.gain():+.3f}" for s in strategies)
    )
    result.goal = "ensemble covers ≥ entities than each model"
    result.met = all(q.met() for q in sets)
    if not result.met:
        result.notes.append(
            "The ensemble covers fewer entities than one of its models in: "
            + ", ".join(q.dataset for q in sets if not q.met())
        )
    return result
