"""The gymnasium CarRacing-v3 bridge: the original's frame preprocessing, policy runs and data collection."""

from __future__ import annotations

import builtins
import importlib.util
import types

import numpy as np
import pytest

from worldmodels_jax.envs import gymnasium_bridge as gb
from worldmodels_jax.errors import ConfigError, EnvError, ShapeError

HAS_GYM = all(importlib.util.find_spec(m) is not None for m in ("gymnasium", "Box2D", "pygame"))
needs_gym = pytest.mark.skipif(not HAS_GYM, reason="needs gymnasium[box2d] (pip install -e .[gymnasium])")


def test_preprocess_crops_the_indicator_bar_and_resizes():
    frame = np.zeros((96, 96, 3), np.uint8)
    frame[:84] = (102, 204, 102)
    frame[84:] = 0  # the indicator bar
    out = gb.preprocess_frame(frame)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.all(out == np.array([102, 204, 102], np.uint8))  # no trace of the bar
    ramp = np.zeros((96, 96, 3), np.uint8)
    ramp[..., 0] = np.arange(96, dtype=np.uint8)[None, :] * 2  # horizontal ramp
    ramp[..., 1] = np.arange(96, dtype=np.uint8)[:, None] * 2  # vertical ramp: rows 0..83 map to 0..63
    out = gb.preprocess_frame(ramp)
    assert np.all(np.diff(out[..., 0].astype(int), axis=1) >= 0) and out[0, -1, 0] > 180
    assert out[-1, 0, 1] <= 2 * 83 and out[-1, 0, 1] > 150  # bottom row comes from row ~83, not 95


def test_preprocess_rejects_bad_frames():
    with pytest.raises(ShapeError, match="96, 96, 3"):
        gb.preprocess_frame(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ShapeError):
        gb.preprocess_frame(np.zeros((96, 96, 3), np.float32))


