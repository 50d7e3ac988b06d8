"""Bad inputs through the CLI: every command names the file and the problem, exits with code 2,
shows no traceback and writes nothing; tolerable oddities (stray files, names with spaces or
non-ASCII characters) just work. See docs/reliability.md.

The corpus is generated here: each entry damages a fresh tiny dataset (or prediction/evaluation
input) in one way.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.reliability_helpers import (
    SHAPE_IJK,
    assert_clean_failure,
    cli,
    files_in,
    load_nifti,
    make_model,
    one_torch_thread,  # noqa: F401 - a fixture
    run_autoseg,
    save_nifti,
    snapshot,
    tiny_dataset,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ------------------------------------------------------------------------------- the corpus

Mutation = Callable[[Path], None]


def _edit_json(root: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    edit(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


def _image(root: Path, case: int = 1) -> Path:
    return root / "imagesTr" / f"case_{case:03d}.nii.gz"


def _label(root: Path, case: int = 1) -> Path:
    return root / "labelsTr" / f"case_{case:03d}.nii.gz"


def _empty(root: Path) -> None:
    _image(root).write_bytes(b"")


def _truncated(root: Path) -> None:
    data = _image(root).read_bytes()
    _image(root).write_bytes(data[: len(data) // 2])


def _image_without_label(root: Path) -> None:
    _edit_json(root, lambda m: m["training"][1].pop("label"))


def _label_without_image(root: Path) -> None:
    _edit_json(root, lambda m: m["training"][1].pop("image"))


def _shape_mismatch(root: Path) -> None:
    save_nifti(load_nifti(_label(root))[:, :, :-1], _label(root))


def _spacing_mismatch(root: Path) -> None:
    save_nifti(load_nifti(_label(root)), _label(root), spacing=(1.0, 1.0, 2.0))


def _affine_mismatch(root: Path) -> None:
    save_nifti(load_nifti(_label(root)), _label(root), origin=(0.0, 30.0, 0.0))


def _voxels(value: float) -> Mutation:
    def mutate(root: Path) -> None:
        data = load_nifti(_image(root)).astype(np.float32)
        data[5, 5, 5] = value
        save_nifti(data, _image(root))

    return mutate


def _label_4d(root: Path) -> None:
    label = load_nifti(_label(root))
    save_nifti(np.stack([label, label], -1), _label(root))


def _image_3d_for_two_channels(root: Path) -> None:
    """dataset.json declares two channels; one case's image is a single 3D volume."""
    data = load_nifti(_image(root))
    save_nifti(np.ascontiguousarray(data[..., 0]), _image(root))


def _three_channels_for_two(root: Path) -> None:
    data = load_nifti(_image(root))
    save_nifti(np.concatenate([data, data[..., :1]], -1), _image(root))


def _fractional_labels(root: Path) -> None:
    label = load_nifti(_label(root)).astype(np.float32)
    label[label == 1] = 0.5
    save_nifti(label, _label(root))


def _undeclared_label(root: Path) -> None:
    label = load_nifti(_label(root)).copy()
    label[label == 2] = 5
    save_nifti(label, _label(root))


def _no_dataset_json(root: Path) -> None:
    (root / "dataset.json").unlink()


def _invalid_json(root: Path) -> None:
    text = (root / "dataset.json").read_text()
    (root / "dataset.json").write_text(text.replace('"labels"', "labels", 1))


def _missing_labels_key(root: Path) -> None:
    _edit_json(root, lambda m: m.pop("labels"))


def _outside(path: str, key: str = "image") -> Mutation:
    return lambda root: _edit_json(root, lambda m: m["training"][0].__setitem__(key, path))


def _nnunet_4d_channel_file(root: Path) -> None:
    image = root / "imagesTr" / "case_001_0000.nii.gz"
    data = load_nifti(image)
    save_nifti(np.stack([data, data], -1), image)


