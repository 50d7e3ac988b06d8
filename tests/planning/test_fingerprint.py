"""inspect_case and compute_fingerprint: per-case content checks, measurements, determinism."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.data.dataset import Case, DatasetSpec, load_dataset
from autoseg.errors import DatasetError
from autoseg.planning import fingerprint as fp_module
from autoseg.planning.fingerprint import Fingerprint, compute_fingerprint, inspect_case
from autoseg.serial import dumps
from tests.synthetic import write_dataset


def _save(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0), affine=None) -> Path:
    """Write ``data`` (file order i, j, k[, c]) as NIfTI with the given voxel size."""
    affine = np.diag([*zooms, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(zooms) + ((1.0,) if data.ndim == 4 else ()))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _only(case: Case, spec: DatasetSpec) -> tuple[str, str]:
    result = inspect_case(case, spec, sample_budget=1000)
    assert result.fingerprint is None and result.samples == ()
    assert len(result.problems) == 1, result.problems
    return result.problems[0].path, result.problems[0].message


@pytest.fixture
def msd(msd_dataset: Path) -> DatasetSpec:
    return load_dataset(msd_dataset)


# --- measurements -------------------------------------------------------------------------------


def test_hand_made_case(tmp_path: Path) -> None:
    zooms = (0.5, 0.7, 3.0)  # (i, j, k) -> spacing (Z, Y, X) = (3.0, 0.7, 0.5)
    image = np.zeros((10, 12, 8), dtype=np.float32)  # (i, j, k)
    rng = np.random.default_rng(1)
    image[2:7, 3:11, 1:5] = rng.uniform(10, 20, size=(5, 8, 4))
    image[4, 6, 2] = 0.0  # a hole: does not change the crop
    label = np.zeros(image.shape, dtype=np.uint8)
    label[3:5, 4:8, 2:4] = 1
    label[5, 4:6, 2] = 2
    img = _save(tmp_path / "imagesTr" / "c.nii.gz", image, zooms)
    lab = _save(tmp_path / "labelsTr" / "c.nii.gz", label, zooms)
    spec = DatasetSpec("D", tmp_path, "msd", ("MRI",), {0: "bg", 1: "a", 2: "b"}, ())
    result = inspect_case(Case("c", (img,), lab), spec, sample_budget=10_000)
    assert result.problems == ()
    f = result.fingerprint
    assert f.spacing == pytest.approx((3.0, 0.7, 0.5))
    assert f.shape_before_crop == (8, 12, 10)  # (Z, Y, X) = (k, j, i)
    assert f.shape_after_crop == (4, 8, 5)
    assert f.relative_size_after_crop == pytest.approx(4 * 8 * 5 / (8 * 12 * 10))
    expected = image[label > 0]
    (samples,) = result.samples
    assert samples.dtype == np.float32
    assert np.array_equal(np.sort(samples), np.sort(expected))

    full = compute_fingerprint(dataclasses.replace(spec, cases=(Case("c", (img,), lab),)))
    (stats,) = full.intensities
    x = expected.astype(np.float64)
    assert stats.mean == pytest.approx(x.mean(), rel=1e-12)
    assert stats.std == pytest.approx(x.std(), rel=1e-12)
    assert stats.median == pytest.approx(np.median(x), rel=1e-12)
    assert stats.min == x.min() and stats.max == x.max()
    assert stats.percentile_00_5 == pytest.approx(np.percentile(x, 0.5), rel=1e-12)
    assert stats.percentile_99_5 == pytest.approx(np.percentile(x, 99.5), rel=1e-12)
    assert all(type(v) is float for v in dataclasses.astuple(stats))
    assert full.cases == (f,)


def test_all_zero_image_keeps_whole_shape(tmp_path: Path) -> None:
    img = _save(tmp_path / "i.nii.gz", np.zeros((6, 5, 4), np.float32))
    label = np.zeros((6, 5, 4), np.uint8)
    label[1, 1, 1] = 1
    lab = _save(tmp_path / "l.nii.gz", label)
    spec = DatasetSpec("D", tmp_path, "msd", ("CT",), {0: "bg", 1: "a"}, ())
    f = inspect_case(Case("c", (img,), lab), spec, 10).fingerprint
    assert f.shape_after_crop == f.shape_before_crop == (4, 5, 6)
    assert f.relative_size_after_crop == 1.0


def test_sample_budget_subsamples_deterministically(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    full = inspect_case(case, msd, sample_budget=10**9).samples[0]
    a = inspect_case(case, msd, sample_budget=50).samples[0]
    b = inspect_case(case, msd, sample_budget=50).samples[0]
    assert full.size > 50 and a.size == 50
    assert np.array_equal(a, b)
    assert np.isin(a, full).all()


def test_msd_4d_two_channels(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "T", layout="msd", channels=2, n_cases=2)
    spec = load_dataset(root)
    result = inspect_case(spec.cases[0], spec, 10**6)
    assert result.problems == () and len(result.samples) == 2
    # synthetic channel 1 = 1.5 x channel 0
    assert np.allclose(result.samples[1], 1.5 * result.samples[0], rtol=1e-5)
    assert len(compute_fingerprint(spec).intensities) == 2


def test_nnunet_channels_in_order(nnunet_dataset: Path) -> None:
    spec = load_dataset(nnunet_dataset)
    s0, s1 = inspect_case(spec.cases[1], spec, 10**6).samples
    assert np.allclose(s1, 1.5 * s0, rtol=1e-5)


def test_mixed_dtypes_uint8_image_float32_label(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    data = np.clip(np.asarray(nib.load(case.images[0]).dataobj), 0, 255).astype(np.uint8)
    label = np.asarray(nib.load(case.label).dataobj).astype(np.float32)
    _save(case.images[0], data)
    _save(case.label, label)
    assert nib.load(case.images[0]).get_data_dtype() == np.uint8
    assert nib.load(case.label).get_data_dtype() == np.float32
    result = inspect_case(case, msd, 10**6)
    assert result.problems == ()
    assert result.samples[0].dtype == np.float32
    # (i, j, k) file order -> (Z, Y, X): both masks select voxels in the same C order of (k, j, i)
    expected = data.transpose(2, 1, 0)[label.transpose(2, 1, 0) > 0].astype(np.float32)
    assert np.array_equal(result.samples[0], expected)


# --- content problems ---------------------------------------------------------------------------


def test_empty_truncated_and_garbage_files(msd: DatasetSpec) -> None:
    c0, c1, c2 = msd.cases
    c0.images[0].write_bytes(b"")
    raw = gzip.decompress(c1.label.read_bytes())
    c1.label.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    c2.images[0].write_bytes(b"this is not a nifti file at all" * 20)
    assert _only(c0, msd) == (str(c0.images[0]), "file is empty")
    path, message = _only(c1, msd)
    assert path == str(c1.label) and message.startswith("cannot be read")
    path, message = _only(c2, msd)
    assert path == str(c2.images[0]) and message.startswith("cannot be read")


def test_shape_mismatch(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    _save(case.label, np.zeros((24, 28, 19), np.uint8))
    path, message = _only(case, msd)
    assert path == str(case.label)
    assert message == "shape (19, 28, 24) differs from the image's (20, 28, 24)"


def test_spacing_mismatch(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    data = np.asarray(nib.load(case.label).dataobj)
    _save(case.label, data, zooms=(1.0, 1.0, 1.2))
    path, message = _only(case, msd)
    assert path == str(case.label) and "spacing (1.2, 1.0, 1.0) differs" in message


def test_affine_mismatch(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    data = np.asarray(nib.load(case.label).dataobj)
    affine = np.eye(4)
    affine[:3, 3] = (5.0, 0.0, 0.0)
    _save(case.label, data, affine=affine)
    path, message = _only(case, msd)
    assert path == str(case.label) and "affine" in message


def test_tiny_affine_difference_accepted(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    data = np.asarray(nib.load(case.label).dataobj)
    affine = np.eye(4)
    affine[:3, 3] = 1e-5
    _save(case.label, data, affine=affine)
    assert inspect_case(case, msd, 10).problems == ()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_image(msd: DatasetSpec, bad: float) -> None:
    case = msd.cases[0]
    data = np.asarray(nib.load(case.images[0]).dataobj).copy()
    data[5, 5, 5] = bad
    data[6, 5, 5] = bad
    _save(case.images[0], data)
    assert _only(case, msd) == (str(case.images[0]), "2 NaN or Inf voxel(s) in the image")


def test_non_integer_label(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    data = np.asarray(nib.load(case.label).dataobj).astype(np.float32)
    data[0, 0, 0] = 0.1
    _save(case.label, data)
    path, message = _only(case, msd)
    assert path == str(case.label) and "non-integer label values, e.g. [0.1]" in message


def test_integral_float_label_accepted(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    data = np.asarray(nib.load(case.label).dataobj).astype(np.float64)
    _save(case.label, data)
    result = inspect_case(case, msd, 10)
    assert result.problems == () and result.fingerprint is not None


def test_undeclared_label_values_listed(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    data = np.asarray(nib.load(case.label).dataobj).copy()
    data[0, 0, 0] = 7
    data[0, 0, 1] = 4
    _save(case.label, data)
    path, message = _only(case, msd)
    assert path == str(case.label)
    assert "label values [4, 7] not declared in dataset.json (declared: 0, 1, 2)" in message


def test_4d_image_where_one_channel_declared(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "T", layout="msd", channels=2, n_cases=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"0": "MRI"}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(root)
    path, message = _only(spec.cases[0], spec)
    assert path == str(spec.cases[0].images[0])
    assert message == "4D image with 2 channel(s), but dataset.json declares 1"


def test_3d_image_where_two_channels_declared(msd_dataset: Path) -> None:
    meta = json.loads((msd_dataset / "dataset.json").read_text())
    meta["modality"] = {"0": "T1", "1": "T2"}
    (msd_dataset / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(msd_dataset)
    path, message = _only(spec.cases[0], spec)
    assert path == str(spec.cases[0].images[0])
    assert message == "3D image with 1 channel(s), but dataset.json declares 2"


def test_4d_file_in_nnunet_channel(nnunet_dataset: Path) -> None:
    spec = load_dataset(nnunet_dataset)
    case = spec.cases[0]
    data = np.asarray(nib.load(case.images[1]).dataobj)
    _save(case.images[1], np.stack([data, data], -1))
    path, message = _only(case, spec)
    assert path == str(case.images[1]) and message.startswith("4D image (2 volumes)")


def test_4d_label(msd: DatasetSpec) -> None:
    case = msd.cases[0]
    data = np.asarray(nib.load(case.label).dataobj)
    _save(case.label, np.stack([data, data], -1))
    path, message = _only(case, msd)
    assert path == str(case.label) and message.startswith("4D label (2 volumes)")


def test_compute_fingerprint_reports_all_cases_problems(msd: DatasetSpec) -> None:
    c0, _, c2 = msd.cases
    c0.images[0].write_bytes(b"")
    data = np.asarray(nib.load(c2.label).dataobj).copy()
    data[0, 0, 0] = 9
    _save(c2.label, data)
    with pytest.raises(DatasetError) as info:
        compute_fingerprint(msd, workers=2)
    assert [p.path for p in info.value.problems] == [str(c0.images[0]), str(c2.label)]
    assert "file is empty" in str(info.value) and "[9] not declared" in str(info.value)


def test_no_foreground_anywhere_is_an_error(msd: DatasetSpec) -> None:
    for case in msd.cases:
        _save(case.label, np.zeros((24, 28, 20), np.uint8))
    with pytest.raises(DatasetError, match="no case has foreground"):
        compute_fingerprint(msd)


def test_no_cases_is_an_error(msd: DatasetSpec) -> None:
    with pytest.raises(DatasetError, match="no training cases"):
        compute_fingerprint(dataclasses.replace(msd, cases=()))


# --- determinism --------------------------------------------------------------------------------


def test_deterministic_across_runs_and_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_dataset(tmp_path / "T", layout="nnunet", channels=2, n_cases=5, seed=3)
    spec = load_dataset(root)
    monkeypatch.setattr(fp_module, "SAMPLES_PER_CHANNEL", 1000)  # forces subsampling
    first = dumps(compute_fingerprint(spec, workers=1))
    assert dumps(compute_fingerprint(spec, workers=1)) == first
    assert dumps(compute_fingerprint(spec, workers=2)) == first
    path = tmp_path / "fingerprint.json"
    compute_fingerprint(spec, workers=2).to_json(path)
    assert path.read_text() == first
    assert dumps(Fingerprint.from_json(path)) == first


def test_real_hippocampus_smoke(real_dataset: Path) -> None:
    spec = load_dataset(real_dataset)
    assert spec.layout == "msd" and len(spec.cases) == 200
    small = dataclasses.replace(spec, cases=spec.cases[:5])
    fp = compute_fingerprint(small, workers=2)
    assert fp.channels == ("MRI",) and set(fp.labels) == {0, 1, 2}
    assert [c.case_id for c in fp.cases] == [c.case_id for c in spec.cases[:5]]
    for case in fp.cases:
        assert len(case.spacing) == 3 and all(s > 0 for s in case.spacing)
        assert all(
            a <= b for a, b in zip(case.shape_after_crop, case.shape_before_crop, strict=True)
        )
    (stats,) = fp.intensities
    assert stats.min <= stats.percentile_00_5 <= stats.median <= stats.percentile_99_5 <= stats.max
    assert stats.std > 0
