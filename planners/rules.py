"""Pure planning arithmetic: spacing, patch, network topology, memory and batch size.

Nothing here reads files, imports torch or looks at the environment; the same fingerprint and
budget always give equal plans (floats are rounded: spacings to 6 decimals, memory to 3).
Axis order is (Z, Y, X) everywhere; 2D networks work on (Y, X).

Rules (nnU-Net v2's, as its paper and code describe them; see docs/pipeline.md):

* Target spacing: per-axis median of the case spacings. If the coarsest axis is > 3x the finest
  other one and its median size x3 < the smallest other median size, that axis takes the 10th
  percentile of its spacings instead, never below the largest other target spacing.
* Initial patch: 256^3 voxels (2048^2 in 2D) shaped like 1/spacing, clipped to the median shape
  after resampling. If nothing could be pooled (tiny images), the finest axes are grown to
  2 x ``min_feature_map`` so the network has at least two stages (the patch is then larger than
  the image and training pads it).
* Topology (:func:`derive_topology`): per stage, pool every axis whose feature map stays
  >= ``min_feature_map`` and whose current spacing is < 2x the finest current spacing among the
  axes the size still allows to pool; conv kernel 3 on axes within 2x of the finest current
  spacing (once 3, always 3), else 1; the bottleneck has kernel 3 on all axes (as nnU-Net).
  At most 7 stages in 3D, 8 in 2D. The patch is then rounded *up* to a multiple of the total
  stride: every pooled axis keeps >= ``min_feature_map`` (m) voxels at the bottleneck, so
  rounding up adds less than 1/(m - 1) of the axis (1/7 for m = 8) and is always preferred
  (one sliding-window tile still covers a median image).
* Memory: while batch 2 does not fit, shrink the axis with the largest patch / median-shape
  ratio by its pooling multiple and re-derive the topology (no axis ever grows, so a larger
  budget never gives a smaller patch). Batch = as many as fit, at least 2, at most
  round(5% of the dataset's voxels after resampling / patch voxels), not below 2 (the voxels
  are summed over the cases; nnU-Net multiplies the median image by the case count).

Memory model (bytes), for batch B, stages s = 0..S-1 with v_s voxels per sample and f_s
features, C input channels, K classes (background included), P parameters::

    M(B) = M0 + 16 P + B * b * ( C v_0
                                 + sum_s      v_s f_s n_s (2 c + r)          # encoder
                                 + sum_{s<S-1} v_s (f_s (2 d + 3) + 2 K) )   # decoder

n_s encoder blocks of c convolutions (plain U-Net: blocks of 1 conv; residual encoder: blocks of
2 convs plus the residual sum, r = 1); each convolution keeps its output and its normalised
output for backward (2 tensors; the nonlinearity is in place). A decoder stage keeps the
transposed-convolution output and the concatenation (3 f_s), d = 2 convolutions and its
deep-supervision logits and softmax (2 K). b = 3.5 bytes per stored value: 2 bytes for fp16
(autocast) plus 75% for the gradient buffers alive during backward, cuDNN workspaces and
allocator slack. 16 bytes per parameter: fp32 weight, gradient and SGD momentum plus the fp16
copies autocast makes. M0 = 0.5 GiB for the CUDA context. b and M0 are calibrated so that at
8 GiB the plans land near nnU-Net's (128^3 with batch 2 for isotropic CT; Hippocampus
36x52x36 whose batch is set by the 5% rule, as nnU-Net's 40x56x40 batch 7 is).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

GIB = 2**30
FIXED_OVERHEAD_BYTES = 0.5 * GIB
BYTES_PER_VALUE = 3.5
BYTES_PER_PARAMETER = 16
ANISOTROPY_RATIO = 3.0
PATCH_EDGE_3D = 256
PATCH_EDGE_2D = 2048
MIN_STAGES = 2


@dataclass(frozen=True)
class PlannerSettings:
    """What distinguishes one planner family from another; the rules are shared.

    Attributes:
        name: registered planner name, written to ``Plans.planner``.
        network: registered architecture name, written to ``Configuration.network``.
        encoder_blocks: blocks per encoder stage; the last value repeats for deeper networks.
        convs_per_block: convolutions in one encoder block (1 plain, 2 residual).
        extra_tensors_per_block: activations a block keeps besides its convolutions' (the
            residual sum: 1).
        decoder_convs: convolutions per decoder stage.
        base_features: features of the first stage, doubled per stage up to the caps.
        max_features_3d, max_features_2d: feature caps.
        max_stages_3d, max_stages_2d: most stages (pooling operations + 1).
        min_batch: smallest batch size.
        max_dataset_fraction: a batch covers at most this fraction of the dataset's voxels.
        lowres_threshold: plan 3d_lowres when the 3d_fullres patch covers less than this
            fraction of the median image.
        lowres_step: spacing factor per step while searching the 3d_lowres spacing.
        augmentations: optional training augmentations written to every configuration
            (``elastic``).
    """

    name: str
    network: str
    encoder_blocks: tuple[int, ...] = (2,)
    convs_per_block: int = 1
    extra_tensors_per_block: int = 0
    decoder_convs: int = 2
    base_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    max_stages_3d: int = 7
    max_stages_2d: int = 8
    min_batch: int = 2
    max_dataset_fraction: float = 0.05
    lowres_threshold: float = 0.25
    lowres_step: float = 1.03
    augmentations: tuple[str, ...] = ()

    def blocks_per_stage(self, num_stages: int) -> tuple[int, ...]:
        """Encoder blocks for each of ``num_stages`` stages."""
        last = len(self.encoder_blocks) - 1
        return tuple(self.encoder_blocks[min(i, last)] for i in range(num_stages))

    def features_per_stage(self, num_stages: int, ndim: int) -> tuple[int, ...]:
        """Feature channels per stage: base doubling per stage, capped (320 3D, 512 2D)."""
        cap = self.max_features_3d if ndim == 3 else self.max_features_2d
        return tuple(min(cap, self.base_features * 2**i) for i in range(num_stages))

    def max_stages(self, ndim: int) -> int:
        """Most stages for a ``ndim``-dimensional network."""
        return self.max_stages_3d if ndim == 3 else self.max_stages_2d


@dataclass(frozen=True)
class Topology:
    """A U-Net's shape for one patch size.

    Attributes:
        patch_size: the patch, a multiple of the total stride per axis.
        strides: per stage, the pooling per axis; the first stage is all ones.
        kernel_sizes: per stage, the convolution kernel per axis.
    """

    patch_size: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]

    @property
    def num_stages(self) -> int:
        return len(self.strides)

    def total_stride(self) -> tuple[int, ...]:
        """Product of the strides per axis."""
        return tuple(math.prod(s[a] for s in self.strides) for a in range(len(self.patch_size)))

    def stage_shapes(self) -> list[tuple[int, ...]]:
        """Feature-map shape at every stage, from full resolution to the bottleneck."""
        shapes, current = [], self.patch_size
        for stride in self.strides:
            current = tuple(c // s for c, s in zip(current, stride, strict=True))
            shapes.append(current)
        return shapes


# --- spacing and shapes -------------------------------------------------------------------


def round_spacing(spacing: np.ndarray | tuple[float, ...]) -> tuple[float, ...]:
    """Spacing as Python floats rounded to 6 decimals (deterministic JSON)."""
    return tuple(round(float(s), 6) for s in spacing)


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[float, ...]:
    """Per-axis median spacing, with the 10th-percentile rule for one thick axis.

    Args:
        spacings: (N, 3) case spacings in mm.
        shapes: (N, 3) case shapes after cropping, in voxels.
    """
    target = np.median(spacings, axis=0)
    median_size = np.median(shapes, axis=0)
    thick = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != thick]
    if target[thick] > ANISOTROPY_RATIO * min(target[a] for a in others) and median_size[
        thick
    ] * ANISOTROPY_RATIO < min(median_size[a] for a in others):
        low = float(np.percentile(spacings[:, thick], 10))
        target[thick] = max(low, max(target[a] for a in others))
    return round_spacing(target)


def anisotropic_axis(spacing: tuple[float, ...]) -> int | None:
    """The thick axis when max / min spacing > 3, else None."""
    if max(spacing) > ANISOTROPY_RATIO * min(spacing):
        return int(np.argmax(spacing))
    return None


def resampled_shapes(
    spacings: np.ndarray, shapes: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """(N, 3) case shapes after resampling to ``spacing`` (rounded, at least 1)."""
    return np.maximum(np.rint(shapes * spacings / np.asarray(spacing)), 1)


def median_shape(new_shapes: np.ndarray) -> tuple[int, ...]:
    """Per-axis median of resampled case shapes, rounded."""
    return tuple(max(1, int(round(float(m)))) for m in np.median(new_shapes, axis=0))


# --- topology -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def derive_topology(
    spacing: tuple[float, ...], patch: tuple[int, ...], min_feature_map: int, max_stages: int
) -> Topology:
    """Pooling and kernels for ``patch`` at ``spacing``; the patch is rounded up to the stride.

    Args:
        spacing: target spacing per axis (2 or 3 values).
        patch: requested patch size per axis.
        min_feature_map: an axis is pooled only while its feature map stays >= this.
        max_stages: most stages (pooling operations + 1).
    """
    ndim = len(spacing)
    cur_spacing = list(spacing)
    cur_size = list(patch)
    kernel = [1] * ndim
    strides: list[tuple[int, ...]] = [(1,) * ndim]
    kernels: list[tuple[int, ...]] = []
    while len(strides) < max_stages:
        by_size = [a for a in range(ndim) if cur_size[a] >= 2 * min_feature_map]
        if not by_size:
            break
        finest = min(cur_spacing[a] for a in by_size)
        pooled = [a for a in by_size if cur_spacing[a] < 2 * finest]
        overall_finest = min(cur_spacing)
        for a in range(ndim):
            if cur_spacing[a] < 2 * overall_finest:
                kernel[a] = 3
        kernels.append(tuple(kernel))
        strides.append(tuple(2 if a in pooled else 1 for a in range(ndim)))
        for a in pooled:
            cur_spacing[a] *= 2
            cur_size[a] = -(-cur_size[a] // 2)
    kernels.append((3,) * ndim)  # bottleneck
    total = [math.prod(s[a] for s in strides) for a in range(ndim)]
    rounded = tuple(-(-p // t) * t for p, t in zip(patch, total, strict=True))
    return Topology(rounded, tuple(strides), tuple(kernels))


def initial_topology(
    spacing: tuple[float, ...],
    median: tuple[int, ...],
    min_feature_map: int,
    max_stages: int,
) -> Topology:
    """The largest patch considered: 256^3 (3D) or 2048^2 (2D) voxels, aspect 1/spacing."""
    ndim = len(spacing)
    edge = PATCH_EDGE_3D if ndim == 3 else PATCH_EDGE_2D
    inverse = 1.0 / np.asarray(spacing, dtype=np.float64)
    scale = (edge**ndim / float(np.prod(inverse))) ** (1.0 / ndim)
    patch = [
        max(1, min(int(round(float(i * scale))), m)) for i, m in zip(inverse, median, strict=True)
    ]
    topo = derive_topology(spacing, tuple(patch), min_feature_map, max_stages)
    if topo.num_stages < MIN_STAGES:  # tiny images: grow the finest axes so one pooling fits
        finest = min(spacing)
        patch = [
            max(p, 2 * min_feature_map) if s < 2 * finest else p
            for p, s in zip(patch, spacing, strict=True)
        ]
        topo = derive_topology(spacing, tuple(patch), min_feature_map, max_stages)
    return topo


def shrink_step(
    spacing: tuple[float, ...],
    topo: Topology,
    median: tuple[int, ...],
    min_feature_map: int,
    max_stages: int,
) -> Topology | None:
    """The next smaller topology, or None when no axis can shrink.

    The axis with the largest patch / median-shape ratio loses its pooling multiple (re-derived
    at the reduced size, so valid sizes are not skipped); an axis never goes below
    ``min_feature_map``, no axis grows and the network keeps at least two stages.
    """
    patch = topo.patch_size
    order = sorted(range(len(patch)), key=lambda a: (-patch[a] / median[a], a))
    for axis in order:
        trial = list(patch)
        trial[axis] = max(1, patch[axis] - topo.total_stride()[axis])
        step = derive_topology(spacing, tuple(trial), min_feature_map, max_stages)
        candidate = patch[axis] - step.total_stride()[axis]
        while candidate >= min_feature_map:
            trial[axis] = candidate
            new = derive_topology(spacing, tuple(trial), min_feature_map, max_stages)
            if (
                new.num_stages >= MIN_STAGES
                and new.patch_size != patch
                and all(n <= o for n, o in zip(new.patch_size, patch, strict=True))
            ):
                return new
            candidate -= 1
    return None


# --- memory and batch ---------------------------------------------------------------------


def parameter_count(
    topo: Topology, settings: PlannerSettings, in_channels: int, num_classes: int
) -> int:
    """Convolution weights of the U-Net (encoder, transposed convs, decoder, heads)."""
    features = settings.features_per_stage(topo.num_stages, len(topo.patch_size))
    blocks = settings.blocks_per_stage(topo.num_stages)
    total, previous = 0, in_channels
    for s, f in enumerate(features):
        k = math.prod(topo.kernel_sizes[s])
        convs = blocks[s] * settings.convs_per_block
        total += k * previous * f + (convs - 1) * k * f * f
        previous = f
    for s in range(topo.num_stages - 1):
        f, k = features[s], math.prod(topo.kernel_sizes[s])
        total += math.prod(topo.strides[s + 1]) * features[s + 1] * f  # transposed conv
        total += k * 2 * f * f + (settings.decoder_convs - 1) * k * f * f + f * num_classes
    return total


def activation_values(
    topo: Topology, settings: PlannerSettings, in_channels: int, num_classes: int
) -> int:
    """Values kept for backward for one sample (see the module docstring)."""
    features = settings.features_per_stage(topo.num_stages, len(topo.patch_size))
    blocks = settings.blocks_per_stage(topo.num_stages)
    per_block = 2 * settings.convs_per_block + settings.extra_tensors_per_block
    shapes = topo.stage_shapes()
    total = in_channels * math.prod(shapes[0])
    for s, (shape, f) in enumerate(zip(shapes, features, strict=True)):
        voxels = math.prod(shape)
        total += voxels * f * blocks[s] * per_block
        if s < topo.num_stages - 1:
            total += voxels * (f * (2 * settings.decoder_convs + 3) + 2 * num_classes)
    return total


def estimate_memory(
    topo: Topology, settings: PlannerSettings, in_channels: int, num_classes: int, batch: int
) -> float:
    """Estimated training memory in bytes for ``batch`` samples of ``topo.patch_size``."""
    fixed = FIXED_OVERHEAD_BYTES + BYTES_PER_PARAMETER * parameter_count(
        topo, settings, in_channels, num_classes
    )
    return fixed + batch * BYTES_PER_VALUE * activation_values(
        topo, settings, in_channels, num_classes
    )


@dataclass(frozen=True)
class PlannedNetwork:
    """A configuration's network and training-batch decision."""

    topology: Topology
    features: tuple[int, ...]
    batch_size: int
    memory_bytes: float


