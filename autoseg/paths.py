"""Where autoseg keeps things: the home folder and each dataset's folder inside it.

The home folder is resolved once, by the CLI, from ``--home``, else the ``AUTOSEG_HOME``
environment variable (read when the command runs), else ``./autoseg_home``; then passed down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from autoseg.errors import AutosegError
from autoseg.serial import atomic_write_text

DEFAULT_HOME = "autoseg_home"
DEFAULT_PLANNER = "default"


def resolve_home(home: Path | None) -> Path:
    """The working folder: the option, else ``$AUTOSEG_HOME``, else ``./autoseg_home``."""
    if home is not None:
        return Path(home).expanduser().resolve()
    env = os.environ.get("AUTOSEG_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / DEFAULT_HOME).resolve()


@dataclass(frozen=True)
class DatasetDirs:
    """The folders of one dataset: the raw data (read only) and autoseg's work folder."""

    name: str
    raw: Path | None
    work: Path

    @property
    def fingerprint(self) -> Path:
        return self.work / "fingerprint.json"

    def plans(self, planner: str = DEFAULT_PLANNER) -> Path:
        return self.work / ("plans.json" if planner == DEFAULT_PLANNER else f"plans_{planner}.json")

    @property
    def splits(self) -> Path:
        return self.work / "splits.json"

    def model_folder(self, planner: str, configuration: str) -> Path:
        return self.work / "models" / planner / configuration

    def require_raw(self) -> Path:
        if self.raw is None or not self.raw.is_dir():
            raise AutosegError(
                f"the raw data of dataset '{self.name}' is not found "
                f"(recorded in {self.work / 'dataset_source.txt'}); run `autoseg plan PATH` again"
            )
        return self.raw

    def require_plans(self, planner: str = DEFAULT_PLANNER) -> Path:
        path = self.plans(planner)
        if not path.is_file():
            raise AutosegError(
                f"{path}: no plans for dataset '{self.name}' (planner '{planner}'); "
                f"run `autoseg plan {self.name}` first"
            )
        return path


def resolve_dataset(dataset: str, home: Path) -> DatasetDirs:
    """Resolve DATASET: a dataset folder (with dataset.json) or the name of one under home.

    Raises:
        AutosegError: neither a dataset folder nor a known name.
    """
    path = Path(dataset).expanduser()
    if path.is_dir() and (path / "dataset.json").exists():
        raw = path.resolve()
        return DatasetDirs(name=raw.name, raw=raw, work=home / raw.name)
    work = home / dataset
    source = work / "dataset_source.txt"
    if source.is_file():
        raw_text = source.read_text(encoding="utf-8").strip()
        return DatasetDirs(name=dataset, raw=Path(raw_text) if raw_text else None, work=work)
    if path.is_dir():
        raise AutosegError(f"{path}: not a dataset folder (no dataset.json in it)")
    known = (
        sorted(p.parent.name for p in home.glob("*/dataset_source.txt")) if home.is_dir() else []
    )
    hint = f"; known in {home}: {', '.join(known)}" if known else f" (home: {home})"
    raise AutosegError(f"{dataset}: no such dataset folder, and no dataset of that name{hint}")


def record_source(dirs: DatasetDirs) -> None:
    """Remember where the raw data lives, so later commands accept the dataset's name."""
    if dirs.raw is not None:
        atomic_write_text(dirs.work / "dataset_source.txt", str(dirs.raw) + "\n")
