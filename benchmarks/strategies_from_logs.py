"""Rebuild ``benchmarks/results/strategies.json`` from the tables ``benchmarks/strategies.py`` printed.

The runs of 2026-12-04 (``benchmarks/results/strategies_logs/run*.txt``, the printed output of the
four ``make bench-strategies`` commands, with the library warnings dropped) ran before
``strategies.py`` wrote its results file by default (its ``--results`` default was read as
``none``). This script parses their printed rows into the same JSON ``strategies.py`` writes, with
the figures at the precision they were printed (regrets to 3 decimals, the mean to 4, which is what
the README quotes). The next ``make bench-strategies`` overwrites it with unrounded figures.

Run: ``python benchmarks/strategies_from_logs.py benchmarks/results/strategies_logs/run*.txt``
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from strategies import GP_OPTIONS, RESULTS_DIR, save_results  # noqa: E402

Q = r"([\d.]+) \[\s*([\d.]+),\s*([\d.]+)\]"
ROW = re.compile(
    rf"^(\S+)\s+([yn])\s+{Q}\s+{Q}\s+{Q}\s+([\d.inf]+)\s+(\d+)%\s+(\d+)\s+(\d+)\s+(>?\d+)\s+(\d+)\s+(\d+)s$"
)
HEAD = re.compile(r"^strategy\s+mf\s+regret@(\d+)\s+regret@(\d+)\s+regret@(\d+)")
TABLE = re.compile(r"^table (\S+): .*score=(\w+), tie=(\w+)")


def parse(path: Path) -> tuple[dict, dict]:
    settings: dict = {"charge_repeats": False, "gp_options": GP_OPTIONS}
    rows: dict = {}
    checks: list[int] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := TABLE.match(line):
            settings.update(table=m.group(1), score=m.group(2), tie=m.group(3))
        elif m := HEAD.match(line):
            checks = [int(c) for c in m.groups()]
            settings.update(budget=checks[-1], checkpoints=checks)
        elif m := ROW.match(line):
            g = m.groups()
            regret = {
                str(c): {"median": float(g[2 + 3 * i]), "q1": float(g[3 + 3 * i]), "q3": float(g[4 + 3 * i])}
                for i, c in enumerate(checks)
            }
            rows[g[0]] = {
                "mf": g[1] == "y", "regret": regret, "mean": float(g[11]), "best": int(g[12]) / 100,
                "evals": int(g[13]), "archs": int(g[14]), "match": g[15], "seeds": int(g[16]),
                "seconds": float(g[17]), "printed_precision": True,
            }  # fmt: skip
    if "--charge-repeats" in path.read_text(encoding="utf-8").splitlines()[0]:
        settings["charge_repeats"] = True
    return settings, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--results", type=Path, default=RESULTS_DIR / "strategies.json")
    args = ap.parse_args(argv)
    for log in args.logs:
        settings, rows = parse(log)
        if not rows:
            raise SystemExit(f"{log}: no strategy rows found")
        save_results(args.results, settings, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
