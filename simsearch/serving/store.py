"""Durable writes of a served index folder: the write-ahead log.

The folder itself (``index.ssi``, ``items.parquet``, ``meta.json``: what
``simsearch index build`` writes) is :mod:`simsearch.index.folder`; its reader
and snapshot writer are re-exported here for the service. A service that
changes the index adds ``wal.log``.

Durability is by write-ahead log: every write (an add or a remove) is appended
to ``wal.log`` as one framed, checksummed record and ``fsync``-ed *before* it
is applied and acknowledged. At start the log is replayed over the snapshot.
A snapshot (:func:`~simsearch.index.folder.write_snapshot`: ``items.parquet``,
then ``index.ssi``, then ``meta.json``, each replaced atomically) is followed
by truncating the log. Replay is idempotent (keys are never reused: an add
whose key is already in the index and a remove whose key is absent are
skipped), so a crash anywhere inside a snapshot still replays to the
acknowledged state.

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
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from simsearch._storage import fsync_dir, fsync_file
from simsearch._validation import NO_ID
from simsearch.errors import CorruptFileError, FormatVersionError
from simsearch.index.folder import (
    INDEX_DIR_FORMAT,
    INDEX_FILE,
    ITEMS_FILE,
    META_FILE,
    read_folder,
    read_meta,
    write_snapshot,
)

__all__ = [
    "INDEX_DIR_FORMAT",
    "INDEX_FILE",
    "ITEMS_FILE",
    "META_FILE",
    "WAL_FILE",
    "read_folder",
    "read_meta",
    "write_snapshot",
    "WriteAheadLog",
]

WAL_FILE = "wal.log"

WAL_MAGIC = b"SSWAL001"
WAL_VERSION = 1
_FILE_HEADER = struct.Struct("<8sI4x")
_RECORD_HEADER = struct.Struct("<4sIQI4x")
_RECORD_MAGIC = b"SWR1"


def _parse_record(body: bytes, json_len: int, path: Path, number: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """Decode one record whose CRC matched; a record that is not what :meth:`WriteAheadLog.append` writes is corrupt.

    A CRC-32 anyone can recompute guards against torn writes, not against a
    crafted log: the record's shape is checked before the catalog applies it.
    """
    where = f"record {number + 1} of the write-ahead log {os.fspath(path)!r}"
    try:
        record = json.loads(body[:json_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CorruptFileError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(record, dict) or record.get("op") not in ("add", "remove"):
        raise CorruptFileError(f"{where} is not an add or remove record")
    keys = record.get("keys")
    if not isinstance(keys, list) or not keys or not all(
        isinstance(k, int) and not isinstance(k, bool) and 0 <= k < NO_ID for k in keys
    ):
        raise CorruptFileError(f"{where} has no list of index keys (non-negative integers below 2**64-1)")
    if not isinstance(record.get("version", 0), int) or isinstance(record.get("version"), bool):
        raise CorruptFileError(f"{where} has a non-integer version")
    vectors = None
    vec_len = len(body) - json_len
    if record["op"] == "add":
        ids, titles = record.get("ids"), record.get("titles")
        if not isinstance(ids, list) or not isinstance(titles, list) or not len(ids) == len(titles) == len(keys):
            raise CorruptFileError(f"{where} is an add whose ids and titles do not match its {len(keys)} keys")
        if not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids) or not all(
            t is None or isinstance(t, str) for t in titles
        ):
            raise CorruptFileError(f"{where} has ids that are not strings or integers, or titles that are not strings")
        if vec_len == 0 or vec_len % (4 * len(keys)):
            raise CorruptFileError(f"{where} carries {vec_len} bytes of vectors for {len(keys)} keys")
        vectors = np.frombuffer(body[json_len:], dtype="<f4").reshape(len(keys), -1).astype(np.float32)
    elif vec_len:
        raise CorruptFileError(f"{where} is a remove that carries vectors")
    return record, vectors


class WriteAheadLog:
    """Append-only log of writes, each record fsync-ed before :meth:`append` returns.

    Parameters
    ----------
    path : path-like
        The log file; created (with its header) if absent.

    Raises
    ------
    CorruptFileError
        If the file exists but is not a simsearch write-ahead log.
    FormatVersionError
        If it is of a newer format.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "wb") as f:
                f.write(_FILE_HEADER.pack(WAL_MAGIC, WAL_VERSION))
                fsync_file(f)
            fsync_dir(self.path.parent)
        self._file = open(self.path, "rb+")
        head = self._file.read(_FILE_HEADER.size)
        if len(head) < _FILE_HEADER.size or head[:8] != WAL_MAGIC:
            self._file.close()
            raise CorruptFileError(f"{os.fspath(path)!r} is not a simsearch write-ahead log (bad magic)")
        version = _FILE_HEADER.unpack(head)[1]
        if version > WAL_VERSION:
            self._file.close()
            raise FormatVersionError(f"{os.fspath(path)!r} has log format {version}; this simsearch reads up to {WAL_VERSION}")
        self.records = 0

    def replay(self) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
        """Yield ``(record, vectors)`` for each intact record, then truncate a torn tail.

        Call once, before the first :meth:`append`.
        """
        f = self._file
        size = os.fstat(f.fileno()).st_size
        f.seek(_FILE_HEADER.size)
        good = f.tell()
        while True:
            head = f.read(_RECORD_HEADER.size)
            if len(head) < _RECORD_HEADER.size:
                break
            magic, json_len, vec_len, crc = _RECORD_HEADER.unpack(head)
            if magic != _RECORD_MAGIC or json_len + vec_len > size - f.tell():
                break  # a record longer than what is left of the file is torn, whatever its header says
            body = f.read(json_len + vec_len)
            if len(body) < json_len + vec_len or zlib.crc32(body) != crc:
                break
            record, vectors = _parse_record(body, json_len, self.path, self.records)
            good = f.tell()
            self.records += 1
            yield record, vectors
        # Only the last record can be torn (records are appended one at a
        # time and fsync-ed); drop it so new records follow intact ones.
        f.seek(0, os.SEEK_END)
        if f.tell() != good:
            f.truncate(good)
            fsync_file(f)
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
        fsync_file(f)
        self.records += 1

    def truncate(self) -> None:
        """Drop every record (after a snapshot holds them)."""
        f = self._file
        f.truncate(_FILE_HEADER.size)
        fsync_file(f)
        self.records = 0

    def close(self) -> None:
        """Close the file."""
        self._file.close()
