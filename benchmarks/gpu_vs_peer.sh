#!/usr/bin/env bash
# autoseg beside nnU-Net v2 (the peer) on one GPU machine, on the same data, in one run: plan,
# `autoseg benchmark`, fold-0 training, prediction of a test folder with TTA, evaluation; then the
# peer's ../shared/peer/nnunet-msd.sh; then REFERENCE.md's figures with autoseg, peer and ratio.
#
# PREPARE, once, on the development machine, from the project root:
#   bash ../shared/tools/gpu-wheels        # -> .whl      nibabel, batchgenerators (+ its needs)
#   bash ../shared/peer/wheels             # -> .whl-peer nnU-Net v2.8.1 and what it needs
#   grep -qxF /.bench/ .git/info/exclude || echo /.bench/ >> .git/info/exclude
#   mkdir -p .bench && cp -r ../shared/peer .bench/peer \
#     && cp -r ../shared/datasets/Task04_Hippocampus .bench/
#   du -sch .whl .whl-peer .bench          # what travels must stay under 64 MiB in all
# CALL it with the device tool: run(command=..., carry=[".whl", ".whl-peer", ".bench"],
# timeout_s=600), the command being
#   bash benchmarks/gpu_vs_peer.sh 2>&1 | tee $OUT/gpu_vs_peer.log
# One device command may run 10 minutes. With EPOCHS=50 the two trainings alone take about that,
# so split it into two calls on the same (warm) machine:
#   PART=autoseg bash benchmarks/gpu_vs_peer.sh 2>&1 | tee $OUT/autoseg.log   # -> $OUT/autoseg.json
#   (copy the autoseg.json that came back into .bench/, then)
#   PART=peer bash benchmarks/gpu_vs_peer.sh 2>&1 | tee $OUT/peer.log         # -> peer.json, table
# or, anywhere: PART=table AUTOSEG_JSON=a.json PEER_JSON=p.json bash benchmarks/gpu_vs_peer.sh
#
# SETTINGS (environment): PART all|autoseg|peer|table (all); EPOCHS (50; the peer needs its class
# nnUNetTrainer_<EPOCHS>epochs: 1, 5, 10, 20, 50, 100, 250, ...); DATA (.bench/Task04_Hippocampus,
# MSD layout); PEER (.bench/peer); DEVICE (auto); ITERATIONS, VAL_ITERATIONS per epoch (250, 50;
# the peer's are fixed); BENCH_ITERATIONS (50); TEST_CASES (0 = every fold-0 validation case);
# BENCH_ARGS (more `autoseg benchmark` options); SKIP_PEER=1 (autoseg only); PEER_RES (the
# peer's nnUNet_results: /tmp/peer/res, as nnunet-msd.sh sets it); WORK (/tmp/gpu-vs-peer: home,
# logs, predictions); OUT (the device tool's $OUT, else /tmp/gpu-vs-peer-out: autoseg.json,
# peer.json, table.md and a tarball of the logs: few files, as $OUT brings back 8 at most).
# A dry run on a CPU, autoseg only, tiny budgets (DATA: a small MSD-layout dataset):
#   SKIP_PEER=1 DEVICE=cpu EPOCHS=2 ITERATIONS=2 VAL_ITERATIONS=1 BENCH_ITERATIONS=2 \
#   BENCH_ARGS="--warmup 1 --predict-cases 1" DATA=... bash benchmarks/gpu_vs_peer.sh
# The test folder is the fold-0 validation images (both fold-0 models never saw them; both tools
# split with KFold(5, shuffle, seed 12345) over the sorted case ids); both predictions are scored
# by `autoseg evaluate`, autoseg's without post-processing (nnU-Net's predict applies none).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
part=${PART:-all} epochs=${EPOCHS:-50} device=${DEVICE:-auto}
case $part in all|autoseg|peer|table) ;; *) echo "PART must be all, autoseg, peer or table" >&2; exit 2 ;; esac
data=$(cd "${DATA:-.bench/Task04_Hippocampus}" 2>/dev/null && pwd) || data=""
peer=${PEER:-.bench/peer}
peer_res=${PEER_RES:-/tmp/peer/res}  # nnUNet_results as nnunet-msd.sh sets it
work=${WORK:-/tmp/gpu-vs-peer} out=${OUT:-/tmp/gpu-vs-peer-out}
mkdir -p "$out" "$work/logs"
if [ "$part" != table ]; then
  [ -n "$data" ] && [ -f "$data/dataset.json" ] || { echo "no MSD dataset at ${DATA:-.bench/Task04_Hippocampus}" >&2; exit 2; }
  name=$(basename "$data")
  home=$work/home test=$work/test refs=$work/test_labels
fi

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$root
else
  export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
autoseg() { python3 -m autoseg.cli "$@"; }

