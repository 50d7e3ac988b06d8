"""Which image goes with which label: the naming rules of ``autoseg init``.

Pure rules on names (no file is opened), so that every habit is tested in milliseconds.

Images. With one channel, a file's name is its case, except when *every* image name ends in
``_0000`` (nnU-Net's channel suffix, already there) or in ``_<channel name>`` / ``-<channel
name>`` (``_ct``): then that suffix is dropped. ``case_0001`` among ``case_0000``, ``case_0002``
is a case id, never a channel. With several channels (``--channel T1 --channel T2``), each file
names its channel: ``CASE_0000``, ``CASE_0001`` (index in the order of ``--channel``) or
``CASE_T1``, ``CASE-t2`` (the channel's name, any case); a file with neither holds every channel
of its case (a 4D file, checked when read).

Labels. A label pairs with the image of the same name (``CASE``; with one channel also the
image's whole name, ``CASE_0000``), else with the name less one label suffix: ``_seg``,
``_segmentation``, ``_label``, ``_labels``, ``_mask``, ``_masks``, ``_gt`` after ``_``, ``-``
or ``.`` (any case). Nothing else is guessed: what pairs with nothing, or with two, is listed as
unmatched with the reason.

Case ids. Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_`` and leading
``.``, ``_``, ``-`` are dropped (a leading dot hides a file), so that the ids are what
``autoseg.data.dataset`` reads back from ``CASE_0000<ending>`` and ``CASE<ending>``; two names
that would become one id are both refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoseg.data.dataset import split_channel_suffix
from autoseg.data.sources import ImageSource

__all__ = [
    "LABEL_SUFFIXES",
    "Pair",
    "Pairing",
    "Unmatched",
    "label_suffix",
    "pair_sources",
    "safe_case_id",
]

LABEL_SUFFIXES = ("seg", "segmentation", "label", "labels", "mask", "masks", "gt")
_LABEL_SUFFIX = re.compile(r"(.+?)([_.-](?:" + "|".join(LABEL_SUFFIXES) + r"))", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Pair:
    """One case: its image source(s) and its label.

    Attributes:
        case_id: the id written (``CASE_0000<ending>``, ``CASE<ending>``).
        images: one source per channel in ``--channel`` order, or one holding every channel.
        label: the label source.
        notes: how the pair was made (suffixes dropped, renames), for the table.
    """

    case_id: str
    images: tuple[ImageSource, ...]
    label: ImageSource
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unmatched:
    """A source that pairs with nothing (or too much), and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Pairing:
    """The pairs found, sorted by case id, and what stays unmatched."""

    cases: tuple[Pair, ...]
    unmatched: tuple[Unmatched, ...]


def safe_case_id(name: str) -> str:
    """``"Patient 7 (CT)"`` -> ``"Patient_7_CT_"``: letters, digits, ``._-`` only, no leading
    ``._-``; ``"case"`` when nothing is left."""
    cleaned = _UNSAFE.sub("_", name).lstrip("._-")
    return cleaned or "case"


def label_suffix(name: str) -> tuple[str, str] | None:
    """``"case1_seg"`` -> ``("case1", "_seg")``; None without a label suffix."""
    match = _LABEL_SUFFIX.fullmatch(name)
    return None if match is None else (match.group(1), match.group(2))


def _channel_suffix(name: str, channels: Sequence[str]) -> tuple[str, int, str] | None:
    """``(case, channel index, suffix)`` when ``name`` ends in ``_XXXX`` (an index of
    ``channels``) or in ``_<channel name>`` / ``-<channel name>``."""
    split = split_channel_suffix(name)
    if split is not None and split[1] < len(channels):
        return split[0], split[1], name[len(split[0]) :]
    best: tuple[str, int, str] | None = None
    for index, channel in enumerate(channels):
        for sep in "_-":
            suffix = sep + channel.lower()
            longer = best is None or len(suffix) > len(best[2])
            if name.lower().endswith(suffix) and len(name) > len(suffix) and longer:
                best = (name[: -len(suffix)], index, name[-len(suffix) :])
    return best


