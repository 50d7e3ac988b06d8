#!/usr/bin/env bash
# CPU inference with mirroring TTA, whole command, autoseg beside nnU-Net v2, in ONE run.
#
# Usage (from anywhere):
#   bash benchmarks/predict_cpu_vs_nnunet.sh NNUNET_PY_OR_BIN [DATASET_DIR] [OUT_DIR]
#     NNUNET_PY_OR_BIN  the python of a venv with nnunetv2, or its bin/ folder
#                       (benchmarks/setup_nnunet_venv.sh makes one)
#     DATASET_DIR       MSD-layout dataset (default: ../shared/datasets/Task04_Hippocampus,
#                       relative to the repository root)
#     OUT_DIR           logs, results_*.jsonl, table.md (default: ./bench-predict-out)
#   Environment: ROUNDS (default 3); SIZES (default "1 10": cases per input folder);
#                PEER_TRAINER (default nnUNetTrainer_1epoch_10iter_noval, which
#                benchmarks/setup_nnunet_venv.sh installs into the venv: 1 epoch x 10 iterations,
#                no final validation; nnU-Net's own nnUNetTrainer_1epoch runs 250 iterations and
#                its final validation, far slower on 2 CPU cores); AUTOSEG_EPOCHS (1),
#                AUTOSEG_ITERATIONS (10), AUTOSEG_VAL_ITERATIONS (2, as the peer trainer);
#                WORKERS (2, for planning/preprocessing);
#                WORK (default: a temp folder, removed at the end; give a folder to keep the
#                trained models, and a later run with the same WORK skips the training);
#                AUTOSEG (default: autoseg on PATH).
#
# What it does:
#   1. converts the MSD dataset into nnU-Net's layout (Dataset999_Peer) and copies the LAST
#      max(SIZES) training images (sorted by id) as CASE_0000.nii.gz into one input folder per size
#      (the same files for both tools: autoseg reads the _0000 naming too);
#   2. trains both models of the same configuration (3d_fullres, fold 0) on the CPU with a
#      minimal budget; the weights' quality does not matter for timing:
#        nnUNetv2_plan_and_preprocess -d 999 -c 3d_fullres -np 2 -npfp 2
#        nnUNetv2_train 999 3d_fullres 0 -tr $PEER_TRAINER -device cpu
#        autoseg plan DATASET --home H --workers 2
#        autoseg train NAME 3d_fullres fold0 --home H --epochs 1 --iterations 10 --val-iterations 2 \
#            --device cpu --no-validate
#      (timed too, for information: results_setup.jsonl);
#   3. for each size, alternates ROUNDS times, peer then autoseg, fresh output folder each run:
#        nnUNetv2_predict -i IN -o OUT -d 999 -c 3d_fullres -f 0 -tr $PEER_TRAINER \
#            -chk checkpoint_final.pth -device cpu                  (TTA on by default)
#        autoseg predict -i IN -o OUT -d NAME -c 3d_fullres -f 0 --device cpu --home H  (TTA default)
#      each under /usr/bin/time -v (wall, max RSS of the largest single process) with the summed
#      RSS/PSS of the process tree sampled by benchmarks/benchlib.py; checks that each run wrote
#      one prediction per input;
#   4. prints one markdown table per size with ratio autoseg/peer and writes them to table.md.
# Whole command = interpreter start-up, imports, model loading, reading, preprocessing, sliding
# window with 8 mirrorings, resampling back, writing NIfTI. Other processes may share the CPUs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
[ $# -ge 1 ] || { sed -n '2,21p' "$0"; exit 2; }
peer=$1
if [ -d "$peer" ]; then peer_bin=$(cd "$peer" && pwd); else peer_bin=$(cd "$(dirname "$peer")" && pwd); fi
dataset=$(cd "${2:-$root/../shared/datasets/Task04_Hippocampus}" && pwd)
name=$(basename "$dataset")
out=${3:-./bench-predict-out}
mkdir -p "$out/logs"; out=$(cd "$out" && pwd)
rounds=${ROUNDS:-3}
sizes=${SIZES:-1 10}
workers=${WORKERS:-2}
trainer=${PEER_TRAINER:-nnUNetTrainer_1epoch_10iter_noval}
autoseg=${AUTOSEG:-autoseg}
[ -x "$peer_bin/nnUNetv2_predict" ] || { echo "no nnUNetv2_predict in $peer_bin" >&2; exit 2; }
command -v "$autoseg" >/dev/null || { echo "autoseg not found: $autoseg" >&2; exit 2; }
if [ "$trainer" = nnUNetTrainer_1epoch_10iter_noval ] && ! compgen -G \
    "$peer_bin/../lib/python3*/site-packages/nnunetv2/training/nnUNetTrainer/variants/benchmarking/nnunet_trainer_cpu_bench.py" >/dev/null; then
  echo "trainer $trainer is not in the nnU-Net venv: run benchmarks/setup_nnunet_venv.sh first" >&2; exit 2
fi

if [ -n "${WORK:-}" ]; then
  mkdir -p "$WORK"; work=$(cd "$WORK" && pwd)
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/predict-vs-nnunet.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
bench() { python3 "$here/benchlib.py" "$@"; }
export nnUNet_raw=$work/raw nnUNet_preprocessed=$work/pre nnUNet_results=$work/results
home=$work/autoseg_home

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores $(uname -m), $(free -g | awk '/Mem:/{print $2}') GB RAM"
  echo "autoseg commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "autoseg uncommitted changes in the measured tree: $(git -C "$root" status --short --untracked-files=no -- autoseg planners 2>/dev/null | awk '{printf "%s ", $2}')"
  echo "autoseg torch: $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null)"
  echo "nnunetv2: $("$peer_bin/python" -c 'import importlib.metadata as m; print(m.version("nnunetv2"))')"
  echo "peer torch: $("$peer_bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
  echo "peer trainer: $trainer; autoseg: --epochs ${AUTOSEG_EPOCHS:-1} --iterations ${AUTOSEG_ITERATIONS:-10} --val-iterations ${AUTOSEG_VAL_ITERATIONS:-2}"
  echo "dataset: $dataset"
} | tee "$out/versions.txt"

