"""Damaged folders and exhausted ids are refused with the library's typed errors, not builtin ones.

Each case below was found by ``benchmarks/reliability.py`` raising a builtin
(``IndexError``, ``UnicodeDecodeError``, ``OSError``, ``FileNotFoundError``,
``safetensors.SafetensorError``, a plain ``ValueError``) or nothing at all:
a folder whose checksums were recomputed after the damage ("resealed") gets
past the checksum and must still be refused by name.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import _faults
import numpy as np
import pytest

import simsearch
from simsearch.errors import CorruptFileError, IdsExhaustedError, MissingFileError, ModelMismatchError, SimsearchError
from simsearch.serving import Service, store


# ------------------------------------------------------------- automatic ids


def test_automatic_ids_at_the_top_of_the_range_raise_a_typed_error():
    ix = simsearch.Index(4, metric="l2")
    ix.add(np.ones((1, 4), np.float32), ids=[2**64 - 2])  # the largest id a user may give
    with pytest.raises(IdsExhaustedError, match="pass ids explicitly"):
        ix.add(np.ones((1, 4), np.float32))
    assert len(ix) == 1
    ix.add(np.zeros((1, 4), np.float32), ids=[7])  # explicit ids still work
    assert len(ix) == 2


def test_sharded_automatic_ids_at_the_top_of_the_range_raise_a_typed_error():
    ix = simsearch.ShardedIndex(4, n_shards=2, metric="l2")
    ix.add(np.ones((1, 4), np.float32), ids=[2**64 - 2])
    with pytest.raises(IdsExhaustedError):
        ix.add(np.ones((1, 4), np.float32))
    assert len(ix) == 1
    assert issubclass(IdsExhaustedError, ValueError)  # callers catching ValueError keep working


# ------------------------------------------------------- the CLI index folder


@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("cli") / "index"
    facts = _faults.build_cli_folder(dest)
    return dest, facts


def _copy(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(src, dest)
    return dest


def test_a_folder_without_its_index_file_is_a_missing_file_error(cli_folder, tmp_path):
    folder = _copy(cli_folder[0], tmp_path)
    (folder / "index.ssi").unlink()
    with pytest.raises(MissingFileError, match="index.ssi") as err:
        Service.open(folder, _faults.FakeEncoder(cli_folder[1]["dim"], cli_folder[1]["fingerprint"]))
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, CorruptFileError)


def test_serving_an_index_with_another_model_is_a_model_mismatch(cli_folder, tmp_path):
    folder = _copy(cli_folder[0], tmp_path)
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        Service.open(folder, _faults.FakeEncoder(cli_folder[1]["dim"], "0" * 64))


def _rewrite_first_record(folder: Path, edit) -> None:
    """Replace the write-ahead log's first record by ``edit(record_json, vector_bytes)``, CRC recomputed."""
    wal = folder / store.WAL_FILE
    data = bytearray(wal.read_bytes())
    head = struct.Struct("<4sIQI4x")
    start = struct.calcsize("<8sI4x")
    magic, json_len, vec_len, _ = head.unpack_from(data, start)
    body_at = start + head.size
    payload = bytes(data[body_at : body_at + json_len])
    blob = bytes(data[body_at + json_len : body_at + json_len + vec_len])
    payload, blob = edit(payload, blob)
    record = head.pack(magic, len(payload), len(blob), zlib.crc32(blob, zlib.crc32(payload))) + payload + blob
    wal.write_bytes(bytes(data[:start]) + record)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda p, b: (b"\xff\xfe not utf-8", b), "not valid JSON"),
        (lambda p, b: (json.dumps({"op": "add", "keys": "x"}).encode(), b), "index keys"),
        (lambda p, b: (json.dumps({"op": "drop", "keys": [1]}).encode(), b), "add or remove"),
        (lambda p, b: (p.replace(b'"titles":[', b'"titles":[1,'), b), "do not match"),
        (lambda p, b: (p, b[:-3]), "bytes of vectors"),
    ],
    ids=["not-utf8", "keys-not-a-list", "unknown-op", "titles-length", "vector-bytes"],
)
def test_a_crafted_write_ahead_log_record_is_corrupt_and_the_folder_stays(cli_folder, tmp_path, edit, words):
    folder = _copy(cli_folder[0], tmp_path)
    _rewrite_first_record(folder, edit)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(CorruptFileError, match=words):
        Service.open(folder, _faults.FakeEncoder(cli_folder[1]["dim"], cli_folder[1]["fingerprint"]))
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before  # nothing already stored is lost or rewritten


