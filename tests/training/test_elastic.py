"""Elastic deformation (CPU and device paths) and the weight maps travelling with the labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from autoseg.preprocessing.case_store import CaseProperties, PreprocessedCase, save_case
from autoseg.preprocessing.preprocess import class_locations
from autoseg.preprocessing.weightmap import border_weight_map, ensure_weight_maps
from autoseg.training.augment.elastic import ElasticTransform, displacement_field, warp
from autoseg.training.augment.elastic_device import DeviceElastic
from autoseg.training.augment.pipeline import training_transforms
from autoseg.training.loader import BatchLoader
from tests.networks.test_network import CONFIG_2D
from tests.synthetic_micro import cells


def test_field_is_the_coarse_grid_scaled_at_its_nodes_and_smooth() -> None:
    coarse = np.random.default_rng(0).normal(size=(2, 3, 3))
    field = displacement_field(coarse, (81, 81), std=10.0)
    assert field.shape == (2, 81, 81)
    np.testing.assert_allclose(field[:, 0, 0], coarse[:, 0, 0] * 10.0)
    np.testing.assert_allclose(field[:, 40, 80], coarse[:, 1, 2] * 10.0)
    assert np.abs(np.diff(field, axis=1)).max() < 2.0  # no tearing between neighbours


def test_std_is_capped_on_a_thin_axis() -> None:
    coarse = np.ones((3, 3, 3, 3))
    field = displacement_field(coarse, (8, 64, 64), std=10.0)
    assert np.isclose(field[0].max(), 1.0) and np.isclose(field[1].max(), 8.0)


def test_zero_field_is_the_identity() -> None:
    array = np.random.default_rng(1).normal(size=(2, 10, 12))
    np.testing.assert_allclose(warp(array, np.zeros((2, 10, 12)), order=3), array, atol=1e-9)


def _cell_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.stack([cells(rng, (48, 48), n=4, radius=6.0) for _ in range(3)])[:, None]
    return (labels * 100.0).astype(np.float32), labels.astype(np.float32)


def test_cpu_elastic_moves_image_and_labels_together_labels_nearest() -> None:
    data, seg = _cell_batch()
    before = seg.copy()
    np.random.seed(0)
    out = ElasticTransform(p_per_sample=1.0)(data=data.copy(), seg=seg.copy())
    assert set(np.unique(out["seg"])) <= {0.0, 1.0}
    assert not np.array_equal(out["seg"], before)  # it did deform
    agree = ((out["data"] > 50) == (out["seg"] > 0.5)).mean()
    assert agree > 0.97


def test_elastic_is_off_unless_asked() -> None:
    def names(t) -> list[str]:
        return [type(x).__name__ for x in t.transforms]

    assert "ElasticTransform" not in names(training_transforms((32, 32)))
    assert "ElasticTransform" in names(training_transforms((32, 32), elastic=True))


def test_device_elastic_deforms_labels_nearest_and_is_seeded() -> None:
    data, seg = _cell_batch(1)
    image, target = torch.from_numpy(data), torch.from_numpy(seg).to(torch.int16)
    elastic = DeviceElastic((48, 48), torch.device("cpu"), seed=3, p_per_sample=1.0)
    out_image, out_target = elastic(image, target)
    assert out_target.dtype == torch.int16 and out_image.shape == image.shape
    assert set(out_target.unique().tolist()) <= {0, 1}
    assert not torch.equal(out_target, target)
    assert ((out_image > 50) == (out_target > 0)).float().mean() > 0.97
    elastic.reseed(3)
    again, _ = elastic(image, target)
    torch.testing.assert_close(again, out_image)
    still = DeviceElastic((48, 48), torch.device("cpu"), p_per_sample=0.0)(image, target)
    torch.testing.assert_close(still[1], target)


def _preprocessed_cell(folder, case_id: str, seed: int) -> np.ndarray:
    labels = cells(np.random.default_rng(seed), (40, 40), n=4, radius=5.0)[None]  # (1, Y, X)
    image = (labels * 2.0 - 1.0)[None].astype(np.float32)  # (1, 1, Y, X)
    props = CaseProperties(
        case_id, (1, 40, 40), (1.0, 1.0, 1.0), ((0, 1), (0, 40), (0, 40)),
        (1, 40, 40), (1.0, 1.0, 1.0), (1, 40, 40), "k",
    )  # fmt: skip
    seg = labels[None].astype(np.int8)
    save_case(folder, PreprocessedCase(image, seg, class_locations(seg[0], case_id), props))
    return labels


def test_loader_weight_maps_follow_the_labels_through_augmentation(tmp_path) -> None:
    labels = _preprocessed_cell(tmp_path, "c0", 0)
    ensure_weight_maps(tmp_path, ["c0"])
    weights = border_weight_map(labels)
    pairs = {
        (int(a), round(float(b), 4)) for a, b in zip(labels.ravel(), weights.ravel(), strict=True)
    }
    pairs.add((0, 0.0))  # outside the image
    config = dataclasses.replace(CONFIG_2D, patch_size=(32, 32), batch_size=4)
    loader = BatchLoader(tmp_path, ["c0"], config, seed=0, augment=True, elastic=True, weights=True)
    with loader:
        for _ in range(3):
            batch = next(loader)
            assert batch["weight"].shape == batch["target"].shape == (4, 1, 32, 32)
            got = zip(batch["target"].ravel(), batch["weight"].ravel(), strict=True)
            seen = {(int(a), round(float(b), 4)) for a, b in got}
            assert seen <= pairs  # each pixel's weight is the weight of its own label pixel
            assert batch["weight"].max() > 3.0  # the gaps' border weights are there
