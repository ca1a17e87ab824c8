"""A cross-encoder pair model: both records read together, cheap pair features fused in, calibrated.

The bi-encoder behind the index embeds each record alone, so it blurs what
separates near-identical records (a model code, a capacity, a year). A
cross-encoder reads the two records as one input and attends across them
(Ditto: Li et al., "Deep Entity Matching with Pre-Trained Language Models",
PVLDB 14(1), 2021). :class:`PairModel` is that second stage:

1. **serialization** (:func:`serialize`): a record becomes
   ``COL name VAL value COL ...`` over every column it has, as Ditto writes
   it, so the model sees which attribute a value belongs to; a plain string
   is one ``title`` attribute;
2. **cross-encoder**: a MiniLM-class BERT (initialised from the bundled
   all-MiniLM-L6-v2, fine-tuned by
   :func:`~simsearch.applications.pair_training.train_pair_model`) run as an
   int8 ONNX graph on onnxruntime; it gives one logit per pair;
3. **features** (:data:`PAIR_FEATURES`, :func:`pair_features`): the cheap
   lexical evidence of :mod:`~simsearch.applications.lexical` computed from
   the two records alone (word and character-trigram overlap, model codes,
   measures with units, numbers, length). Nothing depends on the other
   candidates of a record, so the model makes no one-to-one assumption;
4. **head**: a logistic regression over the standardized ``[logit,
   features]``, fit on validation pairs, then a
   :class:`~simsearch.applications.calibration.Calibrator` fit on its
   cross-validated decision values, so :meth:`PairModel.predict_proba` is a
   calibrated match probability; ``threshold`` is the probability of best F1
   on those validation pairs.

A saved model is a folder (:data:`PAIR_MODEL_FORMAT`): ``model.onnx``,
``tokenizer.json`` and ``pair_model.json`` (head, calibrator, threshold,
what it was trained on, and the SHA-256 of the other files). Nothing is
pickled. :func:`default_pair_model` opens the one shipped inside the package
(its ``README.md`` says what it was trained on and under which terms).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import _storage
from simsearch.applications.calibration import Calibrator
from simsearch.applications.lexical import (
    extract_facts,
    normalize_title,
)
from simsearch.applications.pair_scorer import BASE_FEATURES, code_and_measure_features

__all__ = [
    "DEFAULT_PAIR_MODEL_DIR",
    "PAIR_FEATURES",
    "PAIR_MODEL_FORMAT",
    "PairModel",
    "default_pair_model",
    "pair_features",
    "resolve_pair_model",
    "serialize",
    "top_per_row",
    "values_text",
]

PAIR_MODEL_FORMAT = "simsearch-pair-model"
PAIR_MODEL_VERSION = 1
MANIFEST = "pair_model.json"
#: The model shipped inside the package.
DEFAULT_PAIR_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "pair_model"

#: Pair features, in column order (the cross-encoder logit comes before them in the head).
PAIR_FEATURES = (
    "token_jaccard",
    "trigram_jaccard",
    "number_jaccard",
    # The pair scorer's code, measure and length features, same meaning.
    *BASE_FEATURES[BASE_FEATURES.index("codes_both") :],
)

_MARKER = re.compile(r"(?:^|\s)COL \S+ VAL(?=\s|$)")
_WORD = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SQUASH = re.compile(r"[\s\-/._,]+")
_NAME = re.compile(r"\s+")


def serialize(record: Any, columns: Sequence[str] | None = None) -> str:
    """One record as ``COL name VAL value ...`` text.

    Parameters
    ----------
    record : str or mapping
        A mapping of column to value (``None`` and NaN become empty values),
        or a string: one already serialized (starting ``COL ``) is kept as it
        is, any other string becomes ``COL title VAL <string>``.
    columns : sequence of str, optional
        Columns of a mapping to write, in order; default all of them, in
        the mapping's order.

    Returns
    -------
    str

    Examples
    --------
    >>> serialize({"name": "sony tv", "price": 399.0})
    'COL name VAL sony tv COL price VAL 399.0'
    """
    if isinstance(record, str):
        return record if record.startswith("COL ") else f"COL title VAL {record}"
    if not isinstance(record, Mapping):
        raise TypeError(f"a record must be a string or a mapping of column to value, got {type(record).__name__}")
    parts = []
    for name in columns if columns is not None else list(record):
        value = record.get(name)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            value = ""
        parts.append(f"COL {_NAME.sub('_', str(name))} VAL {value}".rstrip())
    return " ".join(parts)


def values_text(serialized: str) -> str:
    """The values of a serialized record, markers removed, normalized as titles are."""
    return normalize_title(_MARKER.sub(" ", serialized)).strip()


def _trigrams(text: str) -> set[str]:
    squashed = f" {text} "
    return {squashed[i : i + 3] for i in range(len(squashed) - 2)}


def _jaccard(a: set[str] | frozenset[str], b: set[str] | frozenset[str]) -> float:
    return len(a & b) / len(a | b) if (a or b) else 0.0


def pair_features(left: Sequence[str], right: Sequence[str]) -> np.ndarray:
    """The cheap features of :data:`PAIR_FEATURES` for each pair of value texts.

    Parameters
    ----------
    left, right : sequence of str, same length
        Value texts (:func:`values_text`) of the two records of each pair.

    Returns
    -------
    ndarray of shape (n_pairs, len(PAIR_FEATURES)), float64
    """
    if len(left) != len(right):
        raise ValueError(f"left has {len(left)} records, right has {len(right)}")
    out = np.zeros((len(left), len(PAIR_FEATURES)), dtype=np.float64)
    for i, (a, b) in enumerate(zip(left, right)):
        out[i, 0] = _jaccard(set(_WORD.findall(a)), set(_WORD.findall(b)))
        out[i, 1] = _jaccard(_trigrams(a), _trigrams(b))
        out[i, 2] = _jaccard(set(_NUMBER.findall(a)), set(_NUMBER.findall(b)))
        out[i, 3:10] = code_and_measure_features(extract_facts(a), extract_facts(b), _SQUASH.sub("", a), _SQUASH.sub("", b))
        la, lb = len(a), len(b)
        out[i, 10] = min(la, lb) / max(la, lb) if max(la, lb) else 0.0
    return out


class PairModel:
    """A fitted cross-encoder pair model: int8 ONNX graph, feature head, calibrator.

    Open one with :meth:`load` or :func:`default_pair_model`; train one with
    :func:`~simsearch.applications.pair_training.train_pair_model`.

    Parameters
    ----------
    directory : path-like
        Folder holding ``model.onnx`` and ``tokenizer.json``.
    max_length : int
        Tokens per pair (both records together), truncating the longer first.
    head : dict
        ``mean``, ``scale``, ``coef`` (lists over ``[logit, *PAIR_FEATURES]``)
        and ``intercept``.
    calibrator : Calibrator
    threshold : float
        Default probability threshold of a match.
    info : dict, optional
        What the model was trained on (kept in the manifest).
    num_threads : int, optional
        onnxruntime threads; default one per core.
    batch_size : int, default 64

    Attributes
    ----------
    threshold : float
    info : dict
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_length: int,
        head: dict[str, Any],
        calibrator: Calibrator,
        threshold: float,
        info: dict[str, Any] | None = None,
        num_threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        self.directory = Path(directory)
        self.max_length = int(max_length)
        self.head = head
        self.calibrator = calibrator
        self.threshold = float(threshold)
        self.info = dict(info or {})
        self.num_threads = num_threads
        self.batch_size = int(batch_size)
        self._session: Any = None
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        trained = ", ".join(self.info.get("datasets", [])) or "?"
        return f"PairModel({str(self.directory)!r}, max_length={self.max_length}, threshold={self.threshold:.3f}, trained on {trained})"

    # -- the cross-encoder ---------------------------------------------------

    def _runtime(self) -> tuple[Any, Any]:
        if self._session is None:
            from tokenizers import Tokenizer

            from simsearch.encoders.backends import OnnxBackend

            tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
            tokenizer.no_padding()
            tokenizer.enable_truncation(self.max_length, strategy="longest_first")
            self._tokenizer = tokenizer
            self._session = OnnxBackend(self.directory / "model.onnx", self.num_threads)
        return self._session, self._tokenizer

    def logits(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        """Cross-encoder logits of serialized record pairs, shape (n,), float32.

        Pairs are sorted by length and padded per batch, so a batch of short
        titles costs short sequences.
        """
        session, tokenizer = self._runtime()
        n = len(left)
        out = np.zeros(n, dtype=np.float32)
        if n == 0:
            return out
        encodings = tokenizer.encode_batch(list(zip(left, right)))
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encodings[i].ids) for i in idx)
            feed = {name: np.zeros((len(idx), width), dtype=np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
            for row, i in enumerate(idx):
                e = encodings[i]
                m = len(e.ids)
                feed["input_ids"][row, :m] = e.ids
                feed["attention_mask"][row, :m] = 1
                feed["token_type_ids"][row, :m] = e.type_ids
            out[idx] = session.run(feed).reshape(len(idx))
        return out

    # -- scoring ---------------------------------------------------------------

    def head_inputs(self, left_records: Sequence[Any], right_records: Sequence[Any]) -> np.ndarray:
        """``[logit, *PAIR_FEATURES]`` of each pair, shape (n, 1 + len(PAIR_FEATURES)), float64."""
        if len(left_records) != len(right_records):
            raise ValueError(f"left_records has {len(left_records)} records, right_records has {len(right_records)}")
        left = [serialize(r) for r in left_records]
        right = [serialize(r) for r in right_records]
        features = pair_features([values_text(t) for t in left], [values_text(t) for t in right])
        return np.column_stack([self.logits(left, right).astype(np.float64), features])

    def decision(self, inputs: np.ndarray) -> np.ndarray:
        """The head's linear score of :meth:`head_inputs` rows, shape (n,), float64."""
        z = (inputs - np.asarray(self.head["mean"])) / np.asarray(self.head["scale"])
        return z @ np.asarray(self.head["coef"]) + float(self.head["intercept"])

    def predict_proba(self, left_records: Sequence[Any], right_records: Sequence[Any]) -> np.ndarray:
        """Calibrated probability that each (left, right) pair is one entity.

        Parameters
        ----------
        left_records, right_records : sequence of (str or mapping), same length
            Records as :func:`serialize` takes them: mappings of column to
            value (every column is read), serialized strings, or plain titles.

        Returns
        -------
        ndarray of shape (n,), float64 in [0, 1]

        Examples
        --------
        >>> m = default_pair_model()  # doctest: +SKIP
        >>> m.predict_proba(["sony kdl-40v4100 40in lcd"], ["Sony KDL40V4100 LCD TV"])  # doctest: +SKIP
        array([0.9...])
        """
        if len(left_records) == 0:
            return np.zeros(0)
        return self.calibrator.predict(self.decision(self.head_inputs(left_records, right_records)))

    # -- files -------------------------------------------------------------------

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "features": ["cross_encoder_logit", *PAIR_FEATURES],
            "head": self.head,
            "calibrator": self.calibrator.to_json(),
            "threshold": self.threshold,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to the new folder ``path`` (graph, tokenizer, manifest with checksums).

        Raises
        ------
        FileExistsError
            If ``path`` exists.
        """
        import shutil

        path = Path(path).expanduser()
        if path.exists():
            raise FileExistsError(f"{str(path)!r} exists; save to a new path")
        with _storage.atomic_dir(path, replace=False) as tmp:
            for name in ("model.onnx", "tokenizer.json"):
                shutil.copyfile(self.directory / name, tmp / name)
            _storage.write_manifest(
                tmp, MANIFEST, format=PAIR_MODEL_FORMAT, version=PAIR_MODEL_VERSION,
                fields=self.manifest_fields(), files=("model.onnx", "tokenizer.json"),
            )

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, num_threads: int | None = None, verify: bool = True
    ) -> PairModel:
        """Open a folder written by :meth:`save`.

        Parameters
        ----------
        path : path-like
        num_threads : int, optional
            onnxruntime threads.
        verify : bool, default True
            Check each file's SHA-256 against the manifest.

        Raises
        ------
        FileNotFoundError
            No manifest in ``path``.
        CorruptFileError, FormatVersionError
            A damaged folder or one written by a newer simsearch (both ``ValueError``).
        """
        path = Path(path).expanduser()
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{str(path)!r} holds no pair model ({MANIFEST} is missing)")
        m = _storage.read_manifest(
            path, MANIFEST, format=PAIR_MODEL_FORMAT, versions=(PAIR_MODEL_VERSION,), what="pair model", verify=verify
        )
        return cls(
            path, max_length=m["max_length"], head=m["head"], calibrator=Calibrator.from_json(m["calibrator"]),
            threshold=m["threshold"], info=m.get("info"), num_threads=num_threads,
        )


@functools.lru_cache(maxsize=1)
def default_pair_model() -> PairModel:
    """The pair model shipped inside simsearch, opened once per process.

    Trained with no label of the data it is used on: see its ``README.md``
    (``simsearch/models/pair_model/``) for the training data and its terms.

    Returns
    -------
    PairModel
        ``predict_proba(left_records, right_records)`` gives calibrated
        match probabilities; ``threshold`` is its default decision threshold.

    Raises
    ------
    FileNotFoundError
        If this installation lacks the shipped model.
    """
    return PairModel.load(DEFAULT_PAIR_MODEL_DIR)


def resolve_pair_model(spec: str | os.PathLike[str] | PairModel | None) -> PairModel | None:
    """The pair model a matcher's ``pair_model`` parameter names.

    Parameters
    ----------
    spec : "default", path, PairModel or None
        ``"default"``: :func:`default_pair_model`; a path: :meth:`PairModel.load`.

    Returns
    -------
    PairModel or None
    """
    if spec is None or isinstance(spec, PairModel):
        return spec
    if isinstance(spec, str) and spec == "default":
        return default_pair_model()
    if isinstance(spec, (str, os.PathLike)):
        return _load_cached(str(Path(spec).expanduser().resolve()))
    raise TypeError(f"pair_model must be 'default', a path, a PairModel or None, got {type(spec).__name__}")


@functools.lru_cache(maxsize=4)
def _load_cached(path: str) -> PairModel:
    return PairModel.load(path)


def top_per_row(
    rows: np.ndarray, prods: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` best-scoring pairs of each row, rows ascending, best first.

    Parameters
    ----------
    rows, prods : ndarray of shape (m,), int
        Pairs (row, candidate).
    scores : ndarray of shape (m,), float
    k : int

    Returns
    -------
    rows, prods, scores : ndarray
        The kept pairs.
    rank : ndarray of int64
        1 for a row's best pair.
    kept_at : ndarray of int64
        Each kept pair's position in the input.
    """
    # Sort by (row, -score, candidate), then keep the first k of each run.
    order = np.lexsort((prods, -scores, rows))
    sorted_rows = rows[order]
    starts = np.searchsorted(sorted_rows, sorted_rows, side="left")
    rank = np.arange(len(order)) - starts + 1
    keep = rank <= k
    kept_at = order[keep]
    return rows[kept_at], prods[kept_at], scores[kept_at], rank[keep], kept_at
