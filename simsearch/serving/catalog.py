"""The served items: an index, each key's id and title, and the write path that keeps them durable.

A :class:`~simsearch.serving.Service` answers with catalog ids and titles,
while its index holds row numbers ("keys"): key ``i`` is row ``i`` of an
index folder's ``items.parquet``. :class:`Catalog` keeps the two in step,
applies adds and removes, and for a folder logs each write to the
write-ahead log (:mod:`simsearch.serving.store`) before applying it, folds
the log into the folder's files every ``snapshot_every`` writes, and
replays it when the folder is opened again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simsearch._validation import check_positive_int
from simsearch.errors import ClosedError, DuplicateIdError, UnknownIdError
from simsearch.serving import store
from simsearch.serving.results import Hit, WriteResult


class Catalog:
    """An index and the id and title of each of its keys, changed one logged write at a time.

    Thread-safe: writes take one lock, so the log's order is the order they
    are applied in; reads (:meth:`hit`) see a key's id and title before the
    key reaches the index.

    Parameters
    ----------
    index : Index
        Its keys are the catalog's row numbers.
    ids, titles : sequence, optional
        Row ``i`` is the id and title of index key ``i``. By default the
        index's own keys are the ids and items have no title.
    path : path-like or None, default=None
        The index folder that :meth:`open_log` and :meth:`save` use.
    version : int, default=0
        Count of writes the folder has applied since it was built.
    snapshot_every : int, default=1000
        Logged writes after which :meth:`save` runs by itself.
    meta : dict or None, default=None
        The folder's ``meta.json``, written back by :meth:`save`.

    Attributes
    ----------
    index : Index
    path : Path or None
    version : int
        Raised by one with every write.
    snapshot_every : int
    meta : dict
        Written back into ``meta.json`` by :meth:`save` (with the count and version updated).
    """

    def __init__(
        self,
        index: Any,
        ids: Sequence[Any] | None = None,
        titles: Sequence[str | None] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        version: int = 0,
        snapshot_every: int = 1000,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.index = index
        self.path = Path(path) if path is not None else None
        self.version = int(version)
        self.snapshot_every = check_positive_int(snapshot_every, "snapshot_every")
        self.meta: dict[str, Any] = dict(meta or {})
        keys = index.ids() if len(index) else np.empty(0, dtype=np.uint64)
        if ids is None:
            self._ids: dict[int, Any] = {int(k): int(k) for k in keys}
            self._titles: dict[int, str | None] = {}
        else:
            ids = list(ids)
            titles = list(titles) if titles is not None else [None] * len(ids)
            if len(titles) != len(ids):
                raise ValueError(f"got {len(ids)} ids and {len(titles)} titles")
            self._ids = dict(enumerate(ids))
            self._titles = dict(enumerate(titles))
        self._key_of: dict[Any, int] = {self._ids[int(k)]: int(k) for k in keys}
        self._next_key = max(self._ids, default=-1) + 1
        self._id_kind = _id_kind(self._ids.values())
        self._lock = threading.Lock()
        self._wal: store.WriteAheadLog | None = None
        self._replaying = False
        self._closed = False

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, item_id: Any) -> bool:
        return item_id in self._key_of

    def hit(self, key: int, score: float) -> Hit:
        """The :class:`Hit` of index key ``key`` with ``score``."""
        return Hit(self._ids[key], self._titles.get(key), score)

    def rows(self) -> tuple[list[Any], list[str | None]]:
        """Ids and titles of keys ``0..n-1`` (``None`` for removed keys): the rows of ``items.parquet``."""
        n = self._next_key
        return [self._ids.get(k) for k in range(n)], [self._titles.get(k) for k in range(n)]

    def check_ids(self, ids: Iterable[Any]) -> list[Any]:
        """Return new ids as a list, checked against the catalog's id type and each other.

        Raises
        ------
        TypeError, ValueError
            An id of the wrong type (the catalog holds ints or strs), or out of range.
        DuplicateIdError
            If an id repeats (a ``ValueError``).
        """
        ids = list(ids)
        for i, item_id in enumerate(ids):
            _check_id(item_id, self._id_kind, f"ids[{i}]")
        if len(set(ids)) != len(ids):
            raise DuplicateIdError("ids repeats an id")
        return ids

    # ----------------------------------------------------------------- folder
    def open_log(self) -> None:
        """Open the folder's write-ahead log and apply the writes it holds over the snapshot.

        If replay fails the catalog is closed, so that a half-replayed state
        is never saved over the log.
        """
        if self.path is None:
            raise ValueError("this catalog has no index folder; give path=")
        self._replaying = True
        try:
            self._wal = store.WriteAheadLog(self.path / store.WAL_FILE)
            for record, vectors in self._wal.replay():
                self._apply(record, vectors)
        except BaseException:
            self._closed = True
            if self._wal is not None:
                self._wal.close()
            raise
        finally:
            self._replaying = False

    def save(self) -> None:
        """Fold the logged writes into the folder's files and empty the log.

        Raises
        ------
        ValueError
            If the catalog has no folder or no open log.
        """
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        if self.path is None or self._wal is None:
            raise ValueError("this service has no index folder to save to; use Service.open(path)")
        ids, titles = self.rows()
        meta = dict(self.meta)
        meta.update(format=store.INDEX_DIR_FORMAT, count=len(self.index), version=self.version)
        store.write_snapshot(self.path, self.index, ids, titles, meta)
        self._wal.truncate()

    def close(self) -> None:
        """Refuse further writes, save the logged ones into the folder, and close the log."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._wal is not None:
                if self._wal.records:
                    self._save_locked()
                self._wal.close()

    # ----------------------------------------------------------------- writes
    def add(self, ids: list[Any], titles: list[str], vectors: np.ndarray) -> WriteResult:
        """Add items with unit ``vectors`` of shape (len(ids), dim), float32; logged before applied.

        ``ids`` come from :meth:`check_ids`.

        Raises
        ------
        DuplicateIdError
            If an id is already in the catalog (nothing is added then).
        ClosedError
            If the catalog is closed.
        """
        if not ids:
            return WriteResult(0, self.version)
        with self._lock:
            self._check_open()
            present = [i for i in ids if i in self._key_of]
            if present:
                raise DuplicateIdError(f"id {present[0]!r} is already in the index")
            keys = list(range(self._next_key, self._next_key + len(ids)))
            record = {"op": "add", "keys": keys, "ids": ids, "titles": titles, "version": self.version + 1}
            self._write(record, vectors)
            return WriteResult(len(ids), self.version)

    def remove(self, ids: Sequence[Any]) -> WriteResult:
        """Remove items by id; logged before applied.

        Raises
        ------
        UnknownIdError
            If an id is not in the catalog (a ``KeyError``; nothing is removed then).
        ClosedError
            If the catalog is closed.
        """
        ids = list(ids)
        if not ids:
            return WriteResult(0, self.version)
        with self._lock:
            self._check_open()
            unknown = [i for i in ids if i not in self._key_of]
            if unknown:
                more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
                raise UnknownIdError(f"unknown id {unknown[0]!r}{more}")
            keys = sorted({self._key_of[i] for i in ids})
            record = {"op": "remove", "keys": keys, "version": self.version + 1}
            self._write(record, None)
            return WriteResult(len(keys), self.version)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the service is closed")

    def _write(self, record: dict[str, Any], vectors: np.ndarray | None) -> None:
        if self._wal is not None:
            self._wal.append(record, vectors)
        self._apply(record, vectors)

    def _apply(self, record: dict[str, Any], vectors: np.ndarray | None) -> None:
        """Apply a logged write; idempotent, so replaying it over a newer snapshot is harmless."""
        keys = np.asarray(record["keys"], dtype=np.uint64)
        if record["op"] == "add":
            for key, item_id, title in zip(record["keys"], record["ids"], record["titles"]):
                # Names first: a search that finds the key must find its id.
                self._ids[key], self._titles[key] = item_id, title
                self._key_of[item_id] = key
            new = ~self.index.contains(keys)
            if new.any():
                self.index.add(vectors[new], ids=keys[new])
            self._next_key = max(self._next_key, int(keys.max()) + 1)
        elif record["op"] == "remove":
            present = self.index.contains(keys)
            if present.any():
                self.index.remove(keys[present])
            for key in record["keys"]:
                self._key_of.pop(self._ids.get(key), None)
        else:
            raise ValueError(f"unknown write-ahead log record {record['op']!r}")
        # The record names the version it makes; max() keeps a replay over a
        # snapshot that already counted it from counting it twice.
        self.version = max(self.version, int(record.get("version", self.version + 1)))
        if self._wal is not None and self._wal.records >= self.snapshot_every and not self._replaying:
            self._save_locked()


def _id_kind(ids: Iterable[Any]) -> str | None:
    for item_id in ids:
        return "str" if isinstance(item_id, str) else "int"
    return None


def _check_id(item_id: Any, kind: str | None, name: str) -> None:
    if kind == "str" or (kind is None and isinstance(item_id, str)):
        if not isinstance(item_id, str) or not item_id:
            raise TypeError(f"{name} must be a non-empty str (the catalog's ids are strings), got {item_id!r}")
        return
    if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
        raise TypeError(f"{name} must be an int (the catalog's ids are integers), got {item_id!r}")
    if not -(2**63) <= int(item_id) < 2**63:
        raise ValueError(f"{name} = {item_id} does not fit in a signed 64-bit integer")
