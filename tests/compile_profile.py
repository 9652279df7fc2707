"""Sums a WMJ_COMPILE_PROFILE file (tests/conftest.py) per test file: wall seconds, and the seconds spent in JAX
tracing, lowering and XLA compilation, longest files first.

    WMJ_COMPILE_PROFILE=/tmp/profile.jsonl make test
    .venv/bin/python tests/compile_profile.py /tmp/profile.jsonl [--tests 15]
"""

from __future__ import annotations

import argparse
import collections
import json

COLUMNS = ("wall", "trace", "lower", "compile", "cache_saved")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("--tests", type=int, default=15, help="also list this many of the longest tests")
    args = parser.parse_args()
    records = [json.loads(line) for line in open(args.profile) if line.strip()]
    if not records:
        raise SystemExit(f"{args.profile} holds no records; run pytest with WMJ_COMPILE_PROFILE={args.profile}")
    files: dict[str, dict[str, float]] = collections.defaultdict(lambda: dict.fromkeys(COLUMNS, 0.0))
    for record in records:
        totals = files[record["test"].split("::")[0]]
        for column in COLUMNS:
            totals[column] += record[column]
    header = f"{'file':<44}" + "".join(f"{c:>12}" for c in COLUMNS) + f"{'rest':>10}"
    print(header)
    rows = sorted(files.items(), key=lambda item: -item[1]["wall"])
    for name, totals in rows + [("total", {c: sum(t[c] for _, t in rows) for c in COLUMNS})]:
        rest = totals["wall"] - totals["trace"] - totals["lower"] - totals["compile"]
        print(f"{name:<44}" + "".join(f"{totals[c]:>12.1f}" for c in COLUMNS) + f"{rest:>10.1f}")
    print(f"\nlongest {args.tests} tests")
    for record in sorted(records, key=lambda r: -r["wall"])[: args.tests]:
        print(f"{record['test'][:90]:<92}" + "".join(f"{record[c]:>9.1f}" for c in COLUMNS[:4]))


if __name__ == "__main__":
    main()
