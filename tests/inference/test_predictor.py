"""Predictor: fold averaging, softmax / sigmoid, label values, step and tile wiring, model-folder
checks. Fast: tiny networks (patch 8) or hand-made ones whose logits are known."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import autoseg.inference.predictor as predictor_module
from autoseg.data.checkpoint import CheckpointMeta, save_checkpoint
from autoseg.data.io import Geometry, Image
from autoseg.data.plans import Configuration, Normalization, Plans
from autoseg.data.regions import Region
from autoseg.errors import AutosegError
from autoseg.inference.postprocess import PostprocessingDecision
from autoseg.inference.predictor import Predictor
from autoseg.networks.unet import build_network
from autoseg.serial import to_dict

LABELS = {0: "background", 1: "a", 2: "b"}


def config(name: str = "3d_fullres", **changes: object) -> Configuration:
    ndim = 2 if name == "2d" else 3
    base = Configuration(
        name=name,
        spacing=(1.0, 1.0, 1.0),
        patch_size=(8,) * ndim,
        batch_size=2,
        strides=((1,) * ndim, (2,) * ndim),
        kernel_sizes=((3,) * ndim, (3,) * ndim),
        features_per_stage=(2, 4),
        normalization=(Normalization("zscore"),),
    )
    return dataclasses.replace(base, **changes)


def make_plans(name: str = "3d_fullres", labels=LABELS, **kwargs: object) -> Plans:
    return Plans("Task99_X", "default", 8.0, 4, ("MRI",), labels, {name: config(name)}, **kwargs)


def state(plans: Plans, name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_network(plans.configurations[name], 1, plans.num_classes).state_dict()


def predictor(name: str = "3d_fullres", folds: int = 1, plans: Plans | None = None, **kw):
    plans = plans or make_plans(name)
    weights = [state(plans, name, seed) for seed in range(folds)]
    return Predictor(weights, plans, name, **{"device": "cpu", **kw})


class Linear(torch.nn.Module):
    """Logits ``a[k] * x + b[k]``: flip-equivariant, known, different per fold."""

    def __init__(self, a: list[float], b: list[float]) -> None:
        super().__init__()
        self.a, self.b = torch.tensor(a), torch.tensor(b)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        shape = (1, -1, *([1] * (x.ndim - 2)))
        return self.a.view(shape) * x[:, :1] + self.b.view(shape)


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(0))
    return e / e.sum(0)


# ---------------------------------------------------------------------------- the numbers


@pytest.mark.parametrize("name", ["3d_fullres", "2d"])
def test_fold_logits_are_averaged_then_softmaxed(name: str) -> None:
    folds = [
        Linear([1, 2, -1], [0, 1, 2]),
        Linear([0, -2, 3], [1, 0, 0]),
        Linear([2, 0, 0], [0, 0, 9]),
    ]
    p = predictor(name, folds=3)
    p.networks = folds
    x = image((3, 9, 10))
    mean = sum(
        f.a.numpy()[:, None, None, None] * x + f.b.numpy()[:, None, None, None] for f in folds
    )
    expected = softmax(mean / 3)
    got = p.predict_preprocessed(x)
    assert got.dtype == np.float32 and got.shape == (3, 3, 9, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_softmax_is_stable_for_large_logits() -> None:
    p = predictor()
    p.networks = [Linear([0, 0, 1], [100.0, 200.0, 0.0])]
    x = np.zeros((1, 4, 4, 4), dtype=np.float32)
    x[0, 0] = 1000.0  # there class 2 wins (1000 > 200), elsewhere class 1
    # each voxel's own maximum comes off: one maximum of the whole image (1000) would leave
    # exp(200 - 1000) = 0 for every class of the other voxels
    got = p.predict_preprocessed(x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.sum(0), 1, rtol=1e-6)
    assert (got[2, 0] > 0.99).all() and (got[1, 1:] > 0.99).all()


def test_regions_get_one_sigmoid_each_and_later_regions_on_top() -> None:
    regions = (Region("whole", (1, 2), 1), Region("core", (2,), 2))
    plans = make_plans(regions=regions)
    p = predictor(plans=plans, folds=2, tta=False)
    assert p.num_classes == 2 and p.label_values.tolist() == [1, 2]
    p.networks = [Linear([1, 2], [0, -1]), Linear([3, 0], [0, 1])]
    x = image((4, 5, 6))
    mean = (np.array([4, 2])[:, None, None, None] * x + np.array([0, 0])[:, None, None, None]) / 2
    probs = p.predict_preprocessed(x)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-mean)), rtol=1e-5, atol=1e-6)
    # finalize: outside the crop no region; inside, the core over the whole
    array = np.zeros((1, 6, 6, 6), dtype=np.float32)
    array[0, 1:5, 1:5, 1:5] = image((4, 4, 4))[0] + 5
    grid, props = p.preprocess(_image(array))
    assert grid.shape[1:] == (4, 4, 4)  # cropped to the non-zero box
    sure = np.zeros((2, 4, 4, 4), dtype=np.float32)
    sure[0] = 0.9  # whole everywhere in the box
    sure[1, :2] = 0.8  # core in its first half along Z
    labels, restored = p.finalize(sure, props)
    assert restored.shape == (2, 6, 6, 6) and restored[:, 0].max() == 0
    expected = np.zeros((6, 6, 6), dtype=np.uint8)
    expected[1:5, 1:5, 1:5] = 1
    expected[1:3, 1:5, 1:5] = 2
    np.testing.assert_array_equal(labels, expected)
    p.postprocessing = PostprocessingDecision(largest_component_labels=(2,))
    sure[1, 3] = 0.8  # a second, smaller core component: it goes to the background
    labels, _ = p.finalize(sure, props)
    expected[4, 1:5, 1:5] = 0
    np.testing.assert_array_equal(labels, expected)


def _image(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Image:
    affine = np.diag([*reversed(spacing), 1.0])
    geometry = Geometry(array.shape[1:], tuple(spacing), tuple(map(tuple, affine.tolist())))
    return Image(array, geometry)


@pytest.mark.parametrize(
    "labels,dtype",
    [
        ({0: "bg", 1: "a", 255: "b"}, np.uint8),
        ({0: "bg", 1: "a", 256: "b"}, np.int32),
        ({0: "bg", 7: "a", 2: "ignore", 3: "b"}, np.uint8),  # the ignore label has no class
    ],
)
def test_finalize_writes_label_values_by_argmax(labels: dict, dtype: type) -> None:
    plans = make_plans(labels=labels)
    p = predictor(plans=plans)
    values = [v for v in sorted(labels) if labels[v] != "ignore"]
    assert p.label_values.tolist() == values and p.num_classes == 3
    array = image((3, 4, 5)) + 10  # no zero voxel: no crop
    _, props = p.preprocess(_image(array))
    probs = np.random.default_rng(1).random((3, 3, 4, 5)).astype(np.float32)
    labels_out, restored = p.finalize(probs, props)
    assert labels_out.dtype == dtype and restored.dtype == np.float32
    np.testing.assert_allclose(restored, probs, rtol=1e-6)
    np.testing.assert_array_equal(labels_out, np.array(values)[probs.argmax(0)])
    # post-processing: the largest foreground component only
    probs[:] = 0
    probs[0] = 1
    probs[1, :, 0, 0] = 2  # a line of 3 voxels
    probs[2, 0, 3, 3:] = 2  # a separate pair
    p.postprocessing = PostprocessingDecision(largest_component_foreground=True)
    labels_out, _ = p.finalize(probs, props)
    expected = np.zeros((3, 4, 5), dtype=dtype)
    expected[:, 0, 0] = values[1]
    np.testing.assert_array_equal(labels_out, expected)


# ---------------------------------------------------------------------------- wiring


def test_tile_batch_step_and_tile_size_reach_the_sliding_window() -> None:
    p = predictor(tile_batch=3)
    assert p.tile_batch((8, 8, 8)) == 3
    net = Linear([1, 1, 1], [0, 0, 0])
    p.networks = [net]
    p.predict_preprocessed(image((8, 8, 8)))
    assert net.batches == [3, 3, 2]  # one tile, 8 mirrorings (Z, Y, X), 3 per pass
    assert predictor().tile_batch((8, 8, 8)) == 8  # default_tile_batch on the CPU
    for step, tiles in ((1.0, 2), (0.5, 3)):
        p = predictor(tta=False, tile_batch=1, step=step)
        net = Linear([1, 1, 1], [0, 0, 0])
        p.networks = [net]
        p.predict_preprocessed(image((16, 16, 8)))
        assert len(net.batches) == tiles * tiles
    wide = predictor("2d", max_tile_scale=1.25, tta=False, tile_batch=100)
    assert wide.tile_size((3, 9, 10)) == (10, 10)  # 2D: the in-plane axes, stride 2
    assert predictor(max_tile_scale=1.25).tile_size((9, 10, 13)) == (10, 10, 8)
    assert predictor().tile_size((9, 10, 9)) == (10, 10, 10)  # the default widens (1.25)
    assert predictor(max_tile_scale=1.0).tile_size((9, 10, 9)) == (8, 8, 8)  # the patch
    flat = predictor("2d")  # 2D keeps the patch by default (the demo's check, benchmarks.md)
    assert flat.max_tile_scale == 1.0 and flat.tile_size((3, 9, 10)) == (8, 8)
    net = Linear([1, 1, 1], [0, 0, 0])
    wide.networks = [net]
    wide.predict_preprocessed(image((3, 9, 10)))
    assert net.batches == [3]  # one widened tile per slice


def test_bad_step_sizes_are_refused() -> None:
    predictor(step=1.0)
    for step in (0.0, -0.5, 1.01):
        with pytest.raises(AutosegError, match=f"step size {step}"):
            predictor(step=step)


def test_fold_names_sources_and_weights_that_do_not_fit() -> None:
    plans = make_plans()
    good = state(plans, "3d_fullres", 0)
    p = Predictor([good, good], plans, plans.configurations["3d_fullres"])  # device "auto"
    assert p.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert p.folds == ("0", "1") and p.configuration.name == "3d_fullres"
    assert p.compile is False and all(not n.training for n in p.networks)
    assert all(n.deep_supervision is False for n in p.networks)
    bad = dict(good)
    bad.pop(next(iter(bad)))
    first_line = r"\(Error\(s\) in loading state_dict for \w+:\)$"
    with pytest.raises(
        AutosegError, match=r"^fold 1: weights do not fit the planned network " + first_line
    ):
        Predictor([good, bad], plans, "3d_fullres", device="cpu")
    with pytest.raises(AutosegError, match=r"^fold b: weights"):
        Predictor([good, bad], plans, "3d_fullres", device="cpu", folds=["a", "b"])
    with pytest.raises(AutosegError, match=r"^here\.pt: weights"):
        Predictor([bad], plans, "3d_fullres", device="cpu", sources=["here.pt"])
    cascade = dataclasses.replace(plans.configurations["3d_fullres"], previous_stage="3d_lowres")
    with pytest.raises(AutosegError, match="is a cascade stage: give previous_stage"):
        Predictor([good], plans, cascade, device="cpu")


def test_compile_gets_an_example_of_one_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_compile(net: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
        seen.append(tuple(example.shape))
        return net

    monkeypatch.setattr(predictor_module, "compile_with_fallback", fake_compile)
    compiled = predictor(folds=2, compile=True, tile_batch=5)
    assert compiled.compile is True and all(
        isinstance(n, torch.nn.Module) for n in compiled.networks
    )
    assert seen == [(5, 1, 8, 8, 8)] * 2
    seen.clear()
    predictor(compile=True)  # the default tile batch of the patch: 8 on the CPU
    assert seen == [(8, 1, 8, 8, 8)]
    seen.clear()
    predictor(compile=None)
    assert seen == []  # on for CUDA only


def test_preprocess_checks_channels_and_finite_voxels() -> None:
    p = predictor()
    with pytest.raises(AutosegError, match=r"^image has 2 channel\(s\); the model takes 1 \(MRI\)"):
        p.preprocess(_image(np.ones((2, 4, 4, 4), dtype=np.float32)))
    bad = np.ones((1, 4, 4, 4), dtype=np.float32)
    bad[0, 0, 0, :2] = np.nan
    bad[0, 1, 1, 1] = np.inf
    with pytest.raises(AutosegError, match=r"^3 NaN or Inf voxel\(s\) in the image"):
        p.preprocess(_image(bad))


def test_predict_array_adds_the_channel_and_uses_the_spacing() -> None:
    p = predictor(tta=False)
    p.networks = [Linear([1, -1, 0], [0, 0, 0.5])]
    volume = image((6, 5, 4))[0] * 3
    labels = p.predict_array(volume, (2.0, 1.0, 1.0))
    by_hand, _ = p.predict_image(_image(volume[None], (2.0, 1.0, 1.0)))
    np.testing.assert_array_equal(labels, by_hand)
    assert labels.shape == (6, 5, 4)
    grid, _ = p.preprocess(_image(volume[None], (2.0, 1.0, 1.0)))
    assert grid.shape[1:] == (12, 5, 4)  # resampled to the 1 mm of the plans
    np.testing.assert_array_equal(p.predict_array(volume[None], [2, 1, 1]), labels)
    with pytest.raises(AutosegError, match="expected a"):
        p.predict_array(volume[0], (1.0, 1.0, 1.0))
    with pytest.raises(AutosegError, match="expected a"):
        p.predict_array(volume, (1.0, 1.0))


# ---------------------------------------------------------------------------- model folders


def model_folder(root: Path, folds=("0", "1"), checkpoint: str = "checkpoint_final.pt", **meta):
    plans = make_plans()
    folder = root / "models" / "default" / "3d_fullres"
    folder.mkdir(parents=True, exist_ok=True)
    plans.to_json(folder / "plans.json")
    for i, fold in enumerate(folds):
        fields = {"num_classes": 3, "in_channels": 1, **meta}
        info = CheckpointMeta("3d_fullres", fold, 0, plans=to_dict(plans), **fields)
        save_checkpoint(
            folder / f"fold_{fold}" / checkpoint, state(plans, "3d_fullres", i), None, info
        )
    return folder


def test_from_folder_loads_the_folds_asked_for(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    both = Predictor.from_folder(folder, device="cpu", tta=False, step=0.75, tile_batch=2)
    assert both.folds == ("0", "1") and len(both.networks) == 2
    assert (both.tta, both.step, both.tile_batch((8, 8, 8))) == (False, 0.75, 2)
    assert both.postprocessing is None
    one = Predictor.from_folder(folder, folds=[1], device="cpu", max_tile_scale=1.5)
    assert one.folds == ("1",) and one.max_tile_scale == 1.5 and one.tta is True
    for a, b in zip(
        one.networks[0].state_dict().values(), both.networks[1].state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)
    PostprocessingDecision(largest_component_foreground=True).to_json(
        folder / "postprocessing.json"
    )
    default = Predictor.from_folder(folder)  # device auto: the CPU here
    assert default.postprocessing.largest_component_foreground
    assert (default.max_tile_scale, default.step, default.tta) == (1.25, 0.5, True)
    if not torch.cuda.is_available():
        assert default.device.type == "cpu" and predictor(device="auto").device.type == "cpu"
    assert Predictor.from_folder(folder, device="cpu", postprocess=False).postprocessing is None
    best = model_folder(tmp_path / "b", folds=("all",), checkpoint="checkpoint_best.pt")
    assert Predictor.from_folder(best, checkpoint="best", device="cpu").folds == ("all",)


def test_from_folder_names_what_is_wrong(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    with pytest.raises(AutosegError, match="model folder not found"):
        Predictor.from_folder(tmp_path / "nothing", device="cpu")
    with pytest.raises(AutosegError, match="no fold_<k>/checkpoint_best.pt"):
        Predictor.from_folder(folder, checkpoint="best", device="cpu")
    with pytest.raises(
        AutosegError, match=r"no checkpoint_final.pt for fold\(s\) 3, 4; available: 0, 1"
    ):
        Predictor.from_folder(folder, folds=[3, 0, 4], device="cpu")
    for key, value in (("num_classes", 5), ("in_channels", 2)):
        wrong = model_folder(tmp_path / key, folds=("0",), **{key: value})
        with pytest.raises(
            AutosegError, match=f"fold_0.checkpoint_final.pt: {key} {value} differs"
        ):
            Predictor.from_folder(wrong, device="cpu")
    bad = model_folder(tmp_path / "bad", folds=("0",))
    weights = state(make_plans(), "3d_fullres", 0)
    weights.pop(next(iter(weights)))
    info = CheckpointMeta("3d_fullres", "0", 0, 3, 1, to_dict(make_plans()))
    save_checkpoint(bad / "fold_0" / "checkpoint_final.pt", weights, None, info)
    with pytest.raises(AutosegError, match=r"fold_0.checkpoint_final.pt: weights do not fit"):
        Predictor.from_folder(bad, device="cpu")
    unrecorded = model_folder(tmp_path / "old", folds=("0",), num_classes=None, in_channels=None)
    assert Predictor.from_folder(unrecorded, device="cpu").folds == ("0",)
    (folder / "plans.json").write_text('{"dataset_name": 3}')
    with pytest.raises(AutosegError, match="plans.json: not valid autoseg plans"):
        Predictor.from_folder(folder, device="cpu")
    (folder / "plans.json").unlink()
    with pytest.raises(AutosegError, match=r"not an autoseg model folder \(no plans.json\)"):
        Predictor.from_folder(folder, device="cpu")


def test_from_folder_refuses_folds_of_different_configurations(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    plans = make_plans()
    info = CheckpointMeta("2d", "1", 0, 3, 1, to_dict(plans))
    save_checkpoint(
        folder / "fold_1" / "checkpoint_final.pt", state(plans, "3d_fullres", 1), None, info
    )
    with pytest.raises(AutosegError, match="folds trained with different configurations"):
        Predictor.from_folder(folder, device="cpu")
    assert Predictor.from_folder(folder, folds=[0], device="cpu").configuration.name == "3d_fullres"


def test_predict_folder_shorthand(tmp_path: Path) -> None:
    import nibabel as nib

    p = predictor(tta=False)
    data = image((6, 5, 4))[0].T + 10  # nibabel (i, j, k) = (X, Y, Z)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "in" / "c_0000.nii.gz"))
    report = p.predict_folder(
        [tmp_path / "in"], tmp_path / "out", progress=False, save_probabilities=True
    )
    assert [w.name for w in report.written] == ["c.nii.gz"]
    assert (tmp_path / "out" / "c.npz").is_file()  # the keyword reached predict_folder
    written = np.asarray(nib.load(str(tmp_path / "out" / "c.nii.gz")).dataobj)
    np.testing.assert_array_equal(written.T, p.predict_array(data.T, (1.0, 1.0, 1.0)))


def test_preprocess_names_the_case_and_all_channels() -> None:
    two = config(normalization=(Normalization("zscore"),) * 2)
    plans = dataclasses.replace(
        make_plans(), channels=("T1", "T2"), configurations={"3d_fullres": two}
    )
    torch.manual_seed(0)
    weights = build_network(plans.configurations["3d_fullres"], 2, 3).state_dict()
    p = Predictor([weights], plans, "3d_fullres", device="cpu")
    with pytest.raises(
        AutosegError, match=r"^image has 1 channel\(s\); the model takes 2 \(T1, T2\)$"
    ):
        p.preprocess(_image(np.ones((1, 4, 4, 4), dtype=np.float32)))
    _, props = p.preprocess(_image(image((4, 4, 4)).repeat(2, axis=0)), case_id="case_7")
    assert props.case_id == "case_7"
    huge = np.full((2, 4, 4, 4), 3e38, dtype=np.float32)  # finite; a float32 sum overflows
    huge[0, 0, 0, 0] = 1.0
    p.preprocess(_image(huge))


def test_float64_arrays_predict_as_float32() -> None:
    p = predictor(tta=False)
    x = image((5, 6, 7))
    np.testing.assert_array_equal(
        p.predict_preprocessed(x.astype(np.float64)), p.predict_preprocessed(x)
    )


def test_a_tile_scale_from_1_to_2_is_accepted_and_named_otherwise() -> None:
    assert [predictor(max_tile_scale=v).max_tile_scale for v in (1.0, 2.0)] == [1.0, 2.0]
    for scale in (0.5, 0.99, 0.999, 2.001, 2.01, float("nan")):
        with pytest.raises(AutosegError) as info:
            predictor(max_tile_scale=scale)
        expected = f"tile scale {scale}: must lie in [1, 2] (a multiple of the patch edge)"
        assert str(info.value) == expected
