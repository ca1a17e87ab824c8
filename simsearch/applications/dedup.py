"""Duplicate detection: a kNN self-join through the index, scored pairs, refined groups.

:func:`find_duplicates` works on an array of vectors or on a table of titles.

1. **Candidates.** Every item's ``k`` nearest neighbours come from an int8
   :class:`~simsearch.Index`, searched in batches so memory stays bounded by
   the index plus one batch (:mod:`~simsearch.applications.candidates`). For
   titles the index holds the embedding joined with a random projection of
   the character n-gram TF-IDF vector, so the candidates are near in both
   senses. ``engine="ray"`` encodes and joins on Ray instead
   (:mod:`~simsearch.applications.ray_jobs`).
2. **Scores.** Each candidate pair is scored exactly, once: the cosine of the
   float vectors, and for titles the weighted sum with the TF-IDF cosine plus
   the model-code and measure rules of
   :class:`~simsearch.applications.PairScoring`, mapped to a probability in
   [0, 1] by the shipped calibration
   (:mod:`~simsearch.applications.dedup_calibration`).
3. **Groups.** Pairs at or above ``threshold`` are merged strongest first, and
   two groups merge only if their mean cross score also reaches the threshold
   and the result stays within ``max_group_size``, and never across two
   titles whose codes, measures or brands conflict
   (:func:`~simsearch.applications.grouping.group_pairs`); ``refine=False``
   gives plain connected components. Each group's canonical member is its
   medoid.

:func:`choose_threshold` picks ``threshold`` from labelled items (the grouping
that maximizes mean per-item F1), reusing one candidate join for every
threshold it tries, and returns the duplicates at the chosen threshold too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from simsearch import _tables
from simsearch.applications.candidates import (
    DEFAULT_TEXT_THRESHOLD,
    DEFAULT_VECTOR_THRESHOLD,
    Candidates,
    Duplicates,
    check_max_group_size,
    check_score,
    default_thresholds,
    is_vector_input,
    knn_pairs,
    load_items,
    self_join,
)
from simsearch.applications.lexical import PairScoring
from simsearch.applications.metrics import (
    ThresholdChoice,
    f1_of,
    mean_group_f1,
    pairwise_precision_recall,
)

__all__ = [
    "DEFAULT_TEXT_THRESHOLD",
    "DEFAULT_VECTOR_THRESHOLD",
    "Duplicates",
    "ThresholdChoice",
    "choose_threshold",
    "find_duplicates",
    "is_vector_input",
    "knn_pairs",
    "mean_group_f1",
    "pairwise_precision_recall",
]

ENGINES = ("local", "ray")


def _join(
    data: Any,
    *,
    floor: float | None,
    k: int,
    ids: Any,
    id_col: str,
    text_col: str,
    encoder: Any,
    lexical: bool,
    scoring: PairScoring | None,
    index_params: dict[str, Any] | None,
    batch_size: int,
    progress: bool | None,
    ef: int | None,
    engine: str,
    engine_options: dict[str, Any],
) -> Candidates:
    """The candidate join of ``data`` on the chosen engine (the one body of every dedup entry point)."""
    scoring = scoring if scoring is not None else PairScoring()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray":
        from simsearch.applications.ray_jobs import ray_join

        if ids is not None or encoder is not None:
            raise ValueError("engine='ray' reads a Parquet/CSV path and encodes on the workers: ids and encoder do not apply")
        if is_vector_input(data) or not isinstance(data, (str, os.PathLike)):
            raise TypeError(f"engine='ray' needs the path of a Parquet/CSV file, got {type(data).__name__}")
        return ray_join(
            os.fspath(data), k=k, floor=floor, id_col=id_col, text_col=text_col, lexical=lexical, scoring=scoring,
            index_params=index_params, batch_size=batch_size, progress=progress, ef=ef, **engine_options,
        )  # fmt: skip
    if engine_options:
        raise ValueError(f"{sorted(engine_options)} apply to engine='ray' only")
    # The items live only as long as this call, so unit float32 vectors are
    # used in place, not copied (a million 384-d rows: 1.5 GB saved).
    loaded = load_items(
        data, ids=ids, id_col=id_col, text_col=text_col, encoder=encoder, lexical=lexical, scoring=scoring,
        progress=progress, copy=False,
    )  # fmt: skip
    return self_join(
        loaded, k=k, floor=floor, scoring=scoring, index_params=index_params, batch_size=batch_size,
        progress=progress, ef=ef,
    )  # fmt: skip


def find_duplicates(
    data: Any,
    threshold: float | None = None,
    k: int = 10,
    *,
    ids: Any = None,
    id_col: str = "id",
    text_col: str = "title",
    encoder: Any = None,
    lexical: bool = True,
    scoring: PairScoring | None = None,
    refine: bool = True,
    max_group_size: int | None = 100,
    include_singletons: bool = False,
    index_params: dict[str, Any] | None = None,
    batch_size: int = 10_000,
    progress: bool | None = None,
    ef: int | None = None,
    engine: str = "local",
    **engine_options: Any,
) -> Duplicates:
    """Find duplicate items: scored pairs and groups with a canonical member.

    Parameters
    ----------
    data : array-like of shape (n, dim), float, or a table
        Vectors (ids are row positions unless ``ids`` is given), or a pyarrow
        Table, pandas DataFrame, mapping or Parquet/CSV path with an id and a
        title column, encoded with ``encoder``. With ``engine="ray"``: the
        path of a Parquet file (or folder) or CSV file. A float32 C-contiguous
        array of unit rows (as embedding models return) is read in place,
        never copied or changed; other vectors are normalized into one copy.
    threshold : float, optional
        Least pair score for two items to be duplicates. For titles with
        lexical scoring the score is the probability that the two are one
        product (the :class:`~simsearch.applications.PairScoring` score through
        the shipped calibration, :mod:`~simsearch.applications.dedup_calibration`)
        and the default is 0.15, the threshold of best mean group F1 over the
        PriceRunner and Shopee development sets together; for vectors the
        score is the cosine and the default 0.9. :func:`choose_threshold`
        picks one from labels.
    k : int, default 10
        Neighbours looked up per item; a group can still grow past ``k + 1``
        through its members' neighbours.
    ids : array-like of shape (n,), optional
        Ids of the vectors (only with an array).
    id_col, text_col : str, default "id", "title"
        Columns of a table.
    encoder : TextEncoder, optional
        Encodes the titles; default ``TextEncoder()`` (all-MiniLM-L6-v2, int8).
    lexical : bool, default True
        Score titles with character n-grams, model codes and measures as well
        as the embedding. ``False`` uses the embedding cosine alone.
    scoring : PairScoring, optional
        Weights of the pair score; default ``PairScoring()``.
    refine : bool, default True
        Average-linkage refinement with a size cap; ``False`` returns connected
        components of the pairs.
    max_group_size : int or None, default 100
        Largest group when refining.
    include_singletons : bool, default False
        Give every item a row in ``groups``, alone or not.
    index_params : dict, optional
        Passed to :class:`~simsearch.Index` (``M``, ``ef_construction`` (default
        100 here), ``ef``, ``backend``, ``num_threads``...).
    batch_size : int, default 10000
        Items searched and scored per step: memory beyond the index and the
        input is proportional to ``batch_size * k``.
    progress : bool or None, default None
        Show progress bars; ``None`` shows them when stderr is a terminal.
    ef : int, optional
        Search effort of the candidate search; default ``index_params["ef"]``
        if given, else ``max(2 (k + 1), 64)``.
    engine : {"local", "ray"}, default "local"
        ``"ray"`` encodes the titles in Ray Data workers, holds the index in
        Ray actors and joins shard by shard (see
        :mod:`~simsearch.applications.ray_jobs`); the scores, groups and
        tables are those of ``"local"``, up to the approximate search finding
        slightly different candidates.
    **engine_options
        For ``engine="ray"``: ``n_shards`` (default 4), ``workers`` (most
        encoding workers), ``model`` and ``precision`` (the encoder each
        worker loads, see :class:`~simsearch.TextEncoder`).

    Returns
    -------
    Duplicates
        Named tuple ``(pairs, groups)`` of pyarrow Tables; see :class:`Duplicates`.

    Raises
    ------
    ValueError
        Empty input, NaN/inf vectors, a 1-D array, repeated or null ids,
        ``ids`` of the wrong length, a non-positive ``k``, an unknown engine.
    MissingColumnError
        A table without ``id_col`` or ``text_col`` (a ``ValueError``).
    FileNotFoundError
        A path that does not exist.
    TypeError
        Integer or object arrays where float vectors are expected; a
        non-integer ``k``; with ``engine="ray"``, data that is not a path.

    Examples
    --------
    >>> import numpy as np
    >>> from simsearch import find_duplicates
    >>> x = np.array([[1, 0, 0], [0.99, 0.05, 0], [0, 1, 0]], dtype=np.float32)
    >>> pairs, groups = find_duplicates(x, threshold=0.95, k=2, progress=False)
    >>> pairs.column("id_a").to_pylist(), pairs.column("id_b").to_pylist()
    ([0], [1])
    >>> groups.column("group_id").to_pylist()
    [0, 0]
    """
    threshold = None if threshold is None else check_score(threshold)
    max_group_size = check_max_group_size(max_group_size)
    cands = _join(
        data, floor=threshold, k=k, ids=ids, id_col=id_col, text_col=text_col, encoder=encoder, lexical=lexical,
        scoring=scoring, index_params=index_params, batch_size=batch_size, progress=progress, ef=ef, engine=engine,
        engine_options=engine_options,
    )  # fmt: skip
    return cands.duplicates(cands.floor, refine, max_group_size, include_singletons)


def choose_threshold(
    data: Any,
    labels: Any,
    thresholds: Sequence[float] | None = None,
    k: int = 10,
    *,
    ids: Any = None,
    id_col: str = "id",
    text_col: str = "title",
    label_col: str | None = None,
    tolerance: float = 0.005,
    refine: bool = True,
    max_group_size: int | None = 100,
    include_singletons: bool = False,
    encoder: Any = None,
    lexical: bool = True,
    scoring: PairScoring | None = None,
    ef: int | None = None,
    engine: str = "local",
    index_params: dict[str, Any] | None = None,
    batch_size: int = 10_000,
    progress: bool | None = None,
    **engine_options: Any,
) -> ThresholdChoice:
    """Choose the dedup threshold that (nearly) maximizes mean per-item F1 on labelled items.

    The candidate join runs once, at the lowest threshold tried; each
    threshold then only regroups the scored pairs. The duplicates at the
    chosen threshold come back too (``duplicates``), so choosing a threshold
    and using it costs one join.

    Parameters
    ----------
    data : array-like or table
        As :func:`find_duplicates`.
    labels : array-like of shape (n,) or None
        True group of each item (equal labels: duplicates). ``None`` reads them
        from ``label_col`` of the table.
    thresholds : sequence of float, optional
        Candidates to try; default probabilities 0.05 to 0.95 by 0.025 for
        titles with lexical scoring, cosines 0.70 to 0.99 by 0.01 otherwise.
    label_col : str, optional
        Column of ``data`` holding the labels.
    k, ids, id_col, text_col, encoder, lexical, scoring, refine, max_group_size, include_singletons
        As :func:`find_duplicates`.
    index_params, batch_size, progress, ef, engine, **engine_options
        As :func:`find_duplicates`.
    tolerance : float, default 0.005
        Thresholds whose mean F1 is within ``tolerance`` of the best count as
        equally good; the median of them is chosen, which is steadier on new
        data than the single best (the F1 curve is flat near its top).

    Returns
    -------
    ThresholdChoice
        ``method="max_mean_f1"``; ``mean_f1`` is the mean per-item F1 there,
        ``precision``, ``recall`` and ``f1`` are pairwise, and ``duplicates``
        holds the :class:`Duplicates` at ``threshold``.

    Raises
    ------
    ValueError
        If labels are missing or of the wrong length, or no threshold is given.
    """
    if labels is None:
        if label_col is None:
            raise ValueError("give labels, or label_col naming the column that holds them")
        labels = _tables.read_table(data, [label_col], name="data").column(label_col).to_numpy(zero_copy_only=False)
    labels = np.asarray(labels)
    if thresholds is None:
        thresholds = default_thresholds(not is_vector_input(data) and lexical)
    tried = sorted(check_score(t, "thresholds") for t in thresholds)
    if not tried:
        raise ValueError("thresholds is empty")
    max_group_size = check_max_group_size(max_group_size)
    cands = _join(
        data, floor=tried[0], k=k, ids=ids, id_col=id_col, text_col=text_col, encoder=encoder, lexical=lexical,
        scoring=scoring, index_params=index_params, batch_size=batch_size, progress=progress, ef=ef, engine=engine,
        engine_options=engine_options,
    )  # fmt: skip
    if len(labels) != len(cands.items):
        raise ValueError(f"labels has {len(labels)} entries, data has {len(cands.items)} rows")
    f1s, groupings = [], []
    for t in tried:
        grouping = cands.group(t, refine, max_group_size)
        f1s.append(mean_group_f1(labels, grouping[0]))
        groupings.append(grouping)
    # The F1 curve is flat near its top and its argmax moves from sample to
    # sample; the middle of the near-best thresholds carries over better.
    near = [i for i, f in enumerate(f1s) if f >= max(f1s) - tolerance]
    pick = near[len(near) // 2]
    grouped, hit = groupings[pick]
    precision, recall = pairwise_precision_recall(labels, grouped)
    return ThresholdChoice(
        threshold=tried[pick],
        f1=f1_of(precision, recall),
        precision=precision,
        recall=recall,
        n_labelled=len(labels),
        method="max_mean_f1",
        mean_f1=f1s[pick],
        duplicates=cands.tables(grouped, hit, include_singletons),
    )
