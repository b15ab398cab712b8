"""Deterministic synthetic YouTube-8M-shaped multi-label data.

Shape
-----
One row per video, columns in this order:

* ``video_id`` -- ``"vid_0000001"``, ``"vid_0000002"``, ... (str)
* ``mean_rgb_0 .. mean_rgb_{rgb_dims-1}`` -- float32 (YouTube-8M: 1024 dims)
* ``mean_audio_0 .. mean_audio_{audio_dims-1}`` -- float32 (YouTube-8M: 128 dims)
* ``tags`` -- Python ``list[str]`` of entity names (``"entity_00"``, ...), sorted by entity
  index, never empty.

Why it looks like this
----------------------
The data exists to exercise multi-model workflows (fan-out training of many candidates,
top-k selection, ensembles), so it reproduces the properties of YouTube-8M that matter there:

* **Long tail.** Entity prevalence is Zipf-like (weight ``1 / (index + 2)``), so a few entities
  are on many videos and most are rare (20 entities, 3 tags: the head entity is on ~47% of
  videos, ~8x as often as the last); per-entity metrics and "covered entities" differ
  sharply between models. Each video gets ``1 + Poisson(mean_tags - 1)`` distinct tags (capped
  at ``entities``), drawn without replacement in proportion to prevalence.
* **Learnable labels.** Every entity has a fixed latent signature (a random direction of fixed
  norm). A video's features are a randomly weighted mix of its tags' signatures plus isotropic
  Gaussian noise, so linear models and GBDTs do well above chance but not perfectly.
* **Perspectives.** Entities are split into groups by ``index % 5``: ``0, 2`` -> ``"audio"``
  (signal only in ``mean_audio_*``), ``1, 3`` -> ``"visual"`` (signal only in ``mean_rgb_*``),
  ``4`` -> ``"both"``; i.e. about 40% / 40% / 20%, interleaved across the frequency ranks. A
  candidate restricted to one feature family recognises only that family's entities, and an
  ensemble of an audio model and a visual model covers more entities than either
  (see :func:`entity_perspectives`).

Determinism and memory
----------------------
Rows are generated in fixed-size chunks whose size depends only on ``entities``, ``rgb_dims``
and ``audio_dims``; chunk ``c`` uses its own child seed ``SeedSequence(seed, spawn_key=(1, c))``
and the signatures use ``SeedSequence(seed, spawn_key=(0,))``. The output therefore depends
only on the arguments -- not on how it is written -- and :func:`write_videos` (which streams
chunks into Parquet row groups, keeping peak memory at about one row group) produces exactly
the rows of :func:`generate_videos`. Feature matrices are float32 throughout (noise is drawn
directly as float32); ``generate_videos`` fills one preallocated ``rows x (rgb + audio)``
float32 block, so its peak is roughly the size of the returned frame.
:func:`write_video_shards` streams the same rows, chunk by chunk, into YouTube-8M video-level
TFRecord shards (``id``, ``labels`` as entity indices, ``mean_rgb``, ``mean_audio``), and
:func:`write_vocabulary` writes the matching YouTube-8M ``vocabulary.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "VOCABULARY_COLUMNS",
    "Perspective",
    "audio_columns",
    "entity_names",
    "entity_perspectives",
    "generate_videos",
    "rgb_columns",
    "write_video_shards",
    "write_videos",
    "write_vocabulary",
]

Perspective = Literal["audio", "visual", "both"]

_ZIPF_EXPONENT = 1.0
_ZIPF_OFFSET = 2.0  # Zipf-Mandelbrot offset: keeps the head entity off most videos
_NOISE_STD = 1.0
_SIGNATURE_NORM = 3.5
_WEIGHT_LOW, _WEIGHT_HIGH = 0.6, 1.4
_CHUNK_TARGET_BYTES = 32 * 1024 * 1024
_CHUNK_MIN_ROWS = 256

_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]


# --------------------------------------------------------------------------- naming helpers


def entity_names(entities: int) -> list[str]:
    """Entity names ``entity_00 .. entity_{entities-1}`` (zero-padded, at least 2 digits)."""
    _check_int("entities", entities, minimum=2)
    width = max(2, len(str(entities - 1)))
    return [f"entity_{i:0{width}d}" for i in range(entities)]


def entity_perspectives(entities: int) -> dict[str, Perspective]:
    """Map each entity name to the feature family that carries its signal."""
    groups: tuple[Perspective, ...] = ("audio", "visual", "audio", "visual", "both")
    return {name: groups[i % 5] for i, name in enumerate(entity_names(entities))}


def rgb_columns(rgb_dims: int = 1024) -> list[str]:
    """Names of the visual feature columns."""
    _check_int("rgb_dims", rgb_dims, minimum=1)
    return [f"mean_rgb_{i}" for i in range(rgb_dims)]


def audio_columns(audio_dims: int = 128) -> list[str]:
    """Names of the audio feature columns."""
    _check_int("audio_dims", audio_dims, minimum=1)
    return [f"mean_audio_{i}" for i in range(audio_dims)]


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_args(
    rows: int, entities: int, seed: int, rgb_dims: int, audio_dims: int, mean_tags: float
) -> None:
    _check_int("rows", rows, minimum=1)
    _check_int("entities", entities, minimum=2)
    _check_int("seed", seed, minimum=0)
    _check_int("rgb_dims", rgb_dims, minimum=1)
    _check_int("audio_dims", audio_dims, minimum=1)
    if isinstance(mean_tags, bool) or not isinstance(mean_tags, int | float | np.number):
        raise ValueError(f"mean_tags must be a number, got {mean_tags!r}")
    if not (1.0 <= float(mean_tags) <= entities):
        raise ValueError(
            f"mean_tags must be between 1 and entities ({entities}), got {mean_tags!r}"
        )


# --------------------------------------------------------------------------- generation core


@dataclass(frozen=True)
class _Spec:
    rows: int
    entities: int
    seed: int
    rgb_dims: int
    audio_dims: int
    mean_tags: float

    @property
    def dims(self) -> int:
        return self.rgb_dims + self.audio_dims

    @property
    def chunk_rows(self) -> int:
        """Fixed chunk size; depends only on the shape args, never on rows or I/O settings."""
        per_row = 4 * (self.entities + self.dims)
        n = max(_CHUNK_MIN_ROWS, _CHUNK_TARGET_BYTES // per_row)
        return 1 << (n.bit_length() - 1)  # round down to a power of two

    def chunks(self) -> Iterator[tuple[int, int, int]]:
        """Yield ``(chunk_index, start_row, n_rows)``."""
        size = self.chunk_rows
        for c, start in enumerate(range(0, self.rows, size)):
            yield c, start, min(size, self.rows - start)


@dataclass(frozen=True)
class _Model:
    log_prevalence: npt.NDArray[np.float64]  # (entities,)
    signatures: _F32  # (entities, rgb_dims + audio_dims)


def _build_model(spec: _Spec) -> _Model:
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(0,)))
    ranks = np.arange(spec.entities, dtype=np.float64)
    weights = (ranks + _ZIPF_OFFSET) ** -_ZIPF_EXPONENT
    log_prev = np.log(weights / weights.sum())

    sig = rng.standard_normal((spec.entities, spec.dims), dtype=np.float32)
    perspectives = list(entity_perspectives(spec.entities).values())
    rgb = slice(0, spec.rgb_dims)
    audio = slice(spec.rgb_dims, spec.dims)
    for i, persp in enumerate(perspectives):
        if persp == "audio":
            sig[i, rgb] = 0.0
        elif persp == "visual":
            sig[i, audio] = 0.0
        # Each active family gets a signature of the same norm, whatever its width.
        for part in (rgb, audio):
            norm = float(np.linalg.norm(sig[i, part]))
            if norm > 0.0:
                sig[i, part] *= np.float32(_SIGNATURE_NORM / norm)
    return _Model(log_prevalence=log_prev, signatures=sig)


def _fill_chunk(spec: _Spec, model: _Model, chunk: int, out: _F32) -> tuple[_I64, _I64]:
    """Fill ``out`` (n x dims, C-contiguous float32) with features for one chunk.

    Returns the tagged entity indices (row-major, sorted within each row) and the per-row tag
    counts.
    """
    n = out.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(1, chunk)))

    # Tag counts: 1 + Poisson(mean_tags - 1), capped at the number of entities.
    counts: _I64 = np.asarray(rng.poisson(spec.mean_tags - 1.0, size=n), dtype=np.int64) + 1
    np.minimum(counts, spec.entities, out=counts)
    k_max = int(counts.max())

    # Weighted sampling without replacement via Gumbel-top-k: the k largest of
    # log(p) + Gumbel noise are a prevalence-weighted sample without replacement.
    keys = rng.gumbel(size=(n, spec.entities)).astype(np.float32)
    keys += model.log_prevalence.astype(np.float32)
    if k_max < spec.entities:
        top = np.argpartition(-keys, k_max - 1, axis=1)[:, :k_max]
    else:
        top = np.broadcast_to(np.arange(spec.entities), (n, spec.entities)).copy()
    top_keys = np.take_along_axis(keys, top, axis=1)
    order = np.argsort(-top_keys, axis=1, kind="stable")
    ranked = np.take_along_axis(top, order, axis=1)  # (n, k_max), best first
    active = np.arange(k_max)[None, :] < counts[:, None]  # (n, k_max)
    del keys, top, top_keys, order

    # Mixing weights, scaled so a video's total signal energy does not grow with its tags.
    weights = rng.uniform(_WEIGHT_LOW, _WEIGHT_HIGH, size=(n, k_max)).astype(np.float32)
    weights *= active
    weights /= np.sqrt(counts.astype(np.float32))[:, None]

    rng.standard_normal(out=out, dtype=np.float32)
    if _NOISE_STD != 1.0:
        out *= np.float32(_NOISE_STD)
    # Add the signal slot by slot (elementwise float32 ops: bit-identical on every machine).
    # Slot j is active for rows with more than j tags; slot 0 is active for every row.
    out += weights[:, 0, None] * model.signatures[ranked[:, 0]]
    for j in range(1, k_max):
        rows_j = np.flatnonzero(counts > j)
        out[rows_j] += weights[rows_j, j, None] * model.signatures[ranked[rows_j, j]]

    membership = np.zeros((n, spec.entities), dtype=bool)
    rows_idx = np.repeat(np.arange(n), k_max).reshape(n, k_max)
    membership[rows_idx[active], ranked[active]] = True
    _, tag_idx = np.nonzero(membership)  # row-major -> sorted by entity within each row
    return tag_idx.astype(np.int64), counts.astype(np.int64)


def _video_ids(start: int, n: int, total: int) -> list[str]:
    width = max(7, len(str(total)))
    return [f"vid_{i:0{width}d}" for i in range(start + 1, start + n + 1)]


# --------------------------------------------------------------------------- public API


def generate_videos(
    rows: int,
    entities: int = 20,
    *,
    seed: int = 0,
    rgb_dims: int = 1024,
    audio_dims: int = 128,
    mean_tags: float = 3.0,
) -> pd.DataFrame:
    """Generate ``rows`` synthetic videos as a DataFrame (see the module docstring)."""
    _check_args(rows, entities, seed, rgb_dims, audio_dims, mean_tags)
    spec = _Spec(rows, entities, seed, rgb_dims, audio_dims, float(mean_tags))
    model = _build_model(spec)
    names = np.asarray(entity_names(entities), dtype=object)

    features = np.empty((rows, spec.dims), dtype=np.float32)
    tags: list[list[str]] = []
    for c, start, n in spec.chunks():
        tag_idx, counts = _fill_chunk(spec, model, c, features[start : start + n])
        flat = names[tag_idx].tolist()
        offsets = np.concatenate(([0], np.cumsum(counts))).tolist()
        tags.extend(flat[offsets[i] : offsets[i + 1]] for i in range(n))

    columns = rgb_columns(rgb_dims) + audio_columns(audio_dims)
    frame = pd.DataFrame(features, columns=columns, copy=False)
    frame.insert(0, "video_id", pd.Series(_video_ids(0, rows, rows), dtype="str"))
    frame.insert(len(frame.columns), "tags", pd.Series(tags, dtype=object))
    return frame


def _arrow_schema(rgb_dims: int, audio_dims: int) -> pa.Schema:
    fields = [pa.field("video_id", pa.string(), nullable=False)]
    fields += [pa.field(c, pa.float32()) for c in rgb_columns(rgb_dims)]
    fields += [pa.field(c, pa.float32()) for c in audio_columns(audio_dims)]
    fields.append(pa.field("tags", pa.list_(pa.string())))
    return pa.schema(fields)


def write_videos(
    path: Path,
    rows: int,
    entities: int = 20,
    *,
    seed: int = 0,
    rgb_dims: int = 1024,
    audio_dims: int = 128,
    row_group_size: int = 50_000,
    mean_tags: float = 3.0,
) -> Path:
    """Stream the rows of :func:`generate_videos` (same args) into a Parquet file.

    Rows are written in row groups of exactly ``row_group_size`` (the last may be shorter),
    never materialising the whole dataset. The file is written to a temporary file in the
    target directory and moved into place with :func:`os.replace`, so readers never see a
    partial file. Parent directories are created. Returns ``path``.
    """
    _check_args(rows, entities, seed, rgb_dims, audio_dims, mean_tags)
    _check_int("row_group_size", row_group_size, minimum=1)
    path = Path(path)
    spec = _Spec(rows, entities, seed, rgb_dims, audio_dims, float(mean_tags))
    model = _build_model(spec)
    schema = _arrow_schema(rgb_dims, audio_dims)
    names = pa.array(entity_names(entities), type=pa.string())

    path.parent.mkdir(parents=True, exist_ok=True)
    # Dictionary-encoding 1000+ high-entropy float columns is slow and makes the file larger;
    # only the low-cardinality tag strings benefit from it.
    with (
        _atomic(path) as tmp,
        pq.ParquetWriter(tmp, schema, use_dictionary=["tags"]) as writer,
    ):
        pending: list[pa.Table] = []
        pending_rows = 0
        for c, start, n in spec.chunks():
            feats = np.empty((n, spec.dims), dtype=np.float32)
            tag_idx, counts = _fill_chunk(spec, model, c, feats)
            columns_major = np.ascontiguousarray(feats.T)
            del feats
            offsets = pa.array(np.concatenate(([0], np.cumsum(counts))), type=pa.int32())
            tag_values = names.take(pa.array(tag_idx))
            arrays: list[pa.Array] = [pa.array(_video_ids(start, n, rows), type=pa.string())]
            arrays += [pa.array(col) for col in columns_major]
            arrays.append(pa.ListArray.from_arrays(offsets, tag_values))
            pending.append(pa.Table.from_arrays(arrays, schema=schema))
            pending_rows += n
            del columns_major, arrays
            while pending_rows >= row_group_size:
                table = pa.concat_tables(pending)
                writer.write_table(table.slice(0, row_group_size), row_group_size)
                rest = table.slice(row_group_size)
                pending, pending_rows = [rest], rest.num_rows
        if pending_rows:
            writer.write_table(pa.concat_tables(pending), row_group_size)
    return path


# --------------------------------------------------------------------------- YouTube-8M files


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path``, moved onto it when the block ends without error."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file 0600; a generated dataset gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _shard_names(prefix: str, shards: int) -> list[str]:
    width = max(4, len(str(shards - 1)))
    return [f"{prefix}{s:0{width}d}.tfrecord" for s in range(shards)]


def write_video_shards(
    directory: Path,
    rows: int,
    entities: int = 20,
    *,
    shards: int = 4,
    seed: int = 0,
    rgb_dims: int = 1024,
    audio_dims: int = 128,
    mean_tags: float = 3.0,
    prefix: str = "train",
) -> list[Path]:
    """Write the rows of :func:`generate_videos` (same args) as YouTube-8M video-level shards.

    ``<prefix>0000.tfrecord`` ... in ``directory`` (created), ``shards`` contiguous runs of
    rows (sizes differing by at most one), so reading the shards in name order gives the rows
    in order. Each record is a ``tensorflow.Example`` with ``id`` (the video id, bytes),
    ``labels`` (the tags' entity indices, int64, ascending), ``mean_rgb`` and ``mean_audio``
    (float32, bit-identical to the frame's columns). Rows are generated chunk by chunk (memory
    is about one chunk); each shard is written to a temporary file and moved into place, and
    older shards of the same prefix beyond ``shards`` (from a larger earlier run) are removed
    so that a glob over the directory sees only this dataset. Needs the `tfrecords` package
    (Linux). Returns the shard paths.
    """
    from ml_assets.ml.tfrecord import record_writer

    _check_args(rows, entities, seed, rgb_dims, audio_dims, mean_tags)
    _check_int("shards", shards, minimum=1)
    if shards > rows:
        raise ValueError(f"shards must be <= rows ({rows}), got {shards}")
    if not prefix or Path(prefix).name != prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain file name prefix, got {prefix!r}")
    directory = Path(directory)
    spec = _Spec(rows, entities, seed, rgb_dims, audio_dims, float(mean_tags))
    model = _build_model(spec)
    paths = [directory / name for name in _shard_names(prefix, shards)]
    bounds = [s * rows // shards for s in range(shards + 1)]  # shard s: bounds[s]:bounds[s+1]

    records = _video_records(spec, model)
    directory.mkdir(parents=True, exist_ok=True)
    for path, first, last in zip(paths, bounds, bounds[1:], strict=False):
        with _atomic(path) as tmp:
            writer = record_writer(tmp)
            try:
                for record in itertools.islice(records, last - first):
                    writer.write(record)
            finally:
                writer.close()
    _remove_stale_shards(directory, prefix, {p.name for p in paths})
    return paths


def _video_records(spec: _Spec, model: _Model) -> Iterator[bytes]:
    """The rows of `generate_videos` as serialized ``tensorflow.Example`` records, in order,
    generated one chunk at a time."""
    from ml_assets.ml.tfrecord import example_bytes

    for c, start, n in spec.chunks():
        feats = np.empty((n, spec.dims), dtype=np.float32)
        tag_idx, counts = _fill_chunk(spec, model, c, feats)
        offsets = np.concatenate(([0], np.cumsum(counts))).tolist()
        for r, video_id in enumerate(_video_ids(start, n, spec.rows)):
            yield example_bytes(
                {
                    "id": video_id.encode("utf-8"),
                    "labels": tag_idx[offsets[r] : offsets[r + 1]],
                    "mean_rgb": feats[r, : spec.rgb_dims],
                    "mean_audio": feats[r, spec.rgb_dims :],
                }
            )
        del feats, tag_idx


def _remove_stale_shards(directory: Path, prefix: str, keep: set[str]) -> None:
    pattern = re.compile(rf"{re.escape(prefix)}\d{{4,}}\.tfrecord")
    for path in directory.iterdir():
        if pattern.fullmatch(path.name) and path.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


VOCABULARY_COLUMNS = (
    "Index",
    "TrainVideoCount",
    "KnowledgeGraphId",
    "Name",
    "WikiUrl",
    "Vertical1",
    "Vertical2",
    "Vertical3",
    "WikiDescription",
)
_PERSPECTIVE_NAMES = {"audio": "Audio", "visual": "Visual", "both": "Audio-visual"}
_PERSPECTIVE_FEATURES = {
    "audio": "mean_audio only",
    "visual": "mean_rgb only",
    "both": "both mean_rgb and mean_audio",
}


def _tag_probabilities(entities: int, mean_tags: float = 3.0) -> npt.NDArray[np.float64]:
    """Each entity's probability of being on a video, estimated by running the generator's
    tag sampler on a fixed simulation seed (at least 2**12 videos, up to 2**16)."""
    _check_args(1, entities, 0, 1, 1, mean_tags)
    videos = max(1 << 12, min(1 << 16, (1 << 24) // entities))
    spec = _Spec(videos, entities, 2**31 - 1, 1, 1, float(mean_tags))
    model = _build_model(spec)
    hits = np.zeros(entities, dtype=np.int64)
    for c, _, n in spec.chunks():
        tag_idx, _ = _fill_chunk(spec, model, c, np.empty((n, spec.dims), dtype=np.float32))
        hits += np.bincount(tag_idx, minlength=entities)
    return hits / videos


def write_vocabulary(
    path: Path, entities: int, *, rows: int = 20_000, mean_tags: float = 3.0
) -> Path:
    """Write a YouTube-8M ``vocabulary.csv`` for the synthetic entities (one row each).

    The real file's columns (:data:`VOCABULARY_COLUMNS`); ``Name`` says where an entity's
    signal is (``"Audio entity 00"``, ``"Visual entity 01"``, ``"Audio-visual entity 04"``;
    see :func:`entity_perspectives`), ``TrainVideoCount`` is the expected number of videos
    tagged with it among ``rows`` generated with ``mean_tags``, and the rest are placeholders
    (``/m/0synth00``, an example.org URL). Written atomically; returns ``path``.
    """
    _check_args(max(1, rows), entities, 0, 1, 1, mean_tags)
    _check_int("rows", rows, minimum=0)
    path = Path(path)
    probabilities = _tag_probabilities(entities, mean_tags)
    width = max(2, len(str(entities - 1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(VOCABULARY_COLUMNS)
        for i, perspective in enumerate(entity_perspectives(entities).values()):
            number = f"{i:0{width}d}"
            kind = _PERSPECTIVE_NAMES[perspective]
            out.writerow(
                (
                    i,
                    round(rows * float(probabilities[i])),
                    f"/m/0synth{number}",
                    f"{kind} entity {number}",
                    f"https://example.org/wiki/Synthetic_entity_{number}",
                    "Synthetic",
                    kind,
                    "",
                    f"Synthetic entity {number} ({perspective}): its signal is in "
                    f"{_PERSPECTIVE_FEATURES[perspective]}; on about "
                    f"{100 * probabilities[i]:.1f}% of videos.",
                )
            )
    return path
