#!/usr/bin/env bash
# Creates a separate virtual environment with nnU-Net v2 (the peer the benchmarks compare against),
# CPU-only, without touching the project's own python.
#
# Usage: bash benchmarks/setup_nnunet_venv.sh [VENV_DIR]        (default: /tmp/nnunet-venv)
#   Environment: NNUNET_VERSION (default 2.8.1, the version docs/benchmarks.md and
#                ../shared/REFERENCE.md quote), TORCH_VERSION (default 2.13.0: naming it makes pip
#                take the CPU wheel kept on this machine's disk instead of a multi-GB CUDA build).
#
# Known problem, worked around here: PyPI's torchvision wheel (pulled in by nnunetv2 -> timm) is
# built against the CUDA torch; with the CPU torch its C ops cannot load, and torchvision 0.28's
# _meta_registrations.py then fails at import ("operator torchvision::nms does not exist") because
# two of its register_fake decorators are not guarded by extension._has_ops(). nnU-Net imports
# timm/torchvision only to find trainer classes (Primus) and never calls torchvision ops, so this
# script guards those two decorators in the venv's copy (original kept as *.orig). It changes no
# computation that nnU-Net's plan, train or predict runs.
#
# It also copies benchmarks/nnunet_trainer_cpu_bench.py (trainer nnUNetTrainer_1epoch_10iter_noval:
# 1 epoch x 10 iterations, no final validation) into the venv's nnunetv2 trainer folder, where
# nnUNetv2_train/nnUNetv2_predict look trainers up by name; predict_cpu_vs_nnunet.sh uses it.
set -euo pipefail
venv=${1:-/tmp/nnunet-venv}
nnunet=${NNUNET_VERSION:-2.8.1}
torch=${TORCH_VERSION:-2.13.0}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "torch==$torch" "nnunetv2==$nnunet" 2>&1 | grep -v "^WARNING: Location" || true

if ! "$venv/bin/python" -c "import torchvision" >/dev/null 2>&1; then
  f=$("$venv/bin/python" -c 'import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec("torchvision").origin), "_meta_registrations.py"))')
  [ -f "$f.orig" ] || cp "$f" "$f.orig"
  sed -i -E 's/^@torch\.library\.register_fake\("(torchvision::q?nms)"\)$/@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$f"
  "$venv/bin/python" -c "import torchvision" || { echo "torchvision still fails to import; see $f" >&2; exit 1; }
  echo "patched $f (torchvision C ops unavailable with the CPU torch; see the header of this script)"
fi
here=$(cd "$(dirname "$0")" && pwd)
dest=$("$venv/bin/python" -c 'import nnunetv2, os; print(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer", "variants", "benchmarking"))')
cp "$here/nnunet_trainer_cpu_bench.py" "$dest/"
echo "installed trainer nnUNetTrainer_1epoch_10iter_noval into $dest"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
import torch
print("nnunetv2", m.version("nnunetv2"), "| torch", torch.__version__, "| torchvision", m.version("torchvision"))
PY
