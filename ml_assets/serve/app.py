"""The Starlette application: KServe's V1 inference protocol over the current selection.

    GET  /v1/models                   every served model, the selection, and `last_error`
    GET  /v1/models/<name>            {"name", "ready"}  (`ensemble` or a served member)
    POST /v1/models/<name>:predict    {"instances": [...]} → {"predictions": [...], "models",
                                      "selection_key"}
    GET  /healthz                     200 while the process runs
    GET  /metrics                     Prometheus text (this app's own registry)

Scoring runs in Starlette's thread pool, never on the event loop. Errors are JSON
`{"error": …}`: 400 for a body that is not the protocol's, 404 for a model not served, 413
beyond the limits (`limits.MAX_INSTANCES`, `limits.MAX_BODY_BYTES`), 422 for records that do
not fit the dataset's features, 503 until a selection is loaded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

import orjson
from dagster import DagsterInstance
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml_assets.core.config import Settings
from ml_assets.serve.current import (
    ENSEMBLE,
    Answer,
    CurrentSelection,
    Member,
    Snapshot,
)
from ml_assets.serve.inputs import RequestError, instance_matrix, parse_body
from ml_assets.serve.limits import DEFAULT_POLL_SECONDS, MAX_BODY_BYTES, MAX_INSTANCES
from ml_assets.storage.store import ArtifactStore

_JSON: Final = "application/json"
# Latency buckets from 0.5 ms (one record, one small model) to 10 s (10,000 records).
_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _SelectionCollector(Collector):
    """The served selection's gauges and the watcher's counters, read at each scrape."""

    def __init__(self, current: CurrentSelection) -> None:
        self.current = current

    def collect(self) -> Iterable[Metric]:
        snapshot = self.current.snapshot
        ready = GaugeMetricFamily(
            "ml_assets_serve_ready", "1 once a model selection is loaded and served"
        )
        ready.add_metric([], 1.0 if snapshot else 0.0)
        info = GaugeMetricFamily(
            "ml_assets_serve_selection_info",
            "The served model selection (always 1; the key and dataset are labels)",
            labels=["selection_key", "dataset_key"],
        )
        members = GaugeMetricFamily(
            "ml_assets_serve_selection_members", "Models in the served selection"
        )
        if snapshot is not None:
            info.add_metric([snapshot.selection_key, snapshot.dataset_key], 1.0)
        members.add_metric([], float(len(snapshot.members)) if snapshot else 0.0)
        swaps = CounterMetricFamily(
            "ml_assets_serve_selection_swaps", "Model selections swapped in (the first included)"
        )
        swaps.add_metric([], float(self.current.swaps))
        failures = CounterMetricFamily(
            "ml_assets_serve_selection_load_failures",
            "Model selections that failed to load (hash mismatch, missing file) and were kept out",
        )
        failures.add_metric([], float(self.current.load_failures))
        return [ready, info, members, swaps, failures]


class _Metrics:
    """Request counters and latencies in a registry of this app's own (not the global one:
    several apps in one process, as in the tests, keep their counts apart)."""

    def __init__(self, current: CurrentSelection) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ml_assets_serve_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "ml_assets_serve_errors",
            "HTTP requests answered with an error (status >= 400) by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ml_assets_serve_request_duration_seconds",
            "Time from the request's arrival to its response's end, by endpoint",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_SelectionCollector(current))

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)


class _MetricsMiddleware:
    """Counts and times every request, labelled by its route's template (bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: _Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(endpoint, status, time.perf_counter() - started)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body has {int(declared)} bytes; at most {limit} per request")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer_json(answer: Answer, entities: tuple[str, ...]) -> bytes:
    names = list(entities)
    predictions = [
        {"tags": tags, "top_entity": top, "scores": dict(zip(names, row, strict=True))}
        for tags, top, row in zip(
            answer.tags, answer.top_entity, answer.scores.tolist(), strict=True
        )
    ]
    body = {
        "predictions": predictions,
        "models": answer.models,
        "selection_key": answer.selection_key,
    }
    return orjson.dumps(body)


