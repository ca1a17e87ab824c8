"""Distil a smaller student from a sentence model on in-domain texts.

The student is the teacher with only some of its transformer layers (evenly
spaced, first and last kept), trained to reproduce the teacher's normalised
sentence vectors. It is saved as an ordinary Hugging Face directory, so it
loads as ``TextEncoder(model=out)`` and is exported and quantized like any
model.

Command line::

    python -m simsearch.encoders.distill --texts titles.txt --out student/ --layers 3 --epochs 2
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simsearch._validation import check_positive_int, check_texts
from simsearch.encoders._training import embed_batch, optimizer_step, save_model_dir
from simsearch.encoders.export import resolve_text_model
from simsearch.encoders.text import TextEncoder

_LOSSES = ("cosine", "mse")


def kept_layers(n_teacher: int, n_student: int) -> list[int]:
    """Indices of the teacher layers a student keeps: evenly spaced, first and last included."""
    if n_student > n_teacher:
        raise ValueError(f"layers={n_student} exceeds the teacher's {n_teacher} layers")
    if n_student == 1:
        return [n_teacher - 1]
    return sorted({int(round(x)) for x in np.linspace(0, n_teacher - 1, n_student)})


def distill(
    teacher: str | os.PathLike[str] | TextEncoder | None,
    texts: Sequence[str],
    layers: int = 3,
    epochs: int = 1,
    out: str | os.PathLike[str] = "student",
    loss: str = "cosine",
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    seed: int = 0,
    progress: bool | None = None,
) -> Path:
    """Train a student with ``layers`` transformer layers to mimic ``teacher``.

    Parameters
    ----------
    teacher : path, TextEncoder or None
        The teacher: a local Hugging Face sentence-model directory, a
        :class:`TextEncoder` (its model directory is used), or ``None`` for
        the default all-MiniLM-L6-v2.
    texts : sequence of str
        In-domain training texts (e.g. product titles); the teacher's fp32
        vectors of these are the targets.
    layers : int, default=3
        Transformer layers of the student, taken from the teacher evenly spaced.
    epochs : int, default=1
        Passes over ``texts``.
    out : path, default="student"
        Output directory; must not exist. Written to a temporary directory
        beside it and renamed into place when complete.
    loss : {"cosine", "mse"}, default="cosine"
        ``cosine``: 1 - cosine between student and teacher vectors; ``mse``:
        mean squared error between the normalised vectors.
    batch_size : int, default=32
    learning_rate : float, default=1e-4
        AdamW learning rate, with linear decay to zero.
    seed : int, default=0
        Seeds the shuffling.
    progress : bool or None, default=None
        tqdm bar over training steps; ``None``: when stderr is a terminal.

    Returns
    -------
    Path
        ``out``, holding ``config.json``, ``model.safetensors``, the teacher's
        tokenizer and pooling files and ``simsearch_distill.json`` (what was done,
        and the final training loss).

    Raises
    ------
    ValueError
        If ``texts`` is empty, an argument is out of range, or ``layers``
        exceeds the teacher's layer count.
    FileExistsError
        If ``out`` exists.
    """
    import sys

    import torch
    from tqdm.auto import tqdm

    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    layers = check_positive_int(layers, "layers")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    items = check_texts(texts)
    if not items:
        raise ValueError("texts is empty; distillation needs in-domain training texts")
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"out directory {str(out)!r} exists; choose a new path")

    source = teacher.source if isinstance(teacher, TextEncoder) else resolve_text_model(teacher)
    if source.model_type == "clip":
        raise ValueError("distillation of CLIP text towers is not supported")
    targets = TextEncoder(source.path, precision="fp32").encode(items, progress=False)

    from tokenizers import Tokenizer

    from simsearch.encoders.export import build_pooled_module

    module = build_pooled_module(source)
    encoder = module.model.encoder
    keep = kept_layers(len(encoder.layer), layers)
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in keep])
    module.model.config.num_hidden_layers = len(keep)
    module.train()

    tokenizer = Tokenizer.from_file(str(source.tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=128)
    encodings = tokenizer.encode_batch(items)

    rng = np.random.default_rng(seed)
    steps = epochs * -(-len(items) // batch_size)
    optimizer = torch.optim.AdamW(module.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
    target_t = torch.from_numpy(targets)
    show = sys.stderr.isatty() if progress is None else progress
    last = float("nan")
    with tqdm(total=steps, disable=not show, desc="distill", unit="step") as bar:
        for _ in range(epochs):
            order = rng.permutation(len(items))
            for start in range(0, len(items), batch_size):
                rows = order[start : start + batch_size]
                pred = torch.nn.functional.normalize(embed_batch(module, [encodings[i] for i in rows]), dim=-1)
                want = target_t[rows]
                if loss == "cosine":
                    value = (1.0 - (pred * want).sum(dim=-1)).mean()
                else:
                    value = torch.nn.functional.mse_loss(pred, want)
                last = optimizer_step(value, optimizer, schedule, bar)
                bar.set_postfix(loss=f"{last:.4f}")

    info = {
        "teacher": source.name,
        "teacher_content_hash": source.content_hash(),
        "teacher_layers_kept": keep,
        "texts": len(items),
        "epochs": epochs,
        "loss": loss,
        "final_batch_loss": last,
    }
    save_model_dir(module, source, out, "simsearch_distill.json", info)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m simsearch.encoders.distill``: distil a student from a text file, one text a line."""
    ap = argparse.ArgumentParser(prog="python -m simsearch.encoders.distill", description=main.__doc__)
    ap.add_argument("--teacher", default=None, help="teacher model directory (default: all-MiniLM-L6-v2)")
    ap.add_argument("--texts", required=True, type=Path, help="UTF-8 file, one training text per line")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--loss", choices=_LOSSES, default="cosine")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    lines = [t for t in args.texts.read_text(encoding="utf-8").splitlines() if t.strip()]
    path = distill(
        args.teacher, lines, layers=args.layers, epochs=args.epochs, out=args.out, loss=args.loss,
        batch_size=args.batch_size, progress=True,
    )
    print(path)


if __name__ == "__main__":
    main()
