"""``simsearch serve`` at twice the rate it sustains: refusals, never failures.

The server runs in a subprocess on 127.0.0.1 (started outside the checkout,
on a free port) over an index folder built from the bundled sample. Its
sustainable rate is measured first (a few closed-loop clients), then searches
are sent open-loop at twice that rate over many connections for a few
seconds, bounded in count. Every answer must be 200 or 429 with
``Retry-After`` (503 with ``Retry-After`` only while starting), and the server
must still answer afterwards. ``benchmarks/reliability.py`` runs it longer and
prints the latency and memory figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the overload test needs the 'test' extra (httpx)")
pytest.importorskip("fastapi", reason="the overload test needs the 'serve' extra")

import _faults


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from simsearch.cli import demo_sample_path, main

    tmp = tmp_path_factory.mktemp("overload")
    folder = tmp / "index"
    assert main(["-q", "index", "build", str(demo_sample_path()), "--out", str(folder)]) == 0
    s = _faults.Server(folder, tmp / "server.log", "--max-queue", "16", "--max-batch-size", "8", "--timeout-ms", "2000", "--threads", "1")
    yield s
    s.stop()


def test_twice_the_sustainable_rate_gets_only_200_and_429(server: _faults.Server):
    assert all(code == 503 and retry for code, retry in server.starting), server.starting
    sustained = _faults.closed_loop(server.url, seconds=2.0, threads=4, prefix="warm")
    assert set(sustained.codes) <= {200, 429}, sustained.codes
    rate = max(sustained.rate, 2.0)
    loaded = _faults.open_loop(server.url, rate=2 * rate, seconds=4.0, threads=32, max_requests=800)
    assert loaded.sent >= min(800, int(2 * rate * 4.0)) * 0.9
    assert set(loaded.codes) <= {200, 429}, f"{dict(loaded.codes)} at {2 * rate:.0f} requests/s"
    assert loaded.missing_retry_after == 0
    assert loaded.codes[200] > 0
    if loaded.sent / 2 > 3 * 16:  # the excess over the sustained rate outgrows the queue of 16
        assert loaded.codes[429] > 0, "twice the sustained rate never filled the queue"
    # Still alive and answering once the burst is over.
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    r = httpx.post(f"{server.url}/v1/search", json={"query": "apple iphone 8", "k": 1}, timeout=30)
    assert r.status_code == 200, r.text


def test_log_has_no_traceback(server: _faults.Server):
    log = Path(server._log.name).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
