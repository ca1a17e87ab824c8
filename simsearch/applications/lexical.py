"""Cheap lexical evidence for product titles, and the pair score built on it.

A general sentence model blurs what separates near-identical products: model
numbers, capacities, sizes. Three cheap signals see them, and the pair score of
:class:`PairScoring` combines them with the embedding cosine:

- **character n-gram TF-IDF cosine** (3 to 5 characters inside word
  boundaries, sublinear term frequency, IDF learned from the titles at hand),
  which matches ``kdl-40v4100`` with ``kdl40v4100`` and weighs rare tokens up;
- **model codes**: tokens of at least three characters that contain a digit
  (``wan28281gb``, ``i7-8700k``, ``7873``). Two titles that share a code, or a
  run of three or more digits inside their codes, get a bonus; two titles whose
  codes are *near misses* of each other (same leading letters and either at most
  two edits apart, as ``ue55mu6100`` and ``ue55mu6120``, or with leading runs of
  three or more digits of equal length, as ``mw7873`` and ``mw8060``) and that
  share none get a large penalty: that is the signature of two variants of one
  product line;
- **measures**: a number followed by a unit (``64 gb``, ``8kg``, ``55"``).
  Titles that both state a unit but never the same value for it get a penalty.

Codes and measures are only compared when both titles have them: a title that
states no code is neither helped nor hurt.

The candidate search sees the TF-IDF vector through a random projection
(:func:`hybrid_vectors`). By default the projection matrix is drawn over the
fitted vocabulary's columns, so it changes whenever the vocabulary does. With
``PairScoring(hashed_projection=True)`` (the default of
:class:`~simsearch.Deduplicator`, see :func:`dedup_scoring`) each n-gram's
row of the projection is fixed by a hash of the n-gram itself: a title's
search vector then depends on its own n-grams and their IDF, not on which
other titles built the vocabulary, and a catalog that grows keeps its items'
neighbours.

The default weights were chosen on PriceRunner and the Shopee dev split (see
``benchmarks/RESULTS.md``) and then kept fixed for every data set; they are
plain fields of :class:`PairScoring`, so a user can set them.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simsearch.applications.metrics import ThresholdChoice, best_f1_threshold
from simsearch.errors import NotFittedError

__all__ = [
    "LexicalModel",
    "PairScoring",
    "TextFeatures",
    "TitleFacts",
    "best_f1_threshold",  # lives in metrics.py; importable from here as before
    "code_relation",
    "dedup_scoring",
    "extract_facts",
    "facts_conflict",
    "hybrid_vectors",
    "leads_conflict",
    "measures_conflict",
    "normalize_title",
    "rowwise_dot",
    "rule_adjustment",
]

# Units that follow a number in product titles. Longer spellings come first so
# that the alternation prefers them ("mhz" before "m").
_UNITS = (
    "megapixel|mpix|mpx|mp|ghz|mhz|hz|gb|tb|mb|kb|inches|inch|in|zoll|cm|mm|m|kg|gram|gr|g|mg|"
    "ml|ltr|litre|liter|l|kw|w|v|mah|pcs|pc|lbs|lb|oz|rpm|x|\"|''"
)
_UNIT_ALIASES = {"inches": "inch", "in": "inch", "zoll": "inch", '"': "inch", "''": "inch",
                 "gram": "g", "gr": "g", "ltr": "l", "litre": "l", "liter": "l",
                 "mpix": "mp", "mpx": "mp", "megapixel": "mp", "pc": "pcs", "lbs": "lb"}
_MEASURE = re.compile(r"(?<![a-z0-9.,])(\d+(?:[.,]\d+)?)\s*(" + _UNITS + r")(?![a-z0-9])")
_TOKEN = re.compile(r"[a-z0-9]+(?:[-/._][a-z0-9]+)*")
_SEPARATORS = re.compile(r"[-/._]")
_DIGIT_RUN = re.compile(r"\d{3,}")
_LEADING_LETTERS = re.compile(r"^[a-z]*")
# Alphabetic tokens (any script), bounded by non-word characters or digits.
_WORD = re.compile(r"(?<![^\W\d_])[^\W\d_]+(?![^\W\d_])")
# Literal byte escapes ("\xf0\x9f...") left in scraped titles by a bad decode.
_BYTE_ESCAPE = re.compile(r"\\x[0-9a-f]{2}")


def normalize_title(text: str) -> str:
    """Lower-case, NFKC-fold and clean a title for the lexical features.

    Literal byte escapes such as ``\\xf0\\x9f`` (left by a bad decode upstream)
    are dropped; nothing else is removed.

    Parameters
    ----------
    text : str

    Returns
    -------
    str
    """
    return _BYTE_ESCAPE.sub(" ", unicodedata.normalize("NFKC", text).lower())


@dataclass(frozen=True)
class TitleFacts:
    """Model codes and measures found in one title.

    Attributes
    ----------
    codes : frozenset of str
        Tokens with a digit, separators removed (``"kdl40v4100"``).
    measures : frozenset of (str, str)
        ``(unit, value)`` pairs, units canonical (``("inch", "55")``).
    digit_runs : frozenset of str
        Runs of three or more digits inside the codes.
    lead : str
        The first token when it is a word of three or more letters (in
        product titles, usually the brand), else ``""``.
    words : frozenset of str
        Every alphabetic token of the title.
    """

    codes: frozenset[str] = frozenset()
    measures: frozenset[tuple[str, str]] = frozenset()
    digit_runs: frozenset[str] = frozenset()
    lead: str = ""
    words: frozenset[str] = frozenset()


def extract_facts(text: str) -> TitleFacts:
    """Find the model codes and the measures of one title.

    Parameters
    ----------
    text : str
        A raw title; it is normalized with :func:`normalize_title` first.

    Returns
    -------
    TitleFacts

    Examples
    --------
    >>> f = extract_facts('Sony KDL-40V4100 40" LCD TV, 64 GB')
    >>> sorted(f.codes), sorted(f.measures)
    (['kdl40v4100'], [('gb', '64'), ('inch', '40')])
    """
    text = normalize_title(text)
    measures = frozenset(
        (_UNIT_ALIASES.get(unit, unit), _number(value)) for value, unit in _MEASURE.findall(text)
    )
    codes = set()
    for token in _TOKEN.findall(_MEASURE.sub(" ", text)):
        code = _SEPARATORS.sub("", token)
        if len(code) >= 3 and any(c.isdigit() for c in code):
            codes.add(code)
    runs = frozenset(run for code in codes for run in _DIGIT_RUN.findall(code))
    words = _WORD.findall(text)
    lead = words[0] if words and len(words[0]) >= 3 and text.lstrip().startswith(words[0]) else ""
    return TitleFacts(frozenset(codes), measures, runs, lead, frozenset(words))


def _number(value: str) -> str:
    """A measure's value in one spelling: ``"3,10"`` and ``"3.1"`` are both ``"3.1"``."""
    value = value.replace(",", ".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def _edit_distance_at_most_2(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 2:
        return False
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > 2:
            return False
        previous = current
    return previous[-1] <= 2


def _near_miss(a: str, b: str) -> bool:
    """Two codes of one product line that name different variants."""
    if a.startswith(b) or b.startswith(a):  # "j006" and "j006b": a suffix, not a rival
        return False
    if _LEADING_LETTERS.match(a).group() != _LEADING_LETTERS.match(b).group():  # type: ignore[union-attr]
        return False
    if _edit_distance_at_most_2(a, b):
        return True
    run_a, run_b = _DIGIT_RUN.findall(a), _DIGIT_RUN.findall(b)
    return bool(run_a and run_b and len(run_a[0]) == len(run_b[0]))


def code_relation(a: TitleFacts, b: TitleFacts) -> int:
    """Whether two titles' model codes agree.

    Returns
    -------
    int
        ``1`` if they share a code or a digit run of three or more digits,
        ``-1`` if they share none and a pair of them are near misses (see the
        module docstring), ``0`` otherwise (including when either has no code).
    """
    if not a.codes or not b.codes:
        return 0
    if a.codes & b.codes or a.digit_runs & b.digit_runs:
        return 1
    for x in a.codes:
        for y in b.codes:
            if _near_miss(x, y):
                return -1
    return 0


def measures_conflict(a: TitleFacts, b: TitleFacts) -> bool:
    """True if both titles state a unit and never the same value for it."""
    if not a.measures or not b.measures:
        return False
    units = {u for u, _ in a.measures} & {u for u, _ in b.measures}
    return any(
        not ({m for m in a.measures if m[0] == u} & {m for m in b.measures if m[0] == u}) for u in units
    )


def leads_conflict(a: TitleFacts, b: TitleFacts) -> bool:
    """True if the titles open with different words and neither names the other's.

    Product titles open with the brand (``"cello c55ansmt ..."`` against
    ``"electriq 50 ..."``); a title that opens otherwise (``"iphone 8"`` against
    ``"apple iphone 8"``) still names the other's first word somewhere, and is
    not counted as a conflict.
    """
    return bool(a.lead and b.lead and a.lead != b.lead and a.lead not in b.words and b.lead not in a.words)


def facts_conflict(a: TitleFacts, b: TitleFacts) -> bool:
    """Whether two titles name different products by their attributes.

    True when their model codes are near misses (:func:`code_relation` is
    -1), they state conflicting measures (:func:`measures_conflict`) or they
    open with different brands (:func:`leads_conflict`). Grouping never puts
    two such titles in one group.
    """
    return code_relation(a, b) < 0 or measures_conflict(a, b) or leads_conflict(a, b)


@dataclass
class PairScoring:
    """How a pair score is made from the embedding and the lexical evidence.

    ``score = vector_weight * cos(embeddings) + (1 - vector_weight) * cos(tfidf)
    + code_bonus [shared code] - code_conflict_penalty [near-miss codes]
    - measure_conflict_penalty [conflicting measures]``.

    Scores therefore lie in about ``[-1.2, 1.2]``; two identical titles score 1
    (plus the code bonus if they carry a code). The dedup reports this raw
    score as a probability through
    :class:`~simsearch.applications.dedup_calibration.PairCalibration`.

    Parameters
    ----------
    vector_weight : float, default 0.2
        Weight of the embedding cosine; the TF-IDF cosine gets the rest. On
        product titles the character n-grams carry most of the signal (see
        ``docs`` in ``benchmarks/RESULTS.md``); the embedding adds synonyms and
        word order.
    code_bonus : float, default 0.2
        Added when the titles share a model code.
    code_conflict_penalty : float, default 1.0
        Subtracted when their codes are near misses: in effect a veto.
    measure_conflict_penalty : float, default 0.2
        Subtracted when they state conflicting measures (64 GB against 128 GB).
    ngram_range : tuple of int, default (3, 5)
        Character n-gram lengths for the TF-IDF.
    projection_dim : int, default 128
        Width of the random projection of the TF-IDF vector that is appended
        to the embedding for candidate search (the index sees
        ``[sqrt(w) * embedding, sqrt(1 - w) * projection]``).
    hashed_projection : bool, default False
        Fix each n-gram's projection row by a hash of the n-gram (the same
        row whatever the vocabulary) instead of drawing the matrix over the
        vocabulary's columns. Pair scores are the same either way; only the
        candidate search changes. :class:`~simsearch.Deduplicator` sets it
        (:func:`dedup_scoring`) so that the neighbours of old items do not
        move when the lexical model is fit on a larger catalog.
    """

    vector_weight: float = 0.2
    code_bonus: float = 0.2
    code_conflict_penalty: float = 1.0
    measure_conflict_penalty: float = 0.2
    ngram_range: tuple[int, int] = (3, 5)
    projection_dim: int = 128
    hashed_projection: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.vector_weight <= 1.0:
            raise ValueError(f"vector_weight must be in [0, 1], got {self.vector_weight}")
        for name in ("code_bonus", "code_conflict_penalty", "measure_conflict_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        lo, hi = self.ngram_range
        if not 1 <= lo <= hi:
            raise ValueError(f"ngram_range must be (low, high) with 1 <= low <= high, got {self.ngram_range}")
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")

    @property
    def max_bonus(self) -> float:
        """The most the rules can add to the weighted cosines."""
        return self.code_bonus

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (``ngram_range`` as a list)."""
        out = dict(self.__dict__)
        out["ngram_range"] = list(self.ngram_range)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PairScoring:
        """Rebuild from :meth:`to_dict`; a missing field takes its default (older files)."""
        return cls(**{**values, "ngram_range": tuple(values["ngram_range"])})


def dedup_scoring() -> PairScoring:
    """The scoring of :class:`~simsearch.Deduplicator` when none is given: the defaults, ``hashed_projection=True``.

    The raw pair scores are those of ``PairScoring()`` (and the shipped
    calibration applies unchanged); only the candidate search's projection is
    vocabulary-free, so that an incremental state and a full run on the
    grown catalog search the same neighbourhoods.
    """
    return PairScoring(hashed_projection=True)


#: Non-zeros of each n-gram's row in a hashed projection (``hashed_projection``).
HASHED_NONZEROS = 8


def hashed_rows(terms: Sequence[str], dim: int, seed: int = 0) -> Any:
    """The hashed projection rows of ``terms``: sparse of shape (len(terms), dim), float32.

    Each n-gram gets :data:`HASHED_NONZEROS` entries of ``+-1/sqrt(nonzeros)``
    at positions and signs drawn from a hash of the n-gram alone (murmurhash3,
    then splitmix64), so an n-gram's row is the same in every vocabulary.
    """
    import scipy.sparse as sp
    from sklearn.utils import murmurhash3_32

    h = np.fromiter((murmurhash3_32(t, seed=seed, positive=True) for t in terms), dtype=np.uint64, count=len(terms))
    k = HASHED_NONZEROS
    with np.errstate(over="ignore"):  # splitmix64 wraps modulo 2**64 by design
        z = (h[:, None] * np.uint64(k) + np.arange(k, dtype=np.uint64)[None, :]) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    cols = (z % np.uint64(dim)).astype(np.int64).ravel()
    signs = np.where((z >> np.uint64(32)) & np.uint64(1), 1.0, -1.0).astype(np.float32).ravel() / np.sqrt(k)
    rows = np.repeat(np.arange(len(terms), dtype=np.int64), k)
    return sp.csr_matrix((signs, (rows, cols)), shape=(len(terms), dim), dtype=np.float32)


@dataclass
class LexicalModel:
    """Character n-gram TF-IDF and a random projection of it, fit on titles.

    Parameters
    ----------
    scoring : PairScoring
        Gives the n-gram range and the projection width.
    random_state : int, default 0
        Seed of the random projection.

    Attributes
    ----------
    vectorizer_ : sklearn.feature_extraction.text.TfidfVectorizer
    projection_ : sklearn.random_projection.SparseRandomProjection
    """

    scoring: PairScoring = field(default_factory=PairScoring)
    random_state: int = 0
    vectorizer_: Any = None
    projection_: Any = None
    term_rows_: Any = None

    def fit(self, texts: Sequence[str]) -> LexicalModel:
        """Learn the vocabulary and IDF from ``texts`` (usually the catalog).

        Raises
        ------
        ValueError
            If ``texts`` is empty.
        """
        if len(texts) == 0:
            raise ValueError("cannot fit the lexical model on no texts")
        self.vectorizer_ = self._vectorizer()
        self.vectorizer_.fit(texts)
        self._fit_projection(self._terms())
        return self

    def _vectorizer(self, vocabulary: dict[str, int] | None = None) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=self.scoring.ngram_range,
            sublinear_tf=True,
            dtype=np.float32,
            preprocessor=normalize_title,
            vocabulary=vocabulary,
        )

    def _terms(self) -> list[str]:
        vocab = self.vectorizer_.vocabulary_
        terms = [""] * len(vocab)
        for term, column in vocab.items():
            terms[column] = term
        return terms

    def _fit_projection(self, terms: Sequence[str]) -> None:
        import scipy.sparse as sp
        from sklearn.exceptions import DataDimensionalityWarning
        from sklearn.random_projection import SparseRandomProjection

        n_features = len(terms)

        # The projection matrix depends only on the number of features, the
        # width and the seed, so fitting on an empty matrix of the right width
        # gives the same matrix as fitting on the titles.
        self.projection_ = SparseRandomProjection(
            n_components=self.scoring.projection_dim, dense_output=True, random_state=self.random_state
        )
        with warnings.catch_warnings():
            # A tiny catalog has fewer n-grams than projection_dim: projecting
            # up is harmless here (only candidate search sees the projection).
            warnings.simplefilter("ignore", DataDimensionalityWarning)
            self.projection_.fit(sp.csr_matrix((1, n_features), dtype=np.float32))
        self.term_rows_ = hashed_rows(terms, self.scoring.projection_dim, self.random_state) if self.scoring.hashed_projection else None

    def vocabulary(self) -> tuple[list[str], np.ndarray]:
        """The learned n-grams in column order and their IDF weights.

        Returns
        -------
        terms : list of str
            N-gram of each TF-IDF column.
        idf : ndarray of shape (len(terms),), float
        """
        if self.vectorizer_ is None:
            raise NotFittedError("this LexicalModel is not fitted: call fit(texts) before vocabulary()")
        return self._terms(), np.asarray(self.vectorizer_.idf_)

    @classmethod
    def restore(
        cls, scoring: PairScoring, terms: Sequence[str], idf: np.ndarray, random_state: int = 0
    ) -> LexicalModel:
        """Rebuild a fitted model from :meth:`vocabulary` (nothing is unpickled).

        Parameters
        ----------
        scoring : PairScoring
            The scoring the model was fit with.
        terms : sequence of str
            N-gram of each column, as :meth:`vocabulary` returns them.
        idf : ndarray of shape (len(terms),), float
        random_state : int, default 0

        Returns
        -------
        LexicalModel
        """
        if len(terms) != len(idf) or len(terms) == 0:
            raise ValueError(f"terms ({len(terms)}) and idf ({len(idf)}) must be non-empty and of one length")
        model = cls(scoring=scoring, random_state=random_state)
        model.vectorizer_ = model._vectorizer({t: i for i, t in enumerate(terms)})
        model.vectorizer_.idf_ = np.asarray(idf, dtype=np.float64)
        model._fit_projection(terms)
        return model

    def transform(self, texts: Sequence[str]) -> TextFeatures:
        """TF-IDF rows, projected vectors and facts of ``texts``.

        Returns
        -------
        TextFeatures
        """
        if self.vectorizer_ is None:
            raise NotFittedError("this LexicalModel is not fitted: call fit(texts) before transform()")
        tfidf = self.vectorizer_.transform(texts).tocsr()
        return TextFeatures(tfidf=tfidf, facts=[extract_facts(t) for t in texts], projection=self._project(tfidf))

    def _project(self, tfidf: Any) -> np.ndarray:
        if self.term_rows_ is not None:
            out = np.asarray((tfidf @ self.term_rows_).toarray(), dtype=np.float32)
        else:
            out = np.asarray(self.projection_.transform(tfidf), dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


@dataclass
class TextFeatures:
    """Lexical features of a list of titles, row ``i`` for title ``i``.

    Attributes
    ----------
    tfidf : scipy.sparse.csr_matrix of shape (n, n_features), float32
        L2-normalized TF-IDF rows (an all-zero row for a title with no n-gram).
    facts : list of TitleFacts
    projection : ndarray of shape (n, projection_dim), float32
        Unit-norm random projection of the TF-IDF rows (zero for empty rows).
    """

    tfidf: Any
    facts: list[TitleFacts]
    projection: np.ndarray


def hybrid_vectors(embeddings: np.ndarray, projection: np.ndarray, vector_weight: float) -> np.ndarray:
    """Concatenate embeddings and the TF-IDF projection for candidate search.

    The inner product of two such rows approximates
    ``w * cos(embeddings) + (1 - w) * cos(tfidf)``, so nearest neighbours in an
    index over them are the candidates the exact pair score will rank.

    Parameters
    ----------
    embeddings : ndarray of shape (n, d1), float32, unit rows
    projection : ndarray of shape (n, d2), float32, unit or zero rows
    vector_weight : float in [0, 1]

    Returns
    -------
    ndarray of shape (n, d1 + d2), float32, unit rows
    """
    out = np.hstack(
        [np.sqrt(vector_weight) * embeddings, np.sqrt(1.0 - vector_weight) * projection]
    ).astype(np.float32, copy=False)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def rowwise_dot(a: Any, rows_a: np.ndarray, b: Any, rows_b: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Inner products ``a[rows_a[i]] . b[rows_b[i]]`` for dense or sparse matrices.

    Parameters
    ----------
    a, b : ndarray or scipy.sparse matrix of shape (n_a, d), (n_b, d)
    rows_a, rows_b : ndarray of shape (m,), int
    chunk : int, default 65536
        Pairs per step; bounds the temporary memory.

    Returns
    -------
    ndarray of shape (m,), float32
    """
    out = np.empty(len(rows_a), dtype=np.float32)
    sparse = hasattr(a, "multiply")
    for start in range(0, len(rows_a), chunk):
        ra, rb = rows_a[start : start + chunk], rows_b[start : start + chunk]
        if sparse:
            out[start : start + chunk] = np.asarray(a[ra].multiply(b[rb]).sum(axis=1)).ravel()
        else:
            out[start : start + chunk] = np.einsum("ij,ij->i", a[ra], b[rb])
    return out


def rule_adjustment(scoring: PairScoring, a: TitleFacts, b: TitleFacts) -> float:
    """What the code and measure rules add to the weighted cosines of one pair."""
    if not (a.codes and b.codes) and not (a.measures and b.measures):
        return 0.0  # the common case: nothing to compare
    adjustment = 0.0
    relation = code_relation(a, b)
    if relation > 0:
        adjustment += scoring.code_bonus
    elif relation < 0:
        adjustment -= scoring.code_conflict_penalty
    if scoring.measure_conflict_penalty and measures_conflict(a, b):
        adjustment -= scoring.measure_conflict_penalty
    return adjustment


def __getattr__(name: str) -> Any:
    # Deprecated names: the threshold-choice type and function moved to metrics.py.
    if name == "Calibration":
        import warnings

        warnings.warn(
            "simsearch.applications.lexical.Calibration is deprecated; use "
            "simsearch.applications.ThresholdChoice",
            DeprecationWarning,
            stacklevel=2,
        )
        return ThresholdChoice
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
