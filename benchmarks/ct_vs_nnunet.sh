#!/usr/bin/env bash
# CT scale, autoseg beside nnU-Net v2 in ONE run on this machine (CPU): plan + preprocess time and
# memory, preprocessed data on disk, and tiles x FLOPs per 400-slice test case with nnU-Net's own
# plan for the same data (issue 22's table, rows 1, 2 and 4; the tile timings are
# benchmarks/tile_runtime.py, the predict memory benchmarks/ct_predict_memory.py).
#
# Usage: bash benchmarks/ct_vs_nnunet.sh NNUNET_VENV [OUT_DIR]
#   NNUNET_VENV  a venv with nnunetv2 (benchmarks/setup_nnunet_venv.sh makes one)
#   OUT_DIR      results.jsonl, disk.tsv, nnUNetPlans.json, ct_scale.json, table.md, logs/
#                (default ./bench-ct-out)
#   Environment: SIZE (full | small | tiny, default full), TRAIN (training cases, default 12),
#                WORKERS (processes of either tool, default 2), AUTOSEG (default autoseg on PATH)
#
# Steps:
#   1. benchmarks/synthetic_ct.py makes TRAIN cases of SIZE (seed 0) and converts them once for
#      nnU-Net (benchmarks/benchlib.py convert);
#   2. peer: nnUNetv2_plan_and_preprocess -d 999 -np W -npfp W (its default configurations:
#      2d, 3d_fullres, 3d_lowres where it plans one);
#      autoseg main's storage: autoseg plan --storage npy; autoseg now: autoseg plan (storage
#      auto: blosc2 above 2 GiB of npy data). Each under benchlib run (wall, CPU, peak RSS/PSS of
#      the process tree);
#   3. bytes on disk of every preprocessed folder (du -sb), per configuration;
#   4. benchmarks/ct_scale.py with nnU-Net's nnUNetPlans.json: tiles x FLOPs per test case.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { sed -n '2,22p' "$0"; exit 2; }
peer_bin=$(cd "$1/bin" && pwd)
out=${2:-./bench-ct-out}
mkdir -p "$out/logs"; out=$(cd "$out" && pwd)
size=${SIZE:-full}
train=${TRAIN:-12}
workers=${WORKERS:-2}
autoseg=${AUTOSEG:-autoseg}
[ -x "$peer_bin/nnUNetv2_plan_and_preprocess" ] || { echo "no nnUNetv2_plan_and_preprocess in $peer_bin" >&2; exit 2; }
command -v "$autoseg" >/dev/null || { echo "autoseg not found: $autoseg" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ct-vs-nnunet.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
results=$out/results.jsonl disk=$out/disk.tsv
: > "$results"; : > "$disk"
bench() { python3 "$here/benchlib.py" "$@"; }
say() { echo "$(date -u +%H:%M:%S) $*"; }

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores $(uname -m), $(free -g | awk '/Mem:/{print $2}') GB RAM, load $(cut -d' ' -f1 /proc/loadavg)"
  echo "autoseg commit: $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "nnunetv2: $("$peer_bin/python" -c 'import importlib.metadata as m; print(m.version("nnunetv2"))')"
  echo "data: synthetic_ct.py --size $size --train $train --seed 0; workers $workers"
} | tee "$out/versions.txt"

say "making $train $size cases"
python "$here/synthetic_ct.py" "$tmp/SyntheticCT" --size "$size" --train "$train" --test 0 --seed 0
say "converting for nnU-Net"
bench convert "$tmp/SyntheticCT" "$tmp/raw" > /dev/null

export nnUNet_raw=$tmp/raw nnUNet_results=$tmp/results nnUNet_preprocessed=$tmp/pre
say "peer: nnUNetv2_plan_and_preprocess (log: $out/logs/peer.log)"
PATH=$peer_bin:$PATH bench run --label peer --log "$out/logs/peer.log" --results "$results" \
  -- "$peer_bin/nnUNetv2_plan_and_preprocess" -d 999 -np "$workers" -npfp "$workers" \
  || echo "peer failed: $out/logs/peer.log"
cp "$tmp/pre/Dataset999_Peer/nnUNetPlans.json" "$out/" 2>/dev/null || true
for d in "$tmp"/pre/Dataset999_Peer/*/; do
  printf 'peer\t%s\t%s\n' "$(basename "$d")" "$(du -sb "$d" | cut -f1)" >> "$disk"
done
rm -rf "$tmp/pre"

for run in "autoseg-npy --storage npy" "autoseg-auto --storage auto"; do
  set -- $run
  label=$1; shift
  say "$label: autoseg plan $* (log: $out/logs/$label.log)"
  bench run --label "$label" --log "$out/logs/$label.log" --results "$results" \
    -- "$autoseg" plan "$tmp/SyntheticCT" --home "$tmp/home" --workers "$workers" "$@" \
    || echo "$label failed: $out/logs/$label.log"
  for d in "$tmp"/home/SyntheticCT/preprocessed/*/; do
    printf '%s\t%s\t%s\n' "$label" "$(basename "$d")" "$(du -sb "$d" | cut -f1)" >> "$disk"
  done
  [ -f "$out/autoseg_plans.json" ] || cp "$tmp/home/SyntheticCT/plans.json" "$out/autoseg_plans.json"
  rm -rf "$tmp/home"
done

say "tiles x FLOPs per test case (ct_scale.py, nnU-Net's plan)"
plans_arg=()
[ -f "$out/nnUNetPlans.json" ] && plans_arg=(--nnunet-plans "$out/nnUNetPlans.json")
python "$here/ct_scale.py" --size "$size" --train "$train" "${plans_arg[@]}" \
  --json "$out/ct_scale.json" > "$out/ct_scale.md"

{
  bench table "$results" --ratio autoseg-auto/peer --title "plan + preprocess, $train $size cases, $workers workers"
  echo
  echo "| preprocessed folder | bytes |"
  echo "|---|---|"
  awk -F'\t' '{printf "| %s %s | %.1f MB |\n", $1, $2, $3 / 1e6; t[$1] += $3}
              END {for (k in t) printf "| %s, all | %.1f MB |\n", k, t[k] / 1e6}' "$disk"
  echo
  cat "$out/ct_scale.md"
} | tee "$out/table.md"
