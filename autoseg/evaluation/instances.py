"""Instances from semantic output: touching objects split into an instance label map.

A semantic prediction says *which class* a pixel is; microscopy users often need *which
object* (which cell). ``semantic_to_instances`` numbers the connected components (face
connectivity, 2D or 3D) of the foreground classes 1, 2, ... in raster order. When the network
was trained with a border class (the thin separating layer between touching cells, as in the
U-Net paper's data), that class separates the objects: it is left out of the components and
then handed to the nearest object, so objects get their full extent back. Components smaller
than ``min_size`` voxels are dropped (set to 0).

``objects="background"`` reads a membrane map the other way round (the ISBI 2012 EM task): the
objects are the connected components of the background (value 0, the pixels no class claims),
the cells between the membranes; the membranes stay 0 and separate them.

``instances_folder`` (``autoseg instances PREDICTIONS OUTPUT``) does it for a folder of
predicted label maps and writes each instance map in its input's format and geometry; it never
writes over its inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg.data.io import as_label_map, file_ending, read_array, write_label
from autoseg.errors import AutosegError
from autoseg.evaluation.metrics_microscopy import check_objects
from autoseg.inference.inputs import refuse_outputs_that_are_inputs
from autoseg.serial import check_output_folder, remove_temp_files

log = logging.getLogger(__name__)


def semantic_to_instances(
    labels: np.ndarray,
    foreground: Sequence[int] | None = None,
    border_label: int | None = None,
    min_size: int = 0,
    objects: str = "foreground",
) -> np.ndarray:
    """Instance label map of a semantic label map.

    Args:
        labels: ``(Y, X)`` or ``(Z, Y, X)`` integer labels, 0 = background.
        foreground: the object classes (default: every value > 0 except ``border_label``).
        border_label: the class separating touching objects, or None.
        min_size: components with fewer voxels are removed.
        objects: ``foreground`` (the classes' components) or ``background`` (the components of
            the value-0 pixels: cells between membranes; ``foreground`` and ``border_label``
            are then not used).

    Returns:
        int32 array of ``labels``' shape: 0 background (or membrane), 1..N the objects.

    Raises:
        AutosegError: an unknown ``objects``, or ``background`` with a border label.
    """
    labels = np.asarray(labels)
    if check_objects(objects) == "background":
        if border_label is not None:
            raise AutosegError("--objects background takes no --border-label (membranes separate)")
        mask = labels == 0
    else:
        values = [int(v) for v in np.unique(labels) if v > 0 and v != border_label]
        wanted = [int(v) for v in foreground] if foreground is not None else values
        mask = np.isin(labels, wanted)
    objects, count = ndimage.label(mask)
    if min_size > 1 and count:
        sizes = np.bincount(objects.ravel())
        keep = sizes >= min_size
        keep[0] = False
        renumber = np.zeros(len(sizes), np.int32)
        renumber[keep] = np.arange(1, int(keep.sum()) + 1)
        objects, count = renumber[objects], int(keep.sum())
    objects = objects.astype(np.int32)
    if border_label is not None and count:
        border = labels == border_label
        # every border voxel joins the object of its nearest object voxel
        _, nearest = ndimage.distance_transform_edt(objects == 0, return_indices=True)
        objects[border] = objects[tuple(index[border] for index in nearest)]
    return objects


@dataclass(frozen=True)
class InstancesReport:
    """What ``instances_folder`` did: files written, existing ones skipped, objects per file."""

    written: tuple[Path, ...]
    skipped: tuple[Path, ...]
    objects: dict[str, int]


def instances_folder(
    input_dir: Path,
    output_dir: Path,
    border_label: int | None = None,
    min_size: int = 0,
    overwrite: bool = False,
    objects: str = "foreground",
) -> InstancesReport:
    """Write the instance map of every label map in ``input_dir`` to ``output_dir``.

    Raises:
        AutosegError: the input folder is missing or empty, an output would replace an input,
            or a file cannot be read or written (the message names it); an unknown
            ``objects`` (``semantic_to_instances``).
    """
    check_objects(objects)
    if objects == "background" and border_label is not None:
        raise AutosegError("--objects background takes no --border-label (membranes separate)")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise AutosegError(f"{input_dir}: folder not found")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and file_ending(p) is not None)
    if not files:
        raise AutosegError(f"{input_dir}: no label maps found")
    check_output_folder(output_dir, "OUTPUT")
    targets = [output_dir / f.name for f in files]
    refuse_outputs_that_are_inputs(files, targets)
    blocked = [t for t in targets if t.exists() and not t.is_file()]
    if blocked:
        raise AutosegError(f"{blocked[0]}: a folder of this name is in the way")
    written, skipped, counts = [], [], {}
    for source, target in zip(files, targets, strict=True):
        if target.is_file() and not overwrite:
            skipped.append(target)
            continue
        data, geometry = read_array(source)
        data = as_label_map(data, source)  # whole-number floats too, as evaluate takes them
        instances = semantic_to_instances(
            data, border_label=border_label, min_size=min_size, objects=objects
        )
        remove_temp_files(target)  # of a killed run
        write_label(instances, geometry, target)
        written.append(target)
        counts[source.name] = int(instances.max(initial=0))
    if skipped:
        log.warning("%d existing output(s) kept (overwrite to replace them)", len(skipped))
    return InstancesReport(tuple(written), tuple(skipped), counts)
