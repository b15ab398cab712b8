"""Running the workflow's jobs through Dagster's run machinery on the local instance."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

from dagster import (
    DagsterInstance,
    JobDefinition,
    RunsFilter,
    execute_job,
    reconstructable,
)

from ml_assets.config import default_home
from ml_assets.runs import (
    PROCESS_TAG,
    fail_dead_run,
    is_user_error,
    process_tag,
    step_failure_text,
)

INSTANCE_CONFIG = "dagster.yaml"
LAUNCH_TAG = "ml_assets/launch"  # finds the run of a process that died before reporting it
# The run's full event log still goes to the instance (and the UI). The terminal gets what
# `ml-assets` prints of each run's outcome: one line per failure, not Dagster's stack traces.
QUIET_RUN_CONFIG: Mapping[str, object] = {
    "loggers": {"console": {"config": {"log_level": "CRITICAL"}}}
}


def prepare_home(project_dir: Path | None = None) -> Path:
    """Set `ML_ASSETS_HOME`/`DAGSTER_HOME` and link the project's dagster.yaml there.

    A symlink, not a copy: Dagster reads the project's own file, so an edit applies to the next
    instance that loads and `dagster dev` (run from `DAGSTER_HOME`) has no other file to warn of.
    """
    home = default_home()
    os.environ["ML_ASSETS_HOME"] = str(home)
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").absolute()
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    source = ((project_dir or Path.cwd()) / INSTANCE_CONFIG).absolute()
    target = dagster_home / INSTANCE_CONFIG
    if source.is_file() and target.resolve() != source.resolve():
        staging = dagster_home / f".{INSTANCE_CONFIG}.{uuid.uuid4().hex}"
        staging.symlink_to(source)
        staging.replace(target)  # atomic: a reader sees the old file or the link
    return home


def _job(name: str) -> JobDefinition:
    from ml_assets.definitions import defs

    return defs.resolve_job_def(name)


def ingest_job() -> JobDefinition:
    return _job("ingest_job")


def train_job() -> JobDefinition:
    return _job("train_job")


def serve_job() -> JobDefinition:
    return _job("serve_job")


_JOBS: Mapping[str, Callable[[], JobDefinition]] = {
    "ingest_job": ingest_job,
    "train_job": train_job,
    "serve_job": serve_job,
}


@dataclass(frozen=True)
class RunOutcome:
    job: str
    partition: str | None
    run_id: str
    success: bool
    error: str
    user_error: bool = False  # failed on bad config, data or candidate (`failures.user_failure`)


def run_job(
    job: str, partition: str | None = None, tags: Mapping[str, str] | None = None
) -> RunOutcome:
    """Execute one job run in this process, recorded on the instance at `$DAGSTER_HOME`."""
    all_tags = {**(tags or {}), PROCESS_TAG: process_tag()}
    if partition is not None:
        all_tags["dagster/partition"] = partition
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(_JOBS[job]),
            instance=instance,
            tags=all_tags,
            run_config=QUIET_RUN_CONFIG,
        )
        failures = [event.step_failure_data for event in result.get_step_failure_events()]
        errors = [text for f in failures if (text := step_failure_text(f))]
        user_error = any(is_user_error(f) for f in failures)
        return RunOutcome(
            job, partition, result.run_id, result.success, "\n".join(errors), user_error
        )


def _serve_runs(connection: Connection) -> None:
    """A worker process: execute the runs sent over `connection`, one after another."""
    with contextlib.suppress(EOFError):  # the parent went away
        while (task := connection.recv()) is not None:
            connection.send(run_job(*task))


class _Worker:
    """A spawned process that executes runs one at a time (imports are paid once)."""

    def __init__(self) -> None:
        context = get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve_runs, args=(child,))
        self.process.start()
        child.close()

    def run(self, job: str, partition: str, tags: Mapping[str, str]) -> RunOutcome | None:
        """The run's outcome, or None when the process died during the run."""
        try:
            self.connection.send((job, partition, dict(tags)))
            outcome: RunOutcome = self.connection.recv()
        except (EOFError, OSError):
            self.process.join()
            return None
        return outcome

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.process.join()
        self.connection.close()


