"""The simsearch command line, run in-process on the bundled PriceRunner sample, and the index folder it writes."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simsearch import Index
from simsearch._tables import read_table, write_table
from simsearch.cli import CommandError, main
from simsearch.errors import CorruptFileError, FormatVersionError, SimsearchError
from simsearch.index import folder as index_folder

from _helpers import products


# The CLI builds its own encoders; they share the exported model with the other tests.
pytestmark = pytest.mark.usefixtures("model_cache")


@pytest.fixture(scope="module")
def offers(tmp_path_factory: pytest.TempPathFactory, sample: pa.Table):
    """The sample as Parquet (offers) and a product catalog as CSV."""
    folder = tmp_path_factory.mktemp("cli")
    table = sample.slice(0, 120)
    write_table(table, folder / "offers.parquet")
    write_table(products(table).rename_columns(["product", "name"]), folder / "catalog.csv")
    return folder


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["-q", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_demo(capsys):
    code, out, _ = run(capsys, "demo", "--show", "2")
    assert code == 0
    assert "Duplicate offers" in out and "Matching offers" in out
    f1 = float(out.split("mean F1 against the true products: ")[1].split()[0])
    assert f1 >= 0.8


def test_index_build_and_search(capsys, offers, monkeypatch):
    code, _, err = run(capsys, "index", "build", offers / "offers.parquet", "--out", offers / "idx", "--ef", "24")
    assert code == 0, err
    meta = json.loads((offers / "idx" / "meta.json").read_text())
    assert meta["count"] == 120 and meta["dim"] == 384
    assert (meta["format"], meta["metric"], meta["ef"]) == (1, "ip", 24)
    assert sorted(p.name for p in offers.iterdir() if p.name.startswith(".")) == []  # no temporary folder left
    title = read_table(offers / "offers.parquet").column("title")[0].as_py()
    efs = []
    search = Index.search

    def recording_search(self, *args, **kwargs):
        efs.append(self.ef)
        return search(self, *args, **kwargs)

    monkeypatch.setattr(Index, "search", recording_search)
    code, _, err = run(capsys, "search", offers / "idx", title, "-k", "3", "--out", offers / "hits.csv")
    assert code == 0, err
    hits = read_table(offers / "hits.csv")
    assert hits.num_rows == 3 and hits.column("title")[0].as_py() == title
    code, _, err = run(capsys, "search", offers / "idx", title, "-k", "3", "--ef", "80")
    assert code == 0, err
    assert efs == [24, 80]  # the folder's ef, then the one given
    with pytest.raises(SystemExit) as exc:
        main(["search", str(offers / "idx"), title, "--ef", "0"])
    assert exc.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_index_build_with_attributes_and_filtered_search(capsys, offers):
    code, _, err = run(capsys, "index", "build", offers / "offers.parquet", "--out", offers / "idx_attr",
                       "--attr-col", "category", "--attr-col", "merchant_id")  # fmt: skip
    assert code == 0, err
    table = read_table(offers / "offers.parquet")
    categories = table.column("category").to_pylist()
    title, wanted = table.column("title")[0].as_py(), categories[0]
    other = next(c for c in categories if c != wanted)
    code, _, err = run(capsys, "search", offers / "idx_attr", title, "-k", "5", "--filter", f"category={other}",
                       "--out", offers / "hits_f.csv")  # fmt: skip
    assert code == 0, err
    hits = read_table(offers / "hits_f.csv")
    in_other = {t for t, c in zip(table.column("title").to_pylist(), categories) if c == other}
    assert hits.num_rows == min(5, len(in_other)) and set(hits.column("title").to_pylist()) <= in_other
    merchant = table.column("merchant_id")[0].as_py()
    code, _, err = run(capsys, "search", offers / "idx_attr", title, "-k", "3", "--filter", f"category={wanted}",
                       "--filter", f"merchant_id={merchant}", "--out", offers / "hits_g.csv")  # fmt: skip
    assert code == 0, err
    assert read_table(offers / "hits_g.csv").column("title")[0].as_py() == title
    code, _, err = run(capsys, "search", offers / "idx_attr", title, "--filter", "brand=3")
    assert code == 2 and "no attribute 'brand'" in err and "category" in err
    code, _, err = run(capsys, "search", offers / "idx_attr", title, "--filter", "category")
    assert code == 2 and "NAME=VALUE" in err
    code, _, err = run(capsys, "index", "build", offers / "offers.parquet", "--out", offers / "idx_bad", "--attr-col", "nope")
    assert code == 2 and "nope" in err


def test_dedup_writes_pairs_and_groups(capsys, offers):
    code, _, err = run(capsys, "dedup", offers / "offers.parquet", "--out", offers / "pairs.parquet", "--groups", offers / "groups.csv")
    assert code == 0, err
    pairs = pq.read_table(offers / "pairs.parquet")
    assert pairs.column_names[:3] == ["id_a", "id_b", "score"] and pairs.num_rows > 0
    with open(offers / "groups.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["id", "group_id", "canonical_id"]
    code, _, err = run(capsys, "dedup", offers / "offers.parquet", "--label-col", "cluster_id")
    assert code == 0 and "chosen from 'cluster_id'" in err


def test_match_with_other_column_names(capsys, offers):
    code, _, err = run(
        capsys, "match", offers / "catalog.csv", offers / "offers.parquet", "--id-col", "product", "--text-col", "name",
        "--listing-id-col", "id", "--listing-text-col", "title", "-k", "2", "--out", offers / "matches.parquet",
    )
    assert code == 0, err
    result = pq.read_table(offers / "matches.parquet")
    assert result.column_names == ["listing_id", "product_id", "score", "rank", "is_match"]
    assert result.num_rows == 240


def test_match_against_an_index_folder(capsys, offers):
    run(capsys, "index", "build", offers / "offers.parquet", "--out", offers / "idx2")
    code, out, err = run(capsys, "match", offers / "idx2", offers / "offers.parquet", "-k", "1")
    assert code == 0, err
    assert "listing_id" in out.splitlines()[0]


def test_classify(capsys, offers):
    code, out, err = run(capsys, "classify", offers / "offers.parquet", offers / "offers.parquet", "--label-col", "category", "-k", "3", "--out", offers / "labels.csv")
    assert code == 0, err
    labels = read_table(offers / "labels.csv")
    truth = read_table(offers / "offers.parquet").column("category").to_pylist()
    assert np.mean([a == b for a, b in zip(labels.column("label").to_pylist(), truth)]) >= 0.95


def test_eval(capsys, offers):
    code, out, err = run(capsys, "eval", "dedup", offers / "offers.parquet", "--label-col", "cluster_id")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["task"] == "dedup" and report["mean_f1"] >= 0.75
    code, out, err = run(capsys, "eval", "dedup", offers / "offers.parquet", "--label-col", "cluster_id", "--threshold", "0.5")
    assert code == 0 and json.loads(out)["threshold_from"] == "given"
    table = read_table(offers / "offers.parquet")
    write_table(pa.table({"listing_id": table.column("id"), "product_id": table.column("cluster_id")}), offers / "truth.csv")
    code, out, err = run(
        capsys, "eval", "match", offers / "catalog.csv", offers / "offers.parquet", offers / "truth.csv",
        "--id-col", "product", "--text-col", "name", "--listing-id-col", "id", "--listing-text-col", "title",
    )
    assert code == 0, err
    assert json.loads(out)["recall@1"] >= 0.85


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dedup", "{d}/missing.parquet"], "no such file"),
        (["dedup", "{d}/offers.parquet", "--text-col", "name"], "no column 'name'"),
        (["dedup", "{d}/empty.csv"], "empty"),
        (["search", "{d}/no-index", "query"], "no such index folder"),
        (["search", "{d}/idx8", "query"], "dimension"),
        (["match", "{d}/catalog.csv", "{d}/offers.parquet"], "no column 'id'"),
        (["dedup", "{d}/offers.txt2"], "cannot tell the format"),
        (["search", "{d}/foreign", "query"], "is not a simsearch index folder"),
        (["search", "{d}", "query"], "it has no meta.json"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, offers, args, message):
    from simsearch import Index

    with open(offers / "empty.csv", "w") as f:
        f.write("id,title\n")
    (offers / "offers.txt2").write_text("x")
    (offers / "foreign").mkdir(exist_ok=True)
    (offers / "foreign" / "meta.json").write_text('{"name": "some other tool"}')
    if not (offers / "idx8").exists():
        # an index folder whose index has another dimension than the encoder
        (offers / "idx8").mkdir()
        index = Index(8)
        index.add(np.random.default_rng(0).random((4, 8), dtype=np.float32))
        index.save(offers / "idx8" / "index.ssi")
        write_table(pa.table({"id": [1, 2, 3, 4], "title": list("abcd")}), offers / "idx8" / "items.parquet")
        (offers / "idx8" / "meta.json").write_text(json.dumps({"format": 1, "dim": 8}))
    code, out, err = run(capsys, *[a.format(d=offers) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simsearch: error:")
    assert message in lines[0]
    assert "Traceback" not in err


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dedup"])
    assert exc.value.code == 2


def test_command_error_is_a_simsearch_error():
    assert issubclass(CommandError, SimsearchError)


# -- the index folder (simsearch.index.folder), without the encoder -----------


def _small_index(n: int = 20, dim: int = 8) -> tuple[Index, np.ndarray]:
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    index = Index(dim, metric="ip", ef=32)
    index.add(vectors)
    return index, vectors


def _items(n: int) -> pa.Table:
    return pa.table({"id": [f"item-{i}" for i in range(n)], "title": [f"title {i}" for i in range(n)]})


def test_folder_round_trip(tmp_path):
    index, vectors = _small_index()
    index_folder.write_folder(tmp_path / "f", index, _items(20), {"model": "m", "precision": "int8"})
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    assert meta == {"model": "m", "precision": "int8", "format": 1, "dim": 8, "count": 20, "metric": "ip", "ef": 32}
    assert sorted(os.listdir(tmp_path)) == ["f"]
    loaded, items, read = index_folder.open_folder(tmp_path / "f")
    assert read == meta and loaded.ef == 32 and items.equals(_items(20))
    np.testing.assert_array_equal(loaded.search(vectors, k=3)[0], index.search(vectors, k=3)[0])


def test_folder_rewrite_replaces_the_whole_folder(tmp_path):
    index, _ = _small_index()
    index_folder.write_folder(tmp_path / "f", index, _items(20), {})
    (tmp_path / "f" / "wal.log").write_bytes(b"a log of the old index")
    smaller, _ = _small_index(5)
    index_folder.write_folder(tmp_path / "f", smaller, _items(5), {})
    assert sorted(os.listdir(tmp_path / "f")) == ["index.ssi", "items.parquet", "meta.json"]
    assert len(index_folder.open_folder(tmp_path / "f")[0]) == 5


def test_folder_write_refuses_to_replace_another_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    index, _ = _small_index()
    with pytest.raises(FileExistsError, match="not an index folder"):
        index_folder.write_folder(tmp_path / "mine", index, _items(20), {})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_snapshot_replaces_files_by_rename(tmp_path):
    index, vectors = _small_index()
    folder = tmp_path / "f"
    index_folder.write_folder(folder, index, _items(20), {"model": "m"})
    mapped = Index.load(folder / "index.ssi", mmap=True)
    expected = mapped.search(vectors, k=3)
    before = (folder / "index.ssi").stat().st_ino
    index.add(vectors[:2] * 2)
    ids = [f"item-{i}" for i in range(22)]
    index_folder.write_snapshot(folder, index, ids, [f"t{i}" for i in range(22)], {"model": "m", "version": 3})
    assert (folder / "index.ssi").stat().st_ino != before  # a new file, not the mapped one rewritten
    for got, want in zip(mapped.search(vectors, k=3), expected):  # the old mapping still reads
        np.testing.assert_array_equal(got, want)
    reopened, reids, _, meta = index_folder.read_folder(folder)
    assert len(reopened) == 22 and reids == ids and (meta["count"], meta["version"]) == (22, 3)


def test_folders_written_by_older_code_open(tmp_path):
    # meta.json as 'simsearch index build' wrote it before the folder recorded ef: the index file's own ef applies
    index, _ = _small_index()
    folder = tmp_path / "old"
    folder.mkdir()
    index.save(folder / "index.ssi")
    write_table(pa.table({"id": list(range(20)), "title": list("abcdefghijklmnopqrst")}), folder / "items.parquet")
    meta = {"format": 1, "model": "m", "model_path": None, "precision": "int8", "fingerprint": "f", "dim": 8, "count": 20, "metric": "ip"}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    loaded, items, read = index_folder.open_folder(folder)
    assert read == meta and len(loaded) == 20 and loaded.ef == index.ef and items.num_rows == 20


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda f: (f / "meta.json").unlink(), CorruptFileError, "it has no meta.json"),
        (lambda f: (f / "meta.json").write_text("{not json"), CorruptFileError, "not valid JSON"),
        (lambda f: (f / "meta.json").write_text("[1, 2]"), CorruptFileError, "not a JSON object"),
        (lambda f: (f / "meta.json").write_text('{"name": "x"}'), CorruptFileError, "has no 'format' field"),
        (lambda f: _edit_meta(f, format="1"), CorruptFileError, "no valid format"),
        (lambda f: _edit_meta(f, format=2), FormatVersionError, "newer simsearch"),
        (lambda f: _edit_meta(f, index="../elsewhere"), CorruptFileError, "unknown index '../elsewhere'"),
        (lambda f: _edit_meta(f, ef=-3), CorruptFileError, "bad 'ef'"),
        (lambda f: _edit_meta(f, attributes=["a"]), CorruptFileError, "malformed 'attributes'"),
        (lambda f: (f / "items.parquet").write_text("id,title\n"), CorruptFileError, "not a Parquet table"),
        (lambda f: pq.write_table(pa.table({"id": [1]}), f / "items.parquet"), CorruptFileError, "'title'"),
        (lambda f: pq.write_table(_items(3), f / "items.parquet"), CorruptFileError, "has 3 rows"),
        (lambda f: (f / "items.parquet").unlink(), CorruptFileError, "no items.parquet"),
        (lambda f: _edit_meta(f, index="sharded"), ValueError, "holds a sharded index"),
    ],
)
def test_corrupt_or_foreign_folders_are_refused(tmp_path, damage, error, message):
    index, _ = _small_index()
    folder = tmp_path / "f"
    index_folder.write_folder(folder, index, _items(20), {})
    damage(folder)
    with pytest.raises(error, match=message):
        index_folder.read_folder(folder)


def _edit_meta(folder, **fields):
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, **fields}))
