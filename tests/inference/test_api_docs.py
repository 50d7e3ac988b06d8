"""docs/api.md runs: every ```python block, in order, in a folder with a tiny trained model."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.inference.test_predict import make_model

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_doc_has_examples_of_every_entry_point() -> None:
    code = "\n".join(python_blocks(DOC.read_text(encoding="utf-8")))
    for call in ("autoseg.load_model(", ".predict(", ".predict_array(", "probabilities=True"):
        assert call in code, call


def test_every_python_block_of_docs_api_runs(tmp_path: Path, monkeypatch) -> None:
    make_model(tmp_path / "autoseg_home" / "Task04_Hippocampus")
    rng = np.random.default_rng(0)
    grid = np.indices((22, 19, 10)).transpose(1, 2, 3, 0) * np.array([1.0, 0.9, 2.0])
    blob = np.linalg.norm(grid - grid.mean(axis=(0, 1, 2)), axis=-1) < 7
    data = (100 + 60 * blob + rng.normal(0, 5, blob.shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 0.9, 2.0, 1.0])), str(tmp_path / "case.nii.gz"))
    monkeypatch.chdir(tmp_path)
    import autoseg.api

    load = autoseg.api.load_model  # without TTA: 8x less CPU, the same code paths otherwise
    monkeypatch.setattr(autoseg.api, "load_model", lambda *a, **k: load(*a, **k, tta=False))
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    namespace: dict = {"__name__": "docs_api"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)
        except Exception as exc:  # name the block that broke
            pytest.fail(f"docs/api.md block {i + 1} failed: {exc!r}\n{block}")
    assert (tmp_path / "case_seg.nii.gz").is_file()
