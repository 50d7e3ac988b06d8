"""Prediction with model folders and folders of cases (the core: test_sliding_window.py)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from autoseg.data.checkpoint import CheckpointMeta, save_checkpoint
from autoseg.data.io import read_image
from autoseg.data.plans import Configuration, Normalization, Plans
from autoseg.errors import AutosegError
from autoseg.inference.inputs import group_input_files
from autoseg.inference.postprocess import PostprocessingDecision
from autoseg.inference.predictor import Predictor, predict_folder
from autoseg.inference.sliding_window import sliding_window_logits
from autoseg.networks.unet import build_network
from autoseg.serial import to_dict

# ---------------------------------------------------------------------------- input files


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return [folder / n for n in names]


def test_group_input_files(tmp_path: Path) -> None:
    touch(tmp_path / "a", "p_0000.nii.gz", "p_0001.nii.gz", "q_0000.nii.gz", "r.nii.gz")
    touch(tmp_path / "a", "notes.txt", ".hidden.nii.gz")
    cases, problems = group_input_files([tmp_path / "a"], num_channels=2)
    assert list(cases) == ["p", "r"]  # r: one 4D file
    assert [p.name for p in cases["p"]] == ["p_0000.nii.gz", "p_0001.nii.gz"]
    assert len(problems) == 1 and "q_0001.nii.gz" in problems[0].message

    touch(tmp_path / "b", "s_0000.nii.gz", "t.nii", "scan_0001.nii.gz", "u.nii.gz", "u_0000.nii.gz")
    cases, problems = group_input_files([tmp_path / "b"], num_channels=1)
    assert set(cases) == {"s", "t", "scan_0001"}
    assert len(problems) == 1 and "more than once" in problems[0].message

    files = touch(tmp_path / "c", "v_0000.nii.gz")
    assert list(group_input_files(files, 1)[0]) == ["v"]
    with pytest.raises(AutosegError, match="not found"):
        group_input_files([tmp_path / "missing"], 1)


# ---------------------------------------------------------------------------- model folders

LABELS = {0: "background", 1: "anterior", 2: "posterior"}


def tiny_config(name: str = "3d_fullres") -> Configuration:
    ndim = 2 if name == "2d" else 3
    return Configuration(
        name=name,
        spacing=(1.0, 1.0, 1.0),
        patch_size=(16,) * ndim,
        batch_size=2,
        strides=((1,) * ndim, (2,) * ndim),
        kernel_sizes=((3,) * ndim, (3,) * ndim),
        features_per_stage=(4, 8),
        normalization=(Normalization("zscore"),),
    )


def make_model(root: Path, name: str = "3d_fullres", folds: tuple[str, ...] = ("0", "1")) -> Path:
    config = tiny_config(name)
    plans = Plans("Task99_Synthetic", "default", 8.0, 4, ("MRI",), LABELS, {name: config})
    folder = root / "models" / "default" / name
    folder.mkdir(parents=True)
    plans.to_json(folder / "plans.json")
    for i, fold in enumerate(folds):
        torch.manual_seed(i)
        net = build_network(config, 1, len(LABELS), deep_supervision=True)
        meta = CheckpointMeta(name, str(fold), 0, len(LABELS), 1, to_dict(plans))
        save_checkpoint(
            folder / f"fold_{fold}" / "checkpoint_final.pt", net.state_dict(), None, meta
        )
    return folder


def oblique_nifti(path: Path, shape_ijk: tuple[int, int, int], seed: int = 0) -> nib.Nifti1Image:
    """A blob image whose affine rotates and scales (qform code 1, sform code 2)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape_ijk], indexing="ij"), -1)
    d = (((grid - np.array(shape_ijk) / 2) / (np.array(shape_ijk) / 4)) ** 2).sum(-1)
    data = (100 + 50 * (d < 1) + rng.normal(0, 5, shape_ijk)).astype(np.float32)
    data[:1] = 0
    c, s = np.cos(0.3), np.sin(0.3)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.3, 0.8, 1.7])
    affine[:3, 3] = [-12.5, 40.0, 7.25]
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return img


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def predictor(model: Path) -> Predictor:
    return Predictor.from_folder(model, device="cpu")


