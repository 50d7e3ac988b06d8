"""``autoseg`` CLI under torch.distributed.run that also saves every rank's final weights.

Used by tests/training/test_train.py: each rank writes ``$AUTOSEG_DDP_OUT/rank<RANK>.pt`` (the
state of
its TrainingStep's network when the process ends), so the test can check that DDP kept the
ranks' weights identical although they trained on different batches.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import torch

from autoseg.cli.commands import main
from autoseg.training import step as step_module

_steps: list[step_module.TrainingStep] = []
_init = step_module.TrainingStep.__init__


def _recording_init(self, *args, **kwargs) -> None:
    _init(self, *args, **kwargs)
    _steps.append(self)


def _save() -> None:
    out = Path(os.environ["AUTOSEG_DDP_OUT"]) / f"rank{os.environ['RANK']}.pt"
    torch.save({k: v.detach().cpu() for k, v in _steps[-1].network.state_dict().items()}, out)


step_module.TrainingStep.__init__ = _recording_init
atexit.register(_save)

if __name__ == "__main__":
    main()
