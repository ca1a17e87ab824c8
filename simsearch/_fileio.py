"""A small, checksummed container for index files written from Python.

The hnswlib and faiss backends (and any other Python-side saver) store their
state in this container; the native index has its own C++ format (magic
``b"SIMSIDX1"``), and :meth:`simsearch.Index.load` tells the two apart by the
first 8 bytes.

Layout, all integers little-endian::

    offset 0   magic            8 bytes, MAGIC = b"SIMSPY01"
    offset 8   header_length    uint64
    offset 16  header_crc32     uint32, CRC-32 of the header bytes
    offset 20  reserved         uint32, zero
    offset 24  header           header_length bytes of UTF-8 JSON
               padding          zeros up to a multiple of ALIGNMENT
               sections         raw bytes, each starting on a multiple of ALIGNMENT

The JSON header holds the caller's fields (backend, metric, dim, ...) plus
``format_version`` and ``sections``: a list of ``{"name", "offset", "length",
"dtype", "shape", "crc32"}`` with ``dtype`` in NumPy's string form (``"<f4"``).
Sections are plain numeric arrays: nothing is pickled, and object or structured
dtypes are refused both ways. The alignment lets :func:`read_container` return
``np.memmap`` views whose rows start on cache-line boundaries.

Saving is atomic (:func:`simsearch._storage.atomic_write`): the file is
written beside its destination under a unique temporary name, ``fsync``-ed,
renamed over the destination and the folder is ``fsync``-ed, so a crash
leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from simsearch._storage import atomic_write
from simsearch.errors import CorruptFileError, FormatVersionError

MAGIC = b"SIMSPY01"
FORMAT_VERSION = 1
ALIGNMENT = 64

_PREFIX = struct.Struct("<8sQII")  # magic, header_length, header_crc32, reserved
_RESERVED_KEYS = ("format_version", "sections")
_ALLOWED_KINDS = "biuf"  # bool, signed, unsigned, float: no objects, no records
_CRC_CHUNK = 16 << 20


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _as_section_array(name: str, value: np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.frombuffer(value, dtype=np.uint8)
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"section {name!r} must be a numpy array or bytes, got {type(value).__name__}"
        )
    if value.dtype.kind not in _ALLOWED_KINDS or value.dtype.fields is not None:
        raise TypeError(
            f"section {name!r} has dtype {value.dtype}; only bool, integer and float "
            "arrays can be stored"
        )
    return np.ascontiguousarray(value)


def _crc32(buf: np.ndarray) -> int:
    flat = buf.reshape(-1).view(np.uint8)
    crc = 0
    for start in range(0, flat.size, _CRC_CHUNK):
        crc = zlib.crc32(flat[start : start + _CRC_CHUNK], crc)
    return crc




def write_container(
    path: str | os.PathLike[str],
    header: Mapping[str, Any],
    sections: Mapping[str, np.ndarray | bytes],
) -> None:
    """Write a header and named arrays to ``path``, atomically.

    Parameters
    ----------
    path : str or path-like
        Destination. An existing file there is replaced only once the new one
        is complete and on disk.
    header : mapping
        JSON-serializable fields describing the content (e.g. ``backend``,
        ``metric``, ``dim``). The keys ``format_version`` and ``sections`` are
        reserved: the container fills them in.
    sections : mapping of str to ndarray or bytes
        Named payloads, written in the given order. Arrays keep their dtype and
        shape (bool, integer or float only); bytes come back as uint8 arrays.

    Raises
    ------
    ValueError
        If ``header`` uses a reserved key.
    TypeError
        If ``header`` is not JSON-serializable or a section is not a plain
        numeric array or bytes.
    OSError
        If the file cannot be written; the destination is left untouched.
    """
    clash = [key for key in _RESERVED_KEYS if key in header]
    if clash:
        raise ValueError(f"header keys {clash} are reserved for the container")
    arrays = {name: _as_section_array(name, value) for name, value in sections.items()}

    # Offsets depend on the header's length, which depends on the offsets' digits:
    # lay the sections out relative to the data start, then move the start
    # until the header fits in front of it.
    entries, relative, rel = [], [], 0
    for name, arr in arrays.items():
        relative.append(rel)
        entries.append(
            {
                "name": name,
                "offset": rel,
                "length": int(arr.nbytes),
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "crc32": _crc32(arr),
            }
        )
        rel = _align(rel + arr.nbytes)
    full: dict[str, Any] = {"format_version": FORMAT_VERSION, **header, "sections": entries}
    data_start = 0
    while True:
        for entry, r in zip(entries, relative):
            entry["offset"] = data_start + r
        try:
            blob = json.dumps(full, sort_keys=True).encode("utf-8")
        except TypeError as err:
            raise TypeError(f"header is not JSON-serializable: {err}") from err
        needed = _align(_PREFIX.size + len(blob))
        if needed <= data_start:
            break
        data_start = needed

    with atomic_write(path, "wb") as f:
        f.write(_PREFIX.pack(MAGIC, len(blob), zlib.crc32(blob), 0))
        f.write(blob)
        for entry, arr in zip(entries, arrays.values()):
            f.write(b"\0" * (entry["offset"] - f.tell()))
            f.write(arr.reshape(-1).view(np.uint8).data)


def _corrupt(path: str, what: str) -> CorruptFileError:
    return CorruptFileError(f"corrupt simsearch index file {path!r}: {what}")


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a container's header without touching its sections.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    header : dict
        The JSON header, ``format_version`` and ``sections`` included.

    Raises
    ------
    CorruptFileError
        If the file is not a simsearch container, or its header is truncated
        or fails its checksum (a ``ValueError``).
    FormatVersionError
        If it was written by a newer format version (a ``CorruptFileError``).
    OSError
        If the file cannot be opened.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _read_header(f, path, os.fstat(f.fileno()).st_size)


def _read_header(f: Any, path: str, size: int) -> dict[str, Any]:
    prefix = f.read(_PREFIX.size)
    if prefix[: len(MAGIC)] != MAGIC:
        raise CorruptFileError(
            f"{path!r} is not a simsearch index file (it starts with {prefix[:8]!r}, "
            f"expected {MAGIC!r})"
        )
    if len(prefix) < _PREFIX.size:
        raise _corrupt(path, f"truncated: {size} bytes, too short for the file header")
    _, header_length, header_crc, _ = _PREFIX.unpack(prefix)
    if _PREFIX.size + header_length > size:
        raise _corrupt(
            path, f"truncated: the header needs {header_length} bytes, the file has {size}"
        )
    blob = f.read(header_length)
    if zlib.crc32(blob) != header_crc:
        raise _corrupt(path, "header checksum mismatch")
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(path, f"header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    version = header.get("format_version")
    if not isinstance(version, int):
        raise _corrupt(path, "header has no format_version")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path!r} was written in simsearch container format version {version}; "
            f"this simsearch reads versions up to {FORMAT_VERSION}: upgrade simsearch to load it"
        )
    _check_sections(header, path, size)
    return header


def _check_sections(header: dict[str, Any], path: str, size: int) -> None:
    sections = header.get("sections")
    if not isinstance(sections, list):
        raise _corrupt(path, "header has no section table")
    for entry in sections:
        try:
            name = str(entry["name"])
            offset, length = int(entry["offset"]), int(entry["length"])
            dtype = np.dtype(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            int(entry["crc32"])
        except (KeyError, TypeError, ValueError) as err:
            raise _corrupt(path, f"malformed section entry {entry!r}") from err
        if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
            raise _corrupt(path, f"section {name!r} has unsupported dtype {dtype}")
        if offset < 0 or length < 0 or any(s < 0 for s in shape):
            raise _corrupt(path, f"section {name!r} has a negative offset, length or shape")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != length:
            raise _corrupt(path, f"section {name!r}: shape {shape} does not match {length} bytes")
        if offset + length > size:
            raise _corrupt(
                path,
                f"truncated: section {name!r} ends at byte {offset + length}, "
                f"the file has {size} bytes",
            )


def _file_crc32(f: Any, offset: int, length: int) -> int:
    # Read through the file, not through a memory map, so checking a large
    # mmap-ed section does not make all of its pages resident in this process.
    f.seek(offset)
    crc, left = 0, length
    while left:
        chunk = f.read(min(_CRC_CHUNK, left))
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    return crc


def read_container(
    path: str | os.PathLike[str], mmap: bool = False, verify: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by :func:`write_container`.

    Parameters
    ----------
    path : str or path-like
    mmap : bool, default False
        If True, sections are read-only ``np.memmap`` views of the file, paged
        in on first touch, instead of arrays read into memory.
    verify : bool, default True
        Check every section's CRC-32. Checking streams the whole file once,
        also with ``mmap=True`` (the pages stay in the OS cache, not in this
        process's memory); pass False to skip it for a very large file that
        is known to be intact.

    Returns
    -------
    header : dict
        The JSON header, ``format_version`` and ``sections`` included.
    sections : dict of str to ndarray
        Each section with its saved dtype and shape; sections saved from bytes
        are uint8 of shape ``(n_bytes,)``.

    Raises
    ------
    CorruptFileError
        (a ``ValueError``) ``"not a simsearch index file"`` for a foreign
        file; :class:`FormatVersionError` for a newer ``format_version`` (the
        message names both versions); ``"corrupt
        ..."`` for a truncated file, a malformed header or a section whose
        checksum does not match (the message names the section).
    OSError
        If the file cannot be opened or read.
    """
    path = os.fspath(path)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = _read_header(f, path, size)
        for entry in header["sections"]:
            name, offset, length = entry["name"], int(entry["offset"]), int(entry["length"])
            dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
            if verify and _file_crc32(f, offset, length) != int(entry["crc32"]):
                raise _corrupt(path, f"section {name!r} checksum mismatch")
            if length == 0:
                out[name] = np.empty(shape, dtype=dtype)
            elif mmap:
                out[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
            else:
                arr = np.empty(shape, dtype=dtype)
                f.seek(offset)
                if f.readinto(arr.reshape(-1).view(np.uint8).data) != length:
                    raise _corrupt(path, f"truncated while reading section {name!r}")
                out[name] = arr
    return header, out
