"""Fine-tune, export and calibrate a :class:`~simsearch.applications.pair_model.PairModel`.

:func:`train_pair_model` does the whole recipe, sized for a CPU:

1. a BERT sequence classifier (one logit) initialised from the bundled
   all-MiniLM-L6-v2 (its first ``layers`` transformer layers), fine-tuned
   with binary cross-entropy on serialized record pairs: AdamW, linear
   warm-up and decay, batches of pairs of similar length (dynamic padding),
   ``max_length`` tokens per pair;
2. exported to ONNX (TorchScript exporter), fused by onnxruntime's
   transformer optimizer and quantized to int8 (dynamic activations,
   per-channel int8 weights, the word-embedding table included so the file
   stays small), as :mod:`simsearch.encoders.quantize` does for the encoder;
3. the int8 graph scores the validation pairs; a logistic-regression head
   over ``[logit, PAIR_FEATURES]`` is fit on them and a
   :class:`~simsearch.applications.calibration.Calibrator` on its
   cross-validated decision values; the threshold is the probability of best
   F1 there.

torch and transformers are needed here only; inference needs onnxruntime.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.applications.calibration import Calibrator
from simsearch.applications.metrics import best_f1_threshold
from simsearch.applications.pair_model import PairModel

__all__ = ["LabelledPair", "train_pair_model"]

#: (left serialized record, right serialized record, label 0/1).
LabelledPair = tuple[str, str, int]


def _check_pairs(pairs: Sequence[LabelledPair], name: str) -> None:
    if len(pairs) == 0:
        raise ValueError(f"{name} is empty")
    labels = {int(p[2]) for p in pairs}
    if not labels <= {0, 1}:
        raise ValueError(f"{name} labels must be 0 or 1, found {sorted(labels - {0, 1})[:3]}")
    if labels != {0, 1}:
        raise ValueError(f"{name} needs both matches and non-matches")


def _batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar length: shuffle, sort within chunks of 50 batches, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def _fine_tune(
    train: Sequence[LabelledPair],
    base: Path,
    out: Path,
    *,
    layers: int,
    max_length: int,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    seed: int,
    progress: bool,
    freeze_embeddings: bool = True,
) -> dict[str, Any]:
    import torch
    import transformers

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    with _quiet():
        model = transformers.BertForSequenceClassification.from_pretrained(
            base, num_labels=1, num_hidden_layers=layers, attn_implementation="eager"
        )
    if freeze_embeddings:
        # The 30k-row word table is most of the parameters: updating it costs
        # more than the layers' backward pass and helps little on a few
        # thousand pairs.
        for p in model.bert.embeddings.parameters():
            p.requires_grad_(False)
    enc = tokenizer([p[0] for p in train], [p[1] for p in train], truncation="longest_first", max_length=max_length)
    ids, types = enc["input_ids"], enc["token_type_ids"]
    labels = np.array([float(p[2]) for p in train], dtype=np.float32)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate, weight_decay=0.01)
    warmup = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    step, t0, losses = 0, time.perf_counter(), []
    while step < total:
        for batch in _batches([len(x) for x in ids], batch_size, rng):
            if step >= total:
                break
            width = max(len(ids[i]) for i in batch)
            x = torch.zeros((len(batch), width), dtype=torch.long)
            t = torch.zeros_like(x)
            mask = torch.zeros_like(x)
            for row, i in enumerate(batch):
                m = len(ids[i])
                x[row, :m] = torch.tensor(ids[i])
                t[row, :m] = torch.tensor(types[i])
                mask[row, :m] = 1
            logits = model(input_ids=x, attention_mask=mask, token_type_ids=t).logits.view(-1)
            loss = loss_fn(logits, torch.from_numpy(labels[batch]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if progress and (step % 25 == 0 or step == total):
                rate = (time.perf_counter() - t0) / step
                print(f"  step {step}/{total}  loss {np.mean(losses[-25:]):.4f}  {rate:.2f} s/step", flush=True)
    model.eval()
    with _quiet():
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return {"steps": total, "seconds": round(time.perf_counter() - t0, 1), "final_loss": round(float(np.mean(losses[-25:])), 4)}


class _quiet:
    """Silence transformers' load reports and torch exporter warnings inside a block."""

    def __enter__(self) -> None:
        import logging
        import warnings

        self._log = logging.getLogger("transformers")
        self._level = self._log.level
        self._log.setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._warnings.__exit__(*exc)
        self._log.setLevel(self._level)


