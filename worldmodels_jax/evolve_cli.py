"""`wmj evolve`: evolve an MLP policy on any vector-observation gymnax env with any evosax strategy.

    wmj evolve --env CartPole-v1 --policy mlp --strategy CMA_ES --population 256 --generations 50 --out runs/cp
    wmj evolve ... --out runs/cp --resume            # continue from the newest checkpoint
    wmj evolve ... --population 4096                 # on a CPU host: one simulated device per core (--cpu-devices)
    # one process per host (see docs/evolve.md):
    wmj evolve ... --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wmj evolve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--env", default="CartPole-v1", help="gymnax env id (vector observations)")
    p.add_argument("--policy", default="mlp", choices=("mlp", "linear"), help="mlp: tanh hidden layers; linear: none")
    p.add_argument("--hidden", type=int, nargs="*", default=[32], help="hidden widths of the mlp policy")
    p.add_argument("--stochastic", action="store_true", help="sample discrete actions from softmax(logits)")
    p.add_argument("--strategy", default="CMA_ES", help="any evosax algorithm by name")
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--sigma", type=float, default=0.1, help="initial std σ₀")
    p.add_argument("--rollouts", type=int, default=4, help="episodes per candidate (fitness = mean return)")
    p.add_argument("--l2", type=float, default=0.0, help="L2 penalty coefficient on mean(θ²)")
    p.add_argument("--eval-every", type=int, default=10,
                   help="generations per compiled chunk; the mean is evaluated and a checkpoint saved after each")
    p.add_argument("--eval-episodes", type=int, default=128)
    p.add_argument("--target", type=float, default=None, help="stop once the mean's evaluation reaches this")
    p.add_argument("--no-crn", action="store_true", help="independent episode seeds per candidate")
    p.add_argument("--no-antithetic", action="store_true", help="plain sampling where the strategy offers the choice")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of Open_ES's optimizer")
    p.add_argument("--pop-chunk", type=int, default=None, help="members evaluated at once per device (lax.map)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--normalize-obs", action="store_true")
    p.add_argument("--devices", type=int, default=None, help="shard over the first N devices (default: all)")
    p.add_argument("--cpu-devices", default="auto",
                   help="on a CPU host, simulate this many CPU devices (one thread each) and shard over them; "
                        "auto: one per core for populations of at least 2048 members per core and a policy that "
                        "--small-dense does not fuse whole, else 1 (evolve.cpu_devices_for); ignored on GPU/TPU")
    p.add_argument("--small-dense", default="auto",
                   help="compute the policy's Dense layers with at most 32 inputs and at most N kernel entries as "
                        "multiply-adds fused with the env step (same function; models.small_dense); auto: 256 on "
                        "the CPU, off on GPU/TPU; 0: off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run directory (metrics, checkpoints, summary)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--chunk-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow a run down
    return p


_BOOTSTRAP = (
    "import os, sys, jax\n"
    "jax.distributed.initialize(coordinator_address=os.environ['WMJ_COORDINATOR'] or None,\n"
    "    num_processes=int(os.environ['WMJ_NUM_PROCESSES']) if os.environ['WMJ_NUM_PROCESSES'] else None,\n"
    "    process_id=int(os.environ['WMJ_PROCESS_ID']) if os.environ['WMJ_PROCESS_ID'] else None)\n"
    "from worldmodels_jax.evolve_cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _exec_distributed(args, argv: list[str]) -> None:
    """Re-executes this command in a fresh interpreter that calls `jax.distributed.initialize` first.

    `jax.distributed.initialize` must run before anything touches the XLA backend, and importing gymnax
    (hence this package) already does; so the multi-host path starts over in a new process.
    """
    import os

    env = {**os.environ, "WMJ_DISTRIBUTED_BOOTSTRAPPED": "1", "WMJ_COORDINATOR": args.coordinator or "",
           "WMJ_NUM_PROCESSES": "" if args.num_processes is None else str(args.num_processes),
           "WMJ_PROCESS_ID": "" if args.process_id is None else str(args.process_id)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-c", _BOOTSTRAP, *argv], env)


def _cpu_devices_wanted(args) -> int | None:
    """The CPU device count this run should have, or None to keep the process's devices as they are."""
    import jax

    from worldmodels_jax.evolve import cpu_devices_for, cpu_devices_to_start

    def auto() -> int | None:
        if args.devices is not None:  # the user chose the mesh
            return None
        from worldmodels_jax.models.small_dense import all_dense_small, resolve_small_dense

        wanted = cpu_devices_for(args.population, args.eval_episodes, args.pop_chunk)
        if wanted > 1:  # only then does the policy's shape matter
            env, env_params, policy = _env_and_policy(args)
            obs, _ = env.reset(jax.random.PRNGKey(0), env_params)
            template = policy.init(jax.random.PRNGKey(0), obs, jax.random.PRNGKey(0))
            if all_dense_small(template, resolve_small_dense(_small_dense(args))):
                wanted = 1
        return wanted

    return cpu_devices_to_start(args.cpu_devices, auto)


