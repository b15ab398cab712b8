"""`ml-assets serve`: a real uvicorn server on a free loopback port, over a project whose
workflow ran in-process. Every wait polls a condition with a deadline."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import uvicorn
from dagster import instance_for_test

from ml_assets.cli.serve import ServeError, add_serve_parser
from ml_assets.core.config import load_settings
from ml_assets.core.names import AGGREGATED_PREDICTIONS, MODEL_SELECTION, prediction_key
from ml_assets.errors import find_user_error
from ml_assets.ml.aggregate import aggregate, score_matrix
from ml_assets.serve.app import create_app
from ml_assets.serve.current import CurrentSelection
from ml_assets.serve.limits import MAX_BODY_BYTES, MAX_INSTANCES
from ml_assets.state.records import latest_record
from ml_assets.storage.artifacts import SELECTION_FILE, read_dataset_part, read_json
from ml_assets.storage.store import MANIFEST
from ml_assets_tests.conftest import FAST_CANDIDATES, Project, new_project

# Two quick candidates that both clear the bar on digits: the default top_k=2 serves both.
CANDIDATES = [c for c in FAST_CANDIDATES if c["name"] in ("logistic_regression", "knn")]
PREDICT = "/v1/models/ensemble:predict"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, Any]:
    """(status, decoded JSON or text); `body` bytes are sent as they are, anything else as JSON."""
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(
            method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        raw = response.read()
        if "json" in (response.getheader("content-type") or ""):
            return response.status, json.loads(raw)
        return response.status, raw.decode()
    finally:
        if connection is None:
            conn.close()


@dataclass
class Served:
    port: int
    current: CurrentSelection

    def get(self, path: str) -> tuple[int, Any]:
        return call(self.port, "GET", path)

    def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
        return call(self.port, "POST", path, body, **kwargs)

    def ready(self) -> bool:
        return bool(self.get("/v1/models/ensemble")[1]["ready"])


@contextmanager
def serving(project: Project, poll_seconds: float = 0.05) -> Iterator[Served]:
    """The app on a uvicorn server in a thread, on a port the OS picked."""
    app = create_app(
        project.instance,
        load_settings(project.config_path),
        project.store,
        poll_seconds=poll_seconds,
    )
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "the server to start")
        yield Served(sock.getsockname()[1], app.state.current)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


def _project(root: Path, instance: Any) -> Project:
    return new_project(root, instance, CANDIDATES)


def _selection(project: Project) -> dict[str, Any]:
    record = latest_record(project.instance, MODEL_SELECTION)
    assert record is not None
    selection: dict[str, Any] = read_json(
        project.store, "selections", record["selection_key"], SELECTION_FILE, record["digest"]
    )
    return selection


def _requests(project: Project) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """The serving requests of the selection's dataset: features, entities, ids."""
    selection = _selection(project)
    dataset = project.store.verify(
        "datasets", selection["dataset_key"], selection["dataset_digest"]
    )
    requests = read_dataset_part(dataset, "requests")
    return requests.X, requests.entities, requests.ids


def _records(frame: pd.DataFrame) -> list[dict[str, float]]:
    return frame.astype(float).to_dict("records")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, Served]]:
    """One project whose workflow ran, served: for the tests that only read."""
    with instance_for_test() as instance:
        project = _project(tmp_path_factory.mktemp("landed"), instance)
        assert project.workflow().success
        with serving(project) as served:
            wait_for(served.ready, "the first selection to load")
            yield project, served


@pytest.fixture
def fresh(tmp_path: Path, instance: Any) -> Project:
    return _project(tmp_path, instance)


