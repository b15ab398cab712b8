"""What a benchmark is and what it returns, and the Markdown helpers its details are built with.

Each benchmark is a `Benchmark` in the registry (`bench.benchmarks.BENCHMARKS`) whose `run`
returns a `Result`: one figure, its goal, whether the goal is met, and Markdown details.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.harness import Context


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


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    run: Callable[[Context], Result]


def new_result(key: str) -> Result:
    """An empty result titled from the registry."""
    from bench.benchmarks import BENCHMARKS  # here: the registry imports every benchmark

    benchmark = BENCHMARKS[key]
    return Result(key, benchmark.name, benchmark.title)


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def md_runs(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)
