"""``predict --runtime openvino``: the labels and logits of torch fp32 (2 folds, mirroring TTA, a
widened tile), bf16 only when asked for, and the refusals (exit 2, nothing written).

The refusals run without openvino; the rest is skipped cleanly where it is not installed. Fast:
the tiny 2-fold model of ``test_predict`` (patch 16); each OpenVINO conversion costs about 2 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autoseg.inference.predictor import Predictor
from autoseg.inference.runtime_openvino import CACHE_SIZE, OpenVinoNetwork
from tests.inference.test_predict import make_model, oblique_nifti
from tests.reliability_helpers import assert_clean_failure, cli

SHAPE = (19, 18, 17)  # just over the 16^3 patch: predict widens the 3D tile to cover it


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("home"))  # folds 0 and 1


@pytest.fixture(scope="module")
def fold0(model: Path) -> dict[str, Predictor]:
    """Fold 0 under torch fp32, OpenVINO f32 and OpenVINO with the bf16 hint."""
    pytest.importorskip("openvino")
    kw = {"folds": ["0"], "device": "cpu"}
    return {
        "torch": Predictor.from_folder(model, cpu_bf16=False, **kw),
        "f32": Predictor.from_folder(model, runtime="openvino", cpu_bf16=False, **kw),
        "bf16": Predictor.from_folder(model, runtime="openvino", cpu_bf16=True, **kw),
    }


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, *SHAPE)).astype(np.float32)


def test_openvino_logits_equal_torch_for_any_batch_and_shape(fold0: dict[str, Predictor]) -> None:
    net, ov = fold0["torch"].networks[0], fold0["f32"].networks[0]
    assert isinstance(ov, OpenVinoNetwork) and ov.precision == "f32"
    ov.compiled.clear()
    gen = torch.Generator().manual_seed(0)
    for shape in [(3, 1, 16, 16, 16), (1, 1, 16, 16, 16), (2, 1, 20, 16, 24)]:
        x = torch.randn(shape, generator=gen)
        with torch.inference_mode():
            expected = net(x)
        got = ov(x)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        spread = float(expected.max() - expected.min())
        assert float((got - expected).abs().max()) < 1e-4 * spread
    assert len(ov.compiled) == CACHE_SIZE  # one static compile per shape
    ov(torch.randn((4, 1, 16, 16, 16), generator=gen))  # a fourth: the oldest shape goes
    assert [shape for shape, _ in ov.compiled] == [
        (1, 1, 16, 16, 16),
        (2, 1, 20, 16, 24),
        (4, 1, 16, 16, 16),
    ]


def test_the_bf16_hint_runs_bf16_and_stays_close(fold0: dict[str, Predictor]) -> None:
    import openvino

    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("OpenVINO's CPU plugin reports no native bf16 here")
    assert fold0["bf16"].networks[0].precision == "bf16"
    x = _image()
    assert fold0["torch"].tile_size(SHAPE) != (16, 16, 16)  # the widened tile
    fp32 = fold0["torch"].predict_preprocessed(x)  # (K, *SHAPE) probabilities, TTA on
    f32 = fold0["f32"].predict_preprocessed(x)
    bf16 = fold0["bf16"].predict_preprocessed(x)
    assert float(np.abs(f32 - fp32).max()) < 1e-5  # f32 is f32, not OpenVINO's bf16 default
    assert float(np.abs(bf16 - fp32).max()) > 1e-4  # bf16 rounding shows: bf16 really ran
    assert np.allclose(bf16, fp32, atol=0.05)
    assert (bf16.argmax(0) == fp32.argmax(0)).mean() > 0.98  # a random net: near-ties flip


def test_predict_runtime_openvino_labels_equal_torch(model: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    inputs = tmp_path / "in"
    oblique_nifti(inputs / "case_0_0000.nii.gz", SHAPE, 0)
    outputs = {}
    for runtime in ("torch", "openvino"):  # both folds, mirroring TTA, the widened tile
        out = tmp_path / runtime
        args = (
            "-i",
            inputs,
            "-o",
            out,
            "-m",
            model,
            "--device",
            "cpu",
            "--runtime",
            runtime,
            "--no-cpu-bf16",
        )
        result = cli("predict", *args)
        assert result.exit_code == 0, result.output
        assert ("OpenVINO: fold 1 converted in" in result.output) == (runtime == "openvino")
        outputs[runtime] = np.asarray(nib.load(str(out / "case_0.nii.gz")).dataobj)
    agree = (outputs["openvino"] == outputs["torch"]).mean()
    assert agree >= 0.999, agree
    assert len(np.unique(outputs["torch"])) > 1  # not a trivial all-background map


def test_a_2d_model_runs_slice_by_slice(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    model2d = make_model(tmp_path, "2d", folds=("0",))
    x = np.random.default_rng(1).normal(size=(1, 3, 19, 18)).astype(np.float32)
    expected = Predictor.from_folder(model2d, device="cpu", cpu_bf16=False).predict_preprocessed(x)
    got = Predictor.from_folder(model2d, runtime="openvino", cpu_bf16=False).predict_preprocessed(
        x
    )  # auto: CPU
    assert float(np.abs(got - expected).max()) < 1e-5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--runtime", "onnx"), "--runtime onnx: expected one of torch, openvino"),
        (("--runtime", "openvino", "--device", "cuda"), "runs on the CPU, not on --device cuda"),
        (("--runtime", "openvino", "--device", "cpu", "--compile"), "--compile is torch.compile"),
        (("--runtime", "openvino", "--device", "cpu"), "needs the openvino extra: pip install"),
    ],
)
def test_runtime_refusals(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple, message: str
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: import fails
    inputs = tmp_path / "in"
    oblique_nifti(inputs / "case_0_0000.nii.gz", SHAPE, 0)
    out = tmp_path / "out"
    result = cli("predict", "-i", inputs, "-o", out, "-m", model, *args)
    assert_clean_failure(result, message)
    assert not out.exists()  # nothing written
