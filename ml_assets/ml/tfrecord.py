"""YouTube-8M video-level TFRecord shards, read and written without TensorFlow.

Framing
-------
A shard is a sequence of TFRecord frames (``uint64`` length, masked CRC32C of the length, the
data, masked CRC32C of the data). Frames are read and written by the `tfrecords` package
(TensorFlow's own C++ record reader and writer, CRC-verified, without TensorFlow); it ships
wheels for Linux only, so elsewhere reading or writing a shard raises :class:`DatasetError`.
It is imported on first use, never when this module is imported.

Records
-------
Each record is a serialized ``tensorflow.Example``. Its message classes are built at run time
from a ``FileDescriptorProto`` in a private descriptor pool (no generated code, and no clash
with a real TensorFlow in the same process). A video-level record has ``id`` (one bytes value),
``labels`` (int64 entity indices) and the float features ``mean_rgb`` (1024) and ``mean_audio``
(128).

Reading (:func:`read_video_shards`) counts the records of every shard from the framing first,
so the float32 feature block is allocated once, then parses each record straight into its row:
a float feature's packed values are taken from protobuf's own serialization of its
``FloatList`` (the last ``4 * n`` bytes of a packed ``repeated float`` are the values,
little-endian), several times faster than converting them one Python float at a time, and
bit-exact. Label indices go to a growing int64 buffer; the only Python objects kept per record
are the ids.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from ml_assets.ml.datasets import TFRECORD_SUFFIXES, DatasetError

__all__ = [
    "TFRECORD_SUFFIXES",
    "VideoRecords",
    "count_records",
    "example_bytes",
    "read_video_shards",
    "record_writer",
]

# Float features first in this order (YouTube-8M's), then any others by name.
_FLOAT_ORDER: Final = ("mean_rgb", "mean_audio")
_HEADER_BYTES: Final = 12  # uint64 length + masked CRC32C of the length
_FOOTER_BYTES: Final = 4  # masked CRC32C of the data
_KINDS: Final = {
    "bytes_list": "a bytes_list",
    "float_list": "a float_list",
    "int64_list": "an int64_list",
    None: "an empty Feature (no kind)",
}
_MISSING_PACKAGE: Final = (
    "TFRecord sources need the `tfrecords` package (TensorFlow's record reader without "
    "TensorFlow), available on Linux"
)


# --------------------------------------------------------------------------- the Example class


def _example_file() -> descriptor_pb2.FileDescriptorProto:
    """``tensorflow/core/example/{example,feature}.proto``, the messages a record holds."""
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="ml_assets/tf_example.proto", package="tensorflow", syntax="proto3"
    )

    def add(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int,
            *, repeated: bool = False, type_name: str = "", packed: bool = False,
            oneof: int | None = None) -> None:  # fmt: skip
        entry = message.field.add(
            name=name,
            number=number,
            type=kind,
            label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL,
        )
        if type_name:
            entry.type_name = type_name
        if packed:
            entry.options.packed = True
        if oneof is not None:
            entry.oneof_index = oneof

    for name, kind, packed in (
        ("BytesList", field.TYPE_BYTES, False),
        ("FloatList", field.TYPE_FLOAT, True),
        ("Int64List", field.TYPE_INT64, True),
    ):
        add(file.message_type.add(name=name), "value", 1, kind, repeated=True, packed=packed)
    feature = file.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name in enumerate(("bytes_list", "float_list", "int64_list"), start=1):
        add(feature, name, number, field.TYPE_MESSAGE, oneof=0,
            type_name=f".tensorflow.{name.title().replace('_', '')}")  # fmt: skip
    features = file.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    add(entry, "key", 1, field.TYPE_STRING)
    add(entry, "value", 2, field.TYPE_MESSAGE, type_name=".tensorflow.Feature")
    add(features, "feature", 1, field.TYPE_MESSAGE, repeated=True,
        type_name=".tensorflow.Features.FeatureEntry")  # fmt: skip
    example = file.message_type.add(name="Example")
    add(example, "features", 1, field.TYPE_MESSAGE, type_name=".tensorflow.Features")
    return file


@functools.cache
def _example_class() -> type[Message]:
    pool = descriptor_pool.DescriptorPool()  # private: no clash with TensorFlow's own classes
    pool.Add(_example_file())
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))
    # The reader takes a FloatList's values from the tail of its serialization; make sure this
    # protobuf runtime packs them (proto3 and [packed = true] say it must).
    probe = cls()
    values = probe.features.feature["x"].float_list
    values.value.extend([1.5, -2.0])
    if values.SerializeToString()[-8:] != np.asarray([1.5, -2.0], "<f4").tobytes():
        raise RuntimeError("protobuf does not serialize FloatList as packed floats")
    return cls


def example_bytes(
    features: Mapping[str, bytes | str | Sequence[int] | npt.NDArray[Any]],
) -> bytes:
    """A serialized ``tensorflow.Example``: str/bytes → a one-value bytes_list, an integer
    array or sequence → int64_list, a floating array → float_list."""
    example = _example_class()()
    feature_map = example.features.feature
    for name, value in features.items():
        feature = feature_map[name]
        if isinstance(value, str):
            feature.bytes_list.value.append(value.encode("utf-8"))
        elif isinstance(value, bytes):
            feature.bytes_list.value.append(value)
        else:
            array = np.asarray(value)
            if array.dtype.kind == "f":
                feature.float_list.value.extend(array.astype(np.float32, copy=False).tolist())
            elif array.dtype.kind in "iu" or array.size == 0:
                feature.int64_list.value.extend(array.astype(np.int64).tolist())
            else:
                raise TypeError(f"feature {name!r}: cannot store {array.dtype} values")
    return bytes(example.SerializeToString())


# --------------------------------------------------------------------------- framing


def _tfrecords() -> ModuleType:
    """The `tfrecords` package, or a DatasetError saying where it is available."""
    if not sys.platform.startswith("linux") or sys.byteorder != "little":
        # Its wheels are for x86_64 and aarch64 Linux (the reader copies little-endian floats).
        raise DatasetError(f"{_MISSING_PACKAGE} (this is {sys.platform}, {sys.byteorder}-endian)")
    try:
        import tfrecords
    except ImportError as error:
        raise DatasetError(
            f"{_MISSING_PACKAGE}: pip install 'tfrecords>=0.3.1' ({error})"
        ) from None
    return tfrecords


def _options(tfrecords: ModuleType) -> Any:
    return tfrecords.TFRecordOptions(compression_type=None)


def record_writer(path: Path) -> Any:
    """A `tfrecords.TFRecordWriter` on ``path`` (uncompressed): ``.write(bytes)``, ``.close()``."""
    tfrecords = _tfrecords()
    return tfrecords.TFRecordWriter(str(path), options=_options(tfrecords))


def _iterator(tfrecords: ModuleType, path: Path) -> Any:
    from tfrecords.python.framework.errors import OpError

    try:
        return tfrecords.tf_record_iterator(str(path), options=_options(tfrecords))
    except OpError as error:
        raise DatasetError(f"{path}: cannot read the TFRecord shard ({error})") from None


def _offset(error: BaseException) -> int | None:
    found = re.search(r"at (?:reading offset )?(\d+)", str(error))
    return int(found.group(1)) if found else None


def _framing_error(path: Path, record: int, error: BaseException) -> DatasetError:
    """A DatasetError naming the shard and the 0-based record of a `tfrecords` read error."""
    text = str(error)
    at = _offset(error)
    if text.startswith("corrupted record"):
        return DatasetError(
            f"{path}: record {record} is corrupt (CRC check failed at byte {at}); "
            "the shard is damaged"
        )
    if text.startswith("truncated record"):
        size = path.stat().st_size
        return DatasetError(
            f"{path}: record {record} is truncated (it starts at byte {at}, the shard ends at "
            f"byte {size}); the shard is incomplete"
        )
    return DatasetError(f"{path}: record {record} cannot be read ({text})")


def _scan_error(tfrecords: ModuleType, path: Path) -> DatasetError:
    """Read the whole shard with CRC checks to say which record is damaged, and how."""
    from tfrecords.python.framework.errors import OpError

    iterator = _iterator(tfrecords, path)
    record = 0
    try:
        for _ in iterator:
            record += 1
    except OpError as error:
        return _framing_error(path, record, error)
    finally:
        iterator.close()
    return DatasetError(f"{path}: the TFRecord framing is damaged after record {record - 1}")


def count_records(path: Path) -> int:
    """Records in one shard, from the framing alone.

    Walks the record headers (each length's CRC is checked, the data is skipped, no Example is
    parsed) and checks that the frames end exactly at the end of the file, so a truncated or
    damaged shard raises DatasetError. The data's CRCs are checked by `read_video_shards`.
    """
    tfrecords = _tfrecords()  # a DatasetError, not an ImportError, where it is missing
    from tfrecords.python.framework.errors import OpError

    path = Path(path)
    iterator = _iterator(tfrecords, path)
    try:
        offsets = iterator.read_offsets(0)
    except (OpError, IndexError):
        raise _scan_error(tfrecords, path) from None
    finally:
        iterator.close()
    end = 0
    if offsets:
        start, length = offsets[-1]
        end = int(start) + _HEADER_BYTES + int(length) + _FOOTER_BYTES
    size = path.stat().st_size
    if end != size:
        # The reader stops silently at a partial header: the shard was cut inside it.
        raise DatasetError(
            f"{path}: record {len(offsets)} is truncated (it starts at byte {end}, the shard "
            f"ends at byte {size}); the shard is incomplete"
        )
    return len(offsets)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class VideoRecords:
    """The records of some video-level shards, in shard order then record order."""

    ids: np.ndarray  # object array of str: the id feature, or "<file stem>:<record>"
    X: np.ndarray  # float32 (N, F), C-contiguous
    features: list[str]  # F column names "<feature>_<i>"
    label_offsets: np.ndarray  # int64 (N + 1,): record r's labels are values[o[r]:o[r + 1]]
    label_values: np.ndarray  # int64 label indices, concatenated

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class _Layout:
    """The float features of the first record: name, first column, width."""

    floats: tuple[tuple[str, int, int], ...]
    columns: list[str]
    where: str  # the first record, for messages


def _kind(feature: Any) -> str | None:
    kind: str | None = feature.WhichOneof("kind")
    return kind


def _feature_list(feature_map: Any) -> str:
    names = sorted(feature_map)
    shown = ", ".join(repr(n) for n in names[:12])
    more = f", … ({len(names)} in all)" if len(names) > 12 else ""
    return f"[{shown}{more}]" if names else "no features"


class _Reader:
    """Parses records of one source into preallocated arrays."""

    def __init__(self, total: int, label: str | None, id_column: str | None) -> None:
        self.total = total
        self.label = label
        self.id_column = id_column
        self.example_class = _example_class()
        self.layout: _Layout | None = None
        self.X = np.empty((0, 0), dtype=np.float32)
        self.ids = np.empty(total, dtype=object)
        self.offsets = np.zeros(total + 1, dtype=np.int64)
        self.values = np.empty(max(64, 4 * total), dtype=np.int64)
        self.row = 0
        self.end = 0  # label values so far
        self.x_bytes = memoryview(b"")
        self.row_bytes = 0
        self.float_names: frozenset[str] = frozenset()
        self.key_count = 0

    # -- errors (slow path: re-parse the record, since the fast path may add map entries)

    def _fresh(self, data: bytes) -> Any:
        example = _example_class()()
        example.ParseFromString(data)
        return example.features.feature

    def _missing(self, where: str, feature_map: Any, name: str) -> DatasetError:
        return DatasetError(f"{where} lacks feature {name!r} (it has {_feature_list(feature_map)})")

    def _wrong_kind(self, where: str, name: str, kind: str | None, expected: str) -> DatasetError:
        return DatasetError(
            f"{where}: feature {name!r} is {_KINDS.get(kind, kind)}, expected {_KINDS[expected]}"
        )

    def _float_error(self, where: str, data: bytes, name: str, width: int) -> DatasetError:
        feature_map = self._fresh(data)
        if name not in feature_map:
            return self._missing(where, feature_map, name)
        kind = _kind(feature_map[name])
        if kind != "float_list":
            return self._wrong_kind(where, name, kind, "float_list")
        count = len(feature_map[name].float_list.value)
        assert self.layout is not None
        return DatasetError(
            f"{where}: {name} has {count} values, expected {width} as in the first record "
            f"({self.layout.where})"
        )

    def _check_required(self, where: str, data: bytes) -> None:
        """Raise when the label or id feature is missing or of the wrong kind."""
        feature_map = self._fresh(data)
        if self.label is not None:
            if self.label not in feature_map:
                raise self._missing(where, feature_map, self.label)
            kind = _kind(feature_map[self.label])
            if kind not in ("int64_list", None):  # an empty Feature is an empty list
                raise self._wrong_kind(where, self.label, kind, "int64_list")
        if self.id_column is not None:
            if self.id_column not in feature_map:
                raise self._missing(where, feature_map, self.id_column)
            kind = _kind(feature_map[self.id_column])
            if kind != "bytes_list":
                raise self._wrong_kind(where, self.id_column, kind, "bytes_list")
            count = len(feature_map[self.id_column].bytes_list.value)
            if count != 1:
                raise DatasetError(
                    f"{where}: feature {self.id_column!r} has {count} values, expected 1"
                )

    # -- the first record fixes the columns

    def _start(self, where: str, data: bytes) -> None:
        try:
            self._fresh(data)
        except DecodeError as error:
            raise DatasetError(f"{where} is not a tf.train.Example ({error})") from None
        self._check_required(where, data)
        feature_map = self._fresh(data)
        skip = {self.label, self.id_column}
        names = [n for n in feature_map if n not in skip and _kind(feature_map[n]) == "float_list"]
        names.sort(key=lambda n: (_FLOAT_ORDER.index(n) if n in _FLOAT_ORDER else 2, n))
        if not names:
            raise DatasetError(
                f"{where} has no float features (it has {_feature_list(feature_map)}); "
                "expected YouTube-8M's mean_rgb and mean_audio"
            )
        floats: list[tuple[str, int, int]] = []
        columns: list[str] = []
        start = 0
        for name in names:
            width = len(feature_map[name].float_list.value)
            floats.append((name, start, width))
            columns += [f"{name}_{i}" for i in range(width)]
            start += width
        self.layout = _Layout(tuple(floats), columns, where)
        self.float_names = frozenset(names)
        self.key_count = len(feature_map)
        self.X = np.empty((self.total, start), dtype=np.float32)
        self.x_bytes = self.X.data.cast("B")
        self.row_bytes = 4 * start

    # -- one record

    def add(self, path: Path, record: int, data: bytes) -> None:
        """Parse one record into the next row."""
        if self.layout is None:
            self._start(f"{path}: record {record}", data)
        assert self.layout is not None
        # A fresh message per record: upb keeps a reused message's arena growing by every
        # record parsed into it (the whole source, at the end).
        example = self.example_class()
        try:
            example.ParseFromString(data)
        except DecodeError as error:
            raise DatasetError(
                f"{path}: record {record} is not a tf.train.Example ({error})"
            ) from None
        feature_map = example.features.feature
        if len(feature_map) != self.key_count:
            self._check_extra(f"{path}: record {record}", data)
        row = self.row
        x = self.x_bytes
        base = row * self.row_bytes
        # Fast path: no membership tests; a missing feature reads as an empty one (and adds a
        # map entry), and every mismatch is explained from a fresh parse of the record. The
        # values are the last 4 * width bytes of the packed FloatList (checked in
        # `_example_class`), copied into the row's bytes (float32, little-endian).
        for name, start, width in self.layout.floats:
            values = feature_map[name].float_list
            if len(values.value) != width:
                raise self._float_error(f"{path}: record {record}", data, name, width)
            packed = values.SerializeToString()
            x[base + 4 * start : base + 4 * (start + width)] = memoryview(packed)[-4 * width :]
        labels = () if self.label is None else feature_map[self.label].int64_list.value
        count = len(labels)
        if count == 0 and self.label is not None:
            self._check_required(f"{path}: record {record}", data)
        start = self.end
        end = start + count
        if end > len(self.values):
            grown = np.empty(max(2 * len(self.values), end), dtype=np.int64)
            grown[:start] = self.values[:start]
            self.values = grown
        self.values[start:end] = labels
        self.offsets[row + 1] = self.end = end
        if self.id_column is None:
            self.ids[row] = f"{path.stem}:{record}"
        else:
            ids = feature_map[self.id_column].bytes_list.value
            if len(ids) != 1:
                self._check_required(f"{path}: record {record}", data)
                raise DatasetError(f"{path}: record {record}: feature {self.id_column!r} is bad")
            try:
                self.ids[row] = ids[0].decode("utf-8")
            except UnicodeDecodeError:
                raise DatasetError(
                    f"{path}: record {record}: feature {self.id_column!r} is not UTF-8 text "
                    f"({ids[0][:40]!r})"
                ) from None
        self.row = row + 1

    def _check_extra(self, where: str, data: bytes) -> None:
        feature_map = self._fresh(data)
        extra = sorted(
            n
            for n in feature_map
            if n not in self.float_names and _kind(feature_map[n]) == "float_list"
        )
        extra = [n for n in extra if n not in (self.label, self.id_column)]
        if extra:
            assert self.layout is not None
            raise DatasetError(
                f"{where} has float feature(s) {extra} that the first record "
                f"({self.layout.where}) lacks; every record needs the same float features"
            )

    def check_labels(self, path: Path, first_row: int) -> None:
        """Negative label indices of the records from ``first_row`` on (all of ``path``)."""
        lo, hi = int(self.offsets[first_row]), int(self.offsets[self.row])
        negative = np.flatnonzero(self.values[lo:hi] < 0)
        if len(negative):
            position = lo + int(negative[0])
            # Only the offsets of rows read so far are sorted (the rest are still 0).
            read = self.offsets[first_row : self.row + 1]
            row = first_row + int(np.searchsorted(read, position, side="right")) - 1
            raise DatasetError(
                f"{path}: record {row - first_row}: feature {self.label!r} has label index "
                f"{int(self.values[position])}; expected entity indices >= 0"
            )


def read_video_shards(
    paths: Sequence[Path], *, label: str | None = "labels", id_column: str | None = "id"
) -> VideoRecords:
    """Read YouTube-8M video-level shards into one float32 block and CSR labels.

    The columns are the first record's float features (``mean_rgb``, ``mean_audio``, then any
    others by name), ``<feature>_<i>``; every record must have them with the same lengths, an
    int64 ``label`` feature (unless ``label`` is None: request batches carry no labels) and,
    unless ``id_column`` is None, a one-value bytes ``id_column`` (UTF-8). Without ids a
    record's id is ``"<file stem>:<record number>"``. Empty shards are fine; no record at all
    is a DatasetError, like any damaged or malformed record (the message names the file and
    the 0-based record).
    """
    tfrecords = _tfrecords()  # a DatasetError, not an ImportError, where it is missing
    from tfrecords.python.framework.errors import OpError

    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("no TFRecord shard to read")
    counts = [count_records(p) for p in paths]
    total = sum(counts)
    if total == 0:
        shown = ", ".join(str(p) for p in paths[:3]) + (", …" if len(paths) > 3 else "")
        raise DatasetError(f"every TFRecord shard is empty (0 records): {shown}")
    reader = _Reader(total, label, id_column)
    for path, count in zip(paths, counts, strict=True):
        if count == 0:
            continue
        first_row = reader.row
        record = 0
        iterator = _iterator(tfrecords, path)
        try:
            for data in iterator:
                if record == count:
                    record += 1  # more than counted
                    break
                reader.add(path, record, data)
                record += 1
        except OpError as error:
            raise _framing_error(path, record, error) from None
        finally:
            iterator.close()
        if record != count:
            raise DatasetError(
                f"{path}: {'more than ' if record > count else ''}{min(record, count)} records "
                f"read, {count} counted; the shard changed while it was read"
            )
        reader.check_labels(path, first_row)
    assert reader.layout is not None
    reader.x_bytes.release()
    return VideoRecords(
        ids=reader.ids,
        X=reader.X,
        features=reader.layout.columns,
        label_offsets=reader.offsets,
        label_values=reader.values[: reader.offsets[-1]].copy(),
    )
