"""j. HTTP serving: `ml-assets serve` on loopback against the same computation in-process.

On a digits home and a videos home (1,152 features: the wide case), each after a cold
`ml-assets run --mode sync`, starts the real `ml-assets serve --port 0 --poll-seconds 0.2` as a
process of its own and waits (with a deadline) until `/v1/models/ensemble` is ready. Then, per
repeat and per batch size (1 and 100 instances per request):

- **one client, paired**: in this process, in blocks of one kind taken in turn, a `:predict`
  over one keep-alive `http.client` connection (lists form; at 1 instance the records form
  too), `snapshot.predict(matrix)` on the same rows — the snapshot loaded as the server does,
  `load_snapshot(store, selection_key, digest, threshold)`: the server's compute path without
  HTTP or JSON —, the members' bare `predict_scores`, and the server's whole per-request CPU
  work without HTTP (parse, score, encode: `serve.app._score`, when that function exists).
  Interleaving them (each block after a short idle, see `_paired`) keeps the ratio honest
  when other work on the machine comes and goes;
- **8 clients**: 8 client processes, each with its own keep-alive connection, started and
  released together.

Bodies are pre-encoded. Every cell stops at `requests` calls or `seconds` per client, whichever
first. p50/p99 over every call of a cell, requests/s and instances/s, and the CPU the clients,
the server and the rest of the machine used meanwhile (2 cores: the clients compete with the
server).

Figures (medians over the repeats): HTTP p50 / in-process p50 at 100 instances (goal ≤ 1.2) and
HTTP p50 − in-process p50 at 1 instance (goal ≤ 2 ms), one client, for both datasets. Then,
with the digits server still running, the time from a new `model_selection` materialization
(its event timestamp on the instance) to the first `:predict` answer naming its selection key,
seen by a client polling every ~20 ms; the new selections come from `ml-assets run --mode sync`
after switching `selection.top_k` between 1 and 2 (a new key, other members). No goal: reported
against the server's poll interval.

The client processes run `client_main` (this module, `python -c`): they read their bodies from
a file, open the connection, send one warm-up request, then wait for the go on stdin.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

from bench.common import SyncRun, sync_args, trained_home
from bench.harness import (
    REPO,
    WORK,
    BenchError,
    Context,
    cli_run,
    median,
    open_instance,
    sync_phases,
)
from bench.result import Result, md_table, new_result
from bench.workloads import digits_config

if TYPE_CHECKING:
    import numpy as np

    from ml_assets.serve.current import Snapshot

DIRECTORY: Final = WORK / "serving_http"
POLL_SECONDS: Final = 0.2  # the server's --poll-seconds
SETTLE_SECONDS: Final = 0.15  # idle before each paired block (see `_paired`)
LANDING_POLL: Final = 0.02  # the landing client's pause between two :predict requests
CLIENTS: Final = (1, 8)
BATCHES: Final = (1, 100)
PREDICT: Final = "/v1/models/ensemble:predict"
HEADERS: Final = {"Content-Type": "application/json"}
READY_SECONDS: Final = 300.0  # the server's start-up and first load, at most
LANDED_SECONDS: Final = 60.0  # a landed selection's wait to be served, at most
GOAL_RATIO: Final = 1.2
GOAL_OVERHEAD_MS: Final = 2.0
_CLIENT: Final = (
    "import sys; from bench.benchmarks.j_serving_http import client_main; "
    "raise SystemExit(client_main(sys.argv[1]))"
)
_SWAP: Final = re.compile(r"serving model selection (\w+) \(.*?\) in ([\d.]+) s")


@dataclass(frozen=True)
class Bounds:
    seconds: float  # per client and cell of the 8-client cells
    requests: int  # per client and cell, at most (paired: per call kind)
    block: float  # paired one-client loop: seconds per block of one call kind
    rotations: int  # … blocks of each kind, in turn


def _bounds(ctx: Context) -> Bounds:
    if ctx.sizes.name == "quick":
        return Bounds(1.0, 300, 0.25, 2)
    return Bounds(4.0, 3000, 1.0, 3)


# --- CPU accounting ---------------------------------------------------------------------------


_TICK: Final = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rfind(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


def _machine_busy() -> float:
    """CPU seconds the whole machine was busy so far (every core; idle and iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK


# --- the server -------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    stderr: Path
    ready_seconds: float  # launch → `/v1/models/ensemble` ready

    def cpu(self) -> float:
        return _process_cpu(self.process.pid)

    def swaps(self) -> list[tuple[str, float]]:
        """(selection key, load seconds) of each swap the server logged, in order."""
        text = self.stderr.read_text(errors="replace")
        return [(m.group(1), float(m.group(2))) for m in _SWAP.finditer(text)]


def _call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=HEADERS)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def serving(ctx: Context, label: str, run: SyncRun) -> Iterator[Server]:
    """`ml-assets serve --port 0 --poll-seconds 0.2` on the run's home, ready; stopped after."""
    logs = run.home.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{label}.stdout.log", logs / f"{label}.stderr.log"
    command = ["serve", "--host", "127.0.0.1", "--port", "0", "--poll-seconds", str(POLL_SECONDS)]
    ctx.log(f"  {label}: ml-assets {' '.join(command)}")
    launched = time.perf_counter()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # Uvicorn's access log (one line per request) goes to stdout: a file, as a service's.
        process = subprocess.Popen(
            [ctx.python, "-m", "ml_assets.cli", *command],
            cwd=REPO,
            env=ctx.env(run.home, run.config),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # so that stopping it stops nothing else
        )
    try:
        deadline = time.monotonic() + READY_SECONDS
        port = 0
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"{label} exited {process.returncode}: {_tail(err)}")
            if not port:
                found = re.search(
                    rb"serving on http://127\.0\.0\.1:(\d+)/v1/models", out.read_bytes()
                )
                port = int(found.group(1)) if found else 0
            if port:
                try:
                    status, body = _call(port, "GET", "/v1/models/ensemble")
                    if status == 200 and body.get("ready"):
                        break
                except OSError:  # the socket listens before the app is up
                    pass
            time.sleep(0.05)
        else:
            raise BenchError(f"{label}: not ready after {READY_SECONDS:.0f}s: {_tail(err)}")
        server = Server(process, port, err, time.perf_counter() - launched)
        ctx.log(f"    ready in {server.ready_seconds:.1f}s on port {port}")
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- the client processes ---------------------------------------------------------------------


