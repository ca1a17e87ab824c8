"""The native int8 HNSW index (the compiled ``simsearch._core``) behind the backend protocol.

The binding speaks C++'s dialect: a ``size`` property instead of ``len()``,
``memory_bytes`` as a property, metrics as integer codes, ``rescore`` passed
on every search, and one ``search(queries, k, ef, rescore, num_threads,
exact)`` whose ``rescore`` slot means "score with the float originals" when
``exact`` is set. :class:`NativeBackend` translates once, here, so that
:class:`simsearch.Index` treats it like the backends of
:mod:`simsearch.index.backends`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from simsearch.index.attributes import Attributes, Filter
from simsearch.index.container import DEFAULT_EF

#: The binding's integer code of each metric.
METRIC_CODES = {"cosine": 0, "ip": 1, "l2": 2}
_METRIC_NAMES = {code: name for name, code in METRIC_CODES.items()}
_SEED = 0x5EED5EED
#: The first 8 bytes of a native index file.
MAGIC = b"SIMSIDX1"


def _core() -> Any:
    # Imported on first use, so that ``import simsearch`` works without the compiled extension.
    from simsearch import _core

    return _core


def available_isas() -> list[str]:
    """Kernels this CPU can run, best first (e.g. ``["avx512vnni", "avx2", "scalar"]``)."""
    return list(_core().available_isas())


def train_quantizer(vectors: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Quantizer ranges learned from ``vectors`` exactly as a native index learns them.

    Parameters
    ----------
    vectors : np.ndarray of shape (n, dim), float32, C-contiguous, n >= 1
        The sample (checked by the caller); ``cosine`` rows are normalized first.
    metric : {"cosine", "ip", "l2"}

    Returns
    -------
    lo, step : np.ndarray of shape (dim,), float32
        Per dimension, code ``c`` decodes to ``lo + step * c``.
    """
    lo, step = _core().train_quantizer(vectors, METRIC_CODES[metric])
    return lo, step


