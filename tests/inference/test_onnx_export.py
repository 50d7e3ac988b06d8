"""ONNX export of one fold, checked with onnxruntime on the CPU (issue 11 item 8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.plans import Plans
from autoseg.inference.onnx_export import TOLERANCE, onnx_network
from autoseg.inference.sliding_window import sliding_window_logits
from autoseg.networks.unet import build_network
from tests.inference.test_exchange import make_model
from tests.reliability_helpers import assert_clean_failure, cli

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("onnx")
    _, model = make_model(tmp, "Task85_Onnx")
    out = tmp / "model.onnx"
    result = cli("export", model, "--onnx", out)
    assert result.exit_code == 0, result.output
    assert "max |logit difference|" in result.output
    return model, out


def _torch_net(model: Path) -> tuple[torch.nn.Module, Plans]:
    plans = Plans.from_json(model / "plans.json")
    net = build_network(plans.configuration("3d_fullres"), 1, plans.num_classes, False)
    net.load_state_dict(load_checkpoint(model / "fold_all/checkpoint_final.pt").model_state)
    net.deep_supervision = False
    return net.eval(), plans


def test_onnx_logits_match_torch_for_any_batch(exported: tuple[Path, Path]) -> None:
    model, path = exported
    net, plans = _torch_net(model)
    patch = plans.configuration("3d_fullres").patch_size
    run = onnx_network(path)
    for batch in (1, 3):  # the batch axis is dynamic
        x = torch.randn((batch, 1, *patch), generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            expected = net(x)
        got = run(x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) <= TOLERANCE
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["patch_size"]) == list(patch)
    assert json.loads(meta["label_values"]) == list(plans.predicted_labels)
    assert json.loads(meta["autoseg_plans"])["dataset_name"] == "Task85_Onnx"


def test_sliding_window_runs_on_onnx(exported: tuple[Path, Path]) -> None:
    """The docs' recipe: the ONNX session as the network of autoseg's sliding window."""
    model, path = exported
    net, plans = _torch_net(model)
    patch = plans.configuration("3d_fullres").patch_size
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(1, *(p + 7 for p in patch))))
    image = image.float()
    kwargs = {"step": 0.5, "mirror_axes": (0,), "tile_batch": 2}
    with torch.inference_mode():
        expected = sliding_window_logits(net, image, patch, plans.num_classes, **kwargs)
    got = sliding_window_logits(onnx_network(path), image, patch, plans.num_classes, **kwargs)
    assert float((got - expected).abs().max()) <= TOLERANCE


def test_onnx_export_refusals(exported: tuple[Path, Path], tmp_path: Path) -> None:
    model, path = exported
    assert_clean_failure(cli("export", model, "--onnx", path), "exists")
    assert_clean_failure(cli("export", model, "--onnx", tmp_path / "x.onnx", "-f", "3"), "fold 3")
    assert_clean_failure(cli("export", model), "either ARCHIVE")
    assert not (tmp_path / "x.onnx").exists()