def client_main(argument: str) -> int:
    """One load-generating client: one keep-alive connection, its bodies in turn, until its
    request count or its seconds are reached; prints `ready`, waits for a line on stdin, then
    prints one JSON line of latencies and CPU."""
    spec = json.loads(argument)
    bodies = [b for b in Path(spec["bodies"]).read_bytes().split(b"\n") if b]
    connection = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=120)

    def post(body: bytes) -> tuple[int, bytes]:
        connection.request("POST", PREDICT, body=body, headers=HEADERS)
        response = connection.getresponse()
        return response.status, response.read()

    offset = int(spec["offset"])
    status, answer = post(bodies[offset % len(bodies)])  # warm-up: connect, check the answer
    if status != 200 or len(json.loads(answer)["predictions"]) != spec["instances"]:
        print(f"warm-up answered {status}: {answer[:300]!r}", flush=True)
        return 1
    print("ready", flush=True)
    sys.stdin.readline()
    # The server drops a connection idle for 5 s (uvicorn's keep-alive timeout), as this one may
    # have been while the other clients started: a fresh one, warmed up, before timing.
    connection.close()
    post(bodies[offset % len(bodies)])
    latencies: list[float] = []
    errors = 0
    cpu = time.process_time()
    wall = time.time()
    started = time.perf_counter()
    deadline = started + float(spec["seconds"])
    i = offset
    while len(latencies) < spec["requests"] and time.perf_counter() < deadline:
        body = bodies[i % len(bodies)]
        i += 1
        sent = time.perf_counter()
        status, _ = post(body)
        latencies.append(time.perf_counter() - sent)
        errors += status != 200
    ended = time.perf_counter()
    connection.close()
    result = {
        "latencies": latencies,
        "errors": errors,
        "started": wall,
        "ended": wall + (ended - started),
        "cpu": time.process_time() - cpu,
    }
    print(json.dumps(result), flush=True)
    return 0


@dataclass(frozen=True)
class Cell:
    """One measured cell: every call's latency, and the CPU used meanwhile, each as cores
    busy on average (CPU seconds per second of the cell)."""

    latencies: list[float]
    window: float  # seconds the calls took (processes: first client's start → last's end)
    instances: int  # per call
    errors: int = 0
    client: float = 0.0  # the clients' own CPU (in this process: the calling thread's)
    server: float = 0.0  # the server process, every thread
    other: float = 0.0  # everything else busy on the machine

    def p(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(self.latencies, q))

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.window


