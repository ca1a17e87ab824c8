"""Fine-tune a sentence model on labelled pairs of texts (contrastive, in-batch negatives).

Each matching pair ``(a, b)`` is a training example. Within a batch of such
pairs, ``a`` must score its own ``b`` above every other ``b`` of the batch (the
in-batch negatives) and above a *hard negative*: a text the labelled pairs
say does not match ``a`` (a pair ``(a, x)`` labelled 0). The loss is the
cross-entropy over these scaled cosines in both directions (``a`` against the
``b`` column and ``b`` against the ``a`` column), the multiple-negatives
ranking loss of Henderson et al. (2017) as sentence-transformers trains it.
Pairs that share a text are masked out of each other's negatives.

After each epoch the model scores the validation pairs; the epoch with the
best pairwise F1 (at the best cosine threshold) is kept, and training stops
after ``patience`` epochs without improvement. Seeds fix the shuffling, the
hard-negative draws and dropout, so one call on one machine gives one model.

The result is an ordinary Hugging Face directory: ``TextEncoder(model=out)``
loads it, exports it to ONNX and quantizes it to int8 like any model.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import _tables
from simsearch._validation import check_positive_int
from simsearch.encoders._training import embed_batch, optimizer_step, save_model_dir
from simsearch.encoders.export import resolve_text_model
from simsearch.encoders.text import TextEncoder

#: Written into the output directory: what was trained, and the validation curve.
INFO_FILE = "simsearch_finetune.json"


@dataclass(frozen=True)
class TextPairs:
    """Labelled text pairs: ``left[i]`` and ``right[i]`` match when ``labels[i]`` is 1."""

    left: list[str]
    right: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> TextPairs:
        return TextPairs([self.left[i] for i in rows], [self.right[i] for i in rows], self.labels[rows])


def as_text_pairs(
    pairs: Any, *, left_col: str = "left", right_col: str = "right", label_col: str = "label", name: str = "pairs"
) -> TextPairs:
    """Read labelled text pairs from a table or a sequence of ``(left, right, label)``.

    Parameters
    ----------
    pairs : table or sequence of tuple
        A pyarrow/pandas table, mapping of columns or CSV/Parquet path with
        ``left_col``, ``right_col`` and ``label_col``; or a sequence of
        ``(left_text, right_text, label)`` tuples.
    left_col, right_col, label_col : str
        Column names in a table.
    name : str
        What to call ``pairs`` in error messages.

    Returns
    -------
    TextPairs

    Raises
    ------
    ValueError
        No pairs, a label other than 0/1, or an empty text (the message names the row).
    MissingColumnError
        A missing column (a ``ValueError``).
    """
    if isinstance(pairs, Sequence) and not isinstance(pairs, (str, bytes)) and not hasattr(pairs, "columns"):
        rows = list(pairs)
        for i, row in enumerate(rows):
            if not isinstance(row, (tuple, list)) or len(row) != 3:
                raise ValueError(f"{name}[{i}] must be a (left, right, label) tuple, got {row!r}")
        left = [r[0] for r in rows]
        right = [r[1] for r in rows]
        raw = [r[2] for r in rows]
    else:
        table = _tables.read_table(pairs, [left_col, right_col, label_col], name=name)
        left = table.column(left_col).to_pylist()
        right = table.column(right_col).to_pylist()
        raw = table.column(label_col).to_pylist()
    if not raw:
        raise ValueError(f"{name} is empty: it has no labelled pairs")
    try:
        labels = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} labels must be 0 or 1, got values such as {raw[:3]}") from err
    if not np.isin(labels, (0.0, 1.0)).all():
        bad = int(np.flatnonzero(~np.isin(labels, (0.0, 1.0)))[0])
        raise ValueError(f"{name} labels must be 0 or 1; row {bad} has {raw[bad]!r}")
    for side, texts in (("left", left), ("right", right)):
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"{name} row {i} has no {side} text ({t!r}); every pair needs two non-empty texts")
    return TextPairs(left, right, labels.astype(np.int8))


def best_pair_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best pairwise F1 over all thresholds on ``scores`` (0 when no pair is positive)."""
    from sklearn.metrics import precision_recall_curve

    if not labels.any():
        return 0.0
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def finetune(
    encoder: str | os.PathLike[str] | TextEncoder | None,
    pairs: Any,
    valid_pairs: Any = None,
    *,
    out: str | os.PathLike[str] = "finetuned",
    epochs: int = 4,
    patience: int = 1,
    batch_size: int = 32,
    learning_rate: float = 3e-5,
    scale: float = 20.0,
    max_length: int = 48,
    trainable_layers: int | None = None,
    validation_fraction: float = 0.15,
    left_col: str = "left",
    right_col: str = "right",
    label_col: str = "label",
    seed: int = 0,
    progress: bool | None = None,
) -> Path:
    """Fine-tune a text model so that matching pairs score above non-matching ones.

    Parameters
    ----------
    encoder : path, TextEncoder or None
        The model to start from: a local Hugging Face sentence-model
        directory, a :class:`TextEncoder` (its model directory; e.g. a
        distilled student), or ``None`` for the default all-MiniLM-L6-v2.
    pairs : table or sequence of (str, str, int)
        Labelled training pairs (see :func:`as_text_pairs`). Label-1 pairs are
        the training examples; label-0 pairs give their hard negatives.
    valid_pairs : table or sequence, optional
        Labelled pairs for early stopping. ``None``: ``validation_fraction`` of
        ``pairs`` (seeded) is held out instead.
    out : path, default="finetuned"
        Output directory; must not exist. Written beside and renamed into place.
    epochs : int, default=4
        Most passes over the matching pairs.
    patience : int, default=1
        Stop after this many epochs without a better validation F1.
    batch_size : int, default=32
        Matching pairs per step (each brings up to three texts: both sides and a hard negative).
    learning_rate : float, default=3e-5
        AdamW learning rate, with a linear warm-up over the first 10% of
        steps and linear decay after.
    scale : float, default=20.0
        Cosines are multiplied by this before the softmax (inverse temperature).
    max_length : int, default=48
        Tokens per text in training; product titles rarely need more.
    trainable_layers : int or None, default=None
        Train only the top this many transformer layers (and the pooling);
        the token embeddings and lower layers stay frozen, which makes each
        step cheaper. ``None`` trains every layer.
    validation_fraction : float, default=0.15
        Held-out share of ``pairs`` when ``valid_pairs`` is None.
    left_col, right_col, label_col : str
        Column names when the pairs are tables.
    seed : int, default=0
        Seeds the split, the shuffling, the hard-negative draws and dropout.
    progress : bool or None, default=None
        tqdm bar over training steps; ``None``: when stderr is a terminal.

    Returns
    -------
    Path
        ``out``: ``config.json``, ``model.safetensors``, the base model's
        tokenizer and pooling files, and ``simsearch_finetune.json`` (the
        base model, the data sizes and the validation F1 after every epoch,
        epoch 0 being the base model).

    Raises
    ------
    ValueError
        Bad pairs (see :func:`as_text_pairs`), no matching pair to train on,
        a validation split without a matching pair, or an argument out of range.
    FileExistsError
        If ``out`` exists.

    Examples
    --------
    >>> from simsearch import TextEncoder, finetune
    >>> pairs = [("sony kdl40v4100", "sony bravia kdl-40v4100 40in lcd", 1),
    ...          ("sony kdl40v4100", "sony bravia kdl-46v4100 46in lcd", 0)]
    >>> path = finetune(None, pairs * 20, out="ft", epochs=1)  # doctest: +SKIP
    >>> TextEncoder(model=path, precision="int8").dim  # doctest: +SKIP
    384
    """
    import torch
    from tqdm.auto import tqdm

    epochs = check_positive_int(epochs, "epochs")
    patience = check_positive_int(patience, "patience")
    batch_size = check_positive_int(batch_size, "batch_size")
    max_length = check_positive_int(max_length, "max_length")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 for in-batch negatives, got {batch_size}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if not (learning_rate > 0 and np.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate}")
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"out directory {str(out)!r} exists; choose a new path")

    cols = {"left_col": left_col, "right_col": right_col, "label_col": label_col}
    train = as_text_pairs(pairs, name="pairs", **cols)
    rng = np.random.default_rng(seed)
    if valid_pairs is None:
        order = rng.permutation(len(train))
        n_valid = max(1, int(round(validation_fraction * len(train))))
        valid, train = train.subset(order[:n_valid]), train.subset(order[n_valid:])
    else:
        valid = as_text_pairs(valid_pairs, name="valid_pairs", **cols)
    if not train.labels.any():
        raise ValueError("pairs hold no matching pair (label 1): there is nothing to learn from")
    if not valid.labels.any():
        raise ValueError("the validation pairs hold no matching pair (label 1): early stopping needs some")

    source = encoder.source if isinstance(encoder, TextEncoder) else resolve_text_model(encoder)
    if source.model_type == "clip":
        raise ValueError("fine-tuning CLIP text towers is not supported")

    from tokenizers import Tokenizer

    from simsearch.encoders.export import build_pooled_module

    torch.manual_seed(seed)
    module = build_pooled_module(source)
    if trainable_layers is not None:
        _freeze_lower_layers(module, check_positive_int(trainable_layers, "trainable_layers"))
    tokenizer = Tokenizer.from_file(str(source.tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)

    # Every distinct text is tokenized once; examples refer to texts by number.
    texts: dict[str, int] = {}
    for t in (*train.left, *train.right, *valid.left, *valid.right):
        texts.setdefault(t, len(texts))
    encodings = tokenizer.encode_batch(list(texts))
    pos = np.flatnonzero(train.labels == 1)
    a_ids = np.array([texts[train.left[i]] for i in pos], dtype=np.int64)
    b_ids = np.array([texts[train.right[i]] for i in pos], dtype=np.int64)
    # Hard negatives of a text: the texts a label-0 pair puts beside it.
    negatives: dict[int, list[int]] = {}
    for i in np.flatnonzero(train.labels == 0):
        x, y = texts[train.left[i]], texts[train.right[i]]
        negatives.setdefault(x, []).append(y)
        negatives.setdefault(y, []).append(x)

    def embed(ids: np.ndarray) -> Any:
        return torch.nn.functional.normalize(embed_batch(module, [encodings[i] for i in ids]), dim=-1)

    valid_l = np.array([texts[t] for t in valid.left], dtype=np.int64)
    valid_r = np.array([texts[t] for t in valid.right], dtype=np.int64)

    def validate() -> float:
        module.eval()
        needed = np.unique(np.concatenate([valid_l, valid_r]))
        # Sorted by length so that each batch pads little.
        needed = needed[np.argsort([len(encodings[i].ids) for i in needed], kind="stable")]
        vectors = {}
        with torch.no_grad():
            for start in range(0, len(needed), 128):
                chunk = needed[start : start + 128]
                for i, v in zip(chunk.tolist(), embed(chunk).numpy()):
                    vectors[i] = v
        module.train()
        scores = np.array([float(vectors[x] @ vectors[y]) for x, y in zip(valid_l, valid_r)])
        return best_pair_f1(scores, valid.labels)

    def draw_negative(anchor: int, avoid: int) -> int:
        options = [n for n in negatives.get(anchor, ()) if n != avoid]
        return int(options[rng.integers(len(options))]) if options else -1

    steps_per_epoch = -(-len(pos) // batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 10)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    show = sys.stderr.isatty() if progress is None else progress
    history = [validate()]
    best_f1, best_epoch, best_state = history[0], 0, copy.deepcopy(module.state_dict())
    last = float("nan")
    module.train()
    with tqdm(total=total, disable=not show, desc="finetune", unit="step") as bar:
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(pos))
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                if len(rows) < 2:
                    continue  # one pair has no in-batch negative
                a, b = a_ids[rows], b_ids[rows]
                # One hard negative per left text: a third text per pair, not a
                # fourth, since every text costs a forward and backward pass.
                hard = np.array([draw_negative(x, y) for x, y in zip(a, b)])
                hard = hard[hard >= 0]
                distinct, inverse = np.unique(np.concatenate([a, b, hard]), return_inverse=True)
                vec = embed(distinct)
                ia, ib, ih = np.split(inverse, [len(rows), 2 * len(rows)])
                value = _ranking_loss(vec, ia, ib, ih, a, b, hard, scale) + _ranking_loss(
                    vec, ib, ia, ih[:0], b, a, hard[:0], scale
                )
                last = optimizer_step(value, optimizer, schedule, bar)
                bar.set_postfix(loss=f"{last:.3f}", best_f1=f"{best_f1:.3f}")
            f1 = validate()
            history.append(f1)
            if f1 > best_f1:
                best_f1, best_epoch, best_state = f1, epoch, copy.deepcopy(module.state_dict())
            elif epoch - best_epoch >= patience:
                break

    module.load_state_dict(best_state)
    info = {
        "base": source.name,
        "base_content_hash": source.content_hash(),
        "train_pairs": len(train),
        "train_matching_pairs": int(len(pos)),
        "valid_pairs": len(valid),
        "max_length": max_length,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "scale": scale,
        "trainable_layers": trainable_layers,
        "seed": seed,
        "epochs_run": len(history) - 1,
        "best_epoch": best_epoch,
        "valid_f1_by_epoch": history,
        "final_batch_loss": last,
    }
    save_model_dir(module, source, out, INFO_FILE, info)
    return out


def _freeze_lower_layers(module: Any, trainable: int) -> None:
    """Stop gradients below the top ``trainable`` transformer layers."""
    layers = module.model.encoder.layer
    if trainable > len(layers):
        raise ValueError(f"trainable_layers={trainable} exceeds the model's {len(layers)} layers")
    for p in module.model.embeddings.parameters():
        p.requires_grad_(False)
    for layer in layers[: len(layers) - trainable]:
        for p in layer.parameters():
            p.requires_grad_(False)


def _ranking_loss(
    vec: Any, anchors: np.ndarray, targets: np.ndarray, hard: np.ndarray,
    anchor_text: np.ndarray, target_text: np.ndarray, hard_text: np.ndarray, scale: float,
) -> Any:
    """Multiple-negatives ranking loss: anchor ``i`` against every target, and the hard negatives.

    A column that holds the anchor's own text or its own target's text (a
    duplicate pair in the batch, or a listing with two true matches) is not a
    negative and is masked.
    """
    import torch

    candidates = np.concatenate([targets, hard])
    cand_text = np.concatenate([target_text, hard_text])
    logits = scale * (vec[anchors] @ vec[candidates].T)
    same = (cand_text[None, :] == target_text[:, None]) | (cand_text[None, :] == anchor_text[:, None])
    same[np.arange(len(anchors)), np.arange(len(anchors))] = False
    logits = logits.masked_fill(torch.from_numpy(same), float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(anchors)))
