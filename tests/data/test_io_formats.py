"""PNG/BMP/TIFF reading and writing (autoseg.data.bitmaps behind autoseg.data.io) and its dataset
rules."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from autoseg.data.dataset import load_dataset
from autoseg.data.io import read_array, read_image, write_label
from autoseg.errors import AutosegError, DatasetError
from autoseg.planning.fingerprint import compute_fingerprint
from tests.synthetic_micro import write_micro_dataset


def test_gray_png_is_one_slice_and_keeps_values(tmp_path) -> None:
    data = np.arange(12 * 15, dtype=np.uint8).reshape(12, 15)
    PILImage.fromarray(data).save(tmp_path / "a.png")
    array, geometry = read_array(tmp_path / "a.png")
    assert array.shape == (1, 12, 15) and geometry.shape == (1, 12, 15)
    np.testing.assert_array_equal(array[0], data)
    assert read_image([tmp_path / "a.png"]).array.shape == (1, 1, 12, 15)


def test_16_bit_tiff_keeps_its_range(tmp_path) -> None:
    data = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data)
    array, _ = read_array(tmp_path / "a.tif")
    assert array.dtype == np.uint16 and int(array.max()) == 65535
    np.testing.assert_array_equal(array[0], data)


def test_rgb_becomes_three_channels_in_order(tmp_path) -> None:
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", rgb, photometric="rgb")
    for name in ("a.png", "a.tif"):
        image = read_image([tmp_path / name])
        assert image.array.shape == (3, 1, 6, 7)
        assert image.array[:, 0, 0, 0].tolist() == [10, 20, 30]


def test_opaque_alpha_is_dropped_transparent_alpha_refused(tmp_path) -> None:
    rgba = np.full((5, 5, 4), 255, np.uint8)
    PILImage.fromarray(rgba).save(tmp_path / "opaque.png")
    assert read_array(tmp_path / "opaque.png")[0].shape == (3, 1, 5, 5)
    rgba[0, 0, 3] = 0
    PILImage.fromarray(rgba).save(tmp_path / "see_through.png")
    with pytest.raises(AutosegError, match=r"see_through\.png: alpha channel with 1 transparent"):
        read_array(tmp_path / "see_through.png")


def test_palette_png_reads_its_indices(tmp_path) -> None:
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    image = PILImage.new("P", (3, 2))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.putdata(indices.flatten().tolist())
    image.save(tmp_path / "p.png")
    assert PILImage.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_array(tmp_path / "p.png")[0][0], indices)


def test_tiff_stack_reads_sidecar_spacing_and_writes_it_back(tmp_path) -> None:
    stack = np.random.default_rng(0).integers(0, 3, (4, 6, 7)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    (tmp_path / "s.json").write_text(json.dumps({"spacing": [3.0, 0.5, 0.25]}))
    array, geometry = read_array(tmp_path / "s.tif")
    assert array.shape == (4, 6, 7) and geometry.spacing == (3.0, 0.5, 0.25)
    write_label(array, geometry, tmp_path / "out" / "s.tif")
    again, geo2 = read_array(tmp_path / "out" / "s.tif")
    np.testing.assert_array_equal(again, stack)
    assert geo2.same_grid(geometry)


def test_bad_sidecar_names_the_file(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 4, 4), np.uint8), photometric="minisblack")
    (tmp_path / "s.json").write_text(json.dumps({"spacing": [1.0, 1.0]}))
    with pytest.raises(AutosegError, match=r"s\.json: spacing \[1\.0, 1\.0\] must be 3"):
        read_array(tmp_path / "s.tif")


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif"])
def test_label_written_as_2d_file_of_the_input_size(tmp_path, ending) -> None:
    labels = np.zeros((1, 9, 11), np.uint8)
    labels[0, 2:5, 3:8] = 2
    PILImage.fromarray(labels[0]).save(tmp_path / "in.png")
    _, geometry = read_array(tmp_path / "in.png")
    write_label(labels, geometry, tmp_path / f"out{ending}")
    if ending == ".tif":
        stored = tifffile.imread(tmp_path / f"out{ending}")
    else:
        stored = np.asarray(PILImage.open(tmp_path / f"out{ending}"))
    assert stored.shape == (9, 11)
    np.testing.assert_array_equal(stored, labels[0])


def test_bmp_refuses_labels_above_255(tmp_path) -> None:
    PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "in.png")
    _, geometry = read_array(tmp_path / "in.png")
    with pytest.raises(AutosegError, match="above 255"):
        write_label(np.full((1, 4, 4), 300), geometry, tmp_path / "out.bmp")
    assert not (tmp_path / "out.bmp").exists()


def test_rgb_label_file_is_refused_by_the_dataset_check(tmp_path) -> None:
    root = write_micro_dataset(tmp_path / "ds", "png", n_cases=2)
    label = np.asarray(PILImage.open(root / "labelsTr" / "cell_001.png"))
    PILImage.fromarray(np.stack([label] * 3, -1)).save(root / "labelsTr" / "cell_001.png")
    with pytest.raises(DatasetError, match=r"cell_001\.png.*colour channels \(RGB\)"):
        compute_fingerprint(load_dataset(root))


def test_rgb_dataset_one_file_per_case_holds_three_channels(tmp_path) -> None:
    root = write_micro_dataset(tmp_path / "ds", "rgb_tiff", n_cases=2)
    spec = load_dataset(root)
    assert [len(c.images) for c in spec.cases] == [1, 1]
    fingerprint = compute_fingerprint(spec)
    assert len(fingerprint.channels) == 3


def test_3d_tiff_dataset_spacing_from_sidecars(tmp_path) -> None:
    root = write_micro_dataset(tmp_path / "ds", "tiff3d", n_cases=2)
    fingerprint = compute_fingerprint(load_dataset(root))
    assert tuple(fingerprint.cases[0].spacing) == (2.0, 0.5, 0.5)


def test_gray_file_for_three_declared_channels_is_named_with_a_hint(tmp_path) -> None:
    root = write_micro_dataset(tmp_path / "ds", "png", n_cases=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "R", "1": "G", "2": "B"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"cell_000_0000\.png.*grayscale image with 1 channel"):
        compute_fingerprint(load_dataset(root))


def test_many_labels_get_16_bit_png_and_32_bit_tiff(tmp_path) -> None:
    PILImage.fromarray(np.zeros((2, 3), np.uint8)).save(tmp_path / "in.png")
    _, geometry = read_array(tmp_path / "in.png")
    labels = np.array([[[0, 300, 40000], [1, 2, 3]]])
    write_label(labels, geometry, tmp_path / "out.png")
    np.testing.assert_array_equal(read_array(tmp_path / "out.png")[0], labels)
    huge = labels * 2  # 80000
    write_label(huge, geometry, tmp_path / "out.tif")
    np.testing.assert_array_equal(read_array(tmp_path / "out.tif")[0], huge)
    with pytest.raises(AutosegError, match="above 65535"):
        write_label(huge, geometry, tmp_path / "out2.png")


def test_sidecars_are_not_reported_as_stray_files(tmp_path, caplog) -> None:
    root = write_micro_dataset(tmp_path / "ds", "tiff3d", n_cases=2)
    (root / "imagesTr" / "notes.json").write_text("{}")
    with caplog.at_level("WARNING"):
        load_dataset(root)
    text = caplog.text
    assert "notes.json" in text and "cell_000_0000.json" not in text


@pytest.mark.parametrize(("module", "name"), [("tifffile", "a.tif"), ("PIL", "a.png")])
def test_missing_reader_names_the_extra(tmp_path, monkeypatch, module, name) -> None:
    PILImage.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((3, 3), np.uint8))
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(AutosegError, match=rf"{name}: .*needs {module}.*autoseg\[microscopy\]"):
        read_array(tmp_path / name)


def test_header_checks_of_io_apply_before_the_pixels_are_read(tmp_path) -> None:
    PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(json.dumps({"spacing": [1e9, 1.0]}))
    with pytest.raises(AutosegError, match=r"a\.png: invalid voxel spacing"):
        read_array(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((2, 2), np.complex64))
    with pytest.raises(AutosegError, match=r"c\.tif: unsupported voxel data type complex64"):
        read_array(tmp_path / "c.tif")
