"""The labels of a review page: the pairs to label and every label given, in one JSON file.

The file lives in the state folder (``DIR/review/labels.json``; the state's
saves only touch its ``v*`` version folders and ``CURRENT``). It holds:

- ``format``, ``format_version``: this layout (:data:`LABELS_VERSION`);
- ``state``: what the pairs were drawn from (the kind of items and the
  encoder's name and fingerprint), so a labels file is never applied to a
  state of another model;
- ``pairs``: the pairs drawn once by
  :meth:`~simsearch.Deduplicator.review_pairs` (ids, titles, score, stratum,
  weight), so a restart shows the same pairs;
- ``labels``: per pair (by its position in ``pairs``) the label in force,
  who gave it and when, and ``history``, every label ever given to it.

Each :meth:`LabelStore.put` rereads the file, applies one label and writes it
back with :func:`~simsearch._storage.write_json` (a temporary file, fsync-ed
and renamed over the old one), all under :func:`~simsearch._storage.exclusive_lock`:
two labellers (two tabs or two servers on one state) never lose each other's
labels; on one pair the last label given wins and the history shows both.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from simsearch import _storage
from simsearch.errors import CorruptFileError, UnknownIdError

__all__ = ["LABELS_FORMAT", "LABELS_VERSION", "LabelStore", "default_labels_path"]

LABELS_FORMAT = "simsearch.ReviewLabels"
#: Layout version of a labels file; newer ones are refused.
LABELS_VERSION = 1
#: What a label can be: a duplicate, not one, or looked at and skipped.
LABEL_VALUES = {"match": 1, "no_match": 0, "skip": None}
_PAIR_FIELDS = ("id_a", "id_b", "title_a", "title_b", "score", "stratum", "weight")
_WHAT = "review labels file"


def default_labels_path(state: str | os.PathLike[str]) -> Path:
    """Where the review page of a state keeps its labels: ``STATE/review/labels.json``."""
    return Path(state) / "review" / "labels.json"


class LabelStore:
    """The labels file of one review (see the module docstring).

    Parameters
    ----------
    path : path-like
        The JSON file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------ create / open
    def create_or_check(self, identity: dict[str, Any], pairs: Any, live_ids: set[str]) -> bool:
        """Start the file with ``pairs()``, or check the one there against the state.

        Parameters
        ----------
        identity : dict
            What the state is (kind of items, encoder); compared with the file's.
        pairs : callable
            Returns the pairs to label (a :meth:`~simsearch.Deduplicator.review_pairs`
            table); called only when there is no file yet.
        live_ids : set of str
            The state's item ids: every pair of the file must name two of them.

        Returns
        -------
        bool
            True if the file was created.

        Raises
        ------
        FormatVersionError, CorruptFileError
            A labels file of a newer layout, or not a labels file.
        ValueError
            A labels file drawn from a state of another model. Nothing is
            written then.
        UnknownIdError
            A labels file naming pair ids that are not in the state (a
            ``KeyError``). Nothing is written then.
        """
        # Draw before taking the lock (which makes the folder): a state with
        # nothing to review leaves no trace.
        table = None if self.path.exists() else pairs()
        with _storage.exclusive_lock(self.path.parent):
            if self.path.exists():
                self.check(identity, live_ids)
                return False
            if table is None:  # the file vanished between the two looks
                table = pairs()
            columns = {name: table.column(name).to_pylist() for name in _PAIR_FIELDS if name in table.column_names}
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
            body = {
                "format": LABELS_FORMAT,
                "format_version": LABELS_VERSION,
                "created": time.time(),
                "state": identity,
                "pairs": rows,
                "labels": {},
            }
            _storage.write_json(self.path, body)
            return True

    def read(self) -> dict[str, Any]:
        """The whole file, checked for its format and version."""
        body = _storage.read_json(self.path, f"the {_WHAT}")
        if body.get("format") != LABELS_FORMAT:
            raise CorruptFileError(f"{str(self.path)!r} is not a {_WHAT} (format {body.get('format')!r})")
        _storage.check_version(body.get("format_version"), (LABELS_VERSION,), f"the {_WHAT}", self.path)
        if not isinstance(body.get("pairs"), list) or not isinstance(body.get("labels"), dict):
            raise CorruptFileError(f"{_WHAT} {str(self.path)!r} has no pairs or labels")
        return body

    def check(self, identity: dict[str, Any], live_ids: set[str]) -> None:
        """Raise unless the file was drawn from a state like this one and names only its ids."""
        body = self.read()
        theirs = body.get("state") or {}
        for key, value in identity.items():
            if theirs.get(key) != value:
                raise ValueError(
                    f"{str(self.path)!r} holds labels of a state with {key} {theirs.get(key)!r}, this state has "
                    f"{value!r}: move the file away to start a new review of this state"
                )
        unknown = [p for p in body["pairs"] if str(p.get("id_a")) not in live_ids or str(p.get("id_b")) not in live_ids]
        if unknown:
            first = unknown[0]
            raise UnknownIdError(
                f"{str(self.path)!r} holds {len(unknown)} pairs whose ids are not in the state (the first: "
                f"{first.get('id_a')!r}, {first.get('id_b')!r}); the state changed since they were drawn: export the "
                "labels, then move the file away to start a new review"
            )

    # ------------------------------------------------------------ labels
    def put(self, pair: int, label: str, labeller: str) -> dict[str, Any]:
        """Give ``pair`` a label now; returns the pair's entry as saved.

        Parameters
        ----------
        pair : int
            Position in the file's pairs.
        label : {"match", "no_match", "skip"}
        labeller : str
            Who gave it (shown beside the label).

        Raises
        ------
        ValueError
            An unknown label or pair position (nothing written).
        """
        if label not in LABEL_VALUES:
            raise ValueError(f"label must be one of {sorted(LABEL_VALUES)}, got {label!r}")
        labeller = str(labeller).strip()[:64] or "anonymous"
        with _storage.exclusive_lock(self.path.parent):
            body = self.read()  # reread: another labeller may have written since
            if not isinstance(pair, int) or not 0 <= pair < len(body["pairs"]):
                raise ValueError(f"pair must be a position in 0..{len(body['pairs']) - 1}, got {pair!r}")
            given = {"label": label, "by": labeller, "at": time.time()}
            entry = body["labels"].get(str(pair)) or {"history": []}
            entry = {**given, "history": [*entry.get("history", []), given]}
            body["labels"][str(pair)] = entry
            _storage.write_json(self.path, body)
        return entry

    def labels_table(self) -> pa.Table:
        """The pairs and their labels as the CSV ``simsearch review import`` reads.

        Returns
        -------
        pyarrow.Table
            ``id_a``, ``id_b``, ``title_a``, ``title_b`` (when the pairs have
            titles), ``score``, ``stratum``, ``weight``, ``label`` (str: ``"1"``,
            ``"0"``, or empty for pairs skipped or not labelled), ``labelled_by``.
        """
        body = self.read()
        pairs = body["pairs"]
        columns: dict[str, list[Any]] = {
            name: [p.get(name) for p in pairs] for name in _PAIR_FIELDS if pairs and name in pairs[0]
        }
        label, by = [], []
        for i in range(len(pairs)):
            entry = body["labels"].get(str(i))
            value = None if entry is None else LABEL_VALUES.get(entry["label"])
            label.append(None if value is None else str(value))
            by.append(None if entry is None else entry["by"])
        table = (
            pa.table(columns)
            if columns
            else pa.table({"id_a": pa.array([], pa.string()), "id_b": pa.array([], pa.string())})
        )
        return table.append_column("label", pa.array(label, type=pa.string())).append_column(
            "labelled_by", pa.array(by, type=pa.string())
        )
