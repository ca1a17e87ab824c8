"""The shared base of the backends built on other libraries and saved in simsearch's container.

:class:`ContainerBackend` holds what the hnswlib and faiss backends do alike,
once, as scikit-learn's ``neighbors/_base.py`` does for its estimators: the
index parameters, cosine normalization, automatic-id bookkeeping, padded
result rows, the features only the native index has, and the file: the
container of :mod:`simsearch._fileio` (magic ``b"SIMSPY01"``, JSON header,
CRC-32 per section, atomic rename), whose header fields are checked here
before a subclass hands the library's own blob to it.

A subclass provides ``_create``, ``_add``, ``_search``, ``_remove``,
``_get_vectors``, ``memory_bytes``, ``_header_fields``, ``_sections`` and
``_restore``.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, TypeVar

import numpy as np

from simsearch import _fileio
from simsearch._validation import NO_ID, check_ef, l2_normalize
from simsearch.errors import CorruptFileError
from simsearch.index.attributes import Attributes

#: The search effort an index gets when none is given (and files saved before ``ef`` was stored).
DEFAULT_EF = 64
#: The metrics every backend knows, by name.
METRICS = ("cosine", "ip", "l2")

_B = TypeVar("_B", bound="ContainerBackend")


def padded(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Result rows of nothing: ids ``(n, k)`` uint64 all :data:`NO_ID`, scores ``(n, k)`` float32 all NaN."""
    return np.full((n, k), NO_ID, dtype=np.uint64), np.full((n, k), np.nan, dtype=np.float32)


def corrupt(path: str, what: str) -> CorruptFileError:
    """The error for a damaged or crafted index file, in the words :mod:`simsearch._fileio` uses."""
    return CorruptFileError(f"corrupt simsearch index file {path!r}: {what}")


