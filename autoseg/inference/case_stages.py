"""Predicting one case in stages: preprocess, body mask, folds' sliding windows, back to labels.

Owns ``CaseStagesMixin``, the per-case part of ``autoseg.inference.predictor.Predictor`` that
``autoseg.inference.folder.predict_folder`` calls stage by stage (``CasePredictor``):
``preprocess_image`` (or a cascade's previous stage added) -> sliding-window logits of every fold
(mirroring TTA, tiles only over the CT body) averaged over the folds -> softmax (sigmoid for
regions) -> ``restore_probabilities`` (original spacing and uncropped shape) -> argmax -> label
values -> post-processing. Loading the folds is ``autoseg.inference.fold_loading``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from autoseg.data.io import Image
from autoseg.data.regions import regions_to_labels
from autoseg.device import autocast, inference_settings
from autoseg.errors import AutosegError
from autoseg.inference.cascade import previous_stage_input
from autoseg.inference.postprocess import apply_postprocessing
from autoseg.inference.sliding_window import sliding_window_logits, sliding_window_logits_slices
from autoseg.inference.tile_accumulation import SKIPPED_LOGIT_GAP, TileProgress
from autoseg.inference.tiles import default_tile_batch, inference_tile_size
from autoseg.preprocessing.body_mask import body_mask
from autoseg.preprocessing.preprocess import preprocess_image, restore_probabilities


class CaseStagesMixin:
    """The stages of one case (``autoseg.inference.predictor.Predictor``).

    Uses the predictor's ``plans``, ``configuration``, ``in_channels``, ``previous_stage``,
    ``body_channels``, ``device``, ``networks``, ``num_classes``, ``regions``, ``label_values``,
    ``tta``, ``step``, ``max_tile_scale``, ``cpu_bf16``, ``runtime``, ``postprocessing`` and
    ``_tile_batch``.
    """

    def preprocess(self, image: Image, case_id: str = "") -> tuple[np.ndarray, Any]:
        """Crop, resample and normalise ``image`` as in training (``case_id`` names it in errors).

        Returns:
            The network-grid array ``(C, Z', Y', X')`` and its ``CaseProperties``.

        Raises:
            AutosegError: the image has the wrong number of channels, or NaN/Inf voxels.
        """
        if image.array.shape[0] != self.in_channels:
            raise AutosegError(
                f"image has {image.array.shape[0]} channel(s); the model takes "
                f"{self.in_channels} ({', '.join(self.plans.channels)})"
            )
        # a float64 running sum needs no copy of the image; it is finite iff every voxel is
        if not np.isfinite(image.array.sum(dtype=np.float64)):
            bad = int(image.array.size - np.count_nonzero(np.isfinite(image.array)))
            raise AutosegError(f"{bad} NaN or Inf voxel(s) in the image")
        if self.previous_stage is not None:  # a cascade: + the previous stage, one-hot
            labels = self.plans.foreground_labels
            config = self.configuration
            return previous_stage_input(image, config, self.previous_stage, labels, case_id)
        array, _, props = preprocess_image(image, self.configuration, case_id=case_id)
        return array, props

    def body(self, image: Image, props: Any) -> np.ndarray | None:
        """Where tiles must run for ``image``: its dilated body on the network grid, or None.

        None (every tile runs) unless the configuration has CT-normalised channels and the
        predictor was built with ``body_mask``.

        Args:
            image: the raw image, as given to ``preprocess``.
            props: the ``CaseProperties`` that ``preprocess`` returned for it.
        """
        if not self.body_channels:
            return None
        return body_mask(
            image.array,
            image.geometry.spacing,
            self.body_channels,
            props.crop_bbox,
            props.shape_after_resample,
        )

    def tile_batch(self, tile: Sequence[int]) -> int:
        """Network inputs per forward pass for tiles of shape ``tile`` (see the constructor)."""
        return self._tile_batch or default_tile_batch(tile, self.device)

    def tile_size(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The sliding-window tile for a preprocessed image of spatial ``shape`` (Z, Y, X).

        The patch, widened (within ``max_tile_scale``, to a multiple of the network's total
        stride) on axes where one tile then covers the image; see ``inference_tile_size``.
        """
        config = self.configuration
        spatial = tuple(shape)[-config.ndim :]  # 2D: the in-plane (Y, X) of each slice
        return inference_tile_size(
            spatial, config.patch_size, config.total_stride(), self.max_tile_scale
        )

    def predict_preprocessed(
        self,
        array: np.ndarray,
        body: np.ndarray | None = None,
        progress: TileProgress | None = None,
    ) -> np.ndarray:
        """Softmax probabilities on the network grid, logits averaged over folds and mirrors.

        Args:
            array: preprocessed ``(C, Z, Y, X)`` float32.
            body: bool ``(Z, Y, X)`` from ``body``: tiles without a True voxel are skipped and
                the voxels only they cover are background. None: every tile runs.
            progress: called with ``(tiles done, tiles)`` over all folds after every forward
                pass (``autoseg.inference.folder`` shows it).

        Returns:
            float32 ``(K, Z, Y, X)`` probabilities (host memory).
        """
        config = self.configuration
        image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)
        window = sliding_window_logits_slices if config.ndim == 2 else sliding_window_logits
        mirror_axes = tuple(range(config.ndim)) if self.tta else ()
        tile = self.tile_size(array.shape[1:])
        keep = None if body is None else torch.from_numpy(body).to(self.device)
        # skipped voxels: background ahead (softmax), or every region off (sigmoid)
        gap = [-SKIPPED_LOGIT_GAP] * self.num_classes
        background = gap if self.regions else [0.0, *gap[1:]]
        total = torch.zeros(0)
        # threads / cuDNN benchmarking only for this call: the process keeps its own settings
        # bf16 autocast for torch networks only (OpenVINO's precision is its compile hint)
        precision = autocast(self.device, self.cpu_bf16 and self.runtime == "torch")
        with inference_settings(self.device), torch.inference_mode(), precision:
            folds = len(self.networks)
            for i, net in enumerate(self.networks):
                fold_progress = None
                if progress is not None:  # tiles of all folds: fold i's come after i * tiles
                    fold_progress = lambda d, t, i=i: progress(i * t + d, folds * t)  # noqa: E731
                logits = window(  # (K, Z, Y, X) float32
                    net,
                    image,
                    tile,
                    self.num_classes,
                    step=self.step,
                    mirror_axes=mirror_axes,
                    tile_batch=self.tile_batch(tile),
                    progress=fold_progress,
                    keep=keep,
                    background=background,
                )
                if i and total.device != logits.device:  # a fold ran out of device memory
                    total, logits = total.cpu(), logits.cpu()
                total = logits if i == 0 else total.add_(logits)
                del logits
            # mean over folds and softmax in place: (K, Z, Y, X) is the largest array here
            probs = total.div_(len(self.networks))
            if self.regions:  # one sigmoid per region
                return probs.sigmoid_().cpu().numpy()
            probs -= probs.amax(dim=0, keepdim=True)
            probs = probs.exp_()
            probs /= probs.sum(dim=0, keepdim=True)
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
        if self.regions:  # outside the crop no region: a zero channel takes the background's 1
            padded = np.concatenate([np.zeros_like(probs[:1]), probs])
            restored = np.asarray(restore_probabilities(padded, props)[1:], dtype=np.float32)
            labels = regions_to_labels(restored, self.regions)
            if self.postprocessing is not None:
                labels = apply_postprocessing(labels, self.postprocessing)
            return labels, restored
        restored = np.asarray(restore_probabilities(probs, props), dtype=np.float32)
        dtype = (
            np.uint8 if self.label_values.max() < 256 and self.label_values.min() >= 0 else np.int32
        )
        values = self.label_values.astype(dtype)
        labels = np.empty(restored.shape[1:], dtype=dtype)  # (Z, Y, X)
        for z in range(labels.shape[0]):  # slice by slice: no int64 index of the whole volume
            labels[z] = values[np.argmax(restored[:, z], axis=0)]
        if self.postprocessing is not None:
            labels = apply_postprocessing(labels, self.postprocessing)
        return labels, restored
