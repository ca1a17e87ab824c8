"""Which CPU path a :class:`~simsearch.TextEncoder` runs, chosen for the CPU at hand.

A *path* names the runtime, the precision and the matrix instructions that
do the work:

=================  ===========  =========================================================
path               runtime      runs where
=================  ===========  =========================================================
``openvino-bf16``  OpenVINO     the CPU has AVX512_BF16 or AMX-BF16 (bf16 matmuls)
``ort-int8-amx``   onnxruntime  AMX-INT8: MLAS sends the u8 x s8 matmuls to AMX tiles
``ort-int8-vnni``  onnxruntime  AVX512-VNNI or AVX-VNNI integer dot products
``ort-int8-avx2``  onnxruntime  any x86-64 CPU with AVX2
``ort-fp32``       onnxruntime  everywhere: the reference
=================  ===========  =========================================================

The default is the first of ``openvino-bf16`` and ``ort-int8-*`` that the CPU
(and the installed packages) can run. Measured on one core of a 2-core Zen 4
Xeon (AVX512-VNNI and AVX512_BF16, no AMX), 2,000 PriceRunner titles, batch 32,
titles per CPU-second: onnxruntime fp32 195, onnxruntime int8 (this package's
recipe) 318 at mean cosine 0.9962 to fp32, OpenVINO bf16 372 at 0.99998.
OpenVINO bf16 is both faster and the only path within the quality bar (mean
cosine >= 0.998, top-10 neighbours >= 0.97), so it leads wherever bf16
matmuls exist. Without them the int8 graph is the fast path (onnxruntime has
no bf16 kernels, and OpenVINO's fp32 measured the same as onnxruntime's).

``TextEncoder(path=...)`` or the environment variable
``SIMSEARCH_ENCODER_PATH`` forces a path, e.g. to compare them; a path the CPU
cannot run is refused rather than silently emulated.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

PATH_ENV = "SIMSEARCH_ENCODER_PATH"
PATHS = ("openvino-bf16", "ort-int8-amx", "ort-int8-vnni", "ort-int8-avx2", "ort-fp32")
_PRECISION = {"openvino-bf16": "bf16", "ort-fp32": "fp32"}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as ``/proc/cpuinfo`` spells them (``avx2``, ``avx512_vnni``, ``amx_int8``...).

    Returns
    -------
    frozenset of str
        Empty where ``/proc/cpuinfo`` cannot be read (not Linux); the paths
        then fall back to what numpy's CPU dispatch reports.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:  # numpy names the same features in upper case
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # pragma: no cover - numpy < 2
        return frozenset()
    return frozenset(name.lower() for name, on in __cpu_features__.items() if on)


def int8_path(flags: frozenset[str] | None = None) -> str:
    """The onnxruntime int8 path of this CPU: ``ort-int8-amx``, ``-vnni`` or ``-avx2``."""
    flags = cpu_flags() if flags is None else flags
    if {"amx_tile", "amx_int8"} <= flags:
        return "ort-int8-amx"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "ort-int8-vnni"
    return "ort-int8-avx2"


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU has bf16 matmul instructions (AVX512_BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return "avx512_bf16" in flags or "amx_bf16" in flags


def openvino_installed() -> bool:
    """True if the ``openvino`` package can be imported."""
    return importlib.util.find_spec("openvino") is not None


def available_paths() -> tuple[str, ...]:
    """The paths this CPU and the installed packages can run, fastest first."""
    fast = ("openvino-bf16",) if has_bf16() and openvino_installed() else ()
    return fast + (int8_path(), "ort-fp32")


def path_precision(path: str) -> str:
    """The precision a path computes in: ``bf16``, ``int8`` or ``fp32``."""
    return _PRECISION.get(path, "int8")


def choose_path(path: str | None, precision: str | None) -> str:
    """The path an encoder on ``backend="cpu"`` runs.

    Parameters
    ----------
    path : str or None
        A forced path (one of :data:`PATHS`); ``None`` reads
        ``$SIMSEARCH_ENCODER_PATH`` when ``precision`` is also ``None``, else
        chooses.
    precision : {"int8", "fp32", "bf16"} or None
        ``None``: the fastest available path. Otherwise the path of that
        precision on this CPU (``int8`` gives ``ort-int8-<isa>``).

    Returns
    -------
    str
        One of :data:`PATHS`.

    Raises
    ------
    ValueError
        If the path is unknown, does not compute in ``precision``, or cannot
        run here (no bf16 instructions, no openvino, another int8 ISA).
    """
    if path is None and precision is None:
        path = os.environ.get(PATH_ENV) or None
    available = available_paths()
    if path is None:
        if precision is None:
            return available[0]
        if precision == "bf16":
            path = "openvino-bf16"
        else:
            return int8_path() if precision == "int8" else "ort-fp32"
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if precision is not None and path_precision(path) != precision:
        raise ValueError(f"path {path!r} computes in {path_precision(path)}, not precision {precision!r}")
    if path not in available:
        if path == "openvino-bf16" and has_bf16() and not openvino_installed():
            why = "the openvino package is not installed (pip install openvino)"
        elif path == "openvino-bf16":
            why = "this CPU has no bf16 matmul instructions (AVX512_BF16 or AMX-BF16)"
        else:
            why = f"this CPU's int8 path is {int8_path()!r}"
        raise ValueError(f"path {path!r} cannot run here: {why}; available: {available}")
    return path