class IdTable:
    """Sorted uint64 keys with int64 values: a compact map from ids to slots.

    A Python dict of a million ids costs about 100 bytes each; two sorted
    arrays cost 16 and answer a batch lookup with one ``searchsorted``. Inserts
    and deletes rewrite the arrays (O(n) per call), which suits batch calls.
    """

    def __init__(self, keys: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
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


class ContainerBackend:
    """What the hnswlib and faiss backends share; see the module docstring.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"cosine", "ip", "l2"}
    M : int
        Graph degree.
    ef_construction : int
        Candidate list size while building.
    ef : int, default 64
        Default search effort, saved with the index.
    **native
        The native index's options, which these backends do not have:
        ``rescore=True`` and an ``isa`` raise ``ValueError``; ``train_size``
        is ignored.

    Notes
    -----
    Inputs are trusted (:class:`simsearch.Index` checks them): float32
    C-contiguous ``(n, dim)`` vectors and uint64 ids that are unique, new and
    not :data:`~simsearch._validation.NO_ID`. For ``cosine`` the backend
    normalizes vectors and queries itself (in float64), as the native index
    does, so the facade treats every backend alike.
    """

    name: ClassVar[str]
    dtype: ClassVar[str]
    _live: IdTable  # the live ids (faiss: mapped to their slots)

    def __init__(
        self, dim: int, metric: str, M: int, ef_construction: int, *, ef: int = DEFAULT_EF, **native: Any
    ) -> None:
        self.rescore = bool(native.pop("rescore", False))
        self.set_isa(native.pop("isa", None))
        native.pop("train_size", None)  # faiss trains on its first batch; hnswlib needs no training
        if native:
            raise TypeError(f"unexpected index options {sorted(native)}")
        self.dim, self.metric, self.M, self.ef_construction = dim, metric, M, ef_construction
        self.ef = ef
        self._next_id = 0
        self._create()

    # --------------------------------------------------------------- info
    @property
    def rescore(self) -> bool:
        """Always False: only the native index keeps float originals beside codes."""
        return False

    @rescore.setter
    def rescore(self, value: bool) -> None:
        if value:
            raise ValueError(f"rescore=True needs the native backend ({self.name} stores {self.dtype} vectors)")

    @property
    def isa(self) -> str:
        """The backend's name (the library picks its own kernels)."""
        return self.name

    def set_isa(self, isa: str | None) -> None:
        """Refuse a kernel choice (``None`` is accepted): only the native index has one."""
        if isa is not None:
            raise ValueError("isa applies to the native backend only")

    @property
    def attribute_names(self) -> list[str]:
        """Always empty: attributes need the native backend."""
        return []

    @property
    def next_auto_id(self) -> int:
        """One past the largest id ever added (saved with the index)."""
        return self._next_id

    def __len__(self) -> int:
        return len(self._live)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each uint64 id is live: bool array of shape (n,)."""
        return self._live.contains(np.asarray(ids, dtype=np.uint64))

    def ids(self) -> np.ndarray:
        """All live ids, ascending: uint64 array of shape (len(self),)."""
        return self._live.keys.copy()

    # --------------------------------------------------------------- work
    def add(self, vectors: np.ndarray, ids: np.ndarray, num_threads: int, attributes: Attributes | None = None) -> None:
        """Insert float32 ``vectors`` of shape (n, dim) under new uint64 ``ids`` of shape (n,).

        Raises
        ------
        ValueError
            If attributes are given (they need the native backend).
        """
        if attributes and attributes[0]:
            raise ValueError("attributes need the native backend")
        ids = np.asarray(ids, dtype=np.uint64)
        if ids.size == 0:
            return
        self._add(self._normalized(vectors, "vectors"), ids, num_threads)
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def search(self, queries: np.ndarray, k: int, ef: int, num_threads: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest live ids of each float32 query row.

        Returns
        -------
        ids : np.ndarray of uint64, shape (n, k)
            Best first; :data:`~simsearch._validation.NO_ID` pads rows with
            fewer than k live results. Removed ids never come back.
        scores : np.ndarray of float32, shape (n, k)
            Inner product for ``cosine``/``ip`` (higher first), squared L2 for
            ``l2`` (lower first); NaN where the id is padding.
        """
        queries = self._normalized(queries, "queries")
        ids, scores = padded(queries.shape[0], k)
        if queries.shape[0] and len(self):
            self._search(queries, k, ef, num_threads, ids, scores)
        return ids, scores

    def search_filtered(self, *args: Any) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("filter needs the native backend")

    def search_exact(self, *args: Any) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("search_exact needs the native backend")

    def compact(self, num_threads: int) -> None:
        raise ValueError("compact needs the native backend")

    def remove(self, ids: np.ndarray) -> None:
        """Remove live uint64 ``ids``; searches never return them again."""
        self._remove(np.asarray(ids, dtype=np.uint64))

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of live uint64 ``ids``: float32 array of shape (n, dim)."""
        ids = np.asarray(ids, dtype=np.uint64)
        if ids.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._get_vectors(ids), dtype=np.float32)

    def _normalized(self, x: np.ndarray, name: str) -> np.ndarray:
        return l2_normalize(x, name) if self.metric == "cosine" and x.shape[0] else x

    # --------------------------------------------------------------- files
    def save(self, path: str) -> None:
        """Write the index to ``path`` atomically (simsearch container, no pickle)."""
        header = {
            "backend": self.name,
            "metric": self.metric,
            "dim": self.dim,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "next_id": self._next_id,
            "count": len(self),
            **self._header_fields(),
        }
        _fileio.write_container(path, header, self._sections())

    @classmethod
    def load(cls: type[_B], path: str, *, mmap: bool = False, verify: bool = True) -> _B:
        """Read an index written by :meth:`save`.

        Parameters
        ----------
        path : str
        mmap : bool, default False
            Map the file instead of reading it. The library copies its graph
            into its own memory either way, so this saves only the transient copy.
        verify : bool, default True
            Check each section's CRC-32. The structure of the library's blob
            is checked either way, before the library sees it.

        Raises
        ------
        CorruptFileError
            (a ``ValueError``) If the file is foreign, truncated, damaged or
            crafted, or holds another backend's index.
        ValueError
            If it was written by a newer container format version.
        """
        path = os.fspath(path)
        header, sections = _fileio.read_container(path, mmap=mmap, verify=verify)
        found = header.get("backend")
        if found != cls.name:
            raise corrupt(path, f"it holds a {found!r} index, not a {cls.name!r} one")
        if header.get("metric") not in METRICS:
            raise corrupt(path, f"unknown metric {header.get('metric')!r}")
        self = cls.__new__(cls)  # no _create: _restore rebuilds the library's index from the file
        self.dim = header_int(header, "dim", path, 1, 2**31 - 1)
        self.metric = header["metric"]
        self.M = header_int(header, "M", path, 2, 2**15)
        self.ef_construction = header_int(header, "ef_construction", path, 1, 2**31 - 1)
        try:
            self.ef = check_ef(header.get("ef", DEFAULT_EF), "ef")
        except (TypeError, ValueError) as err:
            raise corrupt(path, f"header field 'ef': {err}") from None
        self._restore(header, sections, path)
        count = header_int(header, "count", path, 0, 2**63)
        if count != len(self._live):
            raise corrupt(path, f"the header counts {count} items, the id table holds {len(self._live)}")
        self._next_id = header_int(header, "next_id", path, 0, 2**64 - 1, default=self._default_next_id())
        return self

    # ------------------------------------------------ what a subclass provides
    def _create(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _add(self, vectors: np.ndarray, ids: np.ndarray, num_threads: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def _search(  # pragma: no cover - abstract
        self, queries: np.ndarray, k: int, ef: int, num_threads: int, ids: np.ndarray, scores: np.ndarray
    ) -> None:
        """Fill the padded ``ids`` and ``scores`` rows in place."""
        raise NotImplementedError

    def _remove(self, ids: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get_vectors(self, ids: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def memory_bytes(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _header_fields(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sections(self) -> dict[str, np.ndarray | bytes]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _restore(self, header: dict[str, Any], sections: dict[str, np.ndarray], path: str) -> None:  # pragma: no cover
        """Rebuild the library's index and the id tables from a checked header and its sections."""
        raise NotImplementedError

    def _default_next_id(self) -> int:  # pragma: no cover - abstract
        """``next_id`` for files saved before it was stored: past every id the file names."""
        raise NotImplementedError


def header_int(
    header: dict[str, Any], key: str, path: str, low: int, high: int, *, default: int | None = None
) -> int:
    """Return the integer header field ``key`` if it lies in [low, high], else raise :class:`CorruptFileError`."""
    value = header.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise corrupt(path, f"header field {key!r} is {value!r}, expected an integer in [{low}, {high}]")
    return value


def section(sections: dict[str, np.ndarray], name: str, dtype: Any, path: str) -> np.ndarray:
    """Return the 1-D section ``name`` if it has ``dtype``, else raise :class:`CorruptFileError`."""
    arr = sections.get(name)
    if arr is None:
        raise corrupt(path, f"section {name!r} is missing")
    if arr.dtype != np.dtype(dtype) or arr.ndim != 1:
        raise corrupt(path, f"section {name!r} is {arr.dtype} of shape {arr.shape}, expected 1-D {np.dtype(dtype)}")
    return arr