def pair_sources(
    images: Sequence[ImageSource], labels: Sequence[ImageSource], channels: Sequence[str]
) -> Pairing:
    """Pair image sources with label sources by name (the rules of this module's docstring).

    Args:
        images: the image sources (``autoseg.data.sources.list_sources``).
        labels: the label sources.
        channels: the channel names, in order (at least one).

    Returns:
        The cases and the unmatched sources, each with its reason.
    """
    unmatched: list[Unmatched] = []
    groups, notes = _group_images(images, channels, unmatched)
    # what a label may be called to pair with a case: its key, and for one channel the
    # image's whole name; a name two cases could claim pairs with neither
    keys: dict[str, str | None] = {}
    for key, group in groups.items():
        names = {key} | ({s.name for s in group.values()} if len(channels) == 1 else set())
        for name in names:
            keys[name] = key if keys.get(name, key) == key else None
    found: dict[str, list[tuple[ImageSource, str]]] = {}
    for label in labels:
        stripped = label_suffix(label.name)
        tries = [(label.name, "")] + ([stripped] if stripped else [])
        hit = next(((keys[n], how) for n, how in tries if keys.get(n)), None)
        if hit is None:
            looked = " or ".join(repr(n) for n, _ in tries)
            unmatched.append(
                Unmatched(label.path, f"label without image (no image named {looked})")
            )
            continue
        found.setdefault(hit[0], []).append((label, hit[1]))
    cases: dict[str, Pair] = {}
    claimed: dict[str, list[str]] = {}
    for key in sorted(groups):
        group = groups[key]
        hits = found.get(key, [])
        if not hits:
            unmatched.extend(
                Unmatched(s.path, f"image without label (no label named {key!r}, {key}_seg, ...)")
                for s in group.values()
            )
            continue
        if len(hits) > 1:
            names = ", ".join(s.path.name for s, _ in hits)
            unmatched.extend(
                Unmatched(s.path, f"case {key!r} has several labels ({names}); keep one")
                for s, _ in hits
            )
            continue
        label, how = hits[0]
        case_id = safe_case_id(key)
        case_notes = list(notes.get(key, ()))
        if how:
            case_notes.append(f"label suffix {how}")
        if case_id != key:
            case_notes.append(f"id from {key!r}")
        claimed.setdefault(case_id, []).append(key)
        ordered = tuple(group[c] for c in sorted(group))
        cases[key] = Pair(case_id, ordered, label, tuple(case_notes))
    for case_id, keys_of in claimed.items():
        if len(keys_of) > 1:
            for key in keys_of:
                pair = cases.pop(key)
                others = ", ".join(repr(k) for k in keys_of if k != key)
                reason = f"case {key!r} and {others} would both be named {case_id!r}; rename one"
                unmatched.extend(Unmatched(s.path, reason) for s in (*pair.images, pair.label))
    ordered_cases = tuple(sorted(cases.values(), key=lambda p: p.case_id))
    return Pairing(ordered_cases, tuple(sorted(unmatched, key=lambda u: str(u.path))))


def _group_images(
    images: Sequence[ImageSource], channels: Sequence[str], unmatched: list[Unmatched]
) -> tuple[dict[str, dict[int, ImageSource]], dict[str, list[str]]]:
    """Case key -> {channel: source} (channel -1: one source holding every channel), and the
    notes of each case (which suffix was dropped)."""
    splits = {s.path: _channel_suffix(s.name, channels) for s in images}
    members: dict[str, list[tuple[int, ImageSource]]] = {}
    notes: dict[str, list[str]] = {}
    # one channel: a suffix is dropped only when every image has one (else it is part of ids)
    strip = len(channels) > 1 or (bool(images) and all(splits[s.path] for s in images))
    for source in images:
        split = splits[source.path] if strip else None
        key, channel = (split[0], split[1]) if split else (source.name, -1)
        members.setdefault(key, []).append((channel, source))
        if split and len(channels) == 1:
            notes[key] = [f"image suffix {split[2]}"]
    groups: dict[str, dict[int, ImageSource]] = {}
    for key, entries in members.items():
        found = [c for c, _ in entries]
        if len(set(found)) != len(found) or (-1 in found and len(found) > 1):
            names = ", ".join(s.path.name for _, s in entries)
            reason = f"case {key!r} is given more than once ({names}); keep one"
            unmatched.extend(Unmatched(s.path, reason) for _, s in entries)
        else:
            groups[key] = {0 if len(channels) == 1 else c: s for c, s in entries}
    for key in list(groups):
        group = groups[key]
        missing = [channels[c] for c in range(len(channels)) if c not in group and -1 not in group]
        if missing:
            names = ", ".join(f"{key}_{channels.index(m):04d} or {key}_{m}" for m in missing)
            unmatched.extend(
                Unmatched(s.path, f"case {key!r} lacks channel(s): {names}")
                for s in groups.pop(key).values()
            )
    return groups, notes
