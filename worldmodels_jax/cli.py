"""`wmj`: the command line.

    wmj run --env CartPolePixels-v1 --preset cpu-small --out DIR [config overrides]
    wmj collect|train-vae|encode|train-mdn|train-controller|evaluate|report --out DIR [--preset P] [overrides]
    wmj info --preset NAME [--json]
    wmj dream --out DIR [--temperature T] [--steps N]   (a GIF of an episode imagined by M, decoded by V)
    wmj evaluate --gymnasium CarRacing-v3 --out DIR --episodes N [--mode z_h] [--seed S] [--max-steps T]
        [--frames gymnasium|ours|ours_during_zoom] [--physics gymnasium|ours]
        (a CarRacing-v0 run's V + M + C on gymnasium's CarRacing-v3; needs `pip install -e '.[gymnasium]'`)
    wmj evaluate --out DIR --hold-at-mean h [--hold-at-mean z] [--mode z_h]   (C's input held at its data mean)
    wmj fork --from RUN --out NEW --stage STAGE [--modes z_h ...] [--continue] [overrides]
        (NEW keeps RUN's stages before STAGE; `wmj run --out NEW` redoes the rest: worldmodels_jax/fork.py)
    wmj rl {dp,q-learning,sarsa,dqn,reinforce} ...
    wmj evolve --env ... --policy ... --strategy CMA_ES --population N
    wmj bench [--quick] [--only NAME]

Config overrides use the dataclass paths, e.g. `--train-vae.epochs 2 --controller.es.population 16`
(see `wmj run --preset cpu-small --help`). A run directory that already exists is resumed.

`--cpu-devices auto|N` (run, the stages, evaluate --hold-at-mean): on a CPU host, split the episodes that have V
in the loop over N simulated CPU devices; auto is one per core for a V of at least 5 MFLOP per frame, else 1
(`pipeline.cpu_devices_for`). On GPU/TPU every device is used and the option is ignored.

`--compilation-cache auto|off|DIR` (every command but bench and evolve; default $WMJ_COMPILATION_CACHE, else
auto): keep compiled programs on disk, so that the next run of a preset loads them instead of compiling; auto is
JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/worldmodels_jax/xla, at most 2 GiB (`compile_cache.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from worldmodels_jax.errors import WMJError

STAGE_COMMANDS = ("collect", "train-vae", "encode", "train-mdn", "train-controller", "evaluate", "report")


def _parse_common(argv: list[str], command: str):
    parser = argparse.ArgumentParser(prog=f"wmj {command}", add_help=False)
    parser.add_argument("--out", type=Path, required=command != "info")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--env", default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_cpu_devices_option(parser)
    parser.add_argument("-h", "--help", action="store_true")
    return parser.parse_known_args(argv)


def add_cpu_devices_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu-devices", default="auto",
                        help="on a CPU host, simulate this many CPU devices and split episodes with V in the loop "
                             "over them; auto: one per core for a V that costs at least 5 MFLOP per frame, else 1 "
                             "(pipeline.cpu_devices_for); ignored on GPU/TPU, where every device is used")


def use_cpu_devices(choice: str, config, restart_command: list[str] | None) -> None:
    """`--cpu-devices`: on a CPU host, start `python *restart_command` over with the CPU device count that
    `choice` asks for, unless this process has it already. Nothing happens on GPU/TPU, in a process that was
    already restarted, or without a `restart_command` (a call from Python keeps the devices it has)."""
    import os

    from worldmodels_jax.evolve import cpu_devices_to_start, restart_with_cpu_devices
    from worldmodels_jax.pipeline import cpu_devices_for

    wanted = cpu_devices_to_start(choice, lambda: cpu_devices_for(config))  # checks `choice` first
    if wanted is not None and restart_command is not None and not os.environ.get("WMJ_CPU_DEVICES_BOOTSTRAPPED"):
        restart_with_cpu_devices(wanted, restart_command)


def build_config(preset: str | None, env: str | None, out: Path | None, overrides: list[str], show_help: bool = False):
    """The config of a run: the run directory's own if it exists, else the preset, then the overrides."""
    import tyro

    from worldmodels_jax.configs import PipelineConfig, get_preset
    from worldmodels_jax.pipeline import load_config

    if out is not None and (out / "config.json").exists() and preset is None:
        base = load_config(out)
    else:
        base = get_preset(preset or "cpu-small", env)
    if env is not None:
        base = dataclasses.replace(base, env_id=env)
    if show_help:
        overrides = [*overrides, "--help"]
    return tyro.cli(PipelineConfig, default=base, args=overrides, prog="wmj")


