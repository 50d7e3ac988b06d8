"""ONNX export of one trained fold: ``autoseg export MODEL --onnx model.onnx``.

The graph maps ``image`` float32 ``(B, C, *patch)`` to ``logits`` float32 ``(B, K, *patch)``
(the full-resolution output, no deep supervision), with a dynamic batch axis. What a caller
needs to preprocess, tile and label the volume travels in the model's metadata
(``metadata_props``): ``autoseg_plans`` (the plans as JSON), ``configuration``, ``fold``,
``patch_size`` and ``label_values`` (the label value of each output channel). Needs the optional
extra ``pip install autoseg[onnx]`` (onnx; onnxruntime to check and run it).
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

from autoseg.checkpoint import load_checkpoint
from autoseg.errors import AutosegError
from autoseg.model_folder import ModelFolder
from autoseg.network import build_network
from autoseg.plans import Plans
from autoseg.serial import atomic_output, dumps, remove_temp_files

log = logging.getLogger(__name__)

__all__ = ["OPSET", "TOLERANCE", "OnnxExport", "export_onnx", "onnx_network"]

OPSET = 17
#: the largest |ONNX - torch| logit difference accepted by the check after export (float32)
TOLERANCE = 1e-3


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote.

    Attributes:
        path: the .onnx file.
        fold: the exported fold.
        max_abs_diff: the largest |ONNX - torch| logit on a random batch of 2 (onnxruntime on
            the CPU), or None when onnxruntime is not installed.
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
    net = build_network(config, len(plans.channels), plans.num_classes, deep_supervision=False)
    net.load_state_dict(load_checkpoint(folder.checkpoint(fold, checkpoint)).model_state)
    net.deep_supervision = False
    net.eval()
    example = torch.zeros((1, len(plans.channels), *config.patch_size))  # (1, C, *patch)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_temp_files(output)  # of a killed export
    with atomic_output(output) as (_, tmp), warnings.catch_warnings():
        # the TorchScript-based exporter: no onnxscript needed; its deprecation notice and the
        # instance-norm training-mode note (eval uses the input's statistics either way) are noise
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            tmp,
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
        )
        graph = onnx.load(tmp)
        values = [r.value for r in plans.regions] if plans.regions else plans.predicted_labels
        meta = {
            "autoseg_plans": dumps(plans),
            "configuration": config.name,
            "fold": fold,
            "patch_size": json.dumps(list(config.patch_size)),
            "label_values": json.dumps([int(v) for v in values]),
            "outputs": "sigmoid per region" if plans.regions else "softmax over classes",
        }
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, tmp)
        diff = _check(tmp, net, example.shape)
    log.info("exported fold %s of %s to %s", fold, folder.path, output)
    return OnnxExport(output, fold, diff)


def onnx_network(path: str | Path):
    """A callable ``(B, C, *patch) tensor -> (B, K, *patch) tensor`` running ``path`` with
    onnxruntime on the CPU: what ``autoseg.sliding_window.sliding_window_logits`` takes."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> torch.Tensor:
        image = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(["logits"], {"image": image})[0])

    return run


def _check(path: str, net: torch.nn.Module, shape: torch.Size) -> float | None:
    try:
        run = onnx_network(path)
    except AutosegError:
        log.warning("onnxruntime not installed: the exported model was not checked")
        return None
    batch = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = net(batch)
    diff = float((run(batch) - expected).abs().max())
    if diff > TOLERANCE:
        raise AutosegError(f"ONNX logits differ from torch by {diff:.2e} (> {TOLERANCE:g})")
    return diff
