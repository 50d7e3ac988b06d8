"""Command-line habits from nnU-Net: what the ``autoseg`` group accepts before click parses.

Three rewrites of the argument list, done by :class:`HabitGroup` (the ``autoseg`` group's class):

- The global flags ``-v/--verbose``, ``-q/--quiet`` and ``--debug`` may stand anywhere
  (``autoseg predict ... -q``); they are moved in front of the command, where click expects them.
- ``-f 0 1 2`` (nnU-Net's form) is read as ``-f 0,1,2`` by every command with a ``folds`` option;
  likewise ``--patch-size 128 128 128`` and ``--spacing 1 1 1`` (read as ``128,128,128``).
- An nnU-Net flag that has another name here is refused with a one-line hint
  (``-chk best`` -> "no such option -chk: did you mean --checkpoint?") instead of being
  parsed as something else (click would read ``-chk`` as ``-c hk``).

Nothing here imports torch or the library: ``autoseg --help`` stays instant.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence

import typer.core

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import UsageError
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer depends on click
    from click.exceptions import UsageError
    from click.globals import get_current_context

_ARGV_KEY = "autoseg.argv"

GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet", "--debug")

# nnU-Net v2 flags whose meaning exists here under another name (or not at all)
NNUNET_FLAGS = {
    "-chk": "did you mean --checkpoint?",
    "-tr": "autoseg has one trainer; its variants are options (--epochs, --iterations)",
    "-p": "did you mean --planner?",
    "-pl": "did you mean --planner?",
    "-np": "did you mean --workers?",
    "-npfp": "did you mean --workers?",
    "-device": "did you mean --device?",
    "-gpu_memory_target": "did you mean --gpu-memory?",
    "--c": "did you mean --resume?",
    "--disable_tta": "did you mean --no-tta?",
    "--continue_prediction": "existing outputs are skipped by default (--overwrite replaces them)",
    "--verify_dataset_integrity": "plan always checks the dataset first",
    "--disable_progress_bar": "did you mean -q? (bars are also off when output is not a terminal)",
    "-djfile": "did you mean --dataset-json?",
    "-pfile": "did you mean --dataset-json?",
}
_FOLD = re.compile(r"^([0-9]+|all)$")
_NUMBER = re.compile(r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf)$", re.IGNORECASE)
#: options taking several values, by parameter name: what a value looks like
LIST_OPTIONS = {"folds": _FOLD, "patch_size": _NUMBER, "spacing": _NUMBER}


def _option_names(command: typer.core.TyperCommand) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        names.update(getattr(param, "opts", ()))
        names.update(getattr(param, "secondary_opts", ()))
    return names


def hoist_global_flags(args: Sequence[str]) -> list[str]:
    """Move the global flags found after the command (before any ``--``) to the front."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


def rewrite_command_args(command: typer.core.TyperCommand, args: Sequence[str]) -> list[str]:
    """The command's arguments with value lists joined (``LIST_OPTIONS``); nnU-Net flags refused.

    Raises:
        UsageError: an nnU-Net flag (or an ``--under_score`` spelling) this command does
            not have, with a hint naming the option to use.
    """
    names = _option_names(command)
    list_opts = {
        opt: LIST_OPTIONS[p.name]
        for p in command.params
        if p.name in LIST_OPTIONS
        for opt in getattr(p, "opts", ())
    }
    out: list[str] = []
    i, end = 0, (args.index("--") if "--" in args else len(args))
    while i < len(args):
        token = args[i]
        if i >= end:
            out.append(token)
            i += 1
            continue
        flag = token.split("=", 1)[0]
        if flag.startswith("-") and flag not in names:
            hint = NNUNET_FLAGS.get(flag)
            dashed = flag.replace("_", "-")
            if hint is None and flag.startswith("--") and dashed in names:
                hint = f"did you mean {dashed}?"
            if hint is not None:
                raise UsageError(f"no such option {flag}: {hint}")
        if token in list_opts:
            values = []
            i += 1
            while i < end and list_opts[token].match(args[i]):
                values.append(args[i])
                i += 1
            out.append(token)
            if values:
                out.append(",".join(values))
            continue
        out.append(token)
        i += 1
    return out


def command_line() -> str:
    """The command line being run, as the user typed it (shell-quoted), for reports."""
    ctx = get_current_context(silent=True)
    argv = ctx.meta.get(_ARGV_KEY) if ctx is not None else None
    return shlex.join(["autoseg", *(argv if argv is not None else sys.argv[1:])])


class HabitGroup(typer.core.TyperGroup):
    """The ``autoseg`` group: accepts the habits listed in the module docstring."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:  # noqa: D102 - click's signature
        args = [str(a) for a in args]  # CliRunner callers may pass paths
        ctx.meta[_ARGV_KEY] = args
        return super().parse_args(ctx, hoist_global_flags(args))

    def resolve_command(self, ctx, args: list[str]):  # noqa: D102 - click's signature
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, typer.core.TyperCommand):
            try:
                rest = rewrite_command_args(command, rest)
            except UsageError as exc:
                exc.ctx = ctx
                raise
        return name, command, rest
