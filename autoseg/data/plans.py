"""Plans: what the planner decided, read by preprocessing, training and prediction.

Written as ``<home>/<dataset>/plans.json`` (or ``plans_<planner>.json`` for other planners).
Every field is plain data so the file stays readable and diffable; the same fingerprint and
budget always give byte-identical JSON.

Axis order everywhere is (Z, Y, X) — see ``autoseg.data.io``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autoseg.data.ignore import ignore_label, predicted_labels
from autoseg.data.regions import Region
from autoseg.errors import AutosegError
from autoseg.serial import dump_json, load_json


@dataclass(frozen=True)
class Normalization:
    """How one channel is normalised.

    Attributes:
        scheme: ``"ct"`` (clip to the dataset's foreground [0.5, 99.5] percentiles, then z-score
            with the dataset's foreground mean/std), ``"zscore"`` (per image: clip to the image's
            own [0.5, 99.5] percentiles, then z-score) or ``"none"``.
        clip_low, clip_high, mean, std: dataset-level values, used by ``"ct"`` only.
        use_nonzero_mask: per-image statistics from the nonzero region only (set when cropping to
            nonzero removed more than 25% of the median image).
    """

    scheme: str
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None
    use_nonzero_mask: bool = False


@dataclass(frozen=True)
class Configuration:
    """One trainable configuration (``2d``, ``3d_fullres``, ``3d_lowres``).

    Attributes:
        name: configuration name.
        spacing: target spacing (Z, Y, X) the data is resampled to (always 3 values; the 2d
            configuration trains on Z-slices of volumes at this spacing).
        patch_size: network input size, 2 values (Y, X) for 2d, 3 values (Z, Y, X) for 3d.
        batch_size: samples per iteration.
        strides: per stage, the downsampling stride per axis; the first stage is all ones.
        kernel_sizes: per stage, the convolution kernel per axis (3, or 1 on a thick axis).
        features_per_stage: feature channels per encoder stage.
        normalization: one entry per input channel.
        network: registered architecture name (``"unet"`` or ``"resenc"``).
        blocks_per_stage: convolution blocks per encoder stage (2 for the plain U-Net, more for
            residual encoders); the decoder uses 2 per stage.
        median_shape: median (Z, Y, X) shape of the cases after cropping and resampling.
        data_identifier: name of the preprocessed-data folder; configurations sharing a spacing
            share the preprocessed data.
        anisotropic_axis: index of the thick axis resampled with order 0, or None.
        batch_dice: compute the Dice loss over the whole batch instead of per sample.
        previous_stage: for a cascade's second stage, the configuration it builds on.
        estimated_memory_gb: the planner's activation-memory estimate for this batch and patch.
        augmentations: optional training augmentations on top of nnU-Net's (``elastic``), a
            planner setting; ``autoseg train --augment`` adds to them.
    """

    name: str
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    features_per_stage: tuple[int, ...]
    normalization: tuple[Normalization, ...]
    network: str = "unet"
    blocks_per_stage: tuple[int, ...] = ()
    median_shape: tuple[int, ...] = ()
    data_identifier: str = ""
    anisotropic_axis: int | None = None
    batch_dice: bool = False
    previous_stage: str | None = None
    estimated_memory_gb: float = 0.0
    augmentations: tuple[str, ...] = ()

    @property
    def ndim(self) -> int:
        """2 or 3: the network's spatial dimensionality."""
        return len(self.patch_size)

    @property
    def num_stages(self) -> int:
        return len(self.strides)

    def total_stride(self) -> tuple[int, ...]:
        """Product of the strides per axis (the patch is a multiple of it)."""
        total = [1] * self.ndim
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride, strict=True)]
        return tuple(total)


