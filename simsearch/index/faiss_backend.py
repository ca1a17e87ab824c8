"""faiss ``IndexHNSWSQ`` (8-bit scalar quantizer), and the checks its serialized index passes before faiss reads it.

faiss's ``read_index`` checks little more than vector sizes: a neighbour id
past ``ntotal``, a level table that disagrees with the offsets or an entry
point without the top level makes its search read outside its arrays. Our
container's CRC-32 anyone can recompute, so :func:`check_faiss_blob` parses
the whole serialization first (faiss's ``index_write.cpp`` layout) and holds
every field against our header and against a fresh index of the same
parameters.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

import numpy as np

from simsearch.index.container import ContainerBackend, IdTable, corrupt, header_int, section


class FaissBackend(ContainerBackend):
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
    dim, metric, M, ef_construction, ef, rescore, isa, train_size
        See :class:`~simsearch.index.container.ContainerBackend`.
    """

    name: ClassVar[str] = "faiss"
    dtype: ClassVar[str] = "int8"

    def _create(self) -> None:
        self._index = _new_faiss_index(self.dim, self.metric, self.M)
        self._index.hnsw.efConstruction = self.ef_construction
        self._slot_ids = np.empty(0, dtype=np.uint64)  # slot -> user id, capacity-doubled
        self._alive = np.empty(0, dtype=bool)  # slot -> not tombstoned
        self._live = IdTable()  # live user id -> slot
        self._bitmap: np.ndarray | None = None  # packed _alive, rebuilt after changes

    @property
    def _ntotal(self) -> int:
        return int(self._index.ntotal)

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

    def _add(self, vectors: np.ndarray, ids: np.ndarray, num_threads: int) -> None:
        # The first call with any vectors also trains the 8-bit quantizer on them.
        import faiss

        start = self._ntotal
        self._grow(start + ids.size, start)
        with _faiss_threads(faiss, num_threads):
            if not self._index.is_trained:
                self._index.train(vectors)
            self._index.add(vectors)
        slots = np.arange(start, start + ids.size, dtype=np.int64)
        self._slot_ids[slots] = ids
        self._alive[slots] = True
        self._live.insert(ids, slots)
        self._bitmap = None

    def _search(
        self, queries: np.ndarray, k: int, ef: int, num_threads: int, ids: np.ndarray, scores: np.ndarray
    ) -> None:
        import faiss

        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
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

    def _remove(self, ids: np.ndarray) -> None:
        slots = self._live.lookup(ids)
        self._alive[slots] = False
        self._live.delete(ids)
        self._bitmap = None

    def _get_vectors(self, ids: np.ndarray) -> np.ndarray:
        # Decoded 8-bit reconstructions.
        return self._index.reconstruct_batch(self._live.lookup(ids))

    def memory_bytes(self) -> int:
        """Estimated bytes held: codes, graph links, levels and offsets, id tables."""
        hnsw = self._index.hnsw
        codes = self._ntotal * self.dim  # one byte per dimension
        graph = hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
        ranges = 2 * self.dim * 4
        tables = self._slot_ids.nbytes + self._alive.nbytes + self._live.nbytes()
        return int(codes + graph + ranges + tables)

    # --------------------------------------------------------------- files
    def _header_fields(self) -> dict[str, Any]:
        return {"slots": self._ntotal}

    def _sections(self) -> dict[str, np.ndarray | bytes]:
        import faiss

        n = self._ntotal
        return {"faiss": faiss.serialize_index(self._index), "slot_ids": self._slot_ids[:n], "alive": self._alive[:n]}

    def _restore(self, header: dict[str, Any], sections: dict[str, np.ndarray], path: str) -> None:
        import faiss

        blob = section(sections, "faiss", np.uint8, path)
        slot_ids = section(sections, "slot_ids", np.uint64, path)
        alive = section(sections, "alive", np.bool_, path)
        n = header_int(header, "slots", path, 0, 2**40)
        if slot_ids.size != n or alive.size != n:
            raise corrupt(path, f"id tables do not match the {n} vectors in the faiss index")
        live = np.flatnonzero(alive)
        live_ids = np.sort(slot_ids[live])
        if live_ids.size > 1 and (np.diff(live_ids) == 0).any():
            raise corrupt(path, "the id table repeats a live id")
        check_faiss_blob(
            blob, dim=self.dim, metric=self.metric, M=self.M, ef_construction=self.ef_construction, ntotal=n, path=path
        )
        try:
            self._index = faiss.deserialize_index(np.ascontiguousarray(blob))
        except RuntimeError as err:
            raise corrupt(path, f"faiss: {err}") from err
        self._bitmap = None
        self._slot_ids = np.empty(0, dtype=np.uint64)
        self._alive = np.empty(0, dtype=bool)
        self._grow(n, 0)
        self._slot_ids[:n] = slot_ids
        self._alive[:n] = alive
        self._live = IdTable(self._slot_ids[live], live)

    def _default_next_id(self) -> int:
        n = self._ntotal
        return int(self._slot_ids[:n].max()) + 1 if n else 0


