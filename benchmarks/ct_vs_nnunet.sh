#!/usr/bin/env bash
# CT scale, autoseg beside nnU-Net v2 in ONE run on this machine (CPU): plan + preprocess time and
# memory, preprocessed data on disk, tiles x FLOPs per 400-slice test case with nnU-Net's own
# plan for the same data and, with TILES=1, one tile's time under each runtime for both networks
# and the network time per case (issue 22's table; the predict memory is
# benchmarks/ct_predict_memory.py).
#
# Usage: bash benchmarks/ct_vs_nnunet.sh NNUNET_VENV [OUT_DIR]
#   NNUNET_VENV  a venv with nnunetv2 (benchmarks/setup_nnunet_venv.sh makes one)
#   OUT_DIR      results.jsonl, disk.tsv, nnUNetPlans.json, ct_scale.json, table.md, logs/
#                (default ./bench-ct-out)
#   Environment: SIZE (full | small | tiny, default full), TRAIN (training cases, default 12),
#                WORKERS (processes of either tool, default 2), AUTOSEG (default autoseg on PATH),
#                TILES (1: also time one tile per runtime, 1 thread, the two networks pinned to
#                cores 0 and 1 side by side: about 8 minutes and 5 GB each at full size)
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
#   4. benchmarks/ct_scale.py with nnU-Net's nnUNetPlans.json: tiles x FLOPs per test case;
#   5. with TILES=1: benchmarks/tile_runtime.py for both networks, then benchmarks/ct_case_time.py
#      (tiles x seconds per tile).
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

if [ "${TILES:-0}" = 1 ]; then
  say "one tile per runtime, autoseg and nnU-Net side by side (1 thread each)"
  variants=eager-fp32,eager-bf16,cl-fp32,cl-bf16,ort-fp32,ov-fp32,ov-bf16
  # each network's tile of the test case, as ct_scale.py counted it (same set, same plans)
  tile_of() { python3 -c "import json, sys; print(next(r['tile'] for r in json.load(open(sys.argv[1]))['rows'] if r['setting'].startswith(sys.argv[2])))" "$out/ct_scale.json" "$1"; }
  common=(--plan-size "$size" --train "$train" --threads 1 --repeats 3 --variants "$variants")
  taskset -c 0 python "$here/tile_runtime.py" --network autoseg --tile "$(tile_of 'autoseg main')" \
    "${common[@]}" --json "$out/tile_autoseg.json" > "$out/logs/tile_autoseg.log" 2>&1 &
  taskset -c 1 python "$here/tile_runtime.py" --network nnunet --tile "$(tile_of 'nnU-Net')" \
    "${plans_arg[@]}" "${common[@]}" --json "$out/tile_nnunet.json" > "$out/logs/tile_nnunet.log" 2>&1
  wait
fi

{
  bench table "$results" --ratio autoseg-auto/peer --title "plan + preprocess, $train $size cases, $workers workers"
  echo
  echo "| preprocessed folder | bytes |"
  echo "|---|---|"
  awk -F'\t' '{printf "| %s %s | %.1f MB |\n", $1, $2, $3 / 1e6; t[$1] += $3}
              END {for (k in t) printf "| %s, all | %.1f MB |\n", k, t[k] / 1e6}' "$disk"
  echo
  cat "$out/ct_scale.md"
  if [ -f "$out/tile_autoseg.json" ] && [ -f "$out/tile_nnunet.json" ]; then
    echo
    grep '^|' "$out/logs/tile_autoseg.log"
    echo
    grep '^|' "$out/logs/tile_nnunet.log"
    echo
    python "$here/ct_case_time.py" "$out/ct_scale.json" "$out/tile_autoseg.json" "$out/tile_nnunet.json"
  fi
} | tee "$out/table.md"
