"""Index backends built on other libraries: hnswlib (float32) and faiss (HNSW-SQ8).

:class:`simsearch.Index` validates the user's input, assigns ids, normalizes
vectors for cosine and hands the raw work to a backend. Every backend has the
same small interface, so ``Index(..., backend="hnswlib")`` or
``backend="faiss"`` answers like the native int8 index and the benchmark
compares like for like:

- ``add(vectors, ids, num_threads)``: float32 ``(n, dim)`` C-contiguous
  (unit norm for cosine), uint64 ids that are unique, new and not ``2**64-1``;
- ``search(queries, k, ef, num_threads) -> (ids, scores)``: uint64 and float32
  ``(n, k)``, best first; inner product for ``cosine``/``ip`` (higher first),
  squared L2 for ``l2`` (lower first); missing results are id ``2**64-1``
  with score NaN; removed ids never come back;
- ``remove(ids)``, ``len()``, ``contains(ids)``, ``get_vectors(ids)``,
  ``memory_bytes()``, ``save(path)`` and ``load(path, mmap)``.

Inputs are trusted: the checks live in the facade, in one place.

Both backends save into the container of :mod:`simsearch._fileio`
(magic ``b"SIMSPY01"``, JSON header, CRC-32 per section, atomic rename).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, ClassVar

import numpy as np

from simsearch import _fileio

#: Id used to pad result rows that have fewer than ``k`` hits.
MISSING_ID = np.uint64(2**64 - 1)

_METRICS = ("cosine", "ip", "l2")


def _padded(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), MISSING_ID, dtype=np.uint64), np.full((n, k), np.nan, dtype=np.float32)


class _IdTable:
    """Sorted uint64 keys with int64 values: a compact map from ids to slots.

    A Python dict of a million ids costs about 100 bytes each; two sorted
    arrays cost 16 and answer a batch lookup with one ``searchsorted``. Inserts
    and deletes rewrite the arrays (O(n) per call), which suits batch calls.
    """

    def __init__(
        self, keys: np.ndarray | None = None, values: np.ndarray | None = None
    ) -> None:
        self.keys = np.empty(0, np.uint64) if keys is None else np.asarray(keys, np.uint64)
        if values is None:
            self.values = np.zeros(self.keys.size, np.int64)
        else:
            self.values = np.asarray(values, np.int64)
        order = np.argsort(self.keys, kind="stable")
        self.keys, self.values = self.keys[order], self.values[order]

    def __len__(self) -> int:
        return int(self.keys.size)

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.keys, ids)
        inside = pos < self.keys.size
        found = np.zeros(ids.shape, dtype=bool)
        found[inside] = self.keys[pos[inside]] == ids[inside]
        return pos, found

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self._find(ids)[1]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Values for ``ids``, -1 where an id is absent."""
        pos, found = self._find(ids)
        out = np.full(ids.shape, -1, dtype=np.int64)
        out[found] = self.values[pos[found]]
        return out

    def insert(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Add new ``ids`` (absent and unique) mapped to ``values``."""
        order = np.argsort(ids, kind="stable")
        ids, values = ids[order], np.asarray(values, np.int64)[order]
        pos = np.searchsorted(self.keys, ids)
        self.keys = np.insert(self.keys, pos, ids)
        self.values = np.insert(self.values, pos, values)

    def delete(self, ids: np.ndarray) -> None:
        """Drop ``ids``, which must all be present."""
        pos = np.searchsorted(self.keys, ids)
        self.keys = np.delete(self.keys, pos)
        self.values = np.delete(self.values, pos)

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.values.nbytes)


def _check_header(header: dict[str, Any], backend: str, path: str) -> None:
    found = header.get("backend")
    if found != backend:
        raise ValueError(f"{path!r} holds a {found!r} index, not a {backend!r} one")
    if header.get("metric") not in _METRICS:
        raise ValueError(f"{path!r} has an unknown metric {header.get('metric')!r}")


class HnswlibBackend:
    """Float32 HNSW from hnswlib, the reference the int8 index is measured against.

    ``cosine`` runs on hnswlib's ``ip`` space (the facade has normalized the
    vectors, so hnswlib need not normalize again) and reports ``1 - distance``,
    the inner product. Removed ids are marked deleted in hnswlib and their
    slots are reused by later adds (``allow_replace_deleted``).

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"cosine", "ip", "l2"}
    M : int
        Graph degree (``2 * M`` links on the bottom layer).
    ef_construction : int
        Candidate list size while building.

    Notes
    -----
    hnswlib keeps a label's slot after ``mark_deleted``; re-adding that label
    while deleted slots can be reused would let hnswlib put it in another slot
    and later drop its lookup entry when the old slot is recycled. Such ids are
    therefore revived in place (``unmark_deleted``) and overwritten instead.
    """

    name: ClassVar[str] = "hnswlib"
    _INITIAL_CAPACITY: ClassVar[int] = 1024

    def __init__(self, dim: int, metric: str, M: int, ef_construction: int) -> None:
        self._setup(dim, metric, M, ef_construction)
        self._index.init_index(
            max_elements=self._INITIAL_CAPACITY,
            M=M,
            ef_construction=ef_construction,
            random_seed=100,
            allow_replace_deleted=True,
        )

    def _setup(self, dim: int, metric: str, M: int, ef_construction: int) -> None:
        import hnswlib

        self.dim, self.metric, self.M, self.ef_construction = dim, metric, M, ef_construction
        self._index = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=dim)
        self._live = _IdTable()
        # Ids removed whose label may still sit in a deleted hnswlib slot.
        self._removed = _IdTable()

    def __len__(self) -> int:
        return len(self._live)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each id is live: bool array of shape (n,)."""
        return self._live.contains(np.asarray(ids, dtype=np.uint64))

    def add(self, vectors: np.ndarray, ids: np.ndarray, num_threads: int) -> None:
        """Insert ``vectors`` (float32, (n, dim)) under new uint64 ``ids`` (n,)."""
        ids = np.asarray(ids, dtype=np.uint64)
        if ids.size == 0:
            return
        ghost = self._removed.contains(ids)
        if ghost.any():
            revived = []
            for label in ids[ghost].tolist():
                try:
                    self._index.unmark_deleted(label)
                    revived.append(label)
                except RuntimeError:  # its slot was recycled: the label is gone
                    pass
            self._removed.delete(ids[ghost])
            if revived:
                mask = np.isin(ids, np.array(revived, dtype=np.uint64))
                self._index.add_items(
                    vectors[mask], ids[mask], num_threads=num_threads, replace_deleted=False
                )
                self._live.insert(ids[mask], np.zeros(int(mask.sum()), np.int64))
                vectors, ids = vectors[~mask], ids[~mask]
        if ids.size == 0:
            return
        # Every slot is live or deleted, and deleted ones are reused first.
        needed = max(self._index.element_count, len(self._live) + ids.size)
        if needed > self._index.max_elements:
            self._index.resize_index(max(needed, 2 * self._index.max_elements))
        self._index.add_items(vectors, ids, num_threads=num_threads, replace_deleted=True)
        self._live.insert(ids, np.zeros(ids.size, np.int64))

    def search(
        self, queries: np.ndarray, k: int, ef: int, num_threads: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest live ids for each query; see the module docstring for the layout."""
        n = queries.shape[0]
        ids, scores = _padded(n, k)
        kk = min(k, len(self._live))
        if n == 0 or kk == 0:
            return ids, scores
        self._index.set_ef(max(ef, kk))
        try:
            labels, dist = self._index.knn_query(queries, k=kk, num_threads=num_threads)
            ids[:, :kk], scores[:, :kk] = labels, self._scores(dist)
        except RuntimeError:
            # hnswlib refuses a batch when any query reaches fewer than kk live
            # items (a small graph with many deleted nodes): answer row by row
            # with the largest count each row can fill.
            for row in range(n):
                for kr in range(kk, 0, -1):
                    try:
                        labels, dist = self._index.knn_query(queries[row : row + 1], k=kr)
                    except RuntimeError:
                        continue
                    ids[row, :kr], scores[row, :kr] = labels[0], self._scores(dist[0])
                    break
        return ids, scores

    def _scores(self, dist: np.ndarray) -> np.ndarray:
        # hnswlib's ip space returns 1 - <x, q>.
        return dist if self.metric == "l2" else np.float32(1.0) - dist

    def remove(self, ids: np.ndarray) -> None:
        """Mark live uint64 ``ids`` deleted; their slots are reused by later adds."""
        ids = np.asarray(ids, dtype=np.uint64)
        for label in ids.tolist():
            self._index.mark_deleted(label)
        self._live.delete(ids)
        self._removed.insert(ids, np.zeros(ids.size, np.int64))

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored float32 vectors of live ``ids``: array of shape (n, dim)."""
        ids = np.asarray(ids, dtype=np.uint64)
        if ids.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._index.get_items(ids, return_type="numpy"), np.float32)

    def memory_bytes(self) -> int:
        """Estimated bytes held: graph and vectors, allocated capacity, per-item overheads.

        hnswlib allocates the bottom layer for ``max_elements`` up front and
        keeps, per slot, a mutex (40 bytes), a link-list pointer and a level,
        plus a hash-map entry per label (about 40 bytes). ``index_file_size``
        covers the used slots' data and upper layers.
        """
        index = self._index
        per_slot_level0 = self.dim * 4 + (2 * self.M + 1) * 4 + 8  # vector, links, label
        spare = (index.max_elements - index.element_count) * per_slot_level0
        per_slot_overhead = 40 + 8 + 4
        return int(
            index.index_file_size()
            + spare
            + index.max_elements * per_slot_overhead
            + index.element_count * 40
            + self._live.nbytes()
            + self._removed.nbytes()
        )

    def save(self, path: str) -> None:
        """Write the index to ``path`` atomically (simsearch container, no pickle)."""
        fd, tmp = tempfile.mkstemp(suffix=".hnswlib")
        os.close(fd)
        try:
            self._index.save_index(tmp)
            graph = np.fromfile(tmp, dtype=np.uint8)
        finally:
            os.unlink(tmp)
        header = {
            "backend": self.name,
            "metric": self.metric,
            "dim": self.dim,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "count": len(self),
            "max_elements": int(self._index.max_elements),
        }
        _fileio.write_container(
            path,
            header,
            {"hnswlib": graph, "ids": self._live.keys, "removed": self._removed.keys},
        )

    @classmethod
    def load(cls, path: str, mmap: bool = False) -> HnswlibBackend:
        """Read an index written by :meth:`save`.

        Parameters
        ----------
        path : str
        mmap : bool, default False
            Map the file instead of reading it. hnswlib loads its graph into
            its own memory either way, so this saves only the transient copy.

        Raises
        ------
        ValueError
            If the file is foreign, newer, truncated or corrupt, or holds
            another backend's index.
        """
        header, sections = _fileio.read_container(path, mmap=mmap)
        _check_header(header, cls.name, path)
        self = cls.__new__(cls)  # no init_index: load_index allocates
        self._setup(int(header["dim"]), header["metric"], int(header["M"]), int(header["ef_construction"]))
        fd, tmp = tempfile.mkstemp(suffix=".hnswlib")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(sections["hnswlib"].data)
            self._index.load_index(
                tmp, max_elements=int(header["max_elements"]), allow_replace_deleted=True
            )
        except RuntimeError as err:
            raise ValueError(f"corrupt simsearch index file {path!r}: hnswlib: {err}") from err
        finally:
            os.unlink(tmp)
        self._live = _IdTable(np.array(sections["ids"]))
        self._removed = _IdTable(np.array(sections["removed"]))
        return self


