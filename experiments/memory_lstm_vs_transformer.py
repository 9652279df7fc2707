"""LSTM vs transformer M on pixel CartPole at `cpu-small`: same data, same V, same M and ES budgets.

    python experiments/memory_lstm_vs_transformer.py [--out runs/memory_cmp] [--quiet] [overrides]

Overrides are the fields of `worldmodels_jax.compare_memory.MemoryComparisonConfig`, e.g. `--es.generations 10
--transformer.num-layers 2 --dream-population 256` (see `--help`). The run directory is resumable: finished stages
are skipped. Writes `comparison.md` and `comparison.json` into it.
"""

import argparse
import sys
from pathlib import Path

import tyro

from worldmodels_jax.compare_memory import MemoryComparisonConfig, run_comparison


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", default="runs/memory_cmp")
    parser.add_argument("--quiet", action="store_true")
    args, rest = parser.parse_known_args(argv)
    config = tyro.cli(MemoryComparisonConfig, args=rest, prog="memory_lstm_vs_transformer.py")
    run_comparison(config, args.out, progress=not args.quiet)
    suffix = f"-seed{config.seed}" if config.seed else ""
    print((Path(args.out) / f"comparison{suffix}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
