"""ONNX export of one trained fold: ``autoseg export MODEL --onnx model.onnx``.

The graph maps ``image`` float32 ``(B, C, *S)`` to ``logits`` float32 ``(B, K, *S)`` (the
full-resolution output, no deep supervision). The batch and the spatial axes are dynamic: ``S``
is the planned patch or any tile whose edges are multiples of the network's total stride, such
as the wider tiles ``predict`` uses in 3D (``--tile-scale``); the export is checked against
torch at the patch and at the widest such tile. What a caller needs to preprocess, tile and
label the volume travels in the model's metadata (``metadata_props``): ``autoseg_plans`` (the
plans as JSON), ``configuration``, ``fold``, ``patch_size``, ``label_values`` (the label value of
each output channel), ``outputs``, ``input_channels`` and, when the model folder has one,
``postprocessing``. :func:`onnx_predictor` rebuilds from that metadata the ``Predictor`` that
``autoseg predict`` runs, with the ONNX session as its network (2D and 3D).

A cascade's second stage is exported with its extra inputs (the one-hot 3d_lowres segmentation
after the image channels; ``previous_stage`` in the metadata) but :func:`onnx_predictor` refuses
it: it needs the first stage's segmentation. Region models export their sigmoid outputs.
Needs the optional extra ``pip install autoseg[onnx]`` (onnx; onnxruntime to check and run it).
"""

from __future__ import annotations

import importlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.model_folder import ModelFolder
from autoseg.data.plans import Plans
from autoseg.errors import AutosegError
from autoseg.inference.cascade import input_channels
from autoseg.inference.postprocess import PostprocessingDecision
from autoseg.inference.predictor import Predictor
from autoseg.inference.tiles import DEFAULT_TILE_SCALE, inference_tile_size
from autoseg.networks.unet import build_network
from autoseg.serial import atomic_output, dumps, from_dict, remove_temp_files

log = logging.getLogger(__name__)

__all__ = [
    "OPSET",
    "TOLERANCE",
    "OnnxExport",
    "export_onnx",
    "onnx_network",
    "onnx_predictor",
    "write_onnx",
]

OPSET = 17
#: the largest |ONNX - torch| logit difference accepted by the check after export (float32)
TOLERANCE = 1e-3


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote.

    Attributes:
        path: the .onnx file.
        fold: the exported fold.
        max_abs_diff: the largest |ONNX - torch| logit on random batches of 2 at the patch and
            at the widest tile (onnxruntime on the CPU), or None without onnxruntime.
    """

    path: Path
    fold: str
    max_abs_diff: float | None


def _require(module: str):
    """An optional extra's module, imported when first needed (it is not a dependency)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AutosegError(
            f"ONNX export needs the optional extra: pip install 'autoseg[onnx]' ({module} missing)"
        ) from exc


def export_onnx(
    model_folder: str | Path,
    output: str | Path,
    fold: str | None = None,
    checkpoint: str = "final",
    overwrite: bool = False,
) -> OnnxExport:
    """Export one fold's network to ONNX and check it against torch.

    Args:
        model_folder: ``<home>/<dataset>/models/<planner>/<config>/``.
        output: the .onnx file (written atomically).
        fold: the fold; None: ``all`` when trained, else the first trained fold.
        checkpoint: ``final``, ``best`` or a file name.
        overwrite: replace an existing ``output``.

    Raises:
        AutosegError: not a model folder, no such fold, ``output`` exists, onnx missing, or the
            exported graph's logits differ from torch's by more than ``TOLERANCE``.
    """
    onnx = _require("onnx")
    folder, output = ModelFolder(Path(model_folder).resolve()), Path(output)  # '..' resolved
    if not folder.plans.is_file():
        raise folder.not_a_model("no plans.json")
    if output.exists() and not overwrite:
        raise AutosegError(f"{output}: exists; choose another name or pass --overwrite")
    folds = folder.folds_with(checkpoint)
    if not folds:
        raise folder.not_a_model(f"no trained fold with a {checkpoint} checkpoint")
    fold = fold if fold is not None else ("all" if "all" in folds else folds[0])
    if fold not in folds:
        raise AutosegError(f"{folder.path}: fold {fold} is not trained; trained: {folds}")
    plans = Plans.from_json(folder.plans)
    config = plans.configuration(folder.name)
    channels = input_channels(plans, config)  # a cascade stage: + the one-hot previous stage
    net = build_network(config, channels, plans.num_classes, deep_supervision=False)
    net.load_state_dict(load_checkpoint(folder.checkpoint(fold, checkpoint)).model_state)
    net.deep_supervision = False
    net.eval()
    example = torch.zeros((1, channels, *config.patch_size))  # (1, C, *patch)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_temp_files(output)  # of a killed export
    with atomic_output(output) as (_, tmp), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_onnx(net, example, tmp)
        graph = onnx.load(tmp)
        values = [r.value for r in plans.regions] if plans.regions else plans.predicted_labels
        meta = {
            "autoseg_plans": dumps(plans),
            "configuration": config.name,
            "fold": fold,
            "patch_size": json.dumps(list(config.patch_size)),
            "label_values": json.dumps([int(v) for v in values]),
            "outputs": "sigmoid per region" if plans.regions else "softmax over classes",
            "input_channels": json.dumps(channels),
        }
        if config.previous_stage:
            meta["previous_stage"] = config.previous_stage
        if folder.postprocessing.is_file():
            meta["postprocessing"] = dumps(PostprocessingDecision.from_json(folder.postprocessing))
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, tmp)
        diff = _check(tmp, net, [example.shape, (2, channels, *widest_tile(config))])
    log.info("exported fold %s of %s to %s", fold, folder.path, output)
    return OnnxExport(output, fold, diff)


