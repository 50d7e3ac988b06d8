"""Cross-validation splits: 5 folds over the sorted case ids, as nnU-Net makes them.

The folds equal scikit-learn's ``KFold(5, shuffle=True, random_state=12345)`` over the sorted
ids (a permutation by ``numpy.random.RandomState(12345)``, then contiguous folds, the first
``n % k`` folds one case larger), so fold 0 means the same cases in both tools. The splits are
written to ``<home>/<dataset>/splits.json`` once; a file the user edited is respected.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.serial import ascii_int, atomic_write_text, remove_temp_files

NUM_FOLDS = 5
SPLIT_SEED = 12345

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """One fold: the training and the validation case ids."""

    train: tuple[str, ...]
    val: tuple[str, ...]


def make_splits(
    case_ids: list[str] | tuple[str, ...], folds: int = NUM_FOLDS, seed: int = SPLIT_SEED
) -> list[Split]:
    """Shuffled k-fold splits of the sorted case ids."""
    ids = sorted(case_ids)
    if len(ids) < folds:
        raise AutosegError(f"{len(ids)} cases are too few for {folds}-fold cross-validation")
    order = np.arange(len(ids))
    np.random.RandomState(seed).shuffle(order)
    sizes = [len(ids) // folds + (1 if k < len(ids) % folds else 0) for k in range(folds)]
    splits, start = [], 0
    for size in sizes:
        val_idx = set(order[start : start + size].tolist())
        start += size
        splits.append(
            Split(
                train=tuple(ids[i] for i in range(len(ids)) if i not in val_idx),
                val=tuple(ids[i] for i in sorted(val_idx)),
            )
        )
    return splits


def load_or_create_splits(path: Path, case_ids: list[str] | tuple[str, ...]) -> list[Split]:
    """Read ``splits.json`` (respecting user edits) or create it.

    Raises:
        AutosegError: the file is malformed or names cases that are not in the dataset.
    """
    known = set(case_ids)
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            splits = [Split(train=tuple(s["train"]), val=tuple(s["val"])) for s in data]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise AutosegError(
                f"{path}: not a valid splits file: expected [{{'train': [...], 'val': [...]}}, "
                f"...] ({exc})"
            ) from exc
        listed = {c for s in splits for c in (*s.train, *s.val)}
        unknown = sorted(listed - known)
        if unknown:
            raise AutosegError(
                f"{path}: names cases not in the dataset: {', '.join(unknown[:10])}; edit it, or "
                "delete it to make new splits"
            )
        unused = sorted(known - listed)
        if unused:
            log.warning(
                "%s: %d case(s) of the dataset are in no fold and will not be used: %s; delete "
                "the file to make new splits",
                path,
                len(unused),
                ", ".join(unused[:10]),
            )
        return splits
    splits = make_splits(case_ids)
    text = json.dumps([{"train": list(s.train), "val": list(s.val)} for s in splits], indent=1)
    remove_temp_files(path)  # of a killed run
    atomic_write_text(path, text + "\n")
    return splits


def parse_fold(fold: str) -> str:
    """``fold0``, ``0`` or ``all`` -> ``"0"`` / ``"all"``.

    Raises:
        AutosegError: anything else.
    """
    text = fold.strip().lower().removeprefix("fold_").removeprefix("fold")
    number = ascii_int(text) if "+" not in text and "-" not in text else None
    if text == "all" or (number is not None and number < 100):
        return text if text == "all" else str(number)
    raise AutosegError(f"fold '{fold}': expected fold0..fold4, 0..4 or all")


def fold_cases(splits: list[Split], fold: str, case_ids: list[str] | tuple[str, ...]) -> Split:
    """The training/validation cases of ``fold`` (``all``: every case trains; no validation)."""
    if fold == "all":
        return Split(train=tuple(sorted(case_ids)), val=())
    k = int(fold)
    if k >= len(splits):
        raise AutosegError(f"fold {k} does not exist: the splits file has {len(splits)} folds")
    return splits[k]
