"""Prediction with a trained model folder: load the folds once, predict arrays, images, folders.

A model folder is ``<home>/<dataset>/models/<planner>/<config>/`` (see docs/architecture.md):
``plans.json``, ``fold_<k>/<checkpoint>`` per trained fold and, after cross-validation,
``postprocessing.json``. One case goes: ``preprocess_image`` -> sliding-window logits of every
fold (mirroring TTA), averaged over the folds -> softmax -> ``restore_probabilities`` (original
spacing and uncropped shape) -> argmax -> label values -> post-processing.

``predict_folder`` (``autoseg.inference.folder``, re-exported here) runs a folder of cases through
a ``Predictor``.

This module owns ``Predictor`` (its settings, networks and public methods). Reading and checking
the folds of a model folder is ``autoseg.inference.fold_loading``; the stages of one case
``autoseg.inference.case_stages``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.data.io import Geometry, Image
from autoseg.data.plans import Configuration, Plans
from autoseg.device import autocast
from autoseg.errors import AutosegError
from autoseg.inference.cascade import PreviousStage, input_channels
from autoseg.inference.case_stages import CaseStagesMixin
from autoseg.inference.fold_loading import load_folds
from autoseg.inference.folder import PredictionReport, predict_folder
from autoseg.inference.postprocess import PostprocessingDecision
from autoseg.inference.runtime_openvino import openvino_network, runtime_device
from autoseg.inference.tiles import DEFAULT_TILE_SCALE
from autoseg.networks.compiled import compile_with_fallback, use_compile
from autoseg.networks.unet import build_network
from autoseg.preprocessing.body_mask import ct_channels

log = logging.getLogger(__name__)

__all__ = ["PredictionReport", "Predictor", "predict_folder"]


class Predictor(CaseStagesMixin):
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
        cpu_bf16: bf16 autocast on a bf16-capable CPU (CUDA always uses bf16); on by
            default (about 2x faster at the same Dice: docs/benchmarks.md, issue 22), False
            predicts in fp32. With ``runtime="openvino"``: OpenVINO's bf16 precision hint
            instead.
        runtime: ``"torch"`` (eager, or compiled with ``compile``) or ``"openvino"``: each
            network converted once to OpenVINO and run by its CPU plugin
            (``autoseg.inference.runtime_openvino``; the ``openvino`` extra); CPU only, so
            ``device="auto"`` means the CPU there.

    Raises:
        AutosegError: a cascade stage without ``previous_stage``, weights that do not fit, or a
            runtime that cannot run (unknown, OpenVINO on a GPU or not installed).
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
        cpu_bf16: bool = True,
        runtime: str = "torch",
    ) -> None:
        self.plans = plans
        self.cpu_bf16, self.runtime = cpu_bf16, runtime
        if isinstance(configuration, str):
            configuration = plans.configuration(configuration)
        self.configuration: Configuration = configuration
        if configuration.previous_stage and previous_stage is None:
            raise AutosegError(f"'{configuration.name}' is a cascade stage: give previous_stage")
        self.previous_stage = previous_stage
        self.folds = tuple(folds) if folds is not None else tuple(map(str, range(len(weights))))
        sources = list(sources) if sources is not None else [f"fold {f}" for f in self.folds]
        self.device = runtime_device(runtime, device, compile)
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
        if runtime == "openvino":  # traced at 2x the total stride: cheap, any tile runs after
            small = [2 * s for s in configuration.total_stride()]
            example = torch.zeros((1, self.network_channels, *small))
            self.networks = [
                openvino_network(net, example, cpu_bf16, f"fold {fold}")
                for net, fold in zip(self.networks, self.folds, strict=True)
            ]
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
        cpu_bf16: bool = True,
        runtime: str = "torch",
    ) -> Predictor:
        """Load the trained folds of a model folder.

        Args:
            model_folder: ``<home>/<dataset>/models/<planner>/<config>/``.
            folds: fold names or numbers; None: ``ModelFolder.default_folds`` (the 5
                cross-validation folds when all are trained, else ``all``; the log says which).
            checkpoint: ``final``, ``best``, ``latest`` or a checkpoint file name.
            device, tta, step, tile_batch, max_tile_scale, compile, body_mask, cpu_bf16,
                runtime: as for the constructor.
            postprocess: apply ``postprocessing.json`` when the model folder has one.

        Raises:
            AutosegError: the folder is not a model folder, a fold or checkpoint is missing or
                does not match the plans (a fold trained with other plans than the folder's
                ``plans.json`` is refused, naming the fold: ``autoseg.data.recipe``).
        """
        runtime_device(runtime, device, compile)  # refused before the folds are read
        loaded = load_folds(model_folder, folds, checkpoint, postprocess)
        folder, config, chosen = loaded.folder, loaded.configuration, loaded.folds
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
                runtime=runtime,
            )
            previous = lambda image, _case: low.predict_image(image)[0]  # noqa: E731
        predictor = cls(
            list(loaded.weights),
            loaded.plans,
            config,
            device=device,
            tta=tta,
            step=step,
            postprocessing=loaded.postprocessing,
            tile_batch=tile_batch,
            max_tile_scale=max_tile_scale,
            compile=compile,
            folds=chosen,
            sources=[str(p) for p in loaded.paths],
            previous_stage=previous,
            body_mask=body_mask,
            cpu_bf16=cpu_bf16,
            runtime=runtime,
        )
        log.info(
            "loaded %s (%s, folds %s) on %s%s",
            folder.path,
            predictor.configuration.name,
            ",".join(predictor.folds),
            predictor.device,
            "" if runtime == "torch" else f" ({runtime})",
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
