"""Float32 HNSW from hnswlib, and the bound checks its saved graph passes before hnswlib reads it.

hnswlib's ``loadIndex`` trusts its file: a link id past the element count, a
level the entry point does not have or a length field that runs past the end
makes it read outside its arrays (a segfault, or garbage results). Our
container's CRC-32 only shows the bytes are the ones written, and anyone can
recompute it, so :func:`check_hnswlib_blob` walks the whole layout first.
"""

from __future__ import annotations

import math
import struct
from typing import Any, ClassVar

import numpy as np

from simsearch import _storage
from simsearch.index.container import ContainerBackend, IdTable, corrupt, header_int, section

# hnswlib 0.8 saveIndex: offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, label_offset, offsetData (size_t), maxlevel (int),
# enterpoint_node (uint32), maxM, maxM0, M (size_t), mult (double),
# ef_construction (size_t); then cur_element_count level-0 records; then per
# element a uint32 byte count and that many bytes of upper-level link lists.
_HEADER = struct.Struct("<QQQQQQiIQQQdQ")
_FIELDS = (
    "offsetLevel0", "max_elements", "cur_element_count", "size_data_per_element", "label_offset", "offsetData",
    "maxlevel", "enterpoint_node", "maxM", "maxM0", "M", "mult", "ef_construction",
)
_NO_ENTRY = 2**32 - 1  # hnswlib's enterpoint_node of an empty graph (-1 as uint32)
_DELETE_MARK = 0x01  # bit of the third byte of a level-0 link-list header


class HnswlibBackend(ContainerBackend):
    """Float32 HNSW from hnswlib, the reference the int8 index is measured against.

    ``cosine`` runs on hnswlib's ``ip`` space over vectors normalized here
    (hnswlib need not normalize again) and reports ``1 - distance``, the inner
    product. Removed ids are marked deleted in hnswlib and their slots are
    reused by later adds (``allow_replace_deleted``).

    Parameters
    ----------
    dim, metric, M, ef_construction, ef, rescore, isa, train_size
        See :class:`~simsearch.index.container.ContainerBackend`.

    Notes
    -----
    hnswlib keeps a label's slot after ``mark_deleted``; re-adding that label
    while deleted slots can be reused would let hnswlib put it in another slot
    and later drop its lookup entry when the old slot is recycled. Such ids are
    therefore revived in place (``unmark_deleted``) and overwritten instead.
    """

    name: ClassVar[str] = "hnswlib"
    dtype: ClassVar[str] = "float32"
    _INITIAL_CAPACITY: ClassVar[int] = 1024

    def _create(self) -> None:
        self._setup()
        self._index.init_index(
            max_elements=self._INITIAL_CAPACITY,
            M=self.M,
            ef_construction=self.ef_construction,
            random_seed=100,
            allow_replace_deleted=True,
        )

    def _setup(self) -> None:
        import hnswlib

        self._index = hnswlib.Index(space="l2" if self.metric == "l2" else "ip", dim=self.dim)
        self._live = IdTable()
        # Ids removed whose label may still sit in a deleted hnswlib slot.
        self._removed = IdTable()

    def _add(self, vectors: np.ndarray, ids: np.ndarray, num_threads: int) -> None:
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
                self._index.add_items(vectors[mask], ids[mask], num_threads=num_threads, replace_deleted=False)
                self._live.insert(ids[mask], np.zeros(int(mask.sum()), np.int64))
                vectors, ids = vectors[~mask], ids[~mask]
        if ids.size == 0:
            return
        # Every slot is live or deleted, and deleted ones are reused first, so
        # the capacity stays below max(initial, 2 * slots): check_hnswlib_blob relies on it.
        needed = max(self._index.element_count, len(self._live) + ids.size)
        if needed > self._index.max_elements:
            self._index.resize_index(max(needed, 2 * self._index.max_elements))
        self._index.add_items(vectors, ids, num_threads=num_threads, replace_deleted=True)
        self._live.insert(ids, np.zeros(ids.size, np.int64))

    def _search(
        self, queries: np.ndarray, k: int, ef: int, num_threads: int, ids: np.ndarray, scores: np.ndarray
    ) -> None:
        kk = min(k, len(self._live))
        self._index.set_ef(ef)
        try:
            labels, dist = self._index.knn_query(queries, k=kk, num_threads=num_threads)
            ids[:, :kk], scores[:, :kk] = labels, self._scores(dist)
        except RuntimeError:
            # hnswlib refuses a batch when any query reaches fewer than kk live
            # items (a small graph with many deleted nodes): answer row by row
            # with the largest count each row can fill.
            for row in range(queries.shape[0]):
                for kr in range(kk, 0, -1):
                    try:
                        labels, dist = self._index.knn_query(queries[row : row + 1], k=kr)
                    except RuntimeError:
                        continue
                    ids[row, :kr], scores[row, :kr] = labels[0], self._scores(dist[0])
                    break

    def _scores(self, dist: np.ndarray) -> np.ndarray:
        # hnswlib's ip space returns 1 - <x, q>.
        return dist if self.metric == "l2" else np.float32(1.0) - dist

    def _remove(self, ids: np.ndarray) -> None:
        for label in ids.tolist():
            self._index.mark_deleted(label)
        self._live.delete(ids)
        self._removed.insert(ids, np.zeros(ids.size, np.int64))

    def _get_vectors(self, ids: np.ndarray) -> np.ndarray:
        return self._index.get_items(ids, return_type="numpy")

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

    # --------------------------------------------------------------- files
    def _header_fields(self) -> dict[str, Any]:
        return {"max_elements": int(self._index.max_elements)}

    def _sections(self) -> dict[str, np.ndarray | bytes]:
        with _storage.scratch_path(".hnswlib") as tmp:
            self._index.save_index(tmp)
            graph = np.fromfile(tmp, dtype=np.uint8)
        return {"hnswlib": graph, "ids": self._live.keys, "removed": self._removed.keys}

    def _restore(self, header: dict[str, Any], sections: dict[str, np.ndarray], path: str) -> None:
        self._setup()
        blob = section(sections, "hnswlib", np.uint8, path)
        live = np.array(section(sections, "ids", np.uint64, path))
        removed = np.array(section(sections, "removed", np.uint64, path))
        max_elements = header_int(header, "max_elements", path, 1, 2**40)
        labels, deleted = check_hnswlib_blob(
            blob, dim=self.dim, M=self.M, ef_construction=self.ef_construction,
            max_elements=max_elements, initial_capacity=self._INITIAL_CAPACITY, path=path,
        )
        check_id_tables(labels[~deleted], live, removed, path)
        with _storage.scratch_path(".hnswlib", data=blob) as tmp:
            try:
                self._index.load_index(tmp, max_elements=max_elements, allow_replace_deleted=True)
            except RuntimeError as err:
                raise corrupt(path, f"hnswlib: {err}") from err
        self._live = IdTable(live)
        self._removed = IdTable(removed)

    def _default_next_id(self) -> int:
        known = np.concatenate([self._live.keys, self._removed.keys])
        return int(known.max()) + 1 if known.size else 0


