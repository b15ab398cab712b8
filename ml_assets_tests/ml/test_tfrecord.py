"""YouTube-8M video-level TFRecord shards: reading TensorFlow's own files without TensorFlow,
every damaged or malformed record as a DatasetError naming the file and the record, and the
synthetic shard and vocabulary writers."""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml_assets.cli.main import main
from ml_assets.ml.datasets import DatasetError, read_vocabulary
from ml_assets.ml.synthetic import (
    VOCABULARY_COLUMNS,
    entity_names,
    entity_perspectives,
    generate_videos,
    write_video_shards,
    write_vocabulary,
)
from ml_assets.ml.tfrecord import count_records, example_bytes, read_video_shards, record_writer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "yt8m"
SHARD0, SHARD1 = FIXTURE / "train0000.tfrecord", FIXTURE / "train0001.tfrecord"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the tfrecords package is Linux-only"
)


def _frames(path: Path) -> list[tuple[int, int]]:
    """(start, data length) of each frame, walking the headers by hand (test-side check)."""
    blob, frames, at = path.read_bytes(), [], 0
    while at < len(blob):
        (length,) = struct.unpack_from("<Q", blob, at)
        frames.append((at, length))
        at += 12 + length + 4
    assert at == len(blob)
    return frames


def _damaged(tmp_path: Path, source: Path, edit: Any) -> Path:
    blob = bytearray(source.read_bytes())
    blob = edit(blob) or blob
    path = tmp_path / source.name
    path.write_bytes(bytes(blob))
    return path


