"""Prediction with a trained model folder: load the folds once, predict arrays, images, folders.

A model folder is ``<home>/<dataset>/models/<planner>/<config>/`` (see docs/architecture.md):
``plans.json``, ``fold_<k>/<checkpoint>`` per trained fold and, after cross-validation,
``postprocessing.json``. One case goes: ``preprocess_image`` -> sliding-window logits of every
fold (mirroring TTA), averaged over the folds -> softmax -> ``restore_probabilities`` (original
spacing and uncropped shape) -> argmax -> label values -> post-processing.

Folders are handled by ``autoseg.predict_folder``; this module only holds the models.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.checkpoint import load_checkpoint
from autoseg.errors import AutosegError
from autoseg.io import Geometry, Image
from autoseg.plans import Configuration, Plans
from autoseg.predict import sliding_window_logits, sliding_window_logits_slices

log = logging.getLogger(__name__)

__all__ = ["Predictor", "resolve_device"]

_FOLD_DIR = re.compile(r"^fold_(\d+|all)$")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch understands it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AutosegError(f"device '{device}' requested but CUDA is not available")
    return resolved


def _available_folds(folder: Path, checkpoint: str) -> list[str]:
    """Fold names (``"0"``, ``"all"``, ...) whose ``fold_<k>/<checkpoint>`` exists, sorted."""
    names = []
    for child in folder.iterdir() if folder.is_dir() else ():
        match = _FOLD_DIR.match(child.name)
        if match and (child / checkpoint).is_file():
            names.append(match.group(1))
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


def _not_a_model(folder: Path, why: str) -> AutosegError:
    hint = ""
    if folder.is_dir():
        inner = sorted(p.parent for p in folder.glob("**/plans.json") if p.parent != folder)
        inner = [p for p in inner if any(_FOLD_DIR.match(c.name) for c in p.iterdir())]
        if inner:
            hint = "; model folders below it: " + ", ".join(str(p) for p in inner[:5])
    return AutosegError(
        f"{folder}: not an autoseg model folder ({why}); expected "
        f"<home>/<dataset>/models/<planner>/<config>/ with plans.json and fold_<k>/{hint}"
    )


class Predictor:
    """The trained folds of one model folder, loaded once, ready to predict.

    Args:
        model_folder: ``<home>/<dataset>/models/<planner>/<config>/``.
        folds: fold names or numbers to use; None uses every fold folder holding ``checkpoint``.
        checkpoint: checkpoint file name inside each fold folder.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        tta: mirroring test-time augmentation over all spatial axes (8 passes in 3D, 4 in 2D).
        step: sliding-window step as a fraction of the patch.
        postprocess: apply ``postprocessing.json`` when the model folder has one.
        tile_batch: network inputs per forward pass; None = 8 on CUDA, 2 on CPU.

    Raises:
        AutosegError: the folder is not a model folder, a fold or checkpoint is missing or does
            not match the plans.
    """

    def __init__(
        self,
        model_folder: str | Path,
        folds: Sequence[int | str] | None = None,
        checkpoint: str = "checkpoint_final.pt",
        device: str | torch.device = "auto",
        tta: bool = True,
        step: float = 0.5,
        postprocess: bool = True,
        tile_batch: int | None = None,
    ) -> None:
        self.model_folder = Path(model_folder)
        folder = self.model_folder
        if not folder.is_dir():
            raise AutosegError(f"{folder}: model folder not found")
        if not (folder / "plans.json").is_file():
            raise _not_a_model(folder, "no plans.json")
        available = _available_folds(folder, checkpoint)
        if not available:
            raise _not_a_model(folder, f"no fold_<k>/{checkpoint}")
        if folds is None:
            self.folds = tuple(available)
        else:
            self.folds = tuple(str(f) for f in folds)
            missing = [f for f in self.folds if f not in available]
            if missing:
                raise AutosegError(
                    f"{folder}: no {checkpoint} for fold(s) {', '.join(missing)}; "
                    f"available: {', '.join(available)}"
                )
        try:
            self.plans = Plans.from_json(folder / "plans.json")
        except (ValueError, TypeError, KeyError) as exc:
            raise AutosegError(f"{folder / 'plans.json'}: not valid autoseg plans ({exc})") from exc
        self.device = resolve_device(device)
        self.tta = tta
        self.step = step
        self.tile_batch = tile_batch or (8 if self.device.type == "cuda" else 2)
        self.label_values = np.array(sorted(self.plans.labels), dtype=np.int64)
        self.num_classes = len(self.label_values)
        self.in_channels = len(self.plans.channels)
        if self.device.type == "cpu":
            torch.set_num_threads(_cpu_count())
        else:
            torch.backends.cudnn.benchmark = True  # one patch size: pick the fastest kernels
        self.config: Configuration | None = None
        self.networks = [self._load_fold(fold, checkpoint) for fold in self.folds]
        self.postprocessing = self._load_postprocessing() if postprocess else None
        log.info(
            "loaded %s (%s, folds %s) on %s",
            folder,
            self.configuration.name,
            ",".join(self.folds),
            self.device,
        )

    @property
    def configuration(self) -> Configuration:
        """The configuration every fold was trained with."""
        assert self.config is not None  # set by the first _load_fold
        return self.config

    def _load_fold(self, fold: str, checkpoint: str) -> torch.nn.Module:
        from autoseg.network import build_network

        path = self.model_folder / f"fold_{fold}" / checkpoint
        ckpt = load_checkpoint(path, map_location="cpu")
        meta = ckpt.meta
        name = meta.get("configuration", self.model_folder.name)
        if self.config is None:
            self.config = self.plans.configuration(name)
            if self.config.previous_stage:
                raise AutosegError(
                    f"{self.model_folder}: cascade configuration '{name}' needs the predictions "
                    f"of '{self.config.previous_stage}'; cascades are not supported by predict"
                )
        elif name != self.config.name:
            raise AutosegError(f"{path}: trained as '{name}', other folds as '{self.config.name}'")
        for key, planned in (("num_classes", self.num_classes), ("in_channels", self.in_channels)):
            if key in meta and int(meta[key]) != planned:
                raise AutosegError(
                    f"{path}: {key} {meta[key]} does not match plans.json ({planned})"
                )
        net = build_network(self.config, self.in_channels, self.num_classes, deep_supervision=False)
        try:
            net.load_state_dict(ckpt.model_state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise AutosegError(
                f"{path}: weights do not fit the network planned in plans.json ({first})"
            ) from exc
        net.deep_supervision = False
        return net.to(self.device).eval()

    def _load_postprocessing(self) -> Any:
        path = self.model_folder / "postprocessing.json"
        if not path.is_file():
            return None
        from autoseg.postprocess import PostprocessingDecision

        return PostprocessingDecision.from_json(path)

    # ------------------------------------------------------------------ one case, in stages

    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        """Crop, resample and normalise ``image`` as in training.

        Returns:
            The network-grid array ``(C, Z', Y', X')`` and its ``CaseProperties``.

        Raises:
            AutosegError: the image has the wrong number of channels.
        """
        from autoseg.preprocess import preprocess_image

        if image.array.shape[0] != self.in_channels:
            raise AutosegError(
                f"image has {image.array.shape[0]} channel(s); the model takes "
                f"{self.in_channels} ({', '.join(self.plans.channels)})"
            )
        array, _, props = preprocess_image(image, self.configuration)
        return array, props

    def predict_preprocessed(self, array: np.ndarray) -> np.ndarray:
        """Softmax probabilities on the network grid, logits averaged over folds and mirrors.

        Args:
            array: preprocessed ``(C, Z, Y, X)`` float32.

        Returns:
            float32 ``(K, Z, Y, X)`` probabilities (host memory).
        """
        config = self.configuration
        image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        total: torch.Tensor | None = None
        with autocast:
            for net in self.networks:
                if config.ndim == 2:
                    logits = sliding_window_logits_slices(
                        net,
                        image,
                        config.patch_size,
                        self.num_classes,
                        step=self.step,
                        mirror_axes=(0, 1) if self.tta else (),
                        tile_batch=self.tile_batch,
                    )
                else:
                    logits = sliding_window_logits(
                        net,
                        image,
                        config.patch_size,
                        self.num_classes,
                        step=self.step,
                        mirror_axes=(0, 1, 2) if self.tta else (),
                        tile_batch=self.tile_batch,
                    )
                total = logits if total is None else total.add_(logits)
        assert total is not None  # at least one fold is loaded
        probs = torch.softmax(total / len(self.networks), dim=0)  # (K, Z, Y, X)
        return probs.cpu().numpy()

    def finalize(self, probs: np.ndarray, props: Any) -> tuple[np.ndarray, np.ndarray]:
        """Back to the original grid, then label values and post-processing.

        Args:
            probs: ``(K, Z', Y', X')`` probabilities on the network grid.
            props: the case's ``CaseProperties`` from ``preprocess``.

        Returns:
            ``(labels (Z, Y, X), probabilities (K, Z, Y, X) float32)`` on the input's grid;
            labels hold the dataset's label values (uint8 when they fit).
        """
        from autoseg.preprocess import restore_probabilities

        restored = np.asarray(restore_probabilities(probs, props), dtype=np.float32)
        index = np.argmax(restored, axis=0)  # (Z, Y, X) class indices
        dtype = np.uint8 if self.label_values.max() < 256 and self.label_values.min() >= 0 else np.int32
        labels = self.label_values.astype(dtype)[index]
        if self.postprocessing is not None:
            from autoseg.postprocess import apply_postprocessing

            labels = apply_postprocessing(labels, self.postprocessing)
        return labels, restored

    # ------------------------------------------------------------------ public API

    def predict_image(self, image: Image) -> tuple[np.ndarray, np.ndarray]:
        """Segment one image.

        Args:
            image: ``Image`` with a float32 ``(C, Z, Y, X)`` array and its geometry.

        Returns:
            ``(labels (Z, Y, X), probabilities (K, Z, Y, X) float32)`` on the image's grid;
            probability channel i belongs to label value ``sorted(plans.labels)[i]``.
        """
        array, props = self.preprocess(image)
        return self.finalize(self.predict_preprocessed(array), props)

    def predict_array(self, array: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Segment a numpy volume (Python API).

        Args:
            array: ``(C, Z, Y, X)`` image, or ``(Z, Y, X)`` for a single channel.
            spacing: voxel size (Z, Y, X) in mm.

        Returns:
            ``(Z, Y, X)`` label map with the dataset's label values.
        """
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or len(spacing) != 3:
            raise AutosegError(
                f"expected a (C, Z, Y, X) array and 3 spacings, got {array.shape} and {spacing}"
            )
        zooms = [float(s) for s in reversed(tuple(spacing))]  # (X, Y, Z) = NIfTI (i, j, k)
        affine = np.diag([*zooms, 1.0])
        geometry = Geometry(
            shape=tuple(int(s) for s in array.shape[1:]),
            spacing=tuple(float(s) for s in spacing),
            affine=tuple(tuple(float(v) for v in row) for row in affine),
        )
        labels, _ = self.predict_image(Image(np.ascontiguousarray(array), geometry))
        return labels

    def predict_folder(self, inputs: Sequence[Path], output_dir: Path, **kwargs: Any) -> Any:
        """``autoseg.predict_folder.predict_folder(inputs, output_dir, self, **kwargs)``."""
        from autoseg.predict_folder import predict_folder

        return predict_folder(inputs, output_dir, self, **kwargs)


def _cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