def _mark_dead_run(job: str, partition: str, launch: str, exitcode: int | None) -> RunOutcome:
    """Fail the run of a process that died, so it does not stay 'started' on the instance."""
    how = (
        f"killed by {signal.Signals(-exitcode).name}"
        if exitcode and exitcode < 0
        else f"exit code {exitcode}"
    )
    reason = f"the run's process died ({how}) before the run finished: killed, or out of memory?"
    run_id = ""
    with DagsterInstance.get() as instance:
        for record in instance.get_run_records(RunsFilter(tags={LAUNCH_TAG: launch}), limit=1):
            run_id = record.dagster_run.run_id
            if not record.dagster_run.is_finished:
                fail_dead_run(instance, record.dagster_run, reason)
    return RunOutcome(job, partition, run_id, False, reason)


def run_partitions(
    job: str, partitions: list[str], max_workers: int, tags: Mapping[str, str] | None = None
) -> list[RunOutcome]:
    """One run per partition, at most `max_workers` at once, in worker processes. A worker that
    dies (killed, out of memory) fails only the run it was executing, which is marked failed on
    the instance, and is replaced; the other runs go on."""
    todo = list(partitions)
    outcomes: dict[str, RunOutcome] = {}
    lock = threading.Lock()

    def _drive() -> None:
        worker: _Worker | None = None
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    partition = todo.pop(0)
                worker = worker or _Worker()
                launch = uuid.uuid4().hex
                outcome = worker.run(job, partition, {**(tags or {}), LAUNCH_TAG: launch})
                if outcome is None:
                    outcome = _mark_dead_run(job, partition, launch, worker.process.exitcode)
                    worker = None
                outcomes[partition] = outcome
        finally:
            if worker is not None:
                worker.stop()

    workers = max(1, min(max_workers, len(todo)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(_drive) for _ in range(workers)]:
            future.result()
    return [outcomes[p] for p in partitions]


def workspace_file(home: Path, project_dir: Path) -> Path:
    """A workspace pointing at the project by absolute path, so the daemon and `dagster dev`
    find the code whatever their working directory (Dagster does not rebase a python_module's
    `working_directory` against the workspace file, as it does a python_file's)."""
    path = home / "workspace.yaml"
    path.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: ml_assets.definitions\n"
        f"      working_directory: {project_dir}\n"
        "      location_name: ml_assets\n"
    )
    return path


DAEMON_LOCK = "daemon.lock"
# Dagster's daemons write a heartbeat every 30 s (`DEFAULT_HEARTBEAT_INTERVAL_SECONDS`).
_HEARTBEAT_STALE_SECONDS: Final = 75.0


class DaemonLock:
    """An exclusive `flock` on `<home>/daemon.lock`, held by whatever runs a daemon that
    `ml-assets` started (`ml-assets run`'s child, `ml-assets dev`), for as long as it lives.

    The kernel drops the lock when the last process holding it dies, so a held lock means a live
    daemon, and a free one means none of ours, whatever timestamps the instance still shows.
    The file records who holds it and, once released, when (see `daemon_on_instance`).
    """

    def __init__(self, home: Path) -> None:
        self.path = home / DAEMON_LOCK
        self.fd: int | None = None

    def acquire(self, holder: str) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        previous = self.state()
        released = previous.get("released_at")
        if previous.get("holder"):
            # The last holder never released: it died, or exec'd into `dagster dev` that has
            # since stopped. Its daemon died with it (the lock was free), so every heartbeat
            # until now is a dead daemon's.
            released = time.time()
        self._write({"holder": holder, "pid": os.getpid(), "released_at": released})
        return True

    def note_daemon(self, pid: int) -> None:
        """Record the daemon's pid next to its holder's (what `ml-assets dev` shows)."""
        self._write({**self.state(), "daemon_pid": pid})

    def release(self, daemon_stopped: bool) -> None:
        """Unlock; with `daemon_stopped`, record when (its heartbeats were until then)."""
        if self.fd is None:
            return
        released = time.time() if daemon_stopped else self.state().get("released_at")
        self._write({"released_at": released})
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def _write(self, body: dict[str, object]) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(body).encode(), 0)

    def state(self) -> dict[str, object]:
        """What the lock file says (empty when absent or unreadable)."""
        try:
            body = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}

    def held_elsewhere(self) -> bool:
        """True when another process holds the lock (probed without keeping it)."""
        if self.fd is not None:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def daemon_on_instance(
    home: Path, instance: DagsterInstance, lock: DaemonLock | None = None, now: float | None = None
) -> str:
    """Who runs a daemon over this instance ("" when nobody does).

    A daemon `ml-assets` started holds `DaemonLock`, which dies with it. A daemon started some
    other way (`dagster dev` by hand) is taken as alive while its sensor heartbeat is recent and
    newer than the last daemon `ml-assets` stopped: one recent timestamp alone could be the last
    heartbeat of the daemon a previous `ml-assets run` just shut down.
    """
    lock = lock or DaemonLock(home)
    state = lock.state()
    if lock.held_elsewhere():
        daemon = f", daemon pid {state['daemon_pid']}" if state.get("daemon_pid") else ""
        return f"{state.get('holder', 'ml-assets')} (pid {state.get('pid', '?')}{daemon})"
    heartbeat = instance.get_daemon_heartbeats().get("SENSOR")
    if heartbeat is None:
        return ""
    released = state.get("released_at")
    if isinstance(released, int | float) and heartbeat.timestamp <= released:
        return ""
    age = (time.time() if now is None else now) - heartbeat.timestamp
    if age > _HEARTBEAT_STALE_SECONDS:
        return ""
    return f"a daemon not started by ml-assets (sensor heartbeat {age:.0f}s ago)"


