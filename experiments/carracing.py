"""The paper's CarRacing experiment on our JAX CarRacing-v0: the World Models pipeline, then the table

    | Method | Mean ± std |   Random, Scripted driver, V only z, V only z + hidden, Full world model z + h

each over 100 random tracks never seen in training, written to <out>/carracing_table.{md,json}.

    python experiments/carracing.py [--out runs/carracing-cpu-small] [--preset cpu-small] [--quiet] [overrides]
    python experiments/carracing.py --summarize runs/cr-seed*-pop32 [--summary-out FILE.json] [--allow-mixed]
    python experiments/carracing.py --probe runs/cr-seed13-pop32 [--probe-mode z_h] [--probe-episodes 64]
    python experiments/carracing.py --oracle runs/cr-seed13-pop32 [--oracle-mode z] [--oracle-generations 180]
        [--oracle-strategy SNES] [--oracle-es-seed 1]

`--summarize` runs nothing: over finished runs of different seeds (run directories or carracing_table JSON
files), it prints each controller's mean ± standard error, the paired per-seed differences and whether the paper's
ordering z + h > z + hidden > z holds at two standard errors. It refuses runs whose settings differ in more than
the seed (a table records its run's resolved configuration; older tables get it from their run directory), unless
`--allow-mixed`.

`--probe` trains nothing: on a finished run, it drives a trained controller over fresh tracks and reports how
well a linear probe reads the car's speed, yaw rate, steering and throttle from z, from M's h, from both, and
from two consecutive z's (held-out R²; `carracing_diagnostics.feature_probe`), and how its episodes ended, into
<run>/feature_probe_<mode>.json. `--probe-mode scripted` drives with the scripted driver.

`--oracle` trains a controller on the car's true state (speed, yaw rate, steering, throttle, position and heading on
the road, the curve ahead) with the run's ES budget, and scores it on the table's 100 tracks
(`carracing_diagnostics.train_state_oracle`), into <run>/state_oracle_<mode>_<strategy>_g<generations>_s<seed>.json;
`--oracle-strategy` and `--oracle-es-seed` ask how much the search itself varies.

`--preset cpu-small` is `carracing-cpu-small` (2-core CPU, under 30 minutes: 15-17 on an AMD EPYC
model 17 VM, 26-28 on a Zen 3 VM);
`--preset cpu-small-e16` is that preset from 2026-12-02 to 2026-12-07, when C was kept by 16-episode evaluations
instead of 64 (docs/carracing_studies.md, "How the kept controller is chosen"); `--preset cpu-small-t500` is that preset
before 2026-12-02, when C trained on 500-step episodes (docs/carracing_studies.md, "Full-length training episodes"); `--preset paper` is `carracing-paper` (GPU); `--preset paper-cpu` is
`carracing-paper-cpu`, the paper's models and settings at cpu-small-t500's budget (z + h only, 43 minutes on a
2-core Zen 3 VM); `--preset cpu-small-imitate` is cpu-small-t500 with C's search started from a fit to the
scripted driver's actions (`controller.init=imitate`; 21 minutes on a Zen 4 VM; docs/carracing_studies.md, "Warm start
by imitation"); `--preset cpu-small-paper-c` is cpu-small with the paper's C inputs and search (sampled raw z and h,
one σ₀ = 0.1, L2 0.01; docs/carracing_studies.md, "The paper's C settings at cpu-small"). An interrupted run resumes where it stopped
when re-run with the same --out; without --preset the run's own config.json gives the settings, so a run that
`wmj fork` prepared (`wmj fork --help`) runs with just `--out`.
Config overrides use the dataclass paths, as for `wmj run` (e.g. `--controller.es.generations 10`).
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from worldmodels_jax.carracing_diagnostics import feature_probe, probe_markdown, train_state_oracle
from worldmodels_jax.carracing_experiment import carracing_table, load_tables, summarize_seeds, summary_markdown
from worldmodels_jax.cli import add_cpu_devices_option, build_config, use_cpu_devices
from worldmodels_jax.compile_cache import add_compilation_cache_option, use_compilation_cache
from worldmodels_jax.errors import WMJError
from worldmodels_jax.pipeline import Pipeline, load_config


def experiment_config(preset: str | None, out: Path, overrides: list[str]):
    """The run's settings: `preset` (default cpu-small) for a new run; without `preset`, an existing run's own
    config.json (a resumed or forked run); then the overrides."""
    return build_config(preset, "CarRacing-v0", out, overrides)


def main(argv: list[str], restart_command: list[str] | None = None) -> int:
    """`restart_command`: how to start this script over with more CPU devices (`--cpu-devices`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--preset", default=None,
                        help="default: the --out run's own settings when it exists (a resumed or forked run), "
                             "else cpu-small")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--summarize", nargs="+", type=Path, default=None, metavar="RUN",
                        help="summarize finished runs over seeds instead of running (run dirs or table JSON files)")
    parser.add_argument("--summary-out", type=Path, default=None, help="with --summarize: also write the JSON here")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="with --summarize: pool runs whose settings differ in more than the seed")
    parser.add_argument("--probe", type=Path, default=None, metavar="RUN",
                        help="probe a finished run's features for the car's motion instead of running")
    parser.add_argument("--probe-mode", default="z_h", help="with --probe: the controller that drives")
    parser.add_argument("--probe-episodes", type=int, default=64, help="with --probe: tracks (half fit, half score)")
    parser.add_argument("--probe-steps", type=int, default=1000, help="with --probe: steps per track")
    parser.add_argument("--oracle", type=Path, default=None, metavar="RUN",
                        help="train a controller on the car's true state at a finished run's ES budget")
    parser.add_argument("--oracle-mode", default="z", help="with --oracle: 'z' (linear) or 'z_hidden'")
    parser.add_argument("--oracle-generations", type=int, default=None,
                        help="with --oracle: ES generations (default: the run's)")
    parser.add_argument("--oracle-strategy", default=None, help="with --oracle: evosax strategy (default: the run's)")
    parser.add_argument("--oracle-es-seed", type=int, default=0, help="with --oracle: > 0 draws other ES keys")
    add_cpu_devices_option(parser)
    add_compilation_cache_option(parser)
    args, overrides = parser.parse_known_args(argv)
    try:
        use_compilation_cache(args.compilation_cache)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.summarize:
        return summarize(args.summarize, args.summary_out, args.allow_mixed, overrides)
    if args.probe:
        return probe(args.probe, args.probe_mode, args.probe_episodes, args.probe_steps, overrides)
    if args.oracle:
        return oracle(args.oracle, args.oracle_mode, args.oracle_generations, args.oracle_strategy,
                      args.oracle_es_seed, overrides)
    out = args.out or Path("runs") / f"carracing-{args.preset or 'cpu-small'}"
    start = time.perf_counter()
    try:
        config = experiment_config(args.preset, out, overrides)
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


