"""Steps on real Celery workers (`ML_ASSETS_CELERY_BROKER`, `ml-assets worker`), and the faults:
a worker process killed mid-fit, a broker nobody can reach.

The workers are real `ml-assets worker` processes on this machine's RabbitMQ (127.0.0.1:5672) or
Redis (127.0.0.1:6379); in CI (`CI=true`) a missing server fails these tests, elsewhere they are
skipped with the reason. Each test has queues of its own (`ML_ASSETS_CELERY_NAMESPACE`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from ml_assets.cli.postgres import POSTGRES_ENV, dagster_url
from ml_assets.cli.preflight import BrokerError, check_broker
from ml_assets.core.config import STORE_ENV
from ml_assets.core.names import PROCESS_TAG, QUEUES, TRAINED_MODEL
from ml_assets.core.workers import (
    BROKER_ENV,
    NAMESPACE_ENV,
    backend_url,
    celery_settings,
    queue_name,
)
from ml_assets.defs.executor import in_celery_worker
from ml_assets.state.records import latest_record
from ml_assets.state.runs import run_error_text
from ml_assets.storage.store import ArtifactStore
from ml_assets_tests.faults import (
    assert_every_visible_artifact_verifies,
    kill_group,
    run_cli,
    start_cli,
    wait_for,
)
from ml_assets_tests.services import unavailable

AMQP = os.environ.get("ML_ASSETS_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("ML_ASSETS_TEST_REDIS", "redis://127.0.0.1:6379/7")


def _reachable(url: str) -> str:
    try:
        check_broker(url)
    except BrokerError as error:
        unavailable(str(error))
    return url


def _delete_queues(url: str) -> None:
    """Remove this test's queues from the broker (their names are the test's own)."""
    from kombu import Connection

    with Connection(url, connect_timeout=5) as connection:
        for name in QUEUES:
            channel = connection.channel()
            try:
                channel.queue_delete(queue_name(name))
            except connection.channel_errors:  # never declared (RabbitMQ closes the channel)
                pass
            finally:
                channel.close()


@contextmanager
def _own_queues(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The broker, with queues no other test or deployment on it uses (a namespace of its own)."""
    monkeypatch.setenv(BROKER_ENV, url)
    monkeypatch.setenv(NAMESPACE_ENV, f"ml_assets_test_{uuid.uuid4().hex[:12]}")
    try:
        yield url
    finally:
        _delete_queues(url)


@pytest.fixture(params=[pytest.param(AMQP, id="rabbitmq"), pytest.param(REDIS, id="redis")])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with _own_queues(_reachable(request.param), monkeypatch) as url:
        yield url


@pytest.fixture
def rabbitmq(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with _own_queues(_reachable(AMQP), monkeypatch) as url:
        yield url


class Workers:
    """`ml-assets worker` processes of one test, each in its own session, killed at the end."""

    def __init__(self, home: Path, config: Path, logs: Path) -> None:
        self.home, self.config, self.logs = home, config, logs
        self.processes: list[tuple[subprocess.Popen[str], IO[str], Path]] = []

    def start(self, *args: str) -> subprocess.Popen[str]:
        log_path = self.logs / f"worker-{len(self.processes)}.log"
        log = log_path.open("w")
        process = start_cli(["worker", "--concurrency", "1", *args], self.home, self.config, log)
        self.processes.append((process, log, log_path))
        wait_for(
            lambda: True if " ready." in log_path.read_text() else self._alive(process),
            120,
            f"worker {args} to be ready ({log_path})",
        )
        return process

    @staticmethod
    def _alive(process: subprocess.Popen[str]) -> None:
        assert process.poll() is None, f"the worker exited ({process.returncode})"

    def pool_pids(self, process: subprocess.Popen[str]) -> set[int]:
        """The pool processes of a worker: the ones that execute steps."""
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
        return {int(pid) for pid in children.split()}

    def stop(self) -> None:
        for process, log, _ in self.processes:
            if process.poll() is None:
                kill_group(process)
            log.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path / "home", tmp_path / "ml_assets.yaml", tmp_path)
    yield pool
    pool.stop()