class Daemon:
    """A `dagster-daemon run` child process in its own session, started at most once.

    It inherits the descriptor of `lock`, so the lock stays held while the daemon lives, even if
    the process that started it is killed.
    """

    def __init__(self, command: list[str], cwd: Path, log: Path, lock: DaemonLock) -> None:
        self._command, self._cwd, self._log, self._lock_file = command, cwd, log, lock
        self._lock = threading.Lock()
        self._stopped = False
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._lock:
            if self.process is not None or self._stopped:
                return
            assert self._lock_file.fd is not None
            with self._log.open("ab") as out:
                self.process = subprocess.Popen(
                    self._command,
                    cwd=self._cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(self._lock_file.fd,),
                )
            self._lock_file.note_daemon(self.process.pid)

    def exit_code(self) -> int | None:
        """The exit code once the daemon has exited; None while it runs or before it starts."""
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def dagster_daemon(
    home: Path,
    project_dir: Path,
    log: Path,
    start_when: Callable[[], bool] | None = None,
    start_timeout: float = 60.0,
) -> Iterator[Daemon | str]:
    """Run `dagster-daemon` over `$DAGSTER_HOME` for the block, or say who already runs one.

    With `start_when`, a thread starts it once that holds (or after `start_timeout`), so the
    caller can first put something on the instance its sensors must see (an ingestion run).
    """
    lock = DaemonLock(home)
    if not lock.acquire("ml-assets run"):
        # Another `ml-assets run` or `ml-assets dev` runs one: use it.
        with DagsterInstance.get() as instance:
            yield daemon_on_instance(home, instance) or "another ml-assets process"
        return
    with DagsterInstance.get() as instance:
        other = daemon_on_instance(home, instance, lock)
    if other:
        lock.release(daemon_stopped=False)
        yield other
        return
    executable = Path(sys.executable).parent / "dagster-daemon"
    command = (
        [str(executable)] if executable.exists() else [sys.executable, "-m", "dagster", "daemon"]
    )
    workspace = workspace_file(home, project_dir)
    daemon = Daemon([*command, "run", "-w", str(workspace)], project_dir, log, lock)
    leaving = threading.Event()

    def _start_when_ready() -> None:
        deadline = time.monotonic() + start_timeout
        while start_when is not None and not start_when() and time.monotonic() < deadline:
            if leaving.wait(0.1):
                return
        if not leaving.is_set():
            daemon.start()

    waiter = None
    if start_when is None:
        daemon.start()
    else:
        waiter = threading.Thread(target=_start_when_ready, name="start-daemon", daemon=True)
        waiter.start()
    try:
        yield daemon
    finally:
        leaving.set()
        if waiter is not None:
            waiter.join()
        daemon.stop()
        lock.release(daemon_stopped=daemon.process is not None)