def _nnunet_missing_label(root: Path) -> None:
    (root / "labelsTr" / "case_001.nii.gz").unlink()


def _nnunet_missing_image(root: Path) -> None:
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()


# (id, layout, channels, mutation, fragments the message must hold)
PLAN_CORPUS = [
    ("empty-file", "msd", 1, _empty, ["case_001.nii.gz", "empty"]),
    ("truncated-gzip", "msd", 1, _truncated, ["case_001.nii.gz", "cannot be read"]),
    ("image-without-label", "msd", 1, _image_without_label, ["case_001", "image without label"]),
    ("label-without-image", "msd", 1, _label_without_image, ["case_001", "label without image"]),
    ("shape-mismatch", "msd", 1, _shape_mismatch, ["labelsTr/case_001", "shape"]),
    ("spacing-mismatch", "msd", 1, _spacing_mismatch, ["labelsTr/case_001", "spacing"]),
    ("affine-mismatch", "msd", 1, _affine_mismatch, ["labelsTr/case_001", "affine"]),
    ("nan-voxels", "msd", 1, _voxels(np.nan), ["imagesTr/case_001", "NaN or Inf"]),
    ("inf-voxels", "msd", 1, _voxels(np.inf), ["imagesTr/case_001", "NaN or Inf"]),
    ("4d-label", "msd", 1, _label_4d, ["labelsTr/case_001", "4D label"]),
    ("4d-channel-file", "nnunet", 1, _nnunet_4d_channel_file, ["case_001_0000", "4D image"]),
    ("3d-for-4d", "msd", 2, _image_3d_for_two_channels, ["imagesTr/case_001", "declares 2"]),
    ("wrong-channel-count", "msd", 2, _three_channels_for_two, ["case_001", "3 channel(s)"]),
    ("fractional-labels", "msd", 1, _fractional_labels, ["case_001", "non-integer label"]),
    ("undeclared-label", "msd", 1, _undeclared_label, ["case_001", "[5] not declared"]),
    ("no-dataset-json", "msd", 1, _no_dataset_json, ["Task97_Bad", "no dataset.json"]),
    ("invalid-json", "msd", 1, _invalid_json, ["dataset.json", "invalid JSON at line"]),
    ("missing-key", "msd", 1, _missing_labels_key, ["dataset.json", "missing key 'labels'"]),
    ("traversal", "msd", 1, _outside("../../etc/passwd"), ["../../etc/passwd", "outside"]),
    ("absolute-path", "msd", 1, _outside("/etc/passwd.nii.gz", "label"), ["outside"]),
    ("nnunet-no-label", "nnunet", 1, _nnunet_missing_label, ["case_001", "image without label"]),
    ("nnunet-no-image", "nnunet", 1, _nnunet_missing_image, ["case_001", "label without image"]),
]


@pytest.mark.parametrize(
    "layout,channels,mutate,fragments",
    [case[1:] for case in PLAN_CORPUS],
    ids=[case[0] for case in PLAN_CORPUS],
)
def test_plan_refuses_bad_datasets(
    tmp_path: Path, layout: str, channels: int, mutate: Mutation, fragments: list[str]
) -> None:
    root = tiny_dataset(tmp_path / "Task97_Bad", layout=layout, channels=channels)
    mutate(root)
    before = snapshot(root)
    home = tmp_path / "home"
    result = cli("plan", root, "--home", home, "--workers", 1, "--gpu-memory", 8)
    assert_clean_failure(result, *fragments)
    assert snapshot(root) == before  # inputs untouched
    assert files_in(home) == []  # nothing written