def write_onnx(net: torch.nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Trace ``net`` into the graph ``export_onnx`` writes (no metadata, no check).

    ``image`` ``(B, C, *S)`` -> ``logits`` ``(B, K, *S)`` float32, batch and spatial axes
    dynamic, opset ``OPSET``. A benchmark exports a network object with it, no model folder.

    Args:
        net: the network in eval mode, ``deep_supervision`` off.
        example: a ``(1, C, *patch)`` input to trace with.
        path: the .onnx file (written in place).
    """
    ndim = example.ndim - 2
    dynamic = {0: "batch", **{2 + a: name for a, name in enumerate("zyx"[-ndim:])}}
    with warnings.catch_warnings():
        # the TorchScript-based exporter: no onnxscript needed; its deprecation notice and the
        # instance-norm training-mode note (eval uses the input's statistics either way) are noise
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": dynamic, "logits": dynamic},
            opset_version=OPSET,
        )


def widest_tile(config) -> tuple[int, ...]:
    """The largest tile ``predict`` may give the network by default: the patch widened by
    ``DEFAULT_TILE_SCALE`` on every axis, in multiples of the total stride (3D; 2D: the patch)."""
    if config.ndim == 2:
        return tuple(config.patch_size)
    over = [int(p * DEFAULT_TILE_SCALE) for p in config.patch_size]
    return inference_tile_size(over, config.patch_size, config.total_stride(), DEFAULT_TILE_SCALE)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported model, as a dict."""
    onnx = _require("onnx")
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def onnx_predictor(path: str | Path, **options) -> Predictor:
    """The ``Predictor`` that ``autoseg predict`` runs, with the ONNX file as its only network.

    The plans, configuration and post-processing come from the file's metadata; ``options`` are
    the predictor's (``tta``, ``step``, ``max_tile_scale``, ``tile_batch``, ``postprocessing``),
    whose defaults are ``predict``'s. Preprocessing, tiling (2D: slice by slice; 3D: widened
    tiles), mirroring, softmax and post-processing are the predictor's own, so the labels equal
    ``predict``'s up to the ONNX runtime's rounding.

    Raises:
        AutosegError: not an autoseg ONNX export, or a cascade stage (it needs its first stage).
    """
    meta = onnx_metadata(path)
    if "autoseg_plans" not in meta:
        raise AutosegError(f"{path}: not an autoseg ONNX export (no autoseg_plans metadata)")
    plans = from_dict(Plans, json.loads(meta["autoseg_plans"]))
    config = plans.configuration(meta["configuration"])
    if config.previous_stage:
        raise AutosegError(
            f"{path}: a cascade stage needs the {config.previous_stage} segmentation as input; "
            "predict with the model folder (autoseg predict) instead"
        )
    if "postprocessing" in meta and "postprocessing" not in options:
        decision = from_dict(PostprocessingDecision, json.loads(meta["postprocessing"]))
        options["postprocessing"] = decision
    shell = build_network(config, len(plans.channels), plans.num_classes)  # replaced below
    predictor = Predictor([shell.state_dict()], plans, config, device="cpu", **options)
    predictor.networks = [onnx_network(path)]
    return predictor


def onnx_network(path: str | Path):
    """A callable ``(B, C, *patch) tensor -> (B, K, *patch) tensor`` running ``path`` with
    onnxruntime on the CPU: what ``autoseg.inference.sliding_window.sliding_window_logits``
    takes."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> torch.Tensor:
        image = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(["logits"], {"image": image})[0])

    return run


def _check(path: str, net: torch.nn.Module, shapes) -> float | None:
    """The largest |ONNX - torch| logit over random batches of 2 of each input shape."""
    try:
        run = onnx_network(path)
    except AutosegError:
        log.warning("onnxruntime not installed: the exported model was not checked")
        return None
    diff = 0.0
    for shape in shapes:
        batch = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = net(batch)
        got = run(batch)
        if got.shape != expected.shape:
            raise AutosegError(f"ONNX output {tuple(got.shape)} for input {tuple(batch.shape)}")
        diff = max(diff, float((got - expected).abs().max()))
    if diff > TOLERANCE:
        raise AutosegError(f"ONNX logits differ from torch by {diff:.2e} (> {TOLERANCE:g})")
    return diff
