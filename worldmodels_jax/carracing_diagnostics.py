"""Why a CarRacing controller drives as it does: what its inputs tell it, and how its episodes end.

    probe = feature_probe(pipeline, "z_h")     # on a finished run: R² of linear probes, episode outcomes
    print(probe_markdown(probe))

`feature_probe` drives a trained controller (or the scripted driver) over fresh tracks and asks how well a linear
read-out of z, of M's h, of both and of two consecutive z's recovers the car's motion (`MOTION_TARGETS`: what a
frame does not show) and its pose on the road (`ROAD_TARGETS`: what a frame does show). C is linear in its
inputs, so a linear probe's held-out R² is what C can read from them. It also reports how the episodes ended:
laps finished, playfield left, share of tiles, speed and time on the road.

`train_state_oracle` trains a controller at the run's ES budget on those true quantities instead of z and h: an
upper bound on what a better V and M could give C at that budget.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from worldmodels_jax.errors import ConfigError, NonFiniteError
from worldmodels_jax.rundir import write_json_atomic

MOTION_TARGETS = ("forward_speed", "lateral_speed", "yaw_rate", "steer", "gas")
"""Car quantities a frame does not show: speed along and across the heading, yaw rate, the steering joint's
angle (the sprite's front wheels are drawn straight) and the throttle actually applied."""
ROAD_TARGETS = ("centre_offset", "heading_error", "curve_ahead")
"""What a frame does show: where the car is across the road, its heading against the road's, and how far the
road turns over the next `CURVE_AHEAD_TILES` tiles (inside the frame's ~37 units of view ahead)."""
PROBE_TARGETS = MOTION_TARGETS + ROAD_TARGETS
PROBE_FEATURES = ("z", "h", "z + h", "z, previous z")
CURVE_AHEAD_TILES = 10


def car_motion(state) -> dict:
    """`MOTION_TARGETS` of one CarRacing `EnvState` (the car faces (-sin, cos)(angle))."""
    forward = jnp.stack([-jnp.sin(state.angle), jnp.cos(state.angle)])
    side = jnp.stack([jnp.cos(state.angle), jnp.sin(state.angle)])
    return {"forward_speed": state.vel @ forward, "lateral_speed": state.vel @ side, "yaw_rate": state.ang_vel,
            "steer": state.steer, "gas": state.gas}


def road_pose(state) -> dict:
    """`ROAD_TARGETS` of one CarRacing `EnvState`, from the centre-line point nearest the car: the signed distance
    across the road (+ = left of the centre line), the heading error (+ = turned left of the road) and the road's
    turn over the next `CURVE_AHEAD_TILES` tiles (+ = left), angles in radians."""
    from worldmodels_jax.envs.carracing import nearest_tile

    n = state.n_tiles
    k = nearest_tile(state)

    def direction(i):
        d = state.track[(i + 1) % n, 2:4] - state.track[i % n, 2:4]
        return d / jnp.maximum(jnp.linalg.norm(d), 1e-6)

    def cross(a, b):
        return a[0] * b[1] - a[1] * b[0]

    road = direction(k)
    forward = jnp.stack([-jnp.sin(state.angle), jnp.cos(state.angle)])
    ahead = direction(k + CURVE_AHEAD_TILES)
    return {"centre_offset": cross(road, state.pos - state.track[k, 2:4]),
            "heading_error": jnp.arctan2(cross(road, forward), road @ forward),
            "curve_ahead": jnp.arctan2(cross(road, ahead), road @ ahead)}


RIDGE_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
"""Ridge strengths the probe chooses from, per training row (features are standardised)."""


def ridge_r2(train_x, train_y, test_x, test_y, ridge=1e-3) -> np.ndarray:
    """Held-out R² of a ridge regression per column of y (features standardised on the training rows).

    `ridge` is the penalty per training row (λ = ridge · rows), one value or one per column of y.
    R² = 1 − SSE / SST on the test rows, SST about the test mean: 0 is no better than a constant, 1 is exact.
    """
    train_x, train_y = np.asarray(train_x, np.float64), np.asarray(train_y, np.float64)
    test_x, test_y = np.asarray(test_x, np.float64), np.asarray(test_y, np.float64)
    if train_x.ndim != 2 or train_y.ndim != 2 or len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ConfigError(f"ridge_r2 needs [n, features] and [n, targets] rows; got {train_x.shape}, "
                          f"{train_y.shape}, {test_x.shape}, {test_y.shape}")
    ridge = np.broadcast_to(np.asarray(ridge, np.float64), (train_y.shape[1],))
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    x = np.concatenate([(train_x - mean) / std, np.ones((len(train_x), 1))], 1)
    x_test = np.concatenate([(test_x - mean) / std, np.ones((len(test_x), 1))], 1)
    gram, moments = x.T @ x, x.T @ train_y
    not_intercept = np.r_[np.ones(x.shape[1] - 1), 0.0]  # the intercept is not shrunk
    prediction = np.empty_like(test_y)
    for value in np.unique(ridge):
        columns = ridge == value
        weights = np.linalg.solve(gram + value * len(x) * np.diag(not_intercept), moments[:, columns])
        prediction[:, columns] = x_test @ weights
    sse = ((test_y - prediction) ** 2).sum(0)
    sst = ((test_y - test_y.mean(0)) ** 2).sum(0)
    return 1.0 - sse / np.maximum(sst, 1e-12)


def choose_ridge(x, y, groups, grid: tuple[float, ...] = RIDGE_GRID, folds: int = 4) -> np.ndarray:
    """Per column of y, the ridge in `grid` with the best mean R² over `folds` folds of whole groups (episodes)."""
    x, y, groups = np.asarray(x), np.asarray(y), np.asarray(groups)
    labels = np.unique(groups)
    if len(labels) < 2:
        raise ConfigError(f"choosing a ridge needs at least 2 groups (episodes) to fit on, got {len(labels)}")
    fold_of = {label: i % min(folds, len(labels)) for i, label in enumerate(labels)}
    fold = np.array([fold_of[g] for g in groups])
    scores = np.zeros((len(grid), y.shape[1]))
    for k in np.unique(fold):
        held = fold == k
        for i, ridge in enumerate(grid):
            scores[i] += ridge_r2(x[~held], y[~held], x[held], y[held], ridge)
    return np.asarray(grid)[scores.argmax(0)]


def probe_r2(features: dict, targets, use, target_names: tuple[str, ...] = PROBE_TARGETS):
    """`{feature set: {target: held-out R²}}` over [episodes, steps, ...] arrays: fitted on the steps `use` marks in
    even episodes, scored on those of odd episodes (whole episodes apart, so neighbouring steps never straddle the
    split). Each ridge is chosen by cross-validation over whole even episodes (`choose_ridge`).
    Returns (r2, ridges, fit mask, score mask)."""
    targets, use = np.asarray(targets), np.asarray(use, bool)
    if use.ndim != 2 or targets.shape[:2] != use.shape or targets.shape[-1] != len(target_names):
        raise ConfigError(f"probe_r2 needs targets [episodes, steps, {len(target_names)}] and use [episodes, steps]; "
                          f"got {targets.shape} and {use.shape}")
    episode = np.broadcast_to(np.arange(use.shape[0])[:, None], use.shape)
    fit, score = use & (episode % 2 == 0), use & (episode % 2 == 1)
    if fit.sum() < 10 or score.sum() < 10 or len(np.unique(episode[fit])) < 2:
        raise ConfigError(f"too few probe steps ({int(fit.sum())} to fit, {int(score.sum())} to score, in "
                          f"{len(np.unique(episode[use]))} episodes): the episodes ended at once; use more episodes "
                          "or a controller that drives")
    r2, ridges = {}, {}
    for name, x in features.items():
        ridge = choose_ridge(x[fit], targets[fit], episode[fit])
        r2[name] = dict(zip(target_names, map(float, ridge_r2(x[fit], targets[fit], x[score], targets[score], ridge))))
        ridges[name] = dict(zip(target_names, map(float, ridge)))
    return r2, ridges, fit, score


def episode_outcomes(records: dict) -> dict:
    """How the probe's episodes ended, from per-step [episodes, steps] records: each episode's return, whether it
    finished the lap, left the playfield or ran out of steps, the share of tiles it visited, its mean forward speed,
    the share of its steps with the car's centre on the road and, where recorded (`sent_gas`, `sent_brake`), the
    mean gas and brake the policy sent."""
    alive = np.asarray(records["alive"], bool)
    lap = (np.asarray(records["lap"], bool) & alive).any(1)
    off = (np.asarray(records["off"], bool) & alive).any(1)
    last = np.maximum(alive.sum(1) - 1, 0)
    tiles = np.asarray(records["tiles"])[np.arange(len(alive)), last]
    returns = (np.asarray(records["reward"], np.float64) * alive).sum(1)
    steps = np.maximum(alive.sum(1), 1)
    speed = (np.asarray(records["forward_speed"]) * alive).sum(1) / steps
    on_road = (np.asarray(records["on_road"], bool) & alive).sum(1) / steps
    sent = {f"{name}_mean": float(((np.asarray(records[name], np.float64) * alive).sum(1) / steps).mean())
            for name in ("sent_gas", "sent_brake") if name in records}
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "lap_finished": float(lap.mean()), "off_playfield": float(off.mean()),
            "out_of_steps": float((~lap & ~off).mean()), "tiles_visited": float(tiles.mean()),
            "steps_mean": float(alive.sum(1).mean()), "forward_speed_mean": float(speed.mean()),
            "on_road": float(on_road.mean()), **sent, "returns": [float(r) for r in returns]}


