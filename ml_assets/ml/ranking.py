"""Ranking the landed candidates and picking the top k that clear the bar (no Dagster here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["landed", "missing", "running", "failed", "stale", "broken", "invalid"]


@dataclass(frozen=True)
class LeaderboardEntry:
    """One candidate as selection sees it; only `landed` entries are eligible."""

    name: str
    status: Status
    score: float | None = None
    f1: float | None = None
    model_key: str | None = None
    model_digest: str | None = None
    model_type: str | None = None
    note: str = ""  # why it is not landed (the failed run's error, the invalid config), or ""
    user_error: bool = False  # the note is a mistake in the candidate's config or data
    # Every validation metric (`ml.metrics.METRICS`); `score` is the one selection ranks by.
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class NoQualifyingModelError(RuntimeError):
    """No landed candidate reaches the bar; the message lists every candidate's score."""


def _rank_key(entry: LeaderboardEntry) -> tuple[float, float, str]:
    # Deterministic ties: higher score, then higher F1, then candidate name.
    return (-(entry.score or 0.0), -(entry.f1 or 0.0), entry.name)


def rank(entries: Sequence[LeaderboardEntry]) -> list[LeaderboardEntry]:
    """Landed candidates first, best first; the others after, by name."""
    landed = sorted((e for e in entries if e.status == "landed"), key=_rank_key)
    others = sorted((e for e in entries if e.status != "landed"), key=lambda e: e.name)
    return landed + others


def qualifying(entries: Sequence[LeaderboardEntry], min_score: float) -> list[LeaderboardEntry]:
    """The landed candidates with score ≥ `min_score`, best first; raises
    `NoQualifyingModelError` (listing every candidate) when there is none."""
    qualified = [e for e in rank(entries) if e.status == "landed" and (e.score or 0.0) >= min_score]
    if not qualified:
        lines = [f"no candidate reaches the bar: score >= {min_score:.3f} needed"]
        for e in rank(entries):
            score = "—" if e.score is None else f"{e.score:.4f}"
            verdict = "below bar" if e.status == "landed" else e.status
            lines.append(f"  {e.name}: {score} ({verdict}{'; ' + e.note if e.note else ''})")
        raise NoQualifyingModelError("\n".join(lines))
    return qualified


def select_top_k(
    entries: Sequence[LeaderboardEntry], top_k: int, min_score: float
) -> list[LeaderboardEntry]:
    """The best `top_k` landed candidates with score ≥ `min_score` (the seed's rule)."""
    return qualifying(entries, min_score)[:top_k]


def leaderboard_markdown(
    entries: Sequence[LeaderboardEntry],
    selected: Sequence[str] | Mapping[str, str],
    min_score: float,
    metrics: Sequence[str] = (),
) -> str:
    """The leaderboard as a Markdown table: every metric in `metrics` gets a column, and a
    selected candidate says why it was picked (`selected` mapping name → why)."""
    why = selected if isinstance(selected, Mapping) else {name: "" for name in selected}
    header = ["rank", "candidate", "status", "score", *metrics, "F1", "selected", "note"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for position, e in enumerate(rank(entries), start=1):
        score = "" if e.score is None else f"{e.score:.4f}"
        f1 = "" if e.f1 is None else f"{e.f1:.4f}"
        values = [f"{e.metrics[m]:.4f}" if m in e.metrics else "" for m in metrics]
        if e.name in why:
            mark = f"yes: {why[e.name]}" if why[e.name] else "yes"
        elif e.score is not None and e.score < min_score and e.status == "landed":
            mark = "below bar"
        else:
            mark = ""
        rank_text = str(position) if e.status == "landed" else ""
        cells = [rank_text, e.name, e.status, score, *values, f1, mark, e.note]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
