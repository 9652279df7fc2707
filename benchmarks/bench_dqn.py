"""DQN on CartPole-v1: our compiled DQN against Stable-Baselines3 DQN (RL Zoo hyperparameters).

Two measurements, same CPU, same process:

1. Wall-clock until a 20-episode greedy evaluation first reaches a mean return of 475 (compile included
   for ours). Both sides evaluate every `eval_every` env steps. SB3's figure is given with and without
   its evaluation time; ours includes it (it runs inside the compiled period).
2. Scaling over seeds: our whole `train(key)` for 1 seed versus `jit(vmap(train))` over 8 seeds
   (compile and run timed separately).

    .venv/bin/python benchmarks/bench_dqn.py [--quick] [--json OUT.json]

SB3, torch and gymnasium are the `bench` extra (`pip install torch==2.13.0 stable-baselines3 gymnasium`);
without them the SB3 column is reported as missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

import jax
import numpy as np

from worldmodels_jax.rl import dqn

THRESHOLD = 475.0
EVAL_EPISODES = 20

# RL Zoo's hyperparams/dqn.yml entry for CartPole-v1.
ZOO_CARTPOLE = dict(
    learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1_000, gamma=0.99,
    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]),
)
ZOO_TIMESTEPS = 50_000


def ours_time_to_threshold(seed: int, eval_every: int, max_steps: int, base: dqn.DQNConfig | None = None):
    """Wall-clock (compile included) until the first greedy 20-episode mean >= THRESHOLD."""
    base = base or dqn.PRESETS["cartpole"]
    # Same schedule as the preset (total_steps fixes the epsilon/lr schedules); evaluations every
    # ~eval_every steps.
    num_evals = max(1, round((base.total_steps - base.learning_starts) / eval_every))
    config = dataclasses.replace(base, num_evals=num_evals, eval_episodes=EVAL_EPISODES)
    start = time.perf_counter()
    agent = dqn.make_dqn(config)
    init, period = jax.jit(agent.init), jax.jit(agent.period)
    runner = init(jax.random.key(seed))
    reached, steps, last = False, 0, 0.0
    for _ in range(num_evals):
        runner, metrics = period(runner)
        last, steps = float(metrics["eval_return"]), int(metrics["env_steps"])
        if last >= THRESHOLD:
            reached = True
            break
        if steps >= max_steps:
            break
    return {"seconds": time.perf_counter() - start, "env_steps": steps, "reached": reached, "last_eval": last}


def sb3_time_to_threshold(seed: int, eval_every: int, max_steps: int):
    """SB3 DQN with the RL Zoo CartPole-v1 hyperparameters, evaluated every `eval_every` steps."""
    try:
        import gymnasium as gym
        import torch
        from stable_baselines3 import DQN
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError as err:  # the bench extra is not installed
        return {"missing": f"{err}"}

    torch.set_num_threads(max(1, torch.get_num_threads()))

    class Stop(BaseCallback):
        def __init__(self):
            super().__init__()
            self.eval_seconds, self.reached, self.last = 0.0, False, 0.0
            self.eval_env = gym.make("CartPole-v1")
            self.episode = 0

        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every:
                return True
            t = time.perf_counter()
            returns = []
            for _ in range(EVAL_EPISODES):
                obs, _ = self.eval_env.reset(seed=10_000 * (seed + 1) + self.episode)
                self.episode += 1
                done, ret = False, 0.0
                while not done:
                    action, _ = self.model.predict(obs, deterministic=True)
                    obs, reward, terminated, truncated, _ = self.eval_env.step(action)
                    ret += reward
                    done = terminated or truncated
                returns.append(ret)
            self.eval_seconds += time.perf_counter() - t
            self.last = float(np.mean(returns))
            self.reached = self.last >= THRESHOLD
            return not self.reached

    start = time.perf_counter()
    model = DQN("MlpPolicy", gym.make("CartPole-v1"), seed=seed, verbose=0, device="cpu", **ZOO_CARTPOLE)
    callback = Stop()
    model.learn(total_timesteps=max_steps, callback=callback)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "seconds_without_eval": seconds - callback.eval_seconds,
        "env_steps": int(model.num_timesteps),
        "reached": callback.reached,
        "last_eval": callback.last,
    }


def seed_scaling(num_seeds: int, config: dqn.DQNConfig):
    """Compile and run time of `train` for 1 seed and for `num_seeds` vmapped seeds."""
    train = dqn.make_train(config)
    out = {}
    for n in (1, num_seeds):
        keys = jax.random.split(jax.random.key(0), n)
        start = time.perf_counter()
        compiled = jax.jit(jax.vmap(train)).lower(keys).compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        result = compiled(keys)
        jax.block_until_ready(result)
        run_s = time.perf_counter() - start
        out[n] = {"compile_s": compile_s, "run_s": run_s, "total_s": compile_s + run_s,
                  "test_return": np.asarray(result["test_return"]).round(1).tolist()}
    out["ratio_run"] = out[num_seeds]["run_s"] / out[1]["run_s"]
    out["ratio_total"] = out[num_seeds]["total_s"] / out[1]["total_s"]
    return out


def run(quick: bool) -> dict:
    seeds = [0] if quick else [0, 1, 2]
    eval_every, max_steps = 2_000, 100_000
    result = {"threshold": THRESHOLD, "eval_episodes": EVAL_EPISODES, "eval_every": eval_every,
              "ours": {}, "sb3": {}, "cpu_count": os.cpu_count()}
    for seed in seeds:
        result["ours"][seed] = ours_time_to_threshold(seed, eval_every, max_steps)
        print(f"ours seed {seed}: {result['ours'][seed]}", flush=True)
        result["sb3"][seed] = sb3_time_to_threshold(seed, eval_every, max_steps)
        print(f"sb3 seed {seed}: {result['sb3'][seed]}", flush=True)
    ours = [r["seconds"] for r in result["ours"].values() if r["reached"]]
    sb3 = [r["seconds"] for r in result["sb3"].values() if r.get("reached")]
    sb3_train = [r["seconds_without_eval"] for r in result["sb3"].values() if r.get("reached")]
    if ours and sb3:
        result["median_ratio_ours_over_sb3"] = float(np.median(ours) / np.median(sb3))
        result["median_ratio_ours_over_sb3_without_eval"] = float(np.median(ours) / np.median(sb3_train))
    scaling_config = dataclasses.replace(
        dqn.PRESETS["cartpole"], total_steps=20_000 if quick else 60_000, num_evals=2, eval_episodes=20,
        test_episodes=20,
    )
    result["seed_scaling"] = seed_scaling(8, scaling_config)
    return result


def _fmt(result: dict) -> str:
    lines = [f"time to a {EVAL_EPISODES}-episode greedy mean >= {THRESHOLD:g} (eval every "
             f"{result['eval_every']} steps)"]
    for seed in result["ours"]:
        o, s = result["ours"][seed], result["sb3"][seed]
        sb3 = ("missing" if "missing" in s else
               f"{s['seconds']:.1f} s ({s['seconds_without_eval']:.1f} s without eval), {s['env_steps']} steps,"
               f" reached={s['reached']}")
        lines.append(f"  seed {seed}: ours {o['seconds']:.1f} s, {o['env_steps']} steps, reached={o['reached']}"
                     f" | SB3 {sb3}")
    if "median_ratio_ours_over_sb3" in result:
        lines.append(f"  median ratio ours/SB3: {result['median_ratio_ours_over_sb3']:.3f} "
                     f"(vs SB3 without eval: {result['median_ratio_ours_over_sb3_without_eval']:.3f}; goal <= 0.2)")
    sc = result["seed_scaling"]
    lines.append(f"seed scaling: 1 seed {sc[1]['compile_s']:.1f} s compile + {sc[1]['run_s']:.1f} s run; "
                 f"8 seeds {sc[8]['compile_s']:.1f} s + {sc[8]['run_s']:.1f} s; ratio run {sc['ratio_run']:.2f}, "
                 f"total {sc['ratio_total']:.2f} (goal <= 2)")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    res = run(args.quick)
    print(_fmt(res))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(res, handle, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