def test_the_intact_write_ahead_log_still_replays(cli_folder, tmp_path):
    folder = _copy(cli_folder[0], tmp_path)
    service = Service.open(folder, _faults.FakeEncoder(cli_folder[1]["dim"], cli_folder[1]["fingerprint"]))
    try:
        assert {990001, 990002, 990003} <= set(service.catalog.rows()[0])
    finally:
        service.close()


# ------------------------------------------------------------- dedup state


@pytest.fixture(scope="module")
def dedup_state(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("dedup") / "state"
    _faults.build_dedup(dest)
    return dest


def test_a_resealed_state_with_damaged_items_table_is_corrupt(dedup_state, tmp_path):
    folder = _copy(dedup_state, tmp_path)
    items = next(folder.rglob("items.parquet"))
    data = bytearray(items.read_bytes())
    data[4:40] = b"\x00" * 36  # the first page's header, past the magic
    items.write_bytes(bytes(data))
    _faults.reseal(folder)
    with pytest.raises(CorruptFileError, match="items.parquet"):
        simsearch.Deduplicator.load(folder, progress=False)


def test_a_state_without_its_items_table_is_refused_by_name(dedup_state, tmp_path):
    folder = _copy(dedup_state, tmp_path)
    next(folder.rglob("items.parquet")).unlink()
    with pytest.raises(SimsearchError, match="items.parquet"):
        simsearch.Deduplicator.load(folder, progress=False)


# ------------------------------------------------------------ saved matcher


@pytest.fixture(scope="module")
def matcher_folder(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("matcher") / "m"
    _faults.build_matcher(dest)
    return dest


def test_a_resealed_matcher_with_an_empty_model_file_is_corrupt(matcher_folder, tmp_path):
    folder = _copy(matcher_folder, tmp_path)
    weights = next((folder / "encoder").rglob("*.safetensors"))
    weights.write_bytes(b"")
    _faults.reseal(folder)
    with pytest.raises(CorruptFileError, match="do not load"):
        simsearch.CatalogMatcher.load(folder, progress=False, num_threads=1)


def test_a_bad_num_threads_is_the_callers_error_not_the_folders(matcher_folder):
    with pytest.raises(ValueError) as err:
        simsearch.CatalogMatcher.load(matcher_folder, progress=False, num_threads=0)
    assert not isinstance(err.value, CorruptFileError)


def test_a_resealed_matcher_whose_catalog_table_lost_rows_is_corrupt(matcher_folder, tmp_path):
    import pyarrow.parquet as pq

    folder = _copy(matcher_folder, tmp_path)
    table = pq.read_table(folder / "catalog.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), folder / "catalog.parquet")
    _faults.reseal(folder)
    with pytest.raises(CorruptFileError, match="catalog table has"):
        simsearch.CatalogMatcher.load(folder, progress=False, num_threads=1)


# ---------------------------------------------------------- sharded manifest


@pytest.mark.parametrize("seed", [None, "0", 1.5, True])
def test_a_sharded_manifest_with_a_non_integer_seed_is_corrupt(tmp_path, seed):
    from simsearch.sharding import MANIFEST, ShardedIndex

    ix = ShardedIndex(4, n_shards=2, metric="l2")
    ix.add(np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    ix.save(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    manifest["seed"] = seed
    (tmp_path / "s" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="seed"):
        ShardedIndex.load(tmp_path / "s")


@pytest.mark.parametrize("member", ["state.ssc", "index.ssi"])
def test_a_state_whose_manifest_lost_its_checksums_and_a_member_is_corrupt(dedup_state, tmp_path, member):
    folder = _copy(dedup_state, tmp_path)
    manifest = next(folder.rglob("manifest.json"))
    body = json.loads(manifest.read_text())
    body.pop("checksums", None)
    body.pop("files", None)
    manifest.write_text(json.dumps(body))
    next(folder.rglob(member)).unlink()
    _faults.reseal(folder)
    with pytest.raises(CorruptFileError, match="lists no checksum"):
        simsearch.Deduplicator.load(folder, progress=False)


def test_a_matcher_manifest_that_stopped_listing_a_model_file_is_corrupt(matcher_folder, tmp_path):
    from simsearch.applications.matcher import MANIFEST

    folder = _copy(matcher_folder, tmp_path)
    body = json.loads((folder / MANIFEST).read_text())
    weights = next(name for name in body["checksums"] if name.endswith(".safetensors"))
    del body["checksums"][weights]
    (folder / MANIFEST).write_text(json.dumps(body))
    (folder / weights).write_bytes(b"not weights")
    with pytest.raises(CorruptFileError, match="lists no checksum"):
        simsearch.CatalogMatcher.load(folder, progress=False, num_threads=1)


# ------------------------------------------------ bytes that are not UTF-8


def _invalid_utf8_titles(n: int):
    import pyarrow as pa

    offsets = np.arange(n + 1, dtype=np.int32) * 2
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"\xff\xfe" * n)])


def test_an_items_table_with_non_utf8_titles_is_corrupt(cli_folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = _copy(cli_folder[0], tmp_path)
    table = pq.read_table(folder / "items.parquet")
    bad = table.set_column(table.column_names.index("title"), "title", _invalid_utf8_titles(table.num_rows))
    pq.write_table(bad, folder / "items.parquet")
    assert pa.types.is_string(pq.read_schema(folder / "items.parquet").field("title").type)
    with pytest.raises(CorruptFileError, match="UTF8"):
        Service.open(folder, _faults.FakeEncoder(cli_folder[1]["dim"], cli_folder[1]["fingerprint"]))


def test_sqlite_text_that_is_not_utf8_leaves_the_cache_as_corrupt(tmp_path):
    # Found by the fuzz: a damaged page made SQLite's own error text (read by
    # "PRAGMA journal_mode") non-UTF-8, and the sqlite3 module raised
    # UnicodeDecodeError. The connection guard turns it into the library's error.
    from simsearch import EmbeddingCache

    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(CorruptFileError, match="not UTF-8"):
            with cache._sql():
                b"\xcc\x01".decode("utf-8")
        assert cache.get_many("m", [b"k"]) == [None]  # the guard released its lock


def test_a_log_record_claiming_more_bytes_than_the_file_holds_is_a_torn_tail(cli_folder, tmp_path):
    folder = _copy(cli_folder[0], tmp_path)
    wal = folder / store.WAL_FILE
    data = bytearray(wal.read_bytes())
    at = struct.calcsize("<8sI4x") + 8  # the first record's vector length
    data[at : at + 8] = (2**62).to_bytes(8, "little")
    wal.write_bytes(bytes(data))
    service = Service.open(folder, _faults.FakeEncoder(cli_folder[1]["dim"], cli_folder[1]["fingerprint"]))
    try:  # opened without reading 2**62 bytes; the snapshot's items are all there
        assert len(service.catalog.rows()[0]) >= 301
    finally:
        service.close()


@pytest.mark.parametrize(
    "field, value",
    [("pair_model", [1, 2, 3]), ("pair_model", "/etc/passwd"), ("projection_dim", 2**63), ("projection_dim", True)],
)
def test_a_matcher_manifest_with_a_crafted_parameter_is_corrupt(matcher_folder, tmp_path, field, value):
    from simsearch.applications.matcher import MANIFEST

    folder = _copy(matcher_folder, tmp_path)
    body = json.loads((folder / MANIFEST).read_text())
    if field == "pair_model":
        body["params"]["pair_model"] = value
    else:
        body["params"]["scoring"][field] = value
    (folder / MANIFEST).write_text(json.dumps(body))  # matcher.json carries no checksum of itself
    with pytest.raises(CorruptFileError, match="pair model|projection_dim"):
        simsearch.CatalogMatcher.load(folder, progress=False, num_threads=1)
