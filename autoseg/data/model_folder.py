"""The layout of a model folder, in one place: ``<home>/<dataset>/models/<planner>/<config>/``.

``ModelFolder`` knows every path inside it (plans, post-processing decision, fold folders,
checkpoints, validation outputs and summaries), which folds are trained and validated, and which
folds ``predict`` uses by default. Nothing else spells these names.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoseg.data.splits import NUM_FOLDS, parse_fold
from autoseg.errors import AutosegError
from autoseg.serial import ascii_int

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINTS", "ModelFolder", "checkpoint_file", "find_model_folders", "named_folds"]

CHECKPOINTS = {
    "final": "checkpoint_final.pt",
    "best": "checkpoint_best.pt",
    "latest": "checkpoint_latest.pt",
}
CV_FOLDS = tuple(str(k) for k in range(NUM_FOLDS))
_FOLD_DIR = re.compile(r"^fold_([0-9]+|all)$")


def checkpoint_file(checkpoint: str) -> str:
    """``final``/``best``/``latest`` -> its file name; a name ending in ``.pt`` as it is.

    Raises:
        AutosegError: anything else, or a name with a folder in it.
    """
    if checkpoint in CHECKPOINTS:
        return CHECKPOINTS[checkpoint]
    if checkpoint.endswith(".pt") and Path(checkpoint).name == checkpoint:
        return checkpoint
    raise AutosegError(
        f"--checkpoint {checkpoint}: expected final, best, latest or a file name ending in .pt"
    )


def named_folds(folds: Sequence[object]) -> tuple[str, ...]:
    """Folds as a user names them (``0``, ``fold_1``, ``all``), each once, in the order given.

    A fold named twice (``-f 0 0``) is used once, with a warning: averaging it twice would
    weight it double.

    Raises:
        AutosegError: a name that is not a fold.
    """
    names = [parse_fold(str(f)) for f in folds]
    unique = tuple(dict.fromkeys(names))
    if len(unique) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1}, key=_fold_order)
        log.warning("fold(s) %s named more than once: each is used once", ", ".join(twice))
    return unique


def _fold_order(name: str) -> tuple[bool, int, str]:
    number = ascii_int(name)
    return (number is None, number or 0, name)


@dataclass(frozen=True)
class ModelFolder:
    """One trained configuration's folder and everything inside it.

    Attributes:
        path: ``<home>/<dataset>/models/<planner>/<config>/``.
    """

    path: Path

    # ------------------------------------------------------------------ files of the folder
    @property
    def name(self) -> str:
        """The configuration's name (the folder's name)."""
        return self.path.name

    @property
    def plans(self) -> Path:
        """``plans.json``: a copy of the plans the folds were trained with."""
        return self.path / "plans.json"

    @property
    def postprocessing(self) -> Path:
        """``postprocessing.json``: the decision made on the pooled cross-validation."""
        return self.path / "postprocessing.json"

    @property
    def export_manifest(self) -> Path:
        """``export.json``: what an exported model holds (``autoseg export``); kept on import."""
        return self.path / "export.json"

    @property
    def previous_stage_dir(self) -> Path:
        """A cascade stage's inputs from the previous stage: ``previous_stage/CASE.npy``."""
        return self.path / "previous_stage"

    @property
    def previous_stage_index(self) -> Path:
        """``previous_stage/index.json``: case -> SHA-256 of its source prediction (last)."""
        return self.previous_stage_dir / "index.json"

    @property
    def replaced_root(self) -> Path:
        """``<home>/<dataset>/replaced_models/<planner>/``: where ``set_aside`` moves a model
        folder (outside ``models/``, so that no command takes it for a model)."""
        return self.path.parent.parent.parent / "replaced_models" / self.path.parent.name

    def set_aside(self) -> Path:
        """Move the whole folder (folds, plans, decisions) to ``replaced_root/<config>-<time>``.

        Returns:
            The folder's new place.
        """
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.replaced_root / f"{self.name}-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.replaced_root / f"{self.name}-{stamp}-{n}"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path.rename(target)
        return target

    # ------------------------------------------------------------------ files of one fold
    def fold_dir(self, fold: str) -> Path:
        """``fold_<k>/`` (k in 0..4 or ``all``)."""
        return self.path / f"fold_{fold}"

    def checkpoint(self, fold: str, checkpoint: str = "final") -> Path:
        """A fold's checkpoint file (``checkpoint``: see ``checkpoint_file``)."""
        return self.fold_dir(fold) / checkpoint_file(checkpoint)

    def training_log(self, fold: str) -> Path:
        return self.fold_dir(fold) / "training.log"

    def validation_dir(self, fold: str) -> Path:
        """The fold's predictions of its validation cases."""
        return self.fold_dir(fold) / "validation"

    def validation_refs(self, fold: str) -> Path:
        """Links to the reference labels of the fold's validation cases."""
        return self.fold_dir(fold) / ".validation_refs"

    def summary(self, fold: str) -> Path:
        """``summary.json``: the evaluation of the validation predictions."""
        return self.fold_dir(fold) / "summary.json"

    def validation_done(self, fold: str) -> Path:
        """Written last by a fold's validation: its presence means the fold is validated."""
        return self.fold_dir(fold) / "validation_done"

    # ------------------------------------------------------------------ state
    def folds_with(self, checkpoint: str = "final") -> list[str]:
        """Fold names (``"0"``, ..., ``"all"``) whose ``checkpoint`` exists, in fold order."""
        name = checkpoint_file(checkpoint)
        found = []
        for child in self.path.iterdir() if self.path.is_dir() else ():
            match = _FOLD_DIR.match(child.name)
            if match and (child / name).is_file():
                found.append(match.group(1))
        return sorted(found, key=_fold_order)

    def validated_folds(self) -> list[str]:
        """The cross-validation folds (0..4) whose validation finished."""
        return [k for k in CV_FOLDS if self.validation_done(k).is_file()]

    def default_folds(self, checkpoint: str = "final") -> tuple[str, ...]:
        """The folds ``predict`` uses when none are named.

        The 5 cross-validation folds when all have ``checkpoint``, else fold ``all`` when it
        has one, else the cross-validation folds there are. Fold ``all`` is never averaged with
        folds 0-4: it has seen their validation cases.

        Raises:
            AutosegError: no fold has ``checkpoint``.
        """
        available = self.folds_with(checkpoint)
        cv = [f for f in available if f in CV_FOLDS]
        if len(cv) == NUM_FOLDS:
            log.info("%s: using the 5 cross-validation folds (0-4)", self.path)
            return CV_FOLDS
        if "all" in available:
            note = f" (cross-validation folds trained: {', '.join(cv)})" if cv else ""
            log.info("%s: using fold 'all'%s", self.path, note)
            return ("all",)
        if not cv:
            raise self.not_a_model(f"no fold_<k>/{checkpoint_file(checkpoint)}")
        log.warning(
            "%s: using folds %s only (not all 5 cross-validation folds are trained)",
            self.path,
            ", ".join(cv),
        )
        return tuple(cv)

    def not_a_model(self, why: str) -> AutosegError:
        """The error for a folder that is not (yet) a usable model folder."""
        return AutosegError(
            f"{self.path}: not an autoseg model folder ({why}); expected "
            "<home>/<dataset>/models/<planner>/<config>/ holding plans.json and fold_<k>/"
        )


def find_model_folders(
    home: Path,
    dataset: str = "*",
    checkpoint: str = "final",
    configuration: str | None = None,
    planner: str | None = None,
) -> list[ModelFolder]:
    """Model folders under ``home`` with at least one fold holding ``checkpoint``.

    Args:
        home: the home folder.
        dataset: a dataset name, or ``*`` for every dataset.
        checkpoint: ``final``, ``best``, ``latest`` or a file name.
        configuration: keep only this configuration.
        planner: keep only this planner.

    Returns:
        The model folders, sorted by path.
    """
    name = checkpoint_file(checkpoint)
    found = {
        p.parent.parent
        for p in home.glob(f"{dataset}/models/*/*/fold_*/{name}")
        if _FOLD_DIR.match(p.parent.name)
    }
    return [
        ModelFolder(f)
        for f in sorted(found)
        if (configuration is None or f.name == configuration)
        and (planner is None or f.parent.name == planner)
    ]