def cmd_info(args, rest) -> int:
    from worldmodels_jax.configs import resolve
    from worldmodels_jax.data import make_env
    from worldmodels_jax.models.controller import ControllerConfig, action_mapping_for, init_controller
    from worldmodels_jax.models.memory import init_memory, make_memory
    from worldmodels_jax.models.vae import init_vae, param_count, param_shapes
    from worldmodels_jax.rundir import to_jsonable

    config = build_config(args.preset, args.env, None, rest)
    try:
        env, env_params = make_env(config.env_id)
        config = resolve(config, env, env_params)
        mapping = action_mapping_for(env.action_space(env_params), config.controller.action_mapping)
        outputs = mapping.num_outputs
    except WMJError:
        raise
    except Exception as err:  # the env's module may not be installed yet
        print(f"note: env {config.env_id} unavailable ({err}); sizes from the preset as written", file=sys.stderr)
        outputs = config.mdn.action_size
    memory = make_memory(config.memory, config.mdn, config.transformer)
    controllers = {}
    for mode in config.controller.modes:
        c = ControllerConfig(mode=mode, z_size=config.vae.z_size, feature_size=memory.feature_size,
                             num_outputs=outputs, hidden_units=config.controller.hidden_units,
                             use_bias=config.controller.use_bias)
        controllers[mode] = param_count(param_shapes(init_controller, c))
    payload = {"preset": config.preset, "config": to_jsonable(config),
               "param_counts": {"vae": param_count(param_shapes(init_vae, config.vae)),
                                "mdn_rnn": param_count(param_shapes(init_memory, memory)), "controller": controllers}}
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(f"preset {config.preset}: env {config.env_id}")
        for name, count in payload["param_counts"].items():
            print(f"  {name}: {count}")
    return 0