def drive_from(pipeline, mode: str, start_states, max_steps: int = 1000, seed: int = 0) -> list[dict]:
    """Controller `mode` of a finished run drives our env from each of `start_states` (an `EnvState` stacked along
    a leading axis, e.g. `gymnasium_bridge.track_start_states`) for up to `max_steps` steps (the env truncates at
    its own 1000). One record per episode, with the keys of `gymnasium_bridge.run_policy_episodes`: return, steps,
    ending, tiles, forward_speed, on_road (a wheel on the road, as gymnasium counts it) and the steer, gas and brake
    sent."""
    from worldmodels_jax.envs.carracing import WHEEL_OFFSETS, CarRacing, _rot, sample_distance

    if not isinstance(pipeline.env, CarRacing):
        raise ConfigError(f"drive_from runs CarRacing start states; the run uses {pipeline.config.env_id}")
    pipeline.check_trained(mode)
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ConfigError(f"max_steps must be an int >= 1, got {max_steps!r}")
    env, env_params = pipeline.env, pipeline.env_params
    agent = pipeline.agent(mode)
    wm = pipeline.world_model_params(agent.uses_memory)
    c_params = pipeline.controller_params(mode)

    def episode(state, key, wm, c_params):  # parameters are arguments, not constants in the program
        def step(carry, t):
            state, drive_carry, alive, first = carry
            act_key, env_key = jax.random.split(jax.random.fold_in(key, t))
            obs = env.render(state, env_params)
            action, drive_carry = agent.act(wm, c_params, drive_carry, obs, first, act_key)
            wheels = state.pos + jnp.asarray(WHEEL_OFFSETS) @ _rot(state.angle).T
            on_road = sample_distance(state.texture, wheels, env_params.playfield) < env_params.track_width
            _, state, reward, terminated, info = env.step_env(env_key, state, action, env_params)
            record = {"alive": alive, "reward": reward, "lap": info["lap_finished"], "off": info["off_playfield"],
                      "tiles": info["tiles_visited"] / state.n_tiles, "forward_speed": car_motion(state)["forward_speed"],
                      "on_road": jnp.any(on_road), "sent_steer": action[0], "sent_gas": action[1],
                      "sent_brake": action[2]}
            alive = alive & ~terminated & (state.time < env_params.max_steps_in_episode)
            return (state, drive_carry, alive, jnp.array(False)), record

        init = (state, agent.init_carry(wm), jnp.array(True), jnp.array(True))
        return jax.lax.scan(step, init, jnp.arange(max_steps))[1]

    count = jax.tree.leaves(start_states)[0].shape[0]
    keys = jax.random.split(jax.random.PRNGKey(seed), count)
    records = jax.device_get(jax.jit(jax.vmap(episode, in_axes=(0, 0, None, None)))(start_states, keys, wm, c_params))
    alive = np.asarray(records["alive"], bool)
    steps = np.maximum(alive.sum(1), 1)
    lap = (np.asarray(records["lap"], bool) & alive).any(1)
    off = (np.asarray(records["off"], bool) & alive).any(1)
    last = np.maximum(alive.sum(1) - 1, 0)

    def per_episode(name):
        return (np.asarray(records[name], np.float64) * alive).sum(1) / steps

    means = {name: per_episode(name) for name in ("forward_speed", "on_road", "sent_steer", "sent_gas", "sent_brake")}
    tiles = np.asarray(records["tiles"])[np.arange(count), last]
    returns = (np.asarray(records["reward"], np.float64) * alive).sum(1)
    return [{"return": float(returns[e]), "steps": int(alive[e].sum()), "tiles": float(tiles[e]),
             "ending": "lap" if lap[e] else "off_playfield" if off[e] else
             ("time_limit" if alive[e].sum() >= env_params.max_steps_in_episode else "max_steps"),
             "forward_speed": float(means["forward_speed"][e]), "on_road": float(means["on_road"][e]),
             "steer": float(means["sent_steer"][e]), "gas": float(means["sent_gas"][e]),
             "brake": float(means["sent_brake"][e])} for e in range(count)]

