"""Durable state of a served index folder: snapshot files plus a write-ahead log.

The folder is the one ``simsearch index build`` writes: ``index.ssi`` (the
native index), ``items.parquet`` (row ``i`` holds the id and title of index
key ``i``) and ``meta.json``. A service that changes the index adds
``wal.log``.

Durability is by write-ahead log: every write (an add or a remove) is appended
to ``wal.log`` as one framed, checksummed record and ``fsync``-ed *before* it
is applied and acknowledged. At start the log is replayed over the snapshot.
A snapshot (``items.parquet``, then ``index.ssi``, then ``meta.json``, each
written atomically: temp file, fsync, rename, directory fsync) is followed by
truncating the log. Replay is idempotent (keys are never reused: an add whose
key is already in the index and a remove whose key is absent are skipped), so
a crash anywhere inside a snapshot still replays to the acknowledged state.

``wal.log`` layout, integers little-endian::

    file header   8 bytes magic b"SSWAL001", uint32 format version, 4 bytes zero
    record        4 bytes magic b"SWR1", uint32 json_length, uint64 vector_bytes,
                  uint32 CRC-32 of (json bytes + vector bytes), 4 bytes zero,
                  json (UTF-8), float32 vectors (row-major)

A record cut short by a crash (only the last one can be) fails its length or
checksum test; replay stops there and the torn tail is truncated. Nothing in
the folder is pickled.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Layout version of the folder (that of ``simsearch index build``).
INDEX_DIR_FORMAT = 1
INDEX_FILE = "index.ssi"
ITEMS_FILE = "items.parquet"
META_FILE = "meta.json"
WAL_FILE = "wal.log"

WAL_MAGIC = b"SSWAL001"
WAL_VERSION = 1
_FILE_HEADER = struct.Struct("<8sI4x")
_RECORD_HEADER = struct.Struct("<4sIQI4x")
_RECORD_MAGIC = b"SWR1"


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a directory so that a rename inside it survives a crash."""
    fd = os.open(os.fspath(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(tmp_path)``, then fsync and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that ``path`` is a one-file index folder this simsearch can read; returns its ``meta.json``.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    ValueError
        If it has no ``meta.json``, is of a newer format, or holds a sharded index.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such index folder: {os.fspath(path)!r} (make one with: simsearch index build ITEMS --out DIR)")
    meta_file = folder / META_FILE
    if not meta_file.exists():
        raise ValueError(f"{os.fspath(path)!r} is not a simsearch index folder: it has no {META_FILE}")
    meta = json.loads(meta_file.read_text())
    if meta.get("format", 0) > INDEX_DIR_FORMAT:
        raise ValueError(f"{os.fspath(path)!r} was written by a newer simsearch (format {meta['format']}); upgrade simsearch")
    if meta.get("index", INDEX_FILE) != INDEX_FILE:
        raise ValueError(
            f"{os.fspath(path)!r} holds a sharded index ({meta['index']!r}); the service serves one-file index folders "
            "(build one without --engine ray)"
        )
    return meta


def read_folder(path: str | os.PathLike[str]) -> tuple[Any, list[Any], list[str | None], dict[str, Any]]:
    """Open an index folder's snapshot (without the log).

    Returns
    -------
    index : Index
    ids, titles : list
        Row ``i`` describes index key ``i``.
    meta : dict
        ``meta.json``.

    Raises
    ------
    FileNotFoundError
        If the folder or one of its files is missing.
    ValueError
        As :func:`read_meta`, or if the items table does not cover the index's keys.
    """
    from simsearch.index import Index

    meta = read_meta(path)
    folder = Path(path)
    index = Index.load(folder / INDEX_FILE)
    table = pq.read_table(folder / ITEMS_FILE, columns=["id", "title"])
    ids = table.column("id").to_pylist()
    titles = table.column("title").to_pylist()
    if len(index) and int(index.ids().max()) >= len(ids):
        raise ValueError(f"{ITEMS_FILE} has {len(ids)} rows but the index holds key {int(index.ids().max())}")
    return index, ids, titles, meta


def write_snapshot(folder: Path, index: Any, ids: list[Any], titles: list[str | None], meta: dict[str, Any]) -> None:
    """Write items, index and meta atomically, in that order (see the module notes)."""
    id_type = pa.string() if ids and isinstance(ids[0], str) else pa.int64()
    table = pa.table({"id": pa.array(ids, type=id_type), "title": pa.array(titles, type=pa.string())})
    write_atomic(folder / ITEMS_FILE, lambda tmp: pq.write_table(table, tmp))
    index.save(folder / INDEX_FILE)
    text = json.dumps(meta, indent=2) + "\n"
    write_atomic(folder / META_FILE, lambda tmp: Path(tmp).write_text(text))


class WriteAheadLog:
    """Append-only log of writes, each record fsync-ed before :meth:`append` returns.

    Parameters
    ----------
    path : path-like
        The log file; created (with its header) if absent.

    Raises
    ------
    ValueError
        If the file exists but is not a simsearch write-ahead log, or is of a
        newer format.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "wb") as f:
                f.write(_FILE_HEADER.pack(WAL_MAGIC, WAL_VERSION))
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.path.parent)
        self._file = open(self.path, "rb+")
        head = self._file.read(_FILE_HEADER.size)
        if len(head) < _FILE_HEADER.size or head[:8] != WAL_MAGIC:
            self._file.close()
            raise ValueError(f"{os.fspath(path)!r} is not a simsearch write-ahead log (bad magic)")
        version = _FILE_HEADER.unpack(head)[1]
        if version > WAL_VERSION:
            self._file.close()
            raise ValueError(f"{os.fspath(path)!r} has log format {version}; this simsearch reads up to {WAL_VERSION}")
        self.records = 0

    def replay(self) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
        """Yield ``(record, vectors)`` for each intact record, then truncate a torn tail.

        Call once, before the first :meth:`append`.
        """
        f = self._file
        f.seek(_FILE_HEADER.size)
        good = f.tell()
        while True:
            head = f.read(_RECORD_HEADER.size)
            if len(head) < _RECORD_HEADER.size:
                break
            magic, json_len, vec_len, crc = _RECORD_HEADER.unpack(head)
            if magic != _RECORD_MAGIC:
                break
            body = f.read(json_len + vec_len)
            if len(body) < json_len + vec_len or zlib.crc32(body) != crc:
                break
            record = json.loads(body[:json_len].decode("utf-8"))
            vectors = None
            if vec_len:
                n = len(record["keys"])
                vectors = np.frombuffer(body[json_len:], dtype="<f4").reshape(n, -1).astype(np.float32)
            good = f.tell()
            self.records += 1
            yield record, vectors
        # Only the last record can be torn (records are appended one at a
        # time and fsync-ed); drop it so new records follow intact ones.
        f.seek(0, os.SEEK_END)
        if f.tell() != good:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        f.seek(good)

    def append(self, record: dict[str, Any], vectors: np.ndarray | None = None) -> None:
        """Append one record and fsync it.

        Parameters
        ----------
        record : dict
            JSON-serialisable description of the write.
        vectors : ndarray of shape (n, dim), float32, optional
            Vectors of an add, one row per key.
        """
        payload = json.dumps(record, separators=(",", ":")).encode("utf-8")
        blob = b"" if vectors is None else np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        crc = zlib.crc32(blob, zlib.crc32(payload))
        f = self._file
        f.seek(0, os.SEEK_END)
        f.write(_RECORD_HEADER.pack(_RECORD_MAGIC, len(payload), len(blob), crc) + payload + blob)
        f.flush()
        os.fsync(f.fileno())
        self.records += 1

    def truncate(self) -> None:
        """Drop every record (after a snapshot holds them)."""
        f = self._file
        f.truncate(_FILE_HEADER.size)
        f.flush()
        os.fsync(f.fileno())
        self.records = 0

    def close(self) -> None:
        """Close the file."""
        self._file.close()
