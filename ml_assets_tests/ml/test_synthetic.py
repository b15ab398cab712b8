"""Unit tests for the synthetic YouTube-8M-shaped generator (small sizes, fast)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier

from ml_assets.ml import synthetic
from ml_assets.ml.synthetic import (
    audio_columns,
    entity_names,
    entity_perspectives,
    generate_videos,
    rgb_columns,
    write_videos,
)

ROWS, ENTITIES, RGB, AUDIO, SEED = 3000, 20, 32, 16, 7
TRAIN = 2000


@pytest.fixture(scope="module")
def videos() -> pd.DataFrame:
    return generate_videos(ROWS, ENTITIES, seed=SEED, rgb_dims=RGB, audio_dims=AUDIO)


def _label_matrix(tags: pd.Series, entities: int) -> np.ndarray:
    index = {name: i for i, name in enumerate(entity_names(entities))}
    y = np.zeros((len(tags), entities), dtype=np.int8)
    for row, row_tags in enumerate(tags):
        for tag in row_tags:
            y[row, index[tag]] = 1
    return y


def _as_lists(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["tags"] = [list(t) for t in out["tags"]]
    return out


# --------------------------------------------------------------------------- shape


def test_columns_dtypes_and_values() -> None:
    df = generate_videos(50, 5, seed=1, rgb_dims=4, audio_dims=3)
    expected = (
        ["video_id"]
        + [f"mean_rgb_{i}" for i in range(4)]
        + [f"mean_audio_{i}" for i in range(3)]
        + ["tags"]
    )
    assert list(df.columns) == expected
    assert len(df) == 50
    assert df["video_id"].tolist()[:2] == ["vid_0000001", "vid_0000002"]
    assert df["video_id"].is_unique
    assert pd.api.types.is_string_dtype(df["video_id"])
    for col in expected[1:-1]:
        assert df[col].dtype == np.float32, col
    assert np.isfinite(df[expected[1:-1]].to_numpy()).all()

    names = entity_names(5)
    assert names == ["entity_00", "entity_01", "entity_02", "entity_03", "entity_04"]
    for tags in df["tags"]:
        assert isinstance(tags, list)
        assert tags, "every video has at least one tag"  # at most 5: unique names below
        assert all(isinstance(t, str) and t in names for t in tags)
        assert tags == sorted(set(tags), key=names.index)  # unique, sorted by entity index


def test_default_dims_and_column_helpers() -> None:
    df = generate_videos(3)
    assert df.shape == (3, 1 + 1024 + 128 + 1)
    assert list(df.columns[1:-1]) == rgb_columns() + audio_columns()
    assert set(entity_names(20)) >= {t for tags in df["tags"] for t in tags}


def test_perspective_split() -> None:
    groups = Counter(entity_perspectives(20).values())
    assert groups == {"audio": 8, "visual": 8, "both": 4}
    assert list(entity_perspectives(20)) == entity_names(20)


# --------------------------------------------------------------------------- determinism


def test_same_seed_identical_different_seed_differs(videos: pd.DataFrame) -> None:
    again = generate_videos(ROWS, ENTITIES, seed=SEED, rgb_dims=RGB, audio_dims=AUDIO)
    pd.testing.assert_frame_equal(videos, again)

    other = generate_videos(ROWS, ENTITIES, seed=SEED + 1, rgb_dims=RGB, audio_dims=AUDIO)
    feats = rgb_columns(RGB) + audio_columns(AUDIO)
    assert not np.array_equal(videos[feats].to_numpy(), other[feats].to_numpy())
    assert videos["tags"].tolist() != other["tags"].tolist()


def test_write_videos_round_trip_equals_generate(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "dir" / "videos.parquet"
    out = write_videos(target, 700, 8, seed=3, rgb_dims=6, audio_dims=5, row_group_size=256)
    assert out == target
    assert target.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["videos.parquet"]  # no tmp left

    meta = pq.ParquetFile(target).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [256, 256, 188]

    expected = generate_videos(700, 8, seed=3, rgb_dims=6, audio_dims=5)
    got = pd.read_parquet(target)
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(_as_lists(got), expected, check_dtype=False)
    feats = rgb_columns(6) + audio_columns(5)
    assert (got[feats].dtypes == np.float32).all()

    # Overwriting an existing file works and yields the new content.
    write_videos(target, 10, 8, seed=4, rgb_dims=6, audio_dims=5)
    assert len(pd.read_parquet(target)) == 10


def test_chunked_generation_matches_across_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Force many small generation chunks that do not line up with the row groups."""
    entities, rgb, audio = 6, 5, 3
    monkeypatch.setattr(synthetic, "_CHUNK_MIN_ROWS", 1)
    monkeypatch.setattr(synthetic, "_CHUNK_TARGET_BYTES", 4 * (entities + rgb + audio) * 64)
    kwargs: dict[str, Any] = {"seed": 11, "rgb_dims": rgb, "audio_dims": audio}

    expected = generate_videos(1000, entities, **kwargs)
    path = write_videos(tmp_path / "v.parquet", 1000, entities, row_group_size=300, **kwargs)
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [300] * 3 + [100]
    pd.testing.assert_frame_equal(_as_lists(pd.read_parquet(path)), expected, check_dtype=False)

    # Chunks really are independent draws (not one chunk repeated).
    feats = expected[rgb_columns(rgb)].to_numpy()
    assert not np.array_equal(feats[:64], feats[64:128])