TIMELINE_WINDOW = 250
"""Steps per window of `outcomes_by_window`: four windows over a full 1000-step episode."""


def outcomes_by_window(records: dict, window: int = TIMELINE_WINDOW) -> list[dict]:
    """How the probe's episodes go over time, per window of `window` steps, from per-step [episodes, steps]
    records: the reward per episode earned in the window (summed over all episodes, ended ones giving 0, divided
    by the number of episodes), how many episodes are still running at its start, and over the running steps the
    mean forward speed, steering angle and throttle and the share of steps on the road. A controller trained on
    shorter episodes than it is tested on shows here where it stops driving."""
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ConfigError(f"the timeline's window must be an int >= 1 step, got {window!r}")
    alive = np.asarray(records["alive"], bool)
    episodes, steps = alive.shape
    rows = []
    for start in range(0, steps, window):
        part = slice(start, min(start + window, steps))
        running = alive[:, part]
        count = max(int(running.sum()), 1)

        def mean_running(name):
            return float((np.asarray(records[name][:, part], np.float64) * running).sum() / count)

        rows.append({"steps": [start, part.stop], "episodes_running": int(running[:, 0].sum()),
                     "reward_per_episode": float((np.asarray(records["reward"][:, part], np.float64)
                                                  * running).sum() / episodes),
                     "forward_speed": mean_running("forward_speed"), "steer": mean_running("steer"),
                     "gas": mean_running("gas"), "on_road": mean_running("on_road")})
    return rows


