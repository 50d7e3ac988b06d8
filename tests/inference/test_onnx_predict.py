"""ONNX with dynamic spatial axes: ``onnx_predictor`` reproduces ``predict`` in 2D and 3D with its
default (widened) tiles; a cascade stage is exported with its extra inputs and refused clearly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.data.checkpoint import CheckpointMeta, save_checkpoint
from autoseg.data.io import read_image
from autoseg.data.model_folder import ModelFolder
from autoseg.data.plans import Plans
from autoseg.errors import AutosegError
from autoseg.inference.cascade import input_channels
from autoseg.inference.onnx_export import onnx_metadata, onnx_predictor, widest_tile
from autoseg.inference.predictor import Predictor
from autoseg.networks.unet import build_network
from autoseg.serial import to_dict
from tests.inference.test_exchange import make_model
from tests.reliability_helpers import cli

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _model(folder: Path, plans: Plans, name: str, seed: int) -> Path:
    """A model folder of configuration ``name`` with random weights in fold ``all``."""
    config = plans.configuration(name)
    channels = input_channels(plans, config)
    torch.manual_seed(seed)
    net = build_network(config, channels, plans.num_classes)
    model = ModelFolder(folder / name)
    model.path.mkdir(parents=True)
    plans.to_json(model.plans)
    meta = CheckpointMeta(name, "all", 0, plans.num_classes, channels, to_dict(plans))
    save_checkpoint(model.checkpoint("all"), net.state_dict(), None, meta)
    return model.path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("onnx_predict")
    root, model3d = make_model(tmp, "Task84_OnnxPredict")
    plans = Plans.from_json(model3d / "plans.json")
    fullres = plans.configuration("3d_fullres")
    cascade = dataclasses.replace(fullres, name="3d_cascade_fullres", previous_stage="3d_lowres")
    lowres = dataclasses.replace(fullres, name="3d_lowres")
    plans = dataclasses.replace(
        plans, configurations={**plans.configurations, "3d_lowres": lowres, cascade.name: cascade}
    )
    return {
        "root": root,
        "3d_fullres": model3d,
        "2d": _model(model3d.parent, plans, "2d", 1),
        "3d_cascade_fullres": _model(model3d.parent, plans, "3d_cascade_fullres", 2),
    }


@pytest.mark.parametrize("name", ["3d_fullres", "2d"])
def test_onnx_predictor_reproduces_predict_with_its_default_tiles(
    models: dict[str, Path], name: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{name}.onnx"
    result = cli("export", models[name], "--onnx", path)
    assert result.exit_code == 0, result.output
    reference = Predictor.from_folder(models[name], device="cpu", cpu_bf16=False)  # ONNX: fp32
    onnx = onnx_predictor(path)
    config = reference.configuration
    # an image a little larger than the patch: predict widens the 3D tile to cover it
    shape = [p + 3 for p in config.patch_size]
    if config.ndim == 2:
        shape = [5, *shape]
    array = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    if config.ndim == 3:
        assert reference.tile_size(shape) != tuple(config.patch_size)  # the widened tile
    expected = reference.predict_preprocessed(array)
    got = onnx.predict_preprocessed(array)
    assert float(np.abs(got - expected).max()) < 1e-4
    image = read_image([sorted((models["root"] / "imagesTr").iterdir())[0]])
    labels, _ = onnx.predict_image(image)
    np.testing.assert_array_equal(labels, reference.predict_image(image)[0])


def test_the_export_is_checked_at_the_patch_and_the_widest_tile(models: dict[str, Path]) -> None:
    config = Plans.from_json(models["3d_fullres"] / "plans.json").configuration("3d_fullres")
    widest = widest_tile(config)
    assert all(w >= p for w, p in zip(widest, config.patch_size, strict=True))
    assert widest != tuple(config.patch_size)
    assert all(w % s == 0 for w, s in zip(widest, config.total_stride(), strict=True))


def test_a_cascade_stage_exports_with_its_inputs_and_onnx_predictor_refuses_it(
    models: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "cascade.onnx"
    result = cli("export", models["3d_cascade_fullres"], "--onnx", path)
    assert result.exit_code == 0, result.output  # was a traceback: built with the image's 1 channel
    meta = onnx_metadata(path)
    assert meta["previous_stage"] == "3d_lowres" and meta["input_channels"] == "3"  # 1 + 2 labels
    with pytest.raises(AutosegError, match="cascade stage needs the 3d_lowres segmentation"):
        onnx_predictor(path)
