"""Run the benchmarks, print a Markdown table and write bench/results.md.

    python -m bench.run                      # the medium sizes, every benchmark, 3 runs each
    python -m bench.run --quick              # small sizes: a smoke run
    python -m bench.run --only a,b --repeats 5

Everything a run writes goes under bench/.work/ (each benchmark with its own ML_ASSETS_HOME
and ML_ASSETS_CONFIG there), except bench/results.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.benchmarks import BENCHMARKS, Result
from bench.harness import MEDIUM, QUICK, RESULTS, WORK, Context, Sizes, machine
from bench.workloads import (
    BINARY_CANDIDATES,
    BINARY_MIN_SCORE,
    DIGITS_CANDIDATES,
    TFRECORD_SHARDS,
    VIDEO_CANDIDATES,
    VIDEO_GAP_MIN_SCORE,
    video_source,
)


def _selection(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    by_name = {b.name: key for key, b in BENCHMARKS.items()}
    chosen = []
    for item in (part.strip().lower() for part in only.split(",")):
        key = item if item in BENCHMARKS else by_name.get(item)
        if key is None:
            known = ", ".join(f"{k} ({b.name})" for k, b in BENCHMARKS.items())
            raise SystemExit(f"--only: unknown benchmark {item!r}; known: {known}")
        chosen.append(key)
    return sorted(set(chosen))


def _verdict(result: Result) -> str:
    if result.met is None:
        return "n/a"
    return "yes" if result.met else "**no**"


def summary_table(results: Sequence[Result]) -> str:
    lines = ["| | benchmark | figure | goal | met |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.key} | {r.title} | {r.figure} | {r.goal} | {_verdict(r)} |")
    return "\n".join(lines)


def _sizes_section(ctx: Context, keys: Sequence[str]) -> list[str]:
    s = ctx.sizes
    lines = [
        f"- Videos (a–d, g, h, j): {s.videos:,} × ({s.rgb_dims:,} rgb + {s.audio_dims} audio) "
        f"float32, {s.entities} entities, YouTube-8M-shaped (`ml_assets.ml.synthetic`, "
        f"seed 0); selection top 2 at hit@1 ≥ {s.min_score}; candidates: "
        + ", ".join(
            f"`{c['name']}` ({c['model']}{', ' + c['features'][0] if 'features' in c else ''})"
            for c in VIDEO_CANDIDATES
        )
        + ". `training.threads_per_model` 1.",
        "- Digits (h, j): scikit-learn's 1,797 images; candidates "
        + ", ".join(f"`{c['name']}`" for c in DIGITS_CANDIDATES)
        + "; bar 0.90.",
        f"- Scaling (e): {', '.join(map(str, s.scaling))} candidates (Gaussian naive Bayes and "
        "decision trees, alternating) on digits, max_concurrent 2.",
        "- Breast cancer (h, strategy comparison): scikit-learn's 569 records, 30 features, 2 "
        "classes, as CSV; candidates "
        + ", ".join(f"`{c['name']}`" for c in BINARY_CANDIDATES)
        + f"; bar {BINARY_MIN_SCORE:.2f}. The videos there are ranked by GAP@20 (bar "
        f"{VIDEO_GAP_MIN_SCORE:.2f}).",
        f"- Ingestion (f): Parquet, {s.ingest_rows:,} videos × ({s.ingest_rgb_dims} rgb + "
        f"{s.ingest_audio_dims} audio) float32, {s.entities} entities; TFRecord, "
        f"{s.ingest_tfrecord_rows:,} YouTube-8M-shaped records × (1,024 rgb + 128 audio) "
        f"float32 in {TFRECORD_SHARDS} shards.",
    ]
    if any(k in keys for k in "abcdghj"):
        path = video_source(ctx)
        lines[0] += f" Source: {path.stat().st_size / 2**20:,.0f} MB Parquet."
    return lines


def write_results(
    ctx: Context,
    results: Sequence[Result],
    command: str,
    started: datetime,
    seconds: float,
    output: Path,
) -> None:
    info = machine()
    if ctx.blas_threads is not None:
        info["blas threads"] = f"{ctx.blas_threads} (set by --blas-threads for every child)"
    lines = [
        f"# ml_assets benchmarks ({ctx.sizes.name})",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min with:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Each figure is the median of {ctx.repeats} runs unless said otherwise; ratios come "
        "from runs taken side by side in this one invocation. Walls are measured from process "
        "launch to exit (interpreter start-up included) for `ml-assets` and the baseline alike. "
        "A 1-minute load average well above the 2 cores' worth of benchmark work means "
        "something else was running on the machine at the time.",
        "",
        "## Summary",
        "",
        summary_table(results),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
        "## Sizes",
        "",
        *_sizes_section(ctx, [r.key for r in results]),
    ]
    for r in results:
        lines += ["", f"## {r.key}. {r.title}", "", f"**{r.figure}** (goal: {r.goal})", ""]
        lines += r.details
        if r.notes:
            lines += ["", "What holds it back:", ""]
            lines += [f"- {note}" for note in r.notes]
    output.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--only", default=None, help="comma-separated benchmarks: letters a–h or names"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help="the results file (default bench/results.md; side experiments: under bench/.work/)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="set OPENBLAS/OMP/MKL_NUM_THREADS for every child (default: inherit)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.output = args.output.absolute()
    if args.output != RESULTS and WORK not in args.output.parents:
        parser.error(f"--output must be {RESULTS} or under {WORK}")
    sizes: Sizes = QUICK if args.quick else MEDIUM
    keys = _selection(args.only)
    given = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "bench.run", *given])
    ctx = Context(sizes=sizes, repeats=args.repeats, blas_threads=args.blas_threads)
    WORK.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    print(f"ml_assets benchmarks, {sizes.name} sizes, {args.repeats} run(s) each: {keys}")
    results: list[Result] = []
    for key in keys:
        benchmark = BENCHMARKS[key]
        print(f"\n[{key}] {benchmark.name}", flush=True)
        mark = time.perf_counter()
        load_before = os.getloadavg()[0]
        try:
            result = benchmark.run(ctx)
        except Exception as error:  # one broken benchmark must not lose the others' figures
            traceback.print_exc()
            result = Result(key, benchmark.name, benchmark.title)
            result.figure = f"error: {error}".splitlines()[0][:160]
            result.notes.append(f"Failed: {error}")
        took = time.perf_counter() - mark
        result.details += [
            "",
            f"_{took:.0f}s; 1-minute load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after._",
        ]
        print(f"[{key}] {result.figure} ({took:.0f}s)", flush=True)
        results.append(result)
    seconds = time.perf_counter() - started
    write_results(ctx, results, command, started_at, seconds, args.output)
    print()
    print(summary_table(results))
    print(f"\n{seconds / 60:.1f} min; details in {args.output}")
    return 0 if all(r.figure and not r.figure.startswith("error") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
