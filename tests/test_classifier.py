"""KNNClassifier: scikit-learn's estimator checks, agreement with scikit-learn's
brute-force kNN, texts through an encoder, pickling, bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from simsearch import KNNClassifier

from _helpers import blobs

# Checks skipped, and why (none fail today; the two below skip themselves):
# - check_array_api_input: needs SCIPY_ARRAY_API=1 and an array-API library;
#   the index takes numpy arrays only.
# - check_classifier_data_not_an_array: needs pandas, which is not a dependency.
EXPECTED_FAILED: dict[str, str] = {}


@parametrize_with_checks([KNNClassifier()], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_agrees_with_sklearn_brute_force(weights):
    x, y = blobs(600, 24, 5)
    train, test = slice(0, 500), slice(500, None)
    ours = KNNClassifier(k=7, weights=weights).fit(x[train], y[train])
    ref = KNeighborsClassifier(7, weights=weights, metric="cosine", algorithm="brute").fit(x[train], y[train])
    agree = np.mean(ours.predict(x[test]) == ref.predict(x[test]))
    assert agree >= 0.97  # int8 codes and an approximate graph: near, not equal
    np.testing.assert_allclose(ours.predict_proba(x[test]).sum(axis=1), 1.0)


def test_kneighbors_against_exact_cosine():
    x, y = blobs(300, 24, 5)
    clf = KNNClassifier(k=5).fit(x, y)
    dist, ind = clf.kneighbors(x[:50])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    exact = np.sort(1 - u[:50] @ u.T, axis=1)[:, :5]
    np.testing.assert_allclose(dist, exact, atol=0.02)
    assert ind.dtype == np.int64 and ind.shape == (50, 5)
    # X=None: each training item's neighbours, itself excluded
    ind_train = clf.kneighbors(n_neighbors=3, return_distance=False)
    assert not np.any(ind_train == np.arange(len(x))[:, None])
    with pytest.raises(ValueError, match="n_neighbors"):
        clf.kneighbors(x[:2], n_neighbors=301)


def test_exact_repeat_decides_alone():
    x = np.array([[1, 0], [1, 0.3], [1, 0.31], [1, 0.32]], dtype=np.float32)
    clf = KNNClassifier(k=4).fit(x, [0, 1, 1, 1])
    assert clf.predict(x[:1]).tolist() == [0]
    assert KNNClassifier(k=4, weights="uniform").fit(x, [0, 1, 1, 1]).predict(x[:1]).tolist() == [1]


def test_pickle_round_trip():
    x, y = blobs(200, 24, 5)
    clf = KNNClassifier(k=3).fit(x, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict(x), clf.predict(x))


def test_texts_with_an_encoder(encoder, sample):
    titles = sample.column("title").to_pylist()
    category = np.array(sample.column("category").to_pylist())
    cluster = np.array(sample.column("cluster_id").to_pylist())
    # split by product, so no product is on both sides
    test = np.isin(cluster, np.unique(cluster)[::4])
    clf = KNNClassifier(k=5, encoder=encoder).fit([t for t, m in zip(titles, test) if not m], category[~test])
    assert set(clf.classes_) == set(category)
    accuracy = clf.score([t for t, m in zip(titles, test) if m], category[test])
    assert accuracy >= 0.9
    assert clf.linear_ is not None  # the defaults fuse the linear head
    held_out = [t for t, m in zip(titles, test) if m]
    proba = clf.predict_proba(held_out)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    # linear_weight=0 is the neighbours' vote alone.
    vote = KNNClassifier(k=5, encoder=encoder, linear_weight=0.0).fit([t for t, m in zip(titles, test) if not m], category[~test])
    assert vote.linear_ is None
    w = clf.linear_weight
    np.testing.assert_allclose(
        proba, w * clf.linear_.predict_proba(clf.features_.transform(held_out, encoder.encode(held_out, progress=False))) + (1 - w) * vote.predict_proba(held_out), atol=1e-5
    )


def test_bad_input(encoder):
    x, y = blobs(50, 24, 5)
    with pytest.raises(ValueError, match="could not convert|string"):
        KNNClassifier().fit(np.array([["a", "b"]] * 4), [0, 1, 0, 1])
    with pytest.raises(TypeError, match="expected str"):
        KNNClassifier(encoder=encoder).fit([1.0, 2.0], [0, 1])
    with pytest.raises(TypeError, match="single str"):
        KNNClassifier(encoder=encoder).fit("one title", [0])
    with pytest.raises(ValueError, match="empty"):
        KNNClassifier(encoder=encoder).fit([], [])
    with pytest.raises(ValueError, match="NaN"):
        KNNClassifier().fit(np.full((3, 2), np.nan), [0, 1, 0])
    with pytest.raises(ValueError, match="k"):
        KNNClassifier(k=0).fit(x, y)
    with pytest.raises(ValueError, match="features"):
        KNNClassifier().fit(x, y).predict(x[:, :3])
    with pytest.raises(ValueError, match="continuous|Unknown label"):
        KNNClassifier().fit(x, np.linspace(0, 1, len(x)))
