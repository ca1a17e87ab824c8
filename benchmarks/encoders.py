"""Encoders side by side: speed and quality on real product titles.

Variants (all all-MiniLM-L6-v2 unless noted):

* ``st-fp32``: sentence-transformers on torch, fp32 (the reference vectors).
* ``st-int8-recipe``: sentence-transformers' own int8 ONNX path needs
  ``optimum``, which is not installed here, and its pre-built
  ``model_qint8_avx512_vnni.onnx`` lives on the Hugging Face Hub, which nothing
  here may reach. This variant reproduces that recipe as closely as we can: the
  plain (unfused) ONNX export, ``quantize_dynamic`` with one scale per weight
  tensor, int8 weights, uint8 activations, MatMul only, run by a lean
  tokenizers + onnxruntime loop.
* ``st-openvino-anchor``: what sentence-transformers' ``backend="openvino"``
  runs, without its wrapper: that backend needs ``optimum-intel``, whose
  releases on the package index pin transformers below the installed 5.x
  (it fails at import), so the anchor is the same plain export compiled by
  OpenVINO with its own defaults (``PERFORMANCE_HINT=LATENCY``, OpenVINO's
  precision choice: bf16 where the CPU has bf16 matmuls) in the same lean
  tokenizers loop. Having no sentence-transformers overhead, it is a
  stricter anchor than the real backend.
* ``simsearch-fp32``, ``simsearch-int8``: :class:`simsearch.TextEncoder` on
  onnxruntime; ``simsearch-default``: ``TextEncoder()``, the path chosen for
  this CPU (printed, with the OpenVINO kernels that ran).
* ``student-int8``: a distilled student (``--student DIR``), when given.

Run it on one core: ``taskset -c 1 python benchmarks/encoders.py --threads 1``.

Figures: titles/s at batch 32 and 64 (median of ``--repeats`` passes over
``--speed-n`` PriceRunner titles, variants interleaved), the same per second
of process CPU time, single-title latency p50/p99, and against
st-fp32: mean cosine of each title's two vectors, top-10 neighbour overlap
among the titles, and Abt-Buy recall@1 (each Abt product's nearest Buy
product, scored against the Leipzig perfect mapping). Runs at 1 and 2 threads.
The last line printed is one JSON object with the headline figures.

Usage::

    taskset -c 1 python benchmarks/encoders.py [--n 2000] [--speed-n 2000] [--repeats 3] [--threads 1] [--student DIR] [--cache-n N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import _common
import _data

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pricerunner_titles(n: int) -> list[str]:
    """``n`` PriceRunner titles drawn without repeats (seed 0)."""
    titles = _data.pricerunner_offers().titles
    idx = np.random.default_rng(0).choice(len(titles), n, replace=False)
    return [titles[i] for i in idx]


def abt_buy() -> tuple[list[str], list[str], list[int], list[int], set[tuple[int, int]]]:
    """Abt names, Buy names, their ids, and the true (Abt id, Buy id) pairs."""
    abt, buy, mapping = _data.leipzig_abt_buy()
    return (
        [r["name"].strip() for r in abt],
        [r["name"].strip() for r in buy],
        [int(r["id"]) for r in abt],
        [int(r["id"]) for r in buy],
        {(int(r["idAbt"]), int(r["idBuy"])) for r in mapping},
    )


def top10(e: np.ndarray) -> np.ndarray:
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :10]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))


def recall_at_1(encode: Callable[[list[str], int], np.ndarray], ab: tuple) -> float:
    abt_names, buy_names, abt_ids, buy_ids, pairs = ab
    a = encode(abt_names, 32)
    b = encode(buy_names, 32)
    best = np.argmax(a @ b.T, axis=1)
    return float(np.mean([(abt_ids[i], buy_ids[j]) in pairs for i, j in enumerate(best)]))


class LeanOnnx:
    """tokenizers + onnxruntime (or OpenVINO) with sorted batches and mean pooling: no simsearch code."""

    def __init__(self, path: Path, model_dir: Path, threads: int, runtime: str = "onnxruntime") -> None:
        from tokenizers import Tokenizer

        if runtime == "openvino":
            import openvino as ov

            core = ov.Core()
            # OpenVINO's defaults, as sentence-transformers' OpenVINO backend leaves them.
            compiled = core.compile_model(
                core.read_model(str(path)), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
            )
            self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
            self.compiled = compiled
            request = compiled.create_infer_request()

            def run(feed: dict[str, np.ndarray]) -> np.ndarray:
                request.infer(feed, share_inputs=True)
                return request.get_output_tensor(0).data.copy()

            self.run = run
        else:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            self.run = lambda feed: session.run(None, feed)[0]
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(128)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        encs = self.tok.encode_batch(texts)
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        out = np.empty((len(texts), 384), np.float32)
        for s in range(0, len(texts), batch_size):
            rows = order[s : s + batch_size]
            width = max(len(encs[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), np.int64)
            mask = np.zeros_like(ids)
            for j, i in enumerate(rows):
                ids[j, : len(encs[i].ids)] = encs[i].ids
                mask[j, : len(encs[i].ids)] = 1
            h = self.run({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
            m = mask[..., None].astype(np.float32)
            v = (h * m).sum(1) / m.sum(1)
            out[rows] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def fc_kernels(compiled: Any) -> dict[str, int]:
    """OpenVINO's kernels for the matmuls of a compiled model that has run once: {primitive: count}."""
    out: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("FullyConnected", "MatMul"):
            key = f"{info['primitiveType'].astype(str)}:{info['runtimePrecision'].astype(str)}"
            out[key] = out.get(key, 0) + 1
    return out


