"""notebooks/explore.ipynb, executed headless (nbclient, a real ipykernel) on an output folder the
pipeline's steps build from a sample served on 127.0.0.1: every cell runs, and it draws the
thumbnail grids (from the thumbnails the folder keeps), the score distribution and the failures
by reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.http_server import TestServer
from tests.support.sample_output import build_sample_output

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"


@pytest.mark.integration
def test_explore_notebook_runs_headless(tmp_path: Path, http_server: TestServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    output = build_sample_output(tmp_path, http_server)
    monkeypatch.setenv("CLIP_INDEX_LOCATION", str(output))
    monkeypatch.setenv("CLIP_INDEX_QUERIES", "a red circle|a blue square")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    images_before = sum(n for p, n in http_server.hits.items() if p.startswith("/img/"))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    # 2 text grids, the query image, the image grid, the score histogram, the failures
    assert len(pngs) >= 6
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     + o.get("data", {}).get("text/html", "") for o in outputs)
    assert "clip-index layout" in text and "24 vectors of dimension 64" in text
    assert "tiny-clip (none)" in text
    for reason in ("http_404", "http_403", "opted_out", "failed_to_download"):
        assert reason in text, reason
    # the result grids come from the thumbnails kept in the folder: no image is fetched again
    assert "thumbnails: kept in the folder" in text
    assert sum(n for p, n in http_server.hits.items() if p.startswith("/img/")) == images_before