def test_failed_write_leaves_existing_file_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "videos.parquet"
    target.write_bytes(b"old")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(synthetic, "_fill_chunk", boom)
    with pytest.raises(RuntimeError, match="boom"):
        write_videos(target, 10, 4, rgb_dims=2, audio_dims=2)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["videos.parquet"]


# --------------------------------------------------------------------------- label statistics


def test_tag_counts_and_long_tail(videos: pd.DataFrame) -> None:
    lengths = videos["tags"].map(len)
    assert lengths.min() >= 1
    assert 3.0 * 0.75 <= lengths.mean() <= 3.0 * 1.25

    counts = Counter(t for tags in videos["tags"] for t in tags)
    freq = np.array([counts[name] for name in entity_names(ENTITIES)])
    assert freq.min() >= 5  # every entity shows up
    assert freq.max() >= 4 * freq.min()  # long tail
    assert freq[0] == freq.max()
    # Prevalence decreases with entity index (Zipf-like), up to sampling noise.
    ranks = np.argsort(np.argsort(-freq))
    assert np.corrcoef(ranks, np.arange(ENTITIES))[0, 1] > 0.9


def test_mean_tags_is_respected() -> None:
    df = generate_videos(1500, 30, seed=2, rgb_dims=2, audio_dims=2, mean_tags=6.0)
    assert 6.0 * 0.75 <= df["tags"].map(len).mean() <= 6.0 * 1.25
    df1 = generate_videos(200, 5, seed=2, rgb_dims=2, audio_dims=2, mean_tags=1.0)
    assert (df1["tags"].map(len) == 1).all()


# --------------------------------------------------------------------------- learnability


def _fit_predict(videos: pd.DataFrame, columns: list[str]) -> np.ndarray:
    x = videos[columns].to_numpy()
    y = _label_matrix(videos["tags"], ENTITIES)
    model = OneVsRestClassifier(LogisticRegression(max_iter=300))
    model.fit(x[:TRAIN], y[:TRAIN])
    return np.asarray(model.predict_proba(x[TRAIN:]))


@pytest.fixture(scope="module")
def predictions(videos: pd.DataFrame) -> dict[str, np.ndarray]:
    rgb, audio = rgb_columns(RGB), audio_columns(AUDIO)
    return {
        "all": _fit_predict(videos, rgb + audio),
        "audio": _fit_predict(videos, audio),
        "visual": _fit_predict(videos, rgb),
    }


def test_labels_are_learnable(videos: pd.DataFrame, predictions: dict[str, np.ndarray]) -> None:
    y = _label_matrix(videos["tags"], ENTITIES)
    y_test = y[TRAIN:]
    hit_at_1 = y_test[np.arange(len(y_test)), predictions["all"].argmax(axis=1)].mean()
    most_frequent = int(y[:TRAIN].sum(axis=0).argmax())
    baseline = y_test[:, most_frequent].mean()
    assert hit_at_1 >= baseline + 0.2, (hit_at_1, baseline)


def _aucs(videos: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    y_test = _label_matrix(videos["tags"], ENTITIES)[TRAIN:]
    return {
        name: float(roc_auc_score(y_test[:, i], scores[:, i]))
        for i, name in enumerate(entity_names(ENTITIES))
    }


def test_perspectives_restrict_what_a_model_can_see(
    videos: pd.DataFrame, predictions: dict[str, np.ndarray]
) -> None:
    groups = entity_perspectives(ENTITIES)

    def mean_auc(aucs: dict[str, float], group: str) -> float:
        return float(np.mean([auc for name, auc in aucs.items() if groups[name] == group]))

    audio_aucs = _aucs(videos, predictions["audio"])
    visual_aucs = _aucs(videos, predictions["visual"])
    assert mean_auc(audio_aucs, "audio") >= 0.75
    assert mean_auc(audio_aucs, "visual") <= 0.62
    assert mean_auc(audio_aucs, "both") >= 0.75
    assert mean_auc(visual_aucs, "visual") >= 0.75
    assert mean_auc(visual_aucs, "audio") <= 0.62
    assert mean_auc(visual_aucs, "both") >= 0.75

    # An ensemble of the two single-perspective models covers more entities than either.
    ensemble_aucs = _aucs(videos, (predictions["audio"] + predictions["visual"]) / 2)

    def covered(aucs: dict[str, float]) -> int:
        return sum(auc >= 0.7 for auc in aucs.values())

    assert covered(ensemble_aucs) > max(covered(audio_aucs), covered(visual_aucs))
    assert covered(ensemble_aucs) >= ENTITIES - 2


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rows": 0}, "rows"),
        ({"rows": 2.5}, "rows"),
        ({"rows": True}, "rows"),
        ({"entities": 1}, "entities"),
        ({"seed": -1}, "seed"),
        ({"rgb_dims": 0}, "rgb_dims"),
        ({"audio_dims": 0}, "audio_dims"),
        ({"mean_tags": 0.5}, "mean_tags"),
        ({"mean_tags": 50.0}, "mean_tags"),
    ],
)
def test_bad_args_raise_value_error(kwargs: dict[str, Any], name: str) -> None:
    args: dict[str, Any] = {"rows": 10, "entities": 5, "rgb_dims": 2, "audio_dims": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        generate_videos(**args)


def test_write_videos_validates_args(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="row_group_size"):
        write_videos(tmp_path / "v.parquet", 10, 5, rgb_dims=2, audio_dims=2, row_group_size=0)
    with pytest.raises(ValueError, match="rows"):
        write_videos(tmp_path / "v.parquet", 0, 5, rgb_dims=2, audio_dims=2)
    assert list(tmp_path.iterdir()) == []
