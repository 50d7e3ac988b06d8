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

    # One rule names plans and models: a plans name (``Plans.plans_name``) is a planner's name
    # (its automatic plans) or a named plan's (``autoseg plan --name``, never a planner's);
    # ``plans.json`` / ``plans_<name>.json`` and ``models/<name>/<configuration>/`` follow it.
    def plans(self, planner: str = DEFAULT_PLANNER) -> Path:
        """The plans file of the plans name ``planner``."""
        return self.work / ("plans.json" if planner == DEFAULT_PLANNER else f"plans_{planner}.json")

    def plans_names(self) -> list[str]:
        """Every plans name with a plans file here, sorted (``default`` first)."""
        names = [p.name[len("plans_") : -len(".json")] for p in self.work.glob("plans_*.json")]
        default = [DEFAULT_PLANNER] if self.plans().is_file() else []
        return default + sorted(n for n in names if n != DEFAULT_PLANNER)

    @property
    def splits(self) -> Path:
        return self.work / "splits.json"

    def model_folder(self, planner: str, configuration: str) -> Path:
        """The model folder of a configuration of the plans name ``planner``."""
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
                f"{path}: no plans for dataset '{self.name}' named '{planner}'; "
                f"run `autoseg plan {self.name}` first (`autoseg plans {self.name}` lists the "
                "plans there are)"
            )
        return path


def _inside(path: Path, folder: Path) -> bool:
    """``path`` equals ``folder`` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


def recorded_source(work: Path) -> Path | None:
    """The raw dataset folder recorded in ``work`` by an earlier ``autoseg plan``, if any."""
    source = work / "dataset_source.txt"
    if not source.is_file():
        return None
    # only the newline written by record_source: a folder name may end in a space
    text = source.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    return Path(text) if text.strip() else None


def check_apart(dirs: DatasetDirs, home: Path) -> None:
    """Refuse a home that is, or lies inside, the dataset folder, and a dataset folder inside
    autoseg's work files: autoseg would write into (and could overwrite) the user's data.

    Raises:
        AutosegError: the folders overlap (real paths compared).
    """
    if dirs.raw is None:
        return
    raw, real_home = Path(os.path.realpath(dirs.raw)), Path(os.path.realpath(home))
    work = Path(os.path.realpath(dirs.work))
    if _inside(real_home, raw) or _inside(work, raw):
        raise AutosegError(
            f"{home}: the home folder is (or is inside) the dataset folder {raw}; autoseg "
            "would write its work files among your data. Choose a --home outside it"
        )
    if _inside(raw, real_home):
        top = real_home / raw.relative_to(real_home).parts[0]
        if top == work or (top / "dataset_source.txt").is_file():
            raise AutosegError(
                f"{raw}: the dataset folder lies inside autoseg's work folder {top}; move the "
                "dataset out of the home folder (or choose another --home)"
            )


def resolve_dataset(dataset: str, home: Path, same_source: bool = True) -> DatasetDirs:
    """Resolve DATASET: a dataset folder (with dataset.json) or the name of one under home.

    Args:
        dataset: a dataset folder, or the name of one planned in ``home``; surrounding
            whitespace in a name is tolerated when no folder of that exact name exists.
        home: the home folder (resolved).
        same_source: refuse a dataset folder whose name was planned in ``home`` from another
            folder (``autoseg plan --replan`` passes False and starts afresh).

    Raises:
        AutosegError: neither a dataset folder nor a known name; the home and the dataset
            overlap; another dataset of the same name is planned in the home.
    """
    path = Path(dataset).expanduser()
    if not path.exists() and dataset.strip() != dataset and Path(dataset.strip()).is_dir():
        path = Path(dataset.strip())
    if path.is_dir() and (path / "dataset.json").exists():
        raw = path.resolve()
        dirs = DatasetDirs(name=raw.name, raw=raw, work=home / raw.name)
        check_apart(dirs, home)
        recorded = recorded_source(dirs.work)
        if same_source and recorded is not None and Path(os.path.realpath(recorded)) != raw:
            raise AutosegError(
                f"{raw}: the home {home} already holds a dataset named '{raw.name}', planned "
                f"from {recorded}. Use another --home for this one, or `autoseg plan {path} "
                "--replan` to replace the other's plans and preprocessed data"
            )
        return dirs
    for name in dict.fromkeys((dataset, dataset.strip())):
        work = home / name
        if (work / "dataset_source.txt").is_file():
            dirs = DatasetDirs(name=name, raw=recorded_source(work), work=work)
            check_apart(dirs, home)
            return dirs
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