def _video(i: int, rgb: int = 6, audio: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {
        "id": f"v{i}",
        "labels": np.asarray([i % 5, 7], dtype=np.int64),
        "mean_rgb": rng.standard_normal(rgb).astype(np.float32),
        "mean_audio": rng.standard_normal(audio).astype(np.float32),
    }


def _write(path: Path, records: list[Mapping[str, Any] | bytes]) -> Path:
    writer = record_writer(path)
    for record in records:
        writer.write(record if isinstance(record, bytes) else example_bytes(record))
    writer.close()
    return path


# --------------------------------------------------------------------------- TensorFlow's files


def test_reads_the_tensorflow_written_fixture_exactly() -> None:
    expected = np.load(FIXTURE / "expected.npz")
    records = read_video_shards([SHARD0, SHARD1])
    assert records.ids.dtype == object and list(records.ids) == list(expected["ids"])
    assert records.X.dtype == np.float32 and records.X.flags.c_contiguous
    assert records.X.shape == (8, 1152)
    # Bit for bit (signed zero, a subnormal and a huge value are in there).
    assert np.array_equal(records.X.view(np.uint32), expected["X"].view(np.uint32))
    assert records.features[:2] == ["mean_rgb_0", "mean_rgb_1"]
    assert records.features[1023:1025] == ["mean_rgb_1023", "mean_audio_0"]
    assert records.features[-1] == "mean_audio_127" and len(records.features) == 1152
    assert records.label_offsets.dtype == np.int64 and records.label_values.dtype == np.int64
    assert np.array_equal(records.label_offsets, expected["label_offsets"])
    assert np.array_equal(records.label_values, expected["label_values"])
    second = records.label_values[records.label_offsets[1] : records.label_offsets[2]]
    assert second.tolist() == [0, 7, 3]  # as written, not sorted


def test_count_records_on_the_fixture() -> None:
    assert count_records(SHARD0) == 5
    assert count_records(SHARD1) == 3


def test_ids_from_file_and_record_number_without_an_id_column() -> None:
    records = read_video_shards([SHARD0, SHARD1], id_column=None)
    assert records.ids.tolist() == [f"train0000:{i}" for i in range(5)] + [
        f"train0001:{i}" for i in range(3)
    ]


# --------------------------------------------------------------------------- damaged framing


def test_corrupt_data_names_the_file_and_record(tmp_path: Path) -> None:
    start, length = _frames(SHARD0)[2]

    def flip(blob: bytearray) -> None:
        blob[start + 12 + length // 2] ^= 0x01

    path = _damaged(tmp_path, SHARD0, flip)
    assert count_records(path) == 5  # the framing is intact; only the data's CRC is wrong
    with pytest.raises(DatasetError) as error:
        read_video_shards([SHARD1, path])
    message = str(error.value)
    assert message.startswith(f"{path}: record 2 is corrupt (CRC check failed at byte ")
    assert f"byte {start + 12})" in message


def test_corrupt_length_header(tmp_path: Path) -> None:
    start, _ = _frames(SHARD0)[2]

    def flip(blob: bytearray) -> None:
        blob[start + 1] ^= 0x40

    path = _damaged(tmp_path, SHARD0, flip)
    for call in (lambda: count_records(path), lambda: read_video_shards([path])):
        with pytest.raises(
            DatasetError, match=rf"^{re.escape(str(path))}: record 2 is corrupt .*byte {start}\)"
        ):
            call()


@pytest.mark.parametrize("into", ["data", "header"])
def test_truncated_shard_names_the_file_and_record(tmp_path: Path, into: str) -> None:
    start, length = _frames(SHARD0)[3]
    cut = start + (12 + length // 3 if into == "data" else 5)

    path = _damaged(tmp_path, SHARD0, lambda blob: blob[:cut])
    pattern = (
        rf"^{re.escape(str(path))}: record 3 is truncated "
        rf"\(it starts at byte {start}, the shard ends at byte {cut}\)"
    )
    with pytest.raises(DatasetError, match=pattern):
        count_records(path)
    with pytest.raises(DatasetError, match=pattern):
        read_video_shards([SHARD1, path])


def test_empty_shards_are_fine_but_not_all_of_them(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    assert count_records(empty) == 0
    records = read_video_shards([empty, SHARD1, empty])
    assert len(records.ids) == 3 and records.X.shape == (3, 1152)
    with pytest.raises(DatasetError, match=r"every TFRecord shard is empty \(0 records\)"):
        read_video_shards([empty, empty])


def test_a_missing_shard(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.tfrecord: cannot read the TFRecord shard"):
        read_video_shards([tmp_path / "nope.tfrecord"])


# --------------------------------------------------------------------------- malformed records


def test_a_record_missing_mean_audio(tmp_path: Path) -> None:
    bad = {k: v for k, v in _video(1).items() if k != "mean_audio"}
    path = _write(tmp_path / "s.tfrecord", [_video(0), bad, _video(2)])
    with pytest.raises(DatasetError) as error:
        read_video_shards([path])
    assert str(error.value) == (
        f"{path}: record 1 lacks feature 'mean_audio' (it has ['id', 'labels', 'mean_rgb'])"
    )


def test_mean_rgb_of_the_wrong_length(tmp_path: Path) -> None:
    first = tmp_path / "a.tfrecord"
    _write(first, [_video(0, rgb=1024, audio=128)])
    second = _write(tmp_path / "b.tfrecord", [_video(1, 1024, 128), _video(2, 1000, 128)])
    with pytest.raises(DatasetError) as error:
        read_video_shards([first, second])
    assert str(error.value) == (
        f"{second}: record 1: mean_rgb has 1000 values, expected 1024 as in the first record "
        f"({first}: record 0)"
    )


@pytest.mark.parametrize("record", [0, 2])
def test_labels_as_a_float_list(tmp_path: Path, record: int) -> None:
    videos: list[Mapping[str, Any] | bytes] = [_video(i) for i in range(3)]
    videos[record] = {**_video(record), "labels": np.asarray([1.0, 7.0], dtype=np.float32)}
    path = _write(tmp_path / "s.tfrecord", videos)
    with pytest.raises(DatasetError) as error:
        read_video_shards([path])
    assert str(error.value) == (
        f"{path}: record {record}: feature 'labels' is a float_list, expected an int64_list"
    )


def test_a_record_that_is_not_an_example(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.tfrecord", [example_bytes(_video(0)), b"\xff\xff\xff not proto"])
    with pytest.raises(
        DatasetError, match=rf"^{re.escape(str(path))}: record 1 is not a tf\.train\.Example"
    ):
        read_video_shards([path])


def test_negative_label_indices(tmp_path: Path) -> None:
    bad = {**_video(1), "labels": np.asarray([3, -2], dtype=np.int64)}
    first = _write(tmp_path / "a.tfrecord", [_video(0)])
    second = _write(tmp_path / "b.tfrecord", [_video(2), _video(3), bad])
    with pytest.raises(DatasetError) as error:
        read_video_shards([first, second])
    assert str(error.value) == (
        f"{second}: record 2: feature 'labels' has label index -2; expected entity indices >= 0"
    )
    # In a shard before the last, while later rows are not read yet.
    with pytest.raises(DatasetError) as error:
        read_video_shards([second, first])
    assert str(error.value).startswith(f"{second}: record 2: feature 'labels' has label index -2")


def test_request_batches_need_no_label_feature(tmp_path: Path) -> None:
    unlabeled = [{k: v for k, v in _video(i).items() if k != "labels"} for i in range(3)]
    path = _write(tmp_path / "requests.tfrecord", unlabeled)
    records = read_video_shards([path], label=None)
    assert list(records.ids) == ["v0", "v1", "v2"]
    assert records.label_values.size == 0 and list(records.label_offsets) == [0, 0, 0, 0]
    np.testing.assert_array_equal(records.X[1, :6], _video(1)["mean_rgb"])
    with pytest.raises(DatasetError, match="record 0 lacks feature 'labels'"):
        read_video_shards([path])


def test_id_and_extra_float_features(tmp_path: Path) -> None:
    two_ids = tmp_path / "ids.tfrecord"
    writer = record_writer(two_ids)
    writer.write(example_bytes(_video(0)))
    writer.write(example_bytes({**_video(1), "id": np.asarray([1, 2])}))
    writer.close()
    with pytest.raises(
        DatasetError, match=r"record 1: feature 'id' is an int64_list, expected a bytes_list"
    ):
        read_video_shards([two_ids])
    extra = _write(
        tmp_path / "extra.tfrecord",
        [_video(0), {**_video(1), "mean_flow": np.ones(4, np.float32)}],
    )
    with pytest.raises(DatasetError, match=r"record 1 has float feature\(s\) \['mean_flow'\]"):
        read_video_shards([extra])
    # Other float features are columns after mean_rgb and mean_audio, by name.
    both = _write(
        tmp_path / "both.tfrecord",
        [{**_video(i), "b": np.ones(1, np.float32), "a": np.zeros(2, np.float32)} for i in (0, 1)],
    )
    features = read_video_shards([both]).features
    assert features[6:9] == ["mean_audio_0", "mean_audio_1", "mean_audio_2"]
    assert features[9:] == ["a_0", "a_1", "b_0"]


def test_a_missing_label_feature_lists_the_features(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.tfrecord", [_video(0)])
    with pytest.raises(
        DatasetError,
        match=r"record 0 lacks feature 'tags' \(it has \['id', 'labels', 'mean_audio', "
        r"'mean_rgb'\]\)",
    ):
        read_video_shards([path], label="tags")


def test_elsewhere_than_linux_a_tfrecord_source_is_a_dataset_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    for call in (lambda: read_video_shards([SHARD0]), lambda: count_records(SHARD0)):
        with pytest.raises(DatasetError, match=r"need the `tfrecords` package.*available on Linux"):
            call()


def test_without_the_tfrecords_package_a_tfrecord_source_is_a_dataset_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "tfrecords" or m.startswith("tfrecords.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tfrecords", None)  # `import tfrecords` raises ImportError
    for call in (lambda: read_video_shards([SHARD0]), lambda: count_records(SHARD0)):
        with pytest.raises(DatasetError, match=r"pip install 'tfrecords>=0.3.1'"):
            call()


# --------------------------------------------------------------------------- synthetic shards


def test_generated_shards_hold_the_rows_of_generate_videos(tmp_path: Path) -> None:
    args: dict[str, Any] = {"seed": 5, "rgb_dims": 16, "audio_dims": 8}
    stale = tmp_path / "train0007.tfrecord"  # from an earlier run with more shards
    stale.write_bytes(b"")
    paths = write_video_shards(tmp_path, 300, 12, shards=3, **args)
    assert [p.name for p in paths] == [f"train000{i}.tfrecord" for i in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no temp files
    assert [count_records(p) for p in paths] == [100, 100, 100]

    records = read_video_shards(paths)
    frame = generate_videos(300, 12, **args)
    columns = [c for c in frame.columns if c.startswith("mean_")]
    assert list(records.ids) == frame["video_id"].tolist()
    assert records.features == columns
    assert np.array_equal(
        records.X.view(np.uint32), frame[columns].to_numpy(np.float32).view(np.uint32)
    )
    index = {name: i for i, name in enumerate(entity_names(12))}
    offsets, values = records.label_offsets, records.label_values
    for row, tags in enumerate(frame["tags"]):
        assert set(values[offsets[row] : offsets[row + 1]].tolist()) == {index[t] for t in tags}


def test_vocabulary_has_youtube8m_columns_and_one_row_per_entity(tmp_path: Path) -> None:
    path = write_vocabulary(tmp_path / "vocabulary.csv", 12, rows=3000)
    frame = pd.read_csv(path)
    assert tuple(frame.columns) == VOCABULARY_COLUMNS
    assert frame["Index"].tolist() == list(range(12))
    kinds = {"audio": "Audio", "visual": "Visual", "both": "Audio-visual"}
    names = [f"{kinds[p]} entity {i:02d}" for i, p in enumerate(entity_perspectives(12).values())]
    assert frame["Name"].tolist() == names
    assert frame["Name"].iloc[:5].tolist() == [
        "Audio entity 00",
        "Visual entity 01",
        "Audio entity 02",
        "Visual entity 03",
        "Audio-visual entity 04",
    ]
    assert frame["KnowledgeGraphId"].iloc[3] == "/m/0synth03"
    assert read_vocabulary(path) == dict(enumerate(names))
    # TrainVideoCount: the expected number of videos per entity, close to a generated dataset's.
    frame_tags = generate_videos(3000, 12, rgb_dims=2, audio_dims=2)["tags"]
    actual = pd.Series([t for tags in frame_tags for t in tags]).value_counts()
    for i, name in enumerate(entity_names(12)):
        expected = frame["TrainVideoCount"].iloc[i]
        assert abs(expected - actual[name]) <= 0.1 * actual[name] + 15, name
    assert frame["TrainVideoCount"].is_monotonic_decreasing


def test_cli_generate_tfrecord(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "yt8m"
    argv = ["generate", str(out), "--format", "tfrecord", "--rows", "50", "--shards", "2"]
    assert main([*argv, "--entities", "6", "--rgb-dims", "4", "--audio-dims", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1
    assert f'dataset: {{source: "{out}/train*.tfrecord", label: "labels", id: "id", ' in printed
    assert f'vocabulary: "{out}/vocabulary.csv"}}' in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "train0000.tfrecord",
        "train0001.tfrecord",
        "vocabulary.csv",
    ]
    records = read_video_shards(sorted(out.glob("train*.tfrecord")))
    assert len(records.ids) == 50 and records.X.shape == (50, 6)
    assert len(read_vocabulary(out / "vocabulary.csv")) == 6

    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(out), "--format", "tfrecord", "--rows", "2", "--shards", "3"])
    assert exit_.value.code == 2
    assert "error: --shards 3 is more than --rows 2" in capsys.readouterr().err


def test_load_dataset_reads_generated_shards_with_their_vocabulary(tmp_path: Path) -> None:
    from ml_assets.ml.datasets import load_dataset

    write_video_shards(tmp_path / "yt8m", 200, 10, shards=2, rgb_dims=4, audio_dims=2)
    write_vocabulary(tmp_path / "yt8m" / "vocabulary.csv", 10, rows=200)
    dataset, _ = load_dataset(
        "yt8m/train*.tfrecord", tmp_path, "labels", "id", vocabulary="yt8m/vocabulary.csv"
    )
    assert len(dataset) == 200 and dataset.task == "multilabel"
    assert dataset.entities[:2] == ["Audio entity 00", "Visual entity 01"]
    assert dataset.features[:2] == ["mean_rgb_0", "mean_rgb_1"]