def test_predictions_equal_the_aggregated_predictions(landed: tuple[Project, Served]) -> None:
    project, served = landed
    X, entities, ids = _requests(project)
    record = latest_record(project.instance, AGGREGATED_PREDICTIONS)
    assert record is not None
    expected = pd.read_parquet(record["path"])
    assert list(expected["request_id"]) == list(ids)

    status, answer = served.post(PREDICT, {"instances": _records(X)})
    assert status == 200, answer
    selection = _selection(project)
    assert answer["selection_key"] == selection["key"]
    assert answer["models"] == [e["name"] for e in selection["selected"]]
    assert len(answer["models"]) == 2
    got = answer["predictions"]
    assert len(got) == len(expected)
    assert [p["tags"] for p in got] == [list(t) for t in expected["tags"]]
    assert [p["top_entity"] for p in got] == list(expected["top_entity"])
    scores = np.array([[p["scores"][e] for e in entities] for p in got])
    np.testing.assert_allclose(scores, score_matrix(expected, entities), rtol=1e-9, atol=1e-12)

    # Lists in the dataset's feature order answer the same.
    status, as_lists = served.post(PREDICT, {"instances": X.astype(float).values.tolist()})
    assert status == 200
    assert as_lists["predictions"] == got


def test_one_member_answers_with_its_own_scores(landed: tuple[Project, Served]) -> None:
    project, served = landed
    X, entities, ids = _requests(project)
    rank = latest_record(project.instance, prediction_key(2))
    assert rank is not None
    name = rank["candidate"]
    own = score_matrix(pd.read_parquet(Path(rank["path"]) / "predictions.parquet"), entities)
    settings = load_settings(project.config_path)
    frame, _, _ = aggregate(ids, entities, [own], "multiclass", settings.serving.tag_threshold)

    status, answer = served.post(f"/v1/models/{name}:predict", {"instances": _records(X)})
    assert status == 200, answer
    assert answer["models"] == [name]
    got = answer["predictions"]
    np.testing.assert_array_equal([[p["scores"][e] for e in entities] for p in got], own)
    assert [p["tags"] for p in got] == [list(t) for t in frame["tags"]]
    assert [p["top_entity"] for p in got] == list(frame["top_entity"])

    assert served.get(f"/v1/models/{name}") == (200, {"name": name, "ready": True})
    status, error = served.post("/v1/models/nope:predict", {"instances": [[0.0] * X.shape[1]]})
    assert status == 404
    assert "'nope'" in error["error"] and name in error["error"] and "ensemble" in error["error"]
    assert served.get("/v1/models/nope")[0] == 404
    status, error = served.get(PREDICT)
    assert status == 405 and "POST" in error["error"]


def test_model_list_names_the_selection_and_members(landed: tuple[Project, Served]) -> None:
    project, served = landed
    selection = _selection(project)
    status, listing = served.get("/v1/models")
    assert status == 200
    ensemble, *members = listing["models"]
    assert ensemble["name"] == "ensemble" and ensemble["ready"] is True
    assert ensemble["selection_key"] == selection["key"]
    assert ensemble["members"] == [e["name"] for e in selection["selected"]]
    assert [(m["name"], m["weight"]) for m in members] == [
        (e["name"], e["weight"]) for e in selection["selected"]
    ]
    assert listing["last_error"] is None