def unexpected(flag: str, takes: str, overrides: list[str]) -> bool:
    """True (after printing the error) if arguments meant for a run were given to `flag`, which runs nothing."""
    if overrides:
        print(f"error: {flag} takes {takes} only; unexpected {' '.join(overrides)}", file=sys.stderr)
    return bool(overrides)


def summarize(paths: list[Path], out: Path | None, allow_mixed: bool, overrides: list[str]) -> int:
    if unexpected("--summarize", "run directories or table files", overrides):
        return 2
    try:
        summary = summarize_seeds(load_tables(paths), allow_mixed=allow_mixed)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_markdown(summary))
    if out is not None:
        out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0


def probe(run: Path, mode: str, episodes: int, steps: int, overrides: list[str]) -> int:
    if unexpected("--probe", "a run directory and the --probe-* options", overrides):
        return 2
    try:
        result = feature_probe(Pipeline(load_config(run), run, progress=False), mode, episodes, steps)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(probe_markdown(result))
    print(f"\nwrote {run / f'feature_probe_{mode}.json'} ({result['seconds']:.0f} s of driving)")
    return 0


def oracle(run: Path, mode: str, generations: int | None, strategy: str | None, es_seed: int,
           overrides: list[str]) -> int:
    if unexpected("--oracle", "a run directory and the --oracle-* options", overrides):
        return 2
    try:
        pipeline = Pipeline(load_config(run), run, progress=False)
        result = train_state_oracle(pipeline, mode, generations, strategy, es_seed)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    curve = ", ".join(f"{c['generation']}: {c['eval_mean']:.0f}" for c in result["curve"])
    print(f"State oracle ({mode}, {result['strategy']}, ES seed {result['es_seed']}, {result['generations']} "
          f"generations of {result['population']} x "
          f"{result['rollouts']} rollouts, {result['max_episode_steps']}-step episodes): {result['mean']:.1f} ± "
          f"{result['std']:.1f} over {result['episodes']} tracks; training evaluations {curve}")
    print(f"wrote {result['path']} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], sys.argv))