def test_plan_refuses_missing_and_non_dataset_folders(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert_clean_failure(cli("plan", tmp_path / "nowhere", "--home", home), "nowhere", "no such")
    (tmp_path / "plain").mkdir()
    assert_clean_failure(cli("plan", tmp_path / "plain", "--home", home), "no dataset.json")
    assert files_in(home) == []


def test_many_problems_are_listed_at_once(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "Task97_Bad", n_cases=4)
    _empty(root)  # case 1
    _label_4d(root.parent / root.name)  # case 1's label too
    save_nifti(np.full((16, 20, 16), np.nan, np.float32), _image(root, 0))
    label = load_nifti(_label(root, 3)).copy()
    label[0, 0, 0] = 9
    save_nifti(label, _label(root, 3))
    result = cli("plan", root, "--home", tmp_path / "home", "--workers", 2)
    assert_clean_failure(
        result,
        "4 problem(s)",
        "imagesTr/case_000.nii.gz",
        "imagesTr/case_001.nii.gz",
        "labelsTr/case_001.nii.gz",
        "labelsTr/case_003.nii.gz",
    )
    assert files_in(tmp_path / "home") == []


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_stray_files_and_odd_names_just_work(tmp_path: Path, layout: str) -> None:
    root = tiny_dataset(tmp_path / "Task97 Odd ü", layout=layout, n_cases=3)
    odd = "Fall ü 1"  # a space and a non-ASCII character
    if layout == "msd":
        for folder in ("imagesTr", "labelsTr"):
            (root / folder / "case_001.nii.gz").rename(root / folder / f"{odd}.nii.gz")
        _edit_json(
            root,
            lambda m: m["training"][1].update(
                image=f"./imagesTr/{odd}.nii.gz", label=f"./labelsTr/{odd}.nii.gz"
            ),
        )
    else:
        (root / "imagesTr" / "case_001_0000.nii.gz").rename(
            root / "imagesTr" / f"{odd}_0000.nii.gz"
        )
        (root / "labelsTr" / "case_001.nii.gz").rename(root / "labelsTr" / f"{odd}.nii.gz")
    for folder in ("imagesTr", "labelsTr"):
        for stray in (".DS_Store", "Thumbs.db", "README.txt"):
            (root / folder / stray).write_text("not an image")
    (root / "imagesTr" / "._case_000.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS junk
    home = tmp_path / "home dir"
    result = cli("plan", root, "--home", home, "--workers", 1, "--gpu-memory", 8)
    assert result.exit_code == 0, result.output
    preprocessed = next((home / root.name / "preprocessed").iterdir())
    assert (preprocessed / f"{odd}.json").is_file()
    assert sorted(p.name for p in preprocessed.glob("*.json")) == sorted(
        ["case_000.json", f"{odd}.json", "case_002.json"]
    )


def test_messages_show_file_names_as_they_are(tmp_path: Path) -> None:
    """Brackets in a path are text, not console markup (which would eat or choke on them)."""
    root = tiny_dataset(tmp_path / "Task97_Bad")
    for name in ("x[/bold] y.nii.gz", "[red]z.nii.gz"):
        _edit_json(root, lambda m, n=name: m["training"][0].__setitem__("image", f"./imagesTr/{n}"))
        result = cli("plan", root, "--home", tmp_path / "home")
        assert_clean_failure(result, f"imagesTr/{name}", "missing")


def test_real_process_shows_no_traceback_unless_debug(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "Task97_Bad")
    _truncated(root)
    home = tmp_path / "home"
    done = run_autoseg("plan", root, "--home", home, "--workers", 1)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "case_001.nii.gz" in done.stderr and "cannot be read" in done.stderr
    debug = run_autoseg("--debug", "plan", root, "--home", home, "--workers", 1)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert files_in(home) == []


# ------------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "models" / "default" / "3d_fullres")


def _predict(model: Path, inputs: Path, out: Path):
    return cli("predict", "-i", inputs, "-o", out, "-m", model, "--device", "cpu", "--no-tta")


def _input_image(folder: Path, name: str = "good.nii.gz", seed: int = 0) -> Path:
    from tests.synthetic import make_case

    image, _ = make_case(np.random.default_rng(seed), SHAPE_IJK)
    return save_nifti(image, folder / name)


def _bad_input(kind: str, folder: Path) -> Path:
    path = folder / "bad.nii.gz"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = _input_image(folder, "bad.nii.gz").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind in ("nan", "inf"):
        _input_image(folder, "bad.nii.gz")
        data = load_nifti(path).copy()
        data[3, 4, 5] = np.nan if kind == "nan" else -np.inf
        save_nifti(data, path)
    elif kind == "4d":
        data = load_nifti(_input_image(folder, "bad.nii.gz"))
        save_nifti(np.stack([data, data], -1), path)
    elif kind == "not-nifti":
        path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 400)
    return path


PREDICT_CORPUS = [
    ("empty", ["bad.nii.gz", "empty"]),
    ("truncated", ["bad.nii.gz", "cannot be read"]),
    ("not-nifti", ["bad.nii.gz", "cannot be read"]),
    ("nan", ["bad.nii.gz", "NaN or Inf"]),
    ("inf", ["bad.nii.gz", "NaN or Inf"]),
    ("4d", ["bad.nii.gz", "channel"]),
]


@pytest.mark.parametrize(
    "kind,fragments", [(c[0], c[1]) for c in PREDICT_CORPUS], ids=[c[0] for c in PREDICT_CORPUS]
)
def test_predict_refuses_bad_images(
    model: Path, tmp_path: Path, kind: str, fragments: list[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    _bad_input(kind, inputs)
    before = snapshot(inputs)
    out = tmp_path / "out"
    assert_clean_failure(_predict(model, inputs, out), *fragments)
    assert files_in(out) == []
    assert snapshot(inputs) == before


def test_predict_writes_the_good_cases_and_fails_for_the_bad_one(model: Path, tmp_path: Path):
    inputs = tmp_path / "in"
    _input_image(inputs, "good.nii.gz")
    _bad_input("truncated", inputs)
    out = tmp_path / "out"
    assert_clean_failure(_predict(model, inputs, out), "bad.nii.gz", "1 case(s) failed")
    assert files_in(out) == ["good.nii.gz"]  # complete, and no temp files


def test_predict_with_stray_files_and_odd_names_just_works(model: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in put ü"
    _input_image(inputs, "Fall ü 1.nii.gz")
    _input_image(inputs, "case 2_0000.nii.gz", seed=1)
    for stray in (".DS_Store", "Thumbs.db", "README.txt"):
        (inputs / stray).write_text("not an image")
    out = tmp_path / "out ü"
    result = _predict(model, inputs, out)
    assert result.exit_code == 0, result.output
    assert files_in(out) == ["Fall ü 1.nii.gz", "case 2.nii.gz"]
    assert load_nifti(out / "Fall ü 1.nii.gz").shape == SHAPE_IJK


def test_predict_refuses_bad_arguments(model: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    _input_image(inputs)
    out = tmp_path / "out"
    assert_clean_failure(_predict(model, tmp_path / "missing", out), "missing", "not found")
    assert_clean_failure(_predict(tmp_path / "in", inputs, out), "not an autoseg model folder")
    assert_clean_failure(_predict(model, inputs, inputs), "must not be an input folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_failure(_predict(model, empty, out), "no image files")
    result = cli("predict", "-i", inputs, "-o", out, "--home", tmp_path / "h", "--device", "cpu")
    assert_clean_failure(result, "no trained model")
    assert files_in(out) == []


def test_predict_refuses_a_model_with_damaged_plans(model: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(model, tmp_path / "model"))
    (copy / "plans.json").write_text("{not json")
    inputs = tmp_path / "in"
    _input_image(inputs)
    assert_clean_failure(_predict(copy, inputs, tmp_path / "out"), "plans.json")
    assert files_in(tmp_path / "out") == []


# ------------------------------------------------------------------------------- evaluate


def _label_map(seed: int = 0) -> np.ndarray:
    from tests.synthetic import make_case

    return make_case(np.random.default_rng(seed), SHAPE_IJK)[1]


def _eval_folders(tmp_path: Path, n: int = 2) -> tuple[Path, Path]:
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    for i in range(n):
        save_nifti(_label_map(i), refs / f"case_{i}.nii.gz")
        save_nifti(_label_map(i + 10), preds / f"case_{i}.nii.gz")
    return preds, refs


def _damage_pred(kind: str, preds: Path, refs: Path) -> None:
    path = preds / "case_1.nii.gz"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "shape":
        save_nifti(_label_map(1)[:-1], path)
    elif kind == "spacing":
        save_nifti(_label_map(1), path, spacing=(2.0, 1.0, 1.0))
    elif kind == "affine":
        save_nifti(_label_map(1), path, origin=(5.0, 0.0, 0.0))
    elif kind == "fractional":
        save_nifti(_label_map(1).astype(np.float32) * 0.5, path)
    elif kind == "nan":
        data = _label_map(1).astype(np.float32)
        data[2, 2, 2] = np.nan
        save_nifti(data, path)
    elif kind == "4d":
        save_nifti(np.stack([_label_map(1)] * 2, -1), path)
    elif kind == "no-reference":
        (refs / "case_1.nii.gz").unlink()
    elif kind == "no-prediction":
        path.unlink()


EVALUATE_CORPUS = [
    ("empty", ["pred/case_1.nii.gz", "empty"]),
    ("truncated", ["pred/case_1.nii.gz", "cannot be read"]),
    ("shape", ["pred/case_1.nii.gz", "shape"]),
    ("spacing", ["pred/case_1.nii.gz", "spacing"]),
    ("affine", ["pred/case_1.nii.gz", "affine"]),
    ("fractional", ["pred/case_1.nii.gz", "non-integer"]),
    ("nan", ["pred/case_1.nii.gz", "non-integer"]),
    ("4d", ["pred/case_1.nii.gz", "3D label map"]),
    ("no-reference", ["pred/case_1.nii.gz", "no reference"]),
    ("no-prediction", ["ref/case_1.nii.gz", "no prediction"]),
]


@pytest.mark.parametrize(
    "kind,fragments", [(c[0], c[1]) for c in EVALUATE_CORPUS], ids=[c[0] for c in EVALUATE_CORPUS]
)
def test_evaluate_refuses_bad_label_maps(tmp_path: Path, kind: str, fragments: list[str]) -> None:
    preds, refs = _eval_folders(tmp_path)
    _damage_pred(kind, preds, refs)
    before = snapshot(tmp_path)
    out = tmp_path / "results"
    assert_clean_failure(
        cli("evaluate", "-p", preds, "-r", refs, "-o", out, "--workers", 1), *fragments
    )
    assert snapshot(tmp_path) == before  # inputs untouched, no results folder


def test_evaluate_refuses_missing_folders(tmp_path: Path) -> None:
    preds, refs = _eval_folders(tmp_path)
    result = cli("evaluate", "-p", tmp_path / "nothing", "-r", refs)
    assert_clean_failure(result, "nothing", "prediction folder not found")
    result = cli("evaluate", "-p", preds, "-r", tmp_path / "empty")
    assert_clean_failure(result, "empty", "reference folder not found")


def test_evaluate_with_stray_files_and_odd_names_just_works(tmp_path: Path) -> None:
    preds, refs = tmp_path / "pré ds", tmp_path / "ref s"
    for folder in (preds, refs):
        save_nifti(_label_map(0), folder / "Fall ü 1.nii.gz")
        for stray in (".DS_Store", "Thumbs.db", "README.txt"):
            (folder / stray).write_text("not an image")
    out = tmp_path / "out ü"
    result = cli("evaluate", "-p", preds, "-r", refs, "-o", out, "--workers", 1)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [c["case_id"] for c in evaluation["cases"]] == ["Fall ü 1"]
    assert evaluation["mean_dice"] == 1.0
