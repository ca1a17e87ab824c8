"""Items as the applications see them: ids, unit vectors and lexical features.

The classifier, the matcher and the dedup all turn their input (an array of
vectors, or titles and an encoder) into :class:`Items`, build an index over
``Items.search``, and score candidate pairs with :func:`Items.pair_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsearch._validation import as_float_matrix
from simsearch.applications.lexical import (
    LexicalModel,
    PairScoring,
    TextFeatures,
    facts_conflict,
    hybrid_vectors,
    rowwise_dot,
    rule_adjustment,
)

# The encoder refuses empty titles; an empty title still needs a row. Its
# lexical features are empty, so it only matches on the (small) vector weight.
_EMPTY_TITLE = "untitled"


def default_encoder() -> Any:
    """The default text encoder (all-MiniLM-L6-v2, int8 on the CPU)."""
    from simsearch.encoders import TextEncoder

    return TextEncoder()


def progress_enabled(progress: bool | None) -> bool:
    """``None`` means: show a bar when stderr is a terminal."""
    if progress is None:
        import sys

        return sys.stderr.isatty()
    return bool(progress)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Scale rows to unit L2 norm in place (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def as_vectors(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Float vectors of shape (n, dim) as unit float32 rows (a copy)."""
    arr = as_float_matrix(x, name, dim)
    return unit_rows(np.array(arr, dtype=np.float32, copy=True))


def encode_texts(texts: Sequence[str], encoder: Any, progress: bool | None) -> np.ndarray:
    """Encode titles, mapping empty ones to a placeholder; unit float32 rows."""
    clean = [t if t and t.strip() else _EMPTY_TITLE for t in texts]
    if not clean:
        return np.zeros((0, int(encoder.dim)), dtype=np.float32)
    return unit_rows(np.asarray(encoder.encode(clean, progress=progress_enabled(progress)), dtype=np.float32))


