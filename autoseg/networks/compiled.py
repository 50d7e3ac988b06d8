"""torch.compile with a safe fallback: compiled where it works, eager with one log line where not.

``torch.compile`` fails in ways a user can do nothing about (no C++ compiler for the CPU
backend, Triton missing or too old for the GPU, an operation dynamo cannot trace), and nnU-Net
users meet those failures as crashes. Here the first step is tried compiled and timed; any
exception then, or at a later call (a new tile shape recompiles), switches to the eager module
for good, with one warning. Default: on for CUDA, off on the CPU (on this project's 2-core CPU
the compile time is not won back; docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledModule", "compile_with_fallback", "use_compile"]

log = logging.getLogger(__name__)

Compiler = Callable[[nn.Module], Callable[..., Any]]


def use_compile(requested: bool | None, device: torch.device) -> bool:
    """``--compile/--no-compile`` resolved for ``device``: None means on for CUDA only."""
    return device.type == "cuda" if requested is None else requested


class CompiledModule(nn.Module):
    """A module called through its compiled version until that fails once, then eagerly.

    ``train()``/``eval()`` and ``state_dict`` act on the wrapped module (the compiled one
    shares its parameters), so checkpoints keep their keys.

    Args:
        module: the eager module.
        compiler: makes the compiled callable (``torch.compile`` by default).

    Attributes:
        module: the eager module.
        failure: why compilation was given up (None while compiled).
    """

    def __init__(self, module: nn.Module, compiler: Compiler | None = None) -> None:
        super().__init__()
        self.module = module
        self.failure: str | None = None
        # kept out of the module tree: it is the same parameters under a second name
        self.__dict__["_compiled"] = (compiler or torch.compile)(module)

    @property
    def compiled(self) -> bool:
        """True while calls go through the compiled module."""
        return self.__dict__["_compiled"] is not None

    def fall_back(self, exc: BaseException) -> None:
        """Give up compilation for good, with one log line naming ``exc``."""
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        self.failure = f"{type(exc).__name__}: {first}"
        self.__dict__["_compiled"] = None
        log.warning("torch.compile failed (%s); running eager", self.failure)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        compiled = self.__dict__["_compiled"]
        if compiled is not None:
            try:
                return compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compile failure means: run eager
                self.fall_back(exc)
        return self.module(*args, **kwargs)


def compile_with_fallback(
    module: nn.Module,
    example: torch.Tensor,
    *,
    backward: bool = False,
    compiler: Compiler | None = None,
) -> nn.Module:
    """``module`` compiled, after a timed first step on ``example``; ``module`` if that fails.

    Call it under the autocast the real steps use, so the first step compiles what they run.

    Args:
        module: the eager module (train or eval mode as it will run).
        example: an input of the shape the steps use, on the module's device.
        backward: also run a backward pass (training: compile failures of the backward graph
            show there); the gradients it leaves are cleared.
        compiler: as for ``CompiledModule``.

    Returns:
        A ``CompiledModule`` whose first step worked, or ``module`` itself (one warning logged).
    """
    start = time.perf_counter()
    try:
        wrapped = CompiledModule(module, compiler)
        grad = torch.enable_grad() if backward else torch.inference_mode()
        with grad:
            out = wrapped.__dict__["_compiled"](example)
            if backward:
                outs = out if isinstance(out, (list, tuple)) else [out]
                sum(o.float().sum() for o in outs).backward()
    except Exception as exc:  # noqa: BLE001 - any compile failure means: run eager
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        log.warning("torch.compile failed (%s: %s); running eager", type(exc).__name__, first)
        return module
    finally:
        if backward:
            with contextlib.suppress(Exception):
                module.zero_grad(set_to_none=True)
    log.info("torch.compile: first step took %.1f s", time.perf_counter() - start)
    return wrapped
