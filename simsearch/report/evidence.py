"""The evidence behind each link of a report: embedding and lexical similarity, codes and measures.

A pair score is one number; a person deciding whether to trust it wants its
parts. :func:`pair_evidence` recomputes them for the pairs a report shows,
with the same pieces the pair score is made of
(:class:`~simsearch.applications.PairScoring`): the embedding cosine (when
vectors are given), the character n-gram TF-IDF cosine (fitted on the titles
at hand, as the dedup does), and whether model codes and measures agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from simsearch.applications.lexical import (
    LexicalModel,
    PairScoring,
    code_relation,
    extract_facts,
    measures_conflict,
    rowwise_dot,
)

__all__ = ["pair_evidence"]


def pair_evidence(
    titles: Sequence[str] | None,
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    *,
    vectors: np.ndarray | None = None,
    tfidf: Any = None,
    scoring: PairScoring | None = None,
) -> dict[str, np.ndarray | None]:
    """Similarity parts of each pair ``(rows_a[i], rows_b[i])``.

    Parameters
    ----------
    titles : sequence of str, optional
        Title of every row; ``None`` (vectors only) leaves the lexical parts out.
    rows_a, rows_b : ndarray of shape (m,), int
        Row positions of the two sides of each pair.
    vectors : ndarray of shape (n, dim), float, optional
        Embeddings of every row; their cosine is ``embedding``.
    tfidf : scipy.sparse.csr_matrix of shape (n, n_terms), optional
        L2-normalized character n-gram TF-IDF rows (a dedup state keeps
        them); default fitted on ``titles`` here.
    scoring : PairScoring, optional
        Gives the n-gram range of the TF-IDF; default ``PairScoring()``.

    Returns
    -------
    dict
        ``embedding`` and ``lexical`` (float32 of shape (m,), or ``None`` when
        their input is missing), ``codes`` and ``measures`` (int8 of shape
        (m,), or ``None`` without titles): 1 the two titles share a model code
        (a measure), -1 their codes are near misses (their measures conflict),
        0 nothing to compare.
    """
    rows_a = np.asarray(rows_a, dtype=np.int64)
    rows_b = np.asarray(rows_b, dtype=np.int64)
    out: dict[str, np.ndarray | None] = {"embedding": None, "lexical": None, "codes": None, "measures": None}
    if vectors is not None:
        x = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(x, axis=1)
        norms[norms == 0] = 1.0
        out["embedding"] = rowwise_dot(x, rows_a, x, rows_b) / (norms[rows_a] * norms[rows_b]).astype(np.float32)
    if titles is None or len(rows_a) == 0:
        return out
    titles = list(titles)
    if tfidf is None:
        tfidf = LexicalModel(scoring or PairScoring()).fit(titles).vectorizer_.transform(titles).tocsr()
    out["lexical"] = rowwise_dot(tfidf, rows_a, tfidf, rows_b)
    facts = {row: extract_facts(titles[row]) for row in np.union1d(rows_a, rows_b).tolist()}
    codes = np.zeros(len(rows_a), dtype=np.int8)
    measures = np.zeros(len(rows_a), dtype=np.int8)
    for i, (a, b) in enumerate(zip(rows_a.tolist(), rows_b.tolist())):
        fa, fb = facts[a], facts[b]
        codes[i] = code_relation(fa, fb)
        if measures_conflict(fa, fb):
            measures[i] = -1
        elif fa.measures & fb.measures:
            measures[i] = 1
    out["codes"], out["measures"] = codes, measures
    return out
