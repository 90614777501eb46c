"""Tables from the output of benchmarks/run.sh (one file per run):

    python benchmarks/summarize.py RUN_OUTPUT [RUN_OUTPUT ...]

Prints each run's markdown table (requests/s for add, instances/s otherwise, and mindserve / floor), then, for
several runs, the median of each ratio. On a noisy machine the floor itself moves by a quarter between runs,
so a ratio is only meaningful within its run; the median over runs says where it usually lands.
"""
from __future__ import annotations

import json
import re
import statistics
import sys

SCENARIOS = [("add", "1", "add, 1 instance/request, 1 in flight (req/s)"),
             ("add", "16", "add, 1 instance/request, 16 in flight (req/s)"),
             ("mlp", "4", "mlp, 32 instances/request, 4 in flight (instances/s)"),
             ("big", "64", "big, 1 instance/request, 64 in flight (instances/s)")]
LINE = re.compile(r"(\S+)\s+(\S+) --batch \d+ --concurrency (\d+)\s+(\{.*\})")


def read_run(path: str) -> dict[tuple[str, str, str], float]:
    """(server, model, concurrency) -> instances/s (= requests/s for one instance per request)."""
    rows = {}
    with open(path) as f:
        for line in f:
            match = LINE.match(line)
            if match:
                rows[match.group(1), match.group(2), match.group(3)] = json.loads(match.group(4))["ips"]
    return rows


def ratios(rows: dict) -> dict[tuple[str, str], float]:
    return {(m, c): rows["project", m, c] / rows["floor", m, c] for m, c, _ in SCENARIOS
            if rows.get(("project", m, c)) and rows.get(("floor", m, c))}


def table(rows: dict) -> str:
    out = ["| scenario | floor | MLServer | MLServer + adaptive batching | mindserve | mindserve / floor |",
           "|---|---|---|---|---|---|"]
    for model, conc, title in SCENARIOS:
        cells = [rows.get((server, model, conc)) for server in ("floor", "mlserver", "mlserver-batched", "project")]
        ratio = ratios(rows).get((model, conc))
        out.append(f"| {title} | " + " | ".join(f"{v:,.0f}" if v else "" for v in cells)
                   + f" | {ratio:.2f} |" if ratio else " | |")
    return "\n".join(out)


def main(paths: list[str]) -> None:
    runs = [read_run(p) for p in paths]
    for path, rows in zip(paths, runs):
        print(f"{path}\n{table(rows)}\n")
    if len(runs) > 1:
        print("| scenario | mindserve / floor, each run | median |\n|---|---|---|")
        for model, conc, title in SCENARIOS:
            values = [r[model, conc] for r in map(ratios, runs) if (model, conc) in r]
            if values:
                print(f"| {title} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