@dataclass(frozen=True)
class Plans:
    """Everything the planner decided for one dataset.

    Attributes:
        dataset_name: the dataset folder's name.
        planner: registered planner name that made these plans.
        gpu_memory_gb: the GPU memory budget planned for.
        min_feature_map: smallest feature-map edge the network pools down to (voxels).
        channels: channel (modality) names, in input order.
        labels: label value -> name, background (0) included; keys are strings in JSON.
        configurations: name -> configuration.
        regions: for a region-based dataset, its regions (one sigmoid output each), else empty.
        name: a named plan's name (``autoseg plan --name``: the planner's plans with a patch,
            batch or spacing of the user's); empty for a planner's automatic plans.
    """

    dataset_name: str
    planner: str
    gpu_memory_gb: float
    min_feature_map: int
    channels: tuple[str, ...]
    labels: dict[int, str]
    configurations: dict[str, Configuration] = field(default_factory=dict)
    regions: tuple[Region, ...] = ()
    name: str = ""

    @property
    def plans_name(self) -> str:
        """What names these plans in the home: the named plan's name, else the planner's
        (``autoseg.data.paths.DatasetDirs.plans`` and ``model_folder`` take it)."""
        return self.name or self.planner

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        """Label values the network predicts, background and the ignore label excluded."""
        return tuple(v for v in self.predicted_labels if v != 0)

    @property
    def ignore_label(self) -> int | None:
        """The value of the label named ``ignore`` (sparse annotation), or None."""
        return ignore_label(self.labels)

    @property
    def predicted_labels(self) -> tuple[int, ...]:
        """Label values of the network's classes, in class order (background first)."""
        return predicted_labels(self.labels)

    @property
    def num_classes(self) -> int:
        """The network's outputs: one per region, else one per class (background included,
        the ignore label excluded)."""
        return len(self.regions) if self.regions else len(self.predicted_labels)

    @property
    def output_names(self) -> tuple[str, ...]:
        """What the pseudo-Dice and the evaluation score: region names, else foreground labels."""
        if self.regions:
            return tuple(r.name for r in self.regions)
        return tuple(self.labels[v] for v in self.foreground_labels)

    def configuration(self, name: str) -> Configuration:
        """The named configuration; raises AutosegError listing the planned ones."""
        if name not in self.configurations:
            raise AutosegError(
                f"configuration '{name}' is not planned for {self.dataset_name}; "
                f"planned: {', '.join(sorted(self.configurations))}"
            )
        return self.configurations[name]

    def to_json(self, path: str | Path) -> None:
        dump_json(self, path)

    @classmethod
    def from_json(cls, path: str | Path) -> Plans:
        """Read plans, refusing any that no planner could have made (see ``check_plans``).

        Raises:
            InvalidJsonFile: not JSON, or not plans; AutosegError: absurd values.
        """
        plans = load_json(cls, path)
        check_plans(plans, path)
        return plans


# Limits far beyond anything a planner makes; a plans.json outside them is damaged or crafted,
# and building its network could exhaust memory before any other check runs.
MAX_FEATURES = 4096
MAX_STAGES = 12
MAX_PATCH_VOXELS = 2**26
MAX_BATCH = 4096
MAX_LABELS = 256


def check_plans(plans: Plans, path: str | Path) -> None:
    """Refuse plans with values no planner makes (sizes, counts, spacings).

    Raises:
        AutosegError: naming the file, the configuration and the value.
    """
    import math

    from autoseg.errors import AutosegError

    def bad(what: str) -> AutosegError:
        return AutosegError(f"{path}: not valid autoseg plans ({what}); plan the dataset again")

    if not plans.channels:
        raise bad("no channels")
    if sorted(plans.labels) != list(range(len(plans.labels))) or len(plans.labels) < 2:
        raise bad(f"labels must be 0..N-1 with N >= 2, got {sorted(plans.labels)[:10]}")
    if len(plans.labels) > MAX_LABELS:
        raise bad(f"{len(plans.labels)} labels, at most {MAX_LABELS}")
    for name, c in plans.configurations.items():
        where = f"configuration '{name}'"
        stages = len(c.strides)
        if not 1 <= stages <= MAX_STAGES:
            raise bad(f"{where}: {stages} stages, expected 1..{MAX_STAGES}")
        if len(c.kernel_sizes) != stages or len(c.features_per_stage) != stages:
            raise bad(f"{where}: strides, kernel_sizes and features_per_stage differ in length")
        if c.blocks_per_stage and len(c.blocks_per_stage) != stages:
            raise bad(f"{where}: blocks_per_stage has {len(c.blocks_per_stage)} entries")
        if not all(1 <= f <= MAX_FEATURES for f in c.features_per_stage):
            raise bad(f"{where}: features_per_stage {c.features_per_stage}, each 1..{MAX_FEATURES}")
        if not all(1 <= b <= 64 for b in c.blocks_per_stage):
            raise bad(f"{where}: blocks_per_stage {c.blocks_per_stage}, each 1..64")
        if len(c.patch_size) not in (2, 3) or not all(p >= 1 for p in c.patch_size):
            raise bad(f"{where}: patch_size {c.patch_size}")
        if math.prod(c.patch_size) > MAX_PATCH_VOXELS:
            raise bad(f"{where}: patch_size {c.patch_size} is larger than {MAX_PATCH_VOXELS:,}")
        if not 1 <= c.batch_size <= MAX_BATCH:
            raise bad(f"{where}: batch_size {c.batch_size}, expected 1..{MAX_BATCH}")
        for per_axis in (*c.strides, *c.kernel_sizes):
            if len(per_axis) != c.ndim or not all(1 <= v <= 16 for v in per_axis):
                raise bad(f"{where}: strides/kernel_sizes entry {per_axis}")
        if len(c.spacing) != 3 or not all(math.isfinite(s) and 0 < s < 1e4 for s in c.spacing):
            raise bad(f"{where}: spacing {c.spacing}")
        if len(c.normalization) != len(plans.channels):
            raise bad(
                f"{where}: {len(c.normalization)} normalizations, {len(plans.channels)} channels"
            )
