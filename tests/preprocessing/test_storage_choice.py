"""``--storage auto``: npy for small data, blosc2 above the size rule (npy without the package),
and the size estimate that feeds the rule."""

from __future__ import annotations

import pytest

import autoseg.preprocessing.storage as storage_module
from autoseg.data.plans import Configuration, Normalization, Plans
from autoseg.errors import AutosegError
from autoseg.planning.fingerprint import CaseFingerprint, Fingerprint, IntensityStats
from autoseg.planning.runner import preprocessed_bytes
from autoseg.preprocessing.storage import AUTO_BLOSC2_BYTES, choose_storage


def test_auto_picks_by_size_and_explicit_names_pass_through() -> None:
    pytest.importorskip("blosc2")
    assert choose_storage("auto", AUTO_BLOSC2_BYTES) == "npy"
    assert choose_storage("auto", AUTO_BLOSC2_BYTES + 1) == "blosc2"
    assert choose_storage("npy", 10 * AUTO_BLOSC2_BYTES) == "npy"
    assert choose_storage("blosc2", 1) == "blosc2"
    with pytest.raises(AutosegError, match="auto, npy, blosc2"):
        choose_storage("zarr", 1)


def test_auto_without_blosc2_stays_npy(monkeypatch, caplog) -> None:
    def missing():
        raise AutosegError("storage 'blosc2' needs the blosc2 package")

    monkeypatch.setattr(storage_module, "_blosc2", missing)
    assert choose_storage("auto", 2 * AUTO_BLOSC2_BYTES) == "npy"
    assert "blosc2" in caplog.text
    with pytest.raises(AutosegError, match="blosc2 package"):
        choose_storage("blosc2", 1)


def _config(name: str, spacing: tuple[float, ...], identifier: str) -> Configuration:
    return Configuration(
        name=name,
        spacing=spacing,
        patch_size=(8, 8, 8),
        batch_size=2,
        strides=((1, 1, 1),),
        kernel_sizes=((3, 3, 3),),
        features_per_stage=(4,),
        normalization=(Normalization("zscore"),) * 2,
        data_identifier=identifier,
    )


def test_estimate_counts_each_preprocessed_folder_once() -> None:
    stats = IntensityStats(0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0)
    cases = tuple(
        CaseFingerprint(f"c{i}", (2.0, 1.0, 1.0), (10, 20, 20), (10, 20, 20), 1.0) for i in range(3)
    )
    fingerprint = Fingerprint("X", ("A", "B"), {0: "bg", 1: "fg"}, cases, (stats, stats))
    configs = {
        "2d": _config("2d", (2.0, 1.0, 1.0), "full"),
        "3d_fullres": _config("3d_fullres", (2.0, 1.0, 1.0), "full"),  # shares 2d's folder
        "3d_lowres": _config("3d_lowres", (4.0, 2.0, 2.0), "low"),
    }
    plans = Plans("X", "default", 8.0, 8, ("A", "B"), {0: "bg", 1: "fg"}, configs)
    per_voxel = 2 * 4 + 1  # two float32 channels and the uint8 labels
    expected = 3 * (10 * 20 * 20 + 5 * 10 * 10) * per_voxel
    assert preprocessed_bytes(fingerprint, plans) == expected
