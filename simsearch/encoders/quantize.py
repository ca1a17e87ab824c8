"""int8 quantization of exported text graphs.

The recipe was chosen by measurement on 2,000 PriceRunner titles against the
fused fp32 graph, one thread, AVX2 machine without VNNI (titles per second of
CPU time at batch 32; the fp32 graph does 160):

=====================================================  ======  =======  =====
variant (activations dynamic, one scale per batch)      cosine  top-10   speed
=====================================================  ======  =======  =====
onnxruntime defaults (int8 weights per tensor)          0.952   0.806    224
int8 weights per channel, embeddings quantized too      0.991   0.892    206
int8 weights per channel, embeddings float              0.992   0.895    237
 + FFN output projections float (chosen)                0.9955  0.923    197
uint8 weights per channel, embeddings float             0.993   0.896    201
 + FFN output projections float                         0.9963  0.923    167
=====================================================  ======  =======  =====

So:

* activations are quantized dynamically (scale computed per batch at run
  time): titles differ a lot, and no calibration set is needed;
* weights are int8 with one scale per output channel: one scale per tensor
  crushes the small columns (0.952 -> 0.991);
* the word-embedding table stays in float: it is a lookup, not a matmul, and
  its quantized form was both slower and less accurate;
* the second matmul of each feed-forward block (1536 -> 384) stays in float:
  its input is the GELU output, whose range is the widest in the network, and
  one uint8 scale per batch for it costs the most accuracy (0.992 -> 0.9955,
  and the top-10 neighbours 0.895 -> 0.923), for 17% of the speed;
* uint8 weights (the AVX2 kernel's u8 x u8 path, which cannot saturate its
  16-bit pair sums) were only slightly more accurate and 15% slower.

The attention projections become ``QAttention`` and the other matmuls
``MatMulInteger`` (fused by onnxruntime at load time into
``DynamicQuantizeMatMul``), which run on the CPU's integer dot-product
instructions: VNNI where present, AVX2 otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simsearch._storage import atomic_write_path

# Ops whose int8 form runs integer kernels; anything else found in the
# quantized graph is a float op.
_GELU_OPS = frozenset({"Gelu", "BiasGelu", "FastGelu", "Erf", "Mul"})
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

    graph = onnx.load(str(fp32_path))
    producers = {out: n.op_type for n in graph.graph.node for out in n.output}
    keep_float = [n.name for n in graph.graph.node if _stays_float(n, producers)]

    def write(tmp: str) -> None:
        quantize_dynamic(
            str(fp32_path),
            tmp,
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

    with quiet_quantizer():
        atomic_write_path(directory / "model.onnx", write, suffix=".onnx")


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """Silence onnxruntime.quantization's warnings and its root-logger advice.

    ``quantize_dynamic`` and ``quantize_static`` log a generic "consider
    pre-processing" advice through the root logger; the fused graphs they
    get are already pre-processed.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _stays_float(node: Any, producers: dict[str, str]) -> bool:
    """True for the embedding lookups and for matmuls fed by a GELU (``producers``: tensor -> op type)."""
    if node.op_type in ("EmbedLayerNormalization", "Gather"):
        return True
    # An unfused GELU ends in a Mul; in these graphs no other float MatMul
    # with constant weights reads a Mul's output.
    return node.op_type == "MatMul" and producers.get(node.input[0]) in _GELU_OPS


def integer_op_count(path: Path) -> int:
    """Number of integer-kernel nodes (``MatMulInteger``, ``QAttention``...) in an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return sum(node.op_type in INTEGER_OPS for node in graph.graph.node)
