"""The on-disk state of a :class:`~simsearch.Deduplicator`: versioned folders behind a pointer.

Layout of a state folder ``ROOT``::

    ROOT/CURRENT              "v000007 <sha256 of v000007/manifest.json>"
    ROOT/v000007/manifest.json  format, format_version and the sha256 of each file
    ROOT/v000007/state.ssc      checksummed container: header (JSON) and arrays
    ROOT/v000007/items.parquet  item ids (and titles)
    ROOT/v000007/vocabulary.parquet  n-gram vocabulary (titles with lexical scoring)
    ROOT/v000007/index.ssi      the index

:func:`save_state` builds the next version folder with
:func:`~simsearch._storage.atomic_dir` (every file fsync-ed, the folder
renamed into place), then swaps ``CURRENT`` with
:func:`~simsearch._storage.atomic_write` and deletes older versions. A save
interrupted at any point leaves the previous version in place and readable.
Nothing is unpickled on load.

Format versions: 1 wrote the manifest as ``{"kind", "format_version",
"files"}``; 2 writes it with :func:`~simsearch._storage.write_manifest`
(``format`` and ``checksums``; ``kind`` kept, so a version-1 reader says
"upgrade"); 3 adds ``hashed_projection`` to the saved scoring (absent before:
the vocabulary-drawn projection of those states). All three are read.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _fileio, _storage, _tables
from simsearch.errors import CorruptFileError, MissingFileError, ModelMismatchError

__all__ = [
    "FORMAT_VERSION",
    "STATE_KIND",
    "StateFiles",
    "check_encoder",
    "encoder_identity",
    "load_state",
    "save_state",
]

#: Layout version of a state folder; :func:`load_state` refuses newer ones.
FORMAT_VERSION = 3
#: Versions :func:`load_state` reads.
READABLE_VERSIONS = (1, 2, 3)
STATE_KIND = "simsearch.Deduplicator"

POINTER = "CURRENT"
MANIFEST = "manifest.json"
STATE_FILE = "state.ssc"
ITEMS_FILE = "items.parquet"
VOCAB_FILE = "vocabulary.parquet"
INDEX_FILE = "index.ssi"
_VERSION_DIR = re.compile(r"^v\d{6}$")
_WHAT = "dedup state"


@dataclass
class StateFiles:
    """What one version of a state holds.

    Attributes
    ----------
    header : dict
        JSON-ready parameters and counters (``kind`` and ``state_format``
        are set by :func:`save_state`).
    sections : dict of str to ndarray
        The arrays of the container.
    items : pyarrow.Table
        ``item_id`` (and ``title``).
    vocabulary : pyarrow.Table or None
        ``term``: the n-gram of each TF-IDF column.
    index : Index or None
        Saved by :func:`save_state`; None from :func:`load_state`, which
        gives ``index_path`` instead (the caller knows the threads to load it with).
    index_path : Path or None
    """

    header: dict[str, Any]
    sections: dict[str, np.ndarray]
    items: pa.Table
    vocabulary: pa.Table | None = None
    index: Any = None
    index_path: Path | None = None


def save_state(path: str | os.PathLike[str], files: StateFiles) -> None:
    """Write ``files`` as the next version of the state folder ``path``, atomically.

    Raises
    ------
    ValueError
        ``path`` is a file, or a non-empty folder that is not a dedup state.
    OSError
        The files cannot be written (the previous state stays).
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{str(root)!r} is a file, not a state folder")
    if root.is_dir() and not (root / POINTER).exists() and any(root.iterdir()):
        raise ValueError(
            f"{str(root)!r} is not empty and holds no dedup state ({POINTER} is missing); refusing to write into it"
        )
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[1:]) for p in root.iterdir() if _VERSION_DIR.match(p.name)]
    name = f"v{max(numbers, default=0) + 1:06d}"
    with _storage.atomic_dir(root / name, replace=False) as folder:
        header = {**files.header, "kind": STATE_KIND, "state_format": FORMAT_VERSION}
        _fileio.write_container(folder / STATE_FILE, header, files.sections)
        _tables.write_table(files.items, folder / ITEMS_FILE)
        if files.vocabulary is not None:
            _tables.write_table(files.vocabulary, folder / VOCAB_FILE)
        files.index.save(folder / INDEX_FILE)
        members = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        _storage.write_manifest(
            folder, MANIFEST, format=STATE_KIND, version=FORMAT_VERSION, fields={"kind": STATE_KIND}, files=members
        )
    digest = _storage.sha256_file(root / name / MANIFEST)
    with _storage.atomic_write(root / POINTER, "w") as f:
        f.write(f"{name} {digest}\n")
    for p in root.iterdir():
        if _VERSION_DIR.match(p.name) and p.name != name:
            shutil.rmtree(p, ignore_errors=True)


