"""The paper's CarRacing table on our JAX CarRacing-v0, and a trained V + M + C on gymnasium's CarRacing-v3.

    table = carracing_table(pipeline)          # after pipeline.run_all(); writes carracing_table.{md,json}
    result = evaluate_on_gymnasium(pipeline, episodes=5)   # needs `pip install -e '.[gymnasium]'`

Every row of the table is measured on the same `evaluate.episodes` (100) random tracks: the evaluate
stage's key, split per episode exactly as `rollouts.evaluate_params` splits it. Those keys are derived from
the run's seed by a different path than the collection and controller-training keys, so the tracks were
never seen in training (tracks are drawn from 24 uniforms per key).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from worldmodels_jax.errors import ConfigError
from worldmodels_jax.rundir import write_json_atomic

ROWS = (("random", "Random"), ("scripted", "Scripted driver"), ("z", "V only, z"),
        ("z_hidden", "V only, z + hidden layer"), ("z_h", "Full world model, z + h"))
PAPER = {"z": "632 ± 251", "z_hidden": "788 ± 141", "z_h": "906 ± 21"}
"""The paper's CarRacing-v0 scores (gymnasium's Box2D env, full-size models), for reference."""


def scripted_driver_returns(env, env_params, key: jax.Array, episodes: int, max_steps: int) -> jax.Array:
    """Returns of the scripted pure-pursuit driver on the tracks `evaluate_params(..., key, episodes)` uses.

    One `lax.scan` over `max_steps` steps, vmapped over episodes; rewards after an episode ends are masked.
    """
    from worldmodels_jax.envs.carracing import scripted_driver

    if episodes < 1 or max_steps < 1:
        raise ConfigError(f"episodes and max_steps must be >= 1, got {episodes}, {max_steps}")

    def one(k):
        obs, state = env.reset(jax.random.fold_in(k, 0), env_params)
        del obs
        run_key = jax.random.fold_in(k, 1)

        def step(carry, t):
            state, alive, ret = carry
            action = scripted_driver(state, env_params)
            _, state, reward, terminated, truncated, _ = env.step(
                jax.random.fold_in(run_key, t), state, action, env_params)
            ret = ret + jnp.where(alive, reward, 0.0)
            alive = alive & ~(terminated | truncated)
            return (state, alive, ret), None

        (_, _, ret), _ = jax.lax.scan(step, (state, jnp.array(True), jnp.float32(0.0)), jnp.arange(max_steps))
        return ret

    return jax.jit(jax.vmap(one))(jax.random.split(key, episodes))


def _summary(returns) -> dict:
    returns = np.asarray(returns, np.float64)
    return {"mean": float(returns.mean()), "std": float(returns.std()), "episodes": int(returns.size)}


def carracing_table(pipeline) -> dict:
    """The table | Method | Mean ± std | for a finished CarRacing run; writes carracing_table.{md,json}.

    Random and the controllers come from the evaluate stage; the scripted driver is run here on the same
    tracks (and recorded as the stage 'evaluate-scripted', so a resumed run does not redo it).
    """
    from worldmodels_jax.envs.carracing import CarRacing

    if not isinstance(pipeline.env, CarRacing) or pipeline.env.discrete:
        raise ConfigError(f"the CarRacing table needs env CarRacing-v0, the run uses {pipeline.config.env_id}")
    evaluated = pipeline.run.stage_done("evaluate")
    if evaluated is None:
        raise ConfigError(f"{pipeline.run.path} has no finished evaluate stage; run the pipeline first")
    cfg = pipeline.config.evaluate
    max_steps = int(cfg.max_episode_steps or pipeline.env_params.max_steps_in_episode)

    def scripted():
        returns = scripted_driver_returns(pipeline.env, pipeline.env_params, pipeline.key("evaluate"),
                                          cfg.episodes, max_steps)
        return {"results": {"scripted": _summary(jax.device_get(returns))}}

    scripted_record = pipeline._timed("evaluate-scripted", scripted)
    results = {**evaluated["results"], **scripted_record["results"]}
    stages = ("collect", "train-vae", "encode", "train-mdn",
              *(f"train-controller-{m}" for m in pipeline.config.controller.modes), "evaluate", "evaluate-scripted")
    timings = {s: (pipeline.run.stage_done(s) or {}).get("seconds") for s in stages}
    rows = [{"key": k, "method": name, **results[k]} for k, name in ROWS if k in results]
    table = {"env_id": pipeline.config.env_id, "preset": pipeline.config.preset, "episodes": cfg.episodes,
             "max_episode_steps": max_steps, "rows": rows, "paper": PAPER, "timings_s": timings,
             "total_s": float(sum(v for v in timings.values() if v is not None))}
    lines = [f"CarRacing table, preset `{table['preset']}` on {table['env_id']}: mean ± std over "
             f"{cfg.episodes} random tracks never seen in training, {max_steps}-step episodes.", "",
             "| Method | Mean ± std | Paper (CarRacing-v0) |", "|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['mean']:.1f} ± {row['std']:.1f} | {PAPER.get(row['key'], '')} |")
    lines += ["", "Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if v is not None)
              + f"; total {table['total_s']:.0f}"]
    table["markdown"] = "\n".join(lines)
    write_json_atomic(pipeline.run.path / "carracing_table.json", table)
    (pipeline.run.path / "carracing_table.md").write_text(table["markdown"] + "\n")
    return table


def make_host_policy(pipeline, mode: str, seed: int = 0):
    """A host-side `act(obs64, state) -> (action, state)` for gymnasium, with V (and M) in the loop.

    Returns (act, initial_state). The state holds M's carry, a PRNG key and a first-step flag.
    """
    if mode not in pipeline.config.controller.modes:
        raise ConfigError(f"mode {mode!r} was not trained in {pipeline.run.path}; trained: "
                          f"{', '.join(pipeline.config.controller.modes)}")
    agent = pipeline.agent(mode)
    wm = pipeline.world_model_params(agent.uses_memory)
    c_params = pipeline.controller_params(mode)

    @jax.jit
    def step(carry, obs, first, key):
        key, sub = jax.random.split(key)
        action, carry = agent.act(wm, c_params, carry, obs, first, sub)
        return action, carry, key

    def act(obs, state):
        carry, key, first = state
        action, carry, key = step(carry, jnp.asarray(obs), jnp.asarray(first), key)
        return np.asarray(action), (carry, key, False)

    return act, (agent.init_carry(wm), jax.random.PRNGKey(seed), True)


def evaluate_on_gymnasium(pipeline, episodes: int, modes: tuple[str, ...] | None = None, seed: int = 0,
                          max_steps: int | None = None, env_id: str = "CarRacing-v3") -> dict:
    """Runs each trained controller on gymnasium's CarRacing-v3 for `episodes` tracks (seeds seed..seed+N-1).

    Frames are cropped to rows 0:84 and resized to 64x64 (`gymnasium_bridge.preprocess_frame`). Writes
    gymnasium_<env_id>.json into the run directory and returns its contents.
    """
    from worldmodels_jax.envs import gymnasium_bridge as gb

    if env_id != gb.ENV_ID:
        raise ConfigError(f"the gymnasium bridge runs {gb.ENV_ID}, got {env_id!r}")
    if pipeline.config.env_id != "CarRacing-v0":
        raise ConfigError(f"{pipeline.run.path} was trained on {pipeline.config.env_id}; the gymnasium bridge "
                          "runs continuous CarRacing controllers trained on CarRacing-v0")
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ConfigError(f"episodes must be an int >= 1, got {episodes!r}")
    gb._gymnasium()  # clear error before any model is loaded
    modes = tuple(modes or pipeline.config.controller.modes)
    results = {}
    for mode in modes:
        act, state = make_host_policy(pipeline, mode, seed)
        start = time.perf_counter()
        returns = gb.run_policy(act, state, episodes, seed=seed, max_steps=max_steps)
        results[mode] = {**_summary(returns), "returns": [float(r) for r in returns],
                         "seconds": time.perf_counter() - start}
    payload = {"env_id": env_id, "episodes": episodes, "seed": seed, "max_steps": max_steps, "results": results}
    write_json_atomic(Path(pipeline.run.path) / f"gymnasium_{env_id}.json", payload)
    return payload


PROBE_TARGETS = ("forward_speed", "lateral_speed", "yaw_rate", "steer", "gas")
"""Car quantities a frame does not show: speed along and across the heading, yaw rate, the steering joint's
angle (the sprite's front wheels are drawn straight) and the throttle actually applied."""
PROBE_FEATURES = ("z", "h", "z + h", "z, previous z")


def car_motion(state) -> dict:
    """`PROBE_TARGETS` of one CarRacing `EnvState` (the car faces (-sin, cos)(angle))."""
    forward = jnp.stack([-jnp.sin(state.angle), jnp.cos(state.angle)])
    side = jnp.stack([jnp.cos(state.angle), jnp.sin(state.angle)])
    return {"forward_speed": state.vel @ forward, "lateral_speed": state.vel @ side, "yaw_rate": state.ang_vel,
            "steer": state.steer, "gas": state.gas}


def ridge_r2(train_x, train_y, test_x, test_y, ridge: float = 1.0) -> np.ndarray:
    """Held-out R² of a ridge regression per column of y (features standardised on the training rows).

    R² = 1 − SSE / SST on the test rows, SST about the test mean: 0 is no better than a constant, 1 is exact.
    """
    train_x, train_y = np.asarray(train_x, np.float64), np.asarray(train_y, np.float64)
    test_x, test_y = np.asarray(test_x, np.float64), np.asarray(test_y, np.float64)
    if train_x.ndim != 2 or train_y.ndim != 2 or len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ConfigError(f"ridge_r2 needs [n, features] and [n, targets] rows; got {train_x.shape}, "
                          f"{train_y.shape}, {test_x.shape}, {test_y.shape}")
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    x = np.concatenate([(train_x - mean) / std, np.ones((len(train_x), 1))], 1)
    penalty = ridge * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    weights = np.linalg.solve(x.T @ x + penalty, x.T @ train_y)
    prediction = np.concatenate([(test_x - mean) / std, np.ones((len(test_x), 1))], 1) @ weights
    sse = ((test_y - prediction) ** 2).sum(0)
    sst = ((test_y - test_y.mean(0)) ** 2).sum(0)
    return 1.0 - sse / np.maximum(sst, 1e-12)


def probe_r2(features: dict, targets, use, ridge: float = 1.0, target_names: tuple[str, ...] = PROBE_TARGETS):
    """`{feature set: {target: held-out R²}}` over [episodes, steps, ...] arrays: fitted on the steps `use` marks in
    even episodes, scored on those of odd episodes (whole episodes apart, so neighbouring steps never straddle the
    split). Returns (r2, fit mask, score mask)."""
    targets, use = np.asarray(targets), np.asarray(use, bool)
    if use.ndim != 2 or targets.shape[:2] != use.shape or targets.shape[-1] != len(target_names):
        raise ConfigError(f"probe_r2 needs targets [episodes, steps, {len(target_names)}] and use [episodes, steps]; "
                          f"got {targets.shape} and {use.shape}")
    parity = (np.arange(use.shape[0]) % 2)[:, None]
    fit, score = use & (parity == 0), use & (parity == 1)
    if fit.sum() < 10 or score.sum() < 10:
        raise ConfigError(f"too few probe steps ({int(fit.sum())} to fit, {int(score.sum())} to score): the "
                          "episodes ended at once; use more episodes or a controller that drives")
    r2 = {name: dict(zip(target_names, map(float, ridge_r2(x[fit], targets[fit], x[score], targets[score], ridge))))
          for name, x in features.items()}
    return r2, fit, score


def feature_probe(pipeline, mode: str = "z_h", episodes: int = 32, max_steps: int = 500, ridge: float = 1.0) -> dict:
    """How well each controller input predicts the car's motion, on the states controller `mode` drives into.

    Controller `mode` drives `episodes` random tracks (keys from the run's 'feature-probe' key, not the evaluate
    stage's) for up to `max_steps` steps. Every step records V's μ (z), M's features h (M stepped on μ and the
    action taken, as the z + h controller sees them), the previous step's z, and `PROBE_TARGETS`. A ridge
    regression per feature set (`PROBE_FEATURES`) is fitted on the even episodes and scored (R²) on the odd ones;
    each episode's first step, which has no previous z, is left out. C is linear in its inputs, so a linear
    probe's R² is what C can read from them. Writes feature_probe_<mode>.json into the run directory.
    """
    from worldmodels_jax.envs.carracing import CarRacing
    from worldmodels_jax.models.vae import ConvVAE, for_inference

    if not isinstance(pipeline.env, CarRacing):
        raise ConfigError(f"the feature probe reads CarRacing's car state; the run uses {pipeline.config.env_id}")
    if mode not in pipeline.config.controller.modes:
        raise ConfigError(f"mode {mode!r} was not trained in {pipeline.run.path}; trained: "
                          f"{', '.join(pipeline.config.controller.modes)}")
    if not isinstance(episodes, (int, np.integer)) or episodes < 2 or max_steps < 2:
        raise ConfigError(f"the probe needs episodes >= 2 (half to fit, half to score) and max_steps >= 2; "
                          f"got {episodes!r}, {max_steps!r}")
    env, env_params = pipeline.env, pipeline.env_params
    agent = pipeline.agent(mode)
    drive_wm = pipeline.world_model_params(agent.uses_memory)
    c_params = pipeline.controller_params(mode)
    vae_params, memory_params = pipeline.vae_params(), pipeline.memory_params()
    encoder, memory, encode_action = for_inference(pipeline.vae), pipeline.memory, pipeline.action_encoder

    def episode(key):
        reset_key, run_key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)
        carry = (obs, state, agent.init_carry(drive_wm), memory.apply({"params": memory_params}, method="initial_carry"),
                 jnp.zeros(pipeline.config.vae.z_size), jnp.array(True), jnp.array(True))

        def step(carry, t):
            obs, state, drive_carry, probe_carry, previous_z, alive, first = carry
            act_key, env_key = jax.random.split(jax.random.fold_in(run_key, t))
            z, _ = encoder.apply({"params": vae_params}, obs, method=ConvVAE.encode)
            h = jnp.where(first, 0.0, probe_carry.h)
            action, drive_carry = agent.act(drive_wm, c_params, drive_carry, obs, first, act_key)
            probe_carry, _, _ = memory.apply({"params": memory_params}, probe_carry, z, encode_action(action), first,
                                             method="step")
            record = {"z": z, "h": h, "previous_z": previous_z, "use": alive & ~first, **car_motion(state)}
            obs, state, _, terminated, truncated, _ = env.step(env_key, state, action, env_params)
            alive = alive & ~(terminated | truncated)
            return (obs, state, drive_carry, probe_carry, z, alive, jnp.array(False)), record

        _, records = jax.lax.scan(step, carry, jnp.arange(max_steps))
        return records

    keys = jax.random.split(pipeline.key("feature-probe"), episodes)
    start = time.perf_counter()
    records = jax.device_get(jax.jit(jax.vmap(episode))(keys))
    seconds = time.perf_counter() - start
    parts = {"z": (records["z"],), "h": (records["h"],), "z + h": (records["z"], records["h"]),
             "z, previous z": (records["z"], records["previous_z"])}
    features = {name: np.concatenate(parts[name], -1) for name in PROBE_FEATURES}
    targets = np.stack([records[name] for name in PROBE_TARGETS], -1)
    use = np.asarray(records["use"], bool)
    r2, fit, score = probe_r2(features, targets, use, ridge)
    payload = {"mode": mode, "episodes": episodes, "max_steps": max_steps, "ridge": ridge,
               "steps_fit": int(fit.sum()), "steps_scored": int(score.sum()), "r2": r2,
               "target_std": dict(zip(PROBE_TARGETS, map(float, targets[use].std(0)))),
               "target_mean": dict(zip(PROBE_TARGETS, map(float, targets[use].mean(0)))), "seconds": seconds}
    write_json_atomic(Path(pipeline.run.path) / f"feature_probe_{mode}.json", payload)
    return payload


