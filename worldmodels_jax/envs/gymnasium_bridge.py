"""Bridge to the real thing: gymnasium's CarRacing-v3 (Box2D + pygame) with the original's 64x64 frames.

The World Models code cropped each 96x96 frame to rows 0:84 (dropping the indicator bar) and resized it to
64x64. `preprocess_frame` does the same with PIL's bilinear resize; the original went through
`scipy.misc.imresize`, which also bilinear-resized with PIL but first stretched each frame's contrast to
[0, 255] when given floats; we keep the uint8 frame as is. Gymnasium is imported lazily, so the rest of
the package works without it; install it with `pip install -e '.[gymnasium]'`.

- `run_policy(act, policy_state, episodes)`: per-episode returns of a host-side policy
  `act(obs64, policy_state) -> (action, policy_state)`, for example a trained V + M + C pipeline;
  `run_policy_episodes` also says how each episode ended (lap, off the playfield, time limit) and how
  much of the track it covered.
- `frames="ours"` (or `"ours_during_zoom"`) gives the policy our renderer's frame of gymnasium's car on
  gymnasium's track instead of gymnasium's own (`OurFrames`), which splits a transfer gap into frames and
  dynamics: gymnasium zooms in over its first second (`ZOOM_STEPS`) and draws kerbs and tile shades.
  `track_start_states(seeds)` goes the other way: our env's start states on gymnasium's tracks.
- `collect_random_rollouts(episodes)`: random-policy data as numpy arrays (obs, action, reward,
  terminated, truncated, first, valid), episode-major and padded to the longest episode.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from worldmodels_jax.errors import ConfigError, EnvError, ShapeError

ENV_ID = "CarRacing-v3"
CROP_ROWS = 84
OBS_SIZE = 64
ZOOM_STEPS = 50  # gymnasium's camera zooms in while its clock t < 1 s: the frames of steps 0..49
FRAMES = ("gymnasium", "ours", "ours_during_zoom")


def _gymnasium():
    """Import gymnasium and check that CarRacing's Box2D and pygame dependencies are there."""
    try:
        import gymnasium
        import Box2D  # noqa: F401
        import pygame  # noqa: F401
    except ImportError as e:
        raise EnvError(
            f"the gymnasium bridge needs gymnasium with Box2D and pygame ({e.name or e} is missing); "
            "install them with `pip install -e '.[gymnasium]'`"
        ) from e
    return gymnasium


def preprocess_frame(frame: np.ndarray) -> np.ndarray:
    """A 96x96x3 uint8 CarRacing frame -> the original's 64x64x3 uint8 (crop rows 0:84, bilinear resize)."""
    from PIL import Image

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < CROP_ROWS or frame.dtype != np.uint8:
        raise ShapeError(f"expected a (96, 96, 3) uint8 CarRacing frame, got {frame.shape} {frame.dtype}")
    img = Image.fromarray(frame[:CROP_ROWS])
    return np.asarray(img.resize((OBS_SIZE, OBS_SIZE), Image.BILINEAR), dtype=np.uint8)


def make_env(continuous: bool = True, **kwargs):
    """gymnasium's CarRacing-v3 (with its 1000-step TimeLimit)."""
    gym = _gymnasium()
    return gym.make(ENV_ID, continuous=continuous, **kwargs)


def _check_episodes(episodes: int, max_steps: int | None) -> None:
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ConfigError(f"episodes must be an int >= 1, got {episodes!r}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1 or None (gymnasium's 1000-step limit), got {max_steps!r}")


ENDINGS = ("lap", "off_playfield", "time_limit", "max_steps")


def _forward_speed(hull) -> float:
    """The Box2D hull's velocity along its heading (the car points along its body +y axis)."""
    vx, vy = hull.linearVelocity
    return float(-vx * np.sin(hull.angle) + vy * np.cos(hull.angle))


