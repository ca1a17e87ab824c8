"""Signed index files: an HMAC under the user's key, checked before the file is parsed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import simsearch
from simsearch.errors import CorruptFileError, SignatureError


@pytest.fixture()
def vectors(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(300, 16)).astype(np.float32)


def test_a_signed_index_loads_with_its_key(tmp_path: Path, vectors: np.ndarray) -> None:
    index = simsearch.Index(16)
    index.add(vectors)
    index.save(tmp_path / "ix", signing_key="secret")
    assert (tmp_path / "ix.sig").is_file()
    loaded = simsearch.Index.load(tmp_path / "ix", signing_key="secret")
    assert len(loaded) == 300
    assert len(simsearch.Index.load(tmp_path / "ix")) == 300  # without a key the signature is not needed


def test_wrong_key_unsigned_and_edited_files_are_refused(tmp_path: Path, vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    index = simsearch.Index(16)
    index.add(vectors)
    index.save(tmp_path / "signed", signing_key=b"k1")
    index.save(tmp_path / "unsigned")
    with pytest.raises(SignatureError, match="does not match its signature"):
        simsearch.Index.load(tmp_path / "signed", signing_key=b"k2")
    with pytest.raises(SignatureError, match="is not signed"):
        simsearch.Index.load(tmp_path / "unsigned", signing_key=b"k1")
    # a byte changed after signing: refused before the parser sees it, even with verify=False
    data = bytearray((tmp_path / "signed").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "signed").write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        simsearch.Index.load(tmp_path / "signed", signing_key=b"k1", verify=False)
    # the key can come from the environment
    monkeypatch.setenv("SIMSEARCH_SIGNING_KEY", "k1")
    with pytest.raises(SignatureError, match="is not signed"):
        simsearch.Index.load(tmp_path / "unsigned")
    assert issubclass(SignatureError, CorruptFileError)


def test_a_signed_sharded_index(tmp_path: Path, vectors: np.ndarray) -> None:
    sharded = simsearch.ShardedIndex(16, 3)
    sharded.add(vectors)
    sharded.save(tmp_path / "shards", signing_key="secret")
    assert len(simsearch.ShardedIndex.load(tmp_path / "shards", signing_key="secret")) == 300
    with pytest.raises(SignatureError):
        simsearch.ShardedIndex.load(tmp_path / "shards", signing_key="other")
    manifest = tmp_path / "shards" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"seed": 0', '"seed": 1'))
    with pytest.raises(SignatureError, match="does not match"):
        simsearch.ShardedIndex.load(tmp_path / "shards", signing_key="secret")
