"""Ingestion in a fresh process, timed and memory-profiled phase by phase (benchmark f).

Runs what `ingested_dataset` computes, without Dagster: load the source (read and clean, streamed
into one float32 block for Parquet and TFRecord), split it, hash the splits (the dataset's
version) and write them as Parquet. Prints one JSON object: the seconds of each phase and the
process's resident memory (current and peak) after it.

    python -m bench.ingest_probe SOURCE LABEL ID OUT_DIR   # SOURCE: a file or a glob
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

from ml_assets.ml.datasets import PARTS, load_dataset, split_content_hash, split_rows, write_part

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def _peak() -> int:
    """This process's peak resident set size so far in bytes: `VmHWM` of /proc/self/status.

    Not `ru_maxrss`: Linux carries it across `execve`, so a child started by `subprocess` (vfork
    + exec) reports at least the parent's peak (the bench runner's, hundreds of MB). `VmHWM`
    belongs to this process's own address space. Falls back to `ru_maxrss` without /proc.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run(source: Path, label: str, id_column: str, out: Path) -> dict[str, Any]:
    """`source` may be a glob (TFRecord shards)."""
    phases: list[dict[str, Any]] = []
    baseline = {"rss": _rss(), "peak": _peak()}
    mark = time.perf_counter()

    def record(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases.append({"phase": name, "seconds": now - mark, "rss": _rss(), "peak": _peak()})
        mark = now

    source = source.absolute()
    # Like the asset, keep the dataset and the split alive until the end.
    dataset, _ = load_dataset(str(source), source.parent, label, id_column)
    record("load")
    rows = split_rows(dataset, validation=0.2, serving=0.2, seed=0)
    count = len(dataset)
    features = len(dataset.features)
    dataset_bytes = int(dataset.X.memory_usage(index=False).sum() + dataset.Y.nbytes)
    record("split")
    split_content_hash(dataset, rows)
    record("hash")
    out.mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        write_part(dataset, rows[name], out / f"{name}.parquet")
    record("write")
    return {
        "rows": count,
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