def load_state(path: str | os.PathLike[str]) -> StateFiles:
    """Read and check the current version of the state folder ``path``.

    Raises
    ------
    FileNotFoundError
        No folder at ``path``.
    CorruptFileError
        Not a dedup state, a damaged pointer or manifest, or a file that
        fails its checksum (a ``ValueError``).
    FormatVersionError
        A newer format (a ``ValueError``).
    """
    root = Path(path)
    pointer = root / POINTER
    if not root.is_dir():
        raise FileNotFoundError(f"no dedup state at {str(root)!r}")
    if not pointer.exists():
        raise CorruptFileError(f"{str(root)!r} is not a dedup state: it has no {POINTER} file")
    try:
        parts = pointer.read_bytes()[:4096].decode("ascii").split()
    except UnicodeDecodeError:
        parts = []
    if len(parts) != 2 or not _VERSION_DIR.match(parts[0]):
        raise CorruptFileError(f"{str(pointer)!r} is corrupt: expected a version folder and a checksum")
    folder = root / parts[0]
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise CorruptFileError(f"dedup state {str(root)!r} is corrupt: {parts[0]}/{MANIFEST} is missing")
    if _storage.sha256_file(manifest_path) != parts[1]:
        raise CorruptFileError(f"dedup state {str(root)!r} is corrupt: {parts[0]}/{MANIFEST} fails its checksum")
    body = _storage.read_json(manifest_path, f"the {_WHAT} manifest")
    if "format" in body:
        _storage.read_manifest(
            folder, MANIFEST, format=STATE_KIND, versions=READABLE_VERSIONS, what=_WHAT,
            required=(STATE_FILE, INDEX_FILE, ITEMS_FILE),
        )  # fmt: skip
    else:
        _check_version_1(root, folder, body)
    for member in (STATE_FILE, INDEX_FILE, ITEMS_FILE):
        if not (folder / member).is_file():
            raise MissingFileError(f"dedup state {str(root)!r} is corrupt: {parts[0]}/{member} is missing")
    header, sections = _fileio.read_container(folder / STATE_FILE)
    if header.get("kind") != STATE_KIND or header.get("state_format", 0) > FORMAT_VERSION:
        raise CorruptFileError(f"{str(root)!r}: {STATE_FILE} is not a {STATE_KIND} state of a version this simsearch reads")
    vocab = folder / VOCAB_FILE
    files = StateFiles(
        header=header,
        sections=sections,
        items=_read_member_table(folder / ITEMS_FILE, root),
        vocabulary=_read_member_table(vocab, root) if vocab.exists() else None,
        index_path=folder / INDEX_FILE,
    )
    check_sections(files)
    return files


def _read_member_table(path: Path, root: Path) -> pa.Table:
    """A Parquet member of a state (its presence checked by the caller); an unreadable one makes the state corrupt."""
    try:
        table = _tables.read_table(path)
        table.validate(full=True)  # strings that are not UTF-8, offsets past the data
        return table
    except (pa.ArrowException, OSError) as err:
        raise CorruptFileError(f"dedup state {str(root)!r} is corrupt: {path.parent.name}/{path.name} is unreadable ({err})") from None


def _check_version_1(root: Path, folder: Path, manifest: dict[str, Any]) -> None:
    """Check a manifest of format version 1: ``kind``, ``format_version`` and ``files``."""
    if manifest.get("kind") != STATE_KIND:
        raise CorruptFileError(f"{str(root)!r} holds {manifest.get('kind')!r}, not a {STATE_KIND} state")
    _storage.check_version(manifest.get("format_version"), READABLE_VERSIONS, f"the {_WHAT}", root)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CorruptFileError(f"dedup state {str(root)!r} is corrupt: its manifest lists no files")
    for name, digest in files.items():
        file = _storage.safe_member(folder, name, _WHAT)
        if not file.is_file() or _storage.sha256_file(file) != digest:
            raise CorruptFileError(
                f"dedup state {str(root)!r} is corrupt: {folder.name}/{name} is missing or fails its checksum"
            )


def encoder_identity(encoder: Any) -> dict[str, Any]:
    """What a state records of its text encoder: name, fingerprint and dimension."""
    return {
        "name": str(getattr(encoder, "name", type(encoder).__name__)),
        "fingerprint": getattr(encoder, "fingerprint", None),
        "dim": int(encoder.dim),
    }


def check_encoder(expected: dict[str, Any] | None, encoder: Any) -> None:
    """Raise :class:`~simsearch.errors.ModelMismatchError` (a ``ValueError``) if ``encoder`` is not the model a state was built with."""
    if expected is None:
        raise TypeError("this state holds vectors; it has no encoder")
    got = encoder_identity(encoder)
    if got["dim"] != expected["dim"] or got["fingerprint"] != expected["fingerprint"]:
        fp_e, fp_g = str(expected["fingerprint"])[:12], str(got["fingerprint"])[:12]
        raise ModelMismatchError(
            f"the state was built with model {expected['name']!r} (fingerprint {fp_e}, {expected['dim']}-d), "
            f"the encoder is {got['name']!r} (fingerprint {fp_g}, {got['dim']}-d): use the state's model"
        )


def check_sections(files: StateFiles) -> None:
    """Raise :class:`~simsearch.errors.CorruptFileError` if a state's arrays disagree with its item count."""
    sections, n = files.sections, files.items.num_rows
    where = str(files.index_path.parent)
    for name in ("vectors", "alive", "group"):
        if name not in sections or len(sections[name]) != n:
            raise CorruptFileError(f"the dedup state {where!r} is inconsistent: section {name!r} does not hold {n} rows")
    edges = [sections.get(k) for k in ("edge_a", "edge_b", "edge_s")]
    if any(e is None for e in edges) or len({len(e) for e in edges}) != 1:
        raise CorruptFileError(f"the dedup state {where!r} is inconsistent: the edge sections differ in length")
    for e in edges[:2]:
        if len(e) and (e.min() < 0 or e.max() >= n):
            raise CorruptFileError(f"the dedup state {where!r} is inconsistent: an edge names a row out of range")
    if "tfidf_indptr" in sections:
        indptr, indices = sections["tfidf_indptr"], sections["tfidf_indices"]
        n_terms = 0 if files.vocabulary is None else files.vocabulary.num_rows
        if (
            len(indptr) != n + 1
            or (len(indptr) and (indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices)))
            or len(sections["tfidf_data"]) != len(indices)
            or (len(indices) and (indices.min() < 0 or indices.max() >= n_terms))
            or len(sections.get("idf", ())) != n_terms
        ):
            raise CorruptFileError(f"the dedup state {where!r} is inconsistent: its TF-IDF rows do not fit the vocabulary")
