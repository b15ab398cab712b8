"""Reading, cleaning, validating and splitting a tagging dataset (no Dagster here).

Both task types share one representation: a feature frame `X` and a 0/1 matrix `Y` with one
column per entity. Multi-class data has exactly one 1 per row; multi-label data any number.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ml_assets.errors import UserError

EMBEDDED_SOURCES: Final = frozenset({"sklearn_digits"})
ID_COLUMN: Final = "__id"
TAG_PREFIX: Final = "__tag_"
PARTS: Final = ("train", "validation", "requests")
_CSV_SUFFIXES: Final = frozenset({".csv"})
_PARQUET_SUFFIXES: Final = frozenset({".parquet", ".pq"})
TFRECORD_SUFFIXES: Final = frozenset({".tfrecord", ".tfrecords"})
# Rows per chunk when streaming a dataset into Parquet and hashing it: bounded memory.
_CHUNK_BYTES: Final = 8 * 2**20
# Rows per batch when streaming Parquet in: larger batches hold more decoded pages at once, for
# no measurable gain in speed (bench f).
_PARQUET_BATCH_ROWS: Final = 4_096

Task = Literal["multiclass", "multilabel"]


class DatasetError(UserError):
    """The source cannot be ingested; the message names the file, column or class."""


@dataclass(frozen=True)
class Dataset:
    """Cleaned records: ids, numeric features and a 0/1 entity matrix."""

    task: Task
    entities: list[str]
    ids: np.ndarray
    X: pd.DataFrame
    Y: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def features(self) -> list[str]:
        return [str(c) for c in self.X.columns]

    def take(self, rows: np.ndarray) -> Dataset:
        return Dataset(
            task=self.task,
            entities=self.entities,
            ids=self.ids[rows],
            X=self.X.iloc[rows].reset_index(drop=True),
            Y=self.Y[rows],
        )

    def to_frame(self) -> pd.DataFrame:
        """The storage layout: `__id`, features, then `__tag_<i>` uint8 columns."""
        tags = pd.DataFrame(self.Y, columns=[f"{TAG_PREFIX}{i}" for i in range(len(self.entities))])
        ids = pd.DataFrame({ID_COLUMN: self.ids})
        return pd.concat([ids, self.X.reset_index(drop=True), tags], axis=1)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, task: Task, entities: list[str]) -> Dataset:
        tag_columns = [f"{TAG_PREFIX}{i}" for i in range(len(entities))]
        missing = [c for c in [ID_COLUMN, *tag_columns] if c not in frame.columns]
        if missing:
            raise DatasetError(f"stored dataset part lacks columns {missing}")
        features = [c for c in frame.columns if c != ID_COLUMN and c not in set(tag_columns)]
        return cls(
            task=task,
            entities=entities,
            ids=frame[ID_COLUMN].astype(str).to_numpy(),
            X=frame[features],
            Y=frame[tag_columns].to_numpy(dtype=np.uint8),
        )


# --- reading -------------------------------------------------------------------------------


def _under(base_dir: Path, relative: str) -> str:
    """`relative` from the config's folder, `..` folded, so messages name the file plainly."""
    return os.path.normpath(base_dir / relative)


def resolve_source_files(source: str, base_dir: Path) -> list[Path]:
    """The files a `dataset.source` path or glob names, sorted; errors name the source."""
    pattern = source if Path(source).is_absolute() else _under(base_dir, source)
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        if not files:
            raise DatasetError(f"dataset.source {source!r}: no file matches this glob")
    else:
        files = [Path(pattern)]
        if not files[0].exists():
            raise DatasetError(f"dataset.source {source!r}: file not found ({files[0]})")
    for path in files:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise DatasetError(
                f"dataset.source {source!r}: {path} is a directory; name a file or a glob "
                "such as data/*.parquet"
            )
        if not stat.S_ISREG(mode):
            raise DatasetError(f"dataset.source {source!r}: {path} is not a regular file")
        if path.suffix.lower() not in _CSV_SUFFIXES | _PARQUET_SUFFIXES | TFRECORD_SUFFIXES:
            raise DatasetError(
                f"dataset.source {source!r}: {path} has suffix {path.suffix!r}; "
                "expected .csv, .parquet, .pq, .tfrecord or .tfrecords"
            )
    formats = {source_format(path) for path in files}
    if len(formats) > 1:
        raise DatasetError(
            f"dataset.source {source!r}: matches files of several formats "
            f"({', '.join(sorted(formats))}); name one format"
        )
    return files


