"""Where an encoder's graph runs: onnxruntime or OpenVINO on CPU, CUDA, or AWS Neuron.

Each backend maps a feed of int64 token arrays of shape (batch, seq) to float32
vectors of shape (batch, dim), before normalisation. Batching, tokenisation and
pooling-to-unit-length stay in the encoder, so backend quirks (fixed shapes on
Neuron, fp16 on CUDA) stay here.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

BACKENDS = ("cpu", "cuda", "neuron")

# Compiled graphs alive in this process, by the file they were read from and
# their settings: a second encoder of the same model (a saved matcher loaded
# twice, a service beside a script) shares the first one's compiled graph
# instead of compiling it again (0.2-0.4 s and its memory each time). Weak
# values: a graph no encoder holds is freed. Both CPU backends are
# thread-safe, so sharing one is safe.
_COMPILED: weakref.WeakValueDictionary[tuple[Any, ...], Any] = weakref.WeakValueDictionary()
_COMPILED_LOCK = threading.Lock()


def shared_backend(kind: str, path: Path, settings: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    """The live backend of ``kind`` over ``path`` with ``settings``, else ``make()`` (kept for the next caller).

    The key holds the file's device, inode, size and modification time, so a
    file rewritten since (a new export) is compiled anew.
    """
    st = os.stat(path)
    key = (kind, os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, settings)
    with _COMPILED_LOCK:
        backend = _COMPILED.get(key)
        if backend is None:
            backend = make()
            _COMPILED[key] = backend
        return backend


class Backend(Protocol):
    """What the encoders need from a runtime."""

    input_names: tuple[str, ...]

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Return float32 vectors of shape (batch, dim) for the feed."""
        ...


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - a core dependency
        raise ImportError("simsearch's encoders need onnxruntime: pip install onnxruntime") from err
    return onnxruntime


class OnnxBackend:
    """onnxruntime session; thread-safe (``InferenceSession.run`` may be called concurrently).

    Parameters
    ----------
    path : Path
        ONNX file.
    num_threads : int or None
        Threads for one call (onnxruntime's intra-op pool); ``None`` lets
        onnxruntime use one per physical core.
    providers : list of str
        onnxruntime execution providers, in order of preference.
    """

    def __init__(self, path: Path, num_threads: int | None = None, providers: list[str] | None = None) -> None:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
        options.log_severity_level = 3
        # Idle intra-op threads otherwise spin between calls: on a busy or small
        # machine that doubled the CPU per title (12.5 vs 6.2 ms measured here).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run(None, {name: feed[name] for name in self.input_names})[0]
        return np.asarray(out, dtype=np.float32)


class OpenVinoBackend:
    """OpenVINO on the CPU, reading the exported ONNX graph; thread-safe.

    One compiled model serves every call; each call borrows an infer request
    from a pool (one per concurrent caller, created on demand and reused), so
    a one-title call pays no set-up and concurrent calls never share one.

    Parameters
    ----------
    path : Path
        ONNX file (the fused fp32 graph; OpenVINO converts it at load time).
    precision : {"bf16", "f32"}
        OpenVINO's ``INFERENCE_PRECISION_HINT``: ``bf16`` runs the matmuls on
        the CPU's bf16 instructions, accumulating in fp32.
    num_threads : int or None
        Threads for one call; ``None`` lets OpenVINO use every core.

    Raises
    ------
    ImportError
        If openvino is not installed, naming the package.
    """

    def __init__(self, path: Path, precision: str = "bf16", num_threads: int | None = None) -> None:
        try:
            import openvino
        except ImportError as err:
            raise ImportError("the openvino encoder path needs openvino: pip install openvino") from err
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        core = openvino.Core()
        self.model = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.input_names = tuple(port.get_any_name() for port in self.model.inputs)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.model.create_infer_request()
        try:
            # share_inputs: the int64 token arrays are read in place, not copied.
            request.infer({name: feed[name] for name in self.input_names}, share_inputs=True)
            # The output tensor is the request's own buffer: copy it before the request is reused.
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)
        finally:
            self._idle.put(request)


def require_cuda() -> None:
    """Raise ImportError naming onnxruntime-gpu unless onnxruntime has its CUDA provider."""
    ort = _onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ImportError(
            "backend='cuda' needs onnxruntime-gpu (the installed onnxruntime has no CUDAExecutionProvider); "
            "install it with: pip install 'simsearch[cuda]'"
        )


def cuda_backend(onnx_path: Path) -> OnnxBackend:
    """onnxruntime-gpu's CUDA provider, normally on the fp16 graph.

    Raises
    ------
    ImportError
        If onnxruntime has no CUDA provider (the CPU wheel is installed), naming
        the package to install.
    """
    require_cuda()
    return OnnxBackend(onnx_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


class NeuronBackend:
    """torch-neuronx: the pooled model traced with bf16 auto-casting, one copy per NeuronCore.

    Neuron graphs have fixed shapes, so every batch is padded to
    (batch_size, max_length); ``torch_neuronx.DataParallel`` splits a batch
    across the NeuronCores of the instance.

    This path has never been run by simsearch's tests: no Neuron device was
    available. It is written against torch-neuronx's documented ``trace`` and
    ``DataParallel`` API.

    Raises
    ------
    ImportError
        If torch-neuronx is not installed.
    """

    def __init__(self, source: Any, batch_size: int, max_length: int) -> None:
        try:
            import torch
            import torch_neuronx
        except ImportError as err:
            raise ImportError(
                "backend='neuron' needs torch-neuronx (AWS Inferentia2/Trainium); "
                "install it with: pip install 'simsearch[neuron]' "
                "--extra-index-url https://pip.repos.neuron.amazonaws.com"
            ) from err
        from simsearch.encoders.export import build_pooled_module

        module = build_pooled_module(source)
        self._torch = torch
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if module.takes_token_types else [])
        self.input_names = tuple(names)
        example = tuple(torch.zeros((self.batch_size, self.max_length), dtype=torch.long) for _ in names)
        traced = torch_neuronx.trace(
            module, example, compiler_args=["--auto-cast", "all", "--auto-cast-type", "bf16"]
        )
        self.model = torch_neuronx.DataParallel(traced)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        n, seq = feed["input_ids"].shape
        rows = -(-n // self.batch_size) * self.batch_size
        tensors = []
        for name in self.input_names:
            padded = np.zeros((rows, self.max_length), dtype=np.int64)
            padded[:n, :seq] = feed[name]
            if name == "attention_mask":
                # Rows added only to fill the fixed shape attend to one token, avoiding 0/0.
                padded[n:, 0] = 1
            tensors.append(torch.from_numpy(padded))
        with torch.no_grad():
            # The compiled graph takes exactly batch_size rows: run larger feeds in slices.
            out = torch.cat([self.model(*(t[s : s + self.batch_size] for t in tensors)) for s in range(0, rows, self.batch_size)])
        return out[:n].float().numpy()