def _bad_inputs(features: list[str]) -> list[tuple[bytes, int, list[str]]]:
    """(body, expected status, substrings the error must contain)."""
    n = len(features)
    good = dict.fromkeys(features, 0.0)
    missing = {k: v for k, v in good.items() if k not in features[:7]}
    return [
        (b'{"instances": [', 400, ["not valid JSON"]),
        (b"\xff\xfe", 400, ["not valid JSON"]),
        (b"[1, 2]", 400, ["JSON object", "list"]),
        (b'{"rows": []}', 400, ['lacks "instances"']),
        (b'{"instances": {"a": 1}}', 400, ['"instances" must be a list', "dict"]),
        (b'{"instances": []}', 400, ["empty"]),
        (json.dumps({"instances": [good, missing]}).encode(), 422, [
            "instances[1]", "missing 7 of the", repr(features[0]), repr(features[4]), "…",
        ]),
        (json.dumps({"instances": [{**good, "colour": 1}]}).encode(), 422, [
            "instances[0]", "unknown feature", "'colour'",
        ]),
        (json.dumps({"instances": [good, {**good, features[3]: "high"}]}).encode(), 422, [
            f"instances[1][{features[3]!r}]", "expected a number or null", "str",
        ]),
        (json.dumps({"instances": [{**good, features[0]: True}]}).encode(), 422, ["bool"]),
        (json.dumps({"instances": [[0.0] * n, [0.0] * (n - 1)]}).encode(), 422, [
            "instances[1]", f"expected {n} values", "feature order", features[0], f"got {n - 1}",
        ]),
        (json.dumps({"instances": [[0.0] * (n - 1) + ["x"]]}).encode(), 422, [
            f"instances[0][{n - 1}]", features[-1],
        ]),
        (json.dumps({"instances": ["text"]}).encode(), 422, ["instances[0]", "got str"]),
        (b'{"instances": [[' + b"0," * (n - 1) + b"1e39]]}", 422, ["finite"]),
        (b'{"instances": [[' + b"0," * (n - 1) + b"Infinity]]}", 422, ["finite"]),
        (b'{"instances": [[' + b"0," * (n - 1) + b"1" + b"0" * 400 + b"]]}", 422, ["finite"]),
        (json.dumps({"instances": [[0] * n] * (MAX_INSTANCES + 1)}).encode(), 413, [
            str(MAX_INSTANCES), str(MAX_INSTANCES + 1),
        ]),
    ]  # fmt: skip


def test_bad_input_is_a_4xx_naming_the_field_and_the_server_goes_on(
    landed: tuple[Project, Served],
) -> None:
    project, served = landed
    X, _, _ = _requests(project)
    features = [str(c) for c in X.columns]
    one = {"instances": _records(X.head(1))}
    _, before = served.post(PREDICT, one)
    for body, status, fragments in _bad_inputs(features):
        got, answer = served.post(PREDICT, body)
        assert (got, type(answer)) == (status, dict), (body[:80], got, answer)
        assert all(f in answer["error"] for f in fragments), (body[:80], answer)
        # The same connection-free server answers a good request after each bad one.
        assert served.post(PREDICT, one) == (200, before)


def test_missing_values_are_imputed_not_refused(landed: tuple[Project, Served]) -> None:
    project, served = landed
    X, _, _ = _requests(project)
    row = _records(X.head(1))[0]
    first = next(iter(row))
    status, answer = served.post(
        PREDICT, {"instances": [{**row, first: None}, [None] * len(row), {**row}]}
    )
    assert status == 200, answer
    assert len(answer["predictions"]) == 3
    assert all(p["top_entity"] for p in answer["predictions"])


