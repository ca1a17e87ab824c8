"""Encoders: product titles and images to unit-length vectors.

:class:`TextEncoder` and :class:`ImageEncoder` export their model to ONNX once
(cached by fingerprint), quantize it to int8 on request and run it with
OpenVINO or onnxruntime on the CPU (the path fastest on the CPU at hand, see
:mod:`simsearch.encoders.cpu`), onnxruntime on CUDA, or torch-neuronx; :func:`distill` trains a smaller
student text model and :func:`finetune` adapts one to labelled pairs. torch is
imported only to export or train.
"""

from __future__ import annotations

from simsearch.encoders.distill import distill
from simsearch.encoders.finetune import finetune
from simsearch.encoders.image import ImageEncoder
from simsearch.encoders.text import TextEncoder

__all__ = ["ImageEncoder", "TextEncoder", "distill", "finetune"]
