"""The review loop of a :class:`~simsearch.Deduplicator`: pairs to label, then a recalibrated threshold.

How pairs are drawn and how the threshold and its intervals are estimated is
told in :mod:`simsearch.applications.review`; this mixin applies it to the
pairs a state keeps.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch.applications.metrics import ThresholdChoice
from simsearch.applications.review import calibrate, read_labels, sample_review_pairs

__all__ = ["ReviewLoop"]


class ReviewLoop:
    """:meth:`review_pairs`, :meth:`export_review`, :meth:`calibrate` of a fitted Deduplicator.

    The host class provides ``_fitted``, ``_live_edges``, ``threshold_`` and
    the state arrays (``_keys``, ``_titles``, ``_items``, ``_scoring``,
    ``_row_of``, ``_floor``).
    """

    _keys: pa.Array
    _titles: list[str] | None
    _items: Any
    _scoring: Any
    _row_of: dict[Any, int]
    _floor: float
    calibration_: ThresholdChoice | None
    threshold_: float

    def _fitted(self) -> None:  # pragma: no cover - provided by the host
        raise NotImplementedError

    def _live_edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - provided by the host
        raise NotImplementedError

    def review_pairs(self, n: int = 200, *, seed: int = 0) -> pa.Table:
        """Pairs worth a person's label: most near the threshold, some across the range.

        See :mod:`simsearch.applications.review` for how they are drawn.

        Parameters
        ----------
        n : int, default 200
        seed : int, default 0

        Returns
        -------
        pyarrow.Table
            ``id_a``, ``id_b``, ``title_a``, ``title_b`` (titles only for a
            state of titles), ``score`` (float32), ``stratum`` (int64),
            ``weight`` (float64, candidate pairs the row stands for) and an
            empty ``label`` column to fill with 1 (duplicates) or 0.
        """
        self._fitted()
        a, b, s = self._live_edges()
        picked, stratum, weight = sample_review_pairs(s, self.threshold_, n, seed=seed)
        a, b = a[picked], b[picked]
        columns: dict[str, Any] = {
            "id_a": self._keys.take(pa.array(a, type=pa.int64())),
            "id_b": self._keys.take(pa.array(b, type=pa.int64())),
        }
        if self._titles is not None:
            columns["title_a"] = pa.array([self._titles[i] for i in a.tolist()], type=pa.string())
            columns["title_b"] = pa.array([self._titles[i] for i in b.tolist()], type=pa.string())
        columns["score"] = pa.array(s[picked], type=pa.float32())
        columns["stratum"] = pa.array(stratum, type=pa.int64())
        columns["weight"] = pa.array(weight, type=pa.float64())
        columns["label"] = pa.array([None] * len(picked), type=pa.string())
        return pa.table(columns)

    def export_review(self, path: str | os.PathLike[str], n: int = 200, *, seed: int = 0) -> pa.Table:
        """Write :meth:`review_pairs` to a CSV (or Parquet) file; returns the table."""
        table = self.review_pairs(n, seed=seed)
        _tables.write_table(table, path)
        return table

    def calibrate(
        self, labels: Any, *, target_precision: float | None = None, confidence: float = 0.95
    ) -> ThresholdChoice:
        """Recalibrate the threshold from reviewed pairs; the next :meth:`update` uses it.

        Parameters
        ----------
        labels : table or path
            ``id_a``, ``id_b``, ``label`` (1 duplicates, 0 not, empty: not
            reviewed) and, as :meth:`review_pairs` wrote them, ``weight`` and
            ``stratum``. Pairs are rescored with the current pair score.
        target_precision : float in (0, 1], optional
            Take the lowest threshold whose estimated precision reaches it,
            instead of the one with maximum F1.
        confidence : float, default 0.95
            Level of the precision and recall intervals.

        Returns
        -------
        ThresholdChoice
            Also stored as ``calibration_``.

        Raises
        ------
        MissingColumnError
            A missing ``id_a``, ``id_b`` or ``label`` column (a ``ValueError``).
        ValueError
            A label other than 0/1, an id not in the state, no positive
            label, an unreachable ``target_precision``. The state is unchanged.
        """
        self._fitted()
        table = read_labels(labels)
        rows_a = self._rows_of(table.column("id_a"), "id_a")
        rows_b = self._rows_of(table.column("id_b"), "id_b")
        scores = self._pair_scores(rows_a, rows_b)
        result = calibrate(
            scores,
            table.column("label").to_numpy(),
            table.column("weight").to_numpy(),
            table.column("stratum").to_numpy(),
            self.threshold_,
            target_precision=target_precision,
            confidence=confidence,
        )
        if result.threshold < self._floor:
            # Pairs below the floor were never kept: the threshold cannot act there.
            result = replace(result, threshold=self._floor)
        self.calibration_ = result
        return result

    def import_review(self, labels: Any, *, target_precision: float | None = None) -> ThresholdChoice:
        """Same as :meth:`calibrate` (the name the CLI's ``review import`` mirrors)."""
        return self.calibrate(labels, target_precision=target_precision)

    def _rows_of(self, ids: Any, name: str) -> np.ndarray:
        ids = pa.chunked_array([ids]) if isinstance(ids, pa.Array) else ids
        if ids.null_count:
            raise ValueError(f"labels column {name!r} has empty ids")
        if ids.type != self._keys.type:
            try:
                ids = ids.cast(self._keys.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ValueError(f"labels column {name!r} holds {ids.type}, the state's ids are {self._keys.type}") from err
        rows = []
        for v in ids.to_pylist():
            row = self._row_of.get(v)
            if row is None:
                raise ValueError(f"labels column {name!r} holds id {v!r}, which is not in the state")
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)