def _config(tmp_path: Path, candidates: list[dict[str, Any]]) -> Path:
    path = tmp_path / "ml_assets.yaml"
    body = {
        "dataset": {"source": "sklearn_digits"},
        "training": {"max_concurrent": 2},
        "retries": {"max_retries": 0},
        "candidates": candidates,
    }
    path.write_text(yaml.safe_dump(body))
    return path


def _instance(tmp_path: Path) -> DagsterInstance:
    return DagsterInstance.from_config(str(tmp_path / "home" / "dagster"))


def _worker_pids(instance: DagsterInstance, names: list[str]) -> dict[str, tuple[str, int]]:
    found = {}
    for name in names:
        record = latest_record(instance, TRAINED_MODEL, name)
        assert record is not None, f"{name} did not land"
        host, pid = record["worker"].rsplit(":", 1)
        found[name] = (host, int(pid))
    return found


@pytest.mark.e2e
def test_two_training_workers_fit_every_candidate_and_say_where(
    tmp_path: Path, rabbitmq: str, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["trees", "forest", "lr", "nb"]
    config = _config(
        tmp_path,
        [
            {"name": "trees", "model": "extra_trees", "params": {"n_estimators": 120}},
            {"name": "forest", "model": "random_forest", "params": {"n_estimators": 120}},
            {"name": "lr", "model": "logistic_regression"},
            {"name": "nb", "model": "gaussian_nb"},
        ],
    )
    # The store in a folder of its own, as on a shared mount: every process uses it.
    shared = tmp_path / "shared" / "store"
    monkeypatch.setenv(STORE_ENV, str(shared))
    training = [workers.start("--queue", "training") for _ in range(2)]
    serving = workers.start("--queue", "serving")
    result = run_cli(["run", "--mode", "sync", "--max-concurrent", "2"], tmp_path / "home", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Selected:" in result.stdout and "Traceback" not in result.stderr
    fitting = set().union(*(workers.pool_pids(w) for w in training))
    with _instance(tmp_path) as instance:
        where = _worker_pids(instance, names)
        # Every model was fit in a training worker's pool process, on this host; none in the
        # run's own process (which only orchestrated) and none on the serving worker.
        assert {host for host, _ in where.values()} == {socket.gethostname()}
        assert {pid for _, pid in where.values()} <= fitting, (where, fitting)
        assert not {pid for _, pid in where.values()} & workers.pool_pids(serving)
        runs = instance.get_run_records(RunsFilter(job_name="train_job"))
        assert len(runs) == 4
        assert {r.dagster_run.status for r in runs} == {DagsterRunStatus.SUCCESS}
        orchestrators = {r.dagster_run.tags[PROCESS_TAG].split("/")[2] for r in runs}
        assert not orchestrators & {str(pid) for _, pid in where.values()}
        # The serving steps ran on the serving queue's worker.
        serve = instance.get_run_records(RunsFilter(job_name="serve_job"), limit=1)[0]
        hosts = [
            str(e.dagster_event.engine_event_data.metadata["Celery worker"].value)
            for e in instance.all_logs(
                serve.dagster_run.run_id, of_type=DagsterEventType.ENGINE_EVENT
            )
            if e.dagster_event is not None
            and "Celery worker" in e.dagster_event.engine_event_data.metadata
        ]
        assert hosts and all(h.startswith("ml-assets-serving-") for h in hosts), hosts
    visible = assert_every_visible_artifact_verifies(ArtifactStore(shared))
    assert sum(kind == "models" for kind, _ in visible) == 4
    # `ml-assets status` says where each model was fit.
    status = run_cli(["status", "--json"], tmp_path / "home", config)
    board = {e["name"]: e["worker"] for e in json.loads(status.stdout)["leaderboard"]}
    assert board == {name: f"{host}:{pid}" for name, (host, pid) in where.items()}
    assert not (tmp_path / "home" / "store").exists(), "nothing in the home's own store"


@pytest.mark.e2e
def test_workers_record_on_a_postgres_instance(
    tmp_path: Path,
    rabbitmq: str,
    postgres_url: str,
    workers: Workers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The production pairing: the instance on Postgres, the steps on workers (which get the
    instance from the run, and its URL from their own environment)."""
    monkeypatch.setenv(POSTGRES_ENV, postgres_url)
    config = _config(
        tmp_path,
        [{"name": "lr", "model": "logistic_regression"}, {"name": "nb", "model": "gaussian_nb"}],
    )
    worker = workers.start()
    result = run_cli(["run", "--mode", "sync"], tmp_path / "home", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any((tmp_path / "home" / "dagster").glob("**/*.db")), "no SQLite next to Postgres"
    monkeypatch.setenv(POSTGRES_ENV, dagster_url(postgres_url))  # as `ml-assets` passes it on
    with _instance(tmp_path) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        where = _worker_pids(instance, ["lr", "nb"])
        assert {pid for _, pid in where.values()} <= workers.pool_pids(worker)


@pytest.mark.e2e
def test_the_daemon_drives_runs_whose_steps_run_on_workers(
    tmp_path: Path, broker: str, workers: Workers
) -> None:
    """`ml-assets run` (async: sensors launch the runs) with one worker on both queues, on
    RabbitMQ and on Redis."""
    config = _config(
        tmp_path,
        [
            {"name": "lr", "model": "logistic_regression"},
            {"name": "knn", "model": "knn"},
        ],
    )
    worker = workers.start()
    result = run_cli(["run"], tmp_path / "home", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Selected:" in result.stdout
    with _instance(tmp_path) as instance:
        where = _worker_pids(instance, ["lr", "knn"])
        assert {pid for _, pid in where.values()} <= workers.pool_pids(worker)


@pytest.mark.e2e
def test_a_worker_process_killed_mid_fit_fails_its_run_and_the_next_run_trains_again(
    tmp_path: Path, rabbitmq: str, workers: Workers
) -> None:
    config = _config(
        tmp_path,
        [
            {"name": "slow", "model": "extra_trees", "params": {"n_estimators": 4000}},
            {"name": "nb", "model": "gaussian_nb"},
        ],
    )
    worker = workers.start("--queue", "training")
    workers.start("--queue", "serving")
    home = tmp_path / "home"
    with (tmp_path / "run.log").open("w") as log:
        run = start_cli(["run", "--mode", "sync", "--max-concurrent", "1"], home, config, log)
        try:
            with _instance(tmp_path) as instance:

                def slow_step_started() -> bool | None:
                    for record in instance.get_run_records(RunsFilter(job_name="train_job")):
                        if record.dagster_run.tags.get("dagster/partition") != "slow":
                            continue
                        started = instance.all_logs(
                            record.dagster_run.run_id, of_type=DagsterEventType.STEP_START
                        )
                        return True if started else None
                    return None

                wait_for(slow_step_started, 180, "the slow candidate's step to start", every=0.1)
            (fitting,) = workers.pool_pids(worker)
            os.kill(fitting, 9)
            run.wait(timeout=300)
        finally:
            if run.poll() is None:
                kill_group(run)
    output = (tmp_path / "run.log").read_text()
    # The run says why: the worker process died (Dagster's own message says only "An exception
    # was thrown during execution").
    line = next(line for line in output.splitlines() if "FAILED" in line)
    assert line.split()[:2] == ["slow", "FAILED:"], output
    assert "a step's worker process failed: [trained_model]" in line, line
    assert "WorkerLostError" in line and "SIGKILL" in line, line
    store = ArtifactStore(home / "store")
    with _instance(tmp_path) as instance:
        (failed,) = instance.get_run_records(
            RunsFilter(job_name="train_job", statuses=[DagsterRunStatus.FAILURE])
        )
        assert failed.dagster_run.tags["dagster/partition"] == "slow"
        failure = instance.all_logs(failed.dagster_run.run_id, of_type=DagsterEventType.RUN_FAILURE)
        assert failure, "the run is marked failed by its own process"
        assert latest_record(instance, TRAINED_MODEL, "slow") is None  # no partial model
        assert latest_record(instance, TRAINED_MODEL, "nb") is not None  # the other landed
    assert_every_visible_artifact_verifies(store)
    # The next run trains it again (the worker replaced its pool process), now smaller.
    _config(
        tmp_path,
        [
            {"name": "slow", "model": "extra_trees", "params": {"n_estimators": 50}},
            {"name": "nb", "model": "gaussian_nb"},
        ],
    )
    again = run_cli(["run", "--mode", "sync"], home, config)
    assert again.returncode == 0, again.stdout + again.stderr
    with _instance(tmp_path) as instance:
        _, pid = _worker_pids(instance, ["slow"])["slow"]
        assert pid in workers.pool_pids(worker) and pid != fitting


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:secret@127.0.0.1:1//", "cannot connect"),
        ("http://127.0.0.1:5672", "expected a URL like amqp://"),
    ],
)
@pytest.mark.parametrize("command", [["run"], ["worker"]])
def test_a_broker_nobody_can_reach_fails_at_start_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, expected: str, command: list[str]
) -> None:
    monkeypatch.setenv(BROKER_ENV, url)
    config = _config(tmp_path, [{"name": "nb", "model": "gaussian_nb"}])
    result = run_cli(command, tmp_path / "home", config)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {BROKER_ENV}=") and expected in line, line
    assert "secret" not in line
    assert not (tmp_path / "home").exists(), "nothing is written before the broker answers"


def test_a_worker_without_a_broker_says_which_variable_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BROKER_ENV, raising=False)
    config = _config(tmp_path, [{"name": "nb", "model": "gaussian_nb"}])
    result = run_cli(["worker"], tmp_path / "home", config)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"error: {BROKER_ENV} is not set: name the broker the runs send their steps to, "
        "e.g. amqp://guest:guest@127.0.0.1:5672// or redis://127.0.0.1:6379/0"
    )


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ("nosuch://bucket/prefix", "Protocol not known: nosuch"),
        ("/proc/self", "not writable"),
        ("{tmp}/a-file/store", "cannot be created"),
    ],
)
@pytest.mark.parametrize("command", [["run"], ["worker"]])
def test_a_store_that_cannot_take_artifacts_fails_at_start_naming_the_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: str,
    expected: str,
    command: list[str],
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv(STORE_ENV, store.format(tmp=tmp_path))
    monkeypatch.setenv(BROKER_ENV, "redis://127.0.0.1:1/0")  # never reached: the store fails first
    if command == ["run"]:
        monkeypatch.delenv(BROKER_ENV)
    config = _config(tmp_path, [{"name": "nb", "model": "gaussian_nb"}])
    result = run_cli(command, tmp_path / "home", config)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {STORE_ENV}=") and expected in line, line
    assert not (tmp_path / "home").exists(), "nothing is written before the store is usable"


def test_both_sides_name_the_deployment_s_queues_and_results_backend() -> None:
    env = {NAMESPACE_ENV: "staging"}
    assert queue_name("training", env) == "staging.training"
    assert queue_name("serving", {}) == "ml_assets.serving"
    assert celery_settings(env)["task_default_queue"] == "staging.serving"
    assert backend_url("redis://h:6379/3", {}) == "redis://h:6379/3"
    assert backend_url("amqp://g@h//", {}) == "rpc://"
    assert backend_url("amqp://g@h//", {"ML_ASSETS_CELERY_BACKEND": "redis://r/1"}) == "redis://r/1"


def test_a_run_failed_by_its_workers_names_every_step_that_failed() -> None:
    @dataclass(frozen=True)
    class Error:
        message: str
        cls_name: str | None = "DagsterSubprocessError"
        cause: None = None

    trace = '\n\nStack Trace:\n  File "x.py", line 1, in f\n    raise\n'
    message = (
        "dagster._core.errors.DagsterSubprocessError: During celery execution errors occurred "
        "in workers:\n[trained_model]: billiard.exceptions.WorkerLostError: Worker exited "
        f"prematurely: signal 9 (SIGKILL) Job: 3.{trace}"
        f"[predictions_rank_1]: OSError: [Errno 28] No space left on device{trace}"
    )
    assert run_error_text(Error(message)) == (
        "a step's worker process failed: [trained_model]: billiard.exceptions.WorkerLostError: "
        "Worker exited prematurely: signal 9 (SIGKILL) Job: 3.; [predictions_rank_1]: OSError: "
        "[Errno 28] No space left on device"
    )
    assert run_error_text(Error(f"ValueError: bad\nsecond line{trace}")) == (
        "ValueError: bad; second line"
    )


def test_outside_a_celery_task_a_step_is_not_on_a_worker() -> None:
    import celery  # noqa: F401  (imported, as the executor does: no task runs here)

    assert in_celery_worker() is False
