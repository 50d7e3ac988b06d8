"""Mutation testing of autoseg's numeric core with mutmut, one module at a time.

Usage (from the repository root, with the test extra and ``pip install mutmut`` in the venv)::

    python benchmarks/mutation.py rules            # one module
    python benchmarks/mutation.py all --children 2 # every module in turn
    python benchmarks/mutation.py loss --budget 600  # stop after 10 minutes: partial score

Each module is mutated against its fast, targeted test files only (see ``MODULES``). The run
happens in a throw-away copy of the working tree (mutmut rewrites the sources it mutates and
keeps its state in ``mutants/``), so the checkout is never touched; the copy is kept and its
path printed, for ``mutmut results`` / ``mutmut show NAME`` inside it. The score is
``killed / (killed + survived)``; timeouts count as killed, and mutants no test reaches are
reported on their own. Not part of CI: a module takes minutes to an hour on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module -> (source file, targeted test files)
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "rules": (
        "autoseg/planners/rules.py",
        ("tests/planning/test_planners.py", "tests/planning/test_pinned_rules.py"),
    ),
    "loss": (
        "autoseg/training/losses/dice_ce.py",
        ("tests/training/test_loss.py", "tests/training/test_pinned_training.py"),
    ),
    "region_loss": (
        "autoseg/training/losses/region.py",
        ("tests/training/test_region_loss.py",),
    ),
    "loss_options": (
        "autoseg/training/losses/options.py",
        ("tests/training/test_loss_options.py",),
    ),
    "sliding_window": (
        "autoseg/inference/sliding_window.py",
        ("tests/inference/test_pinned_prediction.py", "tests/inference/test_sliding_window.py"),
    ),
    "tiles": (
        "autoseg/inference/tiles.py",
        ("tests/inference/test_pinned_prediction.py", "tests/inference/test_sliding_window.py"),
    ),
    "tile_accumulation": (
        "autoseg/inference/tile_accumulation.py",
        ("tests/inference/test_pinned_prediction.py", "tests/inference/test_sliding_window.py"),
    ),
    "predictor": (
        "autoseg/inference/predictor.py",
        (
            "tests/inference/test_pinned_prediction.py",
            "tests/inference/test_predictor.py",
            "tests/inference/test_predictor_cascade.py",
        ),
    ),
    "case_stages": (
        "autoseg/inference/case_stages.py",
        (
            "tests/inference/test_pinned_prediction.py",
            "tests/inference/test_predictor.py",
            "tests/inference/test_predictor_cascade.py",
        ),
    ),
    "fold_loading": (
        "autoseg/inference/fold_loading.py",
        (
            "tests/inference/test_pinned_prediction.py",
            "tests/inference/test_predictor.py",
            "tests/inference/test_predictor_cascade.py",
        ),
    ),
    "postprocess": (
        "autoseg/inference/postprocess.py",
        ("tests/inference/test_postprocess.py", "tests/inference/test_pinned_postprocess.py"),
    ),
    "evaluate": (
        "autoseg/evaluation/evaluate.py",
        (
            "tests/evaluation/test_evaluate.py",
            "tests/evaluation/test_evaluate_report.py",
            "tests/evaluation/test_evaluate_regions.py",
            "tests/evaluation/test_pinned_evaluate.py",
        ),
    ),
    # evaluate.py's report and file checks, split out of it: the same targeted tests
    "evaluation_report": (
        "autoseg/evaluation/report.py",
        (
            "tests/evaluation/test_evaluate.py",
            "tests/evaluation/test_evaluate_report.py",
            "tests/evaluation/test_evaluate_regions.py",
            "tests/evaluation/test_pinned_evaluate.py",
        ),
    ),
    "evaluation_files": (
        "autoseg/evaluation/case_files.py",
        (
            "tests/evaluation/test_evaluate.py",
            "tests/evaluation/test_evaluate_report.py",
            "tests/evaluation/test_evaluate_regions.py",
            "tests/evaluation/test_pinned_evaluate.py",
        ),
    ),
    "evaluation_labels": (
        "autoseg/evaluation/labels.py",
        ("tests/evaluation/test_evaluate_regions.py",),
    ),
    "metrics": (
        "autoseg/evaluation/metrics.py",
        (
            "tests/evaluation/test_metrics.py",
            "tests/evaluation/test_evaluate.py",
            "tests/evaluation/test_metrics_monai.py",
        ),
    ),
    "resample": (
        "autoseg/preprocessing/resample.py",
        (
            "tests/preprocessing/test_pinned_resampling.py",
            "tests/preprocessing/test_resample_threads.py",
            "tests/preprocessing/test_preprocess.py",
        ),
    ),
}


def _copy_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the checkout, as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


LOG_CALLS = {"debug", "info", "warning", "error", "exception"}


def _skip_logging(path: Path) -> int:
    """Mark every line of each logging statement ``# pragma: no mutate`` (a comment: same
    behaviour).

    What a log line says is not a result, and no test should pin its wording; without this,
    every argument of every ``log.info(...)`` is a surviving mutant. Every line, not only the
    first: mutmut 3.8 reads a pragma ending a line inside the call's brackets only in its bare
    form, and applies it to that line alone.
    """
    lines = path.read_text().splitlines(keepends=True)
    spans = [
        (node.lineno - 1, node.end_lineno or node.lineno)
        for node in ast.walk(ast.parse("".join(lines)))
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr in LOG_CALLS
        and isinstance(node.value.func.value, ast.Name)
        and node.value.func.value.id in {"log", "logger", "logging"}
    ]
    for first, last in spans:
        for i in range(first, last):
            lines[i] = lines[i].rstrip("\n") + "  # pragma: no mutate\n"
    ast.parse("".join(lines))  # a comment cannot break a statement, but check
    path.write_text("".join(lines))
    return len(spans)


def _config(source: str, tests: tuple[str, ...]) -> str:
    top = source.split("/")[0]
    others = [d for d in ("autoseg", "planners", "tests") if d != top]
    quoted = ", ".join(f'"{t}"' for t in tests)
    return (
        "\n[tool.mutmut]\n"
        f'source_paths = ["{top}"]\n'
        f'only_mutate = ["{source}"]\n'
        f"also_copy = [{', '.join(repr(o) for o in others)}, 'pyproject.toml']\n"
        f"pytest_add_cli_args_test_selection = [{quoted}]\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
    ).replace("'", '"')


def run_module(name: str, children: int, budget: float | None = None) -> dict[str, int]:
    source, tests = MODULES[name]
    work = Path(tempfile.mkdtemp(prefix=f"autoseg-mutmut-{name}-"))
    _copy_tree(work)
    # planners/ is installed as autoseg.planners: give the copy the same layout, so the tests
    # import the mutated file and not the checkout's (editable install)
    shutil.copytree(work / "planners", work / "autoseg" / "planners")
    skipped = _skip_logging(work / source)
    with open(work / "pyproject.toml", "a") as fh:
        fh.write(_config(source, tests))
    print(
        f"[{name}] mutating {source} ({skipped} logging statements left alone) against "
        f"{', '.join(tests)} in {work}",
        flush=True,
    )
    # mutmut forks one child per mutant from a process that already ran the tests: a torch or
    # BLAS thread pool started there deadlocks in the child (a lock held by a thread that was
    # not forked), and every such mutant ends as a timeout, counted as killed. One thread each
    # (no pool), and one CPU in the affinity mask for prediction, which sets torch's threads to
    # cpu_count().
    single = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    cpu = min(os.sched_getaffinity(0))
    run = subprocess.Popen(
        ["mutmut", "run", "--max-children", str(children)],
        cwd=work,
        start_new_session=True,
        env={**os.environ, **single},
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    try:
        run.wait(timeout=budget)
    except subprocess.TimeoutExpired:  # a partial score: mutants not reached are not counted
        os.killpg(run.pid, signal.SIGTERM)
        run.wait()
        print(f"[{name}] stopped after the {budget} s budget: partial figures", flush=True)
    subprocess.run(["mutmut", "export-cicd-stats"], cwd=work, check=False)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    killed = stats.get("killed", 0) + stats.get("timeout", 0)
    survived = stats.get("survived", 0)
    score = killed / max(1, killed + survived)
    print(f"[{name}] {json.dumps(stats)}  score {score:.1%}  (kept in {work})", flush=True)
    survivors = work / "mutants" / "survivors.diff"
    with open(survivors, "w") as fh:
        listing = subprocess.run(
            ["mutmut", "results"], cwd=work, capture_output=True, text=True
        ).stdout
        for line in listing.splitlines():
            if line.strip().endswith("survived"):
                mutant = line.strip().split(":")[0]
                shown = subprocess.run(
                    ["mutmut", "show", mutant], cwd=work, capture_output=True, text=True
                )
                fh.write(shown.stdout + "\n")
    print(f"[{name}] survivors' diffs: {survivors}", flush=True)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", choices=[*MODULES, "all"])
    parser.add_argument(
        "--children", type=int, default=1, help="parallel test processes (all on one CPU)"
    )
    parser.add_argument("--budget", type=float, default=None, help="seconds per module")
    args = parser.parse_args()
    if shutil.which("mutmut") is None:
        sys.exit("mutmut is not installed: pip install mutmut")
    for name in MODULES if args.module == "all" else [args.module]:
        run_module(name, args.children, args.budget)


if __name__ == "__main__":
    main()