def test_a_body_over_the_limit_is_413(landed: tuple[Project, Served]) -> None:
    _, served = landed
    # Declared too large: refused before a byte is read.
    status, answer = served.post(
        PREDICT, b"{}", headers={"Content-Length": str(MAX_BODY_BYTES + 1), "Connection": "close"}
    )
    assert status == 413 and str(MAX_BODY_BYTES) in answer["error"]
    # Streamed without a length (chunked), refused once it passes the limit.
    chunk = b" " * 2**20
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        conn.request(
            "POST", PREDICT, body=iter([chunk] * 17), encode_chunked=True,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        response = conn.getresponse()
        assert response.status == 413
        assert "larger than" in json.loads(response.read())["error"]
    finally:
        conn.close()
    assert served.ready()


def test_health_and_metrics(landed: tuple[Project, Served]) -> None:
    project, served = landed
    assert served.get("/healthz") == (200, {"status": "ok"})
    X, _, _ = _requests(project)
    for _ in range(3):
        assert served.post(PREDICT, {"instances": _records(X.head(2))})[0] == 200
    assert served.post(PREDICT, {"instances": []})[0] == 400
    status, text = served.get("/metrics")
    assert status == 200
    predict = 'endpoint="/v1/models/{name}:predict"'
    ok = re.search(
        r'ml_assets_serve_requests_total\{code="200",' + re.escape(predict) + r"\} (\S+)", text
    )
    assert ok is not None and float(ok.group(1)) >= 3
    assert re.search(r"ml_assets_serve_errors_total\{code=\"400\"," + re.escape(predict), text)
    assert "ml_assets_serve_request_duration_seconds_bucket{" in text
    key = _selection(project)["key"]
    assert 'ml_assets_serve_selection_info{dataset_key="' in text and key in text
    assert "ml_assets_serve_selection_members 2.0" in text
    assert "ml_assets_serve_ready 1.0" in text
    assert re.search(r"ml_assets_serve_selection_swaps_total [1-9]", text)


def test_ready_only_once_a_selection_lands(fresh: Project) -> None:
    with serving(fresh) as served:
        assert served.get("/healthz") == (200, {"status": "ok"})
        assert served.get("/v1/models/ensemble") == (200, {"name": "ensemble", "ready": False})
        status, answer = served.post(PREDICT, {"instances": [[0.0] * 64]})
        assert status == 503
        assert "waiting for model_selection" in answer["error"]
        listing = served.get("/v1/models")[1]
        assert listing["models"][0]["ready"] is False and listing["last_error"] is None

        assert fresh.workflow().success
        wait_for(served.ready, "the selection to load")
        X, _, _ = _requests(fresh)
        status, answer = served.post(PREDICT, {"instances": _records(X.head(3))})
        assert status == 200 and answer["selection_key"] == _selection(fresh)["key"]


def test_a_swap_under_load_fails_no_request(fresh: Project) -> None:
    assert fresh.workflow().success
    first = _selection(fresh)
    X, _, _ = _requests(fresh)
    body = {"instances": _records(X.head(5))}
    with serving(fresh) as served:
        wait_for(served.ready, "the first selection to load")
        seen: list[list[tuple[int, str | None, list[str]]]] = [[] for _ in range(4)]
        stop = threading.Event()

        def _client(out: list[tuple[int, str | None, list[str]]]) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
            try:
                while not stop.is_set():
                    status, answer = call(served.port, "POST", PREDICT, body, connection=conn)
                    ok = status == 200
                    out.append(
                        (status, answer.get("selection_key") if ok else None, answer.get("models"))
                    )
            finally:
                conn.close()

        clients = [threading.Thread(target=_client, args=(out,)) for out in seen]
        for client in clients:
            client.start()
        try:
            fresh.write_config(selection={"top_k": 1})
            assert fresh.run("serve_job").success
            second = _selection(fresh)
            assert second["key"] != first["key"]
            wait_for(
                lambda: all(sum(k == second["key"] for _, k, _ in out) >= 3 for out in seen),
                "every client to be answered by the new selection",
            )
        finally:
            stop.set()
            for client in clients:
                client.join(60)

    members = {s["key"]: [e["name"] for e in s["selected"]] for s in (first, second)}
    assert len(members[first["key"]]) == 2 and len(members[second["key"]]) == 1
    for out in seen:
        assert [s for s, _, _ in out if s != 200] == []
        keys = [k for _, k, _ in out]
        assert set(keys) == set(members)
        # One swap, atomic: once a client saw the new selection, it never saw the old one.
        switched = keys.index(second["key"])
        assert set(keys[:switched]) == {first["key"]} and set(keys[switched:]) == {second["key"]}
        assert all(models == members[key] for _, key, models in out)


def _model_file(project: Project, model_key: str) -> Path:
    directory = project.store.path("models", model_key)
    files = [p for p in directory.iterdir() if p.name not in (MANIFEST, "model.json")]
    return max(files, key=lambda p: p.stat().st_size)


def test_a_selection_whose_model_fails_its_hash_is_never_loaded(fresh: Project) -> None:
    assert fresh.workflow().success
    first = _selection(fresh)
    X, _, _ = _requests(fresh)
    body = {"instances": _records(X.head(3))}
    # Polls only when the test says so: nothing races the corruption below.
    with serving(fresh, poll_seconds=3600) as served:
        wait_for(served.ready, "the first selection to load")
        _, before = served.post(PREDICT, body)
        fresh.write_config(selection={"top_k": 1})
        assert fresh.run("serve_job").success
        second = _selection(fresh)
        damaged = _model_file(fresh, second["selected"][0]["model_key"])
        original = damaged.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0xFF
        damaged.write_bytes(bytes(flipped))

        current = served.current
        assert current.check() is None
        assert current.load_failures == 1
        status, listing = served.get("/v1/models")
        assert listing["models"][0]["selection_key"] == first["key"]
        error = listing["last_error"]
        assert second["key"] in error and "SHA-256" in error and damaged.name in error
        assert served.post(PREDICT, body) == (200, before)  # the previous snapshot serves on
        assert "ml_assets_serve_selection_load_failures_total 1.0" in served.get("/metrics")[1]

        current.check()  # the same landing is not hashed again on the next tick…
        assert current.load_failures == 1
        clock = current.clock
        current.clock = lambda: clock() + 31  # …only after the retry delay
        current.check()
        assert current.load_failures == 2

        damaged.write_bytes(original)  # repaired: the retry after the delay loads it
        current.clock = lambda: clock() + 62
        assert current.check() is not None
        status, answer = served.post(PREDICT, body)
        assert (status, answer["selection_key"]) == (200, second["key"])
        assert answer["models"] == [second["selected"][0]["name"]]
        assert served.get("/v1/models")[1]["last_error"] is None


def _serve_command(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ml-assets")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *args])


def test_a_taken_port_is_one_user_error(
    fresh: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ML_ASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    monkeypatch.setenv("ML_ASSETS_CONFIG", str(fresh.config_path))
    monkeypatch.delenv("ML_ASSETS_POSTGRES_URL", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        args = _serve_command("--port", str(port))
        with pytest.raises(ServeError) as raised:
            args.func(args)
    assert find_user_error(raised.value) is raised.value  # `main` prints it as one line, exit 2
    assert str(raised.value) == (
        f"cannot listen on 127.0.0.1:{port}: the port is in use (another server?); "
        "choose another with --port"
    )


# `ml-assets serve` through its parser, in a process of its own (main.py adds the sub-command).


def test_the_command_serves_before_anything_landed(fresh: Project, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ML_ASSETS_HOME": str(tmp_path / "home"),
        "ML_ASSETS_CONFIG": str(fresh.config_path),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    for name in ("DAGSTER_HOME", "ML_ASSETS_POSTGRES_URL"):
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "ml_assets.cli",
        "serve",
        "--port",
        "0",
        "--poll-seconds",
        "0.1",
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the first line names the port; EOF if it died
        found = re.search(r"serving on http://127\.0\.0\.1:(\d+)/v1/models", line)
        assert found, line + (process.stderr.read() if process.stderr else "")
        served = Served(int(found.group(1)), current=None)  # type: ignore[arg-type]
        wait_for(lambda: _answers(served), "the server to answer")
        assert served.get("/v1/models/ensemble") == (200, {"name": "ensemble", "ready": False})
        status, answer = served.post(PREDICT, {"instances": [[0.0] * 64]})
        assert status == 503 and "waiting for model_selection" in answer["error"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert "Application shutdown complete" in stderr, stderr


def _answers(served: Served) -> bool:
    try:
        return served.get("/healthz") == (200, {"status": "ok"})
    except OSError:  # uvicorn still starting: the socket listens, the app is not yet up
        return False
