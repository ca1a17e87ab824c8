"""TextEncoder: export, int8 vs fp32 agreement, batching order, bad inputs, cache use.

One export per precision is shared by the whole file (session-scoped
fixtures); SIMSEARCH_CACHE points at a temporary directory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PRICERUNNER = DATA / "pricerunner" / "pricerunner_aggregate.csv"


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("simsearch-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMSEARCH_CACHE", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


@pytest.fixture(scope="session")
def fp32(cache_root):
    from simsearch import TextEncoder

    return TextEncoder(precision="fp32", num_threads=1)


@pytest.fixture(scope="session")
def int8(cache_root, fp32):
    from simsearch import TextEncoder

    return TextEncoder(precision="int8", num_threads=1)


@pytest.fixture(scope="session")
def titles() -> list[str]:
    """300 real PriceRunner offer titles, a seeded sample."""
    if not PRICERUNNER.is_file():
        pytest.skip(f"PriceRunner data not found at {PRICERUNNER}")
    with open(PRICERUNNER, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        all_titles = [row[1] for row in reader]
    rng = np.random.default_rng(7)
    return [all_titles[i] for i in rng.choice(len(all_titles), 300, replace=False)]


def _torch_reference(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 straight from transformers: mean pooling, L2 normalisation."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    from simsearch.encoders.export import default_model_dir

    path = default_model_dir()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_truncation(128)
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    m = mask.unsqueeze(-1).float()
    v = ((hidden * m).sum(1) / m.sum(1)).numpy()
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_attributes(fp32, int8):
    assert fp32.dim == int8.dim == 384
    assert fp32.name == "all-MiniLM-L6-v2"
    assert fp32.fingerprint != int8.fingerprint
    assert len(fp32.fingerprint) == 64
    assert fp32.onnx_path.is_file() and int8.onnx_path.is_file()
    assert "int8" in repr(int8)


def test_fp32_matches_torch(fp32, titles):
    sample = titles[:40]
    np.testing.assert_allclose(fp32.encode(sample), _torch_reference(sample), atol=2e-5)


def test_int8_agrees_with_fp32(fp32, int8, titles):
    a = fp32.encode(titles)
    b = int8.encode(titles)
    cos = (a * b).sum(axis=1)
    # Measured on 2,000 titles: mean 0.9955, min 0.989.
    assert cos.mean() >= 0.993
    assert cos.min() >= 0.97
    # Neighbours of each title among the others: mostly the same under int8.
    def top5(e):
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :5]

    overlap = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(top5(a), top5(b))])
    assert overlap >= 0.9


def test_int8_graph_runs_integer_kernels(int8):
    import onnx

    from simsearch.encoders.quantize import INTEGER_OPS, integer_op_count

    graph = onnx.load(str(int8.onnx_path))
    ops = [n.op_type for n in graph.graph.node]
    # 6 layers x (QKV attention + attention output + FFN input) = 18 integer
    # matmuls; the 6 FFN output projections (fed by GELU) stay float.
    assert integer_op_count(int8.onnx_path) == 18
    assert ops.count("QAttention") == 6
    assert ops.count("MatMul") == 6
    assert INTEGER_OPS & set(ops)
    # The word embeddings stay float (a lookup: int8 saves no time).
    assert "EmbedLayerNormalization" in ops


def test_fp32_graph_is_fused(fp32):
    import onnx

    ops = {n.op_type for n in onnx.load(str(fp32.onnx_path)).graph.node}
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= ops


def test_unit_norm_and_shape(int8, titles):
    v = int8.encode(titles[:10])
    assert v.shape == (10, 384) and v.dtype == np.float32 and v.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_order_is_restored(fp32, titles):
    sample = titles[:70]  # two batches of 64, unevenly filled
    forward = fp32.encode(sample, batch_size=64)
    backward = fp32.encode(sample[::-1], batch_size=64)[::-1]
    np.testing.assert_allclose(forward, backward, atol=1e-5)
    singles = np.vstack([fp32.encode([t]) for t in sample[:5]])
    np.testing.assert_allclose(forward[:5], singles, atol=1e-5)


def test_reproducible(int8, titles):
    a = int8.encode(titles[:50])
    b = int8.encode(titles[:50])
    np.testing.assert_array_equal(a, b)


def test_empty_input(int8):
    out = int8.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    assert int8.encode([], dtype="float16").dtype == np.float16


def test_float16_and_unnormalized(fp32, titles):
    sample = titles[:8]
    unit = fp32.encode(sample)
    half = fp32.encode(sample, dtype="float16")
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), unit, atol=2e-3)
    raw = fp32.encode(sample, normalize=False)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    assert not np.allclose(norms, 1.0)
    np.testing.assert_allclose(raw / norms, unit, atol=1e-5)


def test_long_text_is_truncated(fp32):
    long = " ".join(["stainless steel fridge freezer"] * 100)  # ~400 tokens
    a, b = fp32.encode([long, long + " with an ice maker"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_accepts_tuples_and_arrays(fp32):
    texts = ("samsung galaxy s9", "lg washing machine")
    np.testing.assert_allclose(fp32.encode(texts), fp32.encode(np.array(texts)), atol=1e-6)


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        (["ok", "fine", None], TypeError, r"texts\[2\] is NoneType, expected str"),
        (["ok", 5], TypeError, r"texts\[1\] is int, expected str"),
        (["ok", b"bytes"], TypeError, r"texts\[1\] is bytes, expected str"),
        (["", "ok"], ValueError, r"texts\[0\] is an empty text"),
        (["ok", "  \t\n"], ValueError, r"texts\[1\] is an empty text"),
        ("a single title", TypeError, r"single str; wrap it in a list"),
        (42, TypeError, "sequence of str"),
        (np.array([["a", "b"]]), ValueError, "1-D"),
    ],
)
def test_bad_input(int8, texts, error, match):
    with pytest.raises(error, match=match):
        int8.encode(texts)


def test_bad_arguments(int8):
    with pytest.raises(ValueError, match="dtype"):
        int8.encode(["a"], dtype="int8")
    with pytest.raises(ValueError, match="batch_size"):
        int8.encode(["a"], batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        int8.encode(["a"], batch_size=2.5)


def test_bad_constructor_arguments(cache_root, tmp_path):
    from simsearch import TextEncoder

    with pytest.raises(ValueError, match="backend"):
        TextEncoder(backend="tpu")
    with pytest.raises(ValueError, match="precision 'int4'"):
        TextEncoder(precision="int4")
    with pytest.raises(ValueError, match="not available on backend 'cpu'"):
        TextEncoder(precision="fp16")
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder(max_length=0)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        TextEncoder(model="sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(TypeError, match="model must be"):
        TextEncoder(model=3)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ValueError, match="no pickled weights"):
        TextEncoder(model=tmp_path)


def test_missing_runtimes_name_the_package(cache_root):
    import onnxruntime

    from simsearch import TextEncoder

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ImportError, match="onnxruntime-gpu"):
            TextEncoder(backend="cuda")
    try:
        import torch_neuronx  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torch-neuronx"):
            TextEncoder(backend="neuron")


def test_export_is_reused(int8, cache_root):
    from simsearch import TextEncoder

    stamp = int8.onnx_path.stat().st_mtime_ns
    again = TextEncoder(precision="int8")
    assert again.onnx_path == int8.onnx_path
    assert again.fingerprint == int8.fingerprint
    assert int8.onnx_path.stat().st_mtime_ns == stamp
    assert again.onnx_path.is_relative_to(cache_root)
    # max_length changes the vectors of long texts, so it changes the fingerprint.
    assert TextEncoder(precision="int8", max_length=64).fingerprint != int8.fingerprint



def test_a_second_encoder_of_the_same_graph_shares_the_compiled_one(int8, titles):
    import os

    from simsearch import TextEncoder

    again = TextEncoder(precision="int8", num_threads=1)
    assert again._runner is int8._runner  # compiled once per process
    np.testing.assert_array_equal(again.encode(titles[:8]), int8.encode(titles[:8]))
    assert TextEncoder(precision="int8", num_threads=2)._runner is not int8._runner  # other settings, other graph
    # A graph file rewritten since (a new export) is compiled anew, not served from memory.
    first = TextEncoder(precision="fp32", num_threads=1)._runner
    fp32_path = TextEncoder(precision="fp32", num_threads=1).onnx_path
    stat = fp32_path.stat()
    os.utime(fp32_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    try:
        assert TextEncoder(precision="fp32", num_threads=1)._runner is not first
    finally:
        os.utime(fp32_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

def test_thread_safe(int8, titles):
    chunks = [titles[i * 40 : (i + 1) * 40] for i in range(4)]
    expected = [int8.encode(c) for c in chunks]
    results: list[np.ndarray | None] = [None] * 4
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = int8.encode(chunks[i])
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_progress_bar(int8, titles, capsys):
    int8.encode(titles[:20], batch_size=4, progress=False)
    assert capsys.readouterr().err == ""
    int8.encode(titles[:20], batch_size=4, progress=True)
    assert "20/20" in capsys.readouterr().err


def test_cache_encodes_only_misses(int8, titles, tmp_path, monkeypatch):
    from simsearch import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    encoded: list[int] = []
    original = int8._encode_checked

    def counting(items, *args):
        encoded.append(len(items))
        return original(items, *args)

    monkeypatch.setattr(int8, "_encode_checked", counting)
    first = int8.encode(titles[:30], cache=cache)
    assert encoded == [30] and cache.misses == 30 and cache.hits == 0
    second = int8.encode(titles[:30], cache=cache)
    assert encoded == [30] and cache.hits == 30
    np.testing.assert_array_equal(first, second)
    # 10 old, 5 new, one new title twice: 5 encoded.
    mixed = titles[20:35] + [titles[34]]
    out = int8.encode(mixed, cache=cache)
    assert encoded == [30, 5]
    np.testing.assert_array_equal(out[:10], first[20:30])
    np.testing.assert_array_equal(out[-1], out[-2])
    assert cache.hit_rate == pytest.approx((30 + 10) / (30 + 30 + 16))
    cache.close()


def test_cache_is_keyed_by_model(fp32, int8, titles, tmp_path):
    from simsearch import EmbeddingCache

    with EmbeddingCache(tmp_path / "emb.sqlite") as cache:
        a = int8.encode(titles[:10], cache=cache)
        b = fp32.encode(titles[:10], cache=cache)  # another fingerprint: all misses
        assert cache.hits == 0 and cache.misses == 20
        assert not np.array_equal(a, b)
        raw = int8.encode(titles[:10], cache=cache, normalize=False)
        assert cache.hits == 0  # normalised and raw vectors are kept apart
        assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
        np.testing.assert_array_equal(int8.encode(titles[:10], cache=cache), a)
        assert cache.hits == 10


# --- CPU paths: which runtime and kernels run the model ---------------------


def test_default_path_is_the_fast_one_on_this_cpu(cache_root, monkeypatch):
    from simsearch import TextEncoder
    from simsearch.encoders import cpu

    monkeypatch.delenv(cpu.PATH_ENV, raising=False)
    enc = TextEncoder(num_threads=1)
    expected = "openvino-bf16" if cpu.has_bf16() and cpu.openvino_installed() else cpu.int8_path()
    assert enc.path == expected == cpu.available_paths()[0]
    assert enc.precision == cpu.path_precision(expected)
    assert expected in repr(enc)


@pytest.mark.parametrize(
    ("flags", "int8_path", "bf16"),
    [
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}, "ort-int8-amx", True),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "ort-int8-vnni", True),
        ({"avx2", "avx_vnni"}, "ort-int8-vnni", False),
        ({"avx2", "fma"}, "ort-int8-avx2", False),
    ],
)
def test_paths_follow_the_cpu_flags(flags, int8_path, bf16, monkeypatch):
    from simsearch.encoders import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    assert cpu.int8_path() == int8_path
    assert cpu.has_bf16() is bf16
    assert cpu.choose_path(None, "int8") == int8_path
    assert ("openvino-bf16" in cpu.available_paths()) is (bf16 and cpu.openvino_installed())
    if not bf16:
        with pytest.raises(ValueError, match="no bf16 matmul instructions"):
            cpu.choose_path("openvino-bf16", None)


def test_forcing_paths(cache_root, monkeypatch):
    from simsearch import TextEncoder
    from simsearch.encoders import cpu

    monkeypatch.setenv(cpu.PATH_ENV, "ort-fp32")
    assert TextEncoder().path == "ort-fp32"
    # An explicit precision or path wins over the environment.
    assert TextEncoder(precision="int8").path == cpu.int8_path()
    monkeypatch.delenv(cpu.PATH_ENV)
    other = next(p for p in ("ort-int8-amx", "ort-int8-vnni", "ort-int8-avx2") if p != cpu.int8_path())
    with pytest.raises(ValueError, match="cannot run here"):
        TextEncoder(path=other)
    with pytest.raises(ValueError, match="path must be one of"):
        TextEncoder(path="tensorrt")
    with pytest.raises(ValueError, match="computes in fp32"):
        TextEncoder(path="ort-fp32", precision="int8")
    monkeypatch.setenv(cpu.PATH_ENV, "no-such-path")
    with pytest.raises(ValueError, match="path must be one of"):
        TextEncoder()


@pytest.fixture(scope="session")
def by_path(cache_root, fp32, int8):
    """One encoder per path this machine can run (the fp32 and int8 ones reused)."""
    from simsearch import TextEncoder
    from simsearch.encoders import cpu

    out = {fp32.path: fp32, int8.path: int8}
    for path in cpu.available_paths():
        out.setdefault(path, TextEncoder(path=path, num_threads=1))
    return out


def test_every_available_path_agrees_with_fp32(by_path, fp32, titles):
    from simsearch.encoders import cpu

    sample = titles[:50]
    ref = fp32.encode(sample)
    for path, enc in by_path.items():
        assert enc.path == path
        cos = (enc.encode(sample) * ref).sum(axis=1)
        # bf16 matmuls with fp32 accumulation: measured mean 0.99998 on 2,000 titles.
        floor = 0.993 if cpu.path_precision(path) == "int8" else 0.998
        assert cos.mean() >= floor, (path, cos.mean())
    default = by_path[cpu.available_paths()[0]]
    assert (default.encode(sample) * ref).sum(axis=1).mean() >= 0.998 or default.precision == "int8"


def test_fingerprint_differs_between_paths(by_path):
    prints = {enc.fingerprint for enc in by_path.values()}
    assert len(prints) == len(by_path)


def test_onnxruntime_fingerprints_are_unchanged(fp32, int8):
    # Caches and index folders written before paths existed keep matching.
    from simsearch.encoders.export import RECIPE_VERSION
    from simsearch.encoders.text import _fingerprint

    for enc in (fp32, int8):
        h = hashlib.sha256()
        for part in (RECIPE_VERSION, enc.source.content_hash(), enc.precision, str(enc.max_length)):
            h.update(part.encode())
            h.update(b"\0")
        assert enc.fingerprint == h.hexdigest() == _fingerprint(enc.source.content_hash(), enc.path, enc.precision, 128)


def test_openvino_path_is_thread_safe_and_batch_independent(by_path, titles):
    enc = by_path.get("openvino-bf16")
    if enc is None:
        pytest.skip("no bf16 matmul instructions or no openvino here")
    chunks = [titles[i * 20 : (i + 1) * 20] for i in range(4)]
    expected = [enc.encode(c) for c in chunks]
    results: list[np.ndarray | None] = [None] * 4

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = enc.encode(chunks[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
    # One title alone (a fresh infer request shape) gives its batched vector.
    np.testing.assert_allclose(enc.encode(chunks[0][:1])[0], expected[0][0], atol=2e-3)
