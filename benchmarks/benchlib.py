"""Helpers shared by the side-by-side benchmark scripts (standard library only).

Subcommands:

``convert MSD_DIR RAW_DIR [--reader NAME] [--test-out DIR --test-count N --test-offset K]``
    Writes ``RAW_DIR/Dataset999_Peer`` in nnU-Net v2's layout from an MSD-layout dataset:
    ``imagesTr/CASE_0000.nii.gz`` (one file per channel, split from 4D when the MSD image has
    several channels), ``labelsTr/CASE.nii.gz`` and a ``dataset.json`` with ``channel_names``,
    ``labels`` (name -> int), ``numTraining`` and ``file_ending``. With ``--test-out``, also copies
    N training images (from position K in the sorted case list; K < 0 counts from the end) to DIR
    as ``CASE_0000.nii.gz``.

``run --label L --round R --log FILE --results FILE.jsonl -- CMD ...``
    Runs CMD under ``/usr/bin/time -v`` and appends one JSON line to the results file: wall time
    (from ``/usr/bin/time``, and from ``time.perf_counter`` around it), the peak RSS of the largest
    single process (``/usr/bin/time``'s "Maximum resident set size"), and the peak over time of the
    summed RSS and summed PSS of the whole process tree (sampled every 0.2 s from /proc; PSS
    splits shared pages between the processes that share them, so it does not double-count the
    libraries that forked workers share). Also records the 1-minute load average at the start.

``table RESULTS.jsonl --ratio A/B [--title T]``
    Prints a markdown table, one row per label: median/min/max wall seconds, median CPU seconds
    (user+sys of the command and the children it waited for), peak memory, and a row with the
    ratios A/B (of the medians; of the mins; of the maxes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# --------------------------------------------------------------------------- conversion


def _case_id(image_path: str) -> str:
    name = Path(image_path).name
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    raise SystemExit(f"not a NIfTI file name: {image_path}")


def convert(msd: Path, raw: Path, reader: str | None) -> list[str]:
    """Writes raw/Dataset999_Peer in nnU-Net v2's layout; returns the sorted case ids."""
    spec = json.loads((msd / "dataset.json").read_text())
    out = raw / "Dataset999_Peer"
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    channels = spec.get("modality") or spec.get("channel_names") or {"0": "MRI"}
    ids = []
    for entry in spec["training"]:
        cid = _case_id(entry["image"])
        src = msd / entry["image"]
        if len(channels) == 1:
            shutil.copyfile(src, out / "imagesTr" / f"{cid}_0000.nii.gz")
        else:  # MSD keeps several channels in one 4D file; nnU-Net wants one file per channel
            import nibabel as nib  # only needed for multi-channel datasets

            img = nib.load(src)
            data = img.get_fdata(dtype="float32")
            for c in range(len(channels)):
                nib.save(
                    nib.Nifti1Image(data[..., c], img.affine, img.header),
                    out / "imagesTr" / f"{cid}_{c:04d}.nii.gz",
                )
        shutil.copyfile(msd / entry["label"], out / "labelsTr" / f"{cid}.nii.gz")
        ids.append(cid)
    dataset_json = {
        "channel_names": channels,
        "labels": {name: int(value) for value, name in spec["labels"].items()},
        "numTraining": len(ids),
        "file_ending": ".nii.gz",
    }
    if reader:
        dataset_json["overwrite_image_reader_writer"] = reader
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    return sorted(ids)


# --------------------------------------------------------------------------- measurement


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _tree(root: int) -> list[int]:
    children = _children_map()
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(children.get(pid, []))
    return seen


