"""Training batches: shapes, padding, foreground oversampling, augmentation, workers."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from autoseg.data.plans import Configuration, Normalization
from autoseg.errors import AutosegError
from autoseg.preprocessing.case_store import CaseProperties
from autoseg.serial import dump_json
from autoseg.training.augment.pipeline import sample_size
from autoseg.training.loader import BatchLoader, WorkerError


def make_config(patch: tuple[int, ...], batch: int, channels: int = 1) -> Configuration:
    ndim = len(patch)
    return Configuration(
        name="2d" if ndim == 2 else "3d_fullres",
        spacing=(1.0, 1.0, 1.0),
        patch_size=patch,
        batch_size=batch,
        strides=((1,) * ndim,),
        kernel_sizes=((3,) * ndim,),
        features_per_stage=(8,),
        normalization=tuple(Normalization("zscore") for _ in range(channels)),
    )


def write_case(folder: Path, case_id: str, image: np.ndarray, seg: np.ndarray) -> None:
    """Write the documented preprocessed files: image (C, Z, Y, X), seg (Z, Y, X)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{case_id}.img.npy", image.astype(np.float32))
    np.save(folder / f"{case_id}.seg.npy", seg[None].astype(np.int8))
    rng = np.random.default_rng(1234)
    locations = {}
    for label in np.unique(seg):
        if label == 0:
            continue
        coords = np.argwhere(seg == label).astype(np.int32)
        if len(coords) > 10_000:
            coords = coords[np.sort(rng.choice(len(coords), 10_000, replace=False))]
        locations[str(int(label))] = coords
    np.savez(folder / f"{case_id}.fg.npz", **locations)
    shape = tuple(int(s) for s in seg.shape)
    props = CaseProperties(
        case_id=case_id,
        original_shape=shape,
        original_spacing=(1.0, 1.0, 1.0),
        crop_bbox=tuple((0, s) for s in shape),
        shape_after_crop=shape,
        target_spacing=(1.0, 1.0, 1.0),
        shape_after_resample=shape,
        plans_key="test",
    )
    dump_json(props, folder / f"{case_id}.json")


def blob_dataset(folder: Path, shapes: list[tuple[int, int, int]], channels: int = 1) -> list[str]:
    """Cases with an ellipsoid of label 1 and a smaller one of label 2; noisy intensities."""
    rng = np.random.default_rng(0)
    ids = []
    for i, shape in enumerate(shapes):
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
        centre = np.array(shape)[:, None, None, None] / 2
        d = (((grid - centre) / (np.array(shape)[:, None, None, None] / 4)) ** 2).sum(0)
        seg = np.where(d < 1, 1, 0)
        seg[d < 0.3] = 2
        image = np.stack([seg * (c + 1.0) + rng.normal(0, 0.3, shape) for c in range(channels)])
        write_case(folder, f"case{i}", image, seg)
        ids.append(f"case{i}")
    return ids