def plan_network(
    spacing: tuple[float, ...],
    median: tuple[int, ...],
    dataset_voxels: float,
    settings: PlannerSettings,
    budget_gb: float,
    min_feature_map: int,
    in_channels: int,
    num_classes: int,
) -> PlannedNetwork:
    """Patch, topology and batch size for one configuration (2D or 3D by ``len(spacing)``).

    Args:
        spacing: target spacing of the network's axes.
        median: median shape after resampling, the same axes.
        dataset_voxels: sum of the cases' voxels after resampling (for the 5% rule).
        settings: the planner family.
        budget_gb: GPU memory in GiB.
        min_feature_map: smallest feature-map edge.
        in_channels, num_classes: network input channels and output classes.
    """
    ndim = len(spacing)
    max_stages = settings.max_stages(ndim)
    budget = budget_gb * GIB

    def memory(t: Topology, batch: int) -> float:
        return estimate_memory(t, settings, in_channels, num_classes, batch)

    topo = initial_topology(spacing, median, min_feature_map, max_stages)
    while memory(topo, settings.min_batch) > budget:
        smaller = shrink_step(spacing, topo, median, min_feature_map, max_stages)
        if smaller is None:
            break
        topo = smaller
    per_sample = memory(topo, 1) - memory(topo, 0)
    fit = int((budget - memory(topo, 0)) // per_sample)
    cap = round(settings.max_dataset_fraction * dataset_voxels / math.prod(topo.patch_size))
    batch = max(settings.min_batch, min(fit, cap))
    features = settings.features_per_stage(topo.num_stages, ndim)
    return PlannedNetwork(topo, features, batch, memory(topo, batch))


def next_lowres_spacing(spacing: tuple[float, ...], step: float) -> tuple[float, ...]:
    """One step coarser: only axes > 2x finer than the coarsest grow, else all axes grow."""
    arr = np.asarray(spacing, dtype=np.float64)
    fine = arr.max() / arr > 2
    arr = np.where(fine, arr * step, arr) if fine.any() else arr * step
    return round_spacing(arr)
