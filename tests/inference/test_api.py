"""The Python API (autoseg.load_model) on a tiny random-weight model: geometry kept, axis
orders honoured, probabilities, clear errors, no global torch state changed."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import autoseg
import autoseg.device
from autoseg.data.io import read_image
from autoseg.device import cpu_count
from autoseg.errors import AutosegError
from tests.inference.test_predict import make_model, oblique_nifti

SPACING_XYZ = (0.9, 1.1, 2.5)  # anisotropic: a swapped axis resamples differently


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def model(model_dir: Path):
    return autoseg.load_model(model_dir, device="cpu", tta=False)


def _blob(shape=(20, 17, 9), seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).transpose(1, 2, 3, 0) * np.asarray(SPACING_XYZ)
    centre = np.asarray(shape) * np.asarray(SPACING_XYZ) / 2
    blob = np.linalg.norm(grid - centre, axis=-1) < 6
    return (100 + 80 * blob + rng.normal(0, 10, shape)).astype(np.float32)


def test_predict_keeps_the_geometry_of_an_oblique_image(model, tmp_path: Path) -> None:
    image = oblique_nifti(tmp_path / "case.nii.gz", (21, 18, 11))
    seg = model.predict(image)
    assert isinstance(seg, nib.Nifti1Image) and seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine)
    assert int(seg.header["qform_code"]) == 1 and int(seg.header["sform_code"]) == 2
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(model.label_values)
    # the same as the file route (read_image + Predictor), transposed back to (i, j, k)
    labels, _ = model.predictor.predict_image(read_image([tmp_path / "case.nii.gz"]))
    np.testing.assert_array_equal(np.asarray(seg.dataobj), np.transpose(labels, (2, 1, 0)))


def test_probabilities_are_a_4d_image_that_explains_the_labels(model, tmp_path: Path) -> None:
    image = oblique_nifti(tmp_path / "case.nii.gz", (16, 14, 12), seed=1)
    seg, probs = model.predict(image, probabilities=True)
    assert probs.shape == (*image.shape, 3) and probs.get_data_dtype() == np.float32
    p = probs.get_fdata()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-4)
    values = np.asarray(model.label_values)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), values[np.argmax(p, axis=-1)])


def test_axis_orders_give_the_same_segmentation(model) -> None:
    xyz = _blob()
    image = nib.Nifti1Image(xyz, np.diag([*SPACING_XYZ, 1.0]))
    reference = np.asarray(model.predict(image).dataobj)
    assert len(np.unique(reference)) > 1  # the comparison is not between two blank maps
    labels = model.predict_array(xyz, SPACING_XYZ, axis_order="xyz")
    np.testing.assert_array_equal(labels, reference)
    for order in ("zyx", "yxz", "zxy"):
        perm = ["xyz".index(a) for a in order]
        spacing = [SPACING_XYZ[i] for i in perm]
        out = model.predict_array(np.transpose(xyz, perm), spacing, axis_order=order)
        np.testing.assert_array_equal(out, np.transpose(reference, perm), err_msg=order)
    chan = model.predict_array(xyz[..., None], SPACING_XYZ, axis_order="xyzc")
    np.testing.assert_array_equal(chan, reference)
    # a wrong order (spacing read along the wrong axes) is a different segmentation
    wrong = model.predict_array(xyz, SPACING_XYZ[::-1], axis_order="xyz")
    assert not np.array_equal(wrong, reference)


def test_array_probabilities_follow_the_input_order(model) -> None:
    zyx = np.transpose(_blob(), (2, 1, 0))
    labels, probs = model.predict_array(
        zyx, SPACING_XYZ[::-1], axis_order="zyx", probabilities=True
    )
    assert probs.shape == (3, *zyx.shape) and probs.dtype == np.float32
    np.testing.assert_array_equal(labels, np.asarray(model.label_values)[probs.argmax(0)])


@pytest.mark.parametrize(
    ("shape", "spacing", "order", "message"),
    [
        ((8, 8, 8), (1, 1, 1), "xy", "permutation"),
        ((8, 8, 8), (1, 1, 1), "xyy", "permutation"),
        ((8, 8, 8), (1, 1, 1), "xyzc", "4 axes"),
        ((8, 8, 8), (1, 1), "xyz", "3 values"),
        ((2, 8, 8, 8), (1, 1, 1), "cxyz", "channel"),
    ],
)
def test_bad_array_calls_are_clear_errors(model, shape, spacing, order, message) -> None:
    with pytest.raises(AutosegError, match=message):
        model.predict_array(np.ones(shape, np.float32), spacing, axis_order=order)


def test_axis_order_is_required(model) -> None:
    with pytest.raises(TypeError):
        model.predict_array(np.ones((8, 8, 8)), (1, 1, 1))  # no guessing


def test_loading_and_predicting_leave_torch_settings_alone(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a machine with nothing else running: the predictor takes every CPU (a busy one: fewer,
    # tests/test_cpu_share.py)
    (tmp_path / "stat").write_text("procs_running 1\n")
    monkeypatch.setattr(autoseg.device, "_PROC_STAT", tmp_path / "stat")
    before = torch.get_num_threads()
    mine = cpu_count() + 1  # a value no predictor would choose
    torch.set_num_threads(mine)
    try:
        model = autoseg.load_model(model_dir, device="cpu", tta=False)
        assert torch.get_num_threads() == mine
        seen = []
        model.predictor.networks = [
            _Spy(net, seen) for net in model.predictor.networks
        ]  # records the thread count while predicting
        model.predict_array(_blob(), SPACING_XYZ, axis_order="xyz")
        assert seen and set(seen) == {cpu_count()}  # the predictor's choice, during the call
        assert torch.get_num_threads() == mine  # and the caller's afterwards
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.set_num_threads(before)


class _Spy(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, seen: list) -> None:
        super().__init__()
        self.net, self.seen = net, seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.net(x)


def test_not_a_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AutosegError, match="model folder not found"):
        autoseg.load_model(tmp_path / "nothing", device="cpu")
