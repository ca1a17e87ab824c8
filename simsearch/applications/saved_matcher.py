"""The folder a :class:`~simsearch.CatalogMatcher` is saved to, and how it is read back.

Layout::

    matcher.json      format name and version, the matcher's parameters,
                      threshold, calibration, feature config and the SHA-256
                      of every other file
    encoder/          the text model
    index.bin         the index over the catalog
    catalog.simspy    catalog vectors (checksummed container)
    catalog.parquet   ids, titles, feature columns
    pair_scorer.skops the learned second stage, after fit_pairs
    pair_model/       a pair model given as an object or path (not the shipped default)

Nothing is pickled. The folder is built under a temporary name and renamed
into place when complete (:func:`~simsearch._storage.atomic_dir`).

Format versions: 1 listed the checksums under ``files``; 2 writes the
manifest with :func:`~simsearch._storage.write_manifest` (``checksums``); 3
adds the ``pair_model`` parameter (``"default"``, ``"folder"`` for the copy in
``pair_model/``, or null); 4 adds ``score_map``, the map from the raw score
to the probability (:class:`~simsearch.applications.match_calibration.ScoreMap`:
slope, intercept, threshold, source), written out even when it is the
shipped default so that a later default does not change a saved matcher. All
are read; a version-1 or -2 folder predates the pair model and loads without
one, and a folder before version 4 loads with ``score_map_ = None``: it
returns the raw scores with its saved thresholds (raw scale), so it scores
as it did.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simsearch import _fileio, _storage
from simsearch._validation import check_positive_int
from simsearch.applications._items import Items
from simsearch.applications.lexical import LexicalModel, PairScoring, hybrid_vectors
from simsearch.applications.match_calibration import ScoreMap
from simsearch.applications.metrics import ThresholdChoice
from simsearch.applications.pair_model import PairModel, resolve_pair_model
from simsearch.applications.pair_scorer import FeatureConfig, PairScorer
from simsearch.errors import CorruptFileError, SimsearchError

__all__ = ["MANIFEST", "MATCHER_FORMAT", "MATCHER_FORMAT_VERSION", "read_matcher", "write_matcher"]

#: Folder format of :meth:`CatalogMatcher.save`.
MATCHER_FORMAT = "simsearch-catalog-matcher"
MATCHER_FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
MANIFEST = "matcher.json"
# Files of a text model directory that a saved matcher keeps.
_ENCODER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "vocab.txt", "1_Pooling", "modules.json", "simsearch_finetune.json")
_WHAT = "saved CatalogMatcher"


def write_matcher(m: Any, path: str | os.PathLike[str]) -> None:
    """Write a fitted :class:`~simsearch.CatalogMatcher` to the new folder ``path``.

    Raises
    ------
    ValueError
        If it uses images or an encoder other than :class:`~simsearch.TextEncoder`.
    FileExistsError
        If ``path`` exists.
    """
    from simsearch.encoders import TextEncoder

    if m.image_col:
        raise ValueError("saving a matcher with images is not supported")
    if not isinstance(m.encoder_, TextEncoder):
        raise ValueError(f"save needs a TextEncoder, this matcher has {type(m.encoder_).__name__}")
    path = Path(path).expanduser()
    if path.exists():
        raise FileExistsError(f"{str(path)!r} exists; save to a new path")
    with _storage.atomic_dir(path, replace=False) as tmp:
        source = m.encoder_.source.path
        for f in sorted(source.rglob("*")):
            rel = f.relative_to(source)
            if f.is_file() and rel.parts[0] in _ENCODER_FILES:
                (tmp / "encoder" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, tmp / "encoder" / rel)
        m.index_.save(tmp / "index.bin")
        _fileio.write_container(tmp / "catalog.simspy", {"kind": "catalog-vectors"}, {"vectors": m.catalog_.vectors})
        columns = {"id": m.product_ids_, "title": pa.array(m.catalog_texts_, type=pa.string())}
        columns.update({f"feature:{c}": pa.array(v) for c, v in m.catalog_columns_.items()})
        pq.write_table(pa.table(columns), tmp / "catalog.parquet")
        if m.pair_scorer_ is not None:
            m.pair_scorer_.save(tmp / "pair_scorer.skops")
        pair_model = m.pair_model if m.pair_model is None or m.pair_model == "default" else "folder"
        if pair_model == "folder":
            resolve_pair_model(m.pair_model).save(tmp / "pair_model")  # type: ignore[union-attr]
        scoring = m.scoring
        fields = {
            "params": {
                "k": m.k, "id_col": m.id_col, "text_col": m.text_col, "lexical": m.lexical,
                "threshold": m.threshold, "n_candidates": m.n_candidates,
                "index_params": m.index_params, "batch_size": m.batch_size,
                "pair_model": pair_model, "rerank": m.rerank,
                "scoring": {
                    "vector_weight": scoring.vector_weight, "code_bonus": scoring.code_bonus,
                    "code_conflict_penalty": scoring.code_conflict_penalty,
                    "measure_conflict_penalty": scoring.measure_conflict_penalty,
                    "ngram_range": list(scoring.ngram_range), "projection_dim": scoring.projection_dim,
                },
            },
            "encoder": {
                "precision": m.encoder_.precision, "max_length": m.encoder_.max_length,
                "batch_size": m.encoder_.batch_size,
            },
            "threshold": m.threshold_,
            "calibration": None if m.calibration_ is None else m.calibration_.to_dict(),
            "feature_config": None if m.feature_config_ is None else m.feature_config_.to_json(),
            "score_map": None if m.score_map_ is None else m.score_map_.to_dict(),
        }  # fmt: skip
        files = sorted(f.relative_to(tmp).as_posix() for f in tmp.rglob("*") if f.is_file())
        _storage.write_manifest(
            tmp, MANIFEST, format=MATCHER_FORMAT, version=MATCHER_FORMAT_VERSION, fields=fields, files=files
        )


def read_matcher(cls: type, path: str | os.PathLike[str], *, progress: bool | None, num_threads: int | None) -> Any:
    """Open a matcher folder written by :func:`write_matcher` (any readable version) as a ``cls``.

    Raises
    ------
    CorruptFileError
        Not a matcher folder (no or foreign ``matcher.json``, not JSON), a
        file missing or failing its checksum (a ``ValueError``), or members
        that pass their checksums but do not load (a model file the encoder
        cannot parse, a table lacking its columns: a folder resealed by hand
        or crafted).
    FormatVersionError
        A newer format version (a ``ValueError``).
    """
    if num_threads is not None:
        check_positive_int(num_threads, "num_threads")  # the caller's mistake, not the folder's
    path = Path(path).expanduser()
    if not (path / MANIFEST).is_file():
        raise CorruptFileError(f"{str(path)!r} is not a {_WHAT}: it has no {MANIFEST}")
    body = _storage.read_json(path / MANIFEST, f"the {_WHAT} manifest")
    if "files" in body and "checksums" not in body:  # format version 1
        manifest = _check_version_1(path, body)
    else:
        # Every file the loader reads was listed when written: models included.
        read = [f.relative_to(path).as_posix() for d in ("encoder", "pair_model") for f in (path / d).rglob("*") if f.is_file()]
        manifest = _storage.read_manifest(
            path, MANIFEST, format=MATCHER_FORMAT, versions=READABLE_VERSIONS, what=_WHAT,
            required=["catalog.simspy", "catalog.parquet", "index.bin", *read],
        )  # fmt: skip
    try:
        return _build(cls, path, manifest, progress=progress, num_threads=num_threads)
    except (SimsearchError, MemoryError):
        raise
    except Exception as err:
        # Every member passed its checksum, so what fails now was written so
        # (a crafted or resealed folder): a model file the encoder library
        # cannot parse, a table without its columns, a field of the wrong type.
        raise CorruptFileError(
            f"the {_WHAT} {str(path)!r} is corrupt: its members pass their checksums but do not load "
            f"({type(err).__name__}: {err})"
        ) from err


def _build(cls: type, path: Path, manifest: dict[str, Any], *, progress: bool | None, num_threads: int | None) -> Any:
    """The matcher a checked manifest describes (see :func:`read_matcher`).

    The catalog's members are read and checked against each other first, the
    models last: a damaged table is refused before a model is compiled.
    """
    from simsearch.encoders import TextEncoder
    from simsearch.index import Index

    _, sections = _fileio.read_container(path / "catalog.simspy")
    if "vectors" not in sections or np.asarray(sections["vectors"]).ndim != 2:
        raise CorruptFileError(f"the {_WHAT} {str(path)!r} is corrupt: catalog.simspy holds no vector matrix")
    vectors = np.ascontiguousarray(sections["vectors"], dtype=np.float32)
    table = pq.read_table(path / "catalog.parquet")
    index = Index.load(path / "index.bin")
    if table.num_rows != len(vectors) or len(index) != len(vectors):
        raise CorruptFileError(
            f"the {_WHAT} {str(path)!r} is corrupt: its catalog table has {table.num_rows} rows, its vectors "
            f"{len(vectors)}, its index {len(index)}"
        )
    if len(index) and int(index.ids().max()) >= len(vectors):
        raise CorruptFileError(f"the {_WHAT} {str(path)!r} is corrupt: its index names a product past the catalog")
    params = dict(manifest["params"])
    scoring = dict(params.pop("scoring"))
    scoring["ngram_range"] = tuple(scoring["ngram_range"])
    # Versions 1 and 2 predate the pair model: they score without one.
    params.setdefault("pair_model", None)
    # What save writes, and nothing else: a path here would open a folder outside this one.
    if params["pair_model"] not in (None, "default", "folder"):
        raise CorruptFileError(f"the {_WHAT} {str(path)!r} names an unknown pair model {params['pair_model']!r}")
    dim = scoring.get("projection_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 1 << 16:
        raise CorruptFileError(f"the {_WHAT} {str(path)!r} has a bad scoring projection_dim {dim!r}")
    old_scale = manifest.get("format_version", 1) < 4
    if old_scale and params.get("threshold") is None:
        # Raw scores before version 4: keep the threshold the folder was saved with.
        params["threshold"] = manifest.get("threshold")
    if params["pair_model"] == "folder":
        params["pair_model"] = PairModel.load(path / "pair_model")
    enc = manifest["encoder"]
    encoder = TextEncoder(
        model=path / "encoder", precision=enc["precision"], max_length=enc["max_length"],
        batch_size=enc["batch_size"], num_threads=num_threads,
    )  # fmt: skip
    if encoder.dim != vectors.shape[1]:
        raise CorruptFileError(
            f"the {_WHAT} {str(path)!r} is corrupt: its encoder makes {encoder.dim}-d vectors, its catalog holds {vectors.shape[1]}-d"
        )
    m = cls(encoder, scoring=PairScoring(**scoring), progress=progress, **params)
    if manifest["feature_config"] is not None:
        m.feature_config_ = FeatureConfig.from_json(manifest["feature_config"])
    if manifest["calibration"] is not None:
        m.calibration_ = ThresholdChoice.from_dict(manifest["calibration"])
    # Before version 4 the scores were raw: such a folder keeps them (and its raw-scale thresholds).
    score_map = None if old_scale else manifest["score_map"]
    m.score_map_ = None if score_map is None else ScoreMap.from_dict(score_map)
    if (path / "pair_scorer.skops").is_file():
        m.pair_scorer_ = PairScorer.load(path / "pair_scorer.skops")
    texts = [t or "" for t in table.column("title").to_pylist()]
    m.encoder_ = encoder
    m.product_ids_ = table.column("id").combine_chunks()
    m.catalog_texts_ = texts
    m.catalog_columns_ = {c: table.column(f"feature:{c}").to_pylist() for c in m.feature_config_.columns} if m.feature_config_ else {}
    # The lexical model is refit on the saved titles (deterministic), so scores equal the saved matcher's.
    m.lexical_ = LexicalModel(m.scoring).fit(texts) if m.lexical else None
    if m.lexical_ is not None:
        features = m.lexical_.transform(texts)
        m.catalog_ = Items(vectors, features, hybrid_vectors(vectors, features.projection, m.scoring.vector_weight))
    else:
        m.catalog_ = Items.from_vectors(vectors)
    if index.dim != m.catalog_.search.shape[1]:
        raise CorruptFileError(
            f"the {_WHAT} {str(path)!r} is corrupt: its index is {index.dim}-d, its catalog's search vectors "
            f"{m.catalog_.search.shape[1]}-d"
        )
    m.images_ = None
    m.index_ = index
    m.n_products_ = table.num_rows
    return m


def _check_version_1(path: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Check a version-1 manifest: format, version and the checksums under ``files``."""
    if body.get("format") != MATCHER_FORMAT:
        raise CorruptFileError(
            f"{str(path)!r} is not a {_WHAT}: its format is {body.get('format')!r}, expected {MATCHER_FORMAT!r}"
        )
    _storage.check_version(body.get("format_version"), READABLE_VERSIONS, f"the {_WHAT}", path)
    for name, digest in body["files"].items():
        member = _storage.safe_member(path, name, _WHAT)
        if not member.is_file():
            raise CorruptFileError(f"{str(path)!r} is incomplete: {name} is missing")
        if _storage.sha256_file(member) != digest:
            raise CorruptFileError(f"{str(path)!r} is corrupt: the checksum of {name} does not match")
    return body