def source_format(path: Path) -> Literal["csv", "parquet", "tfrecord"]:
    """A source file's format, from its suffix."""
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in TFRECORD_SUFFIXES:
        return "tfrecord"
    return "parquet"


def _read_file(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() in _CSV_SUFFIXES:
            return pd.read_csv(path)
        return pq.read_table(path).to_pandas()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: malformed CSV: {error}") from None
    except PermissionError as error:
        raise DatasetError(f"{path}: cannot read the file: {error.strerror}") from None
    except (pa.ArrowException, OSError) as error:
        raise DatasetError(f"{path}: cannot read as Parquet: {error}") from None


def load_digits_frame() -> pd.DataFrame:
    """scikit-learn's bundled digits (1,797 8×8 images) as `pixel_*` columns and `label`."""
    from sklearn.datasets import load_digits

    bunch = load_digits(as_frame=True)
    frame: pd.DataFrame = bunch.frame.rename(columns={"target": "label"})
    return frame


def read_source(source: str, base_dir: Path) -> pd.DataFrame:
    """Read the embedded dataset or every file of a path/glob into one frame."""
    if source in EMBEDDED_SOURCES:
        return load_digits_frame()
    frames: list[pd.DataFrame] = []
    first_columns: list[str] | None = None
    for path in resolve_source_files(source, base_dir):
        frame = _read_file(path)
        columns = [str(c) for c in frame.columns]
        if first_columns is None:
            first_columns = columns
        _check_same_columns(path, columns, first_columns)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def resolve_vocabulary(vocabulary: str | None, base_dir: Path) -> Path | None:
    """The `dataset.vocabulary` file, relative paths from the config's folder."""
    if vocabulary is None:
        return None
    path = Path(vocabulary if Path(vocabulary).is_absolute() else _under(base_dir, vocabulary))
    if not path.is_file():
        raise DatasetError(f"dataset.vocabulary {vocabulary!r}: file not found ({path})")
    return path


def load_dataset(
    source: str,
    base_dir: Path,
    label: str | list[str],
    id_column: str | None,
    vocabulary: str | None = None,
) -> tuple[Dataset, dict[str, int]]:
    """Read and clean `dataset.source` into one `Dataset`.

    Parquet and TFRecord sources stream into one preallocated float32 feature block (the
    decoded data is held once, plus a batch); CSV and the embedded dataset go through pandas.
    """
    vocab_path = resolve_vocabulary(vocabulary, base_dir)
    names = None if vocab_path is None else read_vocabulary(vocab_path)
    if source in EMBEDDED_SOURCES:
        return clean(read_source(source, base_dir), label, id_column, source, names)
    paths = resolve_source_files(source, base_dir)
    kind = source_format(paths[0])
    if kind == "parquet":
        return _load_parquet(paths, label, id_column, names, source)
    if kind == "tfrecord":
        return _load_tfrecord(paths, label, id_column, names, source)
    return clean(read_source(source, base_dir), label, id_column, source, names)


def _load_tfrecord(
    paths: Sequence[Path],
    label: str | list[str],
    id_column: str | None,
    vocabulary: Mapping[int, str] | None,
    source: str,
) -> tuple[Dataset, dict[str, int]]:
    from ml_assets.ml.tfrecord import read_video_shards

    if not isinstance(label, str):
        raise DatasetError(
            f"dataset.label: a TFRecord source has one int64 label feature (YouTube-8M: "
            f"'labels'), not a list of columns {label}"
        )
    records = read_video_shards(paths, label=label, id_column=id_column)
    entities, y = labels_from_csr(
        records.label_offsets, records.label_values, vocabulary, f"{source}: feature {label!r}"
    )
    return dataset_from_arrays(
        task="multilabel",
        entities=entities,
        ids=records.ids,
        X=records.X,
        features=records.features,
        Y=y,
        source=source,
        dropped={"unlabeled": 0},
        id_column=id_column,
    )


def _is_numeric(field: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(field) or pa.types.is_floating(field) or pa.types.is_boolean(field)
    )


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        # No pre-buffering: it holds a whole row group's column chunks at once (bench f).
        return pq.ParquetFile(path, pre_buffer=False)
    except PermissionError as error:
        raise DatasetError(f"{path}: cannot read the file: {error.strerror}") from None
    except (pa.ArrowException, OSError) as error:
        raise DatasetError(f"{path}: cannot read as Parquet: {error}") from None


def _load_parquet(
    paths: Sequence[Path],
    label: str | list[str],
    id_column: str | None,
    vocabulary: Mapping[int, str] | None,
    source: str,
) -> tuple[Dataset, dict[str, int]]:
    """Stream Parquet row groups into one preallocated float32 block, a batch at a time."""
    files = [_open_parquet(path) for path in paths]
    schema = files[0].schema_arrow
    columns = [str(c) for c in schema.names]
    for path, handle in zip(paths[1:], files[1:], strict=True):
        _check_same_columns(path, [str(c) for c in handle.schema_arrow.names], columns)
    label_columns, features = _roles(columns, label, id_column, source)
    _check_features(features, [_is_numeric(schema.field(c).type) for c in features], source)
    total = sum(handle.metadata.num_rows for handle in files)
    if total == 0:
        raise DatasetError(f"{source}: the dataset has no records")
    # Labels and ids first (small columns), so that their Arrow buffers are gone before the
    # feature block is filled: the peak is then the block, the labels and one batch.
    others = label_columns + ([id_column] if id_column else [])
    try:
        table = pa.concat_tables(
            [handle.read(columns=others, use_threads=False) for handle in files]
        )
    except (pa.ArrowException, OSError) as error:
        raise DatasetError(f"{source}: cannot read as Parquet: {error}") from None
    unlabeled = np.zeros(total, dtype=bool)
    for name in label_columns:
        unlabeled |= table.column(name).is_null().to_numpy(zero_copy_only=False)
    dropped = {"unlabeled": int(unlabeled.sum())}
    if dropped["unlabeled"] == total:
        raise DatasetError(f"{source}: no record has a label in {label_columns}")
    if dropped["unlabeled"]:
        table = table.filter(pa.array(~unlabeled))
    task, entities, y = _arrow_labels(table, label, vocabulary, source)
    if id_column is None:
        ids = np.array([f"row_{i}" for i in range(len(table))], dtype=object)
    else:
        column = table.column(id_column)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            ids = column.to_numpy(zero_copy_only=False)  # one Python string per id
        else:
            ids = column.to_pandas().astype(str).to_numpy(dtype=object)
    del table
    pa.default_memory_pool().release_unused()  # what decoding freed, back to the system

    x = np.empty((total, len(features)), dtype=np.float32)
    row = 0
    batch_rows = min(_chunk_rows(4 * len(features)), _PARQUET_BATCH_ROWS)
    for path, handle in zip(paths, files, strict=True):
        try:
            for batch in handle.iter_batches(
                batch_size=batch_rows, columns=features, use_threads=False
            ):
                end = row + batch.num_rows
                for j in range(len(features)):
                    column = pc.cast(batch.column(j), pa.float32(), safe=False)
                    x[row:end, j] = column.to_numpy(zero_copy_only=False)
                row = end
        except (pa.ArrowException, OSError) as error:
            raise DatasetError(f"{path}: cannot read as Parquet: {error}") from None
    if dropped["unlabeled"]:
        x = _compact(x, np.flatnonzero(~unlabeled))
    return dataset_from_arrays(
        task=task,
        entities=entities,
        ids=ids,
        X=x,
        features=features,
        Y=y,
        source=source,
        dropped=dropped,
        id_column=id_column,
    )


def _compact(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The rows `keep` (ascending) moved to the front of `x` in place; a view of them."""
    step = _chunk_rows(4 * x.shape[1])
    for start in range(0, len(keep), step):
        rows = keep[start : start + step]
        x[start : start + len(rows)] = x[rows]  # rows >= their target: nothing is overwritten
    return x[: len(keep)]


def _arrow_labels(
    table: pa.Table,
    label: str | list[str],
    vocabulary: Mapping[int, str] | None,
    source: str,
) -> tuple[Task, list[str], np.ndarray]:
    if isinstance(label, str):
        column = table.column(label).combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
            offsets = np.zeros(len(column) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            flat = column.flatten()
            where = f"{source}: label column {label!r}"
            if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
                # Names: one small dictionary, not a Python string per tag.
                encoded = pc.dictionary_encode(flat)
                codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
                names = [str(n) for n in encoded.dictionary.to_pylist()]
                entities, y = labels_from_codes(offsets, codes, names, vocabulary, where)
            else:
                values = flat.to_numpy(zero_copy_only=False)
                entities, y = labels_from_csr(offsets, values, vocabulary, where)
            return "multilabel", entities, y
    frame = table.select([label] if isinstance(label, str) else label).to_pandas()
    return _labels(frame, label, vocabulary, source)


# --- labels and the vocabulary ---------------------------------------------------------------


def _entity_name(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _natural_key(name: str) -> tuple[int, float | str]:
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


def read_vocabulary(path: Path) -> dict[int, str]:
    """A YouTube-8M `vocabulary.csv` (columns `Index`, `Name`, …): label index → entity name.

    A missing name falls back to the index; a name used twice gets its index appended, so every
    entity keeps its own prediction column.
    """
    try:
        frame = pd.read_csv(path, usecols=lambda c: c in {"Index", "Name"})
    except FileNotFoundError:
        raise DatasetError(f"dataset.vocabulary: file not found ({path})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: malformed vocabulary CSV: {error}") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the vocabulary: {error.strerror}") from None
    missing = [c for c in ("Index", "Name") if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path}: vocabulary lacks column(s) {missing}; expected YouTube-8M's "
            "vocabulary.csv columns Index, Name, …"
        )
    index = pd.to_numeric(frame["Index"], errors="coerce")
    bad = index.isna() | (index < 0) | (index % 1 != 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(
            f"{path}: column 'Index' must hold non-negative whole numbers; "
            f"row {row + 2} has {frame['Index'].iloc[row]!r}"
        )
    indices = index.astype(np.int64)
    duplicated = indices[indices.duplicated()]
    if len(duplicated):
        raise DatasetError(f"{path}: index {int(duplicated.iloc[0])} appears more than once")
    names = [
        str(i) if pd.isna(n) or not str(n).strip() else str(n).strip()
        for i, n in zip(indices, frame["Name"], strict=True)
    ]
    counts = pd.Series(names).value_counts()
    return {
        int(i): f"{n} ({i})" if counts[n] > 1 else n for i, n in zip(indices, names, strict=True)
    }


def _index_names(
    indices: np.ndarray, vocabulary: Mapping[int, str] | None, where: str
) -> list[str]:
    """Entity names of sorted label indices: the vocabulary's, or the indices themselves."""
    if (indices < 0).any():
        raise DatasetError(f"{where}: label indices must be >= 0, found {int(indices.min())}")
    if vocabulary is None:
        return [str(int(i)) for i in indices]
    unknown = [int(i) for i in indices if int(i) not in vocabulary]
    if unknown:
        raise DatasetError(
            f"{where}: {len(unknown)} label index(es) are not in dataset.vocabulary, "
            f"e.g. {_preview(unknown, 5)}"
        )
    return [vocabulary[int(i)] for i in indices]


def _as_indices(values: np.ndarray, where: str) -> np.ndarray | None:
    """`values` as int64 label indices, or None when they are not whole numbers."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    if values.dtype.kind == "f":
        if len(values) and not np.isfinite(values).all():
            return None
        whole = values == np.round(values)
        return values.astype(np.int64) if whole.all() else None
    return None


def labels_from_csr(
    offsets: np.ndarray,
    values: np.ndarray,
    vocabulary: Mapping[int, str] | None,
    where: str,
) -> tuple[list[str], np.ndarray]:
    """Entities and the 0/1 matrix of per-record tag lists given as CSR (`values` of record r
    are `values[offsets[r]:offsets[r + 1]]`): entity indices, or names."""
    indices = _as_indices(values, where)
    if indices is None:  # names: encode them, then as names given as codes
        names = np.asarray([_entity_name(v) for v in values], dtype=object)
        uniques, codes = np.unique(names, return_inverse=True)
        return labels_from_codes(offsets, codes, [str(u) for u in uniques], vocabulary, where)
    uniques, inverse = np.unique(indices, return_inverse=True)
    return _tag_matrix(offsets, inverse, _index_names(uniques, vocabulary, where), where)


def labels_from_codes(
    offsets: np.ndarray,
    codes: np.ndarray,
    names: Sequence[str],
    vocabulary: Mapping[int, str] | None,
    where: str,
) -> tuple[list[str], np.ndarray]:
    """`labels_from_csr` for tag names given as codes into `names` (a dictionary encoding)."""
    if vocabulary is not None:
        raise DatasetError(
            f"{where}: dataset.vocabulary maps label indices to names, but the labels are "
            "names already; leave dataset.vocabulary out"
        )
    order = sorted(range(len(names)), key=lambda i: _natural_key(names[i]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return _tag_matrix(offsets, rank[codes], [names[i] for i in order], where)


def _tag_matrix(
    offsets: np.ndarray, columns: np.ndarray, entities: list[str], where: str
) -> tuple[list[str], np.ndarray]:
    """The 0/1 matrix with a 1 at (record, column) for every tag (CSR `offsets`)."""
    if not entities:
        raise DatasetError(f"{where}: no record has any tag")
    n = len(offsets) - 1
    y = np.zeros((n, len(entities)), dtype=np.uint8)
    y[np.repeat(np.arange(n), np.diff(offsets)), columns.reshape(-1)] = 1
    return entities, y


def _labels_from_scalars(
    values: pd.Series, vocabulary: Mapping[int, str] | None, where: str
) -> tuple[list[str], np.ndarray]:
    """Multi-class: one label per record."""
    indices = _as_indices(values.to_numpy(), where) if vocabulary is not None else None
    if vocabulary is not None and indices is None:
        raise DatasetError(
            f"{where}: dataset.vocabulary maps label indices to names, but the labels are not "
            "whole numbers"
        )
    inverse: np.ndarray
    if indices is not None:
        uniques, inverse = np.unique(indices, return_inverse=True)
        entities = _index_names(uniques, vocabulary, where)
    else:
        names = values.map(_entity_name)
        entities = sorted(set(names), key=_natural_key)
        inverse = names.map({e: i for i, e in enumerate(entities)}).to_numpy()
    y = np.zeros((len(values), len(entities)), dtype=np.uint8)
    y[np.arange(len(values)), inverse] = 1
    return entities, y


def _is_list_column(column: pd.Series) -> bool:
    sample = column.dropna().head(20)
    return len(sample) > 0 and all(isinstance(v, list | tuple | np.ndarray) for v in sample)


def _csr_from_lists(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    lists = [[] if v is None else list(v) for v in column]
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in lists], out=offsets[1:])
    flat = [t for tags in lists for t in tags]
    return offsets, np.asarray(flat) if flat else np.zeros(0, dtype=np.int64)


def _labels_from_columns(
    frame: pd.DataFrame, labels: Sequence[str]
) -> tuple[Task, list[str], np.ndarray]:
    matrix = np.zeros((len(frame), len(labels)), dtype=np.uint8)
    for j, name in enumerate(labels):
        column = frame[name]
        values = pd.to_numeric(column, errors="coerce") if column.dtype != bool else column
        bad = ~pd.Series(values).isin([0, 1, True, False])
        if bad.any():
            example = column[bad.to_numpy()].iloc[0]
            if isinstance(example, np.generic):  # show 2, not np.int64(2)
                example = example.item()
            raise DatasetError(
                f"label column {name!r}: expected 0/1 values, found {example!r} "
                f"in {int(bad.sum())} record(s)"
            )
        matrix[:, j] = np.asarray(values, dtype=np.uint8)
    return "multilabel", [str(c) for c in labels], matrix


def _labels(
    frame: pd.DataFrame,
    label: str | list[str],
    vocabulary: Mapping[int, str] | None,
    source: str,
) -> tuple[Task, list[str], np.ndarray]:
    """The task, entities and 0/1 matrix of already labeled records' label column(s)."""
    where = f"{source}: label column {label!r}"
    if not isinstance(label, str):
        if vocabulary is not None:
            raise DatasetError(
                f"{source}: dataset.vocabulary applies to a label column of indices, not to "
                "a list of 0/1 columns (their names are the entities)"
            )
        return _labels_from_columns(frame, label)
    column = frame[label]
    if _is_list_column(column):
        offsets, values = _csr_from_lists(column)
        entities, y = labels_from_csr(offsets, values, vocabulary, where)
        return "multilabel", entities, y
    entities, y = _labels_from_scalars(column, vocabulary, where)
    return "multiclass", entities, y


# --- cleaning and validation -----------------------------------------------------------------


def dataset_from_arrays(
    *,
    task: Task,
    entities: list[str],
    ids: np.ndarray,
    X: np.ndarray,
    features: list[str],
    Y: np.ndarray,
    source: str,
    dropped: dict[str, int],
    id_column: str | None = None,
) -> tuple[Dataset, dict[str, int]]:
    """The `Dataset` over one float32 feature block (not copied): checks the ids, and turns
    infinite values into missing ones in place (counted in `dropped`)."""
    duplicated = pd.Series([])
    if len(set(ids)) != len(ids):  # a set of references: cheaper than pandas' hash table
        series = pd.Series(ids)
        duplicated = series[series.duplicated()]
    if len(duplicated):
        raise DatasetError(
            f"{source}: id column {id_column!r} has {len(duplicated)} duplicate value(s), "
            f"e.g. {duplicated.iloc[0]!r}"
        )
    infinite = 0
    step = _chunk_rows(X.shape[1] * 4)
    for start in range(0, len(X), step):
        block = X[start : start + step]
        mask = np.isinf(block)
        count = int(mask.sum())
        if count:
            block[mask] = np.nan
            infinite += count
    dropped = {**dropped, "infinite_values_to_nan": infinite}
    frame = pd.DataFrame(X, columns=features, copy=False)
    return Dataset(task=task, entities=entities, ids=ids, X=frame, Y=Y), dropped


def clean(
    frame: pd.DataFrame,
    label: str | list[str],
    id_column: str | None,
    source: str = "source",
    vocabulary: Mapping[int, str] | None = None,
) -> tuple[Dataset, dict[str, int]]:
    """Validate columns, drop unlabeled records and build the uniform `Dataset`.

    Non-numeric feature columns are rejected (not one-hot encoded): encode them upstream, where
    the meaning of each category is known. Returns the dataset and counts of what was dropped.
    """
    if len(frame) == 0:
        raise DatasetError(f"{source}: the dataset has no records")
    frame.columns = [str(c) for c in frame.columns]
    label_columns, feature_columns = _roles(list(frame.columns), label, id_column, source)

    unlabeled = frame[label_columns].isna().any(axis=1)
    dropped = {"unlabeled": int(unlabeled.sum())}
    if dropped["unlabeled"]:
        frame = frame.loc[~unlabeled].reset_index(drop=True)
    if len(frame) == 0:
        raise DatasetError(f"{source}: no record has a label in {label_columns}")

    task, entities, y = _labels(frame, label, vocabulary, source)
    if id_column is None:
        ids = np.array([f"row_{i}" for i in range(len(frame))], dtype=object)
    else:
        ids = frame[id_column].astype(str).to_numpy(dtype=object)

    _check_features(feature_columns, [_numeric(frame[c].dtype) for c in feature_columns], source)
    x = np.ascontiguousarray(frame[feature_columns].to_numpy(dtype=np.float32, na_value=np.nan))
    return dataset_from_arrays(
        task=task,
        entities=entities,
        ids=ids,
        X=x,
        features=feature_columns,
        Y=y,
        source=source,
        dropped=dropped,
        id_column=id_column,
    )


def _check_same_columns(path: Path, columns: Sequence[str], first: Sequence[str]) -> None:
    """A file of a multi-file source must have the first file's columns."""
    if set(columns) != set(first):
        extra = sorted(set(columns) - set(first))
        lacking = sorted(set(first) - set(columns))
        raise DatasetError(
            f"{path}: columns differ from the first file's (extra {extra}, missing {lacking})"
        )


def _roles(
    columns: Sequence[str], label: str | list[str], id_column: str | None, source: str
) -> tuple[list[str], list[str]]:
    """(label columns, feature columns) of a source with `columns`: every other column but
    the id is a feature. Absent label or id columns are named."""
    label_columns = [label] if isinstance(label, str) else list(label)
    for name in label_columns:
        if name not in columns:
            raise DatasetError(
                f"{source}: label column {name!r} (dataset.label) is absent; "
                f"columns are {_preview(list(columns))}"
            )
    if id_column is not None and id_column not in columns:
        raise DatasetError(f"{source}: id column {id_column!r} (dataset.id) is absent")
    excluded = set(label_columns) | ({id_column} if id_column else set())
    return label_columns, [c for c in columns if c not in excluded]


def _numeric(dtype: Any) -> bool:
    return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


def _check_features(names: Sequence[str], numeric: Sequence[bool], source: str) -> None:
    """Features there are, and each is numeric (or boolean)."""
    if not names:
        raise DatasetError(f"{source}: no feature columns besides the label and id columns")
    non_numeric = [name for name, ok in zip(names, numeric, strict=True) if not ok]
    if non_numeric:
        raise DatasetError(
            f"{source}: non-numeric feature column(s) {_preview(non_numeric)}; "
            "encode them as numbers upstream or drop them (ml_assets does not one-hot encode)"
        )


def _preview(names: Sequence[object], limit: int = 8) -> str:
    items = [str(n) for n in names]
    shown = ", ".join(repr(n) for n in items[:limit])
    return f"[{shown}{', …' if len(items) > limit else ''}]"


def _chunk_rows(row_bytes: int) -> int:
    """Rows per chunk of about `_CHUNK_BYTES` when a row takes `row_bytes`."""
    return max(256, _CHUNK_BYTES // max(row_bytes, 1))


# --- splitting -------------------------------------------------------------------------------


def _part_sizes(n: int, validation: float, serving: float) -> tuple[int, int]:
    n_val = max(1, round(n * validation))
    n_req = max(1, round(n * serving))
    return n_val, n_req


def split_rows(
    dataset: Dataset, *, validation: float, serving: float, seed: int
) -> dict[str, np.ndarray]:
    """The sorted record indices of each part: a deterministic train/validation/requests split,
    stratified by class for multi-class. Nothing is copied."""
    rng = np.random.default_rng(seed)
    n = len(dataset)
    if dataset.task == "multiclass":
        classes = dataset.Y.argmax(axis=1)
        parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
        for c in range(len(dataset.entities)):
            members = np.flatnonzero(classes == c)
            if len(members) < 3:
                raise DatasetError(
                    f"class {dataset.entities[c]!r} has {len(members)} record(s); at least 3 "
                    "are needed to split it into train, validation and serving requests"
                )
            members = rng.permutation(members)
            n_val, n_req = _part_sizes(len(members), validation, serving)
            n_val = min(n_val, len(members) - 2)
            n_req = min(n_req, len(members) - n_val - 1)
            parts["validation"].append(members[:n_val])
            parts["requests"].append(members[n_val : n_val + n_req])
            parts["train"].append(members[n_val + n_req :])
        return {p: np.sort(np.concatenate(parts[p])) for p in PARTS}
    if n < 3:
        raise DatasetError(f"the dataset has {n} record(s); at least 3 are needed to split")
    order = rng.permutation(n)
    n_val, n_req = _part_sizes(n, validation, serving)
    n_val = min(n_val, n - 2)
    n_req = min(n_req, n - n_val - 1)
    return {
        "validation": np.sort(order[:n_val]),
        "requests": np.sort(order[n_val : n_val + n_req]),
        "train": np.sort(order[n_val + n_req :]),
    }


def split(dataset: Dataset, *, validation: float, serving: float, seed: int) -> dict[str, Dataset]:
    """`split_rows`, each part copied out as its own `Dataset`."""
    rows = split_rows(dataset, validation=validation, serving=serving, seed=seed)
    return {p: dataset.take(rows[p]) for p in PARTS}


def _chunks(dataset: Dataset, rows: np.ndarray) -> Iterator[np.ndarray]:
    step = _chunk_rows(4 * len(dataset.features) + len(dataset.entities))
    for start in range(0, len(rows), step):
        yield rows[start : start + step]


def _features(dataset: Dataset) -> np.ndarray:
    """The feature block as one float32 array (a view when it is one already)."""
    return dataset.X.to_numpy(dtype=np.float32, copy=False)


def split_content_hash(dataset: Dataset, rows: Mapping[str, np.ndarray]) -> str:
    """A hash of the cleaned, split content (independent of file encoding), read chunk by chunk
    so that no part is copied whole."""
    digest = hashlib.sha256()
    x = _features(dataset)
    for name in PARTS:
        part = rows[name]
        header = f"{name}:{dataset.task}:{len(part)}:{dataset.entities}:{dataset.features}"
        digest.update(header.encode())
        _hash_ids(digest, dataset.ids, part)
        for chunk in _chunks(dataset, part):
            digest.update(np.ascontiguousarray(x[chunk]).tobytes())
            digest.update(np.ascontiguousarray(dataset.Y[chunk]).tobytes())
    return digest.hexdigest()


def _hash_ids(digest: Any, ids: np.ndarray, rows: np.ndarray) -> None:
    """The ids of `rows` joined by U+001F, fed a slice at a time."""
    step = 65_536
    for start in range(0, len(rows), step):
        chunk = "\x1f".join(map(str, ids[rows[start : start + step]]))
        digest.update(((start > 0) * "\x1f" + chunk).encode())


def content_hash(parts: Mapping[str, Dataset]) -> str:
    """`split_content_hash` of parts already copied out (the same value)."""
    digest = hashlib.sha256()
    for name in PARTS:
        part = parts[name]
        every = np.arange(len(part))
        header = f"{name}:{part.task}:{len(part)}:{part.entities}:{part.features}"
        digest.update(header.encode())
        _hash_ids(digest, part.ids, every)
        x = _features(part)
        for chunk in _chunks(part, every):
            digest.update(np.ascontiguousarray(x[chunk]).tobytes())
            digest.update(np.ascontiguousarray(part.Y[chunk]).tobytes())
    return digest.hexdigest()


def write_part(dataset: Dataset, rows: np.ndarray, path: Path) -> None:
    """Stream the records `rows` of `dataset` into Parquet in the storage layout
    (`Dataset.to_frame`), a chunk at a time: memory stays at about one chunk."""
    tags = [f"{TAG_PREFIX}{i}" for i in range(len(dataset.entities))]
    schema = pa.schema(
        [pa.field(ID_COLUMN, pa.string())]
        + [pa.field(f, pa.float32()) for f in dataset.features]
        + [pa.field(t, pa.uint8()) for t in tags]
    )
    x = _features(dataset)
    with pq.ParquetWriter(path, schema, use_dictionary=[ID_COLUMN, *tags]) as writer:
        for chunk in [*_chunks(dataset, rows)] or [rows]:
            features = np.ascontiguousarray(x[chunk].T)
            labels = np.ascontiguousarray(dataset.Y[chunk].T)
            arrays = [pa.array(dataset.ids[chunk].astype(str), type=pa.string())]
            arrays += [pa.array(column) for column in features]
            arrays += [pa.array(column) for column in labels]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            del features, labels, arrays


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` as Parquet. Dictionary encoding only for the non-float columns: on dense
    float features it makes the file ~40% larger and the write ~5× slower (20k × 1,152)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    dictionary = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
    pq.write_table(table, path, use_dictionary=dictionary)


# --- request batches -------------------------------------------------------------------------


def batch_files(pattern: str, base_dir: Path) -> dict[str, Path]:
    """The request batch files `serving.requests` matches, by file name (a partition key).

    No match is no batch (the folder may be empty until a user drops a file in); two files of
    one name in different folders are an error naming both.
    """
    full = pattern if Path(pattern).is_absolute() else _under(base_dir, pattern)
    found: dict[str, Path] = {}
    for name in sorted(glob.glob(full, recursive=True)):
        path = Path(name)
        if not path.is_file() or path.name.startswith("."):
            continue  # folders, and files still being written by tools that use dot-files
        if path.suffix.lower() not in _CSV_SUFFIXES | _PARQUET_SUFFIXES | TFRECORD_SUFFIXES:
            continue
        if path.name in found:
            raise DatasetError(
                f"serving.requests {pattern!r}: two batch files are named {path.name!r} "
                f"({found[path.name]} and {path}); batch names must be unique"
            )
        found[path.name] = path
    return found


def read_request_batch(path: Path, features: Sequence[str], id_column: str | None) -> Dataset:
    """A batch of serving requests: the model features of every record (labels, if any, are
    ignored). A missing feature column fails the batch, naming the columns."""
    where = f"request batch {path.name}"
    kind = source_format(path)
    if kind == "tfrecord":
        from ml_assets.ml.tfrecord import read_video_shards

        records = read_video_shards([path], label=None, id_column=id_column)
        frame = pd.DataFrame(records.X, columns=records.features, copy=False)
        ids = records.ids
    else:
        frame = _read_file(path)
        frame.columns = [str(c) for c in frame.columns]
        if id_column is not None and id_column in frame.columns:
            ids = frame[id_column].astype(str).to_numpy(dtype=object)
        else:
            ids = np.array([f"{path.stem}:{i}" for i in range(len(frame))], dtype=object)
    if len(frame) == 0:
        raise DatasetError(f"{where}: the file has no records")
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise DatasetError(
            f"{where}: missing feature column(s) {_preview(missing)} ({len(missing)} of the "
            f"{len(features)} the models were trained on)"
        )
    _check_features(list(features), [_numeric(frame[f].dtype) for f in features], where)
    x = np.ascontiguousarray(frame[list(features)].to_numpy(dtype=np.float32, na_value=np.nan))
    x[np.isinf(x)] = np.nan
    duplicated = pd.Series(ids)[pd.Series(ids).duplicated()]
    if len(duplicated):
        raise DatasetError(
            f"{where}: {len(duplicated)} duplicate record id(s), e.g. {duplicated.iloc[0]!r}"
        )
    return Dataset(
        task="multilabel",
        entities=[],
        ids=ids,
        X=pd.DataFrame(x, columns=list(features), copy=False),
        Y=np.zeros((len(x), 0), dtype=np.uint8),
    )
