"""``simsearch.Index``: one API over the native int8 HNSW and the hnswlib/faiss backends.

The facade checks what the user passes (shapes, dtypes, ids, ``k``, ``ef``,
attributes and filters) and hands the work to a backend through the protocol
of :mod:`simsearch.index.backends`; it never asks which backend it holds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from simsearch import _storage
from simsearch._validation import NO_ID, as_float_matrix, as_ids, check_ef, check_k, check_positive_int
from simsearch.errors import DimensionError, UnknownIdError
from simsearch.index.attributes import Filter
from simsearch.index.attributes import check_attributes as _check_attributes
from simsearch.index.attributes import check_filter as _check_filter
from simsearch.index.backends import Backend, make_backend, open_backend
from simsearch.index.container import DEFAULT_EF
from simsearch.index.ids import contains_one, ids_to_add, ids_to_remove
from simsearch.index.native import available_isas

Metric = Literal["cosine", "ip", "l2"]


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
        Saved with the index and read back by :meth:`load`.
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
    quantizer : Index or (lo, step), optional
        Native backend: start with these quantizer ranges, final (no
        training), instead of learning them. An :class:`Index` gives its
        own (:attr:`quantizer`); ``lo`` and ``step`` are float arrays of
        shape (dim,), finite, ``step > 0``. Indexes that share ranges give
        comparable int8 scores, which is how :class:`~simsearch.ShardedIndex`
        merges its shards' answers without losing recall.

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
        ef: int = DEFAULT_EF,
        isa: str | None = None,
        train_size: int = 20000,
        quantizer: Index | tuple[Any, Any] | None = None,
    ) -> None:
        M = check_positive_int(M, "M")
        if M < 2:
            raise ValueError(f"M must be at least 2, got {M}")
        impl = make_backend(
            backend,
            dtype,
            check_positive_int(dim, "dim"),
            metric,
            M,
            check_positive_int(ef_construction, "ef_construction"),
            ef=check_ef(ef),
            rescore=bool(rescore),
            isa=isa,
            train_size=check_positive_int(train_size, "train_size"),
        )
        self._setup(impl, num_threads)
        if isinstance(quantizer, Index):
            if quantizer.quantizer is None:
                raise ValueError(f"quantizer: the {quantizer.backend!r} index given has no int8 quantizer to copy")
            quantizer = quantizer.quantizer
        if quantizer is not None:
            self.set_quantizer(*quantizer)

    def _setup(self, impl: Backend, num_threads: int | None) -> None:
        self._impl = impl
        self.num_threads = _default_threads() if num_threads is None else check_positive_int(num_threads, "num_threads")
        #: Filtered search scans the allowed items exactly below this share of the index.
        self.filter_brute_fraction = 0.02
        #: Distance computations each entry of a filtered walk's candidate list is taken to cost.
        self.filter_walk_cost = 16.0

    # ------------------------------------------------------------------ info
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._impl.dim

    @property
    def metric(self) -> Metric:
        """``"cosine"``, ``"ip"`` or ``"l2"``."""
        return self._impl.metric  # type: ignore[return-value]

    @property
    def dtype(self) -> str:
        """How vectors are stored: ``"int8"`` (native, faiss) or ``"float32"`` (hnswlib)."""
        return self._impl.dtype

    @property
    def backend(self) -> str:
        """``"native"``, ``"hnswlib"`` or ``"faiss"``."""
        return self._impl.name

    @property
    def M(self) -> int:
        """Graph degree."""
        return self._impl.M

    @property
    def ef_construction(self) -> int:
        """Candidate list size while building."""
        return self._impl.ef_construction

    @property
    def ef(self) -> int:
        """Default search effort (``search(ef=...)`` overrides); saved with the index."""
        return self._impl.ef

    @ef.setter
    def ef(self, value: int) -> None:
        self._impl.ef = check_ef(value)

    @property
    def rescore(self) -> bool:
        """Whether searches re-rank candidates with the float32 originals (native, built with ``rescore=True``)."""
        return self._impl.rescore

    @rescore.setter
    def rescore(self, value: bool) -> None:
        self._impl.rescore = bool(value)

    @property
    def isa(self) -> str:
        """Kernel in use: ``"avx512vnni"``, ``"avx2"`` or ``"scalar"`` (native), else the backend name."""
        return self._impl.isa

    @property
    def memory_bytes(self) -> int:
        """Bytes of index memory (memory-mapped sections excluded)."""
        return self._impl.memory_bytes()

    def __len__(self) -> int:
        return len(self._impl)

    @property
    def quantizer(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The native int8 quantizer's ranges ``(lo, step)``: code ``c`` of dimension ``d`` decodes to
        ``lo[d] + step[d] * c``. Read-only float32 arrays of shape (dim,); None for other backends."""
        return getattr(self._impl, "quantizer", None)

    @property
    def quantizer_final(self) -> bool:
        """Whether the quantizer's ranges are frozen: ``train_size`` vectors seen, or set by :meth:`set_quantizer`."""
        return bool(getattr(self._impl, "quantizer_final", False))

    def set_quantizer(self, lo: Any, step: Any) -> None:
        """Install quantizer ranges, final (never retrained), on an index that has never held a vector.

        Parameters
        ----------
        lo, step : array-like of shape (dim,), float
            Per-dimension ranges, e.g. another index's :attr:`quantizer`;
            finite, ``step > 0``.

        Raises
        ------
        ValueError
            Another backend than native, a non-empty index, wrong lengths
            (:class:`DimensionError`), non-finite values or a step that is
            not positive.
        TypeError
            Non-float arrays.
        """
        install = getattr(self._impl, "set_quantizer", None)
        if install is None:
            raise ValueError(f"quantizer ranges apply to the native backend, not {self.backend!r}")
        arrays = []
        for name, value in (("lo", lo), ("step", step)):
            if np.shape(value) != (self.dim,):
                raise DimensionError(f"quantizer {name} has shape {np.shape(value)}, expected ({self.dim},)")
            arrays.append(as_float_matrix(value, f"quantizer {name}", self.dim)[0])
        if not np.all(arrays[1] > 0):
            raise ValueError(f"quantizer step must be positive, got {float(arrays[1][np.argmin(arrays[1] > 0)])}")
        install(np.ascontiguousarray(arrays[0]), np.ascontiguousarray(arrays[1]))

    def __contains__(self, id_: Any) -> bool:
        return contains_one(self.contains, id_)

    def contains(self, ids: Any) -> np.ndarray:
        """Whether each id is in the index (removed ids are not).

        Parameters
        ----------
        ids : array-like of int, shape (n,)
            Unsigned 64-bit ids; a scalar is one id.

        Returns
        -------
        np.ndarray of bool, shape (n,)
        """
        return self._impl.contains(as_ids(ids))

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
            (2**64-1, :data:`~simsearch._validation.NO_ID`, is reserved). By
            default, ids continue from the largest id ever added.
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
        DimensionError
            (a ``ValueError``) Vectors of the wrong dimension.
        DuplicateIdError
            (a ``ValueError``) Ids repeated in the batch or already present.
        ValueError
            NaN/inf, zero vectors under cosine, ids of the wrong length,
            attributes on a backend other than native. Nothing is added when
            a check fails.
        TypeError
            Non-float vectors or non-integer ids.
        """
        x = self._prepare(vectors, "vectors")
        n = x.shape[0]
        id_arr = ids_to_add(ids, n, self._impl.next_auto_id, self._impl.contains)
        if n == 0:
            return id_arr
        self._impl.add(x, id_arr, self.num_threads, _check_attributes(attributes, n))
        return id_arr

    def remove(self, ids: Any) -> None:
        """Remove ids. Removed ids are never returned; their slots are reused by later adds.

        Raises
        ------
        UnknownIdError
            (a ``KeyError``) If any id is not in the index (nothing is removed then).
        ValueError
            If ids repeats an id.
        """
        id_arr = ids_to_remove(ids)
        if id_arr.size == 0:
            return
        self._check_known(id_arr)
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
            Neighbours per query, at most 2**24. May exceed ``len(self)``:
            rows are padded.
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
            Best first; ``2**64-1`` (:data:`~simsearch._validation.NO_ID`)
            pads rows with fewer than k results.
        scores : np.ndarray of float32, shape (n, k)
            Similarity for cosine/ip (higher first), squared distance for l2
            (lower first); NaN where the id is padding.

        Raises
        ------
        DimensionError
            (a ``ValueError``) Queries of the wrong dimension.
        ValueError
            ``k`` or ``ef`` not positive or absurdly large, NaN/inf queries,
            a filter on a backend other than native.
        TypeError
            Non-integer ``k``/``ef``, non-float queries.
        """
        k = check_k(k)
        ef = self._search_ef(ef, k)
        q = self._prepare(queries, "queries")
        if q.shape[0] == 0:
            return _no_rows(k)
        if filter is None:
            return self._impl.search(q, k, ef, self.num_threads)
        checked = Filter(*_check_filter(filter), self.filter_brute_fraction, self.filter_walk_cost)
        return self._impl.search_filtered(q, k, ef, self.num_threads, checked)

    def search_exact(self, queries: Any, k: int = 10, use_floats: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force search over the stored codes (or, with ``use_floats``, the float originals).

        The reference for telling the recall lost to int8 codes from the
        recall lost to the graph. Native backend only; ``use_floats`` needs
        ``rescore=True``. Same returns as :meth:`search`.
        """
        k = check_k(k)
        q = self._prepare(queries, "queries")
        if q.shape[0] == 0:
            return _no_rows(k)
        return self._impl.search_exact(q, k, bool(use_floats), self.num_threads)

    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored vectors (float32 originals when kept, else decoded from the codes).

        Returns
        -------
        np.ndarray of float32, shape (n, dim)
            Cosine indexes return the normalized vectors.

        Raises
        ------
        UnknownIdError
            (a ``KeyError``) If any id is not in the index.
        """
        id_arr = as_ids(ids)
        self._check_known(id_arr)
        return self._impl.get_vectors(id_arr)

    def compact(self) -> None:
        """Rebuild without removed items and give their memory back.

        Ids, attributes and the quantizer are kept; the graph is what a fresh
        build of the survivors gets. Other calls on this index wait while it
        runs. Native backend only.
        """
        self._impl.compact(self.num_threads)

    @property
    def attribute_names(self) -> list[str]:
        """Names of the attributes stored with the vectors (native backend; empty otherwise)."""
        return self._impl.attribute_names

    def ids(self) -> np.ndarray:
        """All live ids, shape (len(self),), uint64."""
        return self._impl.ids()

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str], *, signing_key: str | bytes | None = None) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename).

        The file starts with a versioned header and carries a checksum per
        section; nothing in it is pickled.

        Parameters
        ----------
        path : path-like
        signing_key : str or bytes, optional
            Also write ``path + ".sig"``, an HMAC-SHA256 of the file under this
            key (default: ``$SIMSEARCH_SIGNING_KEY`` when set; unsigned
            otherwise). The checksums inside the file carry no key, so anyone
            can recompute them; a signature lets :meth:`load` refuse files
            not written by a holder of the key before parsing them.
        """
        key = _storage.signing_key(signing_key)
        self._impl.save(os.fspath(path))
        if key is not None:
            _storage.sign_file(path, key)

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
        signing_key: str | bytes | None = None,
    ) -> Index:
        """Open an index saved by :meth:`save`, with every saved field (``ef`` included).

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
            Check every section's checksum (reads the whole file once).
            ``False`` skips the checksums (and the finiteness scan of stored
            floats) only: the structural checks that keep a damaged or
            crafted file from crashing the process (sizes against the file
            length, ids, levels and every link in range, no overlapping
            sections) always run.
        num_threads : int, optional
            As for the constructor (not saved: it belongs to the machine).
        isa : str, optional
            As for the constructor (native files only).
        signing_key : str or bytes, optional
            Refuse the file unless ``path + ".sig"`` is a valid HMAC of it
            under this key, checked before the file is parsed (default:
            ``$SIMSEARCH_SIGNING_KEY`` when set; no check otherwise).

        Raises
        ------
        SignatureError
            (a ``CorruptFileError``) A signing key is set and the file is
            unsigned or its signature does not match.
        CorruptFileError
            (a ``ValueError``) Foreign, truncated, corrupt or newer-version file.
        DimensionError
            (a ``ValueError``) The file's dimension is not ``dim``.
        ValueError
            The file's metric is not ``metric``.
        OSError
            The file cannot be read.
        """
        p = os.fspath(path)
        key = _storage.signing_key(signing_key)
        if key is not None:
            _storage.verify_signature(p, key)
        self = cls.__new__(cls)
        self._setup(open_backend(p, mmap=bool(mmap), verify=bool(verify), isa=isa), num_threads)
        if dim is not None and self.dim != dim:
            raise DimensionError(f"{p!r} holds an index of dimension {self.dim}, expected {dim}")
        if metric is not None and self.metric != metric:
            raise ValueError(f"{p!r} holds an index with metric {self.metric!r}, expected {metric!r}")
        return self

    # ------------------------------------------------------------------ helpers
    def _prepare(self, x: Any, name: str) -> np.ndarray:
        # float32 (n, dim); the backend normalizes for cosine itself
        return as_float_matrix(x, name, self.dim)

    def _search_ef(self, ef: int | None, k: int) -> int:
        """The one place ``ef`` is checked and clamped: at least ``k``, or the walk returns fewer."""
        return max(self.ef if ef is None else check_ef(ef), k)

    def _check_known(self, ids: np.ndarray) -> None:
        present = self._impl.contains(ids)
        if not np.all(present):
            missing = ids[~present]
            more = f" (and {missing.size - 1} more)" if missing.size > 1 else ""
            raise UnknownIdError(f"unknown id {int(missing[0])}{more}")


def _no_rows(k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((0, k), dtype=np.uint64), np.empty((0, k), dtype=np.float32)


__all__ = ["NO_ID", "Index", "available_isas"]
