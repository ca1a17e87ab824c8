"""Tables in and out: Arrow, Parquet, CSV and pandas, read in batches.

Every part of simsearch that takes a catalog or a list of listings comes through
here, so one set of rules holds everywhere:

- a table is a :class:`pyarrow.Table`, a :class:`pyarrow.RecordBatch`, a pandas
  ``DataFrame``, a mapping of column name to sequence, or a path to a ``.parquet``,
  ``.csv`` or ``.tsv`` file (optionally gzip-compressed);
- a missing file is a :class:`FileNotFoundError`, a missing column a
  :class:`MissingColumnError` (a ``ValueError`` and a ``KeyError``) that names the
  columns that are there; an empty table a :class:`ValueError` where rows are needed;
- files are read batch by batch (:func:`iter_batches`), never whole into pandas;
- column names are stripped of surrounding spaces when read from CSV, as several
  public product files carry names such as ``" Cluster ID"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import pyarrow as pa

from simsearch._storage import atomic_write_path
from simsearch.errors import CorruptFileError, MissingColumnError  # defined there; importable from here as before

TableLike = Union[pa.Table, pa.RecordBatch, "os.PathLike[str]", str, Mapping[str, Sequence[Any]], Any]

_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")

#: Rows per batch when a file is streamed.
DEFAULT_BATCH_ROWS = 65_536


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "tsv" if ".tsv" in name else "csv"
    if path.is_dir():
        return "parquet"  # a Parquet dataset folder
    raise ValueError(
        f"cannot tell the format of {str(path)!r}: expected a .parquet, .csv or .tsv file"
    )


def _strip_names(table: pa.Table) -> pa.Table:
    names = [str(name).strip() for name in table.column_names]
    if names != table.column_names:
        table = table.rename_columns(names)
    return table


def _csv_reader(path: Path, kind: str, batch_rows: int) -> Any:
    from pyarrow import csv as pacsv

    parse = pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",")
    # Arrow infers column types from the first block; a bigger block makes a
    # late text value in a column of numbers less likely to break the read.
    read = pacsv.ReadOptions(block_size=max(1 << 20, batch_rows * 256))
    convert = pacsv.ConvertOptions(strings_can_be_null=False)
    return pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)


def _as_path(source: Any) -> Path | None:
    if isinstance(source, (str, os.PathLike)):
        return Path(source)
    return None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")


def read_table(source: TableLike, columns: Sequence[str] | None = None, *, name: str = "table") -> pa.Table:
    """Read a whole table (Arrow, pandas, mapping or file) into Arrow.

    Parameters
    ----------
    source : pyarrow.Table, pyarrow.RecordBatch, pandas.DataFrame, mapping or path
        A ``.parquet``, ``.csv`` or ``.tsv`` path is read with pyarrow; a mapping
        of column name to sequence is turned into a table.
    columns : sequence of str, optional
        Columns that must be present; the result keeps only these, in this order.
        ``None`` keeps every column.
    name : str, default "table"
        What to call the table in error messages (e.g. ``"catalog"``).

    Returns
    -------
    table : pyarrow.Table

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that does not exist.
    MissingColumnError
        If a column in ``columns`` is absent.
    TypeError
        If ``source`` is none of the accepted kinds.
    ValueError
        If a path has an unknown suffix.
    """
    path = _as_path(source)
    if path is not None:
        table = _read_file(path)
        if columns is None:
            return table
    else:
        table = _to_arrow(source, name)
    if columns is not None:
        require_columns(table, columns, name=name if path is None else str(path))
        table = table.select(list(columns))
    return table


def _read_file(path: Path) -> pa.Table:
    _check_file(path)
    kind = _file_kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        return _strip_names(_csv_reader(path, kind, DEFAULT_BATCH_ROWS).read_all())
    except pa.ArrowException as err:  # a damaged or mislabelled file, not a system error
        raise CorruptFileError(f"{str(path)!r} could not be read as {kind}: {err}") from None


def file_schema(path: str | os.PathLike[str]) -> pa.Schema:
    """The schema of a Parquet or CSV file, with column names stripped of spaces.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    schema : pyarrow.Schema

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    """
    path = Path(path)
    _check_file(path)
    kind = _file_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(path) if path.is_file() else pq.ParquetDataset(path).schema
    else:
        schema = _csv_reader(path, kind, DEFAULT_BATCH_ROWS).schema
    return pa.schema([f.with_name(f.name.strip()) for f in schema])


def iter_batches(
    source: TableLike,
    columns: Sequence[str] | None = None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    name: str = "table",
) -> Iterator[pa.RecordBatch]:
    """Yield a table's rows as record batches, reading files lazily.

    Parameters
    ----------
    source : pyarrow.Table, pyarrow.RecordBatch, pandas.DataFrame, mapping or path
        See :func:`read_table`.
    columns : sequence of str, optional
        Columns that must be present and are kept, in this order.
    batch_rows : int, default 65536
        Largest number of rows per batch (a CSV reader may yield fewer).
    name : str, default "table"
        What to call the table in error messages.

    Yields
    ------
    batch : pyarrow.RecordBatch

    Raises
    ------
    FileNotFoundError, MissingColumnError, TypeError, ValueError
        As :func:`read_table`; raised on the first ``next()``.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    path = _as_path(source)
    if path is None:
        table = read_table(source, columns, name=name)
        yield from table.to_batches(max_chunksize=batch_rows)
        return
    _check_file(path)
    kind = _file_kind(path)
    if columns is not None:
        require_columns(file_schema(path), columns, name=str(path))
    if kind == "parquet":
        import pyarrow.dataset as ds

        dataset = ds.dataset(path, format="parquet")
        for batch in dataset.to_batches(columns=None if columns is None else list(columns), batch_size=batch_rows):
            yield batch
        return
    for batch in _csv_reader(path, kind, batch_rows):
        batch = pa.RecordBatch.from_arrays(batch.columns, names=[n.strip() for n in batch.schema.names])
        if columns is not None:
            batch = batch.select(list(columns))
        # The CSV reader yields blocks by bytes; cut them to the promised size.
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)