class _faiss_threads:
    """Run a block with faiss's OpenMP thread count set, then restore it."""

    def __init__(self, faiss: Any, num_threads: int) -> None:
        self._faiss, self._n = faiss, num_threads

    def __enter__(self) -> None:
        self._previous = self._faiss.omp_get_max_threads()
        self._faiss.omp_set_num_threads(self._n)

    def __exit__(self, *exc: object) -> None:
        self._faiss.omp_set_num_threads(self._previous)


def _new_faiss_index(dim: int, metric: str, M: int) -> Any:
    import faiss

    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    return faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, M, faiss_metric)


# --------------------------------------------------------------------------- the serialized index


class _Reader:
    """Sequential little-endian reads from a blob; running past its end is a CorruptFileError."""

    def __init__(self, blob: np.ndarray, path: str) -> None:
        self.blob, self.path, self.pos = blob, path, 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        st = struct.Struct("<" + fmt)
        if self.pos + st.size > self.blob.size:
            raise corrupt(self.path, f"faiss index is truncated at byte {self.pos}")
        out = st.unpack_from(self.blob, self.pos)
        self.pos += st.size
        return out

    def vector(self, dtype: str, what: str) -> np.ndarray:
        """A faiss ``WRITEVECTOR``: a uint64 length, then that many items."""
        (n,) = self.take("Q")
        itemsize = np.dtype(dtype).itemsize
        if n > (self.blob.size - self.pos) // itemsize:
            raise corrupt(self.path, f"faiss index {what} has {n} items, more than the blob holds")
        out = np.asarray(self.blob[self.pos : self.pos + n * itemsize]).view(dtype)
        self.pos += n * itemsize
        return out

    def fourcc(self, want: bytes) -> None:
        (got,) = self.take("4s")
        if got != want:
            raise corrupt(self.path, f"faiss index has {got!r} where {want!r} was expected (not an HNSW-SQ8 index)")


def _parse(blob: np.ndarray, path: str) -> dict[str, Any]:
    """Every field of a serialized ``IndexHNSWSQ``, by name (faiss ``index_write.cpp``)."""
    r = _Reader(blob, path)
    out: dict[str, Any] = {}

    def index_header(prefix: str) -> None:
        # d (int), ntotal (int64), two unused int64, is_trained (bool), metric_type (int)
        d, ntotal, _, _, is_trained, metric = r.take("iqqqBi")
        fields = {"d": d, "ntotal": ntotal, "is_trained": is_trained, "metric": metric}
        out.update({prefix + name: value for name, value in fields.items()})
        if metric > 1:  # a metric_arg float would follow; ours are inner product (0) and L2 (1)
            raise corrupt(path, f"faiss index has metric type {metric}, expected inner product or L2")

    r.fourcc(b"IHNs")
    index_header("")
    out["assign_probas"] = r.vector("<f8", "assign_probas")
    out["cum_nneighbor_per_level"] = r.vector("<i4", "cum_nneighbor_per_level")
    out["levels"] = r.vector("<i4", "levels")
    out["offsets"] = r.vector("<u8", "offsets")
    out["neighbors"] = r.vector("<i4", "neighbors")
    # entry_point, max_level, efConstruction, efSearch, and an unused int (upper_beam)
    out["entry_point"], out["max_level"], out["efConstruction"], out["efSearch"], _ = r.take("iiiii")
    r.fourcc(b"IxSQ")
    index_header("storage_")
    out["qtype"], out["rangestat"], out["rangestat_arg"], out["sq_d"], out["code_size"] = r.take("iifQQ")
    out["ranges"] = r.vector("<f4", "quantizer ranges")
    out["codes"] = r.vector("<u1", "codes")
    if r.pos != blob.size:
        raise corrupt(path, f"faiss index has {blob.size - r.pos} bytes after its codes")
    return out


