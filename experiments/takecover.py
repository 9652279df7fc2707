"""The temperature table of World Models' DoomTakeCover experiment, on our JAX TakeCover-v0.

    python experiments/takecover.py [--out runs/takecover] [--preset cpu-small] [--temperatures 0.1 0.5 1 1.15 1.3]
                                    [--episodes 100] [--quiet] [config overrides, as for `wmj run`]

Trains V and M once, then for each temperature τ trains the controller with CMA-ES only inside M's dream at
τ, and scores it over `--episodes` episodes in the dream (at τ) and in the real env; a random policy gives
the last row. Writes temperature_table.md and .json into the run directory. Rerunning with the same --out
skips finished work (V, M, each τ's training and scoring) and resumes unfinished work from checkpoints.
The logic is in `worldmodels_jax.temperature`.
"""

import argparse
import sys
import time
from pathlib import Path

from worldmodels_jax.cli import add_cpu_devices_option, build_config, use_cpu_devices
from worldmodels_jax.compile_cache import add_compilation_cache_option, use_compilation_cache
from worldmodels_jax.errors import WMJError
from worldmodels_jax.pipeline import Pipeline
from worldmodels_jax.temperature import TEMPERATURES, temperature_table


def main(argv=None) -> int:
    """`argv` None: the command line, which `--cpu-devices` may start over."""
    restart_command = sys.argv if argv is None else None
    parser = argparse.ArgumentParser(prog="experiments/takecover.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/takecover"))
    parser.add_argument("--preset", default=None, help="cpu-small (default for a new run) or paper")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--episodes", type=int, default=None, help="scoring episodes per row (default: evaluate.episodes)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_cpu_devices_option(parser)
    add_compilation_cache_option(parser)
    args, overrides = parser.parse_known_args(argv)
    try:
        use_compilation_cache(args.compilation_cache)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        config = build_config(args.preset, "TakeCover-v0", args.out, overrides)
        use_cpu_devices(args.cpu_devices, config, restart_command)
        pipeline = Pipeline(config, args.out, progress=not args.quiet)
        table = temperature_table(pipeline, args.temperatures, args.episodes)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print((args.out / "temperature_table.md").read_text())
    print(f"this call: {time.perf_counter() - start:.0f}s wall; all pieces together: {table['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
