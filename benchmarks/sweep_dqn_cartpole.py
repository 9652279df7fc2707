"""Env steps to a greedy mean of 475 on CartPole-v1 for variants of the `cartpole-fast` DQN preset (8 vmapped seeds).

The sweep that chose `cartpole-fast`'s network and learning rate (docs/rl.md). Each variant trains 8 seeds for
28 periods of 1,792 env steps (the spacing `bench_dqn.py` evaluates at), 20 greedy episodes per evaluation, and
reports how many seeds reached 475 and the median env steps at which they first did.

    .venv/bin/python benchmarks/sweep_dqn_cartpole.py [VARIANT ...]      # about 15-30 s per variant on 2 cores
"""

import dataclasses
import sys
import time

import jax
import numpy as np

from worldmodels_jax.rl import dqn

THRESHOLD = 475.0
VARIANTS = {
    "preset": {},
    "zoo-128x128-lr2.3e-3": dict(hidden=(128, 128), learning_rate=2.3e-3, lr_end=2.3e-3),
    "256x256": dict(hidden=(256, 256)),
    "lr4e-3": dict(learning_rate=4e-3, lr_end=4e-3),
    "lr1e-3": dict(learning_rate=1e-3, lr_end=1e-3),
    "double": dict(double_dqn=True),
    "eps-fraction-0.16": dict(eps_fraction=0.16),
    "gradient-steps-64": dict(gradient_steps=64),
}


def steps_to_threshold(variant: dict, seeds: int = 8, periods: int = 28) -> tuple[list, float]:
    base = dqn.PRESETS["cartpole-fast"]
    per_period = 7 * base.train_frequency * base.num_envs
    config = dataclasses.replace(base, total_steps=base.learning_starts + periods * per_period, num_evals=periods,
                                 eval_episodes=20, test_episodes=2, **variant)
    start = time.perf_counter()
    out = jax.jit(jax.vmap(dqn.make_train(config)))(jax.random.split(jax.random.key(123), seeds))
    evals = np.asarray(out["metrics"]["eval_return"])
    steps = np.asarray(out["metrics"]["env_steps"])[0]
    first = [int(steps[np.argmax(e >= THRESHOLD)]) if (e >= THRESHOLD).any() else None for e in evals]
    return first, time.perf_counter() - start


if __name__ == "__main__":
    for name in sys.argv[1:] or list(VARIANTS):
        first, seconds = steps_to_threshold(VARIANTS[name])
        reached = [f for f in first if f is not None]
        median = np.median(reached) if reached else None
        print(f"{name:22s} reached {len(reached)}/{len(first)}, median env steps {median}, per seed {first} "
              f"({seconds:.0f} s)", flush=True)