def feature_probe(pipeline, mode: str = "z_h", episodes: int = 64, max_steps: int = 1000) -> dict:
    """How well each controller input predicts the car's motion and pose, on the states controller `mode` drives
    into, and how its episodes end.

    Controller `mode` (or 'scripted', the scripted driver) drives `episodes` random tracks (keys from the run's
    'feature-probe' key, not the evaluate stage's) for up to `max_steps` steps. Every step records V's μ (z), M's
    features h (M stepped on μ and the action taken, as the z + h controller sees them), the previous step's z,
    and `PROBE_TARGETS`. A ridge regression per feature set (`PROBE_FEATURES`) is fitted on the even episodes and
    scored (R²) on the odd ones (`probe_r2`); each episode's first step, which has no previous z, is left out.
    C is linear in its inputs, so a linear probe's R² is what C can read from them. Writes
    feature_probe_<mode>.json into the run directory.
    """
    from worldmodels_jax.envs.carracing import CarRacing, sample_distance, scripted_driver
    from worldmodels_jax.models.vae import ConvVAE, for_inference

    if not isinstance(pipeline.env, CarRacing):
        raise ConfigError(f"the feature probe reads CarRacing's car state; the run uses {pipeline.config.env_id}")
    if mode != "scripted":
        pipeline.check_trained(mode, " (or 'scripted', the scripted driver)")
    if not isinstance(episodes, (int, np.integer)) or episodes < 2 or max_steps < 2:
        raise ConfigError(f"the probe needs episodes >= 2 (half to fit, half to score) and max_steps >= 2; "
                          f"got {episodes!r}, {max_steps!r}")
    env, env_params = pipeline.env, pipeline.env_params
    scripted = mode == "scripted"
    agent = None if scripted else pipeline.agent(mode)
    drive_wm = None if scripted else pipeline.world_model_params(agent.uses_memory)
    c_params = None if scripted else pipeline.controller_params(mode)
    vae_params, memory_params = pipeline.vae_params(), pipeline.memory_params()
    encoder, memory, encode_action = for_inference(pipeline.vae), pipeline.memory, pipeline.action_encoder

    def episode(key, drive_wm, c_params, vae_params, memory_params):  # parameters are arguments, not constants
        reset_key, run_key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)
        drive_carry = () if scripted else agent.init_carry(drive_wm)
        carry = (obs, state, drive_carry, memory.apply({"params": memory_params}, method="initial_carry"),
                 jnp.zeros(pipeline.config.vae.z_size), jnp.array(True), jnp.array(True))

        def step(carry, t):
            obs, state, drive_carry, probe_carry, previous_z, alive, first = carry
            act_key, env_key = jax.random.split(jax.random.fold_in(run_key, t))
            z, _ = encoder.apply({"params": vae_params}, obs, method=ConvVAE.encode)
            h = jnp.where(first, 0.0, probe_carry.h)
            if scripted:
                action = scripted_driver(state, env_params)
            else:
                action, drive_carry = agent.act(drive_wm, c_params, drive_carry, obs, first, act_key)
            probe_carry, _, _ = memory.apply({"params": memory_params}, probe_carry, z, encode_action(action), first,
                                             method="step")
            record = {"z": z, "h": h, "previous_z": previous_z, "use": alive & ~first, "alive": alive,
                      **car_motion(state), **road_pose(state)}
            n_tiles = state.n_tiles
            record["on_road"] = sample_distance(state.texture, state.pos, env_params.playfield) < env_params.track_width
            if jnp.shape(action) == (3,):  # continuous: the gas and brake sent, beside the throttle applied
                record.update(sent_gas=action[1], sent_brake=action[2])
            obs, state, reward, terminated, truncated, info = env.step(env_key, state, action, env_params)
            record.update(reward=reward, lap=info["lap_finished"], off=info["off_playfield"],
                          tiles=info["tiles_visited"] / n_tiles)
            alive = alive & ~(terminated | truncated)
            return (obs, state, drive_carry, probe_carry, z, alive, jnp.array(False)), record

        _, records = jax.lax.scan(step, carry, jnp.arange(max_steps))
        return records

    keys = jax.random.split(pipeline.key("feature-probe"), episodes)
    start = time.perf_counter()
    records = jax.device_get(jax.jit(jax.vmap(episode, in_axes=(0, None, None, None, None)))(
        keys, drive_wm, c_params, vae_params, memory_params))
    seconds = time.perf_counter() - start
    parts = {"z": (records["z"],), "h": (records["h"],), "z + h": (records["z"], records["h"]),
             "z, previous z": (records["z"], records["previous_z"])}
    features = {name: np.concatenate(parts[name], -1) for name in PROBE_FEATURES}
    targets = np.stack([records[name] for name in PROBE_TARGETS], -1)
    use = np.asarray(records["use"], bool)
    for name, values in {**features, "the car's state": targets}.items():
        if not np.all(np.isfinite(values[use])):
            bad = int((~np.isfinite(values[use])).any(-1).sum())
            raise NonFiniteError(f"the probe's {name} has non-finite values on {bad} steps; check the run's V and M "
                                 "checkpoints (retrain the stage that wrote them)")
    r2, ridges, fit, score = probe_r2(features, targets, use)
    payload = {"mode": mode, "episodes": episodes, "max_steps": max_steps, "ridge_per_row": ridges,
               "steps_fit": int(fit.sum()), "steps_scored": int(score.sum()), "r2": r2,
               "target_std": dict(zip(PROBE_TARGETS, map(float, targets[use].std(0)))),
               "target_mean": dict(zip(PROBE_TARGETS, map(float, targets[use].mean(0)))),
               "outcomes": episode_outcomes(records), "timeline": outcomes_by_window(records), "seconds": seconds}
    write_json_atomic(Path(pipeline.run.path) / f"feature_probe_{mode}.json", payload)
    return payload


