"""User-facing errors.

Everything a user can cause (a bad file, a missing model, a wrong option) is raised as an
``AutosegError``: the CLI prints its message and exits with code 2, without a traceback.
Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (or with the dataset as a whole)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class AutosegError(Exception):
    """An error caused by the user's input; printed without a traceback, exit code 2."""

    exit_code = 2


class DatasetError(AutosegError):
    """Every problem found in a dataset, reported together."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...], what: str = "dataset"):
        self.problems = tuple(problems)
        lines = [f"{len(self.problems)} problem(s) found in the {what}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))