class FaissBackend:
    """faiss ``IndexHNSWSQ`` with an 8-bit scalar quantizer (``QT_8bit``).

    Each dimension gets its own ``[min, max]`` range, learned from the **first
    batch passed to** :meth:`add` (faiss must train the quantizer before it can
    encode anything). Later vectors outside those ranges are clipped, so the
    first batch should be large and representative: a few thousand vectors. For
    ``cosine``/``ip`` distances are inner products between the query and the
    decoded codes; for ``l2`` squared distances.

    faiss's HNSW cannot delete. :meth:`remove` keeps a tombstone per slot and
    searches skip tombstoned slots with an ``IDSelectorBitmap`` passed to the
    search, so a query still gets ``k`` live results; the slots are never
    reused, and a graph with many tombstones costs search time and memory
    until it is rebuilt.

    Parameters
    ----------
    dim : int
    metric : {"cosine", "ip", "l2"}
    M : int
    ef_construction : int
    """

    name: ClassVar[str] = "faiss"

    def __init__(self, dim: int, metric: str, M: int, ef_construction: int) -> None:
        import faiss

        self.dim, self.metric, self.M, self.ef_construction = dim, metric, M, ef_construction
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self._index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, M, faiss_metric)
        self._index.hnsw.efConstruction = ef_construction
        self._slot_ids = np.empty(0, dtype=np.uint64)  # slot -> user id, capacity-doubled
        self._alive = np.empty(0, dtype=bool)  # slot -> not tombstoned
        self._table = _IdTable()  # live user id -> slot
        self._bitmap: np.ndarray | None = None  # packed _alive, rebuilt after changes

    @property
    def _ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return len(self._table)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each id is live: bool array of shape (n,)."""
        return self._table.contains(np.asarray(ids, dtype=np.uint64))

    def _grow(self, size: int, used: int) -> None:
        """Make room for ``size`` slots, keeping the first ``used``."""
        if size <= self._slot_ids.size:
            return
        capacity = max(size, 2 * self._slot_ids.size, 1024)
        slot_ids = np.empty(capacity, dtype=np.uint64)
        alive = np.zeros(capacity, dtype=bool)
        slot_ids[:used] = self._slot_ids[:used]
        alive[:used] = self._alive[:used]
        self._slot_ids, self._alive = slot_ids, alive

    def add(self, vectors: np.ndarray, ids: np.ndarray, num_threads: int) -> None:
        """Insert ``vectors`` (float32, (n, dim)) under new uint64 ``ids`` (n,).

        The first call with any vectors also trains the 8-bit quantizer on them.
        """
        import faiss

        ids = np.asarray(ids, dtype=np.uint64)
        if ids.size == 0:
            return
        start = self._ntotal
        self._grow(start + ids.size, start)
        with _faiss_threads(faiss, num_threads):
            if not self._index.is_trained:
                self._index.train(vectors)
            self._index.add(vectors)
        slots = np.arange(start, start + ids.size, dtype=np.int64)
        self._slot_ids[slots] = ids
        self._alive[slots] = True
        self._table.insert(ids, slots)
        self._bitmap = None

    def search(
        self, queries: np.ndarray, k: int, ef: int, num_threads: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest live ids for each query; see the module docstring for the layout."""
        import faiss

        n = queries.shape[0]
        ids, scores = _padded(n, k)
        if n == 0 or len(self) == 0:
            return ids, scores
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef, k)
        if len(self) < self._ntotal:
            if self._bitmap is None:
                self._bitmap = np.packbits(self._alive[: self._ntotal], bitorder="little")
            selector = faiss.IDSelectorBitmap(self._ntotal, faiss.swig_ptr(self._bitmap))
            params.sel = selector  # both stay referenced until the search returns
        with _faiss_threads(faiss, num_threads):
            dist, slots = self._index.search(queries, k, params=params)
        found = slots >= 0
        ids[found] = self._slot_ids[slots[found]]
        scores[found] = dist[found]
        return ids, scores

    def remove(self, ids: np.ndarray) -> None:
        """Tombstone live uint64 ``ids``; searches skip them from now on."""
        ids = np.asarray(ids, dtype=np.uint64)
        slots = self._table.lookup(ids)
        self._alive[slots] = False
        self._table.delete(ids)
        self._bitmap = None

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Decoded 8-bit reconstructions of live ``ids``: float32 array of shape (n, dim)."""
        ids = np.asarray(ids, dtype=np.uint64)
        if ids.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        slots = self._table.lookup(ids)
        return np.ascontiguousarray(self._index.reconstruct_batch(slots), dtype=np.float32)

    def memory_bytes(self) -> int:
        """Estimated bytes held: codes, graph links, levels and offsets, id tables."""
        hnsw = self._index.hnsw
        codes = self._ntotal * self.dim  # one byte per dimension
        graph = hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
        ranges = 2 * self.dim * 4
        tables = self._slot_ids.nbytes + self._alive.nbytes + self._table.nbytes()
        return int(codes + graph + ranges + tables)

    def save(self, path: str) -> None:
        """Write the index to ``path`` atomically (simsearch container, no pickle)."""
        import faiss

        header = {
            "backend": self.name,
            "metric": self.metric,
            "dim": self.dim,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "count": len(self),
            "slots": self._ntotal,
        }
        n = self._ntotal
        _fileio.write_container(
            path,
            header,
            {
                "faiss": faiss.serialize_index(self._index),
                "slot_ids": self._slot_ids[:n],
                "alive": self._alive[:n],
            },
        )

    @classmethod
    def load(cls, path: str, mmap: bool = False) -> FaissBackend:
        """Read an index written by :meth:`save`.

        Parameters
        ----------
        path : str
        mmap : bool, default False
            Map the file instead of reading it. faiss copies the graph and the
            codes into its own memory either way, so this saves only the
            transient copy.

        Raises
        ------
        ValueError
            If the file is foreign, newer, truncated or corrupt, or holds
            another backend's index.
        """
        import faiss

        header, sections = _fileio.read_container(path, mmap=mmap)
        _check_header(header, cls.name, path)
        self = cls(int(header["dim"]), header["metric"], int(header["M"]), int(header["ef_construction"]))
        try:
            self._index = faiss.deserialize_index(np.ascontiguousarray(sections["faiss"]))
        except RuntimeError as err:
            raise ValueError(f"corrupt simsearch index file {path!r}: faiss: {err}") from err
        n = self._ntotal
        if sections["slot_ids"].shape != (n,) or sections["alive"].shape != (n,):
            raise ValueError(
                f"corrupt simsearch index file {path!r}: id tables do not match the "
                f"{n} vectors in the faiss index"
            )
        self._grow(n, 0)
        self._slot_ids[:n] = sections["slot_ids"]
        self._alive[:n] = sections["alive"]
        live = np.flatnonzero(self._alive[:n])
        self._table = _IdTable(self._slot_ids[live], live)
        return self


class _faiss_threads:
    """Run a block with faiss's OpenMP thread count set, then restore it."""

    def __init__(self, faiss: Any, num_threads: int) -> None:
        self._faiss, self._n = faiss, num_threads

    def __enter__(self) -> None:
        self._previous = self._faiss.omp_get_max_threads()
        self._faiss.omp_set_num_threads(self._n)

    def __exit__(self, *exc: object) -> None:
        self._faiss.omp_set_num_threads(self._previous)