class NativeBackend:
    """The native int8 HNSW graph, speaking the backend protocol.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : {"cosine", "ip", "l2"}
        The core normalizes ``cosine`` vectors and queries itself (in double).
    M, ef_construction : int
        Graph degree and build-time candidate list size.
    ef : int, default 64
        Default search effort.
    rescore : bool, default False
        Keep float32 originals and re-rank the candidates with them.
    isa : str or None
        Kernel; None reads ``SIMSEARCH_ISA``, else picks the best this CPU runs.
    train_size : int, default 20000
        Vectors the quantizer learns its ranges from.
    """

    name: ClassVar[str] = "native"
    dtype: ClassVar[str] = "int8"

    def __init__(
        self,
        dim: int,
        metric: str,
        M: int,
        ef_construction: int,
        *,
        ef: int = DEFAULT_EF,
        rescore: bool = False,
        isa: str | None = None,
        train_size: int = 20000,
    ) -> None:
        core = _core().NativeIndex(
            dim, METRIC_CODES[metric], M, ef_construction, bool(rescore), isa or "", _SEED, train_size
        )
        self._init(core, ef)

    def _init(self, core: Any, ef: int) -> None:
        self.core = core  #: the binding's ``NativeIndex`` (for tests and diagnostics)
        self.rescore = bool(core.keep_floats)
        self.ef = ef

    @classmethod
    def load(cls, path: str, *, mmap: bool = False, verify: bool = True) -> NativeBackend:
        """Open a native index file; the kernel is chosen afterwards with :meth:`set_isa`.

        Raises
        ------
        ValueError
            If the file is foreign, truncated, corrupt or newer.
        OSError
            If it cannot be read.
        """
        self = cls.__new__(cls)
        # The scalar kernel runs everywhere, so a ValueError from this call is about the file.
        core = _core().NativeIndex.load(path, bool(mmap), bool(verify), "scalar")
        # The file stores the default search effort (files older than that field give 64).
        self._init(core, int(core.ef))
        return self

    # --------------------------------------------------------------- info
    @property
    def ef(self) -> int:
        """Default search effort, kept by the binding and saved in the file's header."""
        return int(self.core.ef)

    @ef.setter
    def ef(self, value: int) -> None:
        self.core.ef = int(value)

    @property
    def dim(self) -> int:
        return int(self.core.dim)

    @property
    def metric(self) -> str:
        return _METRIC_NAMES[int(self.core.metric)]

    @property
    def M(self) -> int:
        return int(self.core.M)

    @property
    def ef_construction(self) -> int:
        return int(self.core.ef_construction)

    @property
    def isa(self) -> str:
        """The kernel in use: ``"avx512vnni"``, ``"avx2"`` or ``"scalar"``."""
        return str(self.core.isa)

    def set_isa(self, isa: str | None) -> None:
        """Switch kernels; None reads ``SIMSEARCH_ISA``, else picks the best this CPU runs."""
        self.core.set_isa(isa or "")

    @property
    def attribute_names(self) -> list[str]:
        return list(self.core.attribute_names)

    @property
    def next_auto_id(self) -> int:
        """One past the largest id ever added (stored in the file)."""
        return int(self.core.next_auto_id)

    def __len__(self) -> int:
        return int(self.core.size)

    @property
    def quantizer(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-dimension ranges ``(lo, step)``, float32 arrays of shape (dim,), read-only copies."""
        lo, step = self.core.quantizer_param(False), self.core.quantizer_param(True)
        lo.flags.writeable = False
        step.flags.writeable = False
        return lo, step

    @property
    def quantizer_final(self) -> bool:
        """Whether the ranges are frozen (``train_size`` vectors seen, or installed by :meth:`set_quantizer`)."""
        return bool(self.core.quantizer_final)

    def set_quantizer(self, lo: np.ndarray, step: np.ndarray) -> None:
        """Install ranges as final on an index that has never held a vector.

        ``lo`` and ``step`` are float32 C-contiguous arrays of shape (dim,);
        the core refuses non-finite values, a step that is not positive
        (``ValueError``) and a non-empty index (``ValueError``).
        """
        self.core.set_quantizer(lo, step)

    def memory_bytes(self) -> int:
        """Bytes of index memory (memory-mapped sections excluded)."""
        return int(self.core.memory_bytes)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.core.contains(ids), dtype=bool)

    def ids(self) -> np.ndarray:
        return self.core.ids()

    # --------------------------------------------------------------- work
    def add(self, vectors: np.ndarray, ids: np.ndarray, num_threads: int, attributes: Attributes | None = None) -> None:
        names, columns = attributes or ([], [])
        self.core.add(vectors, ids, num_threads, names, columns)

    def search(self, queries: np.ndarray, k: int, ef: int, num_threads: int) -> tuple[np.ndarray, np.ndarray]:
        return self.core.search(queries, k=k, ef=ef, rescore=self.rescore, num_threads=num_threads)

    def search_filtered(
        self, queries: np.ndarray, k: int, ef: int, num_threads: int, filter: Filter
    ) -> tuple[np.ndarray, np.ndarray]:
        f = filter
        return self.core.search_filtered(
            queries, k, ef, self.rescore, num_threads, f.allowed, f.conditions, f.brute_fraction, f.walk_cost
        )

    def search_exact(
        self, queries: np.ndarray, k: int, use_floats: bool, num_threads: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # In exact mode the binding's ``rescore`` argument picks float originals over codes.
        return self.core.search(queries, k=k, ef=k, rescore=bool(use_floats), num_threads=num_threads, exact=True)

    def remove(self, ids: np.ndarray) -> None:
        self.core.remove(ids)

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.core.get_vectors(ids), dtype=np.float32)

    def compact(self, num_threads: int) -> None:
        self.core.compact(num_threads)

    def save(self, path: str) -> None:
        """Write the index atomically (the core's own versioned, checksummed format)."""
        self.core.save(path)
