"""Ingestion in a fresh process, timed and memory-profiled phase by phase (benchmark f).

Runs what `ingested_dataset` computes, without Dagster: read the source, clean it, split it,
hash the splits (the dataset's version) and write them as Parquet. Prints one JSON object:
the seconds of each phase and the process's resident memory (current and peak) after it.

    python -m bench.ingest_probe SOURCE LABEL ID OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from ml_assets.ml.datasets import PARTS, clean, content_hash, read_source, split, write_parquet

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def _peak() -> int:
    """Peak resident set size so far in bytes (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(source: Path, label: str, id_column: str, out: Path) -> dict[str, Any]:
    phases: list[dict[str, Any]] = []
    baseline = {"rss": _rss(), "peak": _peak()}
    mark = time.perf_counter()

    def record(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases.append({"phase": name, "seconds": now - mark, "rss": _rss(), "peak": _peak()})
        mark = now

    source = source.absolute()
    frame = read_source(str(source), source.parent)
    record("read_source")
    # Like the asset, keep the frame, the dataset and the splits alive until the end.
    dataset, _ = clean(frame, label, id_column, str(source))
    record("clean")
    parts = split(dataset, validation=0.2, serving=0.2, seed=0)
    rows = len(dataset)
    features = len(dataset.features)
    dataset_bytes = int(dataset.X.memory_usage(index=False).sum() + dataset.Y.nbytes)
    record("split")
    content_hash(parts)
    record("hash")
    out.mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        write_parquet(parts[name].to_frame(), out / f"{name}.parquet")
    record("write")
    return {
        "rows": rows,
        "features": features,
        "dataset_bytes": dataset_bytes,
        "baseline": baseline,
        "phases": phases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("label")
    parser.add_argument("id")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    json.dump(run(args.source, args.label, args.id, args.out), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
