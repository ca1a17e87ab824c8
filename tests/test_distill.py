"""distill(): a layer-subset student trained on real titles loads as a TextEncoder."""

from __future__ import annotations

import json

import pytest

from _helpers import data_rows


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return [row["title"] for row in data_rows("shopee_subset/dev.csv")][:160]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMSEARCH_CACHE", str(tmp_path_factory.mktemp("distill-cache")))
        yield


def test_kept_layers():
    from simsearch.encoders.distill import kept_layers

    assert kept_layers(6, 3) == [0, 2, 5]
    assert kept_layers(6, 6) == list(range(6))
    assert kept_layers(6, 1) == [5]
    with pytest.raises(ValueError, match="exceeds the teacher's 6 layers"):
        kept_layers(6, 7)


def test_student_learns_and_loads(env, titles, tmp_path):
    from simsearch import TextEncoder, distill

    train, held_out = titles[:128], titles[128:]
    teacher = TextEncoder(precision="fp32", num_threads=1)
    target = teacher.encode(held_out)

    untrained = distill(None, train, layers=2, epochs=1, out=tmp_path / "s0", learning_rate=1e-12)
    trained = distill(teacher, train, layers=2, epochs=3, out=tmp_path / "s1", learning_rate=2e-4)
    config = json.loads((trained / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    info = json.loads((trained / "simsearch_distill.json").read_text())
    assert info["teacher_layers_kept"] == [0, 5] and info["texts"] == 128
    assert not (tmp_path / "s1" / "pytorch_model.bin").exists()

    def agreement(path):
        student = TextEncoder(model=path, precision="fp32", num_threads=1)
        assert student.dim == 384 and student.name == path.name
        return float((student.encode(held_out) * target).sum(axis=1).mean())

    # Training on other titles brings the student closer to the teacher on held-out ones.
    before, after = agreement(untrained), agreement(trained)
    assert after > before + 0.01
    int8 = TextEncoder(model=trained, precision="int8", num_threads=1)
    assert int8.encode(held_out[:4]).shape == (4, 384)


def test_bad_arguments(env, titles, tmp_path):
    from simsearch import distill

    with pytest.raises(ValueError, match="texts is empty"):
        distill(None, [], out=tmp_path / "a")
    with pytest.raises(ValueError, match=r"texts\[1\] is an empty text"):
        distill(None, ["ok", " "], out=tmp_path / "a")
    with pytest.raises(ValueError, match="loss"):
        distill(None, titles, loss="kl", out=tmp_path / "a")
    with pytest.raises(ValueError, match="layers"):
        distill(None, titles, layers=0, out=tmp_path / "a")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        distill(None, titles, out=tmp_path / "exists")
    with pytest.raises(ValueError, match="exceeds"):
        distill(None, titles[:4], layers=9, out=tmp_path / "b")
