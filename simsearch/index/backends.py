"""What an index backend is, which backends exist, and how one is made or opened.

:class:`simsearch.Index` validates the user's input, assigns ids and hands
the raw work to a backend, without asking which one it holds. Every backend
meets :class:`Backend`:

- :class:`~simsearch.index.native.NativeBackend`: the native int8 HNSW
  (``simsearch._core``), adapted to this protocol;
- :class:`~simsearch.index.hnswlib_backend.HnswlibBackend`: hnswlib's float32 HNSW;
- :class:`~simsearch.index.faiss_backend.FaissBackend`: faiss's HNSW over 8-bit
  scalar-quantized codes.

The last two share :class:`~simsearch.index.container.ContainerBackend`
and save into the container of :mod:`simsearch._fileio` (magic
``b"SIMSPY01"``); the native index has its own file (magic ``b"SIMSIDX1"``).
:func:`open_backend` tells them apart by the first 8 bytes.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, ClassVar, Protocol

import numpy as np

from simsearch import _fileio
from simsearch._validation import NO_ID
from simsearch.errors import CorruptFileError
from simsearch.index.attributes import Attributes, Filter
from simsearch.index.container import METRICS
from simsearch.index.faiss_backend import FaissBackend
from simsearch.index.hnswlib_backend import HnswlibBackend
from simsearch.index.native import MAGIC as NATIVE_MAGIC
from simsearch.index.native import NativeBackend

__all__ = ["BACKENDS", "Backend", "FaissBackend", "HnswlibBackend", "NativeBackend", "make_backend", "open_backend"]


class Backend(Protocol):
    """The protocol every backend meets; inputs are trusted (the facade checks them).

    Arrays in are C-contiguous: vectors and queries float32 ``(n, dim)`` (not
    yet normalized: a cosine backend normalizes them itself), ids uint64
    ``(n,)``, unique, new and not :data:`~simsearch._validation.NO_ID`, and
    ``ef >= k``. Searches return ``(ids, scores)``: uint64 and float32
    ``(n, k)``, best first, similarity for cosine/ip (higher first) and
    squared L2 for l2 (lower first); missing results are ``NO_ID`` with
    score NaN; removed ids never come back.
    """

    name: ClassVar[str]  #: ``"native"``, ``"hnswlib"`` or ``"faiss"``
    dtype: ClassVar[str]  #: how vectors are stored: ``"int8"`` or ``"float32"``
    ef: int  #: default search effort, saved with the index
    rescore: bool  #: re-rank with float originals (native only; True elsewhere raises)

    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def M(self) -> int: ...
    @property
    def ef_construction(self) -> int: ...
    @property
    def isa(self) -> str: ...
    @property
    def attribute_names(self) -> list[str]: ...
    @property
    def next_auto_id(self) -> int: ...
    def set_isa(self, isa: str | None) -> None: ...
    def __len__(self) -> int: ...
    def contains(self, ids: np.ndarray) -> np.ndarray: ...
    def ids(self) -> np.ndarray: ...
    def memory_bytes(self) -> int: ...
    def add(self, vectors: np.ndarray, ids: np.ndarray, num_threads: int, attributes: Attributes | None = None) -> None:
        """``attributes``: as :func:`~simsearch.index.attributes.check_attributes` returns them (native only)."""
    def search(self, queries: np.ndarray, k: int, ef: int, num_threads: int) -> tuple[np.ndarray, np.ndarray]: ...
    def search_filtered(
        self, queries: np.ndarray, k: int, ef: int, num_threads: int, filter: Filter
    ) -> tuple[np.ndarray, np.ndarray]:
        """Only ``filter``'s allowed items; native only (the others raise ``ValueError``)."""
    def search_exact(
        self, queries: np.ndarray, k: int, use_floats: bool, num_threads: int
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def remove(self, ids: np.ndarray) -> None: ...
    def get_vectors(self, ids: np.ndarray) -> np.ndarray: ...
    def compact(self, num_threads: int) -> None: ...
    def save(self, path: str) -> None: ...


#: Every backend by name.
BACKENDS: dict[str, Any] = {cls.name: cls for cls in (NativeBackend, HnswlibBackend, FaissBackend)}


def backend_class(backend: str, dtype: str | None) -> Any:
    """The backend class for ``backend`` and ``dtype`` (``None``: the backend's own).

    ``dtype="float32"`` with the native backend selects hnswlib: the native
    graph stores int8 codes.

    Raises
    ------
    ValueError
        For an unknown backend or dtype, or a dtype the backend does not store.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    if dtype is not None and dtype not in ("int8", "float32"):
        raise ValueError(f"dtype must be 'int8' or 'float32', got {dtype!r}")
    if backend == "native" and dtype == "float32":
        backend = "hnswlib"
    cls = BACKENDS[backend]
    if dtype is not None and dtype != cls.dtype:
        raise ValueError(f"backend {backend!r} stores {cls.dtype} vectors, not {dtype}")
    return cls


def make_backend(
    backend: str, dtype: str | None, dim: int, metric: str, M: int, ef_construction: int, **options: Any
) -> Backend:
    """A new, empty backend; ``options`` are ``ef``, ``rescore``, ``isa`` and ``train_size``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return backend_class(backend, dtype)(dim, metric, M, ef_construction, **options)


def open_backend(path: str | os.PathLike[str], *, mmap: bool, verify: bool, isa: str | None) -> Backend:
    """Open any index file :meth:`Backend.save` wrote, telling the formats apart by their magic.

    Raises
    ------
    CorruptFileError
        (a ``ValueError``) For a foreign, truncated, damaged or crafted file.
    ValueError
        For an ``isa`` this CPU cannot run, or one given for a non-native file.
    OSError
        If the file cannot be read.
    """
    p = os.fspath(path)
    with open(p, "rb") as f:
        magic = f.read(8)
    try:
        if magic == NATIVE_MAGIC:
            cls: Any = NativeBackend
        elif magic == _fileio.MAGIC:
            name = _fileio.read_header(p).get("backend")
            cls = BACKENDS.get(name) if name != NativeBackend.name else None
            if cls is None:
                raise CorruptFileError(f"{p!r} names an unknown backend {name!r}")
        else:
            raise CorruptFileError(f"{p!r} is not a simsearch index file (it starts with {magic!r})")
        impl = cls.load(p, mmap=mmap, verify=verify)
    except CorruptFileError:
        raise
    except ValueError as err:  # the readers' own words, under the one type for bad files
        raise CorruptFileError(str(err)) from err
    impl.set_isa(isa)
    return impl


def __getattr__(name: str) -> Any:
    if name == "MISSING_ID":
        warnings.warn(
            "simsearch.index.backends.MISSING_ID is deprecated; use simsearch._validation.NO_ID",
            DeprecationWarning,
            stacklevel=2,
        )
        return NO_ID
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
