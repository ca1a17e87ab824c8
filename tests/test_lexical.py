"""The lexical model's projection for candidate search: vocabulary-drawn or hashed per n-gram."""

from __future__ import annotations

import numpy as np
import pytest

from simsearch.applications.lexical import (
    LexicalModel,
    PairScoring,
    dedup_scoring,
    hashed_rows,
)


def unit_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, d) arrays."""
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_a_hashed_row_depends_on_its_ngram_alone():
    first = hashed_rows(["abc", "xyz", "kdl"], 64).toarray()
    second = hashed_rows(["q1", "kdl", "abc", "zz9", "xyz"], 64).toarray()
    np.testing.assert_array_equal(first[[0, 1, 2]], second[[2, 4, 1]])
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=0.5)  # +-1/sqrt(8) entries, a few may add up
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(hashed_rows(["abc"], 64, seed=1).toarray()[0], first[0])


def test_hashed_projection_keeps_scores_and_search_vectors_when_the_catalog_grows(sample):
    titles = sample.column("title").to_pylist()
    old, grown = titles[: len(titles) // 2], titles
    rows = np.arange(len(old))
    drawn = [LexicalModel(PairScoring()).fit(t).transform(old) for t in (old, grown)]
    hashed = [LexicalModel(dedup_scoring()).fit(t).transform(old) for t in (old, grown)]
    # Same pair scores: the projection only feeds the candidate search.
    for d, h in zip(drawn, hashed):
        assert abs(d.tfidf - h.tfidf).max() == 0
    # The vocabulary-drawn matrix is redrawn when the vocabulary grows; the hashed rows stay.
    moved_drawn = unit_cosines(drawn[0].projection[rows], drawn[1].projection[rows])
    moved_hashed = unit_cosines(hashed[0].projection[rows], hashed[1].projection[rows])
    assert np.median(moved_hashed) > 0.98
    assert np.median(moved_drawn) < 0.5
    # Restored from its vocabulary, the hashed model projects as before.
    model = LexicalModel(dedup_scoring()).fit(old)
    again = LexicalModel.restore(dedup_scoring(), *model.vocabulary())
    np.testing.assert_allclose(again.transform(old[:50]).projection, model.transform(old[:50]).projection, atol=1e-6)


@pytest.mark.parametrize("scoring", [PairScoring(), dedup_scoring()])
def test_projection_approximates_the_tfidf_cosine(sample, scoring):
    titles = sample.column("title").to_pylist()
    f = LexicalModel(scoring).fit(titles).transform(titles)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(titles), 2000), rng.integers(0, len(titles), 2000)
    exact = np.asarray(f.tfidf[a].multiply(f.tfidf[b]).sum(axis=1)).ravel()
    approx = np.einsum("ij,ij->i", f.projection[a], f.projection[b])
    assert np.corrcoef(exact, approx)[0, 1] > 0.5
