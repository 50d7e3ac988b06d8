"""Model exchange: export to a zip, import elsewhere, hostile archives (issue 11 item 7)."""

from __future__ import annotations

import io
import json
import stat
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from autoseg.data.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from autoseg.data.model_folder import ModelFolder
from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Plans
from autoseg.inference import exchange_import
from autoseg.inference.postprocess import PostprocessingDecision
from autoseg.networks.unet import build_network
from autoseg.serial import to_dict
from tests.reliability_helpers import assert_clean_failure, cli, shrink_network, tiny_dataset


def make_model(
    tmp: Path, name: str = "Task96_Exchange", n_cases: int = 2, seed: int = 0
) -> tuple[Path, Path]:
    """A planned tiny dataset and a model folder with one random fold ``all`` (no training).

    Returns:
        (dataset root, model folder).
    """
    root = tiny_dataset(tmp / name, n_cases=n_cases)
    home = tmp / "home"
    result = cli("plan", root, "--home", home, "--workers", 1)
    assert result.exit_code == 0, result.output
    plans_path = home / name / "plans.json"
    shrink_network(plans_path)
    plans = Plans.from_json(plans_path)
    torch.manual_seed(seed)
    net = build_network(plans.configuration("3d_fullres"), 1, plans.num_classes)
    folder = ModelFolder(DatasetDirs(name, None, home / name).model_folder("default", "3d_fullres"))
    folder.path.mkdir(parents=True)
    plans.to_json(folder.plans)
    meta = CheckpointMeta("3d_fullres", "all", 0, plans.num_classes, 1, to_dict(plans))
    first = next(iter(net.state_dict().values()))
    optimizer = {"state": {0: {"momentum_buffer": torch.ones_like(first)}}, "param_groups": []}
    save_checkpoint(folder.checkpoint("all"), net.state_dict(), optimizer, meta)
    PostprocessingDecision(largest_component_foreground=True).to_json(folder.postprocessing)
    return root, folder.path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset root, model folder, archive)."""
    tmp = tmp_path_factory.mktemp("exchange")
    root, model = make_model(tmp)
    archive = tmp / "model.zip"
    result = cli("export", model, archive)
    assert result.exit_code == 0, result.output
    return root, model, archive


def test_imported_model_predicts_bit_identically_on_cpu(
    exported: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    root, model, archive = exported
    home = tmp_path / "elsewhere"
    result = cli("import", archive, "--home", home)
    assert result.exit_code == 0, result.output
    imported = home / root.name / "models/default/3d_fullres"
    assert (imported / "plans.json").read_bytes() == (model / "plans.json").read_bytes()
    for name in ("postprocessing.json", "fold_all/summary.json"):
        assert (imported / name).exists() == (model / name).exists()
        if (model / name).exists():
            assert (imported / name).read_bytes() == (model / name).read_bytes()
    assert (imported / "postprocessing.json").is_file() and (imported / "export.json").is_file()
    ckpt = load_checkpoint(imported / "fold_all/checkpoint_final.pt")
    assert ckpt.optimizer_state is None  # weights only
    original = load_checkpoint(model / "fold_all/checkpoint_final.pt")
    assert all(torch.equal(v, original.model_state[k]) for k, v in ckpt.model_state.items())
    outputs = {}
    for tag, folder in (("a", model), ("b", imported)):
        out = tmp_path / f"pred_{tag}"
        args = ("predict", "-i", root / "imagesTr", "-o", out, "-m", folder, "--device", "cpu")
        result = cli(*args, "--save-probabilities", "--no-tta")
        assert result.exit_code == 0, result.output
        outputs[tag] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert len(outputs["a"]) == 4  # 2 label maps, 2 probability files
    assert outputs["a"] == outputs["b"]
    # a second import over the first is refused unless asked for
    assert_clean_failure(cli("import", archive, "--home", home), "already there")
    assert cli("import", archive, "--home", home, "--overwrite").exit_code == 0


def test_export_is_reproducible_and_refuses_to_overwrite(
    exported: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, model, archive = exported
    again = tmp_path / "again.zip"
    assert cli("export", model, again).exit_code == 0
    assert again.read_bytes() == archive.read_bytes()
    assert_clean_failure(cli("export", model, again), "exists")
    assert_clean_failure(cli("export", tmp_path, tmp_path / "x.zip"), "not an autoseg model")


def _members(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _write(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of one case
        with zipfile.ZipFile(path, "w") as zf:
            for info, data in members:
                zf.writestr(info, data)
    return path


def _with_manifest(members: dict[str, bytes], **changes) -> dict[str, bytes]:
    manifest = json.loads(members["export.json"])
    for key, value in changes.items():
        manifest[key] = value
    return {**members, "export.json": json.dumps(manifest).encode()}


def _rehash(members: dict[str, bytes]) -> dict[str, bytes]:
    import hashlib

    files = {k: hashlib.sha256(v).hexdigest() for k, v in members.items() if k != "export.json"}
    return _with_manifest(members, files=files)


class _Evil:  # a pickled object in a checkpoint
    pass


def _hostile(kind: str, members: dict[str, bytes]) -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    ckpt = "fold_all/checkpoint_final.pt"
    if kind == "extra member":
        return [*members.items(), ("evil.py", b"import os")]
    if kind == "parent path":
        return [*members.items(), ("../outside.json", b"{}")]
    if kind == "absolute path":
        return [*members.items(), ("/tmp/outside.json", b"{}")]
    if kind == "symlink":
        link = zipfile.ZipInfo("fold_all/summary.json")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        return [*members.items(), (link, b"/etc/passwd")]
    if kind == "duplicate":
        return [*members.items(), ("plans.json", b"{}")]
    if kind == "tampered":
        return [*{**members, "plans.json": members["plans.json"] + b" "}.items()]
    if kind == "unsafe dataset name":
        return [*_with_manifest(members, dataset="../../etc").items()]
    if kind == "pickled checkpoint":
        buffer = io.BytesIO()
        torch.save({"model": {}, "meta": _Evil()}, buffer)
        return [*_rehash({**members, ckpt: buffer.getvalue()}).items()]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("extra member", "unexpected member"),
        ("parent path", "escapes the target"),
        ("absolute path", "escapes the target"),
        ("symlink", "symbolic link"),
        ("duplicate", "appears twice"),
        ("tampered", "SHA-256"),
        ("unsafe dataset name", "dataset name '../../etc'"),
        ("pickled checkpoint", "pickled Python objects"),
    ],
)
def test_import_refuses_hostile_archives(
    exported: tuple[Path, Path, Path], tmp_path: Path, kind: str, message: str
) -> None:
    archive = _write(tmp_path / "hostile.zip", _hostile(kind, _members(exported[2])))
    home = tmp_path / "home"
    assert_clean_failure(cli("import", archive, "--home", home), message)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p != archive]


def test_import_refuses_oversized_members(
    exported: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exchange_import, "MAX_JSON_BYTES", 64)
    with pytest.raises(exchange_import.AutosegError, match="bytes \\(limit 64\\)"):
        exchange_import.import_model(exported[2], tmp_path / "home")
    assert not (tmp_path / "home").exists()
