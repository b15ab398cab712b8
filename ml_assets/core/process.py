"""This process on this host: who executes a run, whether that process is gone, and how low
its priority is. Dagster-free (the operating system's /proc and signals only).

Every run records the process executing it (`names.PROCESS_TAG`: host, pid namespace, pid and the
process's start time), so a run whose process was killed (by the OOM killer, or with the whole
`ml-assets run`) can be told apart from one still going.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Final

# The run tag holding the process that executes a run (also listed in `core/names.py`).
PROCESS_TAG: Final = "ml_assets/process"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name ([] where /proc does not say)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_ticks(pid: int) -> str:
    """When `pid` started (clock ticks since boot), or "-" where /proc does not say."""
    fields = _stat_fields(pid)
    return fields[19].decode() if len(fields) > 19 else "-"


def process_tag(pid: int | None = None) -> str:
    """`host/pid-namespace/pid/start` of this process: the pid alone could be reused."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{_pid_namespace()}/{pid}/{_start_ticks(pid)}"


def process_gone(tags: Mapping[str, str]) -> bool:
    """True when the run's executing process was on this host, in this pid namespace, and no
    longer exists (a reused pid has another start time).

    Runs without the tag, or from another host or container, are never called gone: only their
    own launcher can tell.
    """
    parts = tags.get(PROCESS_TAG, "").split("/")
    if len(parts) != 4:
        return False
    host, namespace, pid, start = parts
    if host != socket.gethostname() or namespace != _pid_namespace() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        pass
    fields = _stat_fields(int(pid))
    if fields[:1] in ([b"Z"], [b"X"]):
        # Killed but not yet reaped (its parent died too, and init has not got to it): a zombie
        # still answers kill(pid, 0) with the same start time, yet executes nothing.
        return True
    return start != "-" and _start_ticks(int(pid)) not in (start, "-")


def worker_id() -> str:
    """`host:pid` of this process: where a step ran, as a person reads it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lower_priority(niceness: int) -> None:
    """Run this process at OS niceness `niceness` or lower priority; never raises priority back
    (an unprivileged process cannot) and never stacks (`os.nice` is relative).

    Linux sets niceness per thread, so every thread of the process is lowered, including the
    BLAS and OpenMP pools started at import; threads started later inherit it.
    """
    if niceness <= 0 or not hasattr(os, "getpriority"):
        return
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the process as a whole
        threads = [0]
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError:  # the thread ended meanwhile
            continue
