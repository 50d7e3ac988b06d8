"""Preprocessed data stored as npy or blosc2: same arrays, same batches, never mixed up."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import AutosegError
from autoseg.preprocessing.case_store import load_case, preprocessed_folder
from autoseg.preprocessing.dataset_run import run_preprocessing
from autoseg.preprocessing.storage import check_storage
from autoseg.training.loader import BatchLoader
from tests.preprocessing.test_preprocess import config, plans_of, spec_of
from tests.synthetic import write_dataset

pytest.importorskip("blosc2")
IDS = ["case_000", "case_001", "case_002"]


def _preprocess(tmp_path: Path, storage: str, name: str = "home") -> Path:
    root = tmp_path / "Task99"
    if not root.exists():
        write_dataset(root, n_cases=3)
    home = tmp_path / name / "Task99"
    run_preprocessing(spec_of(root), plans_of(config()), ["3d_fullres"], home, 1, storage=storage)
    return preprocessed_folder(home, config())


def test_blosc2_holds_the_same_arrays_in_its_own_files(tmp_path: Path) -> None:
    npy, b2 = _preprocess(tmp_path, "npy", "a"), _preprocess(tmp_path, "blosc2", "b")
    names = {p.name for p in b2.iterdir()}
    assert {"case_000.img.b2nd", "case_000.seg.b2nd"} <= names
    assert not any(n.endswith(".img.npy") or n.endswith(".seg.npy") for n in names)
    for cid in IDS:
        a, b = load_case(npy, cid, mmap=False), load_case(b2, cid, mmap=False)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.seg, b.seg)
        assert b.properties.storage == "blosc2" and a.properties.storage == "npy"
        lazy = load_case(b2, cid, mmap=True)
        assert not isinstance(lazy.image, np.ndarray)  # decompressed only where sliced
        np.testing.assert_array_equal(lazy.image[:, 1:5, 2:9], a.image[:, 1:5, 2:9])
    size = sum(p.stat().st_size for p in b2.glob("*.b2nd"))
    assert size < sum(p.stat().st_size for p in npy.glob("*.img.npy"))


def test_the_training_loader_gives_the_same_batches_from_both(tmp_path: Path) -> None:
    npy, b2 = _preprocess(tmp_path, "npy", "a"), _preprocess(tmp_path, "blosc2", "b")
    batches = []
    for folder in (npy, b2):
        with BatchLoader(folder, IDS, config(), seed=4, augment=True) as loader:
            batches.append([next(loader) for _ in range(3)])
    for x, y in zip(*batches, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["target"], y["target"])


def test_switching_format_redoes_the_cases_and_leaves_no_stale_arrays(tmp_path: Path) -> None:
    folder = _preprocess(tmp_path, "npy")
    first = load_case(folder, "case_000", mmap=False).image
    folder = _preprocess(tmp_path, "blosc2")  # same folder, the other format
    names = {p.name for p in folder.iterdir()}
    assert not any(n.endswith(".img.npy") for n in names)
    assert all(f"{c}.img.b2nd" in names for c in IDS)
    case = load_case(folder, "case_000", mmap=False)
    assert case.properties.storage == "blosc2"
    np.testing.assert_array_equal(case.image, first)
    folder = _preprocess(tmp_path, "npy")  # and back
    assert not list(folder.glob("*.b2nd"))
    assert load_case(folder, "case_000").properties.storage == "npy"


def test_a_case_is_read_in_the_format_its_properties_name(tmp_path: Path) -> None:
    folder = _preprocess(tmp_path, "blosc2")
    props = folder / "case_000.json"
    record = json.loads(props.read_text())
    record["storage"] = "npy"  # a lie: there is no .npy file
    props.write_text(json.dumps(record))
    with pytest.raises(AutosegError, match="case_000.*damaged"):
        load_case(folder, "case_000")
    record["storage"] = "zarr"
    props.write_text(json.dumps(record))
    with pytest.raises(AutosegError, match="unknown storage 'zarr'"):
        load_case(folder, "case_000")


def test_blosc2_without_the_package_is_a_clear_error(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_blosc2(name, *args, **kwargs):
        if name == "blosc2":
            raise ImportError("no blosc2")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_blosc2)
    with pytest.raises(AutosegError, match=r"pip install -e \"\.\[blosc2\]\""):
        check_storage("blosc2")
    assert check_storage("npy") == "npy"