def _exec_with_cpu_devices(devices: int, argv: list[str]) -> None:
    """Starts this command over with `devices` simulated CPU devices (fixed when JAX starts, and importing gymnax
    starts it)."""
    from worldmodels_jax.evolve import restart_with_cpu_devices

    restart_with_cpu_devices(devices, ["-m", "worldmodels_jax.evolve_cli", *argv])


def main(argv: list[str] | None = None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    wants_distributed = args.coordinator is not None or args.num_processes is not None or args.process_id is not None
    if wants_distributed and not os.environ.get("WMJ_DISTRIBUTED_BOOTSTRAPPED"):
        _exec_distributed(args, argv)
    from worldmodels_jax.errors import WMJError

    try:
        if not wants_distributed and not os.environ.get("WMJ_CPU_DEVICES_BOOTSTRAPPED"):
            devices = _cpu_devices_wanted(args)
            if devices is not None:
                _exec_with_cpu_devices(devices, argv)
        return _run(args)
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _small_dense(args) -> int | None:
    from worldmodels_jax.errors import ConfigError

    if args.small_dense == "auto":
        return None
    if not args.small_dense.isdigit():
        raise ConfigError(f"--small-dense must be auto or a kernel size >= 0 (0: off), got {args.small_dense!r}")
    return int(args.small_dense)


def _env_and_policy(args):
    """(env, env_params, the MLPPolicy sized for it)."""
    from worldmodels_jax.evolve import make_gymnax_env, mlp_for_env

    env, env_params = make_gymnax_env(args.env)
    hidden = () if args.policy == "linear" else tuple(args.hidden)
    return env, env_params, mlp_for_env(env, env_params, hidden, args.stochastic, args.env)


def _run(args) -> int:
    import jax

    from worldmodels_jax.errors import ConfigError
    from worldmodels_jax.evolution import ESConfig
    from worldmodels_jax.evolve import EvolveConfig, env_problem, evolve

    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out (the run directory to continue)")
    es = ESConfig(strategy=args.strategy, population=args.population, sigma_init=args.sigma,
                  generations=args.generations, rollouts=args.rollouts, l2_coef=args.l2, eval_every=args.eval_every,
                  eval_episodes=args.eval_episodes, target_score=args.target,
                  common_random_numbers=not args.no_crn, open_es_lr=args.lr, antithetic=not args.no_antithetic)
    config = EvolveConfig(seed=args.seed, pop_chunk=args.pop_chunk, max_steps=args.max_steps,
                          normalize_obs=args.normalize_obs, devices=args.devices, small_dense=_small_dense(args))
    env, env_params, policy = _env_and_policy(args)
    problem = env_problem(env, policy, env_params=env_params, config=config)

    on_chunk = (lambda record: time.sleep(args.chunk_delay)) if args.chunk_delay > 0 else None
    summary = evolve(problem, es, config, out=args.out, resume=args.resume, progress=not args.quiet,
                     on_chunk=on_chunk)
    if jax.process_index() == 0:
        record = {k: v for k, v in summary.items() if k not in ("mean_params", "best_params", "state")}
        if args.json:
            print(json.dumps(record))
        else:
            last = record["last_eval"] or {}
            print(f"{args.strategy} on {args.env}: {record['generations']} generations, "
                  f"mean's last eval {last.get('eval_mean', float('nan')):.1f}, best {record['best_eval']:.1f}, "
                  f"{record['env_steps_per_s'] or 0:.3g} env steps/s on {record['devices']} device(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
