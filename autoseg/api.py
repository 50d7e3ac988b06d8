"""The Python API for notebooks and pipelines: load a model once, segment images or arrays.

    import nibabel as nib
    import autoseg

    model = autoseg.load_model("autoseg_home/Task04_Hippocampus/models/default/3d_fullres")
    labels = model.predict(nib.load("case.nii.gz"))          # a Nifti1Image on the input's grid
    labels, probs = model.predict(img, probabilities=True)   # probs: (i, j, k, K) Nifti1Image
    seg = model.predict_array(volume, spacing=(1.0, 1.0, 3.0), axis_order="xyz")

A thin layer over :class:`autoseg.inference.predictor.Predictor` (which a benchmark or a script can
also
build from objects). Loading a model changes no process-wide setting: torch's thread count and
cuDNN benchmarking are set only while a prediction runs, then restored. docs/api.md has runnable
examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.data.io import Geometry, Image, nifti_array, nifti_image
from autoseg.errors import AutosegError
from autoseg.inference.predictor import Predictor

__all__ = ["Segmenter", "load_model"]

_SPATIAL = "zyx"  # autoseg's own order: Z = NIfTI k, X = NIfTI i


class Segmenter:
    """A loaded model: segment nibabel images or numpy arrays.

    Attributes:
        predictor: the underlying :class:`~autoseg.inference.predictor.Predictor`.
        labels: label value -> name, background included.
        channels: the input channels the model takes, in order.
        label_values: the label value of each probability channel, in order (a region-based
            model: one sigmoid channel per region, named by its ``regions_class_order`` value).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.labels: dict[int, str] = dict(predictor.plans.labels)
        self.channels: tuple[str, ...] = tuple(predictor.plans.channels)
        self.label_values: tuple[int, ...] = tuple(int(v) for v in predictor.label_values)

    def __repr__(self) -> str:
        p = self.predictor
        return (
            f"Segmenter({p.configuration.name}, folds {','.join(p.folds)}, {p.device}, "
            f"channels {list(self.channels)}, labels {self.labels})"
        )

    def predict(self, image: Any, *, probabilities: bool = False) -> Any:
        """Segment a nibabel image; the result lies on the input's grid (shape and affine).

        Args:
            image: a ``nibabel.Nifti1Image`` (3D, or 4D with channels last), or a list of 3D
                images, one per channel, on one grid.
            probabilities: also return the class probabilities.

        Returns:
            The label map as a ``Nifti1Image`` (uint8 when the values fit) with the input's
            affine and qform/sform codes; with ``probabilities``, also a float32 ``Nifti1Image``
            ``(i, j, k, K)``, channel ``c`` being label ``label_values[c]``.

        Raises:
            AutosegError: wrong channel count, channels on different grids, NaN/Inf voxels.
        """
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        arrays, geometry = [], None
        for n, img in enumerate(images):
            data, geo = nifti_array(img, f"channel {n}")
            if geometry is not None and not geometry.same_grid(geo):
                raise AutosegError(f"channel {n}: its grid differs from channel 0's")
            geometry = geometry or geo
            data = np.ascontiguousarray(data, dtype=np.float32)
            arrays.append(data if data.ndim == 4 else data[None])
        if geometry is None:
            raise AutosegError("no image given")
        labels, probs = self.predictor.predict_image(Image(np.concatenate(arrays), geometry))
        out = nifti_image(labels, geometry)
        return (out, nifti_image(probs, geometry)) if probabilities else out

    def predict_array(
        self,
        array: np.ndarray,
        spacing: Sequence[float],
        *,
        axis_order: str,
        probabilities: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment a numpy volume whose axis order is stated, never guessed.

        Args:
            array: the image. One channel: 3 spatial axes; several: 4 axes, one of them ``c``.
            spacing: voxel size in mm of the 3 spatial axes, in the order of ``axis_order``.
            axis_order: the axes of ``array``: a permutation of ``"xyz"``, with ``"c"`` for the
                channels when there are several. ``"xyz"`` is nibabel's ``get_fdata()`` order
                (NIfTI i, j, k), ``"zyx"`` autoseg's and SimpleITK's ``GetArrayFromImage``
                order, ``"cxyz"`` / ``"xyzc"`` multi-channel.
            probabilities: also return the class probabilities.

        Returns:
            The label map, same spatial shape and axis order as ``array`` (dataset label
            values); with ``probabilities`` also float32 ``(K, *spatial)``, spatial axes in the
            input's order, channel ``c`` being label ``label_values[c]``.

        Raises:
            AutosegError: ``axis_order``, ``spacing`` and ``array`` do not fit together or the
                model's channels, or NaN/Inf voxels.
        """
        order = axis_order.lower()
        array = np.asarray(array)
        spatial = order.replace("c", "")
        if sorted(spatial) != sorted(_SPATIAL) or order.count("c") > 1:
            raise AutosegError(
                f"axis_order {axis_order!r}: expected a permutation of 'xyz', with 'c' for channels"
            )
        if array.ndim != len(order):
            raise AutosegError(
                f"array of {array.ndim} dimensions {array.shape} does not fit axis_order "
                f"{axis_order!r} ({len(order)} axes)"
            )
        if len(spacing) != 3:
            raise AutosegError(f"spacing {tuple(spacing)}: expected 3 values, one per spatial axis")
        if "c" not in order:
            array, order = array[None], "c" + order
        to_internal = [order.index(a) for a in "c" + _SPATIAL]
        data = np.ascontiguousarray(np.transpose(array, to_internal), dtype=np.float32)
        zyx_spacing = tuple(float(spacing[spatial.index(a)]) for a in _SPATIAL)
        affine = np.diag([*reversed(zyx_spacing), 1.0])  # NIfTI (i, j, k) = (X, Y, Z)
        geometry = Geometry(
            shape=tuple(int(n) for n in data.shape[1:]),
            spacing=zyx_spacing,
            affine=tuple(tuple(float(v) for v in row) for row in affine),
        )
        labels, probs = self.predictor.predict_image(Image(data, geometry))
        back = [_SPATIAL.index(a) for a in spatial]  # (Z, Y, X) -> the input's spatial order
        labels = np.ascontiguousarray(np.transpose(labels, back))
        if not probabilities:
            return labels
        return labels, np.ascontiguousarray(np.transpose(probs, [0, *(1 + i for i in back)]))


def load_model(
    folder: str | Path,
    *,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    device: str = "auto",
    tta: bool = True,
    postprocess: bool = True,
    cpu_bf16: bool = True,
    runtime: str = "torch",
) -> Segmenter:
    """Load a trained model folder for prediction (no process-wide setting is changed).

    Args:
        folder: ``<home>/<dataset>/models/<planner>/<config>/``, as ``autoseg predict -m``.
        folds: folds to use; default as ``autoseg predict`` (0-4 when all are trained, else
            ``all``).
        checkpoint: ``final``, ``best`` or a checkpoint file name.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        tta: mirroring test-time augmentation (8 passes in 3D).
        postprocess: apply the cross-validation's post-processing decision when there is one.
        cpu_bf16: bf16 on a CPU with native bf16 (as ``predict --cpu-bf16``, the default);
            False predicts in fp32.
        runtime: ``torch`` or ``openvino`` (as ``predict --runtime``: the CPU only, needs
            ``pip install 'autoseg[openvino]'``).

    Returns:
        The :class:`Segmenter`.

    Raises:
        AutosegError: not a model folder, a missing fold or checkpoint, a fold trained with
            other plans than the folder's plans.json (``autoseg.data.recipe``), an unknown
            device, or a runtime that cannot run here.
    """
    return Segmenter(
        Predictor.from_folder(
            folder,
            folds=folds,
            checkpoint=checkpoint,
            device=device,
            tta=tta,
            postprocess=postprocess,
            cpu_bf16=cpu_bf16,
            runtime=runtime,
        )
    )
