"""simsearch._storage: atomic files and folders, manifests, JSON, and the formats that write through it."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from simsearch import _fileio, _storage, _tables
from simsearch.errors import CorruptFileError, FormatVersionError, SimsearchError


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Names in ``folder`` other than ``keep``: temporary files or folders a writer left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# -- atomic files --------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="writer failed"):
        with _storage.atomic_write(target) as f:
            f.write(b"half of the new cont")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old content"
    assert leftovers(tmp_path, {"data.bin"}) == []


def test_atomic_write_replaces_on_success_in_text_mode(tmp_path: Path) -> None:
    target = tmp_path / "note.txt"
    target.write_text("old")
    with _storage.atomic_write(target, "w") as f:
        f.write("néw")
    assert target.read_text(encoding="utf-8") == "néw"
    assert leftovers(tmp_path, {"note.txt"}) == []


def test_concurrent_atomic_writes_always_leave_one_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    size = 1 << 18  # large enough that a torn or interleaved write would show
    payloads = {name: name.encode() * size for name in ("A", "B")}
    errors: list[BaseException] = []
    torn: list[bytes] = []
    done = threading.Event()
    start = threading.Barrier(2)

    def write(name: str) -> None:
        try:
            start.wait()
            for _ in range(40):
                _storage.atomic_write_bytes(target, payloads[name])
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)

    def read() -> None:
        while not done.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                continue  # before the first rename
            if data not in payloads.values():
                torn.append(data[:16])

    writers = [threading.Thread(target=write, args=(name,)) for name in payloads]
    reader = threading.Thread(target=read)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    assert errors == []
    assert torn == [], "a reader saw a partial or mixed file"
    assert target.read_bytes() in payloads.values()
    assert leftovers(tmp_path, {"shared.bin"}) == []


def test_atomic_write_path_removes_its_temporary_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    target.write_bytes(b"old")

    def failing(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _storage.atomic_write_path(target, failing)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path, {"out.parquet"}) == []


# -- atomic folders ------------------------------------------------------------


def test_atomic_dir_replaces_a_folder_and_leaves_no_temporary_folders(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with _storage.atomic_dir(dest) as building:
        assert building.parent == dest.parent and building != dest
        (building / "new.txt").write_text("new")
        (building / "sub").mkdir()
        (building / "sub" / "deep.txt").write_text("deep")
        assert (dest / "old.txt").is_file()  # the old folder is intact until the swap
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt", "sub"]
    assert (dest / "sub" / "deep.txt").read_text() == "deep"
    assert leftovers(tmp_path, {"model"}) == []


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(ValueError, match="build failed"):
        with _storage.atomic_dir(dest) as building:
            (building / "new.txt").write_text("new")
            raise ValueError("build failed")
    assert sorted(p.name for p in dest.iterdir()) == ["old.txt"]
    assert leftovers(tmp_path, {"model"}) == []


def test_atomic_dir_without_replace_refuses_an_existing_folder(tmp_path: Path) -> None:
    dest = tmp_path / "student"
    with _storage.atomic_dir(dest, replace=False) as building:
        (building / "a").write_text("first")
    with pytest.raises(FileExistsError):
        with _storage.atomic_dir(dest, replace=False) as building:
            (building / "a").write_text("second")
    assert (dest / "a").read_text() == "first"
    assert leftovers(tmp_path, {"student"}) == []


# -- manifests -----------------------------------------------------------------


@pytest.fixture()
def manifested(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "vectors.bin").write_bytes(b"\x01\x02\x03" * 100)
    _storage.write_manifest(folder, "manifest.json", format="simsearch-test", version=2, fields={"n": 100}, files=["vectors.bin"])
    return folder


def read(folder: Path, **kwargs) -> dict:
    args = {"format": "simsearch-test", "versions": (1, 2), "what": "test folder", **kwargs}
    return _storage.read_manifest(folder, "manifest.json", **args)


def edit_manifest(folder: Path, **changes) -> None:
    body = json.loads((folder / "manifest.json").read_text())
    body.update(changes)
    (folder / "manifest.json").write_text(json.dumps(body))


def test_manifest_round_trip(manifested: Path) -> None:
    body = read(manifested)
    assert body["format"] == "simsearch-test" and body["format_version"] == 2 and body["n"] == 100
    assert set(body["checksums"]) == {"vectors.bin"}


def test_read_manifest_rejects_another_format(manifested: Path) -> None:
    edit_manifest(manifested, format="someone-else")
    with pytest.raises(CorruptFileError, match="is not a test folder manifest"):
        read(manifested)


@pytest.mark.parametrize("value", [[], {}, None, 7])
def test_read_manifest_rejects_a_format_that_is_not_a_string(manifested: Path, value: object) -> None:
    # found by benchmarks/reliability.py (dedup state, format=[]): a list raised TypeError (unhashable)
    edit_manifest(manifested, format=value)
    with pytest.raises(CorruptFileError, match="is not a test folder manifest"):
        read(manifested, format=("simsearch-test", "other"))


def test_read_manifest_rejects_a_newer_version(manifested: Path) -> None:
    edit_manifest(manifested, format_version=3)
    with pytest.raises(FormatVersionError, match="format_version 3.*newer simsearch"):
        read(manifested)


def test_read_manifest_rejects_a_damaged_member(manifested: Path) -> None:
    data = bytearray((manifested / "vectors.bin").read_bytes())
    data[10] ^= 0xFF
    (manifested / "vectors.bin").write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="does not match its checksum"):
        read(manifested)
    read(manifested, verify=False)  # the caller may skip the hash, not the other checks


def test_read_manifest_rejects_a_member_outside_the_folder(manifested: Path) -> None:
    (manifested.parent / "secret.bin").write_bytes(b"outside")
    digest = _storage.sha256_file(manifested.parent / "secret.bin")
    edit_manifest(manifested, checksums={"../secret.bin": digest})
    with pytest.raises(CorruptFileError, match="names a file outside it"):
        read(manifested)


def test_read_manifest_rejects_a_missing_member(manifested: Path) -> None:
    (manifested / "vectors.bin").unlink()
    with pytest.raises(CorruptFileError, match="which is missing"):
        read(manifested)


# -- JSON ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\xff\xfe{\x00}\x00", "not valid JSON"),  # UTF-16, not UTF-8
        (b'{"a": "caf\xe9"}', "not valid JSON"),  # Latin-1 bytes
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"just a string"', "not a JSON object"),
        (b'{"a": 1', "not valid JSON"),
    ],
)
def test_read_json_rejects_what_is_not_a_utf8_json_object(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "meta.json"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=match):
        _storage.read_json(path, "the test metadata")


def test_write_json_then_read_json(tmp_path: Path) -> None:
    _storage.write_json(tmp_path / "meta.json", {"name": "café", "n": [1, 2]})
    assert _storage.read_json(tmp_path / "meta.json", "the test metadata") == {"name": "café", "n": [1, 2]}


# -- formats that write through _storage ---------------------------------------


def test_write_table_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    target = tmp_path / "items.parquet"
    _tables.write_table(pa.table({"id": [1, 2]}), target)

    def torn_write(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", torn_write)
    with pytest.raises(OSError, match="disk full"):
        _tables.write_table(pa.table({"id": [3]}), target)
    monkeypatch.undo()
    assert pq.read_table(target).column("id").to_pylist() == [1, 2]
    assert leftovers(tmp_path, {"items.parquet"}) == []


def test_container_errors_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "index.bin"
    _fileio.write_container(path, {"backend": "test"}, {"x": np.arange(6, dtype=np.float32)})
    assert leftovers(tmp_path, {"index.bin"}) == []
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptFileError, match="section 'x' checksum mismatch"):
        _fileio.read_container(path)
    (tmp_path / "foreign.bin").write_bytes(b"NOTOURS!" + bytes(64))
    with pytest.raises(CorruptFileError, match="not a simsearch index file"):
        _fileio.read_header(tmp_path / "foreign.bin")
    assert issubclass(CorruptFileError, ValueError) and issubclass(CorruptFileError, SimsearchError)


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simsearch.cache import EmbeddingCache

    monkeypatch.setenv("SIMSEARCH_CACHE", os.fspath(tmp_path / "cache"))
    assert _storage.cache_dir() == tmp_path / "cache"
    with EmbeddingCache() as cache:
        assert Path(cache.path) == tmp_path / "cache" / "embeddings.sqlite"


def test_recover_dir_restores_a_folder_a_crash_left_aside(tmp_path: Path) -> None:
    dest = tmp_path / "index"
    old = tmp_path / ".index.old-abc123"  # what the two-rename swap leaves between its renames
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    _storage.recover_dir(dest)
    assert (dest / "manifest.json").read_text() == "{}"
    assert not old.exists()
    _storage.recover_dir(dest)  # nothing left to do
    assert dest.is_dir()


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_dir_with_and_without_renameat2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(_storage, "_renameat2", False)
    dest, new = tmp_path / "d", tmp_path / "new"
    dest.mkdir()
    (dest / "x").write_text("old")
    new.mkdir()
    (new / "x").write_text("new")
    _storage.swap_dir(new, dest)
    assert (dest / "x").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_sha256_memo_follows_the_file_not_its_name(tmp_path):
    import hashlib
    import os

    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 1000)
    first = _storage.sha256_file(a)
    assert first == hashlib.sha256(b"x" * 1000).hexdigest()
    os.link(a, tmp_path / "b.bin")  # the same file under another name: the same digest
    assert _storage.sha256_file(tmp_path / "b.bin") == first
    # Rewritten in place with the same size and its mtime set back: ctime moved, so it is hashed again.
    st = a.stat()
    with open(a, "r+b") as f:
        f.write(b"y")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _storage.sha256_file(a) == hashlib.sha256(b"y" + b"x" * 999).hexdigest()