def probe_markdown(probe: dict) -> str:
    lines = [f"Held-out R² of a linear probe, on the states controller {probe['mode']} drives into "
             f"({probe['steps_fit']} steps fitted, {probe['steps_scored']} scored, {probe['episodes']} tracks):", "",
             "| Features | " + " | ".join(PROBE_TARGETS) + " |", "|---|" + "---|" * len(PROBE_TARGETS)]
    for name, row in probe["r2"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[t]:.2f}" for t in PROBE_TARGETS) + " |")
    lines.append("| (target std) | " + " | ".join(f"{probe['target_std'][t]:.3g}" for t in PROBE_TARGETS) + " |")
    return "\n".join(lines)

def load_table(out: str | Path) -> dict:
    """A finished run's table: `out` is its run directory or a carracing_table JSON file."""
    path = Path(out)
    path = path if path.suffix == ".json" else path / "carracing_table.json"
    if not path.exists():
        raise ConfigError(f"no CarRacing table at {path}: finish the run with experiments/carracing.py first")
    return json.loads(path.read_text())


PAPER_ORDER = ("z_h", "z_hidden", "z")
"""The paper's ordering, best first: z + h > z + hidden > z (906, 788, 632)."""


def _sign_test_p(wins: int, n: int) -> float:
    """One-sided exact sign test: P(at least `wins` of `n` fair coin flips come up heads)."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def summarize_seeds(tables: dict[str, dict], order: tuple[str, ...] = PAPER_ORDER) -> dict:
    """Over runs of different seeds (`{label: table}`), the mean ± standard error of each controller and, for each
    pair in the paper's `order`, the paired per-seed differences: mean ± standard error, how many standard errors
    from zero, the seeds that favour the first, and a one-sided sign test. The order counts as reproduced when
    each consecutive difference is at least two standard errors above zero."""
    if len(tables) < 2:
        raise ConfigError(f"a summary over seeds needs at least 2 tables, got {len(tables)}")
    scores = {}
    for label, table in tables.items():
        means = {row["key"]: row["mean"] for row in table["rows"]}
        missing = [mode for mode in order if mode not in means]
        if missing:
            raise ConfigError(f"table {label} has no row for {', '.join(missing)}; summaries need runs of every "
                              f"mode in {', '.join(order)}")
        scores[label] = means
    n = len(scores)

    def mean_se(values) -> tuple[float, float]:
        values = np.asarray(values, np.float64)
        return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))

    modes = {}
    for mode in order:
        mean, se = mean_se([s[mode] for s in scores.values()])
        modes[mode] = {"mean": mean, "se": se}
    pairs = {}
    for i, better in enumerate(order):
        for worse in order[i + 1:]:
            diffs = [s[better] - s[worse] for s in scores.values()]
            mean, se = mean_se(diffs)
            wins = sum(d > 0 for d in diffs)
            pairs[f"{better} - {worse}"] = {"mean": mean, "se": se, "standard_errors": mean / se if se else math.inf,
                                            "wins": wins, "sign_test_p": _sign_test_p(wins, n)}
    consecutive = [pairs[f"{a} - {b}"] for a, b in zip(order[:-1], order[1:])]
    per_seed = {label: " > ".join(sorted(order, key=lambda m: -s[m])) for label, s in scores.items()}
    return {"seeds": n, "labels": list(scores), "scores": scores, "modes": modes, "pairs": pairs,
            "order": list(order), "means_in_order": all(modes[a]["mean"] > modes[b]["mean"]
                                                         for a, b in zip(order[:-1], order[1:])),
            "order_reproduced": all(p["standard_errors"] >= 2.0 for p in consecutive),
            "seeds_in_order": sum(o == " > ".join(order) for o in per_seed.values()), "per_seed_order": per_seed}


def summary_markdown(summary: dict) -> str:
    names = dict(ROWS)
    order = summary["order"]
    lines = [f"Over {summary['seeds']} seeds ({', '.join(summary['labels'])}):", "",
             "| Controller | mean ± s.e. over seeds |", "|---|---|"]
    lines += [f"| {names[m]} | {summary['modes'][m]['mean']:.1f} ± {summary['modes'][m]['se']:.1f} |" for m in order]
    lines += ["", "| Paired per seed | mean ± s.e. | standard errors | seeds favouring the first | sign test p |",
              "|---|---|---|---|---|"]
    for pair, p in summary["pairs"].items():
        lines.append(f"| {pair} | {p['mean']:+.1f} ± {p['se']:.1f} | {p['standard_errors']:.1f} | "
                     f"{p['wins']} of {summary['seeds']} | {p['sign_test_p']:.3f} |")
    verdict = "reproduced" if summary["order_reproduced"] else "not reproduced"
    lines += ["", f"The paper's order {' > '.join(order)} is **{verdict}** at two standard errors per consecutive "
                  f"pair; the means are {'' if summary['means_in_order'] else 'not '}in that order, and "
                  f"{summary['seeds_in_order']} of {summary['seeds']} seeds show it."]
    return "\n".join(lines)


__all__ = ["scripted_driver_returns", "carracing_table", "make_host_policy", "evaluate_on_gymnasium", "ROWS",
           "load_table", "summarize_seeds", "summary_markdown", "feature_probe", "probe_markdown", "probe_r2", "ridge_r2",
           "car_motion", "PROBE_TARGETS", "PROBE_FEATURES"]