def test_predict_folder_keeps_geometry_and_survives_bad_files(
    predictor: Predictor, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    sources = {
        f"case_{i}": oblique_nifti(inputs / f"case_{i}_0000.nii.gz", (21, 18, 13), i)
        for i in range(2)
    }
    (inputs / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (inputs / "README.txt").write_text("stray")
    out = tmp_path / "out"
    report = predict_folder([inputs], out, predictor, save_probabilities=True, progress=False)
    assert [p.name for p in report.written] == ["case_0.nii.gz", "case_1.nii.gz"]
    assert len(report.failed) == 1 and "broken_0000.nii.gz" in report.failed[0].path
    for case, src in sources.items():
        pred = nib.load(str(out / f"{case}.nii.gz"))
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
        assert int(pred.header["qform_code"]) == 1 and int(pred.header["sform_code"]) == 2
        np.testing.assert_allclose(pred.header.get_qform(), src.header.get_qform(), atol=1e-5)
        values = np.asarray(pred.dataobj)
        assert set(np.unique(values)) <= set(LABELS)
        probs = np.load(out / f"{case}.npz")
        assert probs["probabilities"].dtype == np.float16
        assert probs["probabilities"].shape == (3, *reversed(src.shape))
        np.testing.assert_allclose(probs["probabilities"].astype(np.float32).sum(0), 1, atol=1e-2)
        argmax = probs["labels"][probs["probabilities"].argmax(0)]
        agree = (np.transpose(argmax, (2, 1, 0)) == values).mean()
        assert agree > 0.99  # float16 ties aside, the labels are the argmax
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_existing_outputs_are_not_overwritten(predictor: Predictor, tmp_path: Path) -> None:
    oblique_nifti(tmp_path / "in" / "a.nii.gz", (12, 10, 9))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.nii.gz").write_bytes(b"old")
    report = predict_folder([tmp_path / "in"], out, predictor, progress=False)
    assert report.written == () and [p.name for p in report.skipped] == ["a.nii.gz"]
    assert (out / "a.nii.gz").read_bytes() == b"old"
    report = predict_folder([tmp_path / "in"], out, predictor, overwrite=True, progress=False)
    assert [p.name for p in report.written] == ["a.nii.gz"]
    assert nib.load(str(out / "a.nii.gz")).shape == (12, 10, 9)
    with pytest.raises(AutosegError, match="must not be an input folder"):
        predict_folder([tmp_path / "in"], tmp_path / "in", predictor, progress=False)


def test_prediction_is_deterministic_and_uses_every_fold(
    predictor: Predictor, model: Path, tmp_path: Path
) -> None:
    assert predictor.folds == ("0", "1") and len(predictor.networks) == 2
    img = read_image([Path(oblique_nifti(tmp_path / "x.nii.gz", (15, 12, 9)).get_filename())])
    labels, probs = predictor.predict_image(img)
    again, probs_again = predictor.predict_image(img)
    np.testing.assert_array_equal(labels, again)
    np.testing.assert_array_equal(probs, probs_again)
    assert labels.shape == img.array.shape[1:] and probs.shape == (3, *labels.shape)
    # both folds count: the ensemble differs from fold 0 alone
    single = Predictor.from_folder(model, folds=[0], device="cpu")
    assert single.folds == ("0",)
    assert not np.allclose(single.predict_image(img)[1], probs, atol=1e-4)
    via_array = predictor.predict_array(img.array[0], img.geometry.spacing)
    np.testing.assert_array_equal(via_array, labels)


class ThresholdNet(torch.nn.Module):
    """Label 1 wherever the (normalised) input is bright: a known, multi-component prediction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = 10.0 * (x[:, :1] - 1.0)
        return torch.cat([torch.zeros_like(bright), bright, torch.full_like(bright, -50.0)], 1)


def test_postprocessing_is_applied(tmp_path: Path) -> None:
    folder = make_model(tmp_path, folds=("0",))
    PostprocessingDecision(largest_component_foreground=True).to_json(
        folder / "postprocessing.json"
    )
    array = np.zeros((1, 18, 20, 16), dtype=np.float32) + 100
    array[0, 2:8, 2:8, 2:8] = 300  # the larger bright blob (216 voxels)
    array[0, 12:15, 12:15, 10:13] = 300  # a smaller one, far away (27 voxels)
    raw_predictor = Predictor.from_folder(folder, device="cpu", tta=False, postprocess=False)
    post_predictor = Predictor.from_folder(folder, device="cpu", tta=False)
    raw_predictor.networks = post_predictor.networks = [ThresholdNet()]
    raw = raw_predictor.predict_array(array, (1.0, 1.0, 1.0))
    post = post_predictor.predict_array(array, (1.0, 1.0, 1.0))
    structure = np.ones((3, 3, 3))
    assert ndimage.label(raw > 0, structure)[1] == 2  # the raw prediction has two components
    expected = np.zeros_like(raw)
    expected[2:8, 2:8, 2:8] = 1
    np.testing.assert_array_equal(post, expected)  # only the larger one is left


@pytest.mark.parametrize("tile_scale", [1.0, 1.25])
def test_2d_model_predicts_slices(tmp_path: Path, tile_scale: float) -> None:
    folder = make_model(tmp_path, name="2d", folds=("all",))
    predictor = Predictor.from_folder(
        folder, device="cpu", max_tile_scale=tile_scale, cpu_bf16=False
    )  # fp32: compared to the hand-made tiles to 1e-4
    array = np.random.default_rng(0).normal(size=(7, 20, 9))
    labels = predictor.predict_array(array, (2, 1, 1))
    assert labels.shape == (7, 20, 9) and set(np.unique(labels)) <= set(LABELS)
    # the network grid, slice by slice by hand: 2D tiles of each Z slice, mirrored in-plane
    grid, _ = predictor.preprocess(predictor_image(array, (2.0, 1.0, 1.0)))
    tile = predictor.tile_size(grid.shape[1:])
    assert tile == ((16, 16) if tile_scale == 1.0 else (20, 16))  # Y 20 <= 1.25 x 16: widened
    probs = predictor.predict_preprocessed(grid)
    net = predictor.networks[0]
    image = torch.from_numpy(grid)
    for z in range(grid.shape[1]):
        logits = sliding_window_logits(net, image[:, z], tile, 3, mirror_axes=(0, 1))
        np.testing.assert_allclose(
            probs[:, z], torch.softmax(logits, 0).numpy(), rtol=1e-4, atol=1e-5
        )


def predictor_image(array: np.ndarray, spacing: tuple[float, float, float]):
    """An ``Image`` of a (Z, Y, X) array with an axis-aligned geometry."""
    from autoseg.data.io import Geometry, Image

    affine = np.diag([*reversed(spacing), 1.0])
    geometry = Geometry(
        shape=array.shape, spacing=spacing, affine=tuple(map(tuple, affine.tolist()))
    )
    return Image(array[None].astype(np.float32), geometry)


def test_not_a_model_folder_is_refused(tmp_path: Path, model: Path) -> None:
    with pytest.raises(AutosegError, match="not an autoseg model folder.*plans.json"):
        Predictor.from_folder(tmp_path, device="cpu")
    (tmp_path / "plans.json").write_text((model / "plans.json").read_text())
    with pytest.raises(AutosegError, match="not an autoseg model folder.*fold_"):
        Predictor.from_folder(tmp_path, device="cpu")
    with pytest.raises(AutosegError, match="fold.*3"):
        Predictor.from_folder(model, folds=[3], device="cpu")
    with pytest.raises(AutosegError, match="not found"):
        Predictor.from_folder(tmp_path / "nothing", device="cpu")


def test_wrong_channel_count_fails_the_case_only(predictor: Predictor, tmp_path: Path) -> None:
    data = np.ones((8, 9, 10, 2), dtype=np.float32)  # a 2-channel 4D file for a 1-channel model
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "two.nii.gz"))
    oblique_nifti(tmp_path / "good.nii.gz", (9, 9, 9))
    report = predict_folder(
        [tmp_path / "two.nii.gz", tmp_path / "good.nii.gz"],
        tmp_path / "o",
        predictor,
        progress=False,
    )
    assert [p.name for p in report.written] == ["good.nii.gz"]
    assert len(report.failed) == 1 and "channel" in report.failed[0].message
    assert sorted(os.listdir(tmp_path / "o")) == ["good.nii.gz"]