# step TAG CMD...: run CMD, log to $work/logs/autoseg-TAG.log, print "autoseg TAG rc=.. ms=.."
step() {
  local tag=$1; shift; local t0; t0=$(date +%s%N)
  "$@" > "$work/logs/autoseg-$tag.log" 2>&1; local rc=$?
  echo "autoseg $tag rc=$rc ms=$(( ($(date +%s%N) - t0) / 1000000 ))" | tee -a "$work/steps.txt"
  [ $rc -eq 0 ] || tail -n 20 "$work/logs/autoseg-$tag.log"
  return $rc
}

# the fold-0 validation cases -> $test (images) and $refs (labels), TEST_CASES of them if set
make_test_folder() {
  python3 - "$data" "$test" "$refs" "${TEST_CASES:-0}" <<'PY'
import shutil, sys
from pathlib import Path
from autoseg.data.dataset import load_dataset
from autoseg.data.splits import make_splits
data, test, refs, limit = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
spec = load_dataset(data)
val = set(make_splits([c.case_id for c in spec.cases])[0].val)
cases = [c for c in spec.cases if c.case_id in val][: limit or None]
for folder in (test, refs):
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
for c in cases:
    shutil.copy(c.images[0], test / f"{c.case_id}{spec.file_ending}")
    shutil.copy(c.label, refs / f"{c.case_id}{spec.file_ending}")
print(f"test folder: {len(cases)} fold-0 validation cases")
PY
}

run_autoseg() {
  rm -rf "$home" "$work/pred" "$work/eval-autoseg" "$work/steps.txt" "$out/autoseg.json"
  step plan autoseg plan "$data" --home "$home" || return 1
  step benchmark autoseg benchmark "$name" 3d_fullres --home "$home" --device "$device" \
    --iterations "${BENCH_ITERATIONS:-50}" ${BENCH_ARGS:-} -o "$work/benchmark.json"
  cat "$work/logs/autoseg-benchmark.log"
  step train autoseg train "$name" 3d_fullres fold0 --home "$home" --device "$device" \
    --epochs "$epochs" --iterations "${ITERATIONS:-250}" --val-iterations "${VAL_ITERATIONS:-50}" || return 1
  make_test_folder || return 1
  step predict autoseg predict -i "$test" -o "$work/pred" -d "$name" -c 3d_fullres -f 0 \
    --home "$home" --device "$device" --no-postprocess
  step evaluate autoseg evaluate "$work/pred" "$refs" -o "$work/eval-autoseg"
  python3 - "$work" "$home/$name/models/default/3d_fullres/fold_0" "$test" "$out/autoseg.json" <<'PY'
import json, re, statistics, sys
from pathlib import Path
work, fold, test, dest = map(Path, sys.argv[1:5])
def load(path):
    return json.loads(path.read_text()) if path.is_file() else None
steps = {m[1]: {"rc": int(m[2]), "s": int(m[3]) / 1000}
         for m in re.finditer(r"autoseg (\S+) rc=(-?\d+) ms=(\d+)", (work / "steps.txt").read_text())}
times = (load(fold / "progress.json") or {}).get("epoch_time", [])
val, ev = load(fold / "summary.json"), load(work / "eval-autoseg" / "evaluation.json")
result = {
    "steps": steps, "benchmark": load(work / "benchmark.json"),
    "epochs": len(times), "epoch_median_s": statistics.median(times) if times else None,
    "first_epoch_s": times[0] if times else None,
    "val_dice_mean": val and val["mean_dice"],
    "val_dice": val and {k: v["dice"] for k, v in val["label_means"].items()},
    "test_cases": len(list(test.iterdir())), "test_dice_mean": ev and ev["mean_dice"],
}
dest.write_text(json.dumps(result, indent=1) + "\n")
print(f"written: {dest}")
PY
}

run_peer() {
  local pout=$work/peer
  [ -d "$test" ] || make_test_folder || return 1
  rm -rf "$pout" "$peer_res/Dataset999_Peer" "$work/eval-peer" "$out/peer.json"
  bash "$peer/nnunet-msd.sh" "$data" "$test" "$epochs" "$pout" | tee "$work/peer-stdout.txt"
  step evaluate-peer autoseg evaluate "$pout/pred" "$refs" -o "$work/eval-peer"
  python3 - "$work" "$pout" "$epochs" "$out/peer.json" "$peer_res" <<'PY'
import json, re, statistics, sys
from pathlib import Path
work, pout, epochs, dest = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
peer_res = Path(sys.argv[5])
def load(path):
    return json.loads(path.read_text()) if path.is_file() else None
def epoch_times(log):
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [float(v) for v in re.findall(r"Epoch time: ([\d.]+) s", text)]
steps = {m[1]: {"rc": int(m[2]), "s": int(m[3]) / 1000} for m in
         re.finditer(r"peer (\S+) rc=(-?\d+) ms=(\d+)", (work / "peer-stdout.txt").read_text())}
times, nodl = epoch_times(pout / "peer-train.log"), epoch_times(pout / "peer-train_no_dataloading.log")
steady = nodl[1:] or nodl  # the first epoch warms up
res = peer_res / "Dataset999_Peer" / f"nnUNetTrainer_{epochs}epochs__nnUNetPlans__3d_fullres"
val, ev = load(res / "fold_0" / "validation" / "summary.json"), load(work / "eval-peer" / "evaluation.json")
result = {
    "steps": steps, "epochs": len(times),
    "epoch_median_s": statistics.median(times) if times else None,
    "first_epoch_s": times[0] if times else None,
    "no_loading_epoch_s": statistics.median(steady) if steady else None,
    "no_loading_fastest_epoch_s": min(nodl) if nodl else None,
    "val_dice_mean": val and val["foreground_mean"]["Dice"],
    "val_dice": val and {k: v["Dice"] for k, v in val["mean"].items()},
    "test_dice_mean": ev and ev["mean_dice"],
}
dest.write_text(json.dumps(result, indent=1) + "\n")
print(f"written: {dest}")
PY
}

