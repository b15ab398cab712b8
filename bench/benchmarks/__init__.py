"""The benchmarks a–j, one module each, and `BENCHMARKS`: the registry, in key order.

Each benchmark is a function of a `Context` that returns a `Result`: one figure, its goal,
and Markdown details. `python -m bench.run` runs the ones chosen by key or name.
"""

from __future__ import annotations

from typing import Final

from bench.benchmarks.a_baseline import bench_baseline
from bench.benchmarks.b_fanout import bench_fanout
from bench.benchmarks.c_memoization import bench_memoization
from bench.benchmarks.d_async import bench_async
from bench.benchmarks.e_scaling import bench_scaling
from bench.benchmarks.f_ingestion import bench_ingestion
from bench.benchmarks.g_serving import bench_serving
from bench.benchmarks.h_quality import bench_quality
from bench.benchmarks.i_workers import bench_workers
from bench.benchmarks.j_serving_http import bench_serving_http
from bench.result import Benchmark, Result

__all__ = ["BENCHMARKS", "Benchmark", "Result"]


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
    "i": Benchmark(
        "workers",
        "Past one machine: Celery workers and Postgres vs the default",
        bench_workers,
    ),
    "j": Benchmark(
        "serving_http",
        "HTTP serving: `ml-assets serve` latency and throughput vs in-process",
        bench_serving_http,
    ),
}
