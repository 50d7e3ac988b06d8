"""Preprocessing: crop, resampling, normalisation, restoring, storage and the dataset runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from autoseg.data.dataset import Case, DatasetSpec
from autoseg.data.io import Geometry, Image
from autoseg.data.plans import Configuration, Normalization, Plans
from autoseg.errors import AutosegError
from autoseg.preprocessing.case_store import (
    CaseProperties,
    load_case,
    plans_key,
    preprocessed_folder,
)
from autoseg.preprocessing.dataset_run import run_preprocessing
from autoseg.preprocessing.normalize import normalize_channel
from autoseg.preprocessing.preprocess import (
    class_locations,
    preprocess_image,
    restore_probabilities,
)
from autoseg.preprocessing.resample import resample, resample_labels, target_shape
from tests.synthetic import write_dataset

LABELS = {0: "background", 1: "anterior", 2: "posterior"}
ZSCORE = Normalization("zscore")


def config(
    spacing=(1.0, 1.0, 1.0),
    norms=(ZSCORE,),
    anisotropic_axis=None,
    name="3d_fullres",
    identifier="data_3d",
) -> Configuration:
    return Configuration(
        name=name,
        spacing=tuple(spacing),
        patch_size=(16, 16, 16),
        batch_size=2,
        strides=((1, 1, 1), (2, 2, 2)),
        kernel_sizes=((3, 3, 3), (3, 3, 3)),
        features_per_stage=(8, 16),
        normalization=tuple(norms),
        data_identifier=identifier,
        anisotropic_axis=anisotropic_axis,
    )


def image(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Image:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    affine = tuple(tuple(float(v) for v in row) for row in np.eye(4))
    return Image(array, Geometry(tuple(array.shape[1:]), tuple(spacing), affine))


def spec_of(root: Path) -> DatasetSpec:
    """A DatasetSpec built by hand from a tests.synthetic.write_dataset folder (MSD layout)."""
    files = sorted((root / "imagesTr").glob("*.nii.gz"))
    cases = tuple(Case(p.name[: -len(".nii.gz")], (p,), root / "labelsTr" / p.name) for p in files)
    return DatasetSpec(root.name, root, "msd", ("MRI",), dict(LABELS), cases)


def plans_of(*configs: Configuration) -> Plans:
    return Plans("Task99", "default", 8.0, 8, ("MRI",), dict(LABELS), {c.name: c for c in configs})


# --- crop -----------------------------------------------------------------------------------


def test_crop_box_is_the_nonzero_region_of_any_channel():
    array = np.zeros((2, 10, 12, 14), dtype=np.float32)
    array[0, 2:5, 3:6, 4:7] = 1.0
    array[1, 4:8, 5:9, 6:11] = -3.0  # negative values count as nonzero
    norms = (Normalization("none"), Normalization("none"))
    data, _, props = preprocess_image(image(array), config(norms=norms))
    assert props.crop_bbox == ((2, 8), (3, 9), (4, 11))
    assert props.shape_after_crop == (6, 6, 7) == data.shape[1:]
    assert props.original_shape == (10, 12, 14)
    np.testing.assert_array_equal(data, array[:, 2:8, 3:9, 4:11])


def test_all_zero_image_keeps_everything():
    data, _, props = preprocess_image(image(np.zeros((4, 5, 6))), config())
    assert props.crop_bbox == ((0, 4), (0, 5), (0, 6))
    assert data.shape == (1, 4, 5, 6) and not data.any()


def test_holes_in_the_nonzero_region_are_inside_the_mask():
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:20, :20, :20]
    ball = (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 < 64
    array = np.where(ball, rng.uniform(50, 150, ball.shape), 0)
    array[10, 10, 10] = 0  # a hole: zero, but inside the object
    norm = Normalization("zscore", use_nonzero_mask=True)
    data, _, props = preprocess_image(image(array), config(norms=(norm,)))
    z0, y0, x0 = (a for a, _ in props.crop_bbox)
    hole = data[0, 10 - z0, 10 - y0, 10 - x0]
    assert hole != 0 and hole == data[0].min()  # normalised (clipped to the low percentile)
    outside = ~ball[tuple(slice(a, b) for a, b in props.crop_bbox)]
    assert outside.any() and np.all(data[0][outside] == 0)


# --- resampling -----------------------------------------------------------------------------


def test_target_shape_rounds_and_keeps_one_voxel():
    assert target_shape((10, 33, 7), (3.0, 0.7, 0.7), (1.0, 1.0, 1.0)) == (30, 23, 5)
    assert target_shape((1, 4, 4), (1.0, 1.0, 1.0), (5.0, 1.0, 1.0)) == (1, 4, 4)


def test_anisotropic_resampling_keeps_a_step_along_the_thick_axis():
    array = np.full((10, 32, 32), 10.0, dtype=np.float32)
    array[5:] = 100.0  # a step along Z (the thick axis, 4 mm)
    spacing = (4.0, 0.5, 0.5)
    thick = config(spacing=(2.0, 1.0, 1.0), norms=(Normalization("none"),), anisotropic_axis=0)
    data, _, props = preprocess_image(image(array, spacing), thick)
    assert data.shape == (1, 20, 16, 16) and props.shape_after_resample == (20, 16, 16)
    profile = data[0, :, 8, 8]
    np.testing.assert_allclose(profile, [10.0] * 10 + [100.0] * 10, atol=1e-3)
    # the same with cubic interpolation along Z overshoots: the test above can fail
    smooth = config(spacing=(2.0, 1.0, 1.0), norms=(Normalization("none"),))
    cubic, _, _ = preprocess_image(image(array, spacing), smooth)
    assert np.abs(cubic[0, :, 8, 8] - profile).max() > 1.0


def test_resample_matches_scipy_zoom():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(9, 14, 11)).astype(np.float32)
    new_shape = (13, 10, 11)
    ours = resample(volume, new_shape, (3, 3, 3))
    zoom = np.array(new_shape) / np.array(volume.shape)
    ref = ndimage.zoom(volume.astype(np.float64), zoom, order=3, mode="nearest", grid_mode=True)
    assert ours.dtype == np.float32 and ours.shape == new_shape
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_resampled_labels_stay_in_the_label_set():
    rng = np.random.default_rng(2)
    labels = np.zeros((12, 30, 30), dtype=np.int8)
    labels[2:10, 5:20, 5:20] = 5
    labels[4:8, 10:25, 12:28] = 2
    labels[rng.random(labels.shape) < 0.05] = 7  # speckle: many label borders
    out = resample_labels(labels, (9, 43, 21), order=1, anisotropic_axis=0)
    assert out.dtype == np.int8 and out.shape == (9, 43, 21)
    assert set(np.unique(out)) <= {0, 2, 5, 7}
    assert {2, 5} <= set(np.unique(out))
    # linear interpolation of the values themselves would invent labels in between
    naive = resample(labels, (9, 43, 21), (0, 1, 1))
    assert not set(np.unique(np.rint(naive))) <= {0, 2, 5, 7}


# --- normalisation --------------------------------------------------------------------------


def test_ct_normalization_clips_then_uses_dataset_statistics():
    values = np.array([-2000.0, -100.0, 0.0, 50.0, 100.0, 3000.0], dtype=np.float32)
    channel = values.reshape(1, 2, 3).copy()
    norm = Normalization("ct", clip_low=-100.0, clip_high=200.0, mean=50.0, std=25.0)
    normalize_channel(channel, norm)
    expected = (np.clip(values, -100, 200) - 50.0) / 25.0
    np.testing.assert_allclose(channel.ravel(), expected, rtol=1e-6)
    assert channel.dtype == np.float32


def test_zscore_without_mask_uses_the_whole_image():
    rng = np.random.default_rng(3)
    array = rng.normal(100, 20, size=(10, 12, 14))
    array[0, 0, 0] = 1e6  # an outlier the percentile clip removes
    data, _, _ = preprocess_image(image(array), config())
    x = array.astype(np.float32).astype(np.float64)
    low, high = np.percentile(x, [0.5, 99.5])
    clipped = np.clip(x, low, high)
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(data[0], expected, atol=1e-4)
    assert data.dtype == np.float32


def test_zscore_with_mask_uses_the_nonzero_region_and_zeroes_outside():
    rng = np.random.default_rng(4)
    zz, yy, xx = np.mgrid[:16, :16, :16]
    ball = (zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 8) ** 2 < 49
    array = np.where(ball, rng.normal(300, 50, ball.shape), 0.0).astype(np.float32)
    masked = config(norms=(Normalization("zscore", use_nonzero_mask=True),))
    data, _, props = preprocess_image(image(array), masked)
    crop = tuple(slice(a, b) for a, b in props.crop_bbox)
    inside = ball[crop]
    x = array[crop].astype(np.float64)
    low, high = np.percentile(x[inside], [0.5, 99.5])
    clipped = np.clip(x[inside], low, high)
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(data[0][inside], expected, atol=1e-4)
    assert np.all(data[0][~inside] == 0)
    unmasked, _, _ = preprocess_image(image(array), config())
    assert np.all(unmasked[0][~inside] < -1)  # without the mask the zeros count and move


def test_nonzero_mask_follows_the_resampling():
    zz, yy, xx = np.mgrid[:20, :20, :20]
    ball = (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 < 81
    array = np.where(ball, 200.0 + zz, 0.0)
    masked = config(norms=(Normalization("zscore", use_nonzero_mask=True),), spacing=(1.25,) * 3)
    data, _, props = preprocess_image(image(array, (0.8, 0.8, 0.8)), masked)
    assert props.crop_bbox == ((2, 19),) * 3 and props.shape_after_resample == (11, 11, 11)
    zero = data[0] == 0
    assert zero[0, 0, 0] and zero[-1, -1, -1] and not zero[5, 5, 5]
    outside_before = 1 - ball[2:19, 2:19, 2:19].mean()
    assert abs(zero.mean() - outside_before) < 0.03


def test_inputs_that_do_not_fit_are_refused():
    array = np.ones((4, 5, 6))
    with pytest.raises(AutosegError, match="channel"):
        preprocess_image(image(np.ones((2, 4, 5, 6))), config())
    with pytest.raises(AutosegError, match="label shape"):
        preprocess_image(image(array), config(), np.zeros((4, 5, 7), np.int8))
    with pytest.raises(AutosegError, match="0..255"):
        preprocess_image(image(array), config(), np.full((4, 5, 6), 256, np.int16))
    with pytest.raises(AutosegError, match="scheme"):
        preprocess_image(image(array), config(norms=(Normalization("minmax"),)))


# --- restoring ------------------------------------------------------------------------------


def one_hot(seg: np.ndarray, k: int) -> np.ndarray:
    return (np.arange(k)[:, None, None, None] == seg[None]).astype(np.float32)


def test_restore_probabilities_identity_spacing_gives_back_the_labels():
    rng = np.random.default_rng(5)
    array = np.zeros((12, 16, 20), dtype=np.float32)
    array[2:10, 3:14, 4:17] = rng.uniform(1, 2, size=(8, 11, 13))
    labels = np.zeros(array.shape, dtype=np.int8)
    labels[4:8, 5:10, 6:12] = 1
    labels[5:7, 10:12, 8:15] = 2
    _, seg, props = preprocess_image(image(array), config(), labels, "c1")
    restored = restore_probabilities(one_hot(seg[0], 3), props)
    assert restored.shape == (3, 12, 16, 20) and restored.dtype == np.float32
    np.testing.assert_array_equal(restored.argmax(0), labels)
    assert np.all(restored[0, 0] == 1.0) and np.all(restored[1:, 0] == 0.0)  # outside the crop


def test_restore_probabilities_undoes_anisotropic_resampling():
    array = np.ones((7, 20, 30), dtype=np.float32)
    array[:, :2] = 0
    labels = np.zeros(array.shape, dtype=np.int8)
    labels[2:5, 6:14, 8:22] = 1
    thick = config(spacing=(2.0, 1.0, 1.0), anisotropic_axis=0)
    _, seg, props = preprocess_image(image(array, (5.0, 0.8, 0.8)), thick, labels, "c2")
    assert props.shape_after_resample == (18, 14, 24) and props.anisotropic_axis == 0
    restored = restore_probabilities(one_hot(seg[0], 2), props)
    assert restored.shape == (2, 7, 20, 30)
    np.testing.assert_allclose(restored.sum(0), 1.0, atol=1e-5)
    agree = (restored.argmax(0) == labels).mean()
    assert agree > 0.99
    with pytest.raises(ValueError):
        restore_probabilities(np.zeros((2, 5, 5, 5), np.float32), props)


# --- class locations ------------------------------------------------------------------------


def test_class_locations_point_at_their_label_and_are_reproducible():
    seg = np.zeros((10, 12, 14), dtype=np.int8)
    seg[1:9, 2:10, 3:12] = 1  # 576 voxels: sampled down
    seg[4:6, 4:6, 4:6] = 3  # 8 voxels: all kept
    locs = class_locations(seg, "case_a", max_per_label=100)
    assert set(locs) == {1, 3}  # absent labels (2) and background have no entry
    assert locs[1].shape == (100, 3) and locs[3].shape == (8, 3)
    for label, coords in locs.items():
        assert coords.dtype == np.int32
        assert np.all(seg[tuple(coords.T)] == label)
    assert len({tuple(c) for c in locs[1]}) == 100  # no duplicates
    again = class_locations(seg, "case_a", max_per_label=100)
    np.testing.assert_array_equal(again[1], locs[1])
    other = class_locations(seg, "case_b", max_per_label=100)
    assert not np.array_equal(other[1], locs[1])


def test_class_location_sampling_does_not_depend_on_the_process():
    code = (
        "import numpy as np; from autoseg.preprocessing.preprocess import class_locations;"
        "seg = np.ones((8, 9, 10), np.int8);"
        "print(class_locations(seg, 'case_a', max_per_label=5)[1].tolist())"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    seg = np.ones((8, 9, 10), np.int8)
    assert outputs == {f"{class_locations(seg, 'case_a', max_per_label=5)[1].tolist()}\n"}


# --- storage and the runner -----------------------------------------------------------------


def folder_state(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_plans_key_depends_on_what_the_data_depends_on():
    base = config()
    assert plans_key(base) == plans_key(config(name="2d"))
    assert plans_key(base) != plans_key(config(spacing=(1.0, 1.0, 2.0)))
    assert plans_key(base) != plans_key(config(norms=(Normalization("none"),)))
    assert plans_key(base) != plans_key(config(anisotropic_axis=0))


def test_run_preprocessing_round_trip_through_load_case(tmp_path: Path):
    spec = spec_of(write_dataset(tmp_path / "Task99", n_cases=2))
    home = tmp_path / "home" / "Task99"
    cfg = config()
    run_preprocessing(spec, plans_of(cfg, config(name="2d")), ["3d_fullres", "2d"], home, 1)
    folder = preprocessed_folder(home, cfg)
    assert folder == home / "preprocessed" / "data_3d"
    assert sorted(p.name for p in (home / "preprocessed").iterdir()) == ["data_3d"]
    names = {p.name for p in folder.iterdir()}
    for cid in ("case_000", "case_001"):
        assert {f"{cid}.img.npy", f"{cid}.seg.npy", f"{cid}.fg.npz", f"{cid}.json"} <= names
    case = load_case(folder, "case_000")
    assert isinstance(case.image, np.memmap) and isinstance(case.seg, np.memmap)
    assert case.image.dtype == np.float32 and case.seg.dtype == np.uint8
    props = case.properties
    assert isinstance(props, CaseProperties) and props.case_id == "case_000"
    assert case.image.shape == (1, *props.shape_after_resample)
    assert case.seg.shape == (1, *props.shape_after_resample)
    assert props.original_shape == (20, 28, 24) and props.plans_key == plans_key(cfg)
    assert set(case.class_locations) == {1, 2}
    for label, coords in case.class_locations.items():
        assert np.all(case.seg[0][tuple(coords.T)] == label)
    loaded = load_case(folder, "case_000", mmap=False)
    assert not isinstance(loaded.image, np.memmap)
    np.testing.assert_array_equal(loaded.image, case.image)
    with pytest.raises(AutosegError, match="case_009"):
        load_case(folder, "case_009")


def test_run_preprocessing_is_idempotent_and_resumes(tmp_path: Path):
    spec = spec_of(write_dataset(tmp_path / "Task99", n_cases=3))
    home = tmp_path / "home" / "Task99"
    cfg = config()
    plans = plans_of(cfg)
    run_preprocessing(spec, plans, ["3d_fullres"], home, 1)
    folder = preprocessed_folder(home, cfg)
    first = folder_state(folder)
    (folder / ".case_002.img.npy.abc.part").write_bytes(b"left by a killed run")
    run_preprocessing(spec, plans, ["3d_fullres"], home, 1)
    assert folder_state(folder) == first  # nothing rewritten, the leftover temp file removed
    (folder / "case_001.json").unlink()  # as if killed before case_001 finished
    run_preprocessing(spec, plans, ["3d_fullres"], home, 1)
    now = folder_state(folder)
    assert set(now) == set(first)
    redone = {name for name in now if now[name] != first[name]}
    case_files = {"case_001.img.npy", "case_001.seg.npy", "case_001.fg.npz", "case_001.json"}
    assert redone == case_files | {"preprocessing.complete"}  # incomplete until case_001 was
    changed = config(norms=(Normalization("none"),))  # other settings: everything is redone
    run_preprocessing(spec, plans_of(changed), ["3d_fullres"], home, 1)
    assert all(v != first[k] for k, v in folder_state(folder).items() if k.endswith(".json"))


def test_one_and_two_workers_write_identical_files(tmp_path: Path):
    spec = spec_of(write_dataset(tmp_path / "Task99", n_cases=3))
    cfg = config(spacing=(1.3, 0.9, 1.1))  # resampling on: the heavier path
    one, two = tmp_path / "one", tmp_path / "two"
    run_preprocessing(spec, plans_of(cfg), ["3d_fullres"], one, 1)
    run_preprocessing(spec, plans_of(cfg), ["3d_fullres"], two, 2)
    files_one = sorted(p.name for p in preprocessed_folder(one, cfg).iterdir())
    files_two = sorted(p.name for p in preprocessed_folder(two, cfg).iterdir())
    assert files_one == files_two and len(files_one) == 13  # 4 per case, the marker
    for name in files_one:
        a = (preprocessed_folder(one, cfg) / name).read_bytes()
        assert a == (preprocessed_folder(two, cfg) / name).read_bytes(), name


def test_unreadable_case_is_named_and_the_others_finish(tmp_path: Path):
    spec = spec_of(write_dataset(tmp_path / "Task99", n_cases=3))
    broken = spec.cases[1].images[0]
    broken.write_bytes(b"not a nifti file at all")
    home = tmp_path / "home" / "Task99"
    with pytest.raises(AutosegError, match=str(broken)):
        run_preprocessing(spec, plans_of(config()), ["3d_fullres"], home, 1)
    folder = preprocessed_folder(home, config())
    assert (folder / "case_000.json").is_file() and (folder / "case_002.json").is_file()
    assert not (folder / "case_001.json").exists()
    assert not [p for p in os.listdir(folder) if p.endswith(".part")]


def test_configurations_sharing_an_identifier_must_preprocess_alike(tmp_path: Path):
    spec = spec_of(write_dataset(tmp_path / "Task99", n_cases=1))
    other = config(name="2d", spacing=(2.0, 1.0, 1.0))  # same identifier, other spacing
    with pytest.raises(AutosegError, match="data identifier"):
        run_preprocessing(spec, plans_of(config(), other), ["3d_fullres", "2d"], tmp_path, 1)