def check_faiss_blob(
    blob: np.ndarray, *, dim: int, metric: str, M: int, ef_construction: int, ntotal: int, path: str
) -> None:
    """Check a serialized faiss ``IndexHNSWSQ`` against our header before faiss reads it.

    The parameters must match our header and a fresh index of the same
    ``dim``, ``metric`` and ``M`` (level probabilities, neighbours per level,
    quantizer type); the level and offset tables must agree; every neighbour
    id must be -1 (empty) or below ``ntotal`` and, on a level above 0, name a
    node that has that level; the entry point must carry the top level; the
    codes and quantizer ranges must have the sizes ``dim`` and ``ntotal`` give.

    Parameters
    ----------
    blob : np.ndarray of uint8, shape (n_bytes,)
        What ``faiss.serialize_index`` returned.
    dim, metric, M, ef_construction, ntotal
        From our JSON header (``ntotal`` is its ``slots``).
    path : str
        The container's path, for messages.

    Raises
    ------
    CorruptFileError
        Naming the first field out of bounds.
    """
    import faiss

    got = _parse(blob, path)
    ref = _parse(faiss.serialize_index(_new_faiss_index(dim, metric, M)), "the reference index")
    trained = got["is_trained"]
    expect = {
        "d": dim, "storage_d": dim, "sq_d": dim, "ntotal": ntotal, "storage_ntotal": ntotal,
        "metric": ref["metric"], "storage_metric": ref["metric"], "storage_is_trained": trained,
        "qtype": ref["qtype"], "rangestat": ref["rangestat"], "code_size": ref["code_size"],
        "efConstruction": ef_construction,
    }
    for field, value in expect.items():
        if got[field] != value:
            raise corrupt(path, f"faiss index field {field} is {got[field]}, expected {value}")
    if trained not in (0, 1) or (ntotal and not trained):
        raise corrupt(path, f"faiss index has is_trained {trained} with {ntotal} vectors")
    if not 1 <= got["efSearch"] < 2**31:
        raise corrupt(path, f"faiss index field efSearch is {got['efSearch']}")
    cum = ref["cum_nneighbor_per_level"]
    same_probas = got["assign_probas"].size == ref["assign_probas"].size and np.allclose(
        got["assign_probas"], ref["assign_probas"], rtol=1e-9, atol=0
    )
    if not same_probas or not np.array_equal(got["cum_nneighbor_per_level"], cum):
        raise corrupt(path, f"faiss index level tables are not those of M={M}")
    ranges = 2 * dim if trained else 0  # QT_8bit keeps a minimum and a width per dimension once trained
    if got["ranges"].size != ranges:
        raise corrupt(path, f"faiss index has {got['ranges'].size} quantizer values, expected {ranges}")
    if got["codes"].size != ntotal * ref["code_size"]:
        raise corrupt(path, f"faiss index has {got['codes'].size} code bytes, expected {ntotal} x {ref['code_size']}")
    _check_graph(got, cum.astype(np.int64), ntotal, path)


def _check_graph(got: dict[str, Any], cum: np.ndarray, ntotal: int, path: str) -> None:
    """Levels, offsets, neighbours and entry point of faiss's HNSW must agree and stay inside ``ntotal``."""
    levels = got["levels"].astype(np.int64)  # faiss stores level + 1: the number of layers a node is on
    n_layers = cum.size - 1
    if levels.size != ntotal or (ntotal and (levels.min() < 1 or levels.max() > n_layers)):
        raise corrupt(path, f"faiss index level table has {levels.size} entries or a level outside 1..{n_layers}")
    offsets = got["offsets"]
    want = np.concatenate([[0], np.cumsum(cum[levels])]).astype(np.uint64)
    if not np.array_equal(offsets, want):
        raise corrupt(path, "faiss index offsets do not follow from its levels")
    neighbors = got["neighbors"].astype(np.int64)
    if neighbors.size != int(want[-1]):
        raise corrupt(path, f"faiss index has {neighbors.size} neighbour slots, its offsets need {int(want[-1])}")
    if neighbors.size and (neighbors.min() < -1 or neighbors.max() >= ntotal):
        raise corrupt(path, f"faiss index has a neighbour id outside -1..{ntotal - 1}")
    entry, max_level = got["entry_point"], got["max_level"]
    if ntotal == 0:
        if entry != -1 or max_level != -1:
            raise corrupt(path, f"empty faiss index has entry point {entry} and top level {max_level}")
        return
    if not 0 <= entry < ntotal or max_level != levels[entry] - 1 or levels.max() - 1 > max_level:
        raise corrupt(path, f"faiss index entry point {entry} does not carry its top level {max_level}")
    # A neighbour on layer l >= 1 must itself be on layer l: the greedy descent
    # reads that node's layer-l range next. Few nodes (about 1/M) have upper layers.
    upper = np.flatnonzero(levels >= 2)
    if upper.size == 0:
        return
    n_slots = cum[levels[upper]] - cum[1]
    owner = np.repeat(upper, n_slots)
    within = np.arange(int(n_slots.sum())) - np.repeat(np.cumsum(n_slots) - n_slots, n_slots) + cum[1]
    layer = np.searchsorted(cum, within, side="right") - 1
    target = neighbors[offsets[owner].astype(np.int64) + within]
    used = target >= 0
    if (levels[target[used]] <= layer[used]).any():
        raise corrupt(path, "faiss index links a node on a layer that node is not on")
