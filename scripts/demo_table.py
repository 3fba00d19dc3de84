#!/usr/bin/env python3
"""Summarises several `detkd demo --seed N --out DIR` runs as the README's Markdown table.

Usage: python3 scripts/demo_table.py DIR [DIR ...]

Each DIR holds a report.json. Prints, per run (teacher, student, each method), the mean and the spread
(min–max) of COCO AP, AP50 and AP75 over the seeds, the mean gain over the plain student of the same seed,
and each seed's AP, so nothing is hidden behind the mean.
"""

import json
import sys
from pathlib import Path


def load(directory):
    report = json.loads((Path(directory) / "report.json").read_text())
    runs = {run["name"]: run for run in report["runs"]}
    return report, runs


def pct(values):
    return [100.0 * v for v in values]


def mean(values):
    return sum(values) / len(values)


def cell(values):
    values = pct(values)
    return f"{mean(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    reports = [load(d) for d in argv[1:]]
    names = [run["name"] for run in reports[0][0]["runs"]]
    for report, runs in reports:
        if [run["name"] for run in report["runs"]] != names:
            sys.exit("the reports list different runs; were they made by the same detkd?")
    seeds = [report["seed"] for report, _ in reports]

    print(f"| run | AP | AP50 | AP75 | ΔAP vs student | AP per seed ({', '.join(map(str, seeds))}) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        stats = [runs[name]["stats"] for _, runs in reports]
        ap = [s["AP"] for s in stats]
        if name in ("teacher", "student"):
            gain = "—"
        else:
            deltas = pct([runs[name]["stats"]["AP"] - runs["student"]["stats"]["AP"] for _, runs in reports])
            gain = f"{mean(deltas):+.1f} ({min(deltas):+.1f} to {max(deltas):+.1f})"
        label = name if name in ("teacher", "student") else f"student {name}"
        per_seed = " / ".join(f"{v:.1f}" for v in pct(ap))
        print(
            f"| {label} | {cell(ap)} | {cell([s['AP50'] for s in stats])} | "
            f"{cell([s['AP75'] for s in stats])} | {gain} | {per_seed} |"
        )
    walls = [report["total_seconds"] for report, _ in reports]
    print()
    print(f"Whole demo: {min(walls) / 60:.1f}–{max(walls) / 60:.1f} min per seed.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
