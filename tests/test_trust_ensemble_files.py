"""Every bad ``CASE.npz`` beside an ensemble is a clean error (issue 20, item 5).

Each field of the file is made wrong in turn. What the headers show (types, shapes, a size no
memory holds, a label map of another grid) is refused before anything is written; what only
the values show (NaN, infinities, values outside [0, 1], a label named twice) fails that case,
and the other cases are written, with exit code 2.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from autoseg.data.io import read_array
from tests.reliability_helpers import (
    assert_clean_failure,
    cli,
    files_in,
    pairing_arrays,
    save_nifti,
)

SHAPE_ZYX = (4, 5, 6)


def _npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays``; where the label map beside it exists, name it as predict does (so the
    checks under test are reached, not the pairing check)."""
    if path.with_name(path.stem + ".nii.gz").is_file():
        arrays = {**pairing_arrays(path), **arrays}
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array)
            zf.writestr(f"{name}.npy", buffer.getvalue())


def _header_only(path: Path, shape: tuple[int, ...]) -> None:
    """An npz whose ``probabilities`` header declares ``shape`` (float16) over a few bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f2", "fortran_order": False, "shape": shape}
    )
    buffer.write(b"\0" * 64)
    labels = io.BytesIO()
    np.lib.format.write_array(labels, np.arange(shape[0]))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("probabilities.npy", buffer.getvalue())
        zf.writestr("labels.npy", labels.getvalue())


def _good() -> dict[str, np.ndarray]:
    fg = np.zeros(SHAPE_ZYX, dtype=np.float32)
    fg[1:3, 1:4, 1:4] = 0.8
    return {"probabilities": np.stack([1 - fg, fg]).astype(np.float16), "labels": np.array([0, 1])}


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    """Folders A and B with cases c1 and c2, all good."""
    for folder in ("A", "B"):
        for case in ("c1", "c2"):
            label = np.zeros(SHAPE_ZYX[::-1], dtype=np.uint8)  # file order i, j, k
            save_nifti(label, tmp_path / folder / f"{case}.nii.gz")
            _npz(tmp_path / folder / f"{case}.npz", _good())
    return tmp_path / "A", tmp_path / "B"


TIB = 1 << 40

# refused from the headers: nothing is written
HEADER_CASES = {
    "labels shorter": lambda g: {**g, "labels": np.array([0])},
    "labels longer": lambda g: {**g, "labels": np.array([0, 1, 2])},
    "labels 2D": lambda g: {**g, "labels": np.array([[0, 1]])},
    "labels float": lambda g: {**g, "labels": np.array([0.0, 1.0])},
    "labels text": lambda g: {**g, "labels": np.array(["a", "b"])},
    "labels missing": lambda g: {"probabilities": g["probabilities"]},
    "probabilities missing": lambda g: {"labels": g["labels"]},
    "probabilities 3D": lambda g: {**g, "probabilities": g["probabilities"][0]},
    "probabilities 5D": lambda g: {**g, "probabilities": g["probabilities"][None]},
    "probabilities empty axis": lambda g: {**g, "probabilities": g["probabilities"][:, :0]},
    "probabilities integer": lambda g: {**g, "probabilities": g["probabilities"].astype(int)},
    "probabilities bool": lambda g: {**g, "probabilities": g["probabilities"] > 0.5},
    "probabilities complex": lambda g: {
        **g,
        "probabilities": g["probabilities"].astype(np.complex64),
    },
}


@pytest.mark.parametrize("kind", sorted(HEADER_CASES))
@pytest.mark.parametrize("where", ["second", "both"])
def test_ensemble_refuses_a_bad_npz_before_writing(tmp_path: Path, kind: str, where: str) -> None:
    """In one folder the files disagree; in both (the same bad file), only the checks of each
    file can tell (labels shorter than the channels was an IndexError)."""
    a, b = _folders(tmp_path)
    for folder in (a, b) if where == "both" else (b,):
        _npz(folder / "c2.npz", HEADER_CASES[kind](_good()))
    result = cli("ensemble", "-i", a, "-i", b, "-o", tmp_path / "E")
    assert_clean_failure(result, str(b / "c2.npz"))
    assert not (tmp_path / "E").exists()


@pytest.mark.parametrize("where", ["first", "second"])
def test_ensemble_refuses_an_npz_declaring_a_tebibyte(tmp_path: Path, where: str) -> None:
    a, b = _folders(tmp_path)
    bad = (a if where == "first" else b) / "c1.npz"
    _header_only(bad, (2, 1 << 13, 1 << 13, 1 << 13))  # 2 TiB of float16
    result = cli("ensemble", "-i", a, "-i", b, "-o", tmp_path / "E")
    assert_clean_failure(result, str(bad), "memory")
    assert not (tmp_path / "E").exists()


@pytest.mark.parametrize("which", ["first", "second"])
def test_ensemble_refuses_a_label_map_of_another_grid(tmp_path: Path, which: str) -> None:
    a, b = _folders(tmp_path)
    bad = a / "c2.nii.gz"
    save_nifti(np.zeros((6, 5, 3), dtype=np.uint8), bad)  # (Z, Y, X) = (3, 5, 6), not (4, 5, 6)
    if which == "second":  # only the first folder's label map gives the geometry
        save_nifti(np.zeros((6, 5, 3), dtype=np.uint8), b / "c2.nii.gz")
        result = cli("ensemble", "-i", b, "-i", a, "-o", tmp_path / "E")
        bad = b / "c2.nii.gz"
    else:
        result = cli("ensemble", "-i", a, "-i", b, "-o", tmp_path / "E")
    assert_clean_failure(result, str(bad), "(3, 5, 6)", "(4, 5, 6)")
    assert not (tmp_path / "E").exists()


def _with_value(value: float) -> dict[str, np.ndarray]:
    good = _good()
    probs = good["probabilities"].copy()
    probs[1, 2, 2, 2] = value
    return {**good, "probabilities": probs}


VALUE_CASES = {
    "NaN": lambda: _with_value(np.nan),
    "+inf": lambda: _with_value(np.inf),
    "-inf": lambda: _with_value(-np.inf),
    "above 1": lambda: _with_value(2.0),
    "negative": lambda: _with_value(-0.5),
    "all NaN": lambda: {**_good(), "probabilities": np.full((2, *SHAPE_ZYX), np.nan, np.float16)},
    "labels twice": lambda: {**_good(), "labels": np.array([1, 1])},
    "labels negative": lambda: {**_good(), "labels": np.array([-1, 1])},
    "labels beyond int32": lambda: {**_good(), "labels": np.array([0, 2**40])},
}


@pytest.mark.parametrize("kind", sorted(VALUE_CASES))
@pytest.mark.parametrize("folder", ["A", "B", "both"])
def test_ensemble_fails_the_case_with_bad_values_and_writes_the_others(
    tmp_path: Path, kind: str, folder: str
) -> None:
    a, b = _folders(tmp_path)
    bad = tmp_path / ("A" if folder == "both" else folder) / "c2.npz"
    for where in ("A", "B") if folder == "both" else (folder,):
        _npz(tmp_path / where / "c2.npz", VALUE_CASES[kind]())
    result = cli("ensemble", "-i", a, "-i", b, "-o", tmp_path / "E")
    assert_clean_failure(result, str(bad), "1 case(s) failed")
    assert files_in(tmp_path / "E") == ["c1.nii.gz"]  # no all-background c2, no temp file
    labels, _ = read_array(tmp_path / "E" / "c1.nii.gz")
    assert labels.max() == 1  # the good case is a real ensemble
