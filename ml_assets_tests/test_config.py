"""Unit tests for `ml_assets.yaml` loading and validation (`ml_assets/config.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_assets.core.config import (
    CANDIDATE_NAME_PATTERN,
    CONFIG_ENV,
    CandidateConfig,
    ConfigError,
    Settings,
    StoreLocation,
    load_settings,
    store_location,
)

PROJECT_CONFIG = Path(__file__).resolve().parents[1] / "ml_assets.yaml"
ONE_CANDIDATE = "candidates:\n  - {name: lr, model: logistic_regression}\n"


def _write(tmp_path: Path, text: str, name: str = "ml_assets.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


def test_defaults_with_only_candidates(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, ONE_CANDIDATE))
    assert settings.dataset.source == "sklearn_digits"
    assert settings.dataset.label == "label"
    assert settings.dataset.id is None
    assert settings.selection.metric == "hit@1"
    assert settings.selection.strategy == "top_k"
    assert settings.selection.top_k == 2
    assert settings.selection.min_score == pytest.approx(0.90)
    assert settings.serving.aggregation == "auto"
    assert settings.serving.tag_threshold == pytest.approx(0.5)
    assert settings.memoization.freshness_days == pytest.approx(14.0)
    assert settings.memoization.min_row_change == pytest.approx(0.10)
    assert settings.memoization.cache_retention_days == pytest.approx(30.0)
    assert [c.name for c in settings.candidates] == ["lr"]
    assert settings.candidates[0].params == {}
    assert settings.candidates[0].features is None


def test_shipped_config_loads() -> None:
    settings = load_settings(PROJECT_CONFIG)
    assert isinstance(settings, Settings)
    assert len(settings.candidates) >= 6
    assert len({c.name for c in settings.candidates}) == len(settings.candidates)
    assert settings.candidate("lightgbm_fast").model == "lightgbm"


def test_candidate_lookup_names_known_candidates(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, ONE_CANDIDATE))
    with pytest.raises(ConfigError, match=r"'nope' is not in the config \(known: lr\)"):
        settings.candidate("nope")


def test_invalid_yaml_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "candidates: [\n  - {name: lr\n")
    message = _error(path)
    assert str(path) in message
    assert "not valid YAML" in message


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- a\n- b\n")
    message = _error(path)
    assert str(path) in message
    assert "expected a mapping" in message


def test_empty_file_reports_missing_candidates(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    message = _error(path)
    assert str(path) in message
    assert "candidates" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour: red\n" + ONE_CANDIDATE, "colour"),
        ("selection: {topk: 3}\n" + ONE_CANDIDATE, "selection.topk"),
        ("dataset: {split: {test: 0.1}}\n" + ONE_CANDIDATE, "dataset.split.test"),
        ("candidates:\n  - {name: lr, model: knn, parms: {}}\n", "candidates.0.parms"),
    ],
)
def test_unknown_key_names_file_and_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    message = _error(path)
    assert str(path) in message
    assert f"  {key}: unknown key" in message


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ("selection: {top_k: two}\n", "selection.top_k", "'two'"),
        ("selection: {min_score: 2}\n", "selection.min_score", "less than or equal to 1"),
        ("selection: {top_k: 0}\n", "selection.top_k", "greater than or equal to 1"),
        ("selection: {metric: auc}\n", "selection.metric", "'hit@1', 'gap@20', 'perr' or 'map'"),
        ("selection: {strategy: best}\n", "selection.strategy", "'top_k' or 'ensemble'"),
        ("serving: {tag_threshold: 1.5}\n", "serving.tag_threshold", "less than 1"),
        ("dataset: {label: []}\n", "dataset.label", "non-empty list"),
        ("memoization: {cache_retention_days: 0}\n", "memoization.cache_retention_days", "0"),
    ],
)
def test_wrong_types_and_ranges(tmp_path: Path, text: str, key: str, detail: str) -> None:
    path = _write(tmp_path, text + ONE_CANDIDATE)
    message = _error(path)
    assert str(path) in message
    line = next(line for line in message.splitlines() if line.strip().startswith(f"{key}:"))
    assert detail in line


def test_duplicate_candidate_names(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "candidates:\n  - {name: rf, model: random_forest}\n  - {name: rf, model: knn}\n",
    )
    message = _error(path)
    assert str(path) in message
    assert "duplicate candidate name 'rf'" in message


def test_no_candidates_rejected(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "candidates: []\n"))
    assert "at least one candidate" in message


@pytest.mark.parametrize("name", ["Bad", "a/b", "../x", "", "a" * 65, "modèle", "-a", "a b"])
def test_invalid_candidate_names_rejected(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, f"candidates:\n  - {{name: {name!r}, model: knn}}\n")
    message = _error(path)
    assert str(path) in message
    assert "candidates.0.name" in message
    assert CANDIDATE_NAME_PATTERN.pattern in message


@pytest.mark.parametrize("name", ["a", "a" * 64, "lightgbm_fast", "0-x_y"])
def test_valid_candidate_names_accepted(tmp_path: Path, name: str) -> None:
    settings = load_settings(_write(tmp_path, f"candidates:\n  - {{name: {name!r}, model: knn}}\n"))
    assert settings.candidates[0].name == name


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    path = tmp_path / "absent.yaml"
    message = _error(path)
    assert str(path) in message
    assert "not found" in message
    assert CONFIG_ENV not in message


def test_env_var_selects_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "selection: {top_k: 3}\n" + ONE_CANDIDATE, name="other.yaml")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    monkeypatch.chdir(tmp_path)  # no ml_assets.yaml here: the env var must be what is read
    assert load_settings().selection.top_k == 3


def test_env_var_pointing_nowhere_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "missing.yaml"
    monkeypatch.setenv(CONFIG_ENV, str(path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path) in str(info.value)
    assert f"${CONFIG_ENV}" in str(info.value)


def test_unknown_model_type_is_accepted_at_load(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, "candidates:\n  - {name: x, model: xgboost_9000}\n"))
    assert settings.candidate("x").model == "xgboost_9000"


def test_config_hash_stable_and_sensitive() -> None:
    base = CandidateConfig(name="a", model="lightgbm", params={"num_leaves": 15, "n": 1})
    same = CandidateConfig(name="b", model="lightgbm", params={"n": 1, "num_leaves": 15})
    assert base.config_hash() == same.config_hash()  # name and key order excluded
    assert len(base.config_hash()) == 16
    changed = [
        CandidateConfig(name="a", model="lightgbm", params={"num_leaves": 16, "n": 1}),
        CandidateConfig(name="a", model="random_forest", params={"num_leaves": 15, "n": 1}),
        CandidateConfig(
            name="a", model="lightgbm", params={"num_leaves": 15, "n": 1}, features=["x_*"]
        ),
    ]
    hashes = {c.config_hash() for c in changed}
    assert base.config_hash() not in hashes
    assert len(hashes) == 3


def test_the_store_is_the_home_s_unless_ml_assets_store_names_another(tmp_path: Path) -> None:
    home = {"ML_ASSETS_HOME": str(tmp_path / "home")}
    assert store_location(home) == StoreLocation(tmp_path / "home" / "store")
    for value in (str(tmp_path / "s"), f"file://{tmp_path}/s"):
        assert store_location({**home, "ML_ASSETS_STORE": value}) == StoreLocation(tmp_path / "s")
    # An object store, through a cache on this machine.
    assert store_location({**home, "ML_ASSETS_STORE": "s3://b/p/"}) == StoreLocation(
        tmp_path / "home" / "store-cache", "s3://b/p"
    )


def test_accuracy_is_an_alias_of_hit_at_1(tmp_path: Path) -> None:
    path = _write(tmp_path, "selection: {metric: accuracy}\n" + ONE_CANDIDATE)
    assert load_settings(path).selection.metric == "hit@1"