def check_id_tables(labels: np.ndarray, live: np.ndarray, removed: np.ndarray, path: str) -> None:
    """Check that the live ids are unique and exactly the graph's undeleted labels, and that removed ids are not live.

    Raises
    ------
    CorruptFileError
        Naming the first mismatch.
    """
    live_sorted = np.sort(live)
    if live_sorted.size > 1 and (np.diff(live_sorted) == 0).any():
        raise corrupt(path, "the id table repeats an id")
    if labels.size != live.size or not np.array_equal(np.sort(labels), live_sorted):
        raise corrupt(path, f"the id table ({live.size} ids) does not match the graph's {labels.size} live labels")
    if np.isin(removed, live_sorted).any():
        raise corrupt(path, "an id is both live and removed")


def check_hnswlib_blob(
    blob: np.ndarray, *, dim: int, M: int, ef_construction: int, max_elements: int, initial_capacity: int, path: str
) -> tuple[np.ndarray, np.ndarray]:
    """Bound-check an hnswlib ``saveIndex`` blob against our header before hnswlib reads it.

    Every field of hnswlib's header must be what hnswlib itself derives from
    ``dim`` and ``M`` (a float space of ``dim`` values), every count and
    length must fit the blob, and every link must point below the element
    count, to a node that has the link's level; the entry point must carry
    the top level. Then no read of hnswlib's search, add or load leaves its
    arrays.

    Parameters
    ----------
    blob : np.ndarray of uint8, shape (n_bytes,)
        The file ``hnswlib.Index.save_index`` wrote.
    dim, M, ef_construction, max_elements : int
        From our JSON header.
    initial_capacity : int
        The capacity a new index starts with; it bounds ``max_elements``.
    path : str
        The container's path, for messages.

    Returns
    -------
    labels : np.ndarray of uint64, shape (count,)
        Each element's label (our id).
    deleted : np.ndarray of bool, shape (count,)
        Whether each element is marked deleted.

    Raises
    ------
    CorruptFileError
        Naming the first field or link out of bounds.
    """
    size = int(blob.size)
    if size < _HEADER.size:
        raise corrupt(path, f"hnswlib graph is {size} bytes, shorter than its {_HEADER.size}-byte header")
    got = dict(zip(_FIELDS, _HEADER.unpack_from(blob, 0)))
    links0 = 4 + 4 * 2 * M  # count header + maxM0 links
    want = {
        "offsetLevel0": 0,
        "max_elements": max_elements,
        "size_data_per_element": links0 + 4 * dim + 8,  # links, float32 vector, uint64 label
        "label_offset": links0 + 4 * dim,
        "offsetData": links0,
        "maxM": M,
        "maxM0": 2 * M,
        "M": M,
        "ef_construction": max(ef_construction, M),  # hnswlib raises it to M
    }
    for field, value in want.items():
        if got[field] != value:
            raise corrupt(
                path, f"hnswlib graph field {field} is {got[field]}, expected {value} for dim {dim} and M {M}"
            )
    mult = got["mult"]
    if not (math.isfinite(mult) and math.isclose(mult, 1.0 / math.log(M), rel_tol=1e-9)):
        raise corrupt(path, f"hnswlib graph field mult is {mult}, expected 1/log(M) = {1.0 / math.log(M):.6g}")
    count, per_element = got["cur_element_count"], want["size_data_per_element"]
    if count > max_elements or max_elements > max(initial_capacity, 2 * count):
        raise corrupt(path, f"hnswlib graph holds {count} elements in a capacity of {max_elements}")
    end0 = _HEADER.size + count * per_element
    if end0 > size:
        raise corrupt(path, f"hnswlib graph: {count} elements of {per_element} bytes run past its {size} bytes")

    # Level 0: one fixed-size record per element.
    records = np.asarray(blob[_HEADER.size : end0]).reshape(count, per_element)
    n_links = records[:, 0:2].copy().view("<u2").ravel()
    if count and int(n_links.max()) > 2 * M:
        bad = int(np.argmax(n_links > 2 * M))
        raise corrupt(path, f"hnswlib graph element {bad} has more than {2 * M} level-0 links")
    links = records[:, 4:links0].copy().view("<u4")
    used = np.arange(2 * M) < n_links[:, None]
    if (links[used] >= count).any():
        raise corrupt(path, f"hnswlib graph has a level-0 link past its {count} elements")
    deleted = (records[:, 2] & _DELETE_MARK) != 0
    labels = records[:, want["label_offset"] : per_element].copy().view("<u8").ravel()

    # Upper levels: per element a byte count, then `level` lists of maxM links.
    per_level = 4 + 4 * M
    levels = np.zeros(count, dtype=np.int64)
    starts: list[int] = []  # byte offset of each element's upper lists
    owners: list[int] = []
    pos = end0
    for i in range(count):
        if pos + 4 > size:
            raise corrupt(path, f"hnswlib graph is truncated at element {i}'s upper levels")
        (nbytes,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if nbytes:
            if nbytes % per_level or pos + nbytes > size:
                raise corrupt(
                    path, f"hnswlib graph element {i} has {nbytes} bytes of upper levels: "
                    f"not whole levels of {per_level} bytes, or past the end"
                )
            levels[i] = nbytes // per_level
            starts.append(pos)
            owners.append(i)
            pos += nbytes
    if pos != size:
        raise corrupt(path, f"hnswlib graph has {size - pos} bytes after its last element")
    _check_top(got["maxlevel"], got["enterpoint_node"], levels, path)
    if owners:
        _check_upper_links(blob, np.array(starts, np.int64), levels[owners], levels, M, path)
    return labels, deleted


def _check_top(max_level: int, entry: int, levels: np.ndarray, path: str) -> None:
    if levels.size == 0:
        if max_level != -1 or entry != _NO_ENTRY:
            raise corrupt(path, f"empty hnswlib graph has top level {max_level} and entry point {entry}")
        return
    if not 0 <= entry < levels.size:
        raise corrupt(path, f"hnswlib graph entry point {entry} is not one of its {levels.size} elements")
    if int(levels[entry]) != max_level or int(levels.max()) > max_level:
        raise corrupt(
            path, f"hnswlib graph top level {max_level} is not its entry point's ({int(levels[entry])}) "
            f"or is below an element's ({int(levels.max())})"
        )


def _check_upper_links(
    blob: np.ndarray, starts: np.ndarray, owner_levels: np.ndarray, levels: np.ndarray, M: int, path: str
) -> None:
    """Every link of level l (l >= 1) must point to an element that has level l."""
    per_level = 4 + 4 * M
    # One row per (element, level) list: its byte offset and its level.
    reps = owner_levels
    first = np.repeat(starts, reps)
    within = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    offsets = first + within * per_level
    list_level = within + 1
    raw = np.asarray(blob)
    n_links = raw[offsets].astype(np.int64) | (raw[offsets + 1].astype(np.int64) << 8)
    if int(n_links.max()) > M:
        raise corrupt(path, f"hnswlib graph has an upper-level list of more than {M} links")
    at = offsets[:, None] + 4 + 4 * np.arange(M)[None, :]
    link = (
        raw[at].astype(np.int64)
        | (raw[at + 1].astype(np.int64) << 8)
        | (raw[at + 2].astype(np.int64) << 16)
        | (raw[at + 3].astype(np.int64) << 24)
    )
    used = np.arange(M)[None, :] < n_links[:, None]
    targets = link[used]
    if (targets >= levels.size).any():
        raise corrupt(path, f"hnswlib graph has an upper-level link past its {levels.size} elements")
    need = np.broadcast_to(list_level[:, None], used.shape)[used]
    if (levels[targets] < need).any():
        raise corrupt(path, "hnswlib graph links a node at a level that node does not have")