def _http_cell(
    ctx: Context, server: Server, bodies: Path, instances: int, clients: int, bounds: Bounds
) -> Cell:
    """`clients` client processes at once, each on its own keep-alive connection."""
    spec = {
        "port": server.port,
        "bodies": str(bodies),
        "instances": instances,
        "seconds": bounds.seconds,
        "requests": bounds.requests,
    }
    processes = [
        subprocess.Popen(
            [ctx.python, "-c", _CLIENT, json.dumps({**spec, "offset": i * 7})],
            cwd=REPO,
            env=ctx.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(clients)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdin is not None
            line = process.stdout.readline()  # EOF when it died; its own timeout bounds a hang
            if line.strip() != "ready":
                raise BenchError(f"HTTP client not ready: {line.strip()[:300]}")
        server_cpu, busy, own = server.cpu(), _machine_busy(), time.process_time()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = []
        for process in processes:
            out, err = process.communicate(timeout=bounds.seconds + 180)
            if process.returncode != 0:
                raise BenchError(f"HTTP client exited {process.returncode}: {err[-300:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        server_cpu, busy = server.cpu() - server_cpu, _machine_busy() - busy
        own = time.process_time() - own
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    window = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    client_cpu = sum(r["cpu"] for r in reports)
    return Cell(
        [latency for r in reports for latency in r["latencies"]],
        window,
        instances,
        sum(r["errors"] for r in reports),
        client_cpu / window,
        server_cpu / window,
        max(0.0, busy - client_cpu - server_cpu - own) / window,
    )


class _Connection:
    """One keep-alive connection from this process (the paired loop's single client; one per
    loop: the server drops a connection idle for 5 s)."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, body: bytes) -> int:
        try:
            return self._post(body)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # Dropped while idle (the untimed call before a block): once more, reconnected.
            self.connection.close()
            return self._post(body)

    def _post(self, body: bytes) -> int:
        self.connection.request("POST", PREDICT, body=body, headers=HEADERS)
        response = self.connection.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.connection.close()


def _paired(
    calls: dict[str, Callable[[int], object]],
    http: Sequence[str],
    server: Server,
    instances: int,
    bounds: Bounds,
) -> dict[str, Cell]:
    """Each call of `calls` in blocks of `bounds.block` seconds, in turn, `bounds.rotations`
    times: HTTP and in-process side by side, on the same machine within seconds of each other.
    Before each block, `SETTLE_SECONDS` idle and one untimed call: after the other process's
    work its BLAS/OpenMP threads spin on for a while (OpenBLAS: up to ~0.1 s), and on 2 cores
    they would slow the first calls of the next block down. Calls named in `http` answer a
    status (200 expected)."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    errors = dict.fromkeys(calls, 0)
    # CPU seconds during each call's blocks: its thread, the server, the machine, this process.
    cpu = {name: [0.0, 0.0, 0.0, 0.0] for name in calls}
    for _ in range(bounds.rotations):
        for name, call in calls.items():
            time.sleep(SETTLE_SECONDS)
            call(0)
            thread, server_cpu, busy, own = (
                time.thread_time(),
                server.cpu(),
                _machine_busy(),
                time.process_time(),
            )
            times = latencies[name]
            end = time.perf_counter() + bounds.block
            i = len(times)
            while time.perf_counter() < end and len(times) < bounds.requests:
                sent = time.perf_counter()
                answer = call(i)
                times.append(time.perf_counter() - sent)
                i += 1
                if name in http and answer != 200:
                    errors[name] += 1
            spent = cpu[name]
            spent[0] += time.thread_time() - thread
            spent[1] += server.cpu() - server_cpu
            spent[2] += _machine_busy() - busy
            spent[3] += time.process_time() - own
    cells = {}
    for name, times in latencies.items():
        seconds = sum(times)
        thread, server_cpu, busy, own = cpu[name]
        cells[name] = Cell(
            times,
            seconds,
            instances,
            errors[name],
            thread / seconds,
            server_cpu / seconds,
            max(0.0, busy - server_cpu - own) / seconds,
        )
    return cells


# --- the rows, the bodies, the snapshot -------------------------------------------------------


@dataclass
class Workload:
    """One served home: its snapshot (loaded as the server does) and the bodies' rows."""

    label: str
    run: SyncRun
    snapshot: Snapshot
    matrices: dict[int, list[np.ndarray]]  # instances per request → the rows of each body
    bodies: dict[str, Path]  # "lists-1", "lists-100", "records-1" → one body per line
    body_bytes: dict[str, int]  # the first body's size of each


def _windows(count: int) -> int:
    return 64 if count == 1 else 8


def _workload(label: str, run: SyncRun, server: Server) -> Workload:
    import numpy as np

    from ml_assets.core.config import load_settings
    from ml_assets.core.names import MODEL_SELECTION
    from ml_assets.serve.current import load_snapshot
    from ml_assets.state.records import latest_record
    from ml_assets.storage.artifacts import read_dataset_part
    from ml_assets.storage.store import ArtifactStore

    _, listing = _call(server.port, "GET", "/v1/models")
    served = next(m for m in listing["models"] if m["name"] == "ensemble")["selection_key"]
    with open_instance(run.home) as instance:
        record = latest_record(instance, MODEL_SELECTION)
    if record is None or record["selection_key"] != served:
        raise BenchError(f"{label}: the server serves {served}, the instance's latest differs")
    store = ArtifactStore(run.home / "store")
    threshold = load_settings(run.config).serving.tag_threshold
    snapshot = load_snapshot(store, served, record.get("digest"), threshold)
    requests = read_dataset_part(store.verify("datasets", snapshot.dataset_key), "requests")
    rows = requests.X[list(snapshot.features)].to_numpy(dtype=np.float32)
    matrices: dict[int, list[np.ndarray]] = {}
    bodies: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    directory = DIRECTORY / "bodies"
    directory.mkdir(parents=True, exist_ok=True)
    for count in BATCHES:
        picks = [np.arange(w * count, (w + 1) * count) % len(rows) for w in range(_windows(count))]
        matrices[count] = [np.ascontiguousarray(rows[p]) for p in picks]
        forms = {"lists": [{"instances": m.tolist()} for m in matrices[count]]}
        if count == 1:
            names = list(snapshot.features)
            forms["records"] = [
                {"instances": [dict(zip(names, r, strict=True)) for r in m.tolist()]}
                for m in matrices[count]
            ]
        for form, payloads in forms.items():
            encoded = [json.dumps(p, separators=(",", ":")).encode() for p in payloads]
            path = directory / f"{label}-{form}-{count}.jsonl"
            path.write_bytes(b"\n".join(encoded) + b"\n")
            bodies[f"{form}-{count}"] = path
            sizes[f"{form}-{count}"] = len(encoded[0])
    return Workload(label, run, snapshot, matrices, bodies, sizes)


def _check_answer(workload: Workload, server: Server) -> tuple[float, int]:
    """Max |score difference| between the HTTP answer and `snapshot.predict` on one body of
    100 instances (same rows, same models: they should agree), and the records whose tags
    differ."""
    import numpy as np

    count = BATCHES[-1]
    body = workload.bodies[f"lists-{count}"].read_bytes().split(b"\n")[0]
    status, answer = _call(server.port, "POST", PREDICT, body)
    if status != 200:
        raise BenchError(f"{workload.label}: :predict answered {status}: {str(answer)[:300]}")
    expected = workload.snapshot.predict(workload.matrices[count][0])
    entities = list(workload.snapshot.entities)
    got = np.array([[p["scores"][e] for e in entities] for p in answer["predictions"]])
    tags = [p["tags"] for p in answer["predictions"]]
    differ = sum(a != b for a, b in zip(tags, expected.tags, strict=True))
    return float(np.abs(got - expected.scores).max()), differ


def _server_work(snapshot: Snapshot) -> Callable[[bytes], object] | None:
    """The server's whole per-request CPU work (parse, score, encode) as a function of the
    body, when `ml_assets.serve.app` still has `_score(snapshot, member, body, max)`."""
    from ml_assets.serve import app
    from ml_assets.serve.limits import MAX_INSTANCES

    score = getattr(app, "_score", None)
    if score is None:
        return None
    return lambda body: score(snapshot, None, body, MAX_INSTANCES)


# --- one dataset's cells ----------------------------------------------------------------------


# (form, instances per request, clients). One client: the paired loop in this process; more:
# client processes.
HTTP_CELLS: Final = [
    ("lists", 1, 1),
    ("records", 1, 1),
    ("lists", 1, 8),
    ("lists", 100, 1),
    ("lists", 100, 8),
]


@dataclass
class Measured:
    label: str
    workload: Workload
    server: Server
    http: dict[tuple[str, int, int], list[Cell]] = field(default_factory=dict)
    full: dict[int, list[Cell]] = field(default_factory=dict)  # snapshot.predict
    bare: dict[int, list[Cell]] = field(default_factory=dict)  # the members' predict_scores
    work: dict[int, list[Cell]] = field(default_factory=dict)  # parse + score + encode
    max_difference: float = 0.0
    tags_differ: int = 0  # of the 100 records checked
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before, after


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


def _measure(ctx: Context, label: str, run: SyncRun, server: Server, bounds: Bounds) -> Measured:
    import pandas as pd

    workload = _workload(label, run, server)
    snapshot = workload.snapshot
    difference, differ = _check_answer(workload, server)
    measured = Measured(label, workload, server, max_difference=difference, tags_differ=differ)
    work = _server_work(snapshot)
    before = os.getloadavg()[0]
    for repeat in range(ctx.repeats):
        for count in BATCHES:
            matrices = workload.matrices[count]
            frames = [pd.DataFrame(m, columns=list(snapshot.features)) for m in matrices]
            forms = [f for f, n, c in HTTP_CELLS if n == count and c == 1]
            bodies = {f: _lines(workload.bodies[f"{f}-{count}"]) for f in forms}

            def full(i: int, ms: list[np.ndarray] = matrices) -> object:
                return snapshot.predict(ms[i % len(ms)])

            def bare(i: int, fs: list[pd.DataFrame] = frames) -> object:
                return [m.model.predict_scores(fs[i % len(fs)]) for m in snapshot.members]

            connection = _Connection(server.port)
            calls: dict[str, Callable[[int], object]] = {}
            for form in forms:

                def post(
                    i: int, bs: list[bytes] = bodies[form], c: _Connection = connection
                ) -> object:
                    return c.post(bs[i % len(bs)])

                calls[form] = post
            calls["full"], calls["bare"] = full, bare
            if work is not None:

                def whole(
                    i: int,
                    bs: list[bytes] = bodies["lists"],
                    score: Callable[[bytes], object] = work,
                ) -> object:
                    return score(bs[i % len(bs)])

                calls["work"] = whole
            try:
                cells = _paired(calls, forms, server, count, bounds)
            finally:
                connection.close()
            for form in forms:
                measured.http.setdefault((form, count, 1), []).append(cells[form])
            measured.full.setdefault(count, []).append(cells["full"])
            measured.bare.setdefault(count, []).append(cells["bare"])
            if "work" in cells:
                measured.work.setdefault(count, []).append(cells["work"])
            ctx.log(
                f"    r{repeat} ×{count}: HTTP p50 {cells['lists'].p(50) * 1e3:.2f} ms, "
                f"in-process {cells['full'].p(50) * 1e3:.2f} ms"
            )
            for form, instances, clients in HTTP_CELLS:
                if instances != count or clients == 1:
                    continue
                path = workload.bodies[f"{form}-{count}"]
                cell = _http_cell(ctx, server, path, count, clients, bounds)
                measured.http.setdefault((form, count, clients), []).append(cell)
                ctx.log(
                    f"    r{repeat} ×{count}, {clients} clients: p50 {cell.p(50) * 1e3:.2f} "
                    f"ms, {cell.rps:,.0f} req/s"
                )
    measured.load = (before, os.getloadavg()[0])
    return measured


# --- a new selection landing under a running server -------------------------------------------


@dataclass(frozen=True)
class Landing:
    top_k: int
    selected: list[str]
    run_seconds: float
    landed_after: float  # seconds from the run's launch to the materialization's timestamp
    answered_after: float  # materialization timestamp → first answer naming its key
    load_seconds: float | None  # the server's own load of it (its log), when logged
    polls: int  # :predict requests the polling client sent during the run


class _Poller(threading.Thread):
    """POSTs a one-instance body every ~20 ms; records when each selection key first arrived."""

    def __init__(self, port: int, body: bytes) -> None:
        super().__init__(name="landing-poller", daemon=True)
        self.port, self.body = port, body
        self.first_seen: dict[str, float] = {}
        self.requests = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.halt.is_set():
            try:
                connection.request("POST", PREDICT, body=self.body, headers=HEADERS)
                response = connection.getresponse()
                raw = response.read()
                arrived = time.time()
                self.requests += 1
                if response.status == 200:
                    self.first_seen.setdefault(json.loads(raw)["selection_key"], arrived)
                elif len(self.failures) < 5:
                    self.failures.append(f"{response.status}: {raw[:200]!r}")
            except (OSError, http.client.HTTPException) as error:
                if len(self.failures) < 5:
                    self.failures.append(f"{type(error).__name__}: {error}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.halt.wait(LANDING_POLL)
        connection.close()


def _landings(ctx: Context, run: SyncRun, server: Server, body: bytes, count: int) -> list[Landing]:
    """`count` new selections landed on the served home, each timed to its first answer;
    `body` is what the polling client sends."""
    from ml_assets.core.names import MODEL_SELECTION
    from ml_assets.state.records import latest_record

    base = yaml.safe_load(run.config.read_text())
    config = run.config.parent / "landing.yaml"
    _, listing = _call(server.port, "GET", "/v1/models")
    served = next(m for m in listing["models"] if m["name"] == "ensemble")["selection_key"]
    landings = []
    for i in range(count):
        top_k = 1 if i % 2 == 0 else int(base["selection"]["top_k"])
        edited = {**base, "selection": {**base["selection"], "top_k": top_k}}
        config.write_text(yaml.safe_dump(edited, sort_keys=False))
        poller = _Poller(server.port, body)
        poller.start()
        try:
            timed = cli_run(ctx, f"landing-{i}", run.home, config, sync_args(ctx, 2), cold=False)
            with open_instance(run.home) as instance:
                record = latest_record(instance, MODEL_SELECTION)
            if record is None or record["selection_key"] == served:
                raise BenchError(f"landing {i}: the run recorded no new model_selection")
            key = str(record["selection_key"])
            deadline = time.monotonic() + LANDED_SECONDS
            while key not in poller.first_seen and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            poller.halt.set()
            poller.join(30)
        if key not in poller.first_seen:
            raise BenchError(
                f"landing {i}: selection {key} not answered {LANDED_SECONDS:.0f}s after its run "
                f"ended; poller: {poller.failures}"
            )
        loads = [seconds for swapped, seconds in server.swaps() if swapped == key]
        landings.append(
            Landing(
                top_k,
                [str(name) for name in record.get("selected", [])],
                timed.seconds,
                record.timestamp - timed.started_at,
                poller.first_seen[key] - record.timestamp,
                loads[-1] if loads else None,
                poller.requests,
            )
        )
        ctx.log(f"    landing {i}: answered {landings[-1].answered_after:.3f}s after it landed")
        served = key
    return landings


# --- the report -------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _share(busy: float) -> str:
    """CPU seconds per second as a share of the machine's cores."""
    return f"{busy / (os.cpu_count() or 1):.0%}"


@dataclass(frozen=True)
class Compared:
    label: str
    ratio: float  # HTTP p50 / in-process p50 at the largest batch, one client
    overhead: float  # HTTP p50 − in-process p50 at one instance, one client (seconds)
    ratios: list[float]
    overheads: list[float]

    @property
    def met(self) -> bool:
        return self.ratio <= GOAL_RATIO and self.overhead * 1e3 <= GOAL_OVERHEAD_MS


def _compare(m: Measured) -> Compared:
    large, small = BATCHES[-1], BATCHES[0]
    ratios = [
        h.p(50) / f.p(50) for h, f in zip(m.http[("lists", large, 1)], m.full[large], strict=True)
    ]
    overheads = [
        h.p(50) - f.p(50) for h, f in zip(m.http[("lists", small, 1)], m.full[small], strict=True)
    ]
    ratio = median([c.p(50) for c in m.http[("lists", large, 1)]]) / median(
        [c.p(50) for c in m.full[large]]
    )
    overhead = median([c.p(50) for c in m.http[("lists", small, 1)]]) - median(
        [c.p(50) for c in m.full[small]]
    )
    return Compared(
        m.label,
        ratio,
        overhead,
        ratios,
        overheads,
    )


def _med(cells: Sequence[Cell], value: Callable[[Cell], float]) -> float:
    return median([value(c) for c in cells])


def _http_table(m: Measured) -> list[str]:
    rows = []
    for (form, count, clients), cells in m.http.items():
        size = m.workload.body_bytes[f"{form}-{count}"]
        rows.append(
            [
                count,
                form,
                clients,
                _ms(_med(cells, lambda c: c.p(50))),
                _ms(_med(cells, lambda c: c.p(99))),
                f"{_med(cells, lambda c: c.rps):,.0f}",
                f"{_med(cells, lambda c: c.rps * c.instances):,.0f}",
                f"{_med(cells, lambda c: float(len(c.latencies))):,.0f}",
                f"{size / 1024:,.1f}",
                _share(_med(cells, lambda c: c.client)),
                _share(_med(cells, lambda c: c.server)),
                _share(_med(cells, lambda c: c.other)),
                sum(c.errors for c in cells),
            ]
        )
    return md_table(
        [
            "instances/request",
            "form",
            "clients",
            "p50 (ms)",
            "p99 (ms)",
            "requests/s",
            "instances/s",
            "requests timed",
            "body (KiB)",
            "clients' CPU",
            "server CPU",
            "other CPU",
            "errors",
        ],
        rows,
    )


def _in_process_table(m: Measured) -> list[str]:
    rows = []
    for count in BATCHES:
        named = [
            ("`snapshot.predict` (the server's compute path)", m.full[count]),
            ("the members' bare `predict_scores`", m.bare[count]),
        ]
        if count in m.work:
            named.append(("`serve.app._score`: parse + predict + encode JSON", m.work[count]))
        for what, cells in named:
            rows.append(
                [
                    count,
                    what,
                    _ms(_med(cells, lambda c: c.p(50))),
                    _ms(_med(cells, lambda c: c.p(99))),
                    f"{_med(cells, lambda c: c.rps * c.instances):,.0f}",
                    f"{_med(cells, lambda c: float(len(c.latencies))):,.0f}",
                    _share(_med(cells, lambda c: c.other)),
                ]
            )
    header = ["instances", "in-process", "p50 (ms)", "p99 (ms)", "instances/s", "calls timed"]
    return md_table([*header, "other CPU"], rows)


def _comparison_rows(m: Measured, c: Compared) -> list[list[object]]:
    large, small = BATCHES[-1], BATCHES[0]
    http_large = _med(m.http[("lists", large, 1)], lambda x: x.p(50))
    http_small = _med(m.http[("lists", small, 1)], lambda x: x.p(50))
    full_large = _med(m.full[large], lambda x: x.p(50))
    full_small = _med(m.full[small], lambda x: x.p(50))
    return [
        [
            m.label,
            large,
            _ms(http_large),
            _ms(full_large),
            f"**{c.ratio:.2f}×** (runs {', '.join(f'{r:.2f}' for r in c.ratios)})",
            f"≤ {GOAL_RATIO}×",
            "yes" if c.ratio <= GOAL_RATIO else "**no**",
        ],
        [
            m.label,
            small,
            _ms(http_small),
            _ms(full_small),
            f"**{c.overhead * 1e3:+.2f} ms** (runs "
            + ", ".join(f"{o * 1e3:+.2f}" for o in c.overheads)
            + ")",
            f"≤ +{GOAL_OVERHEAD_MS:.0f} ms",
            "yes" if c.overhead * 1e3 <= GOAL_OVERHEAD_MS else "**no**",
        ],
    ]


def _landing_table(landings: Sequence[Landing]) -> list[str]:
    rows = [
        [
            i,
            landing.top_k,
            ", ".join(landing.selected),
            f"{landing.run_seconds:.1f}",
            f"{landing.landed_after:.1f}",
            "—" if landing.load_seconds is None else f"{landing.load_seconds:.2f}",
            f"{landing.answered_after:.3f}",
            landing.polls,
        ]
        for i, landing in enumerate(landings)
    ]
    return md_table(
        [
            "landing",
            "top_k",
            "selected",
            "`ml-assets run` wall (s)",
            "recorded after launch (s)",
            "server's load (s, its log)",
            "**recorded → answered (s)**",
            "client polls",
        ],
        rows,
    )


def _notes(measured: Sequence[Measured], compared: Sequence[Compared]) -> list[str]:
    notes = []
    for m, c in zip(measured, compared, strict=True):
        if c.met:
            continue
        parts = []
        for count in BATCHES:
            http = _med(m.http[("lists", count, 1)], lambda x: x.p(50))
            full = _med(m.full[count], lambda x: x.p(50))
            if count in m.work:
                work = _med(m.work[count], lambda x: x.p(50))
                parts.append(
                    f"at {count} instance(s), HTTP p50 {_ms(http)} ms = compute {_ms(full)} + "
                    f"JSON parse/validate/encode {_ms(work - full)} + the rest (HTTP, ASGI, "
                    f"thread-pool hop, middleware, access log, client) {_ms(http - work)} ms"
                )
            else:
                parts.append(
                    f"at {count} instance(s), HTTP p50 {_ms(http)} ms vs compute {_ms(full)} ms"
                )
        notes.append(f"{m.label}: " + "; ".join(parts) + ".")
    return notes


def _cold_digits(ctx: Context) -> SyncRun:
    directory = DIRECTORY / "digits"
    config = digits_config(directory)
    home = directory / "home"
    timed = cli_run(ctx, "serving-digits", home, config, sync_args(ctx, 2), cold=True)
    return SyncRun(home, config, timed, sync_phases(home, timed))


def bench_serving_http(ctx: Context) -> Result:
    result = new_result("j")
    bounds = _bounds(ctx)
    digits = _cold_digits(ctx)
    videos = trained_home(ctx)
    measured: list[Measured] = []
    landings: list[Landing] = []
    landing_load = (0.0, 0.0)
    for label, run in (("digits", digits), ("videos", videos)):
        with serving(ctx, f"serve-{label}", run) as server:
            m = _measure(ctx, label, run, server, bounds)
            measured.append(m)
            if label == "digits":
                body = m.workload.bodies["lists-1"].read_bytes().split(b"\n")[0]
                before = os.getloadavg()[0]
                landings = _landings(ctx, run, server, body, max(3, ctx.repeats))
                landing_load = (before, os.getloadavg()[0])
    compared = [_compare(m) for m in measured]
    answered = median([landing.answered_after for landing in landings])
    result.figure = (
        "; ".join(
            f"{c.label}: {c.ratio:.2f}× at {BATCHES[-1]}, {c.overhead * 1e3:+.2f} ms at "
            f"{BATCHES[0]}"
            for c in compared
        )
        + f"; new selection answered {answered:.2f}s after it landed (poll {POLL_SECONDS}s)"
    )
    result.goal = (
        f"HTTP p50 ≤ {GOAL_RATIO}× in-process at {BATCHES[-1]} instances; ≤ +{GOAL_OVERHEAD_MS:.0f}"
        f" ms at {BATCHES[0]} (one client)"
    )
    result.met = all(c.met for c in compared)
    result.details += md_table(
        [
            "dataset",
            "instances",
            "HTTP p50 (ms)",
            "in-process p50 (ms)",
            "figure (runs)",
            "goal",
            "met",
        ],
        [row for m, c in zip(measured, compared, strict=True) for row in _comparison_rows(m, c)],
    )
    result.details += [
        "",
        f"`ml-assets serve --port 0 --poll-seconds {POLL_SECONDS}` in its own process on "
        "loopback (uvicorn, one worker, its access log to a file), on the home of a cold "
        "`ml-assets run --mode sync`. Bodies pre-encoded: `json.dumps` of the float32 rows' "
        "`tolist()`, lists in the dataset's feature order (or records). One client: this "
        "process, one keep-alive `http.client` connection; its HTTP calls and the same rows "
        "in-process (`snapshot.predict`, bare `predict_scores`, `serve.app._score`) in blocks "
        f"of {bounds.block:.2f} s, one kind per block, in turn, {bounds.rotations} times; "
        f"before each block {SETTLE_SECONDS} s idle and one untimed call (so that one "
        "process's BLAS/OpenMP threads, spinning on after its work, do not slow the other's "
        "first calls down on 2 cores). The ratio and the overhead compare these blocks' "
        "p50s. 8 clients: 8 processes with a connection each, started and released together, "
        f"at most {bounds.requests:,} requests or {bounds.seconds:.0f} s "
        "each. Latency from the request's first byte sent to the answer read; p50/p99 over "
        f"every call of a cell; each figure the median over {ctx.repeats} repeats. CPU "
        f"columns, as a share of the machine's {os.cpu_count()} cores while the cell ran: the "
        "clients' own CPU (one client: the calling thread during its HTTP calls), the server "
        "process's (every thread, its 0.2 s selection poll included) and everything else "
        "busy on the machine (/proc/stat less the server, the clients and this process).",
    ]
    for m in measured:
        w = m.workload
        result.details += [
            "",
            f"**{m.label}**: {len(w.snapshot.features):,} features, "
            f"{len(w.snapshot.entities)} entities; serving {', '.join(w.snapshot.names)} "
            f"(selection `{w.snapshot.selection_key}`); server ready "
            f"{m.server.ready_seconds:.1f} s after launch; HTTP against in-process answers on "
            f"100 instances: max |Δ score| {m.max_difference:.1e}, tags differ on "
            f"{m.tags_differ} records; 1-minute load average "
            f"{m.load[0]:.1f} before, {m.load[1]:.1f} after.",
            "",
        ]
        result.details += _http_table(m)
        result.details += [""]
        result.details += _in_process_table(m)
    result.details += [
        "",
        f"**A new selection landing** on the digits home, its server running (poll "
        f"{POLL_SECONDS} s): `selection.top_k` switched between 1 and 2, then `ml-assets run "
        "--mode sync` (models memoized; a new `model_selection` with a new key and other "
        "members). Recorded → answered: from the materialization's event timestamp on the "
        "instance to the first `:predict` answer (one instance, a client polling every "
        f"~{LANDING_POLL * 1e3:.0f} ms) naming its key; the server's load time comes from its "
        f"log. Median **{answered:.3f} s** over runs "
        + ", ".join(f"{landing.answered_after:.3f}" for landing in landings)
        + f". 1-minute load average "
        f"{landing_load[0]:.1f} before, {landing_load[1]:.1f} after.",
        "",
    ]
    result.details += _landing_table(landings)
    result.notes += _notes(measured, compared)
    return result