def _score(snapshot: Snapshot, member: Member | None, body: bytes, max_instances: int) -> bytes:
    """Parse, validate, score and encode: all the CPU work of one request (in a worker thread)."""
    instances = parse_body(body, max_instances)
    values = instance_matrix(instances, snapshot.features)
    answer = snapshot.predict(values, member)
    return _answer_json(answer, snapshot.entities)


def create_app(
    instance: DagsterInstance,
    settings: Settings,
    store: ArtifactStore,
    *,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_instances: int = MAX_INSTANCES,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    """The app serving the newest `model_selection` recorded on `instance`, from `store`.

    Its watcher thread runs while the app's lifespan does (uvicorn starts and stops it); the
    `CurrentSelection` is `app.state.current`. The tag threshold is `settings.serving`'s at
    creation: an edit applies when the server restarts.
    """
    current = CurrentSelection(
        instance, store, settings.serving.tag_threshold, poll_seconds=poll_seconds
    )
    metrics = _Metrics(current)

    def _unknown(name: str, snapshot: Snapshot | None) -> JSONResponse:
        if snapshot is None:
            return _error(404, f"model {name!r} is not served: {current.unavailable()}")
        served = ", ".join([ENSEMBLE, *snapshot.names])
        return _error(404, f"model {name!r} is not served; served models: {served}")

    async def predict(request: Request) -> Response:
        snapshot = current.snapshot  # once: this request finishes on these models
        name = request.path_params["name"]
        if snapshot is None:
            return _error(503, current.unavailable(), headers={"Retry-After": "1"})
        member = None
        if name != ENSEMBLE:
            member = snapshot.member(name)
            if member is None:
                return _unknown(name, snapshot)
        try:
            body = await _read_body(request, max_body_bytes)
            content = await run_in_threadpool(_score, snapshot, member, body, max_instances)
        except RequestError as error:
            return _error(error.status, str(error))
        except ClientDisconnect:
            return Response(status_code=499)  # nobody reads it; counted as the client's
        return Response(content, media_type=_JSON)

    async def model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        snapshot = current.snapshot
        if name.endswith(":predict"):
            message = f'{request.url.path} takes POST {{"instances": [...]}}'
            return _error(405, message, headers={"Allow": "POST"})
        if name == ENSEMBLE:
            return JSONResponse({"name": ENSEMBLE, "ready": snapshot is not None})
        if snapshot is None or snapshot.member(name) is None:
            return _unknown(name, snapshot)
        return JSONResponse({"name": name, "ready": True})

    async def models(request: Request) -> Response:
        snapshot = current.snapshot
        ensemble: dict[str, Any] = {
            "name": ENSEMBLE,
            "ready": snapshot is not None,
            "selection_key": snapshot.selection_key if snapshot else None,
            "dataset_key": snapshot.dataset_key if snapshot else None,
            "members": snapshot.names if snapshot else [],
        }
        if snapshot is None:
            ensemble["waiting"] = current.unavailable()
        listed = [ensemble] + [
            {
                "name": m.name,
                "ready": True,
                "weight": m.weight,
                "model_key": m.model_key,
                "why": m.why,
            }
            for m in (snapshot.members if snapshot else ())
        ]
        return JSONResponse({"models": listed, "last_error": current.last_error})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_text(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def internal_error(request: Request, error: Exception) -> Response:
        # The traceback goes to the server's log (Starlette re-raises after this response).
        return _error(500, f"internal error: {type(error).__name__}: {error}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        current.start()
        try:
            yield
        finally:
            await run_in_threadpool(current.stop)

    routes = [
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name}", model_ready, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={Exception: internal_error},
    )
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.state.current = current
    app.state.metrics = metrics
    return app
