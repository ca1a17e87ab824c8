"""The HTTP front of :class:`~simsearch.serving.Service`: an ASGI app (FastAPI) and its uvicorn runner.

Endpoints: ``POST /v1/embed``, ``/v1/search``, ``/v1/match``, ``/v1/items``,
``DELETE /v1/items``, ``GET /healthz``, ``/readyz``, ``/metrics``
(Prometheus text), and the OpenAPI schema at ``/openapi.json`` (``/docs``).

Every response carries the model name, the model fingerprint and the index
version, as headers (``X-Model``, ``X-Model-Fingerprint``,
``X-Index-Version``) and, in JSON bodies, as fields (``model``,
``model_fingerprint``, ``index_version``). Errors are JSON ``{"error": "one
line"}``: 400 bad input or invalid JSON, 401 missing or wrong bearer token, 404
unknown id, 409 id already present, 413 body or batch too large, 422 body of
the wrong shape, 429 overloaded (queue full, or the request could not finish
before its deadline; with ``Retry-After``), 503 still loading (with
``Retry-After``), 504 a deadline shorter than the request's own compute, or a
model call that hung.
"""

from __future__ import annotations

import hmac
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsearch.errors import DeadlineExceeded, DuplicateIdError, LoadError, QueueFull, SimsearchError
from simsearch.serving.batcher import BatchStats
from simsearch.serving.results import SearchResult
from simsearch.serving.service import Service, check_effort

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        disable_created_metrics,
        generate_latest,
    )
    from starlette.concurrency import run_in_threadpool
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the simsearch HTTP server needs {err.name}; install it with: pip install 'simsearch[serve]'"
    ) from err

from simsearch.serving.schemas import (  # after the check above: pydantic comes with fastapi
    AddRequest,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    MatchRequest,
    MatchResponse,
    RemoveRequest,
    SearchRequest,
    SearchResponse,
    WriteResponse,
)

# The *_created series double the text for no use here.
disable_created_metrics()

