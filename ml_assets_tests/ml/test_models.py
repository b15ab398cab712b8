"""Unit tests for training, scoring and persisting candidates (`ml_assets/ml/models.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_assets.ml.datasets import Dataset, clean, load_digits_frame, split
from ml_assets.ml.models import (
    MODEL_META,
    MODEL_TYPES,
    SKLEARN_FILE,
    CandidateError,
    load_model,
    save_model,
    select_features,
    train_candidate,
)
from ml_assets.ml.synthetic import generate_videos

# Small, fast settings per model type (ensembles of trees kept tiny).
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "lightgbm": {"n_estimators": 10, "num_leaves": 7, "min_child_samples": 5},
    "logistic_regression": {"max_iter": 300},
    "random_forest": {"n_estimators": 10},
    "extra_trees": {"n_estimators": 10},
    "knn": {"n_neighbors": 3},
    "gaussian_nb": {},
    "decision_tree": {"max_depth": 5},
}


def _parts(dataset: Dataset) -> dict[str, Dataset]:
    return split(dataset, validation=0.2, serving=0.2, seed=0)


@pytest.fixture(scope="module")
def digits_parts() -> dict[str, Dataset]:
    dataset, _ = clean(load_digits_frame(), "label", None)
    return _parts(dataset.take(np.arange(400)))


@pytest.fixture(scope="module")
def videos_parts() -> dict[str, Dataset]:
    frame = generate_videos(300, 6, seed=0, rgb_dims=16, audio_dims=8)
    dataset, _ = clean(frame, "tags", "video_id")
    assert dataset.task == "multilabel"
    return _parts(dataset)


def test_fast_params_cover_every_model_type() -> None:
    assert set(FAST_PARAMS) == set(MODEL_TYPES)


def _check_scores(scores: np.ndarray, part: Dataset) -> None:
    assert scores.shape == (len(part), len(part.entities))
    assert np.isfinite(scores).all()
    assert scores.min() >= 0.0
    assert scores.max() <= 1.0


@pytest.mark.parametrize("model", sorted(MODEL_TYPES))
def test_every_model_trains_multiclass(model: str, digits_parts: dict[str, Dataset]) -> None:
    result = train_candidate("c", model, FAST_PARAMS[model], None, digits_parts["train"])
    assert result.rows == len(digits_parts["train"])
    assert result.model.model_type == model
    validation = digits_parts["validation"]
    scores = result.model.predict_scores(validation.X)
    _check_scores(scores, validation)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    accuracy = (scores.argmax(axis=1) == validation.Y.argmax(axis=1)).mean()
    assert accuracy > 0.5  # well above the 0.1 of chance on ten digits


@pytest.mark.parametrize("model", sorted(MODEL_TYPES))
def test_every_model_trains_multilabel(model: str, videos_parts: dict[str, Dataset]) -> None:
    result = train_candidate("c", model, FAST_PARAMS[model], None, videos_parts["train"])
    validation = videos_parts["validation"]
    scores = result.model.predict_scores(validation.X)
    _check_scores(scores, validation)
    assert scores.std() > 0  # not one constant answer


def test_result_params_include_seed_and_defaults(digits_parts: dict[str, Dataset]) -> None:
    result = train_candidate(
        "c", "random_forest", {"n_estimators": 5}, None, digits_parts["train"], seed=7
    )
    assert result.params["n_estimators"] == 5
    assert result.params["random_state"] == 7
    assert result.params["n_jobs"] == 1


def _round_trip(model: str, part: Dataset, tmp_path: Path) -> tuple[list[str], np.ndarray]:
    result = train_candidate("c", model, FAST_PARAMS[model], None, part)
    files = save_model(result.model, tmp_path)
    loaded = load_model(tmp_path)
    before = result.model.predict_scores(part.X)
    np.testing.assert_array_equal(loaded.predict_scores(part.X), before)
    assert loaded.entities == part.entities
    assert loaded.features == part.features
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    return files, before


def test_lightgbm_round_trip_multiclass(digits_parts: dict[str, Dataset], tmp_path: Path) -> None:
    files, _ = _round_trip("lightgbm", digits_parts["train"], tmp_path)
    assert files == [MODEL_META, "lightgbm_0.txt"]
    assert (tmp_path / "lightgbm_0.txt").read_text().startswith("tree")


def test_lightgbm_round_trip_multilabel(videos_parts: dict[str, Dataset], tmp_path: Path) -> None:
    files, _ = _round_trip("lightgbm", videos_parts["train"], tmp_path)
    boosters = [f for f in files if f != MODEL_META]
    assert boosters
    assert all(f.startswith("lightgbm_") and f.endswith(".txt") for f in boosters)
    assert not (tmp_path / SKLEARN_FILE).exists()


@pytest.mark.parametrize("model", ["random_forest", "logistic_regression"])
def test_sklearn_round_trip(model: str, videos_parts: dict[str, Dataset], tmp_path: Path) -> None:
    files, _ = _round_trip(model, videos_parts["train"], tmp_path)
    assert files == [MODEL_META, SKLEARN_FILE]


def test_unknown_model_type(digits_parts: dict[str, Dataset]) -> None:
    with pytest.raises(CandidateError, match=r"candidate 'boosty': unknown model type 'xgboost'"):
        train_candidate("boosty", "xgboost", {}, None, digits_parts["train"])


@pytest.mark.parametrize(
    ("model", "param", "hint"),
    [("random_forest", "n_estimator", "n_estimators"), ("lightgbm", "num_leaf", "num_leaves")],
)
def test_unknown_hyperparameter_suggests(
    model: str, param: str, hint: str, digits_parts: dict[str, Dataset]
) -> None:
    with pytest.raises(CandidateError) as info:
        train_candidate("cand-1", model, {param: 3}, None, digits_parts["train"])
    message = str(info.value)
    assert "candidate 'cand-1'" in message
    assert f"no hyperparameter {param!r}" in message
    assert f"did you mean {hint!r}?" in message


@pytest.mark.parametrize("model", ["random_forest", "lightgbm", "knn"])
def test_invalid_hyperparameter_value(model: str, digits_parts: dict[str, Dataset]) -> None:
    param = "n_neighbors" if model == "knn" else "n_estimators"
    with pytest.raises(CandidateError, match="candidate 'bad': training failed"):
        train_candidate("bad", model, {param: -1}, None, digits_parts["train"])


def test_feature_globs_select_columns(videos_parts: dict[str, Dataset]) -> None:
    train = videos_parts["train"]
    result = train_candidate("audio", "decision_tree", {}, ["mean_audio_*"], train)
    assert result.model.features == [f"mean_audio_{i}" for i in range(8)]
    # Only the selected columns are needed for scoring.
    scores = result.model.predict_scores(train.X[result.model.features])
    assert scores.shape == (len(train), 6)
    with pytest.raises(ValueError, match="lack the model's feature columns"):
        result.model.predict_scores(train.X[["mean_rgb_0"]])


def test_select_features_multiple_globs() -> None:
    columns = ["a_1", "a_2", "b_1", "c"]
    assert select_features("x", columns, None) == columns
    assert select_features("x", columns, ["b_*", "c"]) == ["b_1", "c"]


def test_feature_glob_matching_nothing_names_candidate(videos_parts: dict[str, Dataset]) -> None:
    with pytest.raises(
        CandidateError, match=r"candidate 'lidar': features \['lidar_\*'\] match no"
    ):
        train_candidate("lidar", "knn", {}, ["lidar_*"], videos_parts["train"])


@pytest.mark.parametrize("model", sorted(MODEL_TYPES))
def test_nan_features_are_handled(model: str, digits_parts: dict[str, Dataset]) -> None:
    train = digits_parts["train"]
    x = train.X.copy()
    rng = np.random.default_rng(0)
    x = x.mask(rng.random(x.shape) < 0.1)
    x["pixel_0_0"] = np.nan  # a column with no value at all
    with_nans = Dataset(train.task, train.entities, train.ids, x, train.Y)
    result = train_candidate("c", model, FAST_PARAMS[model], None, with_nans)
    scores = result.model.predict_scores(x)
    _check_scores(scores, train)


def test_same_seed_same_scores(digits_parts: dict[str, Dataset]) -> None:
    train, validation = digits_parts["train"], digits_parts["validation"]

    def scores(seed: int) -> np.ndarray:
        params = {"n_estimators": 10, "max_features": 0.3}
        result = train_candidate("rf", "random_forest", params, None, train, seed=seed)
        return result.model.predict_scores(validation.X)

    np.testing.assert_array_equal(scores(3), scores(3))
    assert not np.array_equal(scores(3), scores(4))