def run_policy_episodes(
    act: Callable[[np.ndarray, Any], tuple[Any, Any]],
    policy_state: Any,
    episodes: int,
    seed: int = 0,
    continuous: bool = True,
    max_steps: int | None = None,
    env=None,
    frames: str = "gymnasium",
) -> list[dict]:
    """Run `act(obs64, policy_state) -> (action, policy_state)` for `episodes` episodes; one record each.

    Every episode starts from the given `policy_state` (an RNN controller starts each episode afresh) on
    track `seed + episode`. An episode ends at termination, gymnasium's 1000-step truncation, or after
    `max_steps` steps when given. A record holds `return`, `steps`, `tiles` (the fraction of the track's tiles
    visited), `ending`, one of `ENDINGS`: "lap" (gymnasium's lap_finished), "off_playfield" (its -100 exit),
    "time_limit" (its truncation) or "max_steps" (our cap), and, averaged over the episode's steps,
    `forward_speed` (the hull's velocity along its heading), `on_road` (the share of steps with a wheel on
    a tile, gymnasium's own contact test) and, for continuous actions, the `steer`, `gas` and `brake` the
    policy sent.

    `frames` picks what the policy sees: "gymnasium" (its frames, preprocessed), "ours" (`OurFrames`: our
    renderer's frame of the same car pose on the same track, every step) or "ours_during_zoom" (ours for
    the first `ZOOM_STEPS` steps, while gymnasium's camera zooms in, then gymnasium's).
    """
    _check_episodes(episodes, max_steps)
    if frames not in FRAMES:
        raise ConfigError(f"frames must be one of {', '.join(FRAMES)}, got {frames!r}")
    own = env is None
    env = make_env(continuous) if own else env
    ours = None if frames == "gymnasium" else OurFrames()
    records = []
    try:
        for ep in range(episodes):
            frame, _ = env.reset(seed=seed + ep)
            state = policy_state
            total, t, speed, on_road, controls = 0.0, 0, 0.0, 0, np.zeros(3)
            while True:
                if ours is not None and (frames == "ours" or t < ZOOM_STEPS):
                    obs = ours(env.unwrapped, t)
                else:
                    obs = preprocess_frame(frame)
                action, state = act(obs, state)
                if continuous:
                    action = np.asarray(action, np.float32)
                    controls += action
                else:
                    action = int(action)
                frame, reward, terminated, truncated, info = env.step(action)
                total += float(reward)
                t += 1
                car = env.unwrapped.car
                speed += _forward_speed(car.hull)
                on_road += any(len(wheel.tiles) > 0 for wheel in car.wheels)
                if terminated:
                    ending = "lap" if info.get("lap_finished", False) else "off_playfield"
                elif truncated:
                    ending = "time_limit"
                elif max_steps is not None and t >= max_steps:
                    ending = "max_steps"
                else:
                    continue
                break
            track = env.unwrapped
            records.append({"return": total, "steps": t, "ending": ending,
                            "tiles": track.tile_visited_count / len(track.track),
                            "forward_speed": speed / t, "on_road": on_road / t,
                            **({k: float(v) for k, v in zip(("steer", "gas", "brake"), controls / t)}
                               if continuous else {})})
    finally:
        if own:
            env.close()
    return records


def state_from_gymnasium(genv, env=None, params=None, t: int = 0, on_track=None):
    """Our `EnvState` for gymnasium's car on gymnasium's track (`genv` = `make_env().unwrapped`, after reset).

    The car's pose and velocity are the hull's (gymnasium's camera follows the hull's origin, ours the state's
    `pos`); wheel spins, steering and visited tiles start at zero. Pass `on_track`, an earlier state from the same
    track, to take its track, tile polygons and distance texture instead of building them again (see `OurFrames`).
    """
    import jax.numpy as jnp

    from worldmodels_jax.envs import carracing as cr

    hull = genv.car.hull
    pose = dict(pos=jnp.asarray(tuple(hull.position), jnp.float32), angle=jnp.float32(hull.angle),
                vel=jnp.asarray(tuple(hull.linearVelocity), jnp.float32), ang_vel=jnp.float32(hull.angularVelocity),
                time=jnp.int32(t))
    if on_track is not None:
        return on_track.replace(**pose)
    env = env or cr.CarRacing()
    params = params or env.default_params
    points = np.asarray(genv.track, np.float32)  # (n, 4): alpha, beta, x, y, our layout too
    if points.ndim != 2 or points.shape[1] != 4 or not 0 < len(points) <= env.max_tiles:
        raise ShapeError(f"gymnasium's track has shape {points.shape}; expected (n, 4) with 0 < n <= "
                         f"{env.max_tiles} (raise CarRacing(max_tiles=...))")
    track = np.zeros((env.max_tiles, 4), np.float32)
    track[:len(points)] = points
    track, n = jnp.asarray(track), jnp.int32(len(points))
    return cr.EnvState(
        **pose, wheel_omega=jnp.zeros(4, jnp.float32), steer=jnp.float32(0.0), gas=jnp.float32(0.0), track=track,
        n_tiles=n, tile_quads=cr.tile_quads(track, n, params.track_width),
        visited=jnp.zeros(env.max_tiles, bool), n_visited=jnp.int32(0),
        texture=cr.rasterize_distance(track, n, params.playfield, env.texture_size, env._splat))