#: Environment variable holding the bearer token when ``--token`` is not given.
TOKEN_ENV = "SIMSEARCH_TOKEN"
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})
_ENDPOINTS = frozenset({"/v1/embed", "/v1/search", "/v1/match", "/v1/items", "/healthz", "/readyz", "/metrics"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0)
# When the outermost layer received the request (time.monotonic()): a
# request's deadline runs from its arrival, not from when its handler got
# the event loop, which on a loaded machine can be much later.
_ARRIVED: ContextVar[float] = ContextVar("simsearch_arrived")
# The event loop's lag is sampled this often; its decaying maximum halves every
# _LAG_HALF_LIFE seconds.
_LAG_EVERY_S = 0.02
_LAG_HALF_LIFE = 2.0


class _LoopLag:
    """How late the event loop wakes up: a decaying maximum of sampled lags, in seconds.

    On a loaded machine the loop may run seconds late; an answer the batcher
    finishes on time still has to wait for the loop to send it, so requests
    keep this much (twice: the way in and the way out) of their deadline for
    it, and a loop too late to answer in time sheds work rather than letting
    it miss its deadline.
    """

    def __init__(self) -> None:
        self.worst = 0.0
        self._at = time.monotonic()

    def seconds(self) -> float:
        return self.worst * 0.5 ** ((time.monotonic() - self._at) / _LAG_HALF_LIFE)

    async def watch(self) -> None:
        import asyncio

        while True:
            before = time.monotonic()
            await asyncio.sleep(_LAG_EVERY_S)
            lag = time.monotonic() - before - _LAG_EVERY_S
            if lag >= self.seconds():
                self.worst, self._at = lag, time.monotonic()
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# -- settings and state -----------------------------------------------------


@dataclass
class ServerLimits:
    """Limits the HTTP layer enforces before any work is queued.

    Attributes
    ----------
    max_body_bytes : int
        Larger request bodies get 413.
    max_items : int
        Most texts, queries, vectors, listings, items or ids per request (413 beyond).
    timeout_ms : float or None
        Deadline of a request that gives none; ``None``: no deadline.
    """

    max_body_bytes: int = 1 << 20
    max_items: int = 256
    timeout_ms: float | None = 2000.0


class _Metrics:
    """Prometheus metrics of one app, in their own registry."""

    def __init__(self, state: _State) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("simsearch_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r)
        self.latency = Histogram(
            "simsearch_request_duration_seconds", "HTTP request latency by endpoint", ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("simsearch_batch_size", "texts per encoder call", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_wait = Histogram("simsearch_batch_wait_seconds", "time a batch waited for company", buckets=_LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("simsearch_rejected", "requests refused with 429 (queue full)", registry=r)

        def stat(name: str) -> Callable[[], float]:
            return lambda: float(state.service.stats().get(name, 0.0)) if state.service is not None else 0.0

        for name, doc in (
            ("queue_depth", "texts waiting for the encoder"),
            ("cache_hit_rate", "embedding cache hits / lookups since start"),
            ("cache_hits", "embedding cache hits since start"),
            ("cache_misses", "embedding cache misses since start"),
            ("items", "items in the index"),
            ("index_version", "writes applied to the index folder"),
            ("deadline_exceeded", "requests refused for a timeout shorter than their own compute, or whose model call hung"),
            ("shed", "requests shed with 429 after queueing: they could no longer finish before their deadline"),
            ("late", "requests answered with their result past their deadline"),
        ):
            Gauge(f"simsearch_{name}", doc, registry=r).set_function(stat(name))
        ready = Gauge("simsearch_ready", "1 once the index and model are loaded", registry=r)
        ready.set_function(lambda: 1.0 if state.service is not None else 0.0)

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_wait.observe(stats.waited_s)


class _State:
    def __init__(self, info: dict[str, Any]) -> None:
        self.service: Service | None = None
        self.error: str | None = None
        self.info = info

    def envelope(self) -> dict[str, Any]:
        s = self.service
        if s is None:
            return {
                "model": str(self.info.get("model", "")),
                "model_fingerprint": str(self.info.get("fingerprint", "")),
                "index_version": int(self.info.get("version", 0)),
            }
        return {"model": s.model_name, "model_fingerprint": s.model_fingerprint, "index_version": s.index_version}


class _HTTPError(SimsearchError):
    """A request the app refuses itself, answered with ``status`` and the message as one line."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return text


# -- the app ----------------------------------------------------------------


def create_app(
    service: Service | Callable[[Callable[[BatchStats], None]], Service],
    *,
    token: str | None = None,
    limits: ServerLimits | None = None,
    info: dict[str, Any] | None = None,
    on_load_error: Callable[[str], None] | None = None,
) -> Any:
    """The ASGI app serving ``service``.

    Parameters
    ----------
    service : Service or callable
        A ready service, or ``load(on_batch) -> Service``, called in a
        background thread at startup so that ``/healthz`` answers at once and
        ``/readyz`` says 503 until the model and index are loaded (pass
        ``on_batch`` to the Service to fill the batch metrics).
    token : str or None, default=None
        Bearer token every request but ``/healthz`` and ``/readyz`` must carry (401 otherwise).
    limits : ServerLimits or None, default=None
        Body, batch and deadline limits.
    info : dict or None, default=None
        ``model``, ``fingerprint`` and ``version`` to report while loading.
    on_load_error : callable or None, default=None
        Called with the one-line error if ``load`` fails (``simsearch serve``
        prints it and stops); the app keeps answering ``/readyz`` with 503
        ``"failed"`` either way.

    Returns
    -------
    ASGI application
        The FastAPI app behind a thin outer layer (token, body limit,
        envelope headers, request metrics); attributes such as ``openapi()``
        and ``state`` reach the FastAPI app.
    """
    limits = limits or ServerLimits()
    state = _State(info or {})
    lag = _LoopLag()
    metrics = _Metrics(state)

    def load() -> None:
        try:
            state.service = service(metrics.on_batch)  # type: ignore[operator]
        except Exception as err:  # reported by /readyz, and to on_load_error
            state.error = f"{type(err).__name__}: {_one_line(err)}"
            if on_load_error is not None:
                on_load_error(state.error)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        import asyncio

        if isinstance(service, Service):
            state.service = service
        else:
            threading.Thread(target=load, name="simsearch-load", daemon=True).start()
        watcher = asyncio.ensure_future(lag.watch())
        yield
        watcher.cancel()
        if state.service is not None:
            await run_in_threadpool(state.service.close)

    app = FastAPI(
        title="simsearch",
        version=_version(),
        summary="Embedding and similarity search over a product catalog.",
        lifespan=lifespan,
        responses={code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 429, 503, 504)},
    )
    app.state.simsearch = state
    app.state.metrics = metrics

    def ready() -> Service:
        if state.service is None:
            raise _HTTPError(503, state.error or "the model and index are still loading", {"Retry-After": "1"})
        return state.service

    def count(n: int, what: str) -> None:
        if n > limits.max_items:
            raise _HTTPError(413, f"{n} {what} in one request; the limit is {limits.max_items}")
        if n == 0:
            raise _HTTPError(400, f"no {what} given")

    def timeout_s(svc: Service, timeout_ms: float | None, n: int) -> float | None:
        """Seconds the request of ``n`` texts has left of its timeout, counted from its arrival."""
        ms = timeout_ms if timeout_ms is not None else limits.timeout_ms
        if ms is None:
            return None
        waited = time.monotonic() - _ARRIVED.get(time.monotonic())
        reserve = 2 * lag.seconds()  # for the loop to take the request in and to send its answer
        left = ms / 1000.0 - waited - reserve
        own = n * svc.batcher.item_s
        # Time the server's delays took from a timeout that would have been
        # enough is overload (429); a timeout too short for the work itself
        # is the caller's (504, from the batcher).
        if left <= 0 or left <= own < ms / 1000.0:
            # The server's own event loop is too far behind to answer in time: overload.
            metrics.rejected.inc()
            raise _HTTPError(
                429,
                f"overloaded: the request waited {waited * 1000:.0f} ms for its turn and the server answers "
                f"{reserve * 1000:.0f} ms late, past its timeout of {ms:g} ms; retry later",
                {"Retry-After": str(svc.batcher.retry_after())},
            )
        return left

    def effort(ef: int | None) -> int | None:
        # Checked before the texts are queued for the encoder; 422 like every out-of-range field.
        try:
            return check_effort(ef)
        except (TypeError, ValueError) as err:
            raise _HTTPError(422, f"ef: {_one_line(err)}") from None

    async def vectors_of(svc: Service, texts: list[str], timeout: float | None, on_miss: str | None = "wait") -> Any:
        return await svc.wait_async(svc.submit_embed(texts, timeout, on_miss=on_miss), timeout)

    def body(payload: dict[str, Any], version: int | None = None) -> JSONResponse:
        envelope = state.envelope()
        if version is not None:  # the version that answered, should a write have landed since
            envelope["index_version"] = version
        return JSONResponse({**payload, **envelope})

    def hits_json(result: SearchResult) -> list[list[dict[str, Any]]]:
        return [
            [{"id": h.id, "title": h.title, "score": h.score, **({} if h.is_match is None else {"is_match": h.is_match})} for h in row]
            for row in result.hits
        ]

    @app.post("/v1/embed", response_model=EmbedResponse, summary="Embed texts")
    async def embed(req: EmbedRequest) -> Response:
        svc = ready()
        count(len(req.texts), "texts")
        result = await vectors_of(svc, req.texts, timeout_s(svc, req.timeout_ms, len(req.texts)), on_miss=None)
        vectors = [[None] * svc.dim if m else row for row, m in zip(result.vectors.tolist(), result.missing.tolist())]
        return body({"embeddings": vectors, "missing": result.missing.tolist(), "dim": svc.dim})

    @app.post("/v1/search", response_model=SearchResponse, summary="Search by text or vector")
    async def search(req: SearchRequest) -> Response:
        svc = ready()
        ef = effort(req.ef)
        if (req.query is None) == (req.vector is None):
            raise _HTTPError(400, "give exactly one of 'query' (text or list of texts) and 'vector' (list of floats or list of lists)")
        if req.query is not None:
            texts = [req.query] if isinstance(req.query, str) else req.query
            count(len(texts), "queries")
            vectors = (await vectors_of(svc, texts, timeout_s(svc, req.timeout_ms, len(texts)))).vectors
        else:
            raw = req.vector
            rows = [raw] if raw and not isinstance(raw[0], list) else raw
            count(len(rows), "query vectors")
            try:
                vectors = svc.query_vectors(np.asarray(rows, dtype=np.float32))
            except ValueError as err:
                if "inhomogeneous" in str(err):
                    raise ValueError("query vectors have different lengths") from None
                raise
        result = svc.search_vectors(vectors, req.k, ef)
        return body({"results": hits_json(result)}, result.index_version)

    @app.post("/v1/match", response_model=MatchResponse, summary="Match listings to catalog items")
    async def match(req: MatchRequest) -> Response:
        svc = ready()
        count(len(req.listings), "listings")
        ef = effort(req.ef)
        vectors = (await vectors_of(svc, [x.title for x in req.listings], timeout_s(svc, req.timeout_ms, len(req.listings)))).vectors
        result = svc.match_vectors(vectors, req.k, req.threshold, ef)
        rows = hits_json(result)
        return body({"results": [{"listing_id": x.id, "matches": m} for x, m in zip(req.listings, rows)]}, result.index_version)

    @app.post("/v1/items", response_model=WriteResponse, summary="Add items (durable once acknowledged)")
    async def add_items(req: AddRequest) -> Response:
        svc = ready()
        count(len(req.items), "items")
        with_vectors = [x.vector is not None for x in req.items]
        if any(with_vectors) and not all(with_vectors):
            raise _HTTPError(400, "give a vector for every item or for none")
        vectors = np.asarray([x.vector for x in req.items], dtype=np.float32) if all(with_vectors) else None
        result = await run_in_threadpool(svc.add, [x.id for x in req.items], [x.title for x in req.items], vectors)
        return body({"added": result.count}, result.index_version)

    @app.delete("/v1/items", response_model=WriteResponse, summary="Remove items by id (durable once acknowledged)")
    async def remove_items(req: RemoveRequest) -> Response:
        svc = ready()
        count(len(req.ids), "ids")
        result = await run_in_threadpool(svc.remove, req.ids)
        return body({"removed": result.count}, result.index_version)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> Response:
        return body({"status": "ok"})

    @app.get("/readyz", summary="Readiness: model and index loaded")
    async def readyz() -> Response:
        if state.service is None:
            status = "failed" if state.error else "loading"
            return JSONResponse({"status": status, "error": state.error, **state.envelope()}, status_code=503, headers={"Retry-After": "1"})
        return body({"status": "ready", "items": len(state.service)})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- errors: one line each --------------------------------------------
    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message, **state.envelope()}, status_code=status, headers=headers)

    @app.exception_handler(_HTTPError)
    async def on_http_error(request: Request, err: _HTTPError) -> Response:
        return error(err.status, str(err), err.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, err: RequestValidationError) -> Response:
        first = err.errors()[0] if err.errors() else {"msg": "invalid request", "loc": ()}
        if first.get("type") == "json_invalid":
            return error(400, f"invalid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}")
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return error(422, f"{where}: {first.get('msg')}")

    @app.exception_handler(QueueFull)
    async def on_queue_full(request: Request, err: QueueFull) -> Response:
        metrics.rejected.inc()
        return error(429, str(err), {"Retry-After": str(err.retry_after)})

    @app.exception_handler(DeadlineExceeded)
    async def on_deadline(request: Request, err: DeadlineExceeded) -> Response:
        return error(504, str(err))

    @app.exception_handler(DuplicateIdError)
    async def on_duplicate(request: Request, err: DuplicateIdError) -> Response:
        return error(409, _one_line(err))

    @app.exception_handler(KeyError)
    async def on_unknown(request: Request, err: KeyError) -> Response:
        return error(404, _one_line(err))

    @app.exception_handler(ValueError)
    async def on_value(request: Request, err: ValueError) -> Response:
        return error(400, _one_line(err))

    @app.exception_handler(TypeError)
    async def on_type(request: Request, err: TypeError) -> Response:
        return error(400, _one_line(err))

    return _Front(app, state, metrics, token, limits.max_body_bytes)


class _Front:
    """Outermost ASGI layer: bearer token, body size limit, envelope headers, request metrics.

    Pure ASGI rather than a Starlette middleware: it reads the body itself,
    so that a body streamed without ``Content-Length`` gets its 413 while it
    arrives, in the same one-line form as every other error.
    """

    def __init__(self, app: FastAPI, state: _State, metrics: _Metrics, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self._state = state
        self._metrics = metrics
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes

    def __getattr__(self, name: str) -> Any:  # app.state, app.openapi(), ... reach the FastAPI app
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        _ARRIVED.set(time.monotonic())
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        status = {"code": 500}

        async def send_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                env = self._state.envelope()
                message["headers"] = list(message.get("headers", [])) + [
                    (b"x-model", env["model"].encode()),
                    (b"x-model-fingerprint", env["model_fingerprint"].encode()),
                    (b"x-index-version", str(env["index_version"]).encode()),
                ]
            await send(message)

        async def reply(code: int, message: str, headers: dict[str, str] | None = None) -> None:
            await JSONResponse({"error": message, **self._state.envelope()}, status_code=code, headers=headers)(scope, receive, send_headers)

        if path.startswith("/v1/"):
            scope = _as_json(scope)
        try:
            if self.token is not None and path not in _OPEN_PATHS and not self._authorized(scope):
                await reply(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')", {"WWW-Authenticate": "Bearer"})
                return
            length = _content_length(scope)
            if length is not None and length > self.max_body_bytes:
                await reply(413, f"request body of {length} bytes; the limit is {self.max_body_bytes}")
                return
            # Read the body here, up to the limit, and hand it on whole: a body
            # streamed without Content-Length gets its 413 as it arrives,
            # before anything buffers more than the limit.
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    status["code"] = 499  # the client left before its body arrived (nginx's code)
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    await reply(413, f"request body over the limit of {self.max_body_bytes} bytes")
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            handed = False

            async def replay() -> Any:
                nonlocal handed
                if not handed:
                    handed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_headers)
        finally:
            self._metrics.requests.labels(endpoint, str(status["code"])).inc()
            self._metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token or b"")
        return False


def _as_json(scope: dict[str, Any]) -> dict[str, Any]:
    """Read a /v1 body as JSON when the client sent no content type or curl's form default (``curl -d``)."""
    headers = [(n, v) for n, v in scope.get("headers", []) if n != b"content-type"]
    sent = [v for n, v in scope.get("headers", []) if n == b"content-type"]
    if sent and not sent[0].startswith(b"application/x-www-form-urlencoded"):
        return scope
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def resolve_token(token: str | None) -> str | None:
    """The bearer token to require: ``token``, else ``$SIMSEARCH_TOKEN``; ``None`` (no auth) if neither is set or both are empty."""
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    return token or None


def _version() -> str:
    from simsearch import __version__

    return __version__


def serve(
    index_dir: str,
    *,
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    limits: ServerLimits | None = None,
    cache: str | None = None,
    threads: int | None = None,
    log_level: str = "warning",
    **service_kwargs: Any,
) -> None:
    """Serve an index folder over HTTP until interrupted (what ``simsearch serve`` runs).

    Parameters
    ----------
    index_dir : str
        Folder written by ``simsearch index build``.
    model : str or None, default=None
        Model folder; default the one the index was built with.
    host, port : str, int
        Where to listen.
    token : str or None, default=None
        Bearer token; ``None`` reads ``$SIMSEARCH_TOKEN`` (no auth if unset or empty).
    limits : ServerLimits or None
        HTTP limits.
    cache : str or None, default=None
        Embedding cache: a SQLite file path, ``":memory:"``, or ``None`` for none.
    threads : int or None, default=None
        Threads of one encoder call; ``None``: one per physical core.
    log_level : str, default="warning"
        uvicorn's log level.
    **service_kwargs
        Passed to :meth:`Service.open` (``max_batch_size``, ``max_wait_ms``,
        ``max_queue``, ``on_miss``, ``snapshot_every``, ...).

    Raises
    ------
    FileNotFoundError, ValueError
        If ``index_dir`` is not an index folder (checked before listening).
    LoadError
        If loading the model or the index failed (after the server stopped; a ``RuntimeError``).
    """
    import uvicorn

    from simsearch.serving import store

    info = store.read_meta(index_dir)
    token = resolve_token(token)

    server: Any = None

    def stop(error: str) -> None:
        print(f"simsearch: could not load {index_dir!r}: {error}", file=sys.stderr)
        server.should_exit = True  # a graceful shutdown, then the LoadError below

    def load(on_batch: Callable[[BatchStats], None]) -> Service:
        from simsearch.encoders import TextEncoder

        encoder = TextEncoder(
            model=model if model is not None else info.get("model_path"),
            precision=info.get("precision", "int8"),
            num_threads=threads,
        )
        emb_cache = None
        if cache is not None:
            from simsearch.cache import EmbeddingCache

            emb_cache = EmbeddingCache(cache)
        service = Service.open(index_dir, encoder, cache=emb_cache, on_batch=on_batch, **service_kwargs)
        service.embed(["warm up"])  # the first model call allocates; keep it off the first request
        return service

    app = create_app(load, token=token, limits=limits, info=info, on_load_error=stop)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.run()
    error = app.state.simsearch.error
    if error is not None:
        raise LoadError(f"could not load {index_dir!r}: {error}")