# 1. data -------------------------------------------------------------------------------------
max=0; for n in $sizes; do [ "$n" -gt "$max" ] && max=$n; done
if [ ! -f "$nnUNet_raw/Dataset999_Peer/dataset.json" ]; then
  bench convert "$dataset" "$nnUNet_raw" --test-out "$work/inputs_all" --test-count "$max" \
    --test-offset "-$max"
fi
all_inputs=("$work/inputs_all"/*_0000.nii.gz)
for n in $sizes; do
  rm -rf "$work/in_$n"; mkdir -p "$work/in_$n"
  cp "${all_inputs[@]:0:$n}" "$work/in_$n/"
  echo "input folder for $n case(s): $(ls "$work/in_$n" | tr '\n' ' ')"
done

# 2. minimal training of both ------------------------------------------------------------------
setup=$out/results_setup.jsonl
peer_model=$nnUNet_results/Dataset999_Peer/${trainer}__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth
if [ ! -f "$peer_model" ]; then
  PATH=$peer_bin:$PATH bench run --label peer_plan_preprocess --log "$out/logs/peer_plan.log" \
    --results "$setup" -- "$peer_bin/nnUNetv2_plan_and_preprocess" -d 999 -c 3d_fullres \
    -np "$workers" -npfp "$workers"
  PATH=$peer_bin:$PATH bench run --label "peer_train_$trainer" --log "$out/logs/peer_train.log" \
    --results "$setup" -- "$peer_bin/nnUNetv2_train" 999 3d_fullres 0 -tr "$trainer" -device cpu
fi
[ -f "$peer_model" ] || { echo "nnU-Net training wrote no $peer_model" >&2; exit 1; }
autoseg_model=$home/$name/models/default/3d_fullres/fold_0/checkpoint_final.pt
if [ ! -f "$autoseg_model" ]; then
  bench run --label autoseg_plan --log "$out/logs/autoseg_plan.log" --results "$setup" \
    -- "$autoseg" plan "$dataset" --home "$home" --workers "$workers"
  bench run --label autoseg_train --log "$out/logs/autoseg_train.log" --results "$setup" \
    -- "$autoseg" train "$name" 3d_fullres fold0 --home "$home" --epochs "${AUTOSEG_EPOCHS:-1}" \
    --iterations "${AUTOSEG_ITERATIONS:-10}" --val-iterations "${AUTOSEG_VAL_ITERATIONS:-2}" \
    --device cpu --no-validate
fi
[ -f "$autoseg_model" ] || { echo "autoseg training wrote no $autoseg_model" >&2; exit 1; }

# 3. alternating timed predictions ---------------------------------------------------------------
check() {  # check LABEL ROUND OUTDIR EXPECTED
  local got; got=$(find "$3" -maxdepth 1 -name '*.nii.gz' 2>/dev/null | wc -l)
  [ "$got" -eq "$4" ] || echo "WARNING: $1 round $2 wrote $got of $4 predictions"
}
: > "$out/table.md"
for n in $sizes; do
  res=$out/results_$n.jsonl; : > "$res"
  for r in $(seq 1 "$rounds"); do
    o=$work/pred_peer_${n}_$r; rm -rf "$o"
    PATH=$peer_bin:$PATH bench run --label peer --round "$r" --log "$out/logs/peer_predict_${n}_$r.log" \
      --results "$res" -- "$peer_bin/nnUNetv2_predict" -i "$work/in_$n" -o "$o" -d 999 \
      -c 3d_fullres -f 0 -tr "$trainer" -chk checkpoint_final.pth -device cpu || true
    check peer "$r" "$o" "$n"; rm -rf "$o"
    o=$work/pred_autoseg_${n}_$r; rm -rf "$o"
    bench run --label autoseg --round "$r" --log "$out/logs/autoseg_predict_${n}_$r.log" \
      --results "$res" -- "$autoseg" predict -i "$work/in_$n" -o "$o" -d "$name" -c 3d_fullres \
      -f 0 --device cpu --home "$home" || true
    check autoseg "$r" "$o" "$n"; rm -rf "$o"
  done
  bench table "$res" --ratio autoseg/peer \
    --title "predict $n case(s), 3d_fullres fold 0, TTA (8 mirrorings), CPU, $rounds rounds" \
    | tee -a "$out/table.md"
  echo | tee -a "$out/table.md"
done
[ -f "$setup" ] || exit 0
echo "training/setup runs (not part of the comparison):"
python3 - "$setup" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"  {r['label']}: rc={r['rc']} wall={r.get('wall_s', 0):.1f}s maxRSS={r.get('max_rss_kb', 0) / 1024:.0f}MB")
PY
