"""What :func:`~simsearch.encoders.distill` and :func:`~simsearch.encoders.finetune` share.

Both train a :class:`~simsearch.encoders._torch.PooledText` module on
tokenized texts and save it as a Hugging Face directory that
:class:`~simsearch.TextEncoder` loads. torch is imported only inside the
functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simsearch._storage import atomic_dir
from simsearch.encoders.export import TextModelSource, quiet_third_party

# Files copied from the source model: the tokenizer and the pooling it was trained with.
_COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "1_Pooling/config.json", "modules.json")


def embed_batch(module: Any, encodings: Sequence[Any]) -> Any:
    """Pad tokenized texts into one batch and run ``module``.

    Parameters
    ----------
    module : PooledText
        Takes ``(input_ids, attention_mask, token_type_ids)``, int64 tensors of
        shape (batch, seq).
    encodings : sequence of tokenizers.Encoding
        One per text, not padded.

    Returns
    -------
    torch.Tensor of shape (batch, dim), float
        The pooled vectors, unnormalised.
    """
    import torch

    width = max(len(e.ids) for e in encodings)
    ids = torch.zeros((len(encodings), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, e in enumerate(encodings):
        k = len(e.ids)
        ids[j, :k] = torch.tensor(e.ids)
        mask[j, :k] = 1
    return module(ids, mask, torch.zeros_like(ids))


def optimizer_step(loss: Any, optimizer: Any, schedule: Any, bar: Any) -> float:
    """Backpropagate ``loss``, step the optimizer and the schedule, advance ``bar``; return the loss."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
    bar.update(1)
    return float(loss.detach())


def save_model_dir(module: Any, source: TextModelSource, out: Path, info_name: str, info: dict[str, Any]) -> None:
    """Write a trained ``module`` as a Hugging Face directory that :class:`TextEncoder` loads.

    The weights (safetensors), the source model's tokenizer and pooling files
    and ``info_name`` (JSON of ``info``) are built in a temporary folder
    beside ``out`` and swapped in by :func:`simsearch._storage.atomic_dir`: a
    reader sees no directory or a complete one.

    Raises
    ------
    FileExistsError
        If ``out`` appeared while the model was being written (it is never clobbered).
    """
    module.eval()
    with atomic_dir(out, replace=False) as tmp:
        with quiet_third_party():
            module.model.save_pretrained(tmp, safe_serialization=True)
        for name in _COPIED:
            src = source.path / name
            if src.is_file():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp / name)
        (tmp / info_name).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
