"""Encoders: product titles and images to unit-length vectors.

:class:`TextEncoder` and :class:`ImageEncoder` export their model to ONNX once
(cached by fingerprint), quantize it to int8 on request and run it with
onnxruntime (CPU, CUDA) or torch-neuronx.
"""

from __future__ import annotations

from simsearch.encoders.text import TextEncoder

__all__ = ["TextEncoder"]
