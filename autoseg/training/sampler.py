"""Patch sampling for training: which cases, which patches, and their augmentation on the CPU.

``PatchSampler`` draws one batch at a time (in the trainer's process or in a ``BatchLoader``
worker, ``autoseg.training.loader``). Per batch it draws ``B`` cases at random (with replacement)
and one patch from each:

- The last ``n_fg`` samples are forced to contain foreground: a random class present in the
  case's stored class locations, a random stored voxel of it, and the patch centred there.
  ``n_fg = max(1, round(B * oversample_foreground))`` for ``B >= 2`` (0 when
  ``oversample_foreground == 0``); with ``B == 1`` the single sample is forced with probability
  ``oversample_foreground`` (``forced_foreground_count``). A case without foreground gets a
  random position instead.
- The others are placed uniformly at random.
- Placement is that of the *patch*: along an axis at least as long as the patch it stays inside
  the image; along a shorter axis the image is centred in it. With augmentation the region
  read around the patch is larger (``autoseg.training.augment.pipeline.sample_size``) so rotation
  and scaling find
  image data in the corners; whatever lies outside the image is 0 (image) and 0 (label)
  (``read_region``).
- 2D configurations pick a Z slice (the chosen voxel's slice for forced samples) and place the
  ``(Y, X)`` patch in it.

Cases are read through memory maps, so only the sampled region is read from disk.

Randomness comes from the seed alone: the sampler has its own generator, and the global
``np.random`` and ``random`` states that batchgenerators draws from are swapped in and out
around each batch, so two loaders (or a loader and the trainer) never disturb each other.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from autoseg.data.plans import Configuration
from autoseg.errors import AutosegError
from autoseg.preprocessing.case_store import PreprocessedCase, load_case
from autoseg.preprocessing.weightmap import load_weight_map
from autoseg.training.augment.cascade import previous_stage_channels
from autoseg.training.augment.pipeline import sample_size, training_transforms

_CACHED_CASES = 64  # open memory maps and class locations kept per sampler


def forced_foreground_count(batch_size: int, fraction: float, rng: np.random.Generator) -> int:
    """How many samples of a batch are forced to contain foreground (see module docstring)."""
    if fraction <= 0:
        return 0
    if batch_size == 1:
        return int(rng.random() < fraction)
    return min(batch_size, max(1, int(np.floor(batch_size * fraction + 0.5))))


def read_region(array: np.ndarray, start: Sequence[int], out: np.ndarray) -> np.ndarray:
    """Copy ``array[:, start:start + size]`` (per spatial axis) into a zero-filled ``out``.

    Args:
        array: ``(C, *spatial)``, typically a memory map; only the overlap is read.
        start: first voxel per spatial axis, may be negative.
        out: ``(C, *size)`` zeros; what lies outside ``array`` stays 0.

    Returns:
        ``out``.
    """
    src, dst = [slice(None)], [slice(None)]
    for first, length, extent in zip(start, out.shape[1:], array.shape[1:], strict=True):
        lo, hi = max(first, 0), min(first + length, extent)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - first, hi - first))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchSampler:
    """Draws and augments one batch at a time; lives in the main process or in a worker."""

    def __init__(
        self,
        folder: Path,
        case_ids: tuple[str, ...],
        config: Configuration,
        augment: bool,
        oversample_foreground: float,
        on_device: bool = False,
        elastic: bool = False,
        weights: bool = False,
        ignore_label: int | None = None,
        previous_stage: tuple[Path, tuple[int, ...]] | None = None,
    ) -> None:
        self.folder = folder
        self.weights = weights
        self.ignore_label = ignore_label
        self.previous_stage = previous_stage
        self.case_ids = case_ids
        self.patch = np.asarray(config.patch_size, dtype=int)
        self.batch_size = config.batch_size
        self.region = np.asarray(sample_size(config.patch_size, augment), dtype=int)
        cpu_transforms = augment and not on_device
        self.transforms = (
            training_transforms(config.patch_size, elastic) if cpu_transforms else None
        )
        # the device path gets a cascade's previous stage as labels, one-hot there
        self.defer_previous = augment and on_device
        self.oversample = oversample_foreground
        self._cases: OrderedDict[str, PreprocessedCase] = OrderedDict()
        self._weight_maps: dict[str, np.ndarray] = {}
        self.reseed(0, 0)

    def reseed(self, seed: int, worker: int) -> None:
        """Derive this sampler's generators from ``(seed, worker)``."""
        sampling, np_global, py_global, cascade = np.random.SeedSequence([seed, worker]).spawn(4)
        self.rng = np.random.default_rng(sampling)
        # autoseg.training.augment.cascade's draws
        self.cascade_rng = np.random.default_rng(cascade)
        self.np_random_state = np.random.RandomState(np_global.generate_state(1)).get_state()
        self.py_random_state = random.Random(int(py_global.generate_state(1)[0])).getstate()

    @contextmanager
    def _global_random_states(self) -> Iterator[None]:
        """Swap this sampler's states into ``np.random`` and ``random`` (batchgenerators
        draws from both) and restore the caller's afterwards."""
        outer = np.random.get_state(), random.getstate()
        np.random.set_state(self.np_random_state)
        random.setstate(self.py_random_state)
        try:
            yield
        finally:
            self.np_random_state, self.py_random_state = np.random.get_state(), random.getstate()
            np.random.set_state(outer[0])
            random.setstate(outer[1])

    def _case(self, case_id: str) -> PreprocessedCase:
        case = self._cases.pop(case_id, None)
        if case is None:
            case = load_case(self.folder, case_id, mmap=True)
        self._cases[case_id] = case
        if len(self._cases) > _CACHED_CASES:
            self._cases.popitem(last=False)
        return case

    def _foreground_voxel(self, case: PreprocessedCase) -> np.ndarray | None:
        present = sorted(
            k
            for k, v in case.class_locations.items()
            if k > 0 and k != self.ignore_label and len(v)
        )
        if not present:
            return None
        locations = case.class_locations[present[self.rng.integers(len(present))]]
        return np.asarray(locations[self.rng.integers(len(locations))], dtype=int)  # (Z, Y, X)

    def _previous(self, case_id: str, shape: tuple[int, ...]) -> np.ndarray:
        """The case's previous-stage label map ``(1, Z, Y, X)`` (memory-mapped)."""
        path = self.previous_stage[0] / f"{case_id}.npy"
        try:
            previous = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise AutosegError(f"{path}: previous-stage segmentation unreadable") from exc
        if previous.shape != tuple(shape):
            raise AutosegError(f"{path}: shape {previous.shape} differs from the case's {shape}")
        return previous

    def _patch_start(self, shape: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
        # Along axes at least as long as the patch it stays inside; shorter axes are centred.
        lo = np.where(shape >= self.patch, 0, -((self.patch - shape) // 2))
        hi = np.where(shape >= self.patch, shape - self.patch, lo)
        if centre is None:
            return self.rng.integers(lo, hi + 1)
        return np.clip(centre - self.patch // 2, lo, hi)

    def _weight_map(self, case_id: str) -> np.ndarray:
        if case_id not in self._weight_maps:
            if len(self._weight_maps) > _CACHED_CASES:
                self._weight_maps.clear()
            self._weight_maps[case_id] = load_weight_map(self.folder, case_id)
        return self._weight_maps[case_id]

    def _sample(
        self, case_id: str, forced: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The case's image, label and (``weights``) border weight map, a Z slice of them in
        2D, and where the region starts."""
        case = self._case(case_id)
        image, seg = case.image, case.seg  # (C, Z, Y, X), (1, Z, Y, X)
        if seg is None:
            raise AutosegError(f"{self.folder}: case '{case_id}' has no label map to train on")
        weight = self._weight_map(case_id) if self.weights else None  # (1, Z, Y, X)
        voxel = self._foreground_voxel(case) if forced else None
        if len(self.patch) == 2:
            z = int(voxel[0]) if voxel is not None else int(self.rng.integers(image.shape[1]))
            image, seg = image[:, z], seg[:, z]
            weight = weight[:, z] if weight is not None else None
            voxel = voxel[1:] if voxel is not None else None
        start = self._patch_start(np.asarray(image.shape[1:]), voxel)
        return image, seg, start - (self.region - self.patch) // 2, weight

    def next_batch(self) -> dict[str, np.ndarray]:
        """One batch: ``image`` (B, C, *patch) float32 and ``target`` (B, 1, *patch) int16;
        with ``weights`` also ``weight`` (B, 1, *patch) float32, the border weight map,
        transformed with the labels."""
        n_forced = forced_foreground_count(self.batch_size, self.oversample, self.rng)
        data = target = None
        for i in range(self.batch_size):
            case_id = self.case_ids[self.rng.integers(len(self.case_ids))]
            image, seg, start, weight = self._sample(case_id, self._forced(i, n_forced))
            if data is None:
                channels = image.shape[0]
                data = np.zeros((self.batch_size, channels, *self.region), np.float32)
                # label channels: the labels, then the weight map (float, resampled nearest)
                # with ``weights``, then the previous stage's labels with a cascade
                seg_channels = 1 + self.weights + (self.previous_stage is not None)
                seg_dtype = np.float32 if self.weights else np.uint8
                target = np.zeros((self.batch_size, seg_channels, *self.region), seg_dtype)
            if image.shape[0] != data.shape[1]:
                raise AutosegError(f"{self.folder}: case '{case_id}' has another channel count")
            read_region(image, start, data[i])  # (C, *region)
            read_region(seg, start, target[i, :1])  # (1, *region)
            if weight is not None:
                read_region(weight, start, target[i, 1:2])
            if self.previous_stage is not None:  # a cascade: the previous stage's labels
                read_region(self._previous(case_id, seg.shape), start, target[i, -1:])
        if self.transforms is not None:
            with self._global_random_states():
                out = self.transforms(data=data, seg=target)
            data, target = out["data"], out["seg"]
        previous = None
        if self.previous_stage is not None:  # moved with the labels; split off again
            previous, target = target[:, -1:], target[:, :-1]
        if previous is not None and not self.defer_previous:  # one-hot, perturbed in training
            rng = self.cascade_rng if self.transforms is not None else None
            onehot = previous_stage_channels(previous, self.previous_stage[1], rng)
            data = np.concatenate([data, onehot], axis=1)
        batch = {
            "image": np.ascontiguousarray(data, dtype=np.float32),
            "target": np.ascontiguousarray(target[:, :1]).astype(np.int16),
        }
        if self.weights:
            batch["weight"] = np.ascontiguousarray(target[:, 1:], dtype=np.float32)
        if previous is not None and self.defer_previous:
            batch["previous"] = np.ascontiguousarray(previous).astype(np.uint8)
        return batch

    def _forced(self, i: int, n_forced: int) -> bool:
        return i >= self.batch_size - n_forced