def cmd_stage(command: str, args, rest, restart_command: list[str] | None = None) -> int:
    from worldmodels_jax.pipeline import Pipeline

    config = build_config(args.preset, args.env, args.out, rest, args.help)
    use_cpu_devices(args.cpu_devices, config, restart_command)
    pipeline = Pipeline(config, args.out, progress=not args.quiet)
    if command == "run":
        record = pipeline.run_all()
    else:
        method = {"collect": pipeline.collect, "train-vae": pipeline.train_vae, "encode": pipeline.encode,
                  "train-mdn": pipeline.train_mdn, "train-controller": pipeline.train_controller,
                  "evaluate": pipeline.evaluate, "report": pipeline.report}[command]
        record = method()
    if command in ("run", "report"):
        report = json.loads((pipeline.run.path / "report.json").read_text())
        print(f"\nreport: {pipeline.run.path / 'report.md'}")
        for mode, summary in report["results"].items():
            print(f"  {mode:>10}: {summary['mean']:.1f} ± {summary['std']:.1f} over {summary['episodes']} episodes")
        print("  timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items() if v is not None))
    elif args.json:
        print(json.dumps(record, indent=2, default=str))
    return 0


def cmd_fork(argv: list[str]) -> int:
    """`wmj fork`: a new run that keeps a finished run's stages before --stage (worldmodels_jax/fork.py)."""
    from worldmodels_jax.fork import FORK_STAGES, __doc__ as fork_doc, fork_run

    parser = argparse.ArgumentParser(prog="wmj fork", add_help=False)
    parser.add_argument("--from", dest="source", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--stage", choices=FORK_STAGES)
    parser.add_argument("--modes", nargs="+", default=None)
    parser.add_argument("--continue", dest="continue_search", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.help:
        print(fork_doc.strip())
        return 0
    missing = [flag for flag, value in (("--from", args.source), ("--out", args.out), ("--stage", args.stage))
               if value is None]
    if missing:
        raise WMJError(f"wmj fork needs {', '.join(missing)}: wmj fork --from RUN --out NEW --stage "
                       f"{{{','.join(FORK_STAGES)}}} [overrides]")
    if not (args.source / "config.json").exists():
        raise WMJError(f"{args.source} is not a run directory (no config.json); pass the run to fork with --from")
    config = build_config(None, None, args.source, rest)
    record = fork_run(args.source, args.out, args.stage, config, tuple(args.modes or ()) or None,
                      args.continue_search)
    print(f"forked {args.source} at {args.stage} into {args.out}")
    print(f"  kept: {', '.join(record['kept_stages'])}"
          + (f"; controllers {', '.join(record['kept_modes'])}" if record["kept_modes"] else ""))
    if record["retrain_modes"]:
        how = "resuming from the source's ES checkpoints" if record["continue"] else "from the start"
        print(f"  retrain: {', '.join(record['retrain_modes'])} ({how})")
    for field, change in record["differences"].items():
        print(f"  {field}: {change['source']!r} -> {change['fork']!r}")
    print(f"next: wmj run --out {args.out}   (CarRacing's table: python experiments/carracing.py --out {args.out})")
    return 0


def cmd_dream(args, rest) -> int:
    """`wmj dream --out DIR [--temperature T] [--steps N] [--mode MODE]`: a GIF of an imagined episode."""
    from worldmodels_jax.pipeline import Pipeline, load_config
    from worldmodels_jax.report import imagined_episode_gif

    parser = argparse.ArgumentParser(prog="wmj dream")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--mode", default=None)
    parser.add_argument("--gif", type=Path, default=None)
    extra = parser.parse_args(rest)
    config = load_config(args.out)
    pipeline = Pipeline(config, args.out, progress=False)
    temperature = config.controller.temperature if extra.temperature is None else extra.temperature
    path = extra.gif or args.out / f"dream_tau{temperature:g}.gif"
    info = imagined_episode_gif(pipeline, path, extra.steps, temperature, extra.mode)
    print(f"wrote {info['path']}: {info['steps']} imagined steps at temperature {temperature:g} ({info['mode']})")
    return 0


def cmd_evaluate_gymnasium(args, rest) -> int:
    """`wmj evaluate --gymnasium CarRacing-v3 --out DIR --episodes N`: a trained run on gymnasium's env."""
    from worldmodels_jax.carracing_experiment import PHYSICS, evaluate_on_gymnasium, gymnasium_record_name
    from worldmodels_jax.envs.gymnasium_bridge import FRAMES
    from worldmodels_jax.pipeline import Pipeline, load_config

    parser = argparse.ArgumentParser(prog="wmj evaluate --gymnasium")
    parser.add_argument("--gymnasium", required=True, help="gymnasium env id (CarRacing-v3)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--mode", action="append", default=None, help="controller mode(s); default: all trained")
    parser.add_argument("--seed", type=int, default=0, help="episode e runs on gymnasium track seed + e")
    parser.add_argument("--max-steps", type=int, default=None, help="cap episodes below gymnasium's 1000 steps")
    parser.add_argument("--frames", default="gymnasium", choices=FRAMES,
                        help="what C's V sees: gymnasium's frames, or our renderer's frame of the same car pose "
                             "and track (every step, or only while gymnasium's camera zooms in)")
    parser.add_argument("--physics", default="gymnasium", choices=PHYSICS,
                        help="'ours': our env drives gymnasium's tracks with our physics and frames, to compare")
    extra = parser.parse_args(rest)
    pipeline = Pipeline(load_config(args.out), args.out, progress=False)
    payload = evaluate_on_gymnasium(pipeline, extra.episodes, extra.mode, extra.seed, extra.max_steps,
                                    env_id=extra.gymnasium, frames=extra.frames, physics=extra.physics)
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        where = (f"our env on {payload['env_id']}'s tracks" if payload["physics"] == "ours" else payload["env_id"]
                 + ("" if payload["frames"] == "gymnasium" else f" with {payload['frames'].replace('_', ' ')} frames"))
        print(f"{where}, {extra.episodes} tracks (seeds {extra.seed}..{extra.seed + extra.episodes - 1}):")
        for mode, r in payload["results"].items():
            counts = ", ".join(f"{e.replace('_', ' ')} {n}" for e, n in r["ending_counts"].items() if n)
            print(f"  {mode:>10}: {r['mean']:.1f} ± {r['std']:.1f}; tiles {100 * r['tiles_mean']:.0f}%, "
                  f"forward speed {r['forward_speed_mean']:.1f}, on the road {100 * r['on_road_mean']:.0f}%, "
                  + (f"gas {r['gas_mean']:.2f}, brake {r['brake_mean']:.2f}, " if "gas_mean" in r else "")
                  + f"endings: {counts}  ({r['seconds']:.0f} s)")
        print(f"wrote {args.out / gymnasium_record_name(payload['env_id'], payload['frames'], payload['physics'])}")
    return 0


def cmd_evaluate_held(args, rest, restart_command: list[str] | None = None) -> int:
    """`wmj evaluate --out DIR --hold-at-mean h [--hold-at-mean z] [--mode z_h]`: a feature ablation."""
    from worldmodels_jax.pipeline import Pipeline, load_config
    from worldmodels_jax.rundir import write_json_atomic

    parser = argparse.ArgumentParser(prog="wmj evaluate --hold-at-mean")
    parser.add_argument("--hold-at-mean", action="append", required=True, metavar="FEATURES",
                        help="'z', 'h' or 'z,h': C sees these at their training-data mean (repeat for more)")
    parser.add_argument("--mode", action="append", default=None,
                        help="controller mode(s); default: every trained mode whose input has the features")
    extra = parser.parse_args(rest)
    holds = [tuple(part for part in value.split(",") if part) for value in extra.hold_at_mean]
    config = load_config(args.out)
    use_cpu_devices(args.cpu_devices, config, restart_command)
    pipeline = Pipeline(config, args.out, progress=False)
    # "as trained" is evaluated again, by the same code as the held rows, so every row compares like with like
    modes = extra.mode or [m for m in pipeline.config.controller.modes
                           if pipeline.agent(m).uses_memory or not any("h" in hold for hold in holds)]
    results = {}
    for mode in modes:
        results[mode] = {"as trained": pipeline.evaluate_controller(mode)}
        for hold in holds:
            results[mode][f"{'+'.join(hold)} at mean"] = pipeline.evaluate_controller(mode, hold)
    payload = {"episodes": pipeline.config.evaluate.episodes, "results": results}
    write_json_atomic(args.out / "feature_ablation.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(f"{payload['episodes']} evaluation episodes (the evaluate stage's), C's input held at the data mean:")
        for mode, rows in results.items():
            print(f"  {mode}: " + "; ".join(f"{k} {r['mean']:.1f} ± {r['std']:.1f}" for k, r in rows.items()))
        print(f"wrote {args.out / 'feature_ablation.json'}")
    return 0


NO_COMPILATION_CACHE = ("bench", "evolve")
"""Commands that keep JAX's own cache setting: `bench` times compiles, and `evolve` may run as several processes,
which were seen to run mismatched collectives when they raced on one cache directory (tests/test_evolve_multihost.py)."""


def _apply_compilation_cache(command: str, rest: list[str]) -> list[str]:
    """Takes `--compilation-cache` out of `rest` and applies it. NO_COMPILATION_CACHE's commands keep it in `rest`,
    so that their own parsers reject it rather than ignore it."""
    from worldmodels_jax.compile_cache import add_compilation_cache_option, use_compilation_cache

    if command in NO_COMPILATION_CACHE:
        return rest
    parser = argparse.ArgumentParser(add_help=False)
    add_compilation_cache_option(parser)
    args, rest = parser.parse_known_args(rest)
    use_compilation_cache(args.compilation_cache)
    return rest


def main(argv: list[str] | None = None) -> int:
    """`argv` None: the command line, which `--cpu-devices` may start over (`use_cpu_devices`)."""
    restart_command = ["-m", "worldmodels_jax.cli", *sys.argv[1:]] if argv is None else None
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("run", *STAGE_COMMANDS, "info", "rl", "bench", "evolve", "dream", "fork")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}; choose from {', '.join(commands)}", file=sys.stderr)
            return 2
        return 0
    command, rest = argv[0], argv[1:]
    try:
        rest = _apply_compilation_cache(command, rest)
        if command == "rl":
            from worldmodels_jax.rl.cli import main as rl_main

            return rl_main(rest) or 0
        if command == "evolve":
            from worldmodels_jax.evolve_cli import main as evolve_main

            return evolve_main(rest) or 0
        if command == "bench":
            from worldmodels_jax.bench import main as bench_main

            return bench_main(rest) or 0
        if command == "fork":
            return cmd_fork(rest)
        args, rest = _parse_common(rest, command)
        if command == "info":
            return cmd_info(args, rest)
        if command == "dream":
            return cmd_dream(args, rest)
        if command == "evaluate" and any(a.split("=")[0] == "--gymnasium" for a in rest):
            return cmd_evaluate_gymnasium(args, rest)
        if command == "evaluate" and any(a.split("=")[0] == "--hold-at-mean" for a in rest):
            return cmd_evaluate_held(args, rest, restart_command)
        return cmd_stage(command, args, rest, restart_command)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
