"""``simsearch.Index``: one API over the native int8 HNSW and the hnswlib/faiss backends."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from simsearch._validation import NO_ID, as_float_matrix, as_ids, check_positive_int

Metric = Literal["cosine", "ip", "l2"]
_METRICS = {"cosine": 0, "ip": 1, "l2": 2}
_BACKEND_DTYPES = {"native": ("int8",), "hnswlib": ("float32",), "faiss": ("int8",)}
_NATIVE_MAGIC = b"SIMSIDX1"


def _core() -> Any:
    from simsearch import _core

    return _core


def available_isas() -> list[str]:
    """Kernels this CPU can run, best first (e.g. ``["avx512vnni", "avx2", "scalar"]``)."""
    return list(_core().available_isas())


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Index:
    """Approximate nearest-neighbour index (HNSW) over int8 codes.

    The native backend stores each vector as 8-bit codes with per-dimension
    ranges learned from the data, and computes distances directly on the
    codes with SIMD integer kernels (AVX-512 VNNI, AVX2 or portable C++),
    picked at run time for the CPU at hand. With ``rescore=True`` it also
    keeps the float32 originals and re-ranks the ``ef`` graph candidates
    exactly, which brings int8 search to float32 recall.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"cosine", "ip", "l2"}, default "cosine"
        ``cosine`` normalizes vectors and queries; scores are similarities
        (higher first). ``ip`` scores are inner products (higher first).
        ``l2`` scores are squared Euclidean distances (lower first).
    dtype : {"int8", "float32"} or None, default None
        Storage type. ``None`` takes the backend's own: int8 for ``native``
        and ``faiss`` (8-bit scalar quantizer), float32 for ``hnswlib``.
        ``dtype="float32"`` with the default backend selects ``hnswlib``.
    M : int, default 16
        Graph degree (links per node above level 0; 2*M at level 0).
    ef_construction : int, default 200
        Candidate list size while building.
    rescore : bool, default False
        Keep float32 originals and re-rank candidates exactly (native only).
    backend : {"native", "hnswlib", "faiss"}, default "native"
        Implementation. The API and return types are the same for all.
    num_threads : int or None, default None
        Threads for batch ``add`` and ``search``; None uses every core
        available to the process.
    ef : int, default 64
        Default search-time candidate list size (``search(ef=...)`` overrides).
    isa : str or None
        Force a kernel (``"avx512vnni"``, ``"avx2"``, ``"scalar"``); None
        reads the ``SIMSEARCH_ISA`` environment variable, else picks the best
        the CPU supports. Native backend only.
    train_size : int, default 20000
        Native backend: the quantizer's per-dimension ranges are learned from
        the first ``train_size`` vectors. Until that many have arrived the
        index keeps their float32 copies (4 bytes a dimension) and re-learns
        the ranges each time the index doubles, re-encoding what it holds,
        so an index grown in small batches is as accurate as one built at
        once; then the ranges freeze, the copies are freed (unless
        ``rescore``), and later values outside the ranges are clipped.

    Examples
    --------
    >>> import numpy as np, simsearch
    >>> x = np.random.default_rng(0).normal(size=(1000, 32)).astype(np.float32)
    >>> index = simsearch.Index(32)
    >>> ids = index.add(x)
    >>> found, scores = index.search(x[:2], k=3)
    >>> found.shape, found.dtype.name, scores.dtype.name
    ((2, 3), 'uint64', 'float32')
    >>> [int(i) for i in found[:, 0]]
    [0, 1]
    """

    def __init__(
        self,
        dim: int,
        metric: Metric = "cosine",
        dtype: Literal["int8", "float32"] | None = None,
        M: int = 16,
        ef_construction: int = 200,
        rescore: bool = False,
        backend: Literal["native", "hnswlib", "faiss"] = "native",
        num_threads: int | None = None,
        *,
        ef: int = 64,
        isa: str | None = None,
        train_size: int = 20000,
    ) -> None:
        self.dim = check_positive_int(dim, "dim")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
        if backend not in _BACKEND_DTYPES:
            raise ValueError(f"backend must be one of {sorted(_BACKEND_DTYPES)}, got {backend!r}")
        if dtype is not None and dtype not in ("int8", "float32"):
            raise ValueError(f"dtype must be 'int8' or 'float32', got {dtype!r}")
        if backend == "native" and dtype == "float32":
            backend = "hnswlib"  # the native graph stores int8 codes; float32 storage is hnswlib's
        if dtype is None:
            dtype = _BACKEND_DTYPES[backend][0]  # type: ignore[assignment]
        if dtype not in _BACKEND_DTYPES[backend]:
            raise ValueError(f"backend {backend!r} stores {_BACKEND_DTYPES[backend][0]} vectors, not {dtype}")
        if rescore and backend != "native":
            raise ValueError("rescore=True needs the native backend (hnswlib already stores float32)")
        self.metric: Metric = metric
        self.dtype = dtype
        self.M = check_positive_int(M, "M")
        if self.M < 2:
            raise ValueError(f"M must be at least 2, got {M}")
        self.ef_construction = check_positive_int(ef_construction, "ef_construction")
        self.rescore = bool(rescore)
        self.backend = backend
        self.num_threads = _default_threads() if num_threads is None else check_positive_int(num_threads, "num_threads")
        self.ef = check_positive_int(ef, "ef")
        self.filter_brute_fraction = 0.02
        self.filter_walk_cost = 16.0
        if backend == "native":
            self._impl = _core().NativeIndex(
                self.dim, _METRICS[metric], self.M, self.ef_construction, self.rescore, isa or "", 0x5EED5EED,
                check_positive_int(train_size, "train_size"),
            )
        else:
            if isa is not None:
                raise ValueError("isa applies to the native backend only")
            self._impl = _make_backend(backend, self.dim, metric, self.M, self.ef_construction)
        self._next_id = 0

    # ------------------------------------------------------------------ info
    @property
    def isa(self) -> str:
        """Kernel in use: ``"avx512vnni"``, ``"avx2"`` or ``"scalar"`` (native), else the backend name."""
        return self._impl.isa if self.backend == "native" else self.backend

    @property
    def memory_bytes(self) -> int:
        """Bytes of index memory (memory-mapped sections excluded)."""
        return int(self._impl.memory_bytes) if self.backend == "native" else int(self._impl.memory_bytes())

    def __len__(self) -> int:
        return int(self._impl.size) if self.backend == "native" else len(self._impl)

    def __contains__(self, id_: Any) -> bool:
        try:
            ids = as_ids(id_, "id")
        except (TypeError, ValueError):
            return False
        return ids.size == 1 and bool(self.contains(ids)[0])

    def contains(self, ids: Any) -> np.ndarray:
        """Membership of each id.

        Parameters
        ----------
        ids : array-like of int, shape (n,)

        Returns
        -------
        np.ndarray of bool, shape (n,)
        """
        return np.asarray(self._impl.contains(as_ids(ids)), dtype=bool)

    def __repr__(self) -> str:
        return (
            f"Index(dim={self.dim}, metric={self.metric!r}, dtype={self.dtype!r}, backend={self.backend!r}, "
            f"len={len(self)}, isa={self.isa!r})"
        )

    # ------------------------------------------------------------------ writes
    def add(self, vectors: Any, ids: Any = None, attributes: Mapping[str, Any] | None = None) -> np.ndarray:
        """Add vectors; returns their ids.

        Parameters
        ----------
        vectors : array-like of shape (n, dim), float
            Any float width; converted to float32. A 1-D array of length
            ``dim`` is one vector.
        ids : array-like of int, shape (n,), optional
            Unsigned 64-bit ids, unique and not already in the index
            (2**64-1 is reserved). By default, ids continue from the largest
            id ever added.
        attributes : mapping of str to array-like of int, shape (n,), optional
            Small integer attributes to filter on (category, brand, seller),
            values in int32 except -2**31 (the "missing" marker that rows
            added without an attribute get). Map strings to ints first.
            Native backend only; saved with the index.

        Returns
        -------
        np.ndarray of uint64, shape (n,)

        Raises
        ------
        ValueError
            Wrong dimension, NaN/inf, zero vectors under cosine, ids of the
            wrong length, duplicate ids or ids already present. Nothing is
            added when a check fails.
        TypeError
            Non-float vectors or non-integer ids.
        """
        x = self._prepare(vectors, "vectors")
        n = x.shape[0]
        if ids is None:
            start = int(self._impl.next_auto_id) if self.backend == "native" else self._next_id
            if start + n >= 2**64 - 1:
                raise ValueError("automatic ids are exhausted; pass ids explicitly")
            id_arr = np.arange(start, start + n, dtype=np.uint64)
        else:
            id_arr = as_ids(ids, "ids", n)
        if n == 0:
            return id_arr
        if np.unique(id_arr).size != n:
            values, counts = np.unique(id_arr, return_counts=True)
            raise ValueError(f"ids contains duplicate id {int(values[counts > 1][0])}")
        present = self._impl.contains(id_arr)
        if np.any(present):
            raise ValueError(f"id {int(id_arr[np.argmax(present)])} is already in the index")
        if self.backend == "native":
            names, columns = _check_attributes(attributes, n)
            self._impl.add(x, id_arr, self.num_threads, names, columns)
        else:
            if attributes:
                raise ValueError("attributes need the native backend")
            self._impl.add(x, id_arr, self.num_threads)
        self._next_id = max(self._next_id, int(id_arr.max()) + 1)
        return id_arr

    def remove(self, ids: Any) -> None:
        """Remove ids. Removed ids are never returned; their slots are reused by later adds.

        Raises
        ------
        KeyError
            If any id is not in the index (nothing is removed then).
        ValueError
            If ids repeats an id.
        """
        id_arr = as_ids(ids)
        if id_arr.size == 0:
            return
        if np.unique(id_arr).size != id_arr.size:
            raise ValueError("ids contains duplicates")
        present = self._impl.contains(id_arr)
        if not np.all(present):
            missing = id_arr[~present]
            raise KeyError(f"unknown id {int(missing[0])}" + (f" (and {missing.size - 1} more)" if missing.size > 1 else ""))
        self._impl.remove(id_arr)

    # ------------------------------------------------------------------ reads
    def search(
        self, queries: Any, k: int = 10, ef: int | None = None, filter: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest neighbours of each query.

        Parameters
        ----------
        queries : array-like of shape (n, dim), float
            A 1-D array of length ``dim`` is one query.
        k : int, default 10
            Neighbours per query. May exceed ``len(self)``: rows are padded.
        ef : int, optional
            Candidate list size (at least k is used); larger is slower and
            more accurate. Defaults to ``self.ef``.
        filter : array-like of int, or mapping of str to int or list of int, optional
            Restrict results to allowed items: an array of allowed ids
            (unknown ids are ignored), or attribute conditions such as
            ``{"category": 7, "brand": [3, 9]}`` (one value or a list of
            allowed values per attribute; attributes combine with AND).
            Evaluated in C++ over per-value posting lists. When few items
            pass (below ``filter_brute_fraction``), or scanning the
            candidates costs fewer distance computations than a filtered
            graph walk would (``filter_walk_cost``, 16: the distance
            computations each entry of the walk's candidate list costs),
            the allowed items are scanned exactly over the codes; otherwise
            the graph is walked through every node with a candidate list
            widened to about ``ef / share`` (at most 16 ef), keeping only
            allowed ones. Rows get k results whenever k
            items pass; a filter nothing passes gives padded rows. Native
            backend only.

        Returns
        -------
        ids : np.ndarray of uint64, shape (n, k)
            Best first; ``2**64-1`` pads rows with fewer than k results.
        scores : np.ndarray of float32, shape (n, k)
            Similarity for cosine/ip (higher first), squared distance for l2
            (lower first); NaN where the id is padding.
        """
        k = check_positive_int(k, "k")
        ef = self.ef if ef is None else check_positive_int(ef, "ef")
        q = self._prepare(queries, "queries")
        if q.shape[0] == 0:
            return np.empty((0, k), dtype=np.uint64), np.empty((0, k), dtype=np.float32)
        if filter is not None:
            if self.backend != "native":
                raise ValueError("filter needs the native backend")
            allowed, conditions = _check_filter(filter)
            return self._impl.search_filtered(
                q, k, max(ef, k), self.rescore, self.num_threads, allowed, conditions, self.filter_brute_fraction,
                self.filter_walk_cost,
            )
        if self.backend == "native":
            ids, scores = self._impl.search(q, k, max(ef, k), self.rescore, self.num_threads)
        else:
            ids, scores = self._impl.search(q, k, max(ef, k), self.num_threads)
        return ids, scores

    def search_exact(self, queries: Any, k: int = 10, use_floats: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force search over the stored codes (or float originals).

        The reference for telling the recall lost to int8 codes from the
        recall lost to the graph. Native backend only. Same returns as ``search``.
        """
        if self.backend != "native":
            raise ValueError("search_exact needs the native backend")
        k = check_positive_int(k, "k")
        q = self._prepare(queries, "queries")
        if q.shape[0] == 0:
            return np.empty((0, k), dtype=np.uint64), np.empty((0, k), dtype=np.float32)
        return self._impl.search(q, k, k, bool(use_floats), self.num_threads, True)

    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored vectors (float32 originals when kept, else decoded from the codes).

        Returns
        -------
        np.ndarray of float32, shape (n, dim)
            Cosine indexes return the normalized vectors.

        Raises
        ------
        KeyError
            If any id is not in the index.
        """
        id_arr = as_ids(ids)
        present = self._impl.contains(id_arr)
        if not np.all(present):
            raise KeyError(f"unknown id {int(id_arr[~present][0])}")
        return np.asarray(self._impl.get_vectors(id_arr), dtype=np.float32)

    def compact(self) -> None:
        """Rebuild without removed items and give their memory back.

        Ids, attributes and the quantizer are kept; the graph is what a fresh
        build of the survivors gets. Other calls on this index wait while it
        runs. Native backend only.
        """
        if self.backend != "native":
            raise ValueError("compact needs the native backend")
        self._impl.compact(self.num_threads)

    @property
    def attribute_names(self) -> list[str]:
        """Names of the attributes stored with the vectors (native backend)."""
        return list(self._impl.attribute_names) if self.backend == "native" else []

    def ids(self) -> np.ndarray:
        """All live ids, shape (len(self),), uint64 (native backend)."""
        if self.backend != "native":
            raise ValueError("ids() needs the native backend")
        return self._impl.ids()

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename).

        The file starts with a versioned header and carries a checksum per
        section; nothing in it is pickled.
        """
        self._impl.save(os.fspath(path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        mmap: bool = False,
        *,
        dim: int | None = None,
        metric: Metric | None = None,
        verify: bool = True,
        num_threads: int | None = None,
        isa: str | None = None,
    ) -> Index:
        """Open an index saved by :meth:`save`.

        Parameters
        ----------
        path : path-like
        mmap : bool, default False
            Map the vectors and graph from the file instead of reading them
            into memory: opening is fast and pages load on first touch. A
            mapped index that grows copies itself into memory first.
        dim, metric : optional
            Expected dimension and metric; a file built otherwise raises.
        verify : bool, default True
            Check every section's checksum and every link (reads the whole
            file once). ``False`` skips that for instant opening of trusted files.

        Raises
        ------
        ValueError
            Foreign, truncated, corrupt or newer-version file; dim/metric mismatch.
        OSError
            The file cannot be read.
        """
        p = os.fspath(path)
        with open(p, "rb") as f:
            magic = f.read(8)
        self = cls.__new__(cls)
        if magic == _NATIVE_MAGIC:
            impl = _core().NativeIndex.load(p, bool(mmap), bool(verify), isa or "")
            self._impl = impl
            self.backend = "native"
            self.dtype = "int8"
            self.dim = int(impl.dim)
            self.metric = {v: k for k, v in _METRICS.items()}[int(impl.metric)]  # type: ignore[assignment]
            self.M = int(impl.M)
            self.ef_construction = int(impl.ef_construction)
            self.rescore = bool(impl.keep_floats)
        else:
            from simsearch import _fileio

            if magic != _fileio.MAGIC:
                raise ValueError(f"{p!r} is not a simsearch index file (bad magic)")
            self._impl = _load_backend(p, bool(mmap))
            self.backend = self._impl.name
            self.dtype = _BACKEND_DTYPES[self.backend][0]
            self.dim = int(self._impl.dim)
            self.metric = self._impl.metric
            self.M = int(self._impl.M)
            self.ef_construction = int(self._impl.ef_construction)
            self.rescore = False
        if dim is not None and self.dim != dim:
            raise ValueError(f"{p!r} holds an index of dimension {self.dim}, expected {dim}")
        if metric is not None and self.metric != metric:
            raise ValueError(f"{p!r} holds an index with metric {self.metric!r}, expected {metric!r}")
        self.num_threads = _default_threads() if num_threads is None else check_positive_int(num_threads, "num_threads")
        self.ef = 64
        self.filter_brute_fraction = 0.02
        self.filter_walk_cost = 16.0
        self._next_id = 0
        return self

    # ------------------------------------------------------------------ helpers
    def _prepare(self, x: Any, name: str) -> np.ndarray:
        arr = as_float_matrix(x, name, self.dim)
        # the native core normalizes for cosine itself (and refuses zero vectors)
        if self.metric == "cosine" and arr.shape[0] and self.backend != "native":
            norms = np.linalg.norm(arr, axis=1)
            if not np.all(norms > 0):
                raise ValueError(f"{name} row {int(np.argmin(norms > 0))} has zero norm; cosine is undefined for it")
            arr = arr / norms[:, None]
        return arr


_INT32_MIN = -(2**31)


def _check_attribute_values(name: str, values: Any, n: int | None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"attribute {name!r} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(
            f"attribute {name!r} has dtype {arr.dtype}; expected small integers (map strings to ints first)"
        )
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"attribute {name!r} has length {arr.shape[0]}, expected {n} (one per vector)")
    if arr.size and (arr.min() <= _INT32_MIN or arr.max() > 2**31 - 1):
        raise ValueError(f"attribute {name!r} has values outside -2**31+1 .. 2**31-1")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _check_attributes(attributes: Mapping[str, Any] | None, n: int) -> tuple[list[str], list[np.ndarray]]:
    if not attributes:
        return [], []
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping of name to integer array, got {type(attributes).__name__}")
    names, columns = [], []
    for name, values in attributes.items():
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"attribute names must be non-empty strings, got {name!r}")
        names.append(name)
        columns.append(_check_attribute_values(name, values, n))
    return names, columns


def _check_filter(filter: Any) -> tuple[np.ndarray | None, list[tuple[str, list[int]]]]:
    if isinstance(filter, Mapping):
        if not filter:
            raise ValueError("filter is an empty mapping; pass None for no filter")
        conditions = []
        for name, values in filter.items():
            if not isinstance(name, str):
                raise TypeError(f"filter keys must be attribute names, got {name!r}")
            if type(values) is int and -(2**31) < values < 2**31:  # the common case, without numpy
                conditions.append((name, [values]))
            else:
                conditions.append((name, _check_attribute_values(name, values, None).tolist()))
        return None, conditions
    return as_ids(filter, "filter"), []


def _make_backend(backend: str, dim: int, metric: str, M: int, ef_construction: int) -> Any:
    from simsearch.index import backends

    cls = backends.HnswlibBackend if backend == "hnswlib" else backends.FaissBackend
    return cls(dim, metric, M, ef_construction)


def _load_backend(path: str, mmap: bool) -> Any:
    from simsearch import _fileio
    from simsearch.index import backends

    name = _fileio.read_header(path).get("backend")
    if name == "hnswlib":
        return backends.HnswlibBackend.load(path, mmap=mmap)
    if name == "faiss":
        return backends.FaissBackend.load(path, mmap=mmap)
    raise ValueError(f"{path!r} names an unknown backend {name!r}")


__all__ = ["Index", "available_isas", "NO_ID"]