def probe_markdown(probe: dict) -> str:
    lines = [f"Held-out R² of a linear probe, on the states controller {probe['mode']} drives into "
             f"({probe['steps_fit']} steps fitted, {probe['steps_scored']} scored, {probe['episodes']} tracks):", "",
             "| Features | " + " | ".join(PROBE_TARGETS) + " |", "|---|" + "---|" * len(PROBE_TARGETS)]
    for name, row in probe["r2"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[t]:.2f}" for t in PROBE_TARGETS) + " |")
    lines.append("| (target std) | " + " | ".join(f"{probe['target_std'][t]:.3g}" for t in PROBE_TARGETS) + " |")
    o = probe["outcomes"]
    lines += ["", f"Its {probe['episodes']} episodes ({probe['max_steps']} steps at most): return "
              f"{o['return_mean']:.1f} ± {o['return_std']:.1f}; lap finished {o['lap_finished']:.0%}, left the "
              f"playfield {o['off_playfield']:.0%}, "
              f"out of steps {o['out_of_steps']:.0%}; {o['tiles_visited']:.0%} of tiles visited, "
              f"{o['steps_mean']:.0f} steps, mean forward speed {o['forward_speed_mean']:.1f} and "
              f"{o['on_road']:.0%} of steps on the road per episode"
              + (f"; it sent gas {o['sent_gas_mean']:.2f} and brake {o['sent_brake_mean']:.2f} on average."
                 if "sent_gas_mean" in o else ".")]
    if "timeline" in probe:
        lines += ["", "Over the episode (running episodes only, reward per episode of all):", "",
                  "| steps | running | reward | forward speed | steer | gas | on the road |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {w['steps'][0]}–{w['steps'][1]} | {w['episodes_running']} | {w['reward_per_episode']:.1f} | "
                  f"{w['forward_speed']:.1f} | {w['steer']:+.3f} | {w['gas']:.2f} | {w['on_road']:.0%} |"
                  for w in probe["timeline"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- state oracle
def true_state_features(state) -> jax.Array:
    """The car's `PROBE_TARGETS` as one vector: what a perfect V and M could hand C."""
    values = {**car_motion(state), **road_pose(state)}
    return jnp.stack([values[name] for name in PROBE_TARGETS]).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class StateOracleCarRacing:
    """CarRacing whose controller reads `true_state_features` (standardised by `mean`, `std`) instead of a frame.

    `rollouts.run_episodes` reads an env's `observation_of_state` when it has one, so an `Agent` with
    obs_kind='features' drives it with a controller on these 8 inputs; the frames are still rendered, unused.
    """

    env: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def reset(self, key, params):
        return self.env.reset(key, params)

    def step(self, key, state, action, params):
        return self.env.step(key, state, action, params)

    def action_space(self, params):
        return self.env.action_space(params)

    def observation_of_state(self, state) -> jax.Array:
        return (true_state_features(state) - jnp.asarray(self.mean)) / jnp.asarray(self.std)


def state_feature_stats(env, env_params, key: jax.Array, episodes: int = 32, steps: int = 500) -> tuple[tuple, tuple]:
    """Mean and std of `true_state_features` on the noisy scripted driver's episodes (CarRacing's collection policy:
    on the road and off it, at many speeds), for standardising the oracle's inputs as the pipeline standardises z."""
    from worldmodels_jax.envs.carracing import noisy_scripted_driver

    def episode(k):
        reset_key, run_key = jax.random.split(k)
        _, state = env.reset(reset_key, env_params)

        def step(state, t):
            act_key, env_key = jax.random.split(jax.random.fold_in(run_key, t))
            action = noisy_scripted_driver(act_key, state, env_params)
            _, next_state, _, _, _, _ = env.step(env_key, state, action, env_params)
            return next_state, true_state_features(state)

        return jax.lax.scan(step, state, jnp.arange(steps))[1]

    features = np.asarray(jax.jit(jax.vmap(episode))(jax.random.split(key, episodes))).reshape(-1, len(PROBE_TARGETS))
    return tuple(map(float, features.mean(0))), tuple(map(float, features.std(0) + 1e-6))


def train_state_oracle(pipeline, mode: str = "z", generations: int | None = None, strategy: str | None = None,
                       es_seed: int = 0) -> dict:
    """A controller on the car's true state (`true_state_features`), trained with the run's ES settings.

    The same CMA-ES budget as the run's controller stage (population, rollouts, generations, training episode cap,
    σ₀ rule, the best training-time evaluation kept), only C's input changes: 8 true quantities instead of z (and
    h). `mode` 'z' is a linear controller on them, 'z_hidden' adds the 40-unit hidden layer. It is then scored
    on the evaluate stage's tracks, as the table's rows are. If it drives far better than the run's controllers
    at the same budget, their limit is what V and M give C, not the search; if not, it is the search.
    `generations` and `strategy` (any evosax name) override the run's; `es_seed` > 0 draws other ES keys (the
    evaluation tracks stay the table's). Writes state_oracle_<mode>_<strategy>_g<generations>_s<es_seed>.json into
    the run directory; the payload's 'path' names it.
    """
    from worldmodels_jax.envs.carracing import CarRacing
    from worldmodels_jax.evolution import es_state_is_finite, make_evolution
    from worldmodels_jax.models.controller import Controller, ControllerConfig, init_controller
    from worldmodels_jax.rollouts import Agent, WorldModelParams, evaluate_params, population_returns

    if not isinstance(pipeline.env, CarRacing) or pipeline.env.discrete:
        raise ConfigError(f"the state oracle drives continuous CarRacing; the run uses {pipeline.config.env_id}")
    if mode not in ("z", "z_hidden"):
        raise ConfigError(f"the state oracle's controller is 'z' (linear) or 'z_hidden' (one hidden layer), "
                          f"got {mode!r}")
    ccfg, evaluate_cfg = pipeline.config.controller, pipeline.config.evaluate
    if generations is not None and generations < 1:
        raise ConfigError(f"generations must be >= 1, got {generations}")
    if not isinstance(es_seed, (int, np.integer)) or es_seed < 0:
        raise ConfigError(f"es_seed must be an int >= 0, got {es_seed!r}")
    es = dataclasses.replace(ccfg.es, generations=generations or ccfg.es.generations,
                             strategy=strategy or ccfg.es.strategy)  # ESConfig checks the strategy's name
    key = pipeline.key("state-oracle")
    key = jax.random.fold_in(key, es_seed) if es_seed else key
    stats_key, init_key, eval_key = jax.random.split(key, 3)
    mean, std = state_feature_stats(pipeline.env, pipeline.env_params, stats_key)
    env, env_params = StateOracleCarRacing(pipeline.env, mean, std), pipeline.env_params
    mapping = pipeline.action_mapping()
    config = ControllerConfig(mode=mode, z_size=len(PROBE_TARGETS), feature_size=1, num_outputs=mapping.num_outputs,
                              hidden_units=ccfg.hidden_units, use_bias=ccfg.use_bias)
    agent = Agent(controller=Controller(config), mapping=mapping, obs_kind="features")
    wm = WorldModelParams()
    max_steps = int(ccfg.max_episode_steps or env_params.max_steps_in_episode)

    def fitness(population, k):
        return population_returns(env, env_params, agent, wm, population, k, es.rollouts, max_steps,
                                  ccfg.chunk_steps, es.common_random_numbers, pipeline.mesh)

    evaluate = jax.jit(lambda params, k, episodes, steps: evaluate_params(
        env, env_params, agent, wm, params, k, episodes, steps, ccfg.chunk_steps, pipeline.mesh), static_argnums=(2, 3))
    template = init_controller(jax.random.PRNGKey(0), config)
    init, run_chunk, mean_params = make_evolution(
        fitness, template, dataclasses.replace(es, sigma_init=ccfg.sigma_init_for(config.input_size)))
    start = time.perf_counter()
    state, best, curve = init(init_key), (-np.inf, template), []
    while int(state.generation) < es.generations:
        state, _ = run_chunk(state, min(es.eval_every, es.generations - int(state.generation)))
        if not es_state_is_finite(state):  # the pipeline's controller stage checks the same way
            raise NonFiniteError(f"the state oracle's {es.strategy} state became non-finite at generation "
                                 f"{int(state.generation)}")
        params = mean_params(state)
        score = float(np.mean(evaluate(params, jax.random.fold_in(eval_key, int(state.generation)),
                                       es.eval_episodes, max_steps).returns))
        if not np.isfinite(score):
            raise NonFiniteError(f"the state oracle's evaluation at generation {int(state.generation)} is {score}")
        curve.append({"generation": int(state.generation), "eval_mean": score})
        best = (score, params) if score > best[0] else best
    test = evaluate(best[1], pipeline.key("evaluate"), evaluate_cfg.episodes,
                    int(evaluate_cfg.max_episode_steps or env_params.max_steps_in_episode))
    returns = np.asarray(test.returns, np.float64)
    path = Path(pipeline.run.path) / f"state_oracle_{mode}_{es.strategy}_g{es.generations}_s{es_seed}.json"
    payload = {"mode": mode, "inputs": list(PROBE_TARGETS), "strategy": es.strategy, "es_seed": int(es_seed),
               "generations": es.generations,
               "population": es.population, "rollouts": es.rollouts, "max_episode_steps": max_steps,
               "mean": float(returns.mean()), "std": float(returns.std()), "episodes": int(returns.size),
               "best_training_eval": float(best[0]), "curve": curve, "input_mean": list(mean), "input_std": list(std),
               "seconds": time.perf_counter() - start, "path": str(path)}
    write_json_atomic(path, payload)
    return payload


__all__ = ["feature_probe", "probe_markdown", "probe_r2", "ridge_r2", "choose_ridge", "episode_outcomes", "car_motion",
           "road_pose", "outcomes_by_window", "TIMELINE_WINDOW", "PROBE_TARGETS", "MOTION_TARGETS", "ROAD_TARGETS", "PROBE_FEATURES", "RIDGE_GRID",
           "CURVE_AHEAD_TILES", "true_state_features", "StateOracleCarRacing", "state_feature_stats",
           "train_state_oracle"]
