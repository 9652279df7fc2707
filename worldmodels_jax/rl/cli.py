"""`wmj rl {dp,q-learning,sarsa,dqn,reinforce} --env ... --seeds N --out DIR [--preset P] [overrides]`.

Every command writes a run directory (see `worldmodels_jax.rundir`):
    config.json                      the resolved command and algorithm config
    metrics/<algo>.jsonl             one record per evaluation point and seed, then a summary record
    checkpoints/<algo>/              orbax checkpoint of the final params (stacked over seeds)
    <algo>_curve.png                 learning curve, mean +- std across seeds
    stages/<algo>.json               summary and wall-clock, written last

Algorithm settings are overridden with their dataclass paths, e.g.
`wmj rl dqn --preset cartpole --seeds 5 --config.learning-rate 1e-3 --config.double-dqn`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from worldmodels_jax.errors import ConfigError, WMJError, check
from worldmodels_jax.rl.dqn import PRESETS as DQN_PRESETS
from worldmodels_jax.rl.dqn import DQNConfig
from worldmodels_jax.rl.reinforce import PRESETS as REINFORCE_PRESETS
from worldmodels_jax.rl.reinforce import ReinforceConfig
from worldmodels_jax.rl.tabular import PRESETS as TABULAR_PRESETS
from worldmodels_jax.rl.tabular import TabularConfig


@dataclass(frozen=True)
class DPConfig:
    """Value iteration and policy iteration on the exact model of a tabular gymnax env."""

    env_id: str = "FrozenLake-misc"
    """gymnax env id; only envs with an exact tabular model (FrozenLake-misc) are accepted."""
    map_name: str = "4x4"
    """FrozenLake map: 4x4 or 8x8."""
    is_slippery: bool = True
    """FrozenLake slipperiness."""
    gamma: float = 0.99
    """Discount factor."""
    tol: float = 1e-8
    """Value iteration stops when the max-norm change of v is below this."""
    max_iters: int = 10_000
    """Iteration cap of value iteration (sweeps) and policy iteration (improvements)."""
    eval_episodes: int = 10_000
    """Rollout episodes (per seed) to measure the optimal policy's success rate in the real env."""


DP_PRESETS: dict[str, DPConfig] = {
    "frozenlake4x4": DPConfig(),
    "frozenlake4x4-deterministic": DPConfig(is_slippery=False),
    "frozenlake8x8": DPConfig(map_name="8x8"),
}


@dataclass(frozen=True)
class Common:
    out: Path = Path("runs/rl")
    """Run directory to write."""
    seeds: int = 1
    """Number of seeds, trained together under jax.vmap."""
    seed: int = 0
    """Base seed; seed i uses jax.random.split(key(seed), seeds)[i]."""
    env: str | None = None
    """Environment id; overrides the preset's env."""


@dataclass(frozen=True)
class DPCommand(Common):
    """Dynamic programming (value iteration == policy iteration) on FrozenLake's exact (P, R)."""

    preset: Literal["frozenlake4x4", "frozenlake4x4-deterministic", "frozenlake8x8"] = "frozenlake4x4"
    """Named starting config."""
    config: DPConfig = field(default_factory=DPConfig)


@dataclass(frozen=True)
class TabularCommand(Common):
    """Tabular Q-learning or SARSA, compared with the DP-optimal success rate when the env has a model."""

    preset: Literal["frozenlake4x4", "frozenlake4x4-sarsa", "frozenlake8x8", "tiny"] = "frozenlake4x4"
    """Named starting config."""
    config: TabularConfig = field(default_factory=TabularConfig)


@dataclass(frozen=True)
class DQNCommand(Common):
    """DQN / Double DQN with an on-device replay buffer."""

    preset: Literal["cartpole", "tiny", "breakout-cpu", "breakout-gpu"] = "cartpole"
    """Named starting config."""
    config: DQNConfig = field(default_factory=DQNConfig)


@dataclass(frozen=True)
class ReinforceCommand(Common):
    """REINFORCE with a learned value baseline."""

    preset: Literal["cartpole", "tiny"] = "cartpole"
    """Named starting config."""
    config: ReinforceConfig = field(default_factory=ReinforceConfig)


COMMANDS = {
    "dp": (DPCommand, DP_PRESETS),
    "q-learning": (TabularCommand, TABULAR_PRESETS),
    "sarsa": (TabularCommand, TABULAR_PRESETS),
    "dqn": (DQNCommand, DQN_PRESETS),
    "reinforce": (ReinforceCommand, REINFORCE_PRESETS),
}


