"""ImageEncoder on a tiny random-weight ViT built from a config in a temporary directory.

No pretrained vision weights can be had offline; the real loading,
preprocessing, export and static int8 quantization code runs on this model.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

PIL = pytest.importorskip("PIL", reason="Pillow is needed for ImageEncoder")
from PIL import Image, ImageDraw  # noqa: E402

PREPROCESS = {
    "do_resize": True,
    "size": {"shortest_edge": 40},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 32, "width": 32},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48, 0.46, 0.41],
    "image_std": [0.27, 0.26, 0.28],
}


def _picture(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small drawing: background gradient, a few filled shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([xx, yy, 1 - xx], axis=-1) * rng.uniform(0.3, 1.0, 3)
    img = Image.fromarray((base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        box = (int(x0), int(y0), int(x0 + rng.integers(5, w // 2)), int(y0 + rng.integers(5, h // 2)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    return img


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    path = tmp_path_factory.mktemp("tiny-vit")
    ViTModel(config, add_pooling_layer=False).save_pretrained(path, safe_serialization=True)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESS))
    return path


@pytest.fixture(scope="module")
def encoders(vit_dir, tmp_path_factory):
    from simsearch.encoders import ImageEncoder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMSEARCH_CACHE", str(tmp_path_factory.mktemp("image-cache")))
        fp32 = ImageEncoder(vit_dir, precision="fp32", num_threads=1)
        calib = [_picture(100 + i) for i in range(24)]
        int8 = ImageEncoder(vit_dir, precision="int8", num_threads=1, calibration_images=calib)
        yield fp32, int8


def test_preprocessing_matches_transformers(encoders):
    from transformers import CLIPImageProcessorPil

    fp32, _ = encoders
    reference = CLIPImageProcessorPil(**PREPROCESS)
    for seed, size in [(1, (64, 48)), (2, (41, 90)), (3, (30, 30))]:
        img = _picture(seed, size)
        want = reference(images=img, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(fp32._pre(img), want, atol=1e-4)


def test_fp32_matches_torch(encoders, vit_dir):
    import torch
    from transformers import ViTModel

    fp32, _ = encoders
    images = [_picture(i) for i in range(5)]
    pixels = np.stack([fp32._pre(img) for img in images])
    model = ViTModel.from_pretrained(vit_dir, local_files_only=True).eval()
    with torch.no_grad():
        cls = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state[:, 0].numpy()
    want = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    np.testing.assert_allclose(fp32.encode(images), want, atol=1e-5)


def test_int8_agrees_with_fp32(encoders):
    fp32, int8 = encoders
    images = [_picture(i) for i in range(12)]
    cos = (fp32.encode(images) * int8.encode(images)).sum(axis=1)
    assert cos.mean() >= 0.98
    assert cos.min() >= 0.95


def test_int8_graph_is_integer(encoders):
    import onnx

    _, int8 = encoders
    ops = [n.op_type for n in onnx.load(str(int8.onnx_path)).graph.node]
    assert ops.count("QLinearMatMul") >= 8  # 2 layers x (q, k, v, out, ffn in, ffn out) minus none
    assert int8.fingerprint != encoders[0].fingerprint


def test_input_kinds_agree(encoders, tmp_path):
    fp32, _ = encoders
    img = _picture(7)
    png = tmp_path / "p.png"
    img.save(png)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = fp32.encode([img, png, str(png), buf.getvalue(), np.asarray(img), img.convert("RGBA")])
    assert out.shape == (6, fp32.dim) and out.dtype == np.float32
    for row in out[1:]:
        np.testing.assert_allclose(row, out[0], atol=1e-6)
    grey = fp32.encode([np.asarray(img.convert("L"))])
    assert grey.shape == (1, fp32.dim)


def test_empty_and_dtype(encoders):
    fp32, _ = encoders
    assert fp32.encode([]).shape == (0, fp32.dim)
    half = fp32.encode([_picture(1)], dtype="float16")
    assert half.dtype == np.float16


def test_bad_images_name_their_position(encoders, tmp_path):
    fp32, _ = encoders
    buf = io.BytesIO()
    _picture(3).save(buf, format="JPEG")
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]
    good = _picture(4)
    with pytest.raises(ValueError, match=r"images\[1\] could not be read"):
        fp32.encode([good, truncated])
    with pytest.raises(ValueError, match=r"images\[2\] could not be read"):
        fp32.encode([good, good, b"not an image at all"])
    with pytest.raises(ValueError, match=r"images\[0\] could not be read"):
        fp32.encode([tmp_path / "missing.png"])
    with pytest.raises(TypeError, match=r"images\[1\] is an array of dtype float64"):
        fp32.encode([good, np.zeros((8, 8, 3))])
    with pytest.raises(TypeError, match=r"images\[0\] is None"):
        fp32.encode([None])
    with pytest.raises(TypeError, match=r"images\[0\] has type int"):
        fp32.encode([3])
    with pytest.raises(TypeError, match="wrap one image in a list"):
        fp32.encode(good)


def test_bad_model(tmp_path):
    from simsearch.encoders import ImageEncoder

    with pytest.raises(FileNotFoundError, match="config.json"):
        ImageEncoder(tmp_path)
    with pytest.raises(ValueError, match="precision"):
        ImageEncoder(tmp_path, precision="int4")
    with pytest.raises(ValueError, match="backend"):
        ImageEncoder(tmp_path, backend="cuda")
