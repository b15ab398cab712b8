"""Unit tests for reading, cleaning and splitting datasets (`ml_assets/ml/datasets.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_assets.ml.datasets import (
    PARTS,
    Dataset,
    DatasetError,
    clean,
    content_hash,
    read_source,
    split,
    write_parquet,
)


def _frame(n: int = 30, classes: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "f1": rng.normal(size=n),
            "f2": rng.integers(0, 10, size=n),
            "label": [f"c{i % classes}" for i in range(n)],
        }
    )


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return clean(read_source("sklearn_digits", Path(".")), "label", None)[0]


# --- reading -----------------------------------------------------------------------------


def test_digits_embedded(digits: Dataset) -> None:
    assert len(digits) == 1797
    assert digits.task == "multiclass"
    assert digits.entities == [str(i) for i in range(10)]
    assert digits.X.shape == (1797, 64)
    assert digits.Y.shape == (1797, 10)
    assert (digits.Y.sum(axis=1) == 1).all()
    assert "label" not in digits.features


def test_csv_file(tmp_path: Path) -> None:
    _frame().to_csv(tmp_path / "data.csv", index=False)
    frame = read_source("data.csv", tmp_path)
    dataset, dropped = clean(frame, "label", "id")
    assert len(dataset) == 30
    assert dataset.features == ["f1", "f2"]
    assert dataset.entities == ["c0", "c1", "c2"]
    assert list(dataset.ids[:2]) == ["r0", "r1"]
    assert dropped["unlabeled"] == 0


def test_parquet_file_absolute_path(tmp_path: Path) -> None:
    write_parquet(_frame(), tmp_path / "data.parquet")
    frame = read_source(str(tmp_path / "data.parquet"), Path("/nonexistent"))
    pd.testing.assert_frame_equal(frame, _frame())


def test_glob_reads_every_file_in_order(tmp_path: Path) -> None:
    full = _frame(30)
    (tmp_path / "parts").mkdir()
    full.iloc[:10].to_csv(tmp_path / "parts" / "a.csv", index=False)
    full.iloc[10:].to_csv(tmp_path / "parts" / "b.csv", index=False)
    frame = read_source("parts/*.csv", tmp_path)
    assert len(frame) == 30
    assert frame["id"].tolist() == full["id"].tolist()


def test_glob_files_with_different_columns(tmp_path: Path) -> None:
    _frame().to_csv(tmp_path / "a.csv", index=False)
    _frame().rename(columns={"f2": "g2"}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DatasetError, match=r"b\.csv: columns differ.*'g2'.*'f2'"):
        read_source("*.csv", tmp_path)


def _multilabel_columns() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [0.1, 0.2, 0.3, 0.4],
            "cat": [1, 0, 1, 0],
            "dog": [0, 1, 1, 0],
            "eel": [0, 0, 1, 1],
        }
    )


def test_multilabel_columns_and_list_column_agree(tmp_path: Path) -> None:
    wide = _multilabel_columns()
    from_columns, _ = clean(wide.copy(), ["cat", "dog", "eel"], None)
    lists = pd.DataFrame(
        {"x": wide["x"], "tags": [["cat"], ["dog"], ["cat", "dog", "eel"], ["eel"]]}
    )
    write_parquet(lists, tmp_path / "tags.parquet")
    from_list, _ = clean(read_source("tags.parquet", tmp_path), "tags", None)
    assert from_columns.task == from_list.task == "multilabel"
    assert from_columns.entities == from_list.entities == ["cat", "dog", "eel"]
    np.testing.assert_array_equal(from_columns.Y, from_list.Y)
    np.testing.assert_array_equal(
        from_list.Y, np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.uint8)
    )
    assert from_list.features == from_columns.features == ["x"]


# --- reading errors ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"'nope\.csv': file not found"):
        read_source("nope.csv", tmp_path)


def test_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"'data/\*\.parquet': no file matches this glob"):
        read_source("data/*.parquet", tmp_path)


def test_directory_as_source(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match="is a directory"):
        read_source("data", tmp_path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(
        DatasetError,
        match=r"suffix '\.json'; expected \.csv, \.parquet, \.pq, \.tfrecord or \.tfrecords",
    ):
        read_source("data.json", tmp_path)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (bytes(range(128, 256)) * 8, "codec can't decode"),  # binary garbage
        (b'a,b,label\n1,"2,3\n4,5,6\n', "EOF inside string"),  # unterminated quote
        (b"a,b,label\n1,2,3\n4,5,6,7,8\n", "Expected 3 fields"),  # ragged rows
        (b"", "No columns to parse"),  # empty file
    ],
)
def test_malformed_csv(tmp_path: Path, content: bytes, detail: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        read_source("bad.csv", tmp_path)
    assert str(path) in str(info.value)
    assert "malformed CSV" in str(info.value)
    assert detail in str(info.value)


def test_malformed_parquet(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(DatasetError) as info:
        read_source("bad.parquet", tmp_path)
    assert str(path) in str(info.value)
    assert "cannot read as Parquet" in str(info.value)


# --- cleaning errors ---------------------------------------------------------------------


def test_label_column_absent() -> None:
    with pytest.raises(DatasetError, match=r"label column 'target' \(dataset\.label\) is absent"):
        clean(_frame(), "target", None)


def test_label_list_column_absent() -> None:
    with pytest.raises(DatasetError, match="label column 'fox'"):
        clean(_multilabel_columns(), ["cat", "fox"], None)


def test_id_column_absent() -> None:
    with pytest.raises(DatasetError, match=r"id column 'uid' \(dataset\.id\) is absent"):
        clean(_frame(), "label", "uid")


def test_no_feature_columns() -> None:
    with pytest.raises(DatasetError, match="no feature columns"):
        clean(_frame()[["id", "label"]], "label", "id")


def test_non_numeric_feature_named() -> None:
    frame = _frame()
    frame["colour"] = "red"
    with pytest.raises(DatasetError, match=r"non-numeric feature column\(s\) \['colour'\]"):
        clean(frame, "label", "id")


def test_header_only_csv_is_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("f1,f2,label\n")
    frame = read_source("empty.csv", tmp_path)
    with pytest.raises(DatasetError, match=r"empty\.csv: the dataset has no records"):
        clean(frame, "label", None, source="empty.csv")


def test_all_unlabeled_rejected() -> None:
    frame = _frame(5)
    frame["label"] = None
    with pytest.raises(DatasetError, match="no record has a label"):
        clean(frame, "label", None)


def test_duplicate_ids() -> None:
    frame = _frame()
    frame.loc[7, "id"] = "r3"
    with pytest.raises(DatasetError, match=r"id column 'id' has 1 duplicate value\(s\), e.g. 'r3'"):
        clean(frame, "label", "id")


def test_label_column_not_zero_one() -> None:
    frame = _multilabel_columns()
    frame.loc[2, "dog"] = 2
    with pytest.raises(
        DatasetError, match=r"label column 'dog': expected 0/1 values, found 2 in 1 record"
    ):
        clean(frame, ["cat", "dog", "eel"], None)


def test_unlabeled_rows_dropped_and_counted() -> None:
    frame = _frame(30)
    frame.loc[[0, 5, 9], "label"] = None
    dataset, dropped = clean(frame, "label", "id")
    assert dropped["unlabeled"] == 3
    assert len(dataset) == 27
    assert not {"r0", "r5", "r9"} & set(dataset.ids)


def test_unlabeled_list_rows_dropped(tmp_path: Path) -> None:
    lists = pd.DataFrame({"x": [1.0, 2.0, 3.0], "tags": [["a"], None, ["a", "b"]]})
    write_parquet(lists, tmp_path / "t.parquet")
    dataset, dropped = clean(read_source("t.parquet", tmp_path), "tags", None)
    assert dropped["unlabeled"] == 1
    np.testing.assert_array_equal(dataset.Y, [[1, 0], [1, 1]])


def test_infinite_values_become_nan() -> None:
    frame = _frame(6)
    frame.loc[1, "f1"] = np.inf
    dataset, dropped = clean(frame, "label", "id")
    assert dropped["infinite_values_to_nan"] == 1
    assert np.isnan(dataset.X["f1"].to_numpy()[1])


def test_frame_round_trip(digits: Dataset) -> None:
    part = digits.take(np.arange(20))
    back = Dataset.from_frame(part.to_frame(), part.task, part.entities)
    np.testing.assert_array_equal(back.Y, part.Y)
    np.testing.assert_array_equal(back.ids, part.ids)
    pd.testing.assert_frame_equal(back.X, part.X)


def test_parquet_round_trip_without_dictionaries_for_floats(
    digits: Dataset, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    part = digits.take(np.arange(50))
    path = tmp_path / "part.parquet"
    write_parquet(part.to_frame(), path)
    back = Dataset.from_frame(pd.read_parquet(path), part.task, part.entities)
    np.testing.assert_array_equal(back.Y, part.Y)
    np.testing.assert_array_equal(back.ids, part.ids)
    pd.testing.assert_frame_equal(back.X, part.X)
    metadata = pq.ParquetFile(path).metadata
    group = metadata.row_group(0)
    encodings = {
        metadata.schema.column(i).name: group.column(i).encodings for i in range(group.num_columns)
    }
    dictionary = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    assert not dictionary & set(encodings[part.features[0]])  # dense floats: plain
    assert dictionary & set(encodings["__id"])  # strings keep their dictionary


# --- splitting ---------------------------------------------------------------------------


def _split(dataset: Dataset, seed: int = 0) -> dict[str, Dataset]:
    return split(dataset, validation=0.2, serving=0.2, seed=seed)


def test_split_deterministic_by_seed(digits: Dataset) -> None:
    first, again, other = _split(digits, 1), _split(digits, 1), _split(digits, 2)
    for part in PARTS:
        np.testing.assert_array_equal(first[part].ids, again[part].ids)
    assert not np.array_equal(first["validation"].ids, other["validation"].ids)


def test_split_stratified_disjoint_covering(digits: Dataset) -> None:
    parts = _split(digits)
    ids = {name: set(part.ids) for name, part in parts.items()}
    assert ids["train"].isdisjoint(ids["validation"])
    assert ids["train"].isdisjoint(ids["requests"])
    assert ids["validation"].isdisjoint(ids["requests"])
    assert ids["train"] | ids["validation"] | ids["requests"] == set(digits.ids)
    for part in parts.values():
        assert (part.Y.sum(axis=0) > 0).all()  # every class in every part
    assert 0.17 < len(parts["validation"]) / len(digits) < 0.23
    assert 0.17 < len(parts["requests"]) / len(digits) < 0.23


def test_split_tiny_classes_still_in_every_part() -> None:
    frame = _frame(9, classes=3)  # 3 records per class: the minimum
    dataset, _ = clean(frame, "label", "id")
    parts = _split(dataset)
    for part in parts.values():
        assert len(part) == 3
        assert (part.Y.sum(axis=0) == 1).all()


def test_split_class_too_small_named() -> None:
    frame = _frame(12, classes=3)
    rare = pd.DataFrame({"id": ["rare-1", "rare-2"], "f1": 0.0, "f2": 1, "label": "rare"})
    frame = pd.concat([frame, rare], ignore_index=True)
    dataset, _ = clean(frame, "label", "id")
    with pytest.raises(DatasetError, match="class 'rare' has 2 record"):
        _split(dataset)


def test_split_multilabel_disjoint_covering() -> None:
    frame = pd.DataFrame({"x": np.arange(50.0), "a": [i % 2 for i in range(50)], "b": [1] * 50})
    dataset, _ = clean(frame, ["a", "b"], None)
    parts = _split(dataset, seed=3)
    all_ids = np.concatenate([parts[p].ids for p in PARTS])
    assert sorted(all_ids) == sorted(dataset.ids)
    assert len(set(all_ids)) == 50
    assert [len(parts[p]) for p in PARTS] == [30, 10, 10]


def test_content_hash_stable_and_sensitive(digits: Dataset) -> None:
    base = content_hash(_split(digits))
    assert base == content_hash(_split(digits))
    x = digits.X.copy()
    column = x.columns[5]
    x[column] = x[column].to_numpy() + (np.arange(len(x)) == 100)  # one value changes
    changed = Dataset(digits.task, digits.entities, digits.ids, x, digits.Y)
    assert content_hash(_split(changed)) != base
    assert content_hash(_split(digits, seed=1)) != base
