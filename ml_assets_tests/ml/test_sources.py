"""Streaming sources (`load_dataset`), the vocabulary and the chunked split writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ml_assets.ml.datasets import (
    PARTS,
    Dataset,
    DatasetError,
    clean,
    content_hash,
    load_dataset,
    read_source,
    read_vocabulary,
    split,
    split_content_hash,
    split_rows,
    write_parquet,
    write_part,
)
from ml_assets.ml.synthetic import write_videos


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    # Several row groups, so the reader streams more than one batch.
    write_videos(folder / "videos.parquet", 1500, 12, rgb_dims=8, audio_dims=4, row_group_size=400)
    return folder


def test_streamed_parquet_equals_the_pandas_path(videos: Path) -> None:
    streamed, dropped = load_dataset("videos.parquet", videos, "tags", "video_id")
    frame = read_source("videos.parquet", videos)
    expected, _ = clean(frame, "tags", "video_id")
    assert streamed.entities == expected.entities
    np.testing.assert_array_equal(streamed.Y, expected.Y)
    np.testing.assert_array_equal(streamed.ids, expected.ids)
    pd.testing.assert_frame_equal(streamed.X, expected.X)
    assert dropped == {"unlabeled": 0, "infinite_values_to_nan": 0}
    assert set(streamed.X.dtypes) == {np.dtype(np.float32)}


def test_streamed_parquet_drops_unlabeled_rows_and_counts_infinities(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(6)],
            "x": [0.0, 1.0, np.inf, 3.0, 4.0, 5.0],
            "n": [1, 2, 3, 4, 5, 6],
            "tags": [["a"], None, ["a", "b"], None, ["b"], []],
        }
    )
    write_parquet(frame, tmp_path / "t.parquet")
    dataset, dropped = load_dataset("t.parquet", tmp_path, "tags", "id")
    assert dropped == {"unlabeled": 2, "infinite_values_to_nan": 1}
    assert list(dataset.ids) == ["r0", "r2", "r4", "r5"]
    np.testing.assert_array_equal(dataset.X["n"], [1, 3, 5, 6])
    np.testing.assert_array_equal(dataset.Y, [[1, 0], [1, 1], [0, 1], [0, 0]])
    assert np.isnan(dataset.X["x"].iloc[1])


def test_streamed_parquet_names_a_non_numeric_feature(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "word": ["a", "b", "c"], "label": [0, 1, 0]})
    write_parquet(frame, tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match=r"non-numeric feature column\(s\) \['word'\]"):
        load_dataset("t.parquet", tmp_path, "label", None)


def test_split_rows_hash_and_streamed_parts_match_copied_parts(videos: Path) -> None:
    dataset, _ = load_dataset("videos.parquet", videos, "tags", "video_id")
    rows = split_rows(dataset, validation=0.2, serving=0.2, seed=3)
    parts = split(dataset, validation=0.2, serving=0.2, seed=3)
    assert split_content_hash(dataset, rows) == content_hash(parts)
    for name in PARTS:
        path = videos / f"{name}.parquet"
        write_part(dataset, rows[name], path)
        back = Dataset.from_frame(pq.read_table(path).to_pandas(), dataset.task, dataset.entities)
        np.testing.assert_array_equal(back.ids, parts[name].ids)
        np.testing.assert_array_equal(back.Y, parts[name].Y)
        pd.testing.assert_frame_equal(back.X, parts[name].X)


# --- the vocabulary ----------------------------------------------------------------------


def _vocabulary(path: Path, rows: list[tuple[object, object]]) -> Path:
    frame = pd.DataFrame(rows, columns=["Index", "Name"])
    frame.insert(1, "TrainVideoCount", 10)
    frame.to_csv(path, index=False)
    return path


def test_vocabulary_names_label_indices(tmp_path: Path) -> None:
    _vocabulary(tmp_path / "vocabulary.csv", [(0, "Game"), (1, "Car"), (2, None), (3, "Car")])
    names = read_vocabulary(tmp_path / "vocabulary.csv")
    # A missing name falls back to the index; a repeated one gets its index appended.
    assert names == {0: "Game", 1: "Car (1)", 2: "2", 3: "Car (3)"}
    frame = pd.DataFrame({"x": [0.1, 0.2, 0.3], "labels": [[3, 0], [0], [3]]})
    write_parquet(frame, tmp_path / "t.parquet")
    dataset, _ = load_dataset("t.parquet", tmp_path, "labels", None, "vocabulary.csv")
    assert dataset.entities == ["Game", "Car (3)"]  # by index, named by the vocabulary
    np.testing.assert_array_equal(dataset.Y, [[1, 1], [1, 0], [0, 1]])


def test_vocabulary_names_multiclass_indices(tmp_path: Path) -> None:
    _vocabulary(tmp_path / "v.csv", [(i, f"digit {i}") for i in range(10)])
    frame = read_source("sklearn_digits", tmp_path)
    plain, _ = clean(frame.copy(), "label", None)
    named, _ = clean(frame, "label", None, vocabulary=read_vocabulary(tmp_path / "v.csv"))
    assert named.entities == [f"digit {e}" for e in plain.entities]
    np.testing.assert_array_equal(named.Y, plain.Y)


def test_vocabulary_errors_name_the_file_and_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("Idx,Name\n0,a\n")
    with pytest.raises(DatasetError, match=r"bad\.csv: vocabulary lacks column\(s\) \['Index'\]"):
        read_vocabulary(tmp_path / "bad.csv")
    _vocabulary(tmp_path / "dup.csv", [(0, "a"), (0, "b")])
    with pytest.raises(DatasetError, match=r"dup\.csv: index 0 appears more than once"):
        read_vocabulary(tmp_path / "dup.csv")
    _vocabulary(tmp_path / "neg.csv", [(0, "a"), ("x", "b")])
    with pytest.raises(DatasetError, match=r"neg\.csv: column 'Index'.*row 3 has 'x'"):
        read_vocabulary(tmp_path / "neg.csv")
    with pytest.raises(DatasetError, match=r"dataset\.vocabulary 'nope\.csv': file not found"):
        load_dataset("sklearn_digits", tmp_path, "label", None, "nope.csv")


def test_labels_outside_the_vocabulary_are_named(tmp_path: Path) -> None:
    _vocabulary(tmp_path / "v.csv", [(0, "a"), (1, "b")])
    frame = pd.DataFrame({"x": [0.1, 0.2], "labels": [[0, 7], [1, 9]]})
    write_parquet(frame, tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match=r"2 label index\(es\) are not in dataset\.vocabulary"):
        load_dataset("t.parquet", tmp_path, "labels", None, "v.csv")


def test_a_vocabulary_needs_index_labels(tmp_path: Path) -> None:
    _vocabulary(tmp_path / "v.csv", [(0, "a")])
    frame = pd.DataFrame({"x": [0.1, 0.2], "tags": [["cat"], ["dog"]]})
    write_parquet(frame, tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match="the labels are names already"):
        load_dataset("t.parquet", tmp_path, "tags", None, "v.csv")


def test_paths_up_from_the_config_folder_are_named_plainly(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    with pytest.raises(DatasetError) as error:
        load_dataset("../data/nope.parquet", tmp_path / "examples", "label", None)
    assert f"file not found ({tmp_path}/data/nope.parquet)" in str(error.value)
