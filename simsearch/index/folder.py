"""The index folder: an index with the ids and titles of its items, as ``simsearch index build`` writes it.

``simsearch search``, ``simsearch match``, ``simsearch eval index`` and the
service (``simsearch serve``, :class:`simsearch.serving.Service`) all open
folders through this module, and ``simsearch index build`` and the service's
snapshots write them through it. A folder holds:

``index.ssi``
    The native :class:`~simsearch.Index` file; index key ``i`` is row ``i``
    of the items table. A folder built with ``--engine ray`` holds instead a
    saved :class:`~simsearch.sharding.ShardedIndex` in the sub-folder
    ``sharded/`` (``"index": "sharded"`` in ``meta.json``).
``items.parquet``
    Columns ``id`` (the user's ids, integers or strings) and ``title``.
``meta.json``
    ``format`` (the layout version, :data:`INDEX_DIR_FORMAT`), ``dim``,
    ``count``, ``metric``, ``ef`` (the search effort later searches use;
    folders written before it existed use the index's default), the model
    that encoded the titles (``model``, ``model_path``, ``precision``,
    ``fingerprint``) and, for filtered search, ``attributes`` (name -> the
    sorted values that attribute code ``j`` stands for).

A new folder is built under a temporary name and swapped in whole
(:func:`simsearch._storage.atomic_dir`). A snapshot updates a folder in place,
one file at a time, each replaced by rename and never rewritten (a reader that
maps ``index.ssi`` keeps its old file): the items first, then the index, then
``meta.json``, so that a crash leaves a folder whose items cover its index.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from simsearch._storage import atomic_dir, atomic_write_path, check_version, read_json, recover_dir, write_json
from simsearch._validation import check_ef
from simsearch.errors import CorruptFileError, MissingFileError
from simsearch.index.core import Index

__all__ = [
    "INDEX_DIR_FORMAT",
    "INDEX_FILE",
    "ITEMS_FILE",
    "META_FILE",
    "SHARDED_DIR",
    "read_meta",
    "open_folder",
    "read_folder",
    "write_folder",
    "write_snapshot",
]

#: Layout version of the folder.
INDEX_DIR_FORMAT = 1
INDEX_FILE = "index.ssi"
ITEMS_FILE = "items.parquet"
META_FILE = "meta.json"
SHARDED_DIR = "sharded"

_WHAT = "simsearch index folder"
_ITEM_COLUMNS = ("id", "title")

PathLike = str | os.PathLike[str]


def read_meta(path: PathLike, *, sharded: bool = False) -> dict[str, Any]:
    """Check that ``path`` is an index folder this simsearch can read; return its ``meta.json``.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.
    sharded : bool, default False
        Also accept a folder holding a sharded index (``--engine ray``); the
        CLI opens those, the service serves one-file folders only.

    Returns
    -------
    dict
        The parsed ``meta.json``.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    CorruptFileError
        If it has no ``meta.json``, or one that is not a JSON object with an
        integer ``format`` and well-formed ``index``, ``ef`` and ``attributes``
        fields (a folder of some other kind).
    FormatVersionError
        If it was written by a newer simsearch.
    ValueError
        If it holds a sharded index and ``sharded`` is False.
    """
    folder = Path(path)
    where = os.fspath(path)
    recover_dir(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such index folder: {where!r} (make one with: simsearch index build ITEMS --out DIR)")
    meta_file = folder / META_FILE
    if not meta_file.is_file():
        raise CorruptFileError(f"{where!r} is not a {_WHAT}: it has no {META_FILE}")
    meta = read_json(meta_file, f"the {_WHAT}'s {META_FILE}")
    if "format" not in meta:
        raise CorruptFileError(f"{where!r} is not a {_WHAT}: its {META_FILE} has no 'format' field")
    check_version(meta["format"], range(1, INDEX_DIR_FORMAT + 1), f"the {_WHAT}", where)
    kind = meta.get("index", INDEX_FILE)
    if kind not in (INDEX_FILE, SHARDED_DIR):
        raise CorruptFileError(f"the {_WHAT} {where!r} names an unknown index {kind!r} in {META_FILE}")
    if kind == SHARDED_DIR and not sharded:
        raise ValueError(
            f"{where!r} holds a sharded index ({kind!r}); the service serves one-file index folders "
            "(build one without --engine ray)"
        )
    if "ef" in meta:
        try:
            check_ef(meta["ef"], "ef")
        except (TypeError, ValueError) as err:
            raise CorruptFileError(f"the {_WHAT} {where!r} has a bad 'ef' in {META_FILE}: {err}") from None
    attributes = meta.get("attributes")
    if attributes is not None and not (
        isinstance(attributes, dict) and all(isinstance(v, list) for v in attributes.values())
    ):
        raise CorruptFileError(f"the {_WHAT} {where!r} has malformed 'attributes' in {META_FILE}")
    for field in ("model", "model_path", "precision", "fingerprint"):
        if meta.get(field) is not None and not isinstance(meta[field], str):
            raise CorruptFileError(f"the {_WHAT} {where!r} has a non-text {field!r} in {META_FILE}")
    return meta


def open_folder(
    path: PathLike, *, open_sharded: Callable[[Path], Any] | None = None
) -> tuple[Any, pa.Table, dict[str, Any]]:
    """Open an index folder: its index, items table and meta.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.
    open_sharded : callable, optional
        ``open_sharded(folder)`` opens the saved sharded index of a folder
        built with ``--engine ray`` (the CLI passes
        :meth:`ShardedIndex.load <simsearch.ShardedIndex.load>`; the index
        layer does not import the sharding layer). Without it such folders
        are refused (see :func:`read_meta`).

    Returns
    -------
    index : Index or ShardedIndex
        With ``ef`` set to the folder's (when it records one).
    items : pyarrow.Table
        Columns ``id`` and ``title``; row ``i`` describes index key ``i``.
    meta : dict
        ``meta.json``.

    Raises
    ------
    FileNotFoundError
        If the folder or one of its files is missing.
    CorruptFileError, FormatVersionError
        As :func:`read_meta`; or if the items table is not Parquet, lacks the
        ``id`` or ``title`` column, or does not cover the index's keys; or if
        the index file is damaged.
    """
    meta = read_meta(path, sharded=open_sharded is not None)
    folder = Path(path)
    if meta.get("index", INDEX_FILE) == SHARDED_DIR and open_sharded is not None:  # built with --engine ray
        index: Any = open_sharded(folder / SHARDED_DIR)
    else:
        if not (folder / INDEX_FILE).is_file():
            raise MissingFileError(f"the {_WHAT} {os.fspath(path)!r} is damaged: it has no {INDEX_FILE}")
        index = Index.load(folder / INDEX_FILE)
    if "ef" in meta:
        index.ef = int(meta["ef"])
    items = _read_items(folder / ITEMS_FILE)
    if len(index) and int(index.ids().max()) >= items.num_rows:
        raise CorruptFileError(
            f"the {_WHAT} {os.fspath(path)!r} is damaged: {ITEMS_FILE} has {items.num_rows} rows "
            f"but the index holds key {int(index.ids().max())}"
        )
    return index, items, meta


def read_folder(path: PathLike) -> tuple[Index, list[Any], list[str | None], dict[str, Any]]:
    """Open a one-file index folder as the service holds it.

    Returns
    -------
    index : Index
    ids, titles : list
        Row ``i`` describes index key ``i``.
    meta : dict
        ``meta.json``.

    Raises
    ------
    FileNotFoundError, CorruptFileError, FormatVersionError
        As :func:`open_folder`.
    ValueError
        If the folder holds a sharded index.
    """
    index, items, meta = open_folder(path)
    return index, items.column("id").to_pylist(), items.column("title").to_pylist(), meta


def write_folder(path: PathLike, index: Any, items: pa.Table, meta: dict[str, Any]) -> None:
    """Write a new index folder at ``path``, swapped in whole.

    Parameters
    ----------
    path : str or os.PathLike
        The folder. An existing one is replaced only if it is an index folder
        (it has a ``meta.json``) or empty.
    index : Index or ShardedIndex
        Key ``i`` must be row ``i`` of ``items``. A ShardedIndex is saved
        under ``sharded/``; with the Ray engine ``path`` must be on storage
        every actor can write.
    items : pyarrow.Table
        Columns ``id`` and ``title``, one row per index key.
    meta : dict
        The caller's fields (model, precision, attributes, ...); ``format``,
        ``dim``, ``count``, ``metric``, ``ef`` and ``index`` are set here.

    Raises
    ------
    FileExistsError
        If ``path`` exists and is neither an index folder nor empty.
    """
    dest = Path(path)
    if dest.exists() and not (dest.is_dir() and ((dest / META_FILE).is_file() or not any(dest.iterdir()))):
        raise FileExistsError(f"{os.fspath(path)!r} exists and is not an index folder; refusing to replace it")
    one_file = isinstance(index, Index)
    with atomic_dir(dest) as tmp:
        index.save(tmp / (INDEX_FILE if one_file else SHARDED_DIR))
        _write_items(tmp / ITEMS_FILE, items.select(list(_ITEM_COLUMNS)))
        write_json(tmp / META_FILE, _full_meta(meta, index, one_file))


def write_snapshot(folder: PathLike, index: Index, ids: list[Any], titles: list[str | None], meta: dict[str, Any]) -> None:
    """Update a one-file index folder in place: items, then index, then meta, each replaced by rename.

    Parameters
    ----------
    folder : str or os.PathLike
        An existing index folder.
    index : Index
        Key ``i`` is row ``i`` of ``ids`` and ``titles``.
    ids, titles : list
        The items; ids all integers or all strings.
    meta : dict
        As for :func:`write_folder`.
    """
    folder = Path(folder)
    id_type = pa.string() if ids and isinstance(ids[0], str) else pa.int64()
    table = pa.table({"id": pa.array(ids, type=id_type), "title": pa.array(titles, type=pa.string())})
    _write_items(folder / ITEMS_FILE, table)
    atomic_write_path(folder / INDEX_FILE, index.save)
    write_json(folder / META_FILE, _full_meta(meta, index, one_file=True))


def _full_meta(meta: dict[str, Any], index: Any, one_file: bool) -> dict[str, Any]:
    full = {**meta, "format": INDEX_DIR_FORMAT, "dim": int(index.dim), "count": len(index), "metric": index.metric}
    full["ef"] = int(index.ef)
    if one_file:
        full.pop("index", None)
    else:
        full["index"] = SHARDED_DIR
    return full


def _write_items(path: Path, table: pa.Table) -> None:
    atomic_write_path(path, lambda tmp: pq.write_table(table, tmp))


def _read_items(path: Path) -> pa.Table:
    if not path.is_file():
        raise MissingFileError(f"the {_WHAT} {str(path.parent)!r} is damaged: it has no {ITEMS_FILE}")
    try:
        schema = pq.read_schema(path)
        missing = [c for c in _ITEM_COLUMNS if c not in schema.names]
        if missing:
            raise CorruptFileError(f"{str(path)!r} lacks the column(s) {missing} of an index folder's items table")
        table = pq.read_table(path, columns=list(_ITEM_COLUMNS))
        table.validate(full=True)  # a damaged page can hold strings that are not UTF-8
        return table
    except (pa.ArrowException, OSError) as err:
        raise CorruptFileError(f"{str(path)!r} is not a Parquet table (unreadable: {err})") from None
