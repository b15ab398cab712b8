"""The Dagster daemon that `ml-assets run` and `ml-assets dev` run over `.ml_assets/`, and the
lock that tells whether one is alive.

Fills a Dagster gap: `dagster-daemon run` has no notion of "already running on this instance";
Dagster only warns about a second daemon from heartbeats, which a daemon that just stopped still
has. The lock below dies with its holder, so a held lock is a live daemon.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from dagster import DagsterInstance

WORKSPACE_FILE: Final = "workspace.yaml"
_PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]  # the checkout holding ml_assets/


def code_location_args() -> list[str]:
    """How `dagster-daemon` and `dagster dev` find the code: the project's own workspace.yaml
    (beside the package in a checkout, whatever the working directory), or, for an install
    without it, the definitions module itself."""
    workspace = _PROJECT_ROOT / WORKSPACE_FILE
    if workspace.is_file():
        return ["-w", str(workspace)]
    return ["-m", "ml_assets.definitions"]


def code_location_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the project's root first on `PYTHONPATH`: the workspace's module resolves
    from any working directory (`dagster dev` runs from `$DAGSTER_HOME`), also in a checkout
    that was never installed."""
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    root = str(_PROJECT_ROOT)
    return {**environ, "PYTHONPATH": os.pathsep.join([root, *(p for p in rest if p != root)])}


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
                    env=code_location_env(os.environ),
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
    daemon = Daemon([*command, "run", *code_location_args()], project_dir, log, lock)
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