def _peek(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def parse(argv: list[str]):
    """argv (after `rl`) -> (algorithm name, command dataclass with the preset and overrides applied)."""
    import tyro

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands:", ", ".join(COMMANDS))
        raise SystemExit(0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise ConfigError(f"unknown rl command {name!r}; choose one of {list(COMMANDS)}")
    command_cls, presets = COMMANDS[name]
    preset = _peek(rest, "--preset")
    if preset is None:
        preset = "frozenlake4x4-sarsa" if name == "sarsa" else command_cls.preset
    check(preset in presets, ConfigError, f"unknown {name} preset {preset!r}; choose one of {list(presets)}")
    base = presets[preset]
    if name in ("q-learning", "sarsa"):
        base = dataclasses.replace(base, algorithm=name)
    default = command_cls(preset=preset, config=base)
    command = tyro.cli(command_cls, default=default, args=rest, prog=f"wmj rl {name}")
    if command.env is not None:
        command = dataclasses.replace(command, config=dataclasses.replace(command.config, env_id=command.env))
    if name in ("q-learning", "sarsa") and command.config.algorithm != name:
        raise ConfigError(f"`wmj rl {name}` cannot run --config.algorithm {command.config.algorithm}")
    check(command.seeds >= 1, ConfigError, f"--seeds must be >= 1, got {command.seeds}")
    return name, command


def main(argv: list[str] | None = None) -> int:
    """Entry point of `wmj rl ...`; returns 0 on success, raises `WMJError` on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name, command = parse(argv)
    from worldmodels_jax.rundir import RunDir

    run = RunDir(command.out)
    run.save_config({"algorithm": name, **dataclasses.asdict(command)})
    stage = name
    run.reset_metrics(stage)
    start = time.time()
    runner = {"dp": _run_dp, "q-learning": _run_tabular, "sarsa": _run_tabular, "dqn": _run_dqn,
              "reinforce": _run_reinforce}[name]
    summary = runner(run, stage, command)
    summary["wall_clock_s"] = round(time.time() - start, 2)
    run.log_metrics(stage, {"summary": True, **summary})
    run.mark_done(stage, summary)
    print(f"[wmj rl {name}] {summary}")
    return 0


def _keys(command):
    import jax

    return jax.random.split(jax.random.key(command.seed), command.seeds)


def _log_curves(run, stage, x, metrics: dict[str, np.ndarray], x_name: str):
    records = []
    for seed in range(next(iter(metrics.values())).shape[0]):
        for t in range(len(x)):
            records.append({x_name: int(x[t]), "seed": seed,
                            **{k: float(v[seed, t]) for k, v in metrics.items()}})
    run.log_metrics(stage, records)


def _plot(run, stage, x, y, xlabel, ylabel, title):
    from worldmodels_jax.plots import plot_curves

    return plot_curves(run.path / f"{stage}_curve.png", {ylabel: (np.asarray(x), np.asarray(y))}, title,
                       xlabel, ylabel)


def _save_params(run, stage, step, params):
    ckpt = run.checkpointer(stage)
    ckpt.save(int(step), params)
    ckpt.close()


def _run_dp(run, stage, command: DPCommand) -> dict:
    import jax
    import jax.numpy as jnp

    from worldmodels_jax.rl import dp
    from worldmodels_jax.rl.common import evaluate_episodes, frozen_lake_kwargs, make_discrete_env

    cfg = command.config
    model = dp.tabular_model(cfg.env_id, **frozen_lake_kwargs(cfg.env_id, cfg.map_name, cfg.is_slippery))
    vi = jax.jit(lambda m: dp.value_iteration(m, cfg.gamma, cfg.tol, cfg.max_iters))(model.mdp)
    pi = jax.jit(lambda m: dp.policy_iteration(m, cfg.gamma, cfg.max_iters))(model.mdp)
    exact = float(dp.success_probability(model.mdp, vi.policy, model.start, model.goal, model.horizon))
    env, params = make_discrete_env(cfg.env_id, frozen_lake_kwargs(cfg.env_id, cfg.map_name, cfg.is_slippery))
    policy = vi.policy
    rollout = jax.jit(jax.vmap(lambda k: evaluate_episodes(env, params, lambda _, o: policy[o], k,
                                                           cfg.eval_episodes).mean()))(_keys(command))
    # Convergence curve of value iteration: v(start) after each sweep.
    sweeps = np.arange(1, max(int(vi.iterations), 1) + 1)

    def sweep(v, _):
        v = dp.q_from_v(model.mdp, v, cfg.gamma).max(axis=1)
        return v, v[model.start]

    _, v_start = jax.jit(lambda v0: jax.lax.scan(sweep, v0, None, length=len(sweeps)))(
        jnp.zeros(model.mdp.num_states))
    v_start = np.asarray(v_start)
    run.log_metrics(stage, [{"sweeps": int(k), "v_start": float(v)} for k, v in zip(sweeps, v_start)])
    _plot(run, stage, sweeps, v_start[None], "value-iteration sweeps", "v*(start)",
          f"Value iteration, {cfg.env_id} {cfg.map_name} slippery={cfg.is_slippery}")
    _save_params(run, stage, 0, {"v": vi.v, "q": vi.q, "policy": vi.policy})
    return {
        "v_start_vi": float(vi.v[model.start]),
        "v_start_pi": float(pi.v[model.start]),
        "max_abs_v_difference_vi_pi": float(jnp.max(jnp.abs(vi.v - pi.v))),
        "vi_sweeps": int(vi.iterations),
        "pi_improvements": int(pi.iterations),
        "optimal_success_exact": exact,
        "optimal_success_rollouts_per_seed": np.asarray(rollout).tolist(),
        "horizon": model.horizon,
    }


def _run_tabular(run, stage, command: TabularCommand) -> dict:
    import jax

    from worldmodels_jax.rl import dp, tabular

    cfg = command.config
    out = jax.jit(jax.vmap(tabular.make_train(cfg)))(_keys(command))
    steps = np.asarray(out["steps"][0])
    curves = {"eval_return": np.asarray(out["eval_return"])}
    _log_curves(run, stage, steps, curves, "env_steps")
    _plot(run, stage, steps, curves["eval_return"], "env steps", "greedy success rate (mean return)",
          f"{cfg.algorithm} on {cfg.env_id} {cfg.map_name}")
    _save_params(run, stage, int(steps[-1]), {"q": out["q"]})
    summary = {"final_eval_return_per_seed": curves["eval_return"][:, -1].tolist()}
    if cfg.env_id in dp.TABULAR_ENVS:
        model = dp.tabular_model(cfg.env_id, **cfg.env_kwargs())
        best = dp.value_iteration(model.mdp, cfg.gamma, 1e-8).policy
        exact = jax.vmap(lambda q: dp.success_probability(model.mdp, q.argmax(-1), model.start, model.goal,
                                                          model.horizon))(out["q"])
        summary["greedy_success_exact_per_seed"] = np.asarray(exact).tolist()
        summary["dp_optimal_success_exact"] = float(
            dp.success_probability(model.mdp, best, model.start, model.goal, model.horizon))
    return summary


def _run_dqn(run, stage, command: DQNCommand) -> dict:
    import jax

    from worldmodels_jax.rl import dqn

    cfg = command.config
    out = jax.jit(jax.vmap(dqn.make_train(cfg)))(_keys(command))
    metrics = {k: np.asarray(v) for k, v in out["metrics"].items() if k != "env_steps"}
    steps = np.asarray(out["metrics"]["env_steps"][0])
    _log_curves(run, stage, steps, metrics, "env_steps")
    _plot(run, stage, steps, metrics["eval_return"], "env steps", "greedy eval return",
          f"DQN on {cfg.env_id}")
    _save_params(run, stage, int(steps[-1]), out["params"])
    return {
        "test_return_per_seed": np.asarray(out["test_return"]).tolist(),
        "test_episodes": cfg.test_episodes,
        "delivered": "best evaluation" if cfg.keep_best else "last",
        "final_eval_return_per_seed": metrics["eval_return"][:, -1].tolist(),
    }


def _run_reinforce(run, stage, command: ReinforceCommand) -> dict:
    import jax

    from worldmodels_jax.rl import reinforce

    cfg = command.config
    out = jax.jit(jax.vmap(reinforce.make_train(cfg)))(_keys(command))
    metrics = {k: np.asarray(v) for k, v in out["metrics"].items() if k != "episodes"}
    episodes = np.asarray(out["metrics"]["episodes"][0])
    _log_curves(run, stage, episodes, metrics, "episodes")
    _plot(run, stage, episodes, metrics["eval_return"], "training episodes", "eval return",
          f"REINFORCE on {cfg.env_id}")
    _save_params(run, stage, int(episodes[-1]), out["params"])
    return {"final_eval_return_per_seed": metrics["eval_return"][:, -1].tolist(),
            "eval_episodes": cfg.eval_episodes}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WMJError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
