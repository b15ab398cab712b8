"""Step memoization through the graph: ingestion rules, training reuse, forcing and cache GC."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from dagster import AssetKey

from ml_assets.core.config import load_settings
from ml_assets.state.planning import plan_training
from ml_assets.state.records import Record, latest_record
from ml_assets.state.retention import collect
from ml_assets.storage.store import ArtifactStore
from ml_assets_tests.conftest import Project, write_csv_source

DAY = 86_400.0
T0 = 1_800_000_000.0


def _record(project: Project, key: str, partition: str | None = None) -> Record:
    record = latest_record(project.instance, AssetKey(key), partition)
    assert record is not None
    return record


def _small_csv_project(project: Project, rows: int = 300) -> Path:
    source = write_csv_source(project.root / "data.csv", rows)
    project.write_config(
        dataset={"source": "data.csv"},
        selection={"min_score": 0.5},
        candidates=[
            {"name": "lr", "model": "logistic_regression"},
            {"name": "nb", "model": "gaussian_nb"},
        ],
    )
    return source


def test_ingestion_reuses_within_the_window_and_reruns_after_it(project: Project) -> None:
    project.now = T0
    assert project.run("ingest_job").success
    first = _record(project, "ingested_dataset")
    assert first["memoized"] is False and first["reason"] == "never ingested"

    project.now = T0 + 3 * DAY
    assert project.run("ingest_job").success
    second = _record(project, "ingested_dataset")
    assert second["memoized"] is True and "source unchanged" in second["reason"]
    assert second.data_version == first.data_version
    assert second["state_ingested_at"] == T0  # the window counts from the real ingestion

    project.now = T0 + 15 * DAY
    assert project.run("ingest_job").success
    third = _record(project, "ingested_dataset")
    assert third["memoized"] is False and "freshness window expired" in third["reason"]


def test_ingestion_reruns_on_significant_row_change_only(project: Project) -> None:
    source = _small_csv_project(project, rows=300)
    project.now = T0
    assert project.run("ingest_job").success
    write_csv_source(source, rows=315)  # +5 %: below min_row_change, but the content changed
    project.write_config(memoization={"content_change": "significant"})
    assert project.run("ingest_job").success
    assert _record(project, "ingested_dataset")["memoized"] is True
    write_csv_source(source, rows=360)  # +20 %
    assert project.run("ingest_job").success
    record = _record(project, "ingested_dataset")
    assert record["memoized"] is False and "record count 300 → 360" in record["reason"]


def test_content_change_with_same_count_reruns_by_default(project: Project) -> None:
    source = _small_csv_project(project)
    assert project.run("ingest_job").success
    before = _record(project, "ingested_dataset")
    write_csv_source(source, rows=300, seed=1)
    assert project.run("ingest_job").success
    after = _record(project, "ingested_dataset")
    assert after["memoized"] is False and after["reason"] == "source content changed"
    assert after["dataset_key"] != before["dataset_key"]


def test_forcing_ingestion_with_a_tag(project: Project) -> None:
    assert project.run("ingest_job").success
    assert project.run("ingest_job", tags={"ml_assets/force": "ingested_dataset"}).success
    record = _record(project, "ingested_dataset")
    assert record["memoized"] is False and "forced" in record["reason"]


def test_training_is_memoized_and_only_changed_candidates_retrain(project: Project) -> None:
    _small_csv_project(project)
    assert project.run("ingest_job").success
    project.train_all()
    first = {n: _record(project, "trained_model", n) for n in ("lr", "nb")}
    store = project.store
    assert plan_training(project.instance, load_settings(project.config_path), store).to_train == []
    assert project.run("train_job", "lr").success
    again = _record(project, "trained_model", "lr")
    assert again["memoized"] is True and again.data_version == first["lr"].data_version
    assert again["produced_by_run"] == first["lr"]["produced_by_run"]
    # Where each model was fit: this test process (in-process runs); a memo hit keeps it.
    assert first["lr"]["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert again["worker"] == first["lr"]["worker"]

    project.write_config(
        candidates=[
            {"name": "lr", "model": "logistic_regression", "params": {"C": 0.1}},
            project.config["candidates"][1],
        ]
    )
    plan = plan_training(project.instance, load_settings(project.config_path), store)
    assert [c.name for c in plan.to_train] == ["lr"] and plan.up_to_date == ["nb"]
    assert project.run("train_job", "lr").success
    changed = _record(project, "trained_model", "lr")
    assert changed["memoized"] is False and changed.data_version != first["lr"].data_version


def test_data_change_retrains_every_candidate(project: Project) -> None:
    source = _small_csv_project(project)
    assert project.run("ingest_job").success
    project.train_all()
    write_csv_source(source, rows=300, seed=7)
    assert project.run("ingest_job").success
    plan = plan_training(project.instance, load_settings(project.config_path), project.store)
    assert sorted(c.name for c in plan.to_train) == ["lr", "nb"]


def test_corrupt_cached_model_is_a_miss_and_retrains(project: Project) -> None:
    _small_csv_project(project)
    assert project.run("ingest_job").success
    project.train_all()
    record = _record(project, "trained_model", "nb")
    model_file = Path(record["path"]) / "model.joblib"
    model_file.write_bytes(model_file.read_bytes()[: len(model_file.read_bytes()) // 2])
    result = project.run("train_job", "nb")
    assert result.success
    again = _record(project, "trained_model", "nb")
    assert again["memoized"] is False
    assert project.store.verify("models", again["model_key"], again["digest"])
    logs = [e.message for e in project.instance.all_logs(result.run_id) if e.message]
    assert any("cached model unusable" in m and "SHA-256" in m for m in logs)


def test_forcing_one_candidate_retrains_it(project: Project) -> None:
    _small_csv_project(project)
    assert project.run("ingest_job").success
    project.train_all()
    assert project.run("train_job", "lr", tags={"ml_assets/force": "lr"}).success
    assert _record(project, "trained_model", "lr")["memoized"] is False


def _old_entry(store: ArtifactStore, key: str, when: float) -> None:
    old = ArtifactStore(store.root, clock=lambda: when)
    old.put("models", key, lambda d: (d / "model.joblib").write_bytes(b"old model"))


def test_gc_keeps_what_is_served_and_deletes_what_nobody_hit(project: Project) -> None:
    _small_csv_project(project)
    assert project.workflow().success
    store = project.store
    _old_entry(store, "removedcandidate000000000", when=T0 - 60 * DAY)
    settings = load_settings(project.config_path)
    store.clock = lambda: T0 + 400 * DAY  # everything is now old
    dry = collect(project.instance, settings, store, dry_run=True)
    assert ("models", "removedcandidate000000000") in dry.deleted
    assert store.path("models", "removedcandidate000000000").exists(), "dry run deleted"
    report = collect(project.instance, settings, store, dry_run=False)
    assert not store.path("models", "removedcandidate000000000").exists()
    assert report.bytes_freed > 0
    selection = _record(project, "model_selection")
    for name in selection["selected"]:
        model = _record(project, "trained_model", name)
        assert store.verify("models", model["model_key"], model["digest"])
    aggregated = _record(project, "aggregated_predictions")
    assert store.verify("aggregated", aggregated["aggregated_key"], aggregated["digest"])


def test_gc_job_runs_and_reports(project: Project) -> None:
    _small_csv_project(project)
    assert project.workflow().success
    result = (
        project.defs()
        .resolve_job_def("cache_gc_job")
        .execute_in_process(
            instance=project.instance,
            run_config={"ops": {"collect_cache_garbage": {"config": {"dry_run": True}}}},
        )
    )
    assert result.success
    events = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    output_metadata = events[0].step_output_data.metadata
    assert output_metadata["dry_run"].value is True
    assert output_metadata["entries_deleted"].value == 0  # everything is fresh or protected
    assert output_metadata["kept_protected"].value >= 4


def test_gc_never_deletes_entries_in_use(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, clock=lambda: T0)
    store.put("models", "inuse", lambda d: (d / "f").write_bytes(b"x"))
    store.clock = lambda: T0 + 100 * DAY
    report = store.collect_garbage(DAY, set(), keep_hit_since=T0 - 1)
    assert report.deleted == [] and store.path("models", "inuse").exists()
    report = store.collect_garbage(DAY, set())
    assert report.deleted == [("models", "inuse")]


def test_removed_cached_dataset_is_reingested(project: Project) -> None:
    assert project.run("ingest_job").success
    record = _record(project, "ingested_dataset")
    shutil.rmtree(record["path"])
    assert project.run("ingest_job").success
    again = _record(project, "ingested_dataset")
    assert again["memoized"] is False and "cached dataset unusable" in again["reason"]