def coordinate_case(folder: Path, shape: tuple[int, int, int]) -> None:
    """Image value encodes the voxel (z*1e4 + y*1e2 + x + 1); label = (z + y + x) % 3."""
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    image = (z * 10_000 + y * 100 + x + 1)[None].astype(np.float32)
    write_case(folder, "coords", image, (z + y + x) % 3)


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging."""

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def batches_equal(a: dict, b: dict) -> bool:
    return np.array_equal(a["image"], b["image"]) and np.array_equal(a["target"], b["target"])


@pytest.mark.parametrize("augment", [False, True])
def test_shapes_and_dtypes_3d_with_padding(tmp_path: Path, augment: bool) -> None:
    ids = blob_dataset(tmp_path, [(20, 26, 22), (6, 9, 7)], channels=2)  # second < patch
    with BatchLoader(tmp_path, ids, make_config((12, 16, 10), 3, 2), seed=0, augment=augment) as bl:
        for _ in range(3):
            batch = next(bl)
            assert batch["image"].shape == (3, 2, 12, 16, 10)
            assert batch["image"].dtype == np.float32
            assert batch["target"].shape == (3, 1, 12, 16, 10)
            assert batch["target"].dtype == np.int16
            assert np.isfinite(batch["image"]).all()


@pytest.mark.parametrize("augment", [False, True])
def test_shapes_and_dtypes_2d(tmp_path: Path, augment: bool) -> None:
    ids = blob_dataset(tmp_path, [(5, 30, 9), (3, 12, 40)])  # X or Y smaller than the patch
    with BatchLoader(tmp_path, ids, make_config((16, 14), 4), seed=1, augment=augment) as bl:
        batch = next(bl)
    assert batch["image"].shape == (4, 1, 16, 14)
    assert batch["target"].shape == (4, 1, 16, 14)
    assert (batch["image"].dtype, batch["target"].dtype) == (np.float32, np.int16)


def test_plain_crops_are_windows_of_the_case(tmp_path: Path) -> None:
    coordinate_case(tmp_path, (14, 20, 11))  # X shorter than the patch: centred, zero padded
    config = make_config((8, 9, 15), 4)
    with BatchLoader(tmp_path, ["coords"], config, seed=3, augment=False) as bl:
        batches = [next(bl) for _ in range(5)]
    starts = set()
    for batch in batches:
        for image, target in zip(batch["image"][:, 0], batch["target"][:, 0], strict=True):
            # X: 11 voxels centred in 15 -> columns 2..12 hold data, the rest is padding.
            assert (image[..., :2] == 0).all() and (image[..., 13:] == 0).all()
            assert (target[..., :2] == 0).all() and (target[..., 13:] == 0).all()
            first = int(image[0, 0, 2]) - 1
            z0, y0, x0 = first // 10_000, first // 100 % 100, first % 100
            assert x0 == 0
            z, y, x = np.meshgrid(
                np.arange(z0, z0 + 8), np.arange(y0, y0 + 9), np.arange(11), indexing="ij"
            )
            np.testing.assert_array_equal(image[..., 2:13], z * 10_000 + y * 100 + x + 1)
            np.testing.assert_array_equal(target[..., 2:13], (z + y + x) % 3)
            assert 0 <= z0 <= 14 - 8 and 0 <= y0 <= 20 - 9
            starts.add((z0, y0))
    assert len(starts) > 5  # positions vary


def test_plain_2d_slices_are_windows_of_the_case(tmp_path: Path) -> None:
    coordinate_case(tmp_path, (6, 20, 17))
    with BatchLoader(tmp_path, ["coords"], make_config((8, 17), 5), seed=4, augment=False) as bl:
        batch = next(bl)
    for image, target in zip(batch["image"][:, 0], batch["target"][:, 0], strict=True):
        first = int(image[0, 0]) - 1
        z0, y0, x0 = first // 10_000, first // 100 % 100, first % 100
        assert x0 == 0 and 0 <= y0 <= 12
        y, x = np.meshgrid(np.arange(y0, y0 + 8), np.arange(17), indexing="ij")
        np.testing.assert_array_equal(image, z0 * 10_000 + y * 100 + x + 1)
        np.testing.assert_array_equal(target, (z0 + y + x) % 3)


def tiny_blob_dataset(folder: Path, shape: tuple[int, int, int]) -> list[str]:
    ids = []
    rng = np.random.default_rng(5)
    for i in range(3):
        seg = np.zeros(shape, dtype=np.int8)
        corner = [int(rng.integers(0, s - 2)) for s in shape]
        seg[tuple(slice(c, c + 2) for c in corner)] = 1 + i % 2
        image = rng.normal(size=(1, *shape))
        write_case(folder, f"tiny{i}", image, seg)
        ids.append(f"tiny{i}")
    return ids


@pytest.mark.parametrize("patch", [(10, 10, 10), (12, 12)])
def test_forced_foreground(tmp_path: Path, patch: tuple[int, ...]) -> None:
    ids = tiny_blob_dataset(tmp_path, (36, 36, 36))
    batch_size = 6
    forced = round(batch_size / 3)

    def foreground_per_sample(fraction: float) -> np.ndarray:
        config = make_config(patch, batch_size)
        loader = BatchLoader(
            tmp_path, ids, config, seed=7, augment=False, oversample_foreground=fraction
        )
        with loader:
            return np.array(
                [
                    (next(loader)["target"] > 0).any(axis=tuple(range(1, len(patch) + 2)))
                    for _ in range(40)
                ]
            )  # (batches, B)

    with_fg = foreground_per_sample(1 / 3)
    assert with_fg[:, -forced:].all()  # the last round(B/3) samples always hold foreground
    assert (with_fg.sum(1) >= forced).all()
    without = foreground_per_sample(0.0)
    assert without.mean() < 0.5 * with_fg.mean()
    assert without.mean() < 0.2


def test_batch_size_one_is_forced_with_the_given_probability(tmp_path: Path) -> None:
    ids = tiny_blob_dataset(tmp_path, (30, 30, 30))
    config = make_config((8, 8, 8), 1)
    with BatchLoader(tmp_path, ids, config, seed=2, augment=False) as bl:
        hits = np.mean([(next(bl)["target"] > 0).any() for _ in range(150)])
    assert 0.2 < hits < 0.55


def test_augmented_labels_stay_in_the_label_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shape = (18, 22, 20)
    seg = np.zeros(shape, dtype=np.int8)
    seg[3:12, 4:15, 5:16] = 1
    seg[8:16, 10:20, 2:9] = 3
    write_case(tmp_path, "a", rng.normal(size=(1, *shape)) + seg, seg)
    seen = set()
    with BatchLoader(tmp_path, ["a"], make_config((12, 14, 12), 4), seed=11) as bl:
        for _ in range(12):
            seen |= set(np.unique(next(bl)["target"]).tolist())
    assert seen <= {0, 1, 3}
    assert {1, 3} <= seen


def test_augmentation_transforms_image_and_label_together(tmp_path: Path) -> None:
    # A case smaller than the patch is always centred: without augmentation every sample is
    # identical; with it mirroring/rotation move the label, and the image follows it.
    shape = (8, 10, 6)
    seg = np.zeros(shape, dtype=np.int8)
    seg[1:4, 1:6, 1:3] = 1
    write_case(tmp_path, "s", (seg * 5.0 + 1.0)[None], seg)
    config = make_config((12, 14, 10), 4)
    with BatchLoader(tmp_path, ["s"], config, seed=5, augment=False) as bl:
        plain = next(bl)
    assert all(np.array_equal(plain["target"][0], t) for t in plain["target"])
    with BatchLoader(tmp_path, ["s"], config, seed=5, augment=True) as bl:
        augmented = [next(bl) for _ in range(4)]
    targets = np.concatenate([b["target"] for b in augmented])
    assert sum(not np.array_equal(plain["target"][0], t) for t in targets) >= 4
    for batch in augmented:
        for image, target in zip(batch["image"], batch["target"], strict=True):
            inside, outside = image[target > 0], image[target == 0]
            # contrast/gamma change values but not which region is brighter, except inverted
            # gamma; mean intensities inside vs outside stay clearly separated
            assert abs(inside.mean() - outside.mean()) > 0.5


def test_same_seed_same_batches_in_process(tmp_path: Path) -> None:
    ids = blob_dataset(tmp_path, [(16, 18, 14), (12, 20, 16)])
    config = make_config((10, 12, 10), 3)
    a = BatchLoader(tmp_path, ids, config, seed=42)
    b = BatchLoader(tmp_path, ids, config, seed=42)
    c = BatchLoader(tmp_path, ids, config, seed=43)
    for _ in range(4):
        np.random.seed(0)  # the global state others use neither affects nor is affected
        batch_a = next(a)
        np.random.rand(10)
        batch_b = next(b)
        assert batches_equal(batch_a, batch_b)
        assert not batches_equal(batch_a, next(c))


def test_workers_are_deterministic_and_match_in_process(tmp_path: Path) -> None:
    ids = blob_dataset(tmp_path, [(16, 18, 14), (12, 20, 16)])
    config = make_config((10, 12, 10), 2)
    with deadline(60):
        with BatchLoader(tmp_path, ids, config, seed=9, num_workers=2) as w1:
            first = [next(w1) for _ in range(4)]
        with BatchLoader(tmp_path, ids, config, seed=9, num_workers=2) as w2:
            second = [next(w2) for _ in range(4)]
        with BatchLoader(tmp_path, ids, config, seed=9, num_workers=1) as w3:
            one_worker = next(w3)
    assert all(batches_equal(x, y) for x, y in zip(first, second, strict=True))
    assert not batches_equal(first[0], first[1])  # the two workers draw differently
    with BatchLoader(tmp_path, ids, config, seed=9, num_workers=0) as inproc:
        assert batches_equal(next(inproc), one_worker)


def test_close_and_garbage_collection_end_the_workers(tmp_path: Path) -> None:
    ids = blob_dataset(tmp_path, [(16, 18, 14)])
    config = make_config((10, 12, 10), 2)
    before = set(mp.active_children())
    with deadline(30):
        loader = BatchLoader(tmp_path, ids, config, seed=0, num_workers=2)
        next(loader)
        workers = set(mp.active_children()) - before
        assert len(workers) == 2
        start = time.monotonic()
        loader.close()
        assert time.monotonic() - start < 5
        assert not any(p.is_alive() for p in workers)
        with pytest.raises(RuntimeError):
            next(loader)

        loader = BatchLoader(tmp_path, ids, config, seed=0, num_workers=2)
        workers = set(mp.active_children()) - before
        next(loader)
        del loader
        gc.collect()
        assert not any(p.is_alive() for p in workers)


def test_worker_error_is_raised_in_the_main_process(tmp_path: Path) -> None:
    ids = blob_dataset(tmp_path, [(16, 18, 14)])
    (tmp_path / "case0.img.npy").write_bytes(b"not a numpy file")
    config = make_config((10, 12, 10), 2)
    before = set(mp.active_children())
    with deadline(30):
        loader = BatchLoader(tmp_path, ids, config, seed=0, num_workers=2)
        with pytest.raises(AutosegError, match="damaged") as info:
            next(loader)
    assert isinstance(info.value.__cause__, WorkerError)
    assert "Traceback" in str(info.value.__cause__)
    assert not any(p.is_alive() for p in set(mp.active_children()) - before)


def test_a_killed_worker_is_reported(tmp_path: Path) -> None:
    ids = blob_dataset(tmp_path, [(16, 18, 14)])
    config = make_config((10, 12, 10), 2)
    before = set(mp.active_children())
    with deadline(30):
        loader = BatchLoader(tmp_path, ids, config, seed=0, num_workers=1)
        (worker,) = set(mp.active_children()) - before
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(5)
        with pytest.raises(WorkerError, match="exited unexpectedly"):
            for _ in range(10):  # up to two batches may already be buffered
                next(loader)


def test_missing_cases_are_a_user_error(tmp_path: Path) -> None:
    ids = blob_dataset(tmp_path, [(16, 18, 14)])
    with pytest.raises(AutosegError, match="not preprocessed"):
        BatchLoader(tmp_path, [*ids, "ghost"], make_config((8, 8, 8), 2), seed=0)
    with pytest.raises(AutosegError, match="no training cases"):
        BatchLoader(tmp_path, [], make_config((8, 8, 8), 2), seed=0)


@pytest.mark.parametrize("patch", [(40, 56, 40), (56, 40), (24, 160, 128)])
def test_sample_size_holds_the_rotated_and_zoomed_patch(patch: tuple[int, ...]) -> None:
    region = np.array(sample_size(patch, augment=True))
    patch_arr = np.array(patch)
    assert (region >= patch_arr).all() and ((region - patch_arr) % 2 == 0).all()
    if len(patch) == 2:  # any in-plane angle: the diagonal, times the largest zoom-out
        assert (region >= 1.4 * np.hypot(*patch)).all()
    else:  # 30 degrees about one axis alone already needs this much
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        for a in range(3):
            others = [patch[b] for b in range(3) if b != a]
            assert region[a] >= 1.4 * (patch[a] * c + max(others) * s) - 1
    assert sample_size(patch, augment=False) == patch