def count_rows(source: TableLike) -> int | None:
    """Number of rows when known without reading the data (Parquet, in-memory), else ``None``."""
    path = _as_path(source)
    if path is None:
        return _to_arrow(source, "table").num_rows
    if _file_kind(path) == "parquet" and path.is_file():
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


def _to_arrow(source: Any, name: str) -> pa.Table:
    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pa.RecordBatch):
        return pa.Table.from_batches([source])
    if isinstance(source, Mapping):
        return pa.table({str(k): v for k, v in source.items()})
    module = type(source).__module__
    if module.startswith("pandas") and hasattr(source, "columns"):
        return pa.Table.from_pandas(source, preserve_index=False)
    if hasattr(source, "__arrow_c_stream__"):  # polars and other Arrow producers
        return pa.table(source)
    raise TypeError(
        f"{name} must be a pyarrow Table, a pandas DataFrame, a mapping of columns "
        f"or a path to a .parquet/.csv file, got {type(source).__name__}"
    )


def require_columns(table: pa.Table | pa.Schema, columns: Sequence[str], *, name: str = "table") -> None:
    """Raise :class:`MissingColumnError` unless every column is present.

    Parameters
    ----------
    table : pyarrow.Table or pyarrow.Schema
    columns : sequence of str
    name : str, default "table"
        What to call the table in the message.

    Raises
    ------
    MissingColumnError
        Naming the first missing column and listing the columns that exist.
    """
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    for column in columns:
        if column not in names:
            shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
            raise MissingColumnError(f"{name} has no column {column!r}; its columns are: {shown}")


def require_rows(table: pa.Table, *, name: str = "table") -> None:
    """Raise ``ValueError`` if ``table`` has no rows."""
    if table.num_rows == 0:
        raise ValueError(f"{name} is empty: it has no rows")


def text_column(table: pa.Table, column: str, *, name: str = "table") -> list[str]:
    """A column as a list of str, nulls as ``""``, numbers formatted as text.

    Raises
    ------
    MissingColumnError
        If the column is absent.
    """
    require_columns(table, [column], name=name)
    col = table.column(column)
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    return ["" if v is None else v for v in col.to_pylist()]


def id_column(table: pa.Table, column: str, *, name: str = "table") -> pa.ChunkedArray:
    """The id column, checked: present, no nulls, no repeats.

    Returns
    -------
    ids : pyarrow.ChunkedArray
        The column as stored (integers stay integers, strings stay strings).

    Raises
    ------
    MissingColumnError
        If the column is absent.
    ValueError
        If an id is null or repeated.
    """
    require_columns(table, [column], name=name)
    ids = table.column(column)
    if ids.null_count:
        raise ValueError(f"{name} column {column!r} has {ids.null_count} null ids")
    import pyarrow.compute as pc

    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        repeated = [c["values"] for c in counts.to_pylist() if c["counts"] > 1][:3]
        raise ValueError(f"{name} column {column!r} has repeated ids, e.g. {repeated}")
    return ids


def write_table(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write a table to ``.parquet`` or ``.csv``/``.tsv``, chosen by the suffix.

    The file is written beside its target under a unique temporary name,
    fsync-ed and renamed into place (:func:`simsearch._storage.atomic_write_path`),
    so a reader never sees half a file and a failed write leaves the old one.

    Raises
    ------
    ValueError
        If the suffix is neither Parquet nor CSV/TSV.
    """
    path = Path(path)
    kind = _file_kind(path) if path.suffix else "unknown"
    if kind == "unknown":
        raise ValueError(f"cannot tell the format of {str(path)!r}: expected a .parquet, .csv or .tsv file")
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"no such folder: {str(path.parent)!r}")
    if kind == "parquet":
        import pyarrow.parquet as pq

        atomic_write_path(path, lambda tmp: pq.write_table(table, tmp))
    else:
        from pyarrow import csv as pacsv

        opts = pacsv.WriteOptions(delimiter="\t" if kind == "tsv" else ",")
        atomic_write_path(path, lambda tmp: pacsv.write_csv(table, tmp, write_options=opts))
