"""The saved sharded index: a folder with ``manifest.json``, one file per shard and the centroids.

Layout (format ``"simsearch.ShardedIndex"``, version :data:`FORMAT_VERSION`)::

    manifest.json          format, format_version, dim, metric, partition, n_shards, next_id,
                           seed, kmeans_train_size, index_params, centroids, shards
    shard-0000.simsearch   one Index file per non-empty shard ({"file", "sha256", "count"} in shards)
    centroids.npy          kmeans partition only ({"file", "sha256"} in centroids)

Nothing in it is pickled. The folder is written with
:func:`simsearch._storage.atomic_dir`, so a reader sees the old index or the
new one, never half of one; every problem found when reading it is a
:class:`~simsearch.CorruptFileError` (a :class:`~simsearch.FormatVersionError`
for a newer version) that names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from simsearch._storage import check_version, read_json, recover_dir, sha256_file, write_json
from simsearch.errors import CorruptFileError

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "CENTROIDS", "SavedShards", "shard_file", "check_destination", "write",
    "read", "check_sizes",
]  # fmt: skip

FORMAT = "simsearch.ShardedIndex"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CENTROIDS = "centroids.npy"

# what every readable manifest holds besides format, format_version and shards
_MANIFEST_KEYS = ("dim", "n_shards", "partition", "next_id", "seed", "kmeans_train_size", "index_params", "centroids")
_SHARD_KEYS = ("file", "sha256", "count")


@dataclass
class SavedShards:
    """A checked manifest and the files it names.

    Attributes
    ----------
    manifest : dict
        The manifest as read.
    sources : list of str or None, length n_shards
        Absolute path of each shard's file; None for a shard saved empty.
    centroids : np.ndarray of float32, shape (n_shards, dim), or None
    """

    manifest: dict[str, Any]
    sources: list[str | None]
    centroids: np.ndarray | None


def shard_file(shard: int) -> str:
    """The file name of shard ``shard`` in a saved folder."""
    return f"shard-{shard:04d}.simsearch"


def check_destination(dest: Path) -> None:
    """Refuse to save over anything but a saved sharded index or an empty folder.

    Raises
    ------
    FileExistsError
        ``dest`` exists and is neither.
    """
    if dest.exists() and not (dest.is_dir() and ((dest / MANIFEST).is_file() or not any(dest.iterdir()))):
        raise FileExistsError(f"{str(dest)!r} exists and is not a saved ShardedIndex; refusing to replace it")


def write(folder: Path, fields: Mapping[str, Any], shards: Sequence[dict[str, Any]], centroids: np.ndarray | None) -> None:
    """Write ``centroids.npy`` (when given) and ``manifest.json`` into ``folder``, which holds the shard files.

    Parameters
    ----------
    folder : Path
        The folder being built (inside :func:`simsearch._storage.atomic_dir`).
    fields : mapping
        dim, metric, partition, n_shards, next_id, seed, kmeans_train_size, index_params.
    shards : sequence of dict
        Each shard's entry, as :meth:`Shard.save <simsearch.sharding.engine.Shard.save>` returns it.
    centroids : np.ndarray of float32, shape (n_shards, dim), or None
    """
    entry = None
    if centroids is not None:
        np.save(folder / CENTROIDS, centroids, allow_pickle=False)
        entry = {"file": CENTROIDS, "sha256": sha256_file(folder / CENTROIDS)}
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **fields, "centroids": entry, "shards": list(shards)}
    write_json(folder / MANIFEST, body)


def read(path: str | os.PathLike[str], *, verify: bool = True) -> SavedShards:
    """Read and check the manifest of a saved sharded index and locate its files.

    Parameters
    ----------
    path : path-like
        The folder.
    verify : bool, default True
        Compare each file's SHA-256 with the manifest.

    Raises
    ------
    CorruptFileError
        No or unreadable manifest, another format, missing fields, a shard or
        centroids file missing, outside the folder, corrupt or of the wrong shape.
    FormatVersionError
        Written by a newer simsearch.
    """
    root = Path(path)
    recover_dir(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise CorruptFileError(f"{str(root)!r} has no {MANIFEST}; it is not a saved ShardedIndex")
    manifest = read_json(manifest_path, "ShardedIndex manifest")
    if manifest.get("format") != FORMAT:
        raise CorruptFileError(f"{str(manifest_path)!r} is not a ShardedIndex manifest (format {manifest.get('format')!r})")
    check_version(manifest.get("format_version"), range(1, FORMAT_VERSION + 1), "the ShardedIndex manifest", manifest_path)
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(e, dict) for e in shards):
        raise CorruptFileError(f"{str(manifest_path)!r} is not a valid ShardedIndex manifest: 'shards' is not a list of objects")
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    missing += [f"shards[{s}].{key}" for s, e in enumerate(shards) for key in _SHARD_KEYS if key not in e]
    if missing:
        raise CorruptFileError(f"{str(manifest_path)!r} is not a valid ShardedIndex manifest: it lacks {missing}")
    if len(shards) != manifest["n_shards"]:
        raise CorruptFileError(f"{str(manifest_path)!r} lists {len(shards)} shards but n_shards is {manifest['n_shards']!r}")
    if not isinstance(manifest["index_params"], dict):
        raise CorruptFileError(f"{str(manifest_path)!r} is not a valid ShardedIndex manifest: 'index_params' is not an object")
    _check_fields(manifest, manifest_path)
    sources = [
        None if entry["file"] is None else str(_member(root, entry, f"shard {s} file", verify).absolute())
        for s, entry in enumerate(shards)
    ]
    centroids = None
    if manifest["centroids"] is not None:
        if not isinstance(manifest["centroids"], dict) or "file" not in manifest["centroids"]:
            raise CorruptFileError(f"{str(manifest_path)!r} is not a valid ShardedIndex manifest: bad 'centroids' entry")
        file = _member(root, manifest["centroids"], "centroids file", verify)
        try:
            centroids = np.load(file, allow_pickle=False)
        except Exception as err:  # numpy's header parser raises ValueError, EOFError, SyntaxError, TokenError...
            raise CorruptFileError(f"centroids file {str(file)!r} is not a readable array: {err}") from err
        expected = (manifest["n_shards"], manifest["dim"])
        if not isinstance(centroids, np.ndarray) or centroids.dtype.kind != "f" or centroids.shape != expected:
            raise CorruptFileError(f"centroids in {str(root)!r} have shape {centroids.shape}, expected {expected}")
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    return SavedShards(manifest, sources, centroids)


def check_sizes(path: str | os.PathLike[str], saved: SavedShards, sizes: Sequence[int]) -> None:
    """Raise :class:`~simsearch.CorruptFileError` if an opened shard holds another count than its manifest entry."""
    for s, entry in enumerate(saved.manifest["shards"]):
        if sizes[s] != entry["count"]:
            raise CorruptFileError(
                f"shard {s} file {entry['file']!r} in {str(path)!r} holds {sizes[s]} entries, the manifest says {entry['count']}"
            )


def _member(root: Path, entry: dict[str, Any], label: str, verify: bool) -> Path:
    """The file an entry names, checked: a plain name inside ``root``, present, and (``verify``) its SHA-256."""
    name = entry["file"]
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise CorruptFileError(f"{label} {name!r} in {str(root / MANIFEST)!r} is not a plain file name")
    file = root / name
    if not file.is_file():
        raise CorruptFileError(f"{label} {name!r} is missing from {str(root)!r}")
    if verify and sha256_file(file) != entry.get("sha256"):
        raise CorruptFileError(f"{label} {name!r} in {str(root)!r} is corrupt (SHA-256 mismatch)")
    return file


def _is_int(value: Any, low: int, high: int = 2**64 - 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_fields(manifest: Mapping[str, Any], manifest_path: Path) -> None:
    """Raise :class:`~simsearch.CorruptFileError` naming the first manifest field of the wrong type or range."""
    problems = []
    if not _is_int(manifest["dim"], 1, 1 << 20):
        problems.append("dim")
    if not _is_int(manifest["n_shards"], 1, 1 << 16):
        problems.append("n_shards")
    if not _is_int(manifest["next_id"], 0):
        problems.append("next_id")
    if not _is_int(manifest["seed"], -(2**63)):
        problems.append("seed")
    if not _is_int(manifest["kmeans_train_size"], 1):
        problems.append("kmeans_train_size")
    if manifest["partition"] not in ("hash", "kmeans"):
        problems.append("partition")
    if not isinstance(manifest.get("metric", "cosine"), str):
        problems.append("metric")
    for s, entry in enumerate(manifest["shards"]):
        if not _is_int(entry["count"], 0):
            problems.append(f"shards[{s}].count")
        if entry["file"] is not None and not isinstance(entry["file"], str):
            problems.append(f"shards[{s}].file")
    if problems:
        raise CorruptFileError(f"{str(manifest_path)!r} is not a valid ShardedIndex manifest: bad {', '.join(problems)}")
