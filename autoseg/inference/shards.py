"""Disjoint, deterministic shares of a folder of cases, for several machines or processes.

``predict --part i --parts n`` on n machines pointed at the same folder predicts every case
exactly once. A case's share is fixed by its id alone (SHA-256 of the id, modulo n), not by its
place in a listing, so a machine that lists the folder a moment later, after a new case
arrived, still agrees with the others about every case both saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TypeVar

from autoseg.errors import AutosegError

__all__ = ["case_part", "check_part", "select_part"]

V = TypeVar("V")


def check_part(part: int, parts: int) -> None:
    """Raises AutosegError unless ``0 <= part < parts``."""
    if parts < 1 or not 0 <= part < parts:
        raise AutosegError(f"--part {part} --parts {parts}: need parts >= 1 and 0 <= part < parts")


def case_part(case_id: str, parts: int) -> int:
    """The share (``0 .. parts - 1``) a case belongs to."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % parts


def select_part(cases: Mapping[str, V], part: int, parts: int) -> dict[str, V]:
    """The cases of share ``part`` out of ``parts``, in their original order.

    Raises:
        AutosegError: ``part`` outside ``0 .. parts - 1``.
    """
    check_part(part, parts)
    if parts == 1:
        return dict(cases)
    return {case: value for case, value in cases.items() if case_part(case, parts) == part}
