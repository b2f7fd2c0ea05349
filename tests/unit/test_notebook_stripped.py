"""notebooks/explore.ipynb is committed without outputs (nor execution counts, nor widget
state): its diffs stay readable and it carries no data from whoever ran it last."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.checkout import needs_checkout

pytestmark = needs_checkout("notebooks/explore.ipynb")
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "explore.ipynb"


def test_notebook_outputs_are_stripped() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, (f"code cells {dirty} of {NOTEBOOK.name} hold outputs: strip them "
                       "(jupyter nbconvert --clear-output --inplace notebooks/explore.ipynb)")
    assert "widgets" not in nb.get("metadata", {})
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
