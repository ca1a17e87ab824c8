"""The labelling page of the review loop: labels saved at once, resume, two labellers, bad input, token, browser.

The API is driven with FastAPI's TestClient; the last test drives the page
and the report in headless Chromium (Debian's ``chromium`` and
``chromium-driver`` through Selenium; skipped with the reason where they are
absent). With ``SIMSEARCH_SCREENSHOTS=1`` it writes the README's screenshots
to ``docs/img/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _helpers import TESTS_DIR, child_env
from simsearch import Deduplicator
from simsearch._tables import read_table
from simsearch.cli import demo_sample_path, main
from simsearch.errors import CorruptFileError, FormatVersionError, UnknownIdError

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from simsearch.report.labels import default_labels_path
from simsearch.report.review_app import ReviewSession, check_binding, create_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.getbasetemp() / "simsearch-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMSEARCH_CACHE", str(cache))
        from simsearch import TextEncoder

        dedup = Deduplicator(encoder=TextEncoder(), progress=False).fit(read_table(demo_sample_path()))
    path = tmp_path_factory.mktemp("review") / "state"
    dedup.save(path)
    return path


@pytest.fixture
def state(built_state: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(built_state, copy)
    return copy


def client(state: Path, token: str | None = None, **kwargs) -> TestClient:
    return TestClient(create_app(ReviewSession(state, n=30, **kwargs), token=token))


def test_each_label_is_saved_at_once_and_a_restart_resumes(state):
    c = client(state)
    pairs = c.get("/api/state").json()["pairs"]
    assert len(pairs) == 30 and {"id_a", "id_b", "title_a", "title_b", "score", "stratum", "weight"} <= set(pairs[0])
    assert c.post("/api/label", json={"pair": 0, "label": "match", "labeller": "ann"}).status_code == 200
    on_disk = json.loads(default_labels_path(state).read_text())
    assert on_disk["labels"]["0"]["label"] == "match" and on_disk["labels"]["0"]["by"] == "ann"
    c.post("/api/label", json={"pair": 1, "label": "no_match", "labeller": "ann"})
    c.post("/api/label", json={"pair": 2, "label": "skip", "labeller": "ann"})
    # A new server on the same state: the same pairs, the labels kept.
    again = client(state, seed=99).get("/api/state").json()
    assert again["pairs"] == pairs
    assert {k: v["label"] for k, v in again["labels"].items()} == {"0": "match", "1": "no_match", "2": "skip"}
    assert not list(default_labels_path(state).parent.glob("*.tmp"))  # written through a temporary file, renamed


def test_two_labellers_none_lost_last_write_wins(state):
    ann, bob = client(state), client(state)  # two servers on one state

    def label(c, who, pairs):
        for i in pairs:
            assert c.post("/api/label", json={"pair": i, "label": "match", "labeller": who}).status_code == 200

    threads = [
        threading.Thread(target=label, args=(ann, "ann", range(0, 20, 2))),
        threading.Thread(target=label, args=(bob, "bob", range(1, 20, 2))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ann.post("/api/label", json={"pair": 0, "label": "no_match", "labeller": "bob"})
    labels = ann.get("/api/state").json()["labels"]
    assert sorted(map(int, labels)) == list(range(20))  # none lost
    assert {labels[str(i)]["by"] for i in range(1, 20, 2)} == {"bob"}
    assert labels["0"]["label"] == "no_match" and labels["0"]["by"] == "bob"  # the last write wins
    assert [(h["by"], h["label"]) for h in labels["0"]["history"]] == [
        ("ann", "match"),
        ("bob", "no_match"),
    ]  # both shown


def test_recalibrate_and_export_for_review_import(state, tmp_path, capsys):
    c = client(state)
    r = c.post("/api/recalibrate")
    assert r.status_code == 400 and "no pair is labelled" in r.json()["error"]
    pairs = c.get("/api/state").json()["pairs"]
    for i, p in enumerate(pairs):
        c.post("/api/label", json={"pair": i, "label": "match" if p["score"] >= 0.7 else "no_match", "labeller": "ann"})
    cal = c.post("/api/recalibrate").json()
    from simsearch.applications.candidates import DEFAULT_TEXT_THRESHOLD

    assert cal["n_labelled"] == 30 and cal["previous_threshold"] == pytest.approx(DEFAULT_TEXT_THRESHOLD)
    assert cal["precision_interval"][0] <= cal["precision"] <= cal["precision_interval"][1]
    matches = [p["score"] for p in pairs if p["score"] >= 0.7]
    others = [p["score"] for p in pairs if p["score"] < 0.7]
    # the labels put the line at 0.7: the new threshold separates the two sides
    assert max(others + [DEFAULT_TEXT_THRESHOLD]) < cal["threshold"] <= min(matches) + 1e-6
    assert Deduplicator.load(state).threshold_ == pytest.approx(cal["threshold"])  # saved into the state
    # The export is the CSV `simsearch review import` reads.
    csv = tmp_path / "labels.csv"
    csv.write_bytes(c.get("/api/export.csv").content)
    assert main(["review", "import", str(csv), "--state", str(state)]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == pytest.approx(cal["threshold"])


def test_bad_labels_are_refused(state):
    c = client(state)
    before = default_labels_path(state).read_bytes()
    for body in ({"pair": 0, "label": "yes"}, {"pair": 999, "label": "match"}, {"pair": "0", "label": "match"}):
        r = c.post("/api/label", json=body)
        assert r.status_code == 400 and r.json()["error"]
    assert c.post("/api/label", content=b"not json").status_code == 400
    assert default_labels_path(state).read_bytes() == before


def edit_labels(state: Path, change) -> bytes:
    path = default_labels_path(state)
    body = json.loads(path.read_text())
    change(body)
    path.write_text(json.dumps(body))
    return path.read_bytes()


def test_labels_of_another_model_version_or_state_are_refused(state):
    ReviewSession(state, n=30)
    ours = json.loads(default_labels_path(state).read_text())["state"]["model_fingerprint"]
    written = edit_labels(state, lambda b: b["state"].update(model_fingerprint="another-model"))
    with pytest.raises(ValueError, match="model_fingerprint 'another-model'"):
        ReviewSession(state)
    assert default_labels_path(state).read_bytes() == written  # nothing changed
    edit_labels(state, lambda b: b["state"].update(model_fingerprint=ours))
    ReviewSession(state)  # the state's own model: accepted
    edit_labels(state, lambda b: b.update(format_version=99))
    with pytest.raises(FormatVersionError):
        ReviewSession(state)
    edit_labels(state, lambda b: (b.update(format_version=1), b["pairs"][3].update(id_a=123456789)))
    with pytest.raises(UnknownIdError, match="not in the state"):
        ReviewSession(state)


def test_empty_or_missing_states_change_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dedup state"):
        ReviewSession(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptFileError, match="not a dedup state"):
        ReviewSession(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []
    lonely = tmp_path / "lonely"
    x = np.eye(3, dtype=np.float32)  # three items, no pair near another
    Deduplicator(threshold=0.9, k=2, progress=False).fit(x).save(lonely)
    with pytest.raises(ValueError, match="nothing to review"):
        ReviewSession(lonely)
    assert not (lonely / "review").exists()


def test_binding_beyond_loopback_needs_a_token(state, capsys):
    check_binding("127.0.0.1", None)
    with pytest.raises(ValueError, match="--token"):
        check_binding("0.0.0.0", None)
    assert main(["review", "serve", "--state", str(state), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err and not default_labels_path(state).exists()
    c = client(state, token="s3cret")
    assert c.get("/api/state").status_code == 401 and c.get("/").status_code == 401
    assert c.get("/api/state", headers={"X-Review-Token": "s3cret"}).status_code == 200
    assert c.get("/?token=s3cret").status_code == 200


# ---------------------------------------------------------------- the browser


def chromium():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Chromium is absent: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not download a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 30.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_label_reload_recalibrate_then_read_the_report(state, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = chromium()
    shots = ROOT / "docs" / "img" if os.environ.get("SIMSEARCH_SCREENSHOTS") == "1" else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "simsearch.cli", "review", "serve", "--state", str(state), "--port", str(port), "-n", "30"],
        stderr=subprocess.PIPE, text=True, env=child_env(), cwd=TESTS_DIR,
    )  # fmt: skip
    try:
        ready = server.stderr.readline()  # printed once the state is checked
        assert f"http://127.0.0.1:{port}/" in ready, ready
        url = f"http://127.0.0.1:{port}/"

        def load():
            for _ in range(100):  # uvicorn starts listening a moment after the line
                try:
                    driver.get(url)
                    break
                except Exception:  # noqa: BLE001 - connection refused, retried
                    time.sleep(0.1)
            wait_for(lambda: driver.execute_script("return document.body.dataset.ready") == "1")

        load()
        # The truth from the sample's product clusters: m for a pair of one product, n for two.
        sample = read_table(demo_sample_path()).to_pylist()
        cluster = {str(r["id"]): r["cluster_id"] for r in sample}
        pairs = driver.execute_script("return pairs")[:5]
        keys = ["m" if cluster[str(p["id_a"])] == cluster[str(p["id_b"])] else "n" for p in pairs]
        for i, key in enumerate(keys):
            ActionChains(driver).send_keys(key).perform()
            wait_for(
                lambda i=i: driver.find_element(By.ID, "status").get_attribute("data-saved") == str(i + 1),
                what=f"label {i + 1}",
            )
        ActionChains(driver).send_keys("\ue012").perform()  # left arrow: back to pair 5
        assert driver.find_element(By.CSS_SELECTOR, "#pair h2").text.startswith("Pair 5 of 30")
        driver.refresh()
        wait_for(lambda: driver.execute_script("return document.body.dataset.ready") == "1")
        assert driver.find_element(By.ID, "progress").text == "5 / 30"
        assert driver.find_element(By.CSS_SELECTOR, "#pair h2").text.startswith("Pair 6 of 30")  # resumed
        cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#pair-table td.label-cell")][:6]
        assert [c.split(" by ")[0] for c in cells[:5]] == [{"m": "match", "n": "not a match"}[k] for k in keys]
        assert cells[5] == "not labelled"
        driver.find_element(By.ID, "recalibrate").click()
        threshold = float(
            wait_for(lambda: driver.find_elements(By.ID, "new-threshold"), what="the new threshold")[0].text
        )
        assert threshold == pytest.approx(Deduplicator.load(state).threshold_, abs=1e-3)
        if shots:  # the README's picture: every pair labelled, then recalibrated
            rest = driver.execute_script("return pairs")[5:]
            for i, p in enumerate(rest):
                ActionChains(driver).send_keys(
                    "m" if cluster[str(p["id_a"])] == cluster[str(p["id_b"])] else "n"
                ).perform()
                wait_for(
                    lambda i=i: driver.find_element(By.ID, "status").get_attribute("data-saved") == str(6 + i),
                    what="a label",
                )
            driver.find_element(By.ID, "recalibrate").click()
            wait_for(
                lambda: "on 30 labelled" in driver.find_element(By.ID, "calibration").text, what="the recalibration"
            )
            ActionChains(driver).send_keys("\ue012" * 18).perform()  # back to a pair near the threshold
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(shots / "review-page.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()

    from simsearch.report import state_report

    report = state_report(state, tmp_path / "report.html")  # with the five labels: a calibration curve too
    driver.get(report.as_uri())
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready") == "1")
    assert driver.find_elements(By.CSS_SELECTOR, "#calibration svg")
    if shots:
        driver.save_screenshot(str(shots / "report.png"))
    search = driver.find_element(By.ID, "search")
    search.send_keys("canon eos")
    wait_for(lambda: "canon eos" in driver.find_element(By.ID, "match-count").text, what="the search")
    rows = driver.find_elements(By.CSS_SELECTOR, "#group-table tbody tr")
    assert rows and all("canon eos" in r.text.lower() or "more" in r.text for r in rows)
    search.clear()
    search.send_keys(" ")  # an empty query: every group again, largest first
    wait_for(lambda: driver.find_element(By.ID, "match-count").text == "", what="the full list")
    largest = int(driver.execute_script("return DATA.summary.largest_group"))
    first = driver.find_element(By.CSS_SELECTOR, "#group-table tbody tr")
    assert int(first.find_elements(By.TAG_NAME, "td")[1].text) == largest
    first.click()
    members = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#members .member"), what="the group")
    assert len(members) == largest
    assert driver.find_elements(By.CSS_SELECTOR, "#link-table tbody tr")
    if shots:
        driver.save_screenshot(str(shots / "report-group.png"))
    driver.quit()