def export_int8(torch_dir: Path, out: Path) -> None:
    """Write ``out/model.onnx`` (int8) and ``out/tokenizer.json`` from a fine-tuned classifier folder."""
    import shutil

    import onnx
    import torch
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from simsearch.encoders.quantize import quiet_quantizer

    with _quiet():
        model = transformers.BertForSequenceClassification.from_pretrained(torch_dir, attn_implementation="eager")
    model.eval()
    config = model.config
    ids = torch.tensor([[101, 2023, 2003, 102, 1037, 3231, 102], [101, 2178, 102, 2178, 102, 0, 0]], dtype=torch.long)
    mask = (ids > 0).long()
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]], dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        raw, fused = Path(tmp) / "raw.onnx", Path(tmp) / "fused.onnx"
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model, (ids, mask, types), str(raw), input_names=names, output_names=["logits"],
                dynamic_axes=axes, opset_version=17, dynamo=False,
            )
        with _quiet():
            optimized = optimize_model(
                str(raw), model_type="bert", num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size, opt_level=0, use_gpu=False,
            )
            optimized.save_model_to_file(str(fused))
        with quiet_quantizer():
            quantize_dynamic(
                str(fused), str(out / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                reduce_range=False, extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    shutil.copyfile(torch_dir / "tokenizer.json", out / "tokenizer.json")


def fit_head(
    model: PairModel, valid: Sequence[LabelledPair], *, seed: int = 0, calibration: str = "auto"
) -> PairModel:
    """Fit ``model``'s logistic head, calibrator and threshold on labelled validation pairs.

    Parameters
    ----------
    model : PairModel
        Its graph scores the pairs; its head, calibrator and threshold are replaced.
    valid : sequence of (str, str, int)
        Serialized left record, right record, label.
    calibration : {"auto", "isotonic", "platt"}

    Returns
    -------
    PairModel
        ``model``, fitted.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    _check_pairs(valid, "valid")
    X = model.head_inputs([p[0] for p in valid], [p[1] for p in valid])
    y = np.array([int(p[2]) for p in valid], dtype=np.int64)
    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale[scale < 1e-9] = 1.0
    Z = (X - mean) / scale
    lr = LogisticRegression(C=1.0, max_iter=2000)
    folds = int(min(5, np.bincount(y).min()))
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        oof = cross_val_predict(lr, Z, y, cv=cv, method="decision_function")
    else:  # pragma: no cover - _check_pairs guarantees one pair of each class; two folds need two
        oof = None
    lr.fit(Z, y)
    model.head = {"mean": mean.tolist(), "scale": scale.tolist(), "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0])}
    decision = model.decision(X)
    model.calibrator = Calibrator(calibration).fit(oof if oof is not None else decision, y)
    model.threshold = best_f1_threshold(model.calibrator.predict(decision), y).threshold
    return model


def train_pair_model(
    train: Sequence[LabelledPair],
    valid: Sequence[LabelledPair],
    out: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    layers: int = 6,
    max_length: int = 128,
    epochs: float = 1.0,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    seed: int = 0,
    num_threads: int | None = 2,
    torch_dir: str | os.PathLike[str] | None = None,
    info: dict[str, Any] | None = None,
    progress: bool = False,
) -> PairModel:
    """Fine-tune a cross-encoder on labelled pairs and save it as an int8 :class:`PairModel`.

    Parameters
    ----------
    train, valid : sequence of (str, str, int)
        Labelled pairs: two records (serialized by
        :func:`~simsearch.applications.pair_model.serialize`, or any text) and
        1 for a match, 0 for a non-match. ``train`` fine-tunes the
        cross-encoder; ``valid`` fits the head, the calibrator and the threshold.
    out : path-like
        New folder for the model (must not exist).
    base : path-like, optional
        A BERT model folder to start from; default the bundled all-MiniLM-L6-v2.
    layers : int, default 6
        Transformer layers kept (the first ``layers`` of ``base``).
    max_length : int, default 128
        Tokens per pair.
    epochs : float, default 1.0
        Passes over ``train`` (fractions allowed).
    batch_size, learning_rate, seed
        Optimizer settings.
    num_threads : int or None, default 2
        torch threads for training; ``None`` keeps torch's default.
    torch_dir : path-like, optional
        Where to keep the fine-tuned fp32 torch model (for comparisons);
        default a temporary folder, removed.
    info : dict, optional
        Stored in the manifest (e.g. the training data and its terms).
    progress : bool, default False
        Print step times and losses.

    Returns
    -------
    PairModel
        The saved model, opened from ``out``.

    Raises
    ------
    ValueError
        Empty pairs, labels other than 0/1, or only one class.
    FileExistsError
        If ``out`` exists.
    """
    import torch

    from simsearch.encoders.export import default_model_dir

    _check_pairs(train, "train")
    _check_pairs(valid, "valid")
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"{str(out)!r} exists; train into a new path")
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    base_dir = Path(base) if base is not None else default_model_dir()
    work = Path(tempfile.mkdtemp(prefix="simsearch-pair-"))
    keep = Path(torch_dir) if torch_dir is not None else work / "torch"
    try:
        stats = _fine_tune(
            train, base_dir, keep, layers=layers, max_length=max_length, epochs=epochs,
            batch_size=batch_size, learning_rate=learning_rate, seed=seed, progress=progress,
        )
        graph = work / "graph"
        graph.mkdir()
        export_int8(keep, graph)
        model = PairModel(graph, max_length=max_length, head={}, calibrator=Calibrator(), threshold=0.5)
        fit_head(model, valid, seed=seed)
        model.info = {
            **(info or {}), "layers": layers, "epochs": epochs, "train_pairs": len(train), "valid_pairs": len(valid),
            "learning_rate": learning_rate, "batch_size": batch_size, "training": stats,
        }
        model.save(out)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if progress:
        print(f"  pair model saved to {out}: {json.dumps(stats)}", flush=True)
    return PairModel.load(out)
