"""finetune(): contrastive training on a real Abt-Buy slice improves held-out pair F1; the model exports to int8."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _helpers import data_rows, require_data

ABT_BUY = "abt_buy/deepmatcher"


def _rows(name: str) -> list[dict[str, str]]:
    return data_rows(f"{ABT_BUY}/{name}")


@pytest.fixture(scope="module")
def abt_buy() -> dict[str, list[tuple[str, str, int]]]:
    """Title pairs: a training slice, a validation slice and held-out test pairs.

    The encoders use the ordinary simsearch cache: exports are keyed by the
    model's content (and training is seeded), so each model is exported once
    per machine, not per run.
    """
    require_data(f"{ABT_BUY}/train.csv")
    a = {r["id"]: r["name"] for r in _rows("tableA.csv")}
    b = {r["id"]: r["name"] for r in _rows("tableB.csv")}

    def pairs(name: str) -> list[tuple[str, str, int]]:
        return [(a[r["ltable_id"]], b[r["rtable_id"]], int(r["label"])) for r in _rows(name)]

    train = pairs("train.csv")
    # 48 matching pairs and every labelled non-match of their Abt products: the hard negatives.
    left = {p[0] for p in train if p[2] == 1}
    left = set(sorted(left)[:48])
    return {
        "train": [p for p in train if p[0] in left],
        "valid": pairs("valid.csv")[:100],
        "test": [p for p in pairs("test.csv") if p[0] not in left][:300],
    }


def held_out_f1(model, pairs, precision: str = "fp32") -> float:
    from simsearch import TextEncoder
    from simsearch.encoders.finetune import best_pair_f1

    enc = TextEncoder(model=model, precision=precision, num_threads=1)
    left = enc.encode([p[0] for p in pairs])
    right = enc.encode([p[1] for p in pairs])
    return best_pair_f1(np.einsum("ij,ij->i", left, right), np.array([p[2] for p in pairs]))


def test_finetune_improves_held_out_f1_and_exports_int8(abt_buy, tmp_path):
    from simsearch import TextEncoder, finetune

    out = finetune(
        None, abt_buy["train"], abt_buy["valid"], out=tmp_path / "ft", epochs=1, batch_size=8,
        learning_rate=1e-4, max_length=24, trainable_layers=2, progress=False,
    )
    info = json.loads((out / "simsearch_finetune.json").read_text())
    assert info["train_matching_pairs"] == sum(p[2] for p in abt_buy["train"]) and info["valid_pairs"] == 100
    assert info["best_epoch"] == 1, f"training did not beat the base model on validation: {info['valid_f1_by_epoch']}"
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()

    # The fine-tuned model loads as fp32 and int8; int8 on held-out pairs (no Abt
    # product of the training slice) beats the base model in fp32.
    assert TextEncoder(model=out, precision="fp32").dim == 384
    before = held_out_f1(None, abt_buy["test"])
    after = held_out_f1(out, abt_buy["test"], "int8")
    assert after > before + 0.03, (before, after)


def test_same_seed_same_model(abt_buy, tmp_path):
    from simsearch import finetune

    few = [p for p in abt_buy["train"] if p[2] == 1][:8] + [p for p in abt_buy["train"] if p[2] == 0][:8]
    kwargs = dict(epochs=1, batch_size=4, max_length=12, trainable_layers=1, progress=False, validation_fraction=0.5)
    one = finetune(None, few, out=tmp_path / "one", seed=3, **kwargs)
    two = finetune(None, few, out=tmp_path / "two", seed=3, **kwargs)
    assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()


def test_bad_pairs_are_refused(tmp_path):
    from simsearch import finetune
    from simsearch._tables import MissingColumnError

    good = [("sony kdl40v4100", "sony bravia kdl-40v4100", 1), ("sony kdl40v4100", "sony kdl-46v4100", 0)]
    with pytest.raises(ValueError, match="no labelled pairs"):
        finetune(None, [], out=tmp_path / "a")
    with pytest.raises(ValueError, match="no matching pair"):
        finetune(None, [("a b", "c d", 0)] * 4, out=tmp_path / "a")
    with pytest.raises(ValueError, match="labels must be 0 or 1; row 1 has 2"):
        finetune(None, [good[0], ("x", "y", 2)], out=tmp_path / "a")
    with pytest.raises(ValueError, match="row 0 has no right text"):
        finetune(None, [("sony", " ", 1)], out=tmp_path / "a")
    with pytest.raises(ValueError, match=r"pairs\[0\] must be a \(left, right, label\) tuple"):
        finetune(None, [("only two", 1)], out=tmp_path / "a")
    with pytest.raises(ValueError, match="validation pairs hold no matching pair"):
        finetune(None, good, [good[1]], out=tmp_path / "a")
    with pytest.raises(MissingColumnError, match="no column 'label'"):
        finetune(None, {"left": ["a"], "right": ["b"]}, out=tmp_path / "a")
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        finetune(None, good, out=tmp_path / "a", batch_size=1)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken"):
        finetune(None, good, out=tmp_path / "taken")


def test_pairs_from_a_table(tmp_path):
    from simsearch.encoders.finetune import as_text_pairs

    path = tmp_path / "pairs.csv"
    path.write_text("a,b,y\nsony kdl40,sony kdl-40,1\nsony kdl40,sony kdl-46,0\n", encoding="utf-8")
    pairs = as_text_pairs(path, left_col="a", right_col="b", label_col="y")
    assert pairs.left == ["sony kdl40", "sony kdl40"] and pairs.labels.tolist() == [1, 0]