table() {
  python3 - "$1" "$2" "$out/table.md" <<'PY'
import json, sys
from pathlib import Path
a, p = (json.loads(Path(f).read_text()) if Path(f).is_file() else {} for f in sys.argv[1:3])
b = a.get("benchmark") or {}
def s(d, key):
    return (d.get("steps") or {}).get(key, {}).get("s")
def div(x, y):
    return x / y if x is not None and y else None
gpu_a, gpu_p = b.get("no_loading_epoch_with_val_s"), p.get("no_loading_epoch_s")
rows = [
    ("epoch time, median (s)", a.get("epoch_median_s"), p.get("epoch_median_s")),
    ("GPU-only epoch, no data loading, 250+50 it. (s)", gpu_a, gpu_p),
    ("data-loading overhead (epoch / GPU-only)", div(a.get("epoch_median_s"), gpu_a),
     div(p.get("epoch_median_s"), gpu_p)),
    ("fold-0 validation Dice, mean", a.get("val_dice_mean"), p.get("val_dice_mean")),
    (f"test Dice (TTA, autoseg evaluate), {a.get('test_cases', '?')} cases",
     a.get("test_dice_mean"), p.get("test_dice_mean")),
    (f"predict {a.get('test_cases', '?')} cases, whole command (s)", s(a, "predict"),
     s(p, "predict")),
    ("first epoch (s)", a.get("first_epoch_s"), p.get("first_epoch_s")),
    ("plan + preprocess (s)", s(a, "plan"), s(p, "plan_preprocess")),
    (f"train fold 0, {a.get('epochs', '?')} epochs, whole command (s)", s(a, "train"),
     s(p, "train")),
]
def fmt(v):
    return "n/a" if v is None else f"{v:.4f}" if v < 1 else f"{v:.2f}"
lines = ["| figure | autoseg | peer | autoseg / peer |", "|---|---|---|---|"]
lines += [f"| {n} | {fmt(x)} | {fmt(y)} | {fmt(div(x, y))} |" for n, x, y in rows]
if b:
    lines.append(f"\nautoseg benchmark on {b['device_name']}: patch {b['patch_size']}, batch "
                 f"{b['batch_size']}, {b['workers']} workers; data-loading overhead "
                 f"{fmt(b['data_loading_overhead'])}x, peak GPU memory (GiB) "
                 f"{fmt(b['peak_gpu_memory_train_gb'])}, sliding window "
                 f"{fmt(b['predict_s_per_case'])} s/case, whole case "
                 f"{fmt(b['predict_whole_s_per_case'])} s/case")
text = "\n".join(lines) + "\n"
Path(sys.argv[3]).write_text(text)
print(text)
PY
}

echo "# gpu_vs_peer: part $part, $epochs epochs, $(date -u +%FT%TZ), $(nproc) cores"
command -v nvidia-smi >/dev/null && nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
case $part in
  all|autoseg) run_autoseg || echo "autoseg part failed (see above)" ;;
esac
case $part in
  all|peer) if [ "${SKIP_PEER:-0}" = 1 ]; then echo "peer skipped (SKIP_PEER=1)"; else run_peer; fi ;;
esac
case $part in
  all) peer_json=$out/peer.json; [ "${SKIP_PEER:-0}" = 1 ] && peer_json=/dev/null
       table "$out/autoseg.json" "$peer_json" ;;
  peer) table "${AUTOSEG_JSON:-.bench/autoseg.json}" "$out/peer.json" ;;
  table) table "${AUTOSEG_JSON:?}" "${PEER_JSON:?}" ;;
esac
[ "$part" = table ] || tar czf "$out/logs-$part.tar.gz" -C "$work" logs $(cd "$work" && ls -d benchmark.json eval-* peer/*.log 2>/dev/null)