@dataclass
class Items:
    """Vectors (and, for titles, lexical features) of a set of items.

    Attributes
    ----------
    vectors : ndarray of shape (n, dim), float32
        Unit embeddings.
    features : TextFeatures or None
        Lexical features when the items are titles and lexical scoring is on.
    search : ndarray of shape (n, dim_search), float32
        What the index holds: the embeddings, or the hybrid of embeddings and
        TF-IDF projection (see :func:`~simsearch.applications.lexical.hybrid_vectors`).
    """

    vectors: np.ndarray
    features: TextFeatures | None
    search: np.ndarray

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def from_vectors(cls, vectors: np.ndarray) -> Items:
        return cls(vectors=vectors, features=None, search=vectors)

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        encoder: Any,
        lexical: LexicalModel | None,
        scoring: PairScoring,
        progress: bool | None = None,
    ) -> Items:
        vectors = encode_texts(texts, encoder, progress)
        if lexical is None:
            return cls.from_vectors(vectors)
        features = lexical.transform(list(texts))
        return cls(vectors, features, hybrid_vectors(vectors, features.projection, scoring.vector_weight))

    def concat(self, new: Items) -> Items:
        """These items followed by ``new`` (both with or both without lexical features)."""
        old = self
        vectors = np.vstack([old.vectors, new.vectors])
        search = np.vstack([old.search, new.search])
        if old.features is None or new.features is None:
            return Items(vectors, None, search)
        import scipy.sparse as sp

        features = TextFeatures(
            sp.vstack([old.features.tfidf, new.features.tfidf], format="csr"),
            old.features.facts + new.features.facts,
            np.vstack([old.features.projection, new.features.projection]),
        )
        return Items(vectors, features, search)

    def pair_scores(
        self,
        other: Items,
        rows_self: np.ndarray,
        rows_other: np.ndarray,
        scoring: PairScoring,
        floor: float | None = None,
    ) -> np.ndarray:
        """Exact pair scores of ``(self[rows_self[i]], other[rows_other[i]])``.

        Without lexical features on either side the score is the embedding
        inner product alone.

        Parameters
        ----------
        other : Items
        rows_self, rows_other : ndarray of shape (m,), int
        scoring : PairScoring
        floor : float, optional
            Pairs whose weighted cosines plus the largest bonus stay below
            ``floor`` cannot reach it, so their code rules are not evaluated (a
            speed-up only: such scores come back without the rules' adjustments).

        Returns
        -------
        ndarray of shape (m,), float32
        """
        rows_self = np.asarray(rows_self, dtype=np.int64)
        rows_other = np.asarray(rows_other, dtype=np.int64)
        vec = rowwise_dot(self.vectors, rows_self, other.vectors, rows_other)
        left, right = self.features, other.features
        if left is None or right is None:
            return vec
        lex = rowwise_dot(left.tfidf, rows_self, right.tfidf, rows_other)
        w = scoring.vector_weight
        score = (w * vec + (1.0 - w) * lex).astype(np.float32)
        todo = np.arange(len(score)) if floor is None else np.flatnonzero(score + scoring.max_bonus >= floor)
        for i in todo:
            score[i] += rule_adjustment(scoring, left.facts[rows_self[i]], right.facts[rows_other[i]])
        return score

    def cross_scores(
        self,
        other: Items,
        rows_self: np.ndarray,
        rows_other: np.ndarray,
        scoring: PairScoring,
        cache: dict[tuple[int, int], float] | None = None,
    ) -> np.ndarray:
        """Scores of every pair across two row lists, as :meth:`pair_scores` would give.

        Parameters
        ----------
        other : Items
        rows_self, rows_other : ndarray of int
        scoring : PairScoring
        cache : dict, optional
            ``(row_self, row_other) -> rule adjustment``, filled and reused:
            group refinement asks for the same pairs again and again.

        Returns
        -------
        ndarray of shape (len(rows_self), len(rows_other)), float32
        """
        vec = self.vectors[rows_self] @ other.vectors[rows_other].T
        left, right = self.features, other.features
        if left is None or right is None:
            return vec
        lex = (left.tfidf[rows_self] @ right.tfidf[rows_other].T).toarray()
        w = scoring.vector_weight
        out = (w * vec + (1.0 - w) * lex).astype(np.float32)
        for i, ra in enumerate(rows_self.tolist()):
            fa = left.facts[ra]
            if not fa.codes and not fa.measures:
                continue
            for j, rb in enumerate(rows_other.tolist()):
                key = (ra, rb)
                adj = cache.get(key) if cache is not None else None
                if adj is None:
                    adj = rule_adjustment(scoring, fa, right.facts[rb])
                    if cache is not None:
                        cache[key] = adj
                out[i, j] += adj
        return out

    def conflicts(
        self,
        other: Items,
        rows_self: np.ndarray,
        rows_other: np.ndarray,
        cache: dict[tuple[int, int], bool] | None = None,
    ) -> bool:
        """Whether any pair across two row lists names different products (:func:`facts_conflict`).

        Parameters
        ----------
        other : Items
        rows_self, rows_other : ndarray of int
        cache : dict, optional
            ``(row_self, row_other) -> conflict``, filled and reused.

        Returns
        -------
        bool
            Always False without lexical features.
        """
        left, right = self.features, other.features
        if left is None or right is None:
            return False
        for ra in np.asarray(rows_self).tolist():
            fa = left.facts[ra]
            for rb in np.asarray(rows_other).tolist():
                key = (ra, rb)
                hit = cache.get(key) if cache is not None else None
                if hit is None:
                    hit = facts_conflict(fa, right.facts[rb])
                    if cache is not None:
                        cache[key] = hit
                if hit:
                    return True
        return False


def build_index(
    search: np.ndarray,
    index_params: dict[str, Any] | None,
    progress: bool | None,
    batch_rows: int = 50_000,
    attributes: dict[str, np.ndarray] | None = None,
) -> Any:
    """An int8 inner-product :class:`~simsearch.Index` over unit rows, added in batches.

    ``index_params`` are passed to ``Index`` (e.g. ``M``, ``ef_construction``,
    ``backend``, ``num_threads``); row ``i`` gets id ``i``. ``attributes``:
    name -> int array of shape (n,), stored for filtered search.
    """
    from simsearch.index import Index

    # Rows arrive unit-normalized (or zero, e.g. an all-zero feature row), so the
    # inner product is the cosine and a zero row is simply similar to nothing.
    params = {"metric": "ip", **(index_params or {})}
    index = Index(search.shape[1], **params)
    bar = progress_bar(len(search), "indexing", progress)
    for start in range(0, len(search), batch_rows):
        stop = min(start + batch_rows, len(search))
        part = {name: col[start:stop] for name, col in attributes.items()} if attributes else None
        index.add(search[start:stop], ids=np.arange(start, stop, dtype=np.uint64), attributes=part)
        bar.update(stop - start)
    bar.close()
    return index


def progress_bar(total: int, desc: str, progress: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rows", disable=not progress_enabled(progress) or total == 0)

