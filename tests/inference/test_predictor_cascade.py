"""Predictor for a cascade stage: the previous stage's one-hot channels, and the previous stage
predicting with the cascade's own settings. Fast: tiny networks (patch 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import autoseg.inference.case_stages as case_stages_module
import autoseg.inference.predictor as predictor_module
from autoseg.data.checkpoint import CheckpointMeta, save_checkpoint
from autoseg.data.io import Image
from autoseg.data.plans import Plans
from autoseg.inference.postprocess import PostprocessingDecision
from autoseg.inference.predictor import Predictor
from autoseg.networks.unet import build_network
from autoseg.serial import to_dict
from tests.inference.test_predictor import LABELS, _image, config, image


def _cascade_plans() -> Plans:
    cascade = config("3d_cascade_fullres", previous_stage="3d_lowres")
    return Plans("Task99_X", "default", 8.0, 4, ("MRI",), LABELS, {
        "3d_lowres": config("3d_lowres"), "3d_cascade_fullres": cascade
    })  # fmt: skip


def _cascade_models(tmp_path: Path, plans: Plans) -> Path:
    """Model folders of both stages (fold 0, ``checkpoint_best``), the first post-processed."""
    root = tmp_path / "models" / "default"
    for name, channels in (("3d_lowres", 1), ("3d_cascade_fullres", 3)):
        (root / name).mkdir(parents=True)
        plans.to_json(root / name / "plans.json")
        torch.manual_seed(3)
        net = build_network(plans.configurations[name], channels, 3)
        meta = CheckpointMeta(name, "0", 0, 3, channels, to_dict(plans))
        save_checkpoint(root / name / "fold_0" / "checkpoint_best.pt", net.state_dict(), None, meta)
    PostprocessingDecision(largest_component_labels=(1, 2)).to_json(
        root / "3d_lowres" / "postprocessing.json"
    )
    return root


def test_cascade_stage_gets_the_previous_stage_one_hot(tmp_path: Path) -> None:
    plans = _cascade_plans()
    cascade = plans.configurations["3d_cascade_fullres"]
    seen = []

    def previous(img: Image, case_id: str) -> np.ndarray:
        seen.append(case_id)
        low = np.zeros(img.array.shape[1:], dtype=np.int64)
        low[:2], low[2:3] = 1, 2
        return low

    torch.manual_seed(0)
    weights = build_network(cascade, 3, 3).state_dict()  # 1 channel + 2 foreground labels
    p = Predictor([weights], plans, cascade, device="cpu", previous_stage=previous)
    array, _ = p.preprocess(_image(image((4, 4, 4)) + 5), case_id="c1")
    assert seen == ["c1"] and array.shape == (3, 4, 4, 4)
    np.testing.assert_array_equal(array[1, :2], 1)
    np.testing.assert_array_equal(array[1, 2:], 0)
    np.testing.assert_array_equal(array[2, 2], 1)
    assert array[2].sum() == 16

    # from a model folder: the previous stage's folder beside it, with the same settings,
    # and without its post-processing (the cascade was trained on raw previous-stage maps)
    root = _cascade_models(tmp_path, plans)
    settings = {
        "checkpoint": "best",
        "device": "cpu",
        "tta": False,
        "step": 1.0,
        "max_tile_scale": 1.25,
    }
    stage = Predictor.from_folder(root / "3d_cascade_fullres", **settings)
    low = Predictor.from_folder(root / "3d_lowres", postprocess=False, **settings)
    other = Predictor.from_folder(root / "3d_lowres", **{**settings, "tta": True, "step": 0.5})
    img = _image(image((12, 9, 10), seed=4) + 3)
    got = stage.previous_stage(img, "c2")
    np.testing.assert_array_equal(got, low.predict_image(img)[0])
    assert not np.array_equal(got, other.predict_image(img)[0])  # the settings matter here
    post = Predictor.from_folder(root / "3d_lowres", **settings).predict_image(img)[0]
    assert not np.array_equal(got, post)  # and so does the post-processing
    labels, probs = stage.predict_image(img)
    assert labels.shape == (12, 9, 10) and probs.shape == (3, 12, 9, 10)


@pytest.mark.parametrize(
    "settings",
    [
        {"tta": True, "step": 0.75, "tile_batch": 3, "compile": True, "max_tile_scale": 2.0},
        {"tta": False, "step": 1.0, "tile_batch": 1, "compile": False, "max_tile_scale": 1.0},
    ],
)
def test_the_previous_stage_predicts_with_the_cascade_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict
) -> None:
    """``--step``, ``--disable-tta``, the tile batch, ``--tile-scale`` and ``--compile`` reach
    the previous stage too (the defaults would be TTA on, step 0.5, a tile batch from the tile
    size, tiles up to 1.25 patches and no compilation on the CPU)."""
    root = _cascade_models(tmp_path, _cascade_plans())
    calls, compiled = [], []
    window = case_stages_module.sliding_window_logits

    def fake_compile(net: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
        compiled.append(tuple(example.shape))
        return net

    def recording(net, image, tile, num_classes, **kwargs):
        assert kwargs.pop("keep") is None  # not CT: no body mask
        kwargs.pop("background")
        kwargs.pop("progress")  # the tile counter of predict's progress
        calls.append({"tile": tuple(tile), **kwargs})
        return window(net, image, tile, num_classes, **kwargs)

    monkeypatch.setattr(case_stages_module, "sliding_window_logits", recording)
    monkeypatch.setattr(predictor_module, "compile_with_fallback", fake_compile)
    stage = Predictor.from_folder(
        root / "3d_cascade_fullres", checkpoint="best", device="cpu", **settings
    )
    stage.previous_stage(_image(image((12, 9, 10), seed=4) + 3), "c")
    mirror_axes = (0, 1, 2) if settings["tta"] else ()
    # a 12 x 9 x 10 image, patch 8, stride 2: up to 2 patches every axis is one tile; at 1.25
    # (the default) the 12 would be tiled with the patch
    tile = (12, 10, 10) if settings["max_tile_scale"] == 2.0 else (8, 8, 8)
    expected = {"tile": tile, "step": settings["step"], "mirror_axes": mirror_axes}
    assert calls == [{**expected, "tile_batch": settings["tile_batch"]}]
    batch = settings["tile_batch"]  # the previous stage (1 channel), then this one (3)
    assert compiled == ([(batch, 1, 8, 8, 8), (batch, 3, 8, 8, 8)] if settings["compile"] else [])
