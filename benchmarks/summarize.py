"""Tables from the output of benchmarks/run.sh (one file per run):

    python benchmarks/summarize.py RUN_OUTPUT [RUN_OUTPUT ...]

Prints each run's markdown table (requests/s for add, instances/s otherwise, mindserve / floor and mindserve /
KServe), then, for several runs, the median of each ratio. On a noisy machine the floor itself moves by a quarter between runs,
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


def ratios(rows: dict, peer: str = "floor") -> dict[tuple[str, str], float]:
    return {(m, c): rows["project", m, c] / rows[peer, m, c] for m, c, _ in SCENARIOS
            if rows.get(("project", m, c)) and rows.get((peer, m, c))}


def table(rows: dict) -> str:
    out = ["| scenario | floor | MLServer | MLServer + adaptive batching | KServe | mindserve | mindserve / floor "
           "| mindserve / KServe |", "|---|---|---|---|---|---|---|---|"]
    for model, conc, title in SCENARIOS:
        cells = [rows.get((server, model, conc))
                 for server in ("floor", "mlserver", "mlserver-batched", "kserve", "project")]
        shares = [ratios(rows, peer).get((model, conc)) for peer in ("floor", "kserve")]
        out.append(f"| {title} | " + " | ".join(f"{v:,.0f}" if v else "" for v in cells) + " | "
                   + " | ".join(f"{r:.2f}" if r else "" for r in shares) + " |")
    return "\n".join(out)


def main(paths: list[str]) -> None:
    runs = [read_run(p) for p in paths]
    for path, rows in zip(paths, runs):
        print(f"{path}\n{table(rows)}\n")
    if len(runs) > 1:
        for peer, name in (("floor", "floor"), ("kserve", "KServe")):
            print(f"| scenario | mindserve / {name}, each run | median |\n|---|---|---|")
            for model, conc, title in SCENARIOS:
                values = [r[model, conc] for r in (ratios(rows, peer) for rows in runs) if (model, conc) in r]
                if values:
                    print(f"| {title} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")
            print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
