"""f. Ingestion: throughput and peak memory of loading, splitting and writing a source.

Runs `bench/ingest_probe.py` in a fresh process (`load_dataset`, `split_rows`,
`split_content_hash`, `write_part` of each split) on two large generated sources: a Parquet
file (many rows, reduced width) and YouTube-8M-shaped TFRecord shards at the full 1,024 + 128
dimensions, read through a glob. Measures rows/s and the peak RSS (`VmHWM`) above the RSS
after imports, divided by the decoded data (float32 features + the 0/1 label matrix), and for
Parquet also by the source's in-memory (Arrow) size, with the RSS per phase. Goal: peak ≤ 2×
the data (Parquet: its Arrow table, as before; TFRecord: the decoded data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from bench.harness import WORK, Context, fresh_dir, median, require_success, run_child
from bench.result import Result, md_runs, md_table, new_result
from bench.workloads import TFRECORD_SHARDS, ingestion_shards, ingestion_source

MB: Final = 2**20
GOAL: Final = 2.0

_SPLIT = "only the sorted row indices of each part are built (nothing is copied)"
_HASH = "the features and labels of one chunk of rows (~8 MB) gathered at a time"
_WRITE = (
    "each chunk's transposed copy, its Arrow arrays and the Parquet writer's buffers (a row "
    "group's pages are held until it is flushed)"
)
_PHASE_CAUSES: Final = {
    "load": "the float32 block is preallocated and filled a Parquet batch at a time, but "
    "Arrow's mimalloc pool keeps the pages of the batches it decoded and freed (they are not "
    "returned to the OS), the label and id columns are gathered into one Arrow table while the "
    "0/1 label matrix is built from it, and the ids become one Python string per record (not "
    "counted in the decoded data)",
    "split": _SPLIT,
    "hash": _HASH,
    "write": _WRITE,
}
_TFRECORD_CAUSES: Final = {
    "load": "the float32 block is allocated once (sized from the framing's record counts) and "
    "each record is parsed into its row, but every record is a fresh protobuf message, the "
    "label indices grow in a doubling int64 buffer (copied once more at the end) and the ids "
    "become one Python string per record (not counted in the decoded data)",
    "split": _SPLIT,
    "hash": _HASH,
    "write": _WRITE,
}


@dataclass
class _Format:
    """One source format: what the probe is given and what it reported, run by run."""

    name: str
    key: str  # for labels and folders
    source: str  # a file or a glob
    label: str
    id_column: str
    description: str
    causes: dict[str, str]
    arrow_bytes: int | None = None  # Parquet: the table's in-memory (Arrow) size
    reports: list[dict[str, Any]] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)

    # -- medians over the runs

    @property
    def rows(self) -> int:
        rows: int = self.reports[0]["rows"]
        return rows

    @property
    def dataset_bytes(self) -> int:
        size: int = self.reports[0]["dataset_bytes"]  # deterministic
        return size

    def totals(self) -> list[float]:
        return [sum(p["seconds"] for p in rep["phases"]) for rep in self.reports]

    def peaks(self) -> list[float]:
        return [max(p["peak"] for p in rep["phases"]) for rep in self.reports]

    @property
    def seconds(self) -> float:
        return median(self.totals())

    @property
    def start(self) -> float:
        return median([rep["baseline"]["rss"] for rep in self.reports])

    @property
    def net_peak(self) -> float:
        return median(self.peaks()) - self.start

    @property
    def decoded_ratio(self) -> float:
        return self.net_peak / self.dataset_bytes

    @property
    def arrow_ratio(self) -> float | None:
        return None if self.arrow_bytes is None else self.net_peak / self.arrow_bytes

    @property
    def goal_ratio(self) -> float:
        """What the goal is checked on: the Arrow table for Parquet, else the decoded data."""
        return self.decoded_ratio if self.arrow_ratio is None else self.arrow_ratio

    def phase_medians(self) -> list[tuple[str, float, float, float]]:
        """(phase, seconds, RSS after, peak so far) per phase."""
        out = []
        for i, phase in enumerate(self.reports[0]["phases"]):
            out.append(
                (
                    phase["phase"],
                    median([rep["phases"][i]["seconds"] for rep in self.reports]),
                    median([rep["phases"][i]["rss"] for rep in self.reports]),
                    median([rep["phases"][i]["peak"] for rep in self.reports]),
                )
            )
        return out


def _formats(ctx: Context) -> list[_Format]:
    import pyarrow.parquet as pq

    s = ctx.sizes
    parquet = ingestion_source(ctx)
    table = pq.read_table(parquet)
    arrow_bytes = table.nbytes
    del table
    shards = ingestion_shards(ctx)
    shard_bytes = sum(p.stat().st_size for p in shards.glob("train*.tfrecord"))
    return [
        _Format(
            "Parquet",
            "parquet",
            str(parquet),
            "tags",
            "video_id",
            f"{s.ingest_rows:,} videos × ({s.ingest_rgb_dims} rgb + {s.ingest_audio_dims} "
            f"audio) float32 features, {s.entities} entities, tags a list of names "
            f"({parquet.stat().st_size / MB:,.0f} MB, one file). The full 1,152 dimensions "
            f"would be {s.ingest_rows * 1152 * 4 / 2**30:.1f} GiB of float32, so the width "
            "is reduced: rows are what this source scales. In memory as Arrow: "
            f"{arrow_bytes / MB:,.0f} MB.",
            _PHASE_CAUSES,
            arrow_bytes=arrow_bytes,
        ),
        _Format(
            "TFRecord",
            "tfrecord",
            str(shards / "train*.tfrecord"),
            "labels",
            "id",
            f"{s.ingest_tfrecord_rows:,} YouTube-8M-shaped video-level records "
            f"(`write_video_shards`, seed 0): `mean_rgb` 1,024 + `mean_audio` 128 float32, "
            f"`labels` int64 entity indices, `id` bytes; {s.entities} entities, "
            f"{TFRECORD_SHARDS} shards, {shard_bytes / MB:,.0f} MB on disk, read through "
            "the glob `train*.tfrecord`.",
            _TFRECORD_CAUSES,
        ),
    ]


def _probe(ctx: Context, fmt: _Format, r: int) -> None:
    out = fresh_dir(WORK / "ingestion" / "out")
    label = f"ingestion-{fmt.key}-r{r}"
    ctx.log(f"  {label}: python -m bench.ingest_probe {fmt.source}")
    timed = run_child(
        ctx,
        label,
        ["-m", "bench.ingest_probe", fmt.source, fmt.label, fmt.id_column, str(out)],
        ctx.env(),
        WORK / "ingestion" / "logs",
    )
    ctx.log(f"    {timed.seconds:.1f}s")
    fmt.reports.append(json.loads(require_success(timed).stdout.strip().splitlines()[-1]))
    fmt.walls.append(timed.seconds)


def _details(fmt: _Format) -> list[str]:
    lines = [f"**{fmt.name}**: {fmt.description}", ""]
    rows: list[list[object]] = [
        ["load + split + hash + write (s)", f"{fmt.seconds:.1f}", md_runs(fmt.totals())],
        ["rows/s", f"{fmt.rows / fmt.seconds:,.0f}", ""],
        [
            "decoded MB/s (comparable across widths)",
            f"{fmt.dataset_bytes / MB / fmt.seconds:,.0f}",
            "",
        ],
        ["child process wall incl. imports (s)", f"{median(fmt.walls):.1f}", md_runs(fmt.walls)],
        ["RSS after imports (MB)", f"{fmt.start / MB:,.0f}", ""],
        [
            "peak RSS, VmHWM (MB)",
            f"{median(fmt.peaks()) / MB:,.0f}",
            md_runs([p / MB for p in fmt.peaks()]),
        ],
        ["decoded data: float32 features + 0/1 labels (MB)", f"{fmt.dataset_bytes / MB:,.0f}", ""],
        ["peak above start-up / decoded data", f"{fmt.decoded_ratio:.2f}×", ""],
    ]
    if fmt.arrow_bytes is not None and fmt.arrow_ratio is not None:
        rows += [
            ["in memory as Arrow (MB)", f"{fmt.arrow_bytes / MB:,.0f}", ""],
            ["peak above start-up / Arrow table (the goal's)", f"{fmt.arrow_ratio:.2f}×", ""],
        ]
    lines += md_table(["", "median", "runs"], rows)
    lines += ["", f"{fmt.name} per phase (medians):", ""]
    phase_rows = []
    previous = fmt.start
    for name, seconds, rss, peak in fmt.phase_medians():
        phase_rows.append(
            [
                name,
                f"{seconds:.2f}",
                f"{rss / MB:,.0f}",
                f"{peak / MB:,.0f}",
                f"{max(0.0, peak - previous) / MB:+,.0f}",
            ]
        )
        previous = max(previous, peak)
    lines += md_table(
        ["phase", "seconds", "RSS after (MB)", "peak so far (MB)", "peak grew (MB)"], phase_rows
    )
    lines += ["", f"Where the {fmt.name} peak grows: {_growth(fmt, fmt.dataset_bytes)}."]
    return lines


def _growth(fmt: _Format, data_bytes: int) -> str:
    """The phases where the peak grew by more than a tenth of the data, with their causes."""
    growth = []
    previous = fmt.start
    for name, _, _, peak in fmt.phase_medians():
        if peak - previous > 0.1 * data_bytes:
            growth.append(f"{name} +{(peak - previous) / MB:,.0f} MB ({fmt.causes.get(name, '')})")
        previous = max(previous, peak)
    return "; ".join(growth) or "no single phase"


def bench_ingestion(ctx: Context) -> Result:
    result = new_result("f")
    formats = _formats(ctx)
    for r in range(ctx.repeats):  # interleaved: the formats' runs sit side by side
        for fmt in formats:
            _probe(ctx, fmt, r)
    fresh_dir(WORK / "ingestion" / "out")  # hundreds of MB: not worth keeping
    parquet, tfrecord = formats
    assert parquet.arrow_ratio is not None
    result.figure = (
        f"Parquet {parquet.rows / parquet.seconds:,.0f} rows/s, peak "
        f"{parquet.arrow_ratio:.1f}× the Arrow table ({parquet.decoded_ratio:.1f}× the decoded "
        f"data); TFRecord {tfrecord.rows / tfrecord.seconds:,.0f} rows/s, peak "
        f"{tfrecord.decoded_ratio:.1f}× the decoded data"
    )
    result.goal = "peak ≤ 2× the data (Parquet: its Arrow table; TFRecord: the decoded data)"
    result.met = all(fmt.goal_ratio <= GOAL for fmt in formats)
    for fmt in formats:
        result.details += [*_details(fmt), ""]
    result.details += [
        "Peak: the probe's own `VmHWM` (not `ru_maxrss`, which Linux carries over from the "
        "forking parent across exec) minus its RSS after imports. Decoded data: the "
        "`Dataset`'s float32 feature block + its uint8 label matrix, as the probe reports it "
        "(`dataset_bytes`); the ids (one Python string per record) are not counted. The probe "
        "(bench/ingest_probe.py) runs the library calls of `ingested_dataset` in a fresh "
        "process and keeps the dataset and the split alive to the end, as the asset does; the "
        "asset also fingerprints the source files (not measured here). The two formats' runs "
        "alternate.",
    ]
    for fmt in formats:
        if fmt.goal_ratio > GOAL:
            against = "the Arrow table" if fmt.arrow_bytes is not None else "the decoded data"
            data = fmt.arrow_bytes if fmt.arrow_bytes is not None else fmt.dataset_bytes
            result.notes.append(
                f"{fmt.name}: peak is {fmt.goal_ratio:.1f}× {against} (goal {GOAL:.0f}×). "
                f"The peak grows in: {_growth(fmt, data)}"
            )
    return result