def test_missing_gymnasium_gives_install_hint(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "Box2D":
            raise ImportError("No module named 'Box2D'", name="Box2D")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(EnvError, match=r"pip install -e '\.\[gymnasium\]'"):
        gb.make_env()


def test_bad_episode_counts():
    with pytest.raises(ConfigError, match="episodes"):
        gb.run_policy(lambda o, s: (np.zeros(3), s), None, episodes=0)


@needs_gym
def test_run_policy_threads_state_and_matches_direct_stepping():
    seen = []

    def act(obs, counter):
        seen.append((obs.shape, obs.dtype, counter))
        return np.array([0.0, 1.0 if counter < 20 else 0.0, 0.0]), counter + 1

    returns = gb.run_policy(act, 0, episodes=2, seed=11, max_steps=25)
    assert returns.shape == (2,)
    assert all(s == (64, 64, 3) and d == np.uint8 for s, d, _ in seen)
    counters = [c for _, _, c in seen]
    assert counters == list(range(25)) * 2  # the policy state restarts every episode
    # the same actions stepped by hand on the same track give the same return
    env = gb.make_env()
    env.reset(seed=11)
    total = 0.0
    for t in range(25):
        _, r, term, trunc, _ = env.step(np.array([0.0, 1.0 if t < 20 else 0.0, 0.0], np.float32))
        total += r
    env.close()
    assert returns[0] == pytest.approx(total)
    assert total > 0  # full gas down the start straight collects tiles


@needs_gym
def test_collect_random_rollouts_shapes_and_flags():
    data = gb.collect_random_rollouts(episodes=2, seed=3, max_steps=12)
    assert data["obs"].shape == (2, 12, 64, 64, 3) and data["obs"].dtype == np.uint8
    assert data["action"].shape == (2, 12, 3)
    assert np.all(data["action"][..., 0] >= -1) and np.all(data["action"][..., 1:] >= 0)
    assert data["valid"].all()
    assert data["first"][:, 0].all() and not data["first"][:, 1:].any()
    assert data["truncated"][:, -1].all() and not data["truncated"][:, :-1].any()
    assert not data["terminated"].any()
    # each step costs 0.1; tiles pay 1000/N on top: rewards are -0.1 or -0.1 + a tile's worth
    r = data["reward"]
    assert np.all((np.abs(r + 0.1) < 1e-4) | (r > 2.0))
    assert data["obs"][:, -1].std() > 0  # real pictures, not blank frames
    discrete = gb.collect_random_rollouts(episodes=1, seed=0, continuous=False, max_steps=5)
    assert discrete["action"].shape == (1, 5) and discrete["action"].dtype == np.int32



class _ScriptedEnd:
    """A stand-in for CarRacing-v3 that ends episode e after lengths[e] steps in the way endings[e] says, with
    gymnasium's signals: terminated + info["lap_finished"] True (lap) or False (off the playfield, -100), or
    truncated (the time limit). Each step visits one of the track's 10 tiles."""

    def __init__(self, lengths, endings):
        self.lengths, self.endings, self.episode = lengths, endings, -1
        self.unwrapped, self.track = self, [None] * 10
        # heading pi/2 (pointing along -x), moving at 3 units/s along -x: forward speed 3; one wheel on a tile
        # on every second step
        hull = types.SimpleNamespace(angle=np.pi / 2, linearVelocity=(-3.0, 0.0))
        self.car = types.SimpleNamespace(hull=hull, wheels=[types.SimpleNamespace(tiles=set()) for _ in range(4)])

    def reset(self, seed=None):
        self.episode, self.t, self.tile_visited_count = self.episode + 1, 0, 0
        return np.zeros((96, 96, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        self.car.wheels[2].tiles = {0} if self.t % 2 == 0 else set()
        self.tile_visited_count = min(self.t, 10)
        end = self.t == self.lengths[self.episode]
        ending = self.endings[self.episode] if end else None
        info = {"lap_finished": ending == "lap"} if ending in ("lap", "off_playfield") else {}
        reward = -100.0 if ending == "off_playfield" else 1.0
        return np.zeros((96, 96, 3), np.uint8), reward, ending in ("lap", "off_playfield"), ending == "time_limit", info

    def close(self):
        raise AssertionError("run_policy_episodes must not close an env it was given")


def test_run_policy_episodes_reads_gymnasium_endings():
    env = _ScriptedEnd(lengths=[4, 7, 12, 50], endings=["lap", "off_playfield", "time_limit", None])
    records = gb.run_policy_episodes(lambda o, s: (np.array([-0.5, 0.25, 0.0]), s), None, episodes=4,
                                     max_steps=20, env=env)
    assert [r["ending"] for r in records] == ["lap", "off_playfield", "time_limit", "max_steps"]
    assert [r["steps"] for r in records] == [4, 7, 12, 20]
    assert [r["return"] for r in records] == [4.0, 6.0 - 100.0, 12.0, 20.0]
    assert [r["tiles"] for r in records] == [0.4, 0.7, 1.0, 1.0]
    assert [r["forward_speed"] for r in records] == pytest.approx([3.0] * 4)
    assert [r["on_road"] for r in records] == [2 / 4, 3 / 7, 6 / 12, 10 / 20]
    assert all((r["steer"], r["gas"], r["brake"]) == (-0.5, 0.25, 0.0) for r in records)
    assert set(r["ending"] for r in records) <= set(gb.ENDINGS)


@needs_gym
def test_run_policy_episodes_on_carracing_v3():
    def full_gas(obs, state):
        return np.array([0.0, 1.0, 0.0]), state

    capped = gb.run_policy_episodes(full_gas, None, episodes=2, seed=3, max_steps=30)
    assert [r["ending"] for r in capped] == ["max_steps", "max_steps"] and [r["steps"] for r in capped] == [30, 30]
    assert all(0.0 < r["tiles"] < 0.2 for r in capped)  # the start straight's first tiles, no more
    assert all(r["on_road"] == 1.0 for r in capped)
    # 30 steps of full gas: the speeds of docs/carracing.md ("Car dynamics": 7.0, 11.4, 24.5 after 5, 10, 25)
    assert all(8.0 < r["forward_speed"] < 20.0 for r in capped)
    assert all((r["steer"], r["gas"], r["brake"]) == (0.0, 1.0, 0.0) for r in capped)
    assert gb.run_policy(full_gas, None, episodes=1, seed=3, max_steps=30)[0] == pytest.approx(capped[0]["return"])
    # gymnasium's own time limit (here 40 steps instead of 1000) is a truncation
    env = gb.make_env(max_episode_steps=40)
    try:
        still = gb.run_policy_episodes(lambda o, s: (np.zeros(3), s), None, episodes=1, seed=3, env=env)[0]
    finally:
        env.close()
    assert still["ending"] == "time_limit" and still["steps"] == 40
    assert still["return"] == pytest.approx(-0.1 * 40 + 1000.0 * still["tiles"], abs=1e-3)  # 1000/N per tile


def test_bad_frames_choice():
    with pytest.raises(ConfigError, match="frames must be one of"):
        gb.run_policy(lambda o, s: (np.zeros(3), s), None, episodes=1, frames="pixels")


@needs_gym
def test_our_render_matches_gymnasium_frames_after_the_zoom():
    # Oracle for our renderer: gymnasium's car pose on gymnasium's track, drawn by both. During the first
    # second gymnasium's camera zooms in (ours does not); after it, only kerbs and tile shades differ.
    import jax

    from worldmodels_jax.envs import carracing as cr

    env = gb.make_env()
    genv = env.unwrapped
    ours = gb.OurFrames()
    drive = jax.jit(lambda s: cr.scripted_driver(s, ours.params))
    stats = {"zoom": [], "after": []}
    try:
        frame, _ = env.reset(seed=1)
        on_track = gb.state_from_gymnasium(genv, ours.env, ours.params)  # one track: build it once
        for t in range(120):
            theirs, mine = gb.preprocess_frame(frame).astype(np.int16), ours(genv, t).astype(np.int16)
            road_theirs, road_mine = theirs[..., 1] < 150, mine[..., 1] < 150  # grey road against green grass
            stats["zoom" if t < gb.ZOOM_STEPS else "after"].append(
                (np.abs(theirs - mine).mean(), (road_theirs == road_mine).mean(), road_mine.mean()))
            state = gb.state_from_gymnasium(genv, ours.env, ours.params, t, on_track)
            frame, *_ = env.step(np.asarray(drive(state), np.float64))
    finally:
        env.close()
    zoom, after = np.asarray(stats["zoom"]), np.asarray(stats["after"])
    assert after[:, 0].mean() < 5.0 and after[:, 1].min() > 0.98  # mean |difference| per channel (of 255)
    assert 0.1 < after[:, 2].mean() < 0.5  # the frames do show road
    assert zoom[5:, 0].mean() > 10.0 and zoom[5:, 1].mean() < 0.9  # the zoom really differs
    assert genv.car.hull.linearVelocity.length > 20.0  # the scripted driver drove (on gymnasium's physics)


@needs_gym
def test_run_policy_with_our_frames():
    seen = []

    def record(obs, state):
        seen.append(obs)
        return np.array([0.0, 0.5, 0.0]), state

    mixed = gb.run_policy_episodes(record, None, episodes=1, seed=2, max_steps=gb.ZOOM_STEPS + 5,
                                   frames="ours_during_zoom")[0]
    zoomed = seen[:]
    seen.clear()
    native = gb.run_policy_episodes(record, None, episodes=1, seed=2, max_steps=gb.ZOOM_STEPS + 5)[0]
    assert mixed["return"] == pytest.approx(native["return"])  # same actions, same physics
    assert all(o.shape == (64, 64, 3) and o.dtype == np.uint8 for o in zoomed)
    assert np.abs(zoomed[10].astype(int) - seen[10]).mean() > 10.0  # ours during the zoom
    np.testing.assert_array_equal(zoomed[gb.ZOOM_STEPS:], seen[gb.ZOOM_STEPS:])  # gymnasium's after it


@needs_gym
def test_track_start_states_put_our_car_on_gymnasium_tracks():
    import jax
    import jax.numpy as jnp

    from worldmodels_jax.envs import carracing as cr

    env = cr.CarRacing()
    params = env.default_params
    starts = gb.track_start_states([4, 5], env, params)
    genv = gb.make_env().unwrapped
    try:
        genv.reset(seed=5)
        track = np.asarray(genv.track, np.float32)
        hull = genv.car.hull
        pose = (tuple(hull.position), hull.angle)
    finally:
        genv.close()
    assert starts.pos.shape == (2, 2) and starts.texture.shape == (2, env.texture_size, env.texture_size)
    assert int(starts.n_tiles[1]) == len(track)
    np.testing.assert_array_equal(np.asarray(starts.track[1, :len(track)]), track)
    np.testing.assert_allclose(np.asarray(starts.pos[1]), pose[0], atol=1e-4)  # the hull's, after gymnasium's reset
    assert float(starts.angle[1]) == pytest.approx(pose[1], abs=1e-5)
    # reset runs one physics step, which settles the joints: the car is still on tile 0, facing along the road
    np.testing.assert_allclose(np.asarray(starts.pos[1]), track[0, 2:4], atol=1e-3)
    assert float(starts.angle[1]) == pytest.approx(float(track[0, 1]), abs=0.01)

    def lap(state):  # the scripted driver on our physics, on gymnasium's track
        def body(carry, _):
            state, alive, ret = carry
            _, state, reward, terminated, _ = env.step_env(jax.random.PRNGKey(0), state,
                                                           cr.scripted_driver(state, params), params)
            return (state, alive & ~terminated, ret + jnp.where(alive, reward, 0.0)), None
        return jax.lax.scan(body, (state, jnp.array(True), jnp.float32(0.0)), None, length=1000)[0]

    state, alive, ret = jax.jit(jax.vmap(lap))(starts)
    assert np.all(np.asarray(ret) > 800.0) and not np.any(np.asarray(alive))  # laps finished on both tracks
