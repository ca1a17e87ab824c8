"""The HTTP server, for real: ``simsearch serve`` in a subprocess on 127.0.0.1, httpx against it.

The index is built from the bundled PriceRunner sample with the default
encoder; the servers run the same encoder. Nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need the 'test' extra (httpx)")
pytest.importorskip("fastapi", reason="the server tests need the 'serve' extra")

import simsearch  # noqa: E402
from _faults import stop_process  # noqa: E402

TOKEN = "test-token-3f9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m simsearch.cli serve`` on a free port, waited on until /readyz says 200."""

    def __init__(self, index: Path, log: Path, *args: str) -> None:
        self.index, self.args = index, args
        self.start(log)

    def start(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.pop("SIMSEARCH_TOKEN", None)
        # Run the same simsearch as this test process imports.
        env["PYTHONPATH"] = os.pathsep.join([str(Path(simsearch.__file__).parents[1]), env.get("PYTHONPATH", "")])
        self.log = open(log, "wb")
        command = [sys.executable, "-m", "simsearch.cli", "serve", "--index", str(self.index), "--port", str(self.port), *self.args]
        # cwd: `python -m` puts the working directory first on sys.path, where a
        # source checkout would shadow the installed package and its extension.
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        end = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                self.log.close()
                raise AssertionError(f"the server exited with {self.process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > end:
                self.stop()
                raise AssertionError(f"the server was not ready within 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, nothing is saved."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.log.close()

    def stop(self) -> None:
        stop_process(self.process, self.log)


@pytest.fixture(scope="module")
def built(sample_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's own copy of the sample index: the server writes to it."""
    return Path(shutil.copytree(sample_index, tmp_path_factory.mktemp("server") / "index"))


@pytest.fixture(scope="module")
def titles(built: Path) -> dict[int, str]:
    table = pq.read_table(built / "items.parquet")
    return dict(zip(table.column("id").to_pylist(), table.column("title").to_pylist()))


@pytest.fixture(scope="module")
def server(built: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("main-server")
    # A small queue, so that a burst meets backpressure; one server start for
    # all these tests (a start takes seconds on a loaded machine).
    s = Server(
        built, tmp / "server.log", "--token", TOKEN, "--cache", ":memory:",
        "--max-items", "64", "--max-body-bytes", "200000", "--max-queue", "8", "--max-wait-ms", "20", "--timeout-ms", "60000",
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus series (all label sets) in the exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def check_envelope(response: httpx.Response) -> None:
    assert response.headers["x-model"] == "all-MiniLM-L6-v2"
    assert len(response.headers["x-model-fingerprint"]) == 64
    assert int(response.headers["x-index-version"]) >= 0


# -- endpoints ----------------------------------------------------------------


def test_search_by_text_finds_the_item(client, titles):
    item_id, title = list(titles.items())[7]
    r = client.post("/v1/search", json={"query": title, "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0][0]["id"] == item_id
    assert body["results"][0][0]["title"] == title
    assert len(body["results"][0]) == 3
    assert body["model"] == "all-MiniLM-L6-v2" and len(body["model_fingerprint"]) == 64
    assert isinstance(body["index_version"], int)
    check_envelope(r)


def test_search_by_vector_and_by_lists(client, titles):
    picked = list(titles.items())[10:12]
    r = client.post("/v1/embed", json={"texts": [t for _, t in picked]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 384 and body["missing"] == [False, False]
    vectors = body["embeddings"]
    assert abs(sum(v * v for v in vectors[0]) - 1.0) < 1e-3
    r = client.post("/v1/search", json={"vector": vectors[0], "k": 1})
    assert r.json()["results"][0][0]["id"] == picked[0][0]
    r = client.post("/v1/search", json={"vector": vectors, "k": 1})
    assert [row[0]["id"] for row in r.json()["results"]] == [i for i, _ in picked]
    r = client.post("/v1/search", json={"query": [t for _, t in picked], "k": 1})
    assert [row[0]["id"] for row in r.json()["results"]] == [i for i, _ in picked]


def test_match_flags_matches(client, titles):
    item_id, title = list(titles.items())[20]
    r = client.post("/v1/match", json={"listings": [{"id": "L1", "title": title}], "k": 2})
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["listing_id"] == "L1"
    assert result["matches"][0]["id"] == item_id and result["matches"][0]["is_match"] is True
    r = client.post("/v1/match", json={"listings": [{"title": title}], "k": 1, "threshold": 1.5})
    assert r.json()["results"][0]["matches"][0]["is_match"] is False


def test_add_then_remove_items(client):
    r = client.post("/v1/items", json={"items": [{"id": 7000001, "title": "zz server test lamp"}]})
    assert r.status_code == 200, r.text
    version = r.json()["index_version"]
    assert r.json()["added"] == 1
    r = client.post("/v1/search", json={"query": "zz server test lamp", "k": 1})
    assert r.json()["results"][0][0]["id"] == 7000001
    r = client.post("/v1/items", json={"items": [{"id": 7000001, "title": "again"}]})
    assert r.status_code == 409 and "already in the index" in r.json()["error"]
    r = client.request("DELETE", "/v1/items", json={"ids": [7000001]})
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert r.json()["index_version"] == version + 1
    r = client.request("DELETE", "/v1/items", json={"ids": [7000001]})
    assert r.status_code == 404 and r.json()["error"] == "unknown id 7000001"


def test_health_ready_openapi(client, server):
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"  # no token needed
    r = httpx.get(f"{server.url}/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    check_envelope(r)
    schema = client.get("/openapi.json").json()
    assert {"/v1/embed", "/v1/search", "/v1/match", "/v1/items", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert {"post", "delete"} <= set(schema["paths"]["/v1/items"])
    for body in ("SearchRequest", "MatchRequest"):  # the effort knob is documented where clients look
        assert "search effort" in schema["components"]["schemas"][body]["properties"]["ef"]["description"]


def test_search_and_match_take_ef(client, titles):
    item_id, title = list(titles.items())[3]
    default = client.post("/v1/search", json={"query": title, "k": 5}).json()["results"]
    for ef in (5, 300):  # at least k is used; 300 is more than the index holds
        r = client.post("/v1/search", json={"query": title, "k": 5, "ef": ef})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0][0]["id"] == item_id
    # The served index is small: its own ef (64) already finds the exact top 5.
    assert r.json()["results"] == default
    r = client.post("/v1/match", json={"listings": [{"id": "l1", "title": title}], "k": 2, "ef": 100})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["matches"][0]["id"] == item_id


def test_metrics_are_prometheus_text(client):
    client.post("/v1/search", json={"query": "canon camera", "k": 1})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "simsearch_requests_total",
        "simsearch_request_duration_seconds_bucket",
        "simsearch_batch_size_bucket",
        "simsearch_queue_depth",
        "simsearch_cache_hit_rate",
    ):
        assert name in text
    assert metric(text, 'simsearch_requests_total{code="200",endpoint="/v1/search"}') >= 1
    check_envelope(r)


# -- bad input and auth -------------------------------------------------------


@pytest.mark.parametrize(
    "path, payload, code, words",
    [
        ("/v1/search", b'{"query": ', 400, "invalid JSON"),
        ("/v1/search", {"vector": [0.1, 0.2, 0.3], "k": 1}, 400, "dimension 3"),
        ("/v1/search", {"query": "   "}, 400, "empty"),
        ("/v1/search", {"query": "tv", "k": 0}, 422, "k:"),
        ("/v1/search", {"query": "tv", "k": 1001}, 422, "k:"),
        ("/v1/search", {"query": "tv", "vector": [0.1]}, 400, "exactly one"),
        ("/v1/search", {}, 400, "exactly one"),
        ("/v1/search", {"query": ["tv"] * 65}, 413, "limit is 64"),
        ("/v1/embed", {"texts": ["x" * 250_000]}, 413, "limit is 200000"),
        ("/v1/embed", {"texts": [""]}, 400, "empty"),
        ("/v1/embed", {"texts": "not a list"}, 422, "texts"),
        ("/v1/items", {"items": [{"id": "s1", "title": "t"}]}, 400, "must be an int"),
        ("/v1/items", {"items": [{"id": 1, "title": ""}]}, 400, "empty"),
        ("/v1/search", {"query": "tv", "ef": 0}, 422, "ef: ef must be positive"),
        ("/v1/search", {"vector": [0.1] * 384, "ef": 2**31}, 422, "ef: ef=2147483648 is too large"),
        ("/v1/search", {"query": "tv", "ef": "lots"}, 422, "ef:"),
        ("/v1/match", {"listings": [{"title": "tv"}], "ef": -3}, 422, "ef: ef must be positive"),
    ],
)
def test_bad_requests_get_one_line_reasons(client, path, payload, code, words):
    if isinstance(payload, bytes):
        r = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=payload)
    assert r.status_code == code, r.text
    error = r.json()["error"]
    assert words in error and "\n" not in error
    check_envelope(r)


def test_streamed_body_over_the_limit_gets_413(client):
    def chunks():  # no Content-Length: httpx sends it chunked
        yield b'{"texts": ["'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"]}'

    r = client.post("/v1/embed", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "request body over the limit of 200000 bytes"


def test_token_is_required(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(f"{server.url}/v1/search", json={"query": "tv"}, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in r.json()["error"]
    assert httpx.get(f"{server.url}/metrics").status_code == 401


def test_token_comes_from_the_flag_or_the_environment(monkeypatch):
    from simsearch.serving.app import TOKEN_ENV, resolve_token

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token(None) is None
    assert resolve_token("flag") == "flag"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token(None) == "from-env"
    assert resolve_token("flag") == "flag"
    assert resolve_token("") is None


# -- batching, backpressure, durability ----------------------------------------


async def burst(url: str, queries: list[str], headers: dict[str, str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=httpx.Limits(max_connections=len(queries))) as c:
        return await asyncio.gather(*(c.post("/v1/search", json={"query": q, "k": 1}) for q in queries))


def test_concurrent_requests_share_batches(client, server):
    before = client.get("/metrics").text
    queries = [f"batching probe {i} stainless kettle" for i in range(8)]  # as many as the queue holds
    responses = asyncio.run(burst(server.url, queries, AUTH))
    assert [r.status_code for r in responses] == [200] * 8
    after = client.get("/metrics").text
    batches = metric(after, "simsearch_batch_size_count") - metric(before, "simsearch_batch_size_count")
    texts = metric(after, "simsearch_batch_size_sum") - metric(before, "simsearch_batch_size_sum")
    singles = metric(after, 'simsearch_batch_size_bucket{le="1.0"}') - metric(before, 'simsearch_batch_size_bucket{le="1.0"}')
    assert texts == 8  # each distinct query encoded once
    assert batches < 8 and singles < batches  # fewer encoder calls than requests: some were shared


def test_burst_over_a_small_queue_gets_429_with_retry_after(client, server):
    rejected = metric(client.get("/metrics").text, "simsearch_rejected_total")
    queries = [f"backpressure probe {i} garden hose" for i in range(64)]
    responses = asyncio.run(burst(server.url, queries, AUTH))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes  # refused, never failed
    refused = [r for r in responses if r.status_code == 429]
    assert refused and 200 in codes
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert "queue full" in r.json()["error"]
    assert metric(client.get("/metrics").text, "simsearch_rejected_total") - rejected == len(refused)


def test_readyz_is_503_until_loaded_and_reports_a_failed_load():
    """The app answers /healthz while the model loads; /readyz and the API say 503 until then."""
    import threading

    import uvicorn

    from simsearch.serving.app import create_app

    release = threading.Event()

    def load(on_batch):
        release.wait(60)
        raise FileNotFoundError("no such model folder: '/nowhere'")

    app = create_app(load, info={"model": "m", "fingerprint": "f" * 64, "version": 3})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < end, "uvicorn did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.config.port}"
        assert httpx.get(f"{url}/healthz").status_code == 200
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"] == "1"
        assert r.headers["x-index-version"] == "3" and r.json()["model"] == "m"
        r = httpx.post(f"{url}/v1/search", json={"query": "tv"})
        assert r.status_code == 503 and "still loading" in r.json()["error"]
        release.set()
        while httpx.get(f"{url}/readyz").json()["status"] == "loading":
            assert time.monotonic() < end, "the load never finished"
            time.sleep(0.05)
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert r.json()["error"] == "FileNotFoundError: no such model folder: '/nowhere'"
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)


def test_serve_exits_2_when_the_index_cannot_be_loaded(built, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(built, folder)
    data = (folder / "index.ssi").read_bytes()
    (folder / "index.ssi").write_bytes(data[: len(data) // 2])  # a torn copy
    env = dict(os.environ, PYTHONPATH=str(Path(simsearch.__file__).parents[1]))
    done = subprocess.run(
        [sys.executable, "-m", "simsearch.cli", "serve", "--index", str(folder), "--port", str(free_port())],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "simsearch: error: could not load" in done.stderr and "index.ssi" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "simsearch.cli", "serve", "--index", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert done.returncode == 2 and "no such index folder" in done.stderr


# Last in the file: it kills the module's server and leaves a restarted one.
def test_acknowledged_writes_survive_kill_9(server, tmp_path):
    added = {8000001 + i: f"zz durable item {i} copper saucepan" for i in range(5)}
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        for item_id, title in added.items():  # one acknowledged request each
            assert c.post("/v1/items", json={"items": [{"id": item_id, "title": title}]}).status_code == 200
        r = c.request("DELETE", "/v1/items", json={"ids": [8000005]})
        assert r.status_code == 200
        version = r.json()["index_version"]
    server.kill()
    server.start(tmp_path / "restarted.log")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        assert c.get("/readyz").json()["index_version"] == version
        for item_id, title in list(added.items())[:4]:
            assert c.post("/v1/search", json={"query": title, "k": 1}).json()["results"][0][0]["id"] == item_id
        assert c.request("DELETE", "/v1/items", json={"ids": [8000005]}).status_code == 404
        assert c.post("/v1/items", json={"items": [{"id": 8000001, "title": "dup"}]}).status_code == 409

