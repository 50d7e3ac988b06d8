"""Prediction with a trained model folder: load the folds once, predict arrays, images, folders.

A model folder is ``<home>/<dataset>/models/<planner>/<config>/`` (see docs/architecture.md):
``plans.json``, ``fold_<k>/<checkpoint>`` per trained fold and, after cross-validation,
``postprocessing.json``. One case goes: ``preprocess_image`` -> sliding-window logits of every
fold (mirroring TTA), averaged over the folds -> softmax -> ``restore_probabilities`` (original
spacing and uncropped shape) -> argmax -> label values -> post-processing.

``predict_folder`` (``autoseg.inference.folder``, re-exported here) runs a folder of cases through
a ``Predictor``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.io import Geometry, Image
from autoseg.data.model_folder import ModelFolder, checkpoint_file, named_folds
from autoseg.data.plans import Configuration, Plans
from autoseg.data.recipe import check_fold_recipe
from autoseg.data.regions import regions_to_labels
from autoseg.device import autocast, inference_settings, resolve_device
from autoseg.errors import AutosegError
from autoseg.inference.cascade import PreviousStage, input_channels, previous_stage_input
from autoseg.inference.folder import PredictionReport, predict_folder
from autoseg.inference.postprocess import PostprocessingDecision, apply_postprocessing
from autoseg.inference.sliding_window import sliding_window_logits, sliding_window_logits_slices
from autoseg.inference.tile_accumulation import SKIPPED_LOGIT_GAP, TileProgress
from autoseg.inference.tiles import DEFAULT_TILE_SCALE, default_tile_batch, inference_tile_size
from autoseg.networks.compiled import compile_with_fallback, use_compile
from autoseg.networks.unet import build_network
from autoseg.preprocessing.body_mask import body_mask, ct_channels
from autoseg.preprocessing.preprocess import preprocess_image, restore_probabilities

log = logging.getLogger(__name__)

__all__ = ["PredictionReport", "Predictor", "predict_folder"]


class Predictor:
    """Trained networks of one configuration, ready to predict; their logits are averaged.

    Build it from objects (a benchmark, a notebook) or load it with ``Predictor.from_folder``.

    Args:
        weights: one network state dict per fold (``network.state_dict()``).
        plans: the plans the networks were trained with.
        configuration: the configuration (or its name in ``plans``).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        tta: mirroring test-time augmentation over all spatial axes (8 passes in 3D, 4 in 2D).
        step: sliding-window step as a fraction of the patch.
        postprocessing: the cross-validation's post-processing decision, or None.
        tile_batch: network inputs per forward pass; None = ``default_tile_batch``.
        max_tile_scale: largest inference tile edge as a multiple of the patch edge (see
            ``tile_size``), 1 to 2; 1.0 predicts with the training patch everywhere. None (the
            default): ``DEFAULT_TILE_SCALE`` (1.25) for a 3D configuration, which widens a tile
            to cover an image just over the patch (about 2x fewer network voxels on
            Hippocampus, CV Dice -0.0004: docs/benchmarks.md), and 1.0 for 2D, where the
            widened tile lost Dice on the demo's held-out cases.
        compile: ``torch.compile`` the networks (falling back to eager with one log line if
            that fails); None = on CUDA only.
        folds: the fold names of ``weights`` (for messages; default 0, 1, ...).
        sources: where each state dict came from, named in errors (default ``fold <k>``).
        previous_stage: for a cascade stage, gives a case's previous-stage label map on its
            own grid (``from_folder`` runs the previous stage's model).
        body_mask: with CT-normalised channels, skip the tiles that hold no body
            (``autoseg.preprocessing.body_mask``: air around the patient is predicted
            background without running the network); no effect on other images.
        cpu_bf16: bf16 autocast on a bf16-capable CPU (CUDA always uses bf16); off by
            default, so CPU labels are those of fp32.

    Raises:
        AutosegError: a cascade stage without ``previous_stage``, or weights that do not fit.
    """

    def __init__(
        self,
        weights: Sequence[Mapping[str, torch.Tensor]],
        plans: Plans,
        configuration: Configuration | str,
        *,
        device: str | torch.device = "auto",
        tta: bool = True,
        step: float = 0.5,
        postprocessing: PostprocessingDecision | None = None,
        tile_batch: int | None = None,
        max_tile_scale: float | None = None,
        compile: bool | None = None,
        folds: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        previous_stage: PreviousStage | None = None,
        body_mask: bool = True,
        cpu_bf16: bool = False,
    ) -> None:
        self.plans = plans
        self.cpu_bf16 = cpu_bf16
        if isinstance(configuration, str):
            configuration = plans.configuration(configuration)
        self.configuration: Configuration = configuration
        if configuration.previous_stage and previous_stage is None:
            raise AutosegError(f"'{configuration.name}' is a cascade stage: give previous_stage")
        self.previous_stage = previous_stage
        self.folds = tuple(folds) if folds is not None else tuple(map(str, range(len(weights))))
        sources = list(sources) if sources is not None else [f"fold {f}" for f in self.folds]
        self.device = resolve_device(device)
        if not 0.0 < step <= 1.0:
            raise AutosegError(f"step size {step}: must lie in (0, 1] (a fraction of the patch)")
        if max_tile_scale is None:
            max_tile_scale = DEFAULT_TILE_SCALE if configuration.ndim == 3 else 1.0
        if not 1.0 <= max_tile_scale <= 2.0:  # 2: a 3D tile of up to 8x the patch's memory
            raise AutosegError(
                f"tile scale {max_tile_scale}: must lie in [1, 2] (a multiple of the patch edge)"
            )
        self.tta, self.step, self.max_tile_scale = tta, step, max_tile_scale
        self._tile_batch = tile_batch
        # class i -> label value (the ignore label has no class: it is never predicted); with
        # regions, output i is region i, written as its regions_class_order value
        self.regions = plans.regions
        values = [r.value for r in self.regions] if self.regions else plans.predicted_labels
        self.label_values = np.array(values, dtype=np.int64)
        self.num_classes, self.in_channels = plans.num_classes, len(plans.channels)
        self.network_channels = input_channels(plans, configuration)  # + cascade inputs
        self.networks = [self._network(w, src) for w, src in zip(weights, sources, strict=True)]
        self.compile = use_compile(compile, self.device)
        if self.compile:
            batch = self.tile_batch(configuration.patch_size)
            example = torch.zeros(
                (batch, self.network_channels, *configuration.patch_size), device=self.device
            )
            with autocast(self.device, self.cpu_bf16):
                self.networks = [compile_with_fallback(net, example) for net in self.networks]
        self.postprocessing = postprocessing
        self.body_channels = ct_channels(configuration) if body_mask else ()

    @classmethod
    def from_folder(
        cls,
        model_folder: str | Path,
        folds: Sequence[int | str] | None = None,
        checkpoint: str = "final",
        device: str | torch.device = "auto",
        tta: bool = True,
        step: float = 0.5,
        postprocess: bool = True,
        tile_batch: int | None = None,
        max_tile_scale: float | None = None,
        compile: bool | None = None,
        body_mask: bool = True,
        cpu_bf16: bool = False,
    ) -> Predictor:
        """Load the trained folds of a model folder.

        Args:
            model_folder: ``<home>/<dataset>/models/<planner>/<config>/``.
            folds: fold names or numbers; None: ``ModelFolder.default_folds`` (the 5
                cross-validation folds when all are trained, else ``all``; the log says which).
            checkpoint: ``final``, ``best``, ``latest`` or a checkpoint file name.
            device, tta, step, tile_batch, max_tile_scale, compile, body_mask, cpu_bf16: as
                for the constructor.
            postprocess: apply ``postprocessing.json`` when the model folder has one.

        Raises:
            AutosegError: the folder is not a model folder, a fold or checkpoint is missing or
                does not match the plans (a fold trained with other plans than the folder's
                ``plans.json`` is refused, naming the fold: ``autoseg.data.recipe``).
        """
        # resolved: MODEL/fold_0/.. is MODEL (its name is the configuration), not '..'
        folder = ModelFolder(Path(model_folder).resolve())
        if not folder.path.is_dir():
            raise AutosegError(f"{folder.path}: model folder not found")
        if not folder.plans.is_file():
            raise folder.not_a_model("no plans.json")
        available = folder.folds_with(checkpoint)
        if not available:
            raise folder.not_a_model(f"no fold_<k>/{checkpoint_file(checkpoint)}")
        chosen = folder.default_folds(checkpoint) if folds is None else named_folds(folds)
        missing = [f for f in chosen if f not in available]
        if missing:
            raise AutosegError(
                f"{folder.path}: no {checkpoint_file(checkpoint)} for fold(s) "
                f"{', '.join(missing)}; available: {', '.join(available)}"
            )
        try:
            plans = Plans.from_json(folder.plans)
        except (ValueError, TypeError, KeyError) as exc:
            raise AutosegError(f"{folder.plans}: not valid autoseg plans ({exc})") from exc
        paths = [folder.checkpoint(fold, checkpoint) for fold in chosen]
        checkpoints = [load_checkpoint(path, map_location="cpu") for path in paths]
        names = {c.meta.configuration or folder.name for c in checkpoints}
        if len(names) > 1:
            raise AutosegError(
                f"{folder.path}: folds trained with different configurations {names}"
            )
        config = plans.configuration(names.pop())
        for fold, path, ckpt in zip(chosen, paths, checkpoints, strict=True):
            check_fold_recipe(folder, plans, config.name, fold, path, ckpt.meta)
            for key, planned in (
                ("num_classes", plans.num_classes),
                ("in_channels", input_channels(plans, config)),
            ):
                recorded = getattr(ckpt.meta, key)
                if recorded is not None and recorded != planned:
                    raise AutosegError(f"{path}: {key} {recorded} differs from plans.json")
        decision = None
        if postprocess and folder.postprocessing.is_file():
            decision = PostprocessingDecision.from_json(folder.postprocessing)
        previous = None
        if config.previous_stage:  # the previous stage's model folder beside this one
            low = cls.from_folder(
                folder.path.parent / config.previous_stage,
                checkpoint=checkpoint,
                device=device,
                tta=tta,
                step=step,
                postprocess=False,
                tile_batch=tile_batch,
                max_tile_scale=max_tile_scale,
                compile=compile,
                body_mask=body_mask,
                cpu_bf16=cpu_bf16,
            )
            previous = lambda image, _case: low.predict_image(image)[0]  # noqa: E731
        predictor = cls(
            [c.model_state for c in checkpoints],
            plans,
            config,
            device=device,
            tta=tta,
            step=step,
            postprocessing=decision,
            tile_batch=tile_batch,
            max_tile_scale=max_tile_scale,
            compile=compile,
            folds=chosen,
            sources=[str(p) for p in paths],
            previous_stage=previous,
            body_mask=body_mask,
            cpu_bf16=cpu_bf16,
        )
        log.info(
            "loaded %s (%s, folds %s) on %s",
            folder.path,
            predictor.configuration.name,
            ",".join(predictor.folds),
            predictor.device,
        )
        return predictor

    def _network(self, weights: Mapping[str, torch.Tensor], source: str) -> torch.nn.Module:
        """A network of the configuration with ``weights``, in eval mode on the device."""
        net = build_network(
            self.configuration, self.network_channels, self.num_classes, deep_supervision=False
        )
        try:
            net.load_state_dict(weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise AutosegError(
                f"{source}: weights do not fit the planned network ({first})"
            ) from exc
        net.deep_supervision = False
        return net.to(self.device).eval()

    # ------------------------------------------------------------------ one case, in stages

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
        precision = autocast(self.device, self.cpu_bf16)
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

    # ------------------------------------------------------------------ public API

    def predict_image(self, image: Image) -> tuple[np.ndarray, np.ndarray]:
        """Segment one image.

        Args:
            image: ``Image`` with a float32 ``(C, Z, Y, X)`` array and its geometry.

        Returns:
            ``(labels (Z, Y, X), probabilities (K, Z, Y, X) float32)`` on the image's grid;
            probability channel i belongs to label value ``plans.predicted_labels[i]``.
        """
        array, props = self.preprocess(image)
        probs = self.predict_preprocessed(array, self.body(image, props))
        return self.finalize(probs, props)

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

    def predict_folder(
        self, inputs: Sequence[Path], output_dir: Path, **kwargs: Any
    ) -> PredictionReport:
        """Shorthand for ``predict_folder(inputs, output_dir, self, **kwargs)``."""
        return predict_folder(inputs, output_dir, self, **kwargs)
