#!/usr/bin/env bash
# Plan + preprocess, autoseg beside nnU-Net v2, in ONE run on this machine (CPU only).
#
# Usage (from anywhere):
#   bash benchmarks/plan_vs_nnunet.sh NNUNET_PY_OR_BIN [DATASET_DIR] [OUT_DIR]
#     NNUNET_PY_OR_BIN  the python of a venv with nnunetv2 installed, or that venv's bin/ folder
#                       (e.g. /tmp/nnunet-venv/bin/python; see docs/benchmarks.md for the install)
#     DATASET_DIR       MSD-layout dataset (default: ../shared/datasets/Task04_Hippocampus,
#                       relative to the repository root)
#     OUT_DIR           where logs, results.jsonl and table.md go (default: ./bench-plan-out)
#   Environment: ROUNDS (default 3), WORKERS (default 2), AUTOSEG (default: autoseg on PATH),
#                PEER_READER (optional nnU-Net reader for dataset.json, e.g. NibabelIO; default:
#                none, i.e. nnU-Net's default SimpleITK reader for .nii.gz).
#
# What it does:
#   1. converts the MSD dataset once into a temporary nnUNet_raw/Dataset999_Peer (images as
#      CASE_0000.nii.gz, labels, dataset.json with channel_names, labels name->int, file_ending);
#   2. alternates, ROUNDS times, peer then autoseg:
#        peer:    nnUNetv2_plan_and_preprocess -d 999 -np 2 -npfp 2 -c 2d 3d_fullres
#                 (fresh nnUNet_preprocessed each run; -npfp 2 so that the fingerprint step, too,
#                 uses 2 processes instead of nnU-Net's default 8)
#        autoseg: autoseg plan DATASET_DIR --home FRESH_TMP --workers 2   (fresh home each run)
#      each under /usr/bin/time -v (wall time; "Maximum resident set size" = the LARGEST SINGLE
#      process of the tree), while benchmarks/benchlib.py samples the summed RSS and PSS of the
#      whole process tree every 0.2 s;
#   3. prints a markdown table (median/min/max wall s, peak memory, ratio autoseg/peer) and writes
#      it to OUT_DIR/table.md.
# Both commands do the whole job from raw NIfTI to training-ready arrays: dataset reading,
# fingerprint, planning, preprocessing of the 2d and 3d_fullres configurations. autoseg also
# checks the whole dataset first (nnU-Net does only with --verify_dataset_integrity, not used).
# Other processes may share the CPUs: the load average at the start of each run is recorded.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
[ $# -ge 1 ] || { sed -n '2,15p' "$0"; exit 2; }
peer=$1
if [ -d "$peer" ]; then peer_bin=$(cd "$peer" && pwd); else peer_bin=$(cd "$(dirname "$peer")" && pwd); fi
dataset=$(cd "${2:-$root/../shared/datasets/Task04_Hippocampus}" && pwd)
out=${3:-./bench-plan-out}
mkdir -p "$out/logs"; out=$(cd "$out" && pwd)
rounds=${ROUNDS:-3}
workers=${WORKERS:-2}
autoseg=${AUTOSEG:-autoseg}
[ -x "$peer_bin/nnUNetv2_plan_and_preprocess" ] || { echo "no nnUNetv2_plan_and_preprocess in $peer_bin" >&2; exit 2; }
command -v "$autoseg" >/dev/null || { echo "autoseg not found: $autoseg" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/plan-vs-nnunet.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
results=$out/results.jsonl
: > "$results"
bench() { python3 "$here/benchlib.py" "$@"; }

echo "# versions" | tee "$out/versions.txt"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores $(uname -m), $(free -g | awk '/Mem:/{print $2}') GB RAM"
  echo "autoseg commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "autoseg uncommitted changes in the measured tree: $(git -C "$root" status --short --untracked-files=no -- autoseg planners 2>/dev/null | awk '{printf "%s ", $2}')"
  echo "autoseg: $("$autoseg" --version 2>/dev/null || python3 -c 'import importlib.metadata as m; print(m.version("autoseg"))')"
  echo "nnunetv2: $("$peer_bin/python" -c 'import importlib.metadata as m; print(m.version("nnunetv2"))')"
  echo "peer torch: $("$peer_bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
  echo "dataset: $dataset ($(ls "$dataset/imagesTr" | wc -l) training images)"
} | tee -a "$out/versions.txt"

echo "# converting $dataset for nnU-Net"
bench convert "$dataset" "$tmp/raw" ${PEER_READER:+--reader "$PEER_READER"}

export nnUNet_raw=$tmp/raw nnUNet_results=$tmp/results
peer_cmd=("$peer_bin/nnUNetv2_plan_and_preprocess" -d 999 -np "$workers" -npfp "$workers" -c 2d 3d_fullres)
echo "# peer:    ${peer_cmd[*]}"
echo "# autoseg: $autoseg plan $dataset --home FRESH --workers $workers"
for r in $(seq 1 "$rounds"); do
  export nnUNet_preprocessed=$tmp/pre_$r
  PATH=$peer_bin:$PATH bench run --label peer --round "$r" --log "$out/logs/peer_$r.log" \
    --results "$results" -- "${peer_cmd[@]}" || echo "peer round $r failed: $out/logs/peer_$r.log"
  rm -rf "$nnUNet_preprocessed"
  bench run --label autoseg --round "$r" --log "$out/logs/autoseg_$r.log" --results "$results" \
    -- "$autoseg" plan "$dataset" --home "$tmp/home_$r" --workers "$workers" \
    || echo "autoseg round $r failed: $out/logs/autoseg_$r.log"
  rm -rf "$tmp/home_$r"
done

bench table "$results" --ratio autoseg/peer \
  --title "plan + preprocess (2d + 3d_fullres), $(basename "$dataset"), $rounds rounds, $workers workers" \
  | tee "$out/table.md"
