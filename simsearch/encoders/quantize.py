"""int8 quantization of exported text graphs.

The recipe was chosen by measurement on 2,000 PriceRunner titles against the
fp32 graph (see benchmarks/RESULTS.md, "## Encoders"):

* dynamic activations (scale computed per batch at run time) rather than
  static ones calibrated in advance: titles vary a lot in length and content,
  and dynamic scales lose less;
* int8 weights per output channel: one scale per column follows the spread
  of each neuron's weights, where one scale per tensor crushes the small ones;
* the word-embedding table stays in float: it is a lookup, not a matmul, so
  quantizing it saves memory but no time and costs accuracy.

The attention projections become ``QAttention`` and the other matmuls
``MatMulInteger`` (fused by onnxruntime at load time into
``DynamicQuantizeMatMul``), which run on the CPU's integer dot-product
instructions: VNNI where present, AVX2 otherwise.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

# Ops whose int8 form runs integer kernels; anything else found in the
# quantized graph is a float op.
INTEGER_OPS = frozenset({"MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat"})


def quantize_text_model(fp32_path: Path, directory: Path) -> None:
    """Write ``directory/model.onnx``, the int8 version of ``fp32_path``.

    Parameters
    ----------
    fp32_path : Path
        The fused fp32 graph from :func:`simsearch.encoders.export.text_onnx_path`.
    directory : Path
        Output directory (the caller holds its lock).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from simsearch.encoders.export import publish

    graph = onnx.load(str(fp32_path))
    keep_float = [n.name for n in graph.graph.node if n.op_type in ("EmbedLayerNormalization", "Gather")]
    tmp = directory / f".model.{os.getpid()}.tmp"
    qlog = logging.getLogger()
    level = qlog.level
    # quantize_dynamic logs a generic "consider pre-processing" advice through
    # the root logger; the fused graph it gets is already pre-processed.
    qlog.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(fp32_path),
                str(tmp),
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=False,
                nodes_to_exclude=keep_float,
                extra_options={
                    "MatMulConstBOnly": True,
                    # The fused contrib ops defeat ONNX shape inference; their
                    # tensors are float.
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                },
            )
    finally:
        qlog.setLevel(level)
    publish(tmp, directory / "model.onnx")


def integer_op_count(path: Path) -> int:
    """Number of integer-kernel nodes (``MatMulInteger``, ``QAttention``...) in an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return sum(node.op_type in INTEGER_OPS for node in graph.graph.node)
