"""predict --part/--parts, --step-size, --tile-scale, --workers (issue 11 item 9, issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoseg.errors import AutosegError
from autoseg.inference.shards import select_part
from tests.inference.test_exchange import make_model
from tests.reliability_helpers import assert_clean_failure, cli


def test_parts_are_disjoint_complete_and_independent_of_the_listing() -> None:
    cases = {f"case_{i:03d}": i for i in range(60)}
    shares = [select_part(cases, k, 3) for k in range(3)]
    assert sum(len(s) for s in shares) == len(cases)
    assert set().union(*shares) == set(cases)
    assert all(len(s) >= 10 for s in shares)  # not all in one share
    # a machine that saw fewer cases agrees about every case it saw
    fewer = {k: v for k, v in cases.items() if v % 2}
    assert select_part(fewer, 1, 3) == {k: v for k, v in shares[1].items() if v % 2}
    assert select_part(cases, 0, 1) == cases
    with pytest.raises(AutosegError, match="0 <= part < parts"):
        select_part(cases, 3, 3)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_model(tmp_path_factory.mktemp("parts"), "Task95_Parts", n_cases=6)


def _predict(root: Path, model: Path, out: Path, *extra: object):
    args = ("predict", "-i", root / "imagesTr", "-o", out, "-m", model, "--device", "cpu")
    return cli(*args, "--no-tta", "--save-probabilities", *extra)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_parts_share_one_output_folder(model: tuple[Path, Path], tmp_path: Path) -> None:
    root, folder = model
    assert _predict(root, folder, tmp_path / "all", "--workers", 3).exit_code == 0
    whole = _files(tmp_path / "all")
    assert len(whole) == 12
    shared = tmp_path / "shared"
    seen: list[set[str]] = []
    for part in (0, 1):
        before = set(_files(shared)) if shared.is_dir() else set()
        result = _predict(root, folder, shared, "--part", part, "--parts", 2)
        assert result.exit_code == 0, result.output
        seen.append(set(_files(shared)) - before)
        assert "skipped" not in result.output  # the other part's cases are not even looked at
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert _files(shared) == whole  # same bytes as one run, with 3 I/O threads or 1


def test_bad_part_and_step_size_are_refused(model: tuple[Path, Path], tmp_path: Path) -> None:
    root, folder = model
    assert_clean_failure(_predict(root, folder, tmp_path / "o", "--part", 2, "--parts", 2), "part")
    assert_clean_failure(_predict(root, folder, tmp_path / "o", "--step-size", 1.5), "--step-size")
    result = _predict(root, folder, tmp_path / "o", "--tile-scale", 2.5)
    assert_clean_failure(result, "--tile-scale")
    assert not (tmp_path / "o").exists()


def test_tile_scale_reaches_the_predictor(
    model: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoseg.inference.predictor import Predictor
    from autoseg.inference.tiles import DEFAULT_TILE_SCALE

    root, folder = model
    made: list[Predictor] = []
    original = Predictor.from_folder.__func__

    def recording(cls, *args, **kwargs):
        made.append(original(cls, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(Predictor, "from_folder", classmethod(recording))
    assert _predict(root, folder, tmp_path / "a").exit_code == 0
    assert _predict(root, folder, tmp_path / "b", "--tile-scale", 1).exit_code == 0
    assert [p.max_tile_scale for p in made] == [DEFAULT_TILE_SCALE, 1.0]


def test_step_size_reaches_the_sliding_window(model: tuple[Path, Path]) -> None:
    import numpy as np

    from autoseg.inference.predictor import Predictor

    _, folder = model
    dense, sparse = (
        Predictor.from_folder(folder, device="cpu", tta=False, step=s) for s in (0.25, 1.0)
    )
    patch = dense.configuration.patch_size
    image = np.random.default_rng(0).normal(size=(1, *(2 * p + 3 for p in patch)))
    a = dense.predict_preprocessed(image.astype(np.float32))
    b = sparse.predict_preprocessed(image.astype(np.float32))
    assert a.shape == b.shape and not np.allclose(a, b)  # more, overlapping tiles with 0.25