def track_start_states(seeds, env=None, params=None):
    """Our env's start states on gymnasium's tracks, stacked along a leading axis: gymnasium is reset with each
    seed and its track and starting car taken over (`state_from_gymnasium`). Our env then drives them with its own
    physics and frames, on the same tracks as `run_policy_episodes(seed=...)`."""
    import jax
    import jax.numpy as jnp

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("track_start_states needs at least one seed")
    genv = make_env().unwrapped
    try:
        states = []
        for seed in seeds:
            genv.reset(seed=seed)
            states.append(state_from_gymnasium(genv, env, params))
    finally:
        genv.close()
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


class OurFrames:
    """`frames(genv, t)`: our renderer's 64x64 frame of gymnasium's car on gymnasium's track at step `t`.

    The track's tile polygons and distance texture are built once per track and reused until the track changes.
    """

    def __init__(self, env=None, params=None):
        import jax

        from worldmodels_jax.envs import carracing as cr

        self.env = env or cr.CarRacing()
        self.params = params or self.env.default_params
        self._render = jax.jit(self.env.render)
        self._track_id, self._on_track = None, None

    def __call__(self, genv, t: int) -> np.ndarray:
        track_id = hash(np.asarray(genv.track, np.float32).tobytes())
        state = state_from_gymnasium(genv, self.env, self.params, t,
                                     self._on_track if track_id == self._track_id else None)
        self._track_id, self._on_track = track_id, state
        return np.asarray(self._render(state, self.params))


def run_policy(
    act: Callable[[np.ndarray, Any], tuple[Any, Any]],
    policy_state: Any,
    episodes: int,
    seed: int = 0,
    continuous: bool = True,
    max_steps: int | None = None,
    env=None,
    frames: str = "gymnasium",
) -> np.ndarray:
    """The per-episode returns of `run_policy_episodes` (same arguments), as a float64 array."""
    records = run_policy_episodes(act, policy_state, episodes, seed, continuous, max_steps, env, frames)
    return np.array([r["return"] for r in records], np.float64)


def collect_random_rollouts(
    episodes: int,
    seed: int = 0,
    continuous: bool = True,
    max_steps: int | None = None,
) -> dict[str, np.ndarray]:
    """Random-policy rollouts from gymnasium's CarRacing-v3, preprocessed like the original.

    Returns episode-major arrays padded to the longest episode T:
    obs (E, T, 64, 64, 3) uint8 (the frame the action was taken on), action (E, T, 3) float32 (or (E, T)
    int32 when discrete), reward (E, T) float32, terminated / truncated / first / valid (E, T) bool.
    """
    _check_episodes(episodes, max_steps)
    env = make_env(continuous)
    env.action_space.seed(seed)
    eps = []
    try:
        for ep in range(episodes):
            frame, _ = env.reset(seed=seed + ep)
            rows = []
            while True:
                action = env.action_space.sample()
                obs = preprocess_frame(frame)
                frame, reward, terminated, truncated, _ = env.step(action)
                truncated = truncated or (max_steps is not None and len(rows) + 1 >= max_steps)
                rows.append((obs, action, reward, terminated, truncated))
                if terminated or truncated:
                    break
            eps.append(rows)
    finally:
        env.close()
    T = max(len(r) for r in eps)
    act_shape = (3,) if continuous else ()
    out = {
        "obs": np.zeros((episodes, T, OBS_SIZE, OBS_SIZE, 3), np.uint8),
        "action": np.zeros((episodes, T) + act_shape, np.float32 if continuous else np.int32),
        "reward": np.zeros((episodes, T), np.float32),
        "terminated": np.zeros((episodes, T), bool),
        "truncated": np.zeros((episodes, T), bool),
        "first": np.zeros((episodes, T), bool),
        "valid": np.zeros((episodes, T), bool),
    }
    for e, rows in enumerate(eps):
        n = len(rows)
        out["obs"][e, :n] = np.stack([r[0] for r in rows])
        out["action"][e, :n] = np.asarray([r[1] for r in rows])
        out["reward"][e, :n] = [r[2] for r in rows]
        out["terminated"][e, :n] = [r[3] for r in rows]
        out["truncated"][e, :n] = [r[4] for r in rows]
        out["first"][e, 0] = True
        out["valid"][e, :n] = True
    return out


__all__ = ["preprocess_frame", "make_env", "run_policy", "run_policy_episodes", "ENDINGS", "collect_random_rollouts",
           "ENV_ID", "FRAMES", "ZOOM_STEPS", "state_from_gymnasium", "track_start_states", "OurFrames"]