def st_int8_recipe(model_dir: Path, workdir: Path) -> tuple[Path, Path]:
    """The plain export, and it quantized as sentence-transformers' avx512_vnni config does (see module doc)."""
    import logging
    import warnings

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    class Hidden(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    raw = workdir / "plain.onnx"
    out = workdir / "plain_qint8.onnx"
    model = Hidden(AutoModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager").eval())
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2023, 102, 0]])
    mask = (ids != 0).long()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (ids, mask, torch.zeros_like(ids)), str(raw), input_names=names, output_names=["h"],
            dynamic_axes={n: {0: "b", 1: "s"} for n in names + ["h"]}, opset_version=17, dynamo=False,
        )
        logging.getLogger().setLevel(logging.ERROR)
        quantize_dynamic(
            str(raw), str(out), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False,
            op_types_to_quantize=["MatMul"],
        )
    return raw, out


def timed(encode: Callable[[list[str], int], np.ndarray], titles: list[str], batch: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w, c = time.perf_counter(), time.process_time()
    encode(titles, batch)
    return time.perf_counter() - w, time.process_time() - c


def measure(
    encoders: dict[str, Callable[[list[str], int], np.ndarray]], titles: list[str], repeats: int, latency_n: int
) -> dict[str, dict[str, float]]:
    """Throughput and single-title latency of every variant, interleaved.

    The machines these run on are shared and their load changes by the
    minute; running the variants round-robin, pass by pass and title by title,
    gives each the same mix of load, and the medians drop the outliers.
    Process CPU time is recorded beside wall time: at one thread it counts the
    work done whatever the load.
    """
    for encode in encoders.values():
        encode(titles[:64], 32)  # warm-up: first-call allocations, lazy init
    runs: dict[str, dict[str, list[float]]] = {n: {} for n in encoders}
    for _ in range(repeats):
        for batch in (32, 64):
            for name, encode in encoders.items():
                wall, cpu = timed(encode, titles, batch)
                runs[name].setdefault(f"b{batch}", []).append(len(titles) / wall)
                runs[name].setdefault(f"b{batch}_cpu", []).append(len(titles) / cpu)
    for t in titles[:latency_n]:
        for name, encode in encoders.items():
            wall, cpu = timed(encode, [t], 1)
            runs[name].setdefault("lat", []).append(wall * 1e3)
            runs[name].setdefault("lat_cpu", []).append(cpu * 1e3)
    out: dict[str, dict[str, float]] = {}
    for name, r in runs.items():
        out[name] = {k: statistics.median(v) for k, v in r.items() if not k.startswith("lat")}
        out[name]["p50"], out[name]["p99"] = (float(x) for x in np.percentile(r["lat"], [50, 99]))
        out[name]["p50_cpu"], out[name]["p99_cpu"] = (float(x) for x in np.percentile(r["lat_cpu"], [50, 99]))
    return out


def cache_passes(n: int, threads: int, workdir: Path) -> dict[str, float]:
    """Encode n distinct real titles twice through a fresh SQLite EmbeddingCache."""
    from simsearch import EmbeddingCache, TextEncoder

    titles = [t for t in dict.fromkeys(_data.load_titles()) if t.strip()][:n]
    enc = TextEncoder(precision="int8", num_threads=threads)
    out: dict[str, float] = {"cache_titles": len(titles)}
    with EmbeddingCache(workdir / "cache.sqlite") as cache:
        for label in ("cold", "warm"):
            t = time.perf_counter()
            enc.encode(titles, cache=cache, progress=False)
            out[f"cache_{label}_s"] = time.perf_counter() - t
        out["cache_hit_rate_warm"] = cache.hits / len(titles)
    out["cache_speedup"] = out["cache_cold_s"] / out["cache_warm_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="PriceRunner titles for cosine and neighbour overlap")
    ap.add_argument("--speed-n", type=int, default=2000, help="the first this many of them are timed")
    ap.add_argument("--repeats", type=int, default=3, help="passes per throughput figure (median)")
    ap.add_argument("--latency-n", type=int, default=300, help="single titles timed for p50/p99")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--student", type=Path, default=None, help="distilled student directory (simsearch.distill)")
    ap.add_argument("--cache-n", type=int, default=0, help="also encode this many distinct titles twice through the cache")
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from simsearch import TextEncoder
    from simsearch.encoders import cpu as enc_cpu

    print(_common.host_line())
    flags = _common.cpu_flags()
    flags.update({f: f in enc_cpu.cpu_flags() for f in ("avx512_bf16", "amx_bf16")})
    print(f"encoder paths on this CPU, fastest first: {enc_cpu.available_paths()}; "
          f"CPU affinity: {sorted(os.sched_getaffinity(0))}")
    titles = pricerunner_titles(args.n)
    ab = abt_buy()
    model_dir = _common.model_dir()
    workdir = Path(tempfile.mkdtemp(prefix="simsearch-bench-"))

    st = SentenceTransformer(str(model_dir), device="cpu")
    plain, st_int8 = st_int8_recipe(model_dir, workdir)
    anchors: dict[int, LeanOnnx] = {}
    encs: dict[str, TextEncoder] = {}

    def variants(threads: int) -> dict[str, Callable[[list[str], int], np.ndarray]]:
        torch.set_num_threads(threads)
        out: dict[str, Callable[[list[str], int], np.ndarray]] = {
            "st-fp32": lambda t, b: st.encode(t, batch_size=b, normalize_embeddings=True, convert_to_numpy=True),
            "st-int8-recipe": LeanOnnx(st_int8, model_dir, threads).encode,
        }
        try:
            anchors[threads] = LeanOnnx(plain, model_dir, threads, runtime="openvino")
            out["st-openvino-anchor"] = anchors[threads].encode
        except ImportError:
            print("  openvino is not installed: no OpenVINO anchor", file=sys.stderr)
        for label, precision in (("fp32", "fp32"), ("int8", "int8"), ("default", None)):
            enc = TextEncoder(precision=precision, num_threads=threads)
            encs[label] = enc
            out[f"simsearch-{label}"] = lambda t, b, enc=enc: enc.encode(t, batch_size=b, progress=False)
        if args.student is not None:
            enc = TextEncoder(model=args.student, precision="int8", num_threads=threads)
            out["student-int8"] = lambda t, b, enc=enc: enc.encode(t, batch_size=b, progress=False)
        return out

    rows: dict[tuple[str, int], dict[str, float]] = {}
    quality: dict[str, dict[str, float]] = {}
    speed_titles = titles[: args.speed_n]
    load_before = os.getloadavg()
    for threads in args.threads:
        encoders = variants(threads)
        if not quality:
            ref = encoders["st-fp32"](titles, 32)
            ref_top = top10(ref)
            for name, encode in encoders.items():
                vec = ref if name == "st-fp32" else encode(titles, 32)
                quality[name] = {
                    "cos": float((vec * ref).sum(1).mean()),
                    "overlap": overlap(top10(vec), ref_top),
                    "recall1": recall_at_1(encode, ab),
                }
                print(f"  quality {name}: {quality[name]}", file=sys.stderr, flush=True)
        for name, r in measure(encoders, speed_titles, args.repeats, args.latency_n).items():
            rows[(name, threads)] = r
            print(f"  speed {name} at {threads} thread(s): {r}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    default = encs["default"]
    ran: dict[str, Any] = {"simsearch_default_path": default.path, "simsearch_int8_path": encs["int8"].path}
    if default.path.startswith("openvino"):
        ran["simsearch_default_kernels"] = fc_kernels(default._runner.model)
    anchor = anchors.get(min(args.threads))
    if anchor is not None:
        ran["openvino_anchor_precision"] = anchor.precision
        ran["openvino_anchor_kernels"] = fc_kernels(anchor.compiled)
    print(f"\npaths that ran: {json.dumps(ran)}")

    print(
        f"\nquality on {args.n} PriceRunner titles, speed on {len(speed_titles)} (median of {args.repeats}, "
        f"variants interleaved); Abt-Buy {len(ab[0])} x {len(ab[1])}; CPU flags: {' '.join(k for k, v in flags.items() if v)}; "
        f"load average before/after: {load_before[0]:.1f}/{load_after[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        "| variant | threads | titles/s b32 | titles/s b64 | titles per CPU-s b32 | 1-title p50 / p99 ms "
        "| 1-title CPU p50 / p99 ms | cos to fp32 | top-10 overlap | Abt-Buy R@1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, threads), r in rows.items():
        q = quality[name]
        print(
            f"| {name} | {threads} | {r['b32']:.0f} | {r['b64']:.0f} | {r['b32_cpu']:.0f} | {r['p50']:.1f} / {r['p99']:.1f} "
            f"| {r['p50_cpu']:.1f} / {r['p99_cpu']:.1f} | {q['cos']:.4f} | {q['overlap']:.3f} | {q['recall1']:.3f} |"
        )

    one = min(args.threads)
    head: dict[str, Any] = {"cpu_flags": flags, "n_titles": args.n, "speed_titles": len(speed_titles), **ran}
    head["load_before_after"] = [round(load_before[0], 1), round(load_after[0], 1)]
    for name in quality:
        head[f"{name}_titles_per_s_b32_{one}t"] = round(rows[(name, one)]["b32"], 1)
        head[f"{name}_titles_per_cpu_s_b32_{one}t"] = round(rows[(name, one)]["b32_cpu"], 1)
        for key in ("p50", "p99", "p50_cpu", "p99_cpu"):
            head[f"{name}_{key}_ms"] = round(rows[(name, one)][key], 2)
        head[f"{name}_cos"] = round(quality[name]["cos"], 4)
        head[f"{name}_overlap10"] = round(quality[name]["overlap"], 3)
        head[f"{name}_recall1"] = round(quality[name]["recall1"], 3)
    for key in ("b32", "b32_cpu"):
        for ref_name in ("st-fp32", "st-openvino-anchor"):
            if (ref_name, one) in rows:
                head[f"default_speedup_vs_{ref_name}_{key}"] = round(
                    rows[("simsearch-default", one)][key] / rows[(ref_name, one)][key], 2
                )
        head[f"int8_speedup_vs_st_fp32_{key}"] = round(rows[("simsearch-int8", one)][key] / rows[("st-fp32", one)][key], 2)
        head[f"int8_speedup_vs_st_int8_recipe_{key}"] = round(
            rows[("simsearch-int8", one)][key] / rows[("st-int8-recipe", one)][key], 2
        )
        if ("student-int8", one) in rows:
            head[f"student_speedup_vs_int8_{key}"] = round(
                rows[("student-int8", one)][key] / rows[("simsearch-int8", one)][key], 2
            )
    if 2 in args.threads and 1 in args.threads:
        head["int8_two_thread_scaling"] = round(rows[("simsearch-int8", 2)]["b32"] / rows[("simsearch-int8", 1)]["b32"], 2)
    if args.cache_n:
        c = cache_passes(args.cache_n, max(args.threads), workdir)
        print(
            f"\ncache: {c['cache_titles']:.0f} distinct titles, int8, {max(args.threads)} threads: first pass "
            f"{c['cache_cold_s']:.1f} s, second pass {c['cache_warm_s']:.2f} s ({c['cache_speedup']:.0f}x), "
            f"hit rate {c['cache_hit_rate_warm']:.3f}"
        )
        head.update({k: round(v, 3) for k, v in c.items()})
    print(json.dumps(head))


if __name__ == "__main__":
    main()
