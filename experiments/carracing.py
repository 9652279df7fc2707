"""The paper's CarRacing experiment on our JAX CarRacing-v0: the World Models pipeline, then the table

    | Method | Mean ± std |   Random, Scripted driver, V only z, V only z + hidden, Full world model z + h

each over 100 random tracks never seen in training, written to <out>/carracing_table.{md,json}.

    python experiments/carracing.py [--out runs/carracing-cpu-small] [--preset cpu-small] [--quiet] [overrides]
    python experiments/carracing.py --summarize runs/cr-seed*-pop32 [--summary-out FILE.json]

`--summarize` runs nothing: over finished runs of different seeds (run directories or carracing_table JSON
files), it prints each controller's mean ± standard error, the paired per-seed differences and whether the paper's
ordering z + h > z + hidden > z holds at two standard errors.

`--preset cpu-small` is `carracing-cpu-small` (2-core CPU, under 30 minutes); `--preset paper` is
`carracing-paper` (GPU); `--preset paper-cpu` is `carracing-paper-cpu`, the paper's models and settings at
cpu-small's budget (z + h only, 43 minutes on a 2-core Zen 3 VM). An interrupted run resumes where it stopped
when re-run with the same --out.
Config overrides use the dataclass paths, as for `wmj run` (e.g. `--controller.es.generations 10`).
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from worldmodels_jax.carracing_experiment import carracing_table, load_table, summarize_seeds, summary_markdown
from worldmodels_jax.cli import add_cpu_devices_option, build_config, use_cpu_devices
from worldmodels_jax.errors import WMJError
from worldmodels_jax.pipeline import Pipeline


def main(argv: list[str], restart_command: list[str] | None = None) -> int:
    """`restart_command`: how to start this script over with more CPU devices (`--cpu-devices`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--summarize", nargs="+", type=Path, default=None, metavar="RUN",
                        help="summarize finished runs over seeds instead of running (run dirs or table JSON files)")
    parser.add_argument("--summary-out", type=Path, default=None, help="with --summarize: also write the JSON here")
    add_cpu_devices_option(parser)
    args, overrides = parser.parse_known_args(argv)
    if args.summarize:
        return summarize(args.summarize, args.summary_out, overrides)
    out = args.out or Path("runs") / f"carracing-{args.preset}"
    start = time.perf_counter()
    try:
        config = build_config(args.preset, "CarRacing-v0", out, overrides)
        use_cpu_devices(args.cpu_devices, config, restart_command)
        pipeline = Pipeline(config, out, progress=not args.quiet)
        pipeline.run_all()
        table = carracing_table(pipeline)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table["markdown"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\nwrote {out / 'carracing_table.md'} and {out / 'carracing_table.json'}")
    print(f"this invocation: {time.perf_counter() - start:.0f} s wall, {usage.ru_utime + usage.ru_stime:.0f} s CPU "
          "(user + system; on a shared machine the CPU time is the better measure of the work)")
    return 0


def summarize(paths: list[Path], out: Path | None, overrides: list[str]) -> int:
    if overrides:
        print(f"error: --summarize takes run directories or table files only; unexpected {' '.join(overrides)}",
              file=sys.stderr)
        return 2
    try:
        tables = {(path.stem.removeprefix("carracing_table_") if path.suffix == ".json" else path.name):
                  load_table(path) for path in paths}
        summary = summarize_seeds(tables)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_markdown(summary))
    if out is not None:
        out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], sys.argv))