def _rss_pss_kb(pid: int) -> tuple[int, int]:
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
        pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
        return rss, pss
    except (OSError, ValueError, IndexError):
        return 0, 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS/PSS of a process tree until stopped; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss_kb = self.peak_pss_kb = self.max_procs = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = [p for p in _tree(self.root) if p != self.root]  # skip /usr/bin/time itself
            sizes = [_rss_pss_kb(p) for p in pids]
            self.peak_rss_kb = max(self.peak_rss_kb, sum(s[0] for s in sizes))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(s[1] for s in sizes))
            self.max_procs = max(self.max_procs, len(pids))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _parse_time_v(text: str) -> dict:
    out: dict = {}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        seconds = 0.0
        for p in parts:
            seconds = seconds * 60 + p
        out["wall_s"] = seconds
    for key, pattern in (
        ("max_rss_kb", r"Maximum resident set size \(kbytes\): (\d+)"),
        ("user_s", r"User time \(seconds\): ([\d.]+)"),
        ("sys_s", r"System time \(seconds\): ([\d.]+)"),
        ("cpu_percent", r"Percent of CPU this job got: (\d+)%"),
        ("exit_status", r"Exit status: (\d+)"),
    ):
        m = re.search(pattern, text)
        if m:
            out[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    return out


def measure(label: str, rnd: int, log: Path, results: Path, cmd: list[str]) -> int:
    with tempfile.NamedTemporaryFile("r", suffix=".time", delete=False) as tf:
        time_file = Path(tf.name)
    load1 = os.getloadavg()[0]
    with open(log, "w") as logf:
        logf.write("$ " + " ".join(cmd) + "\n")
        logf.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-v", "-o", str(time_file), *cmd], stdout=logf, stderr=logf
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop()
    record = {
        "label": label,
        "round": rnd,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - wall)),
        "rc": rc,
        "perf_counter_s": round(wall, 3),
        "load1_at_start": load1,
        "tree_peak_rss_kb": sampler.peak_rss_kb,
        "tree_peak_pss_kb": sampler.peak_pss_kb,
        "tree_max_procs": sampler.max_procs,
        "cmd": cmd,
        **_parse_time_v(time_file.read_text()),
    }
    time_file.unlink()
    with open(results, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(
        f"  {label} round {rnd}: rc={rc} wall={record.get('wall_s', wall):.2f}s "
        f"maxRSS={record.get('max_rss_kb', 0) / 1024:.0f}MB "
        f"treePSS={sampler.peak_pss_kb / 1024:.0f}MB load1={load1:.2f}",
        flush=True,
    )
    return rc


# --------------------------------------------------------------------------- table


def table(results: Path, ratio: str, title: str | None) -> str:
    rows: dict[str, list[dict]] = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        rows.setdefault(r["label"], []).append(r)
    num, den = ratio.split("/")

    def stats(label: str) -> dict:
        rs = [r for r in rows.get(label, []) if r["rc"] == 0]
        if not rs:
            return {}
        walls = [r["wall_s"] for r in rs]
        return {
            "n": len(rs),
            "failed": len(rows[label]) - len(rs),
            "median": statistics.median(walls),
            "min": min(walls),
            "max": max(walls),
            "cpu": statistics.median(r.get("user_s", 0) + r.get("sys_s", 0) for r in rs),
            "rss": statistics.median(r["max_rss_kb"] for r in rs) / 1024,
            "tree_rss": statistics.median(r["tree_peak_rss_kb"] for r in rs) / 1024,
            "tree_pss": statistics.median(r["tree_peak_pss_kb"] for r in rs) / 1024,
            "procs": max(r["tree_max_procs"] for r in rs),
            "load": statistics.median(r["load1_at_start"] for r in rs),
        }

    s = {label: stats(label) for label in rows}
    lines = []
    if title:
        lines.append(f"**{title}**\n")
    lines.append(
        "| tool | runs ok | median wall s | min | max | CPU s (user+sys), median "
        "| peak RSS, largest process MB | peak RSS, sum of tree MB | peak PSS, sum of tree MB "
        "| processes | load1 at start |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, st in s.items():
        if not st:
            lines.append(f"| {label} | 0 of {len(rows[label])} |" + " - |" * 9)
            continue
        ok = f"{st['n']}" + (f" ({st['failed']} failed)" if st["failed"] else "")
        lines.append(
            f"| {label} | {ok} | {st['median']:.2f} | {st['min']:.2f} | {st['max']:.2f} "
            f"| {st['cpu']:.1f} | {st['rss']:.0f} | {st['tree_rss']:.0f} | {st['tree_pss']:.0f} "
            f"| {st['procs']} | {st['load']:.2f} |"
        )
    if s.get(num) and s.get(den):
        a, b = s[num], s[den]
        lines.append(
            f"| **ratio {num}/{den}** | | **{a['median'] / b['median']:.2f}** "
            f"| {a['min'] / b['min']:.2f} | {a['max'] / b['max']:.2f} "
            f"| {a['cpu'] / b['cpu']:.2f} | {a['rss'] / b['rss']:.2f} "
            f"| {a['tree_rss'] / b['tree_rss']:.2f} | {a['tree_pss'] / b['tree_pss']:.2f} | | |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert")
    p.add_argument("msd", type=Path)
    p.add_argument("raw", type=Path)
    p.add_argument("--reader", default=None)
    p.add_argument("--test-out", type=Path, default=None)
    p.add_argument("--test-count", type=int, default=1)
    p.add_argument("--test-offset", type=int, default=0)
    p = sub.add_parser("run")
    p.add_argument("--label", required=True)
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = sub.add_parser("table")
    p.add_argument("results", type=Path)
    p.add_argument("--ratio", required=True)
    p.add_argument("--title", default=None)
    args = parser.parse_args(argv)

    if args.command == "convert":
        ids = convert(args.msd, args.raw, args.reader)
        if args.test_out:
            args.test_out.mkdir(parents=True, exist_ok=True)
            src = args.raw / "Dataset999_Peer" / "imagesTr"
            start = args.test_offset % len(ids)  # a negative offset counts from the end
            for cid in ids[start : start + args.test_count]:
                shutil.copyfile(src / f"{cid}_0000.nii.gz", args.test_out / f"{cid}_0000.nii.gz")
        print(f"converted {len(ids)} cases into {args.raw / 'Dataset999_Peer'}")
        return 0
    if args.command == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return measure(args.label, args.round, args.log, args.results, cmd)
    print(table(args.results, args.ratio, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
