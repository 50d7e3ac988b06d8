"""autoseg init's naming rules: which image pairs with which label (issue 23, item 5)."""

from __future__ import annotations

from pathlib import Path

from autoseg.data.dataset import split_channel_suffix
from autoseg.data.pairing import label_suffix, pair_sources, safe_case_id
from autoseg.data.sources import FILE, ImageSource


def sources(*names: str, folder: str = "/in") -> list[ImageSource]:
    return [ImageSource(Path(folder) / f"{n}.nii.gz", FILE, n) for n in names]


def pairs(images: list[str], labels: list[str], channels=("CT",)):
    result = pair_sources(sources(*images), sources(*labels, folder="/lab"), channels)
    found = {p.case_id: ([s.name for s in p.images], p.label.name) for p in result.cases}
    left = {u.path.name.removesuffix(".nii.gz"): u.reason for u in result.unmatched}
    return found, left


def test_identical_names_pair() -> None:
    found, left = pairs(["a", "b"], ["b", "a"])
    assert found == {"a": (["a"], "a"), "b": (["b"], "b")} and not left


def test_existing_channel_suffix_is_dropped_and_labels_may_keep_it() -> None:
    found, left = pairs(["a_0000", "b_0000"], ["a", "b_0000"])
    assert found == {"a": (["a_0000"], "a"), "b": (["b_0000"], "b_0000")} and not left


def test_numbered_cases_are_not_channels() -> None:
    """case_0000, case_0001: with one channel, _0001 is no channel, so nothing is dropped."""
    found, left = pairs(["case_0000", "case_0001"], ["case_0000", "case_0001"])
    assert set(found) == {"case_0000", "case_0001"} and not left
    assert found["case_0001"] == (["case_0001"], "case_0001")


def test_label_suffixes() -> None:
    labels = ["a_seg", "b_label", "c_mask", "d-labels", "e.segmentation", "f_GT", "g_masks"]
    found, left = pairs(list("abcdefg"), labels)
    assert {k: v[1] for k, v in found.items()} == dict(zip("abcdefg", labels, strict=True))
    assert not left
    assert label_suffix("x_seg") == ("x", "_seg") and label_suffix("xseg") is None


def test_what_pairs_with_nothing_or_two_is_listed_not_guessed() -> None:
    found, left = pairs(["a", "b", "c"], ["a", "a_seg", "b_segm", "z"])
    assert found == {}
    assert "several labels" in left["a"] and "several labels" in left["a_seg"]
    assert "label without image" in left["b_segm"] and "label without image" in left["z"]
    assert "image without label" in left["b"] and "image without label" in left["c"]


def test_several_channels_by_index_or_by_name() -> None:
    images = ["p_0000", "p_0001", "q_t1", "q-T2", "r_t1"]
    found, left = pairs(images, ["p", "q", "r"], channels=("T1", "T2"))
    assert found == {"p": (["p_0000", "p_0001"], "p"), "q": (["q_t1", "q-T2"], "q")}
    assert "lacks channel(s): r_0001 or r_T2" in left["r_t1"]
    assert "image without label" not in left.get("r", "")


def test_longest_channel_name_wins() -> None:
    """BraTS: t1 and t1ce; x_t1ce is channel t1ce, not t1 of case 'x_t1ce'[:-3]."""
    images = ["x_t1", "x_t1ce", "x_t2", "x_flair"]
    found, _ = pairs(images, ["x_seg"], channels=("t1", "t1ce", "t2", "flair"))
    assert found == {"x": (images, "x_seg")}


def test_one_file_holding_every_channel() -> None:
    found, left = pairs(["a", "b_0000"], ["a", "b"], channels=("T1", "T2"))
    assert found == {"a": (["a"], "a")}  # a 4D file: its channel count is checked when read
    assert "lacks channel(s)" in left["b_0000"]


def test_duplicate_case_is_refused_whole() -> None:
    result = pair_sources(
        [ImageSource(Path("/in/a.nii.gz"), FILE, "a"), ImageSource(Path("/in/a.nii"), FILE, "a")],
        sources("a", folder="/lab"),
        ("CT",),
    )
    assert not result.cases
    assert {u.path.name for u in result.unmatched} == {"a.nii.gz", "a.nii"}
    assert any("given more than once" in u.reason for u in result.unmatched)


def test_case_ids_are_what_the_loader_reads_back() -> None:
    for name in ("Patient 7 (CT)", ".hidden", "ü-ber", "a_0001", "x.nii", "---"):
        case_id = safe_case_id(name)
        assert case_id and not case_id.startswith((".", "-", "_"))
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in case_id)
        assert split_channel_suffix(f"{case_id}_0000") == (case_id, 0)
    assert safe_case_id("Patient 7 (CT)") == "Patient_7_CT_"
    found, left = pairs(["a b", "a_b"], ["a b", "a_b"])
    assert not found and "would both be named 'a_b'" in left["a b"]
