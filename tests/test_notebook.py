"""Execute notebooks/ end to end with nbclient, on a slice of the bundled sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import simsearch

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.usefixtures("model_cache")  # the kernel inherits SIMSEARCH_CACHE: one exported model for the session
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # jupyter_core warns about its old path layout unless told to use the new one.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("SIMSEARCH_NOTEBOOK_ROWS", "150")
    # The kernel must import the simsearch under test, wherever it is installed.
    package_parent = str(Path(simsearch.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the score histogram and the precision-recall curve
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "mean F1 of the groups" in text and "top-1 accuracy" in text
