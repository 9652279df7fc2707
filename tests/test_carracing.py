"""CarRacing in JAX: tracks, reward rules, episode ends, pixels, batching and the baselines."""

from __future__ import annotations

import importlib.util

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import worldmodels_jax  # noqa: F401  (registers the environments)
from worldmodels_jax.envs import carracing as cr
from worldmodels_jax.errors import ConfigError, ShapeError

ENV = cr.CarRacing()
PARAMS = ENV.default_params
HAS_BOX2D = importlib.util.find_spec("Box2D") is not None and importlib.util.find_spec("gymnasium") is not None

_reset = jax.jit(ENV.reset)
_step_env = jax.jit(ENV.step_env)
_vstep = jax.jit(jax.vmap(ENV.step, in_axes=(0, 0, 0, None)))


@pytest.fixture(scope="module")
def start():
    return _reset(jax.random.PRNGKey(0), PARAMS)


def _tile_centres(state):
    return np.asarray(state.tile_quads).mean(1)


# ---------------------------------------------------------------------------------------------------------
def test_registered_with_gymnax():
    env, params = gymnax.make("CarRacing-v0")
    assert isinstance(env, cr.CarRacing) and not env.discrete
    assert env.action_space(params).shape == (3,)
    assert env.observation_space(params).shape == (64, 64, 3)
    denv, _ = gymnax.make("CarRacingDiscrete-v0")
    assert denv.discrete and denv.action_space(params).n == 5


def test_reset_track_like_gymnasium(start):
    obs, st = start
    assert obs.shape == (64, 64, 3) and obs.dtype == jnp.uint8
    n = int(st.n_tiles)
    assert 200 <= n <= ENV.max_tiles
    pts = np.asarray(st.track)[:n, 2:4]
    steps = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    np.testing.assert_allclose(steps, PARAMS.track_detail_step, rtol=1e-4)  # tiles are 21/6 units long
    # closed loop: gymnasium drops one point when cutting the lap, so tile 0 bridges a gap of up to two steps
    assert np.linalg.norm(pts[0] - pts[-1]) <= 2 * PARAMS.track_detail_step + 1e-3
    assert np.all(np.abs(pts) < PARAMS.playfield)
    assert not np.any(np.asarray(st.track)[n:])  # padding rows are zero
    # the car starts at rest on the first centre-line point, facing along the road
    np.testing.assert_allclose(np.asarray(st.pos), pts[0], atol=1e-5)
    assert float(st.angle) == pytest.approx(float(st.track[0, 1]))


def test_determinism_per_key(start):
    obs, st = start
    obs2, st2 = _reset(jax.random.PRNGKey(0), PARAMS)
    assert np.array_equal(obs, obs2)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(st2)))
    _, st3 = _reset(jax.random.PRNGKey(1), PARAMS)
    assert not np.array_equal(st.track, st3.track)
    # stepping is deterministic too
    a = jnp.array([0.3, 1.0, 0.0])
    out1 = _step_env(jax.random.PRNGKey(3), st, a, PARAMS)
    out2 = _step_env(jax.random.PRNGKey(3), st, a, PARAMS)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(out1), jax.tree.leaves(out2)))


@pytest.mark.skipif(not HAS_BOX2D, reason="needs gymnasium[box2d]")
def test_track_generation_matches_gymnasium():
    from gymnasium.envs.box2d.car_racing import CarRacing as GymCarRacing

    class Uniforms:  # feeds gymnasium's _create_track the same random numbers as ours
        def __init__(self, us):
            self.us = list(us)

        def uniform(self, lo, hi):
            return lo + self.us.pop(0) * (hi - lo)

    genv = GymCarRacing()
    gen = jax.jit(lambda a, b: cr.generate_track(a, b, PARAMS, 400))
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(6):
        nu, ru = rng.uniform(size=12), rng.uniform(size=12)
        genv._np_random = Uniforms(np.stack([nu, ru], 1).reshape(-1))
        genv.road, genv.road_poly = [], []
        ok = genv._create_track()
        track, n, jok = gen(jnp.asarray(nu, jnp.float32), jnp.asarray(ru, jnp.float32))
        assert bool(jok) == ok
        if ok:
            ref = np.asarray(genv.track)
            assert int(n) == len(ref)
            # gymnasium keeps the 5th lap, we the 3rd: the trace has converged to within a few hundredths
            np.testing.assert_allclose(np.asarray(track)[: len(ref)], ref, atol=0.05)
            compared += 1
    genv.close()
    assert compared >= 4


def test_tile_accounting_pays_exactly_1000(start):
    """Drive the car through tiles 1..N-1 and back to 0: every tile pays 1000/N once, the lap terminates."""
    _, st = start
    n = int(st.n_tiles)
    centres = jnp.asarray(_tile_centres(st))
    order = jnp.concatenate([jnp.arange(1, n), jnp.array([0]), jnp.array([5])])  # then revisit tile 5

    def body(state, i):
        state = state.replace(pos=centres[i], vel=jnp.zeros(2), ang_vel=0.0)
        _, state, r, term, info = ENV.step_env(jax.random.PRNGKey(0), state, jnp.zeros(3), PARAMS)
        return state, (r, term, info["lap_finished"])

    final, (r, term, lap) = jax.lax.scan(body, st, order)
    r, term = np.asarray(r), np.asarray(term)
    assert int(final.n_visited) == n and bool(final.visited[:n].all())
    np.testing.assert_allclose(r[:n] + 0.1, 1000.0 / n, rtol=1e-5)  # each new tile pays 1000/N - 0.1
    assert np.sum(r[:n]) + 0.1 * n == pytest.approx(1000.0, rel=1e-5)
    assert r[n] == pytest.approx(-0.1)  # a visited tile pays nothing
    assert not term[: n - 1].any() and term[n - 1] and bool(lap[n - 1])


def test_lap_completes_at_95_percent_on_the_start_tile(start):
    _, st = start
    n = int(st.n_tiles)
    visited = jnp.arange(ENV.max_tiles) < n
    visited = visited.at[n - 1].set(False).at[0].set(False)  # 2 tiles short: > 95% for N >= 40
    state = st.replace(visited=visited, n_visited=jnp.int32(n - 2), pos=jnp.asarray(_tile_centres(st)[0]))
    _, _, r, term, info = _step_env(jax.random.PRNGKey(0), state, jnp.zeros(3), PARAMS)
    assert bool(term) and bool(info["lap_finished"])
    assert float(r) == pytest.approx(1000.0 / n - 0.1, rel=1e-5)


def test_leaving_the_playfield_costs_100_and_terminates(start):
    _, st = start
    outside = st.replace(pos=jnp.array([PARAMS.playfield + 0.5, 0.0]), vel=jnp.zeros(2))
    obs, nxt, r, term, trunc, info = ENV.step(jax.random.PRNGKey(1), outside, jnp.array([0.0, 1.0, 0.0]), PARAMS)
    assert float(r) == -100.0
    assert bool(term) and not bool(trunc)
    assert bool(info["off_playfield"]) and not bool(info["lap_finished"])
    assert int(nxt.time) == 0 and int(nxt.n_visited) == 0  # auto-reset to a fresh episode
    # just inside the boundary: ordinary reward
    inside = st.replace(pos=jnp.array([PARAMS.playfield - 0.5, 0.0]), vel=jnp.zeros(2))
    _, _, r, term, _ = _step_env(jax.random.PRNGKey(1), inside, jnp.zeros(3), PARAMS)
    assert float(r) == pytest.approx(-0.1) and not bool(term)


def test_truncation_is_separate_from_termination(start):
    _, st = start
    late = st.replace(time=jnp.int32(PARAMS.max_steps_in_episode - 1))
    obs, nxt, r, term, trunc, info = ENV.step(jax.random.PRNGKey(2), late, jnp.zeros(3), PARAMS)
    assert bool(trunc) and not bool(term)
    assert int(nxt.time) == 0  # reset
    assert not np.array_equal(nxt.track, st.track)  # a new track
    assert info["final_observation"].shape == (64, 64, 3)
    early = st.replace(time=jnp.int32(PARAMS.max_steps_in_episode - 2))
    _, nxt, _, term, trunc, _ = ENV.step(jax.random.PRNGKey(2), early, jnp.zeros(3), PARAMS)
    assert not bool(trunc) and not bool(term) and int(nxt.time) == PARAMS.max_steps_in_episode - 1


@pytest.mark.parametrize("reset_chunk", [None, 2])
def test_vmapped_step_resets_only_the_done_envs(start, reset_chunk):
    """None: the backend's default (1 on the CPU: done envs reset one at a time); 2: vmapped pairs."""
    env = cr.CarRacing(reset_chunk=reset_chunk)
    _vstep = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    _, batch = jax.vmap(ENV.reset, in_axes=(0, None))(keys, PARAMS)
    batch = batch.replace(time=jnp.array([999, 5, 999], jnp.int32))
    actions = jnp.tile(jnp.array([0.0, 0.5, 0.0]), (3, 1))
    obs, nxt, r, term, trunc, info = _vstep(jax.random.split(jax.random.PRNGKey(5), 3), batch, actions, PARAMS)
    assert np.array_equal(np.asarray(trunc), [True, False, True])
    assert np.array_equal(np.asarray(nxt.time), [0, 6, 0])
    assert np.array_equal(nxt.track[1], batch.track[1])
    assert not np.array_equal(nxt.track[0], batch.track[0]) and not np.array_equal(nxt.track[2], batch.track[2])
    assert not np.array_equal(nxt.track[0], nxt.track[2])  # each reset draws its own track
    # the batched step agrees with the unbatched one, env by env
    for i in range(3):
        key_i = jax.random.split(jax.random.PRNGKey(5), 3)[i]
        one = env.step(key_i, jax.tree.map(lambda x: x[i], batch), actions[i], PARAMS)
        # a vmapped track scan may round its last bits differently from the unbatched one
        np.testing.assert_allclose(np.asarray(one[1].track), np.asarray(nxt.track[i]), atol=1e-3)
        assert np.abs(np.asarray(one[0], int) - np.asarray(obs[i], int)).max() <= 1
        np.testing.assert_allclose(np.asarray(one[1].pos), np.asarray(nxt.pos[i]), atol=1e-5)
        assert float(one[2]) == pytest.approx(float(r[i]))


def test_track_parameters_are_vmappable():
    widths = jnp.array([5.0, 8.0])
    batch = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (2,) + jnp.shape(x)), PARAMS)
    batch = batch.replace(track_width=widths)
    key = jax.random.PRNGKey(0)
    obs, st = jax.jit(jax.vmap(ENV.reset, in_axes=(None, 0)))(key, batch)
    assert np.array_equal(st.track[0], st.track[1])  # same key, same track
    road_px = (np.asarray(obs)[:, 40, :, 1] == 102).sum(-1)  # grey pixels across one row ahead of the car
    # 2 * half-width * 1.037 px/unit: about 10 and 17 pixels
    assert abs(road_px[0] - 2 * 5.0 * cr.OBS_PX_PER_UNIT_X) <= 2 and abs(road_px[1] - 2 * 8.0 * cr.OBS_PX_PER_UNIT_X) <= 2
    quad_w = np.linalg.norm(np.asarray(st.tile_quads)[:, 5, 0] - np.asarray(st.tile_quads)[:, 5, 1], axis=-1)
    np.testing.assert_allclose(quad_w, 2 * np.asarray(widths), rtol=1e-5)


def test_rendering_golden_pixels(start):
    obs, st = start
    obs = np.asarray(obs)
    road = np.array([102, 102, 102])
    # the road ahead of and under the car is grey, the car is red, grass beside the road is green
    np.testing.assert_array_equal(obs[40, 32], road)
    np.testing.assert_array_equal(obs[50, 30], road)
    assert obs[55, 32, 0] > 150 and obs[55, 32, 1] < 60  # the red hull
    side = obs[40, [1, 62]]
    assert np.all(side[:, 0] == 102) and np.all(side[:, 2] == 102) and np.all(np.isin(side[:, 1], [204, 230]))
    # far from the track: all grass, of gymnasium's two greens
    far = st.replace(pos=jnp.array([0.0, 0.0]), angle=jnp.float32(0.3))
    far_obs = np.asarray(ENV.render(far, PARAMS))
    d = np.asarray(cr.sample_distance(st.texture, jnp.zeros((1, 2)), PARAMS.playfield))
    if d[0] > 50:  # the track does not pass within view of the origin (true for this key)
        car = ENV._sprite_alpha > 0
        assert np.all(np.isin(far_obs[~car][:, 1], [204, 230])) and len(np.unique(far_obs[~car][:, 1])) == 2
    # beyond the playfield the frame is black
    out = st.replace(pos=jnp.array([PARAMS.playfield + 60.0, 0.0]))
    out_obs = np.asarray(ENV.render(out, PARAMS))
    np.testing.assert_array_equal(out_obs[5, 32], [0, 0, 0])


def test_render_matches_the_pixel_by_pixel_reference(start):
    """The fast renderer (affine coordinates, per-block coefficients, sprite box) against `render_reference`
    (world position, four-gather bilinear distance, colour and sprite blend per pixel): on the road, on the
    grass, across the playfield edge and beyond it, at any heading."""
    _, st = start
    fast, ref = jax.jit(ENV.render), jax.jit(ENV.render_reference)
    rng = np.random.default_rng(0)
    pts = np.asarray(st.track)[: int(st.n_tiles), 2:4]
    poses = [pts[rng.integers(len(pts))] + rng.uniform(-15, 15, 2) for _ in range(12)]
    poses += [rng.uniform(-1, 1, 2) * (PARAMS.playfield + 40) for _ in range(8)]
    poses += [np.array([PARAMS.playfield - 20.0, 0.0]), np.array([-PARAMS.playfield + 5.0, PARAMS.playfield - 5.0])]
    differing = 0
    for pos in poses:
        state = st.replace(pos=jnp.asarray(pos, jnp.float32), angle=jnp.float32(rng.uniform(-7, 7)))
        a = np.asarray(fast(state, PARAMS)).astype(int)
        b = np.asarray(ref(state, PARAMS)).astype(int)
        assert np.abs(a - b).max() <= 1  # float rounding at .5 only
        differing += int((a != b).sum())
    assert differing <= 1e-4 * len(poses) * a.size
    # the reference itself: grey road under the car, gymnasium's greens, a black void beyond the playfield
    on_road = np.asarray(ref(st, PARAMS))
    np.testing.assert_array_equal(on_road[40, 32], [102, 102, 102])
    void = np.asarray(ref(st.replace(pos=jnp.array([PARAMS.playfield + 60.0, 0.0])), PARAMS))
    np.testing.assert_array_equal(void[5, 32], [0, 0, 0])


def test_texture_distance_is_accurate_near_the_road(start):
    _, st = start
    n = int(st.n_tiles)
    pts = np.asarray(st.track)[:n, 2:4]
    rng = np.random.default_rng(0)
    probe = pts[rng.integers(0, n, 200)] + rng.uniform(-12, 12, (200, 2))
    seg_a, seg_b = np.roll(pts, 1, 0), pts
    ab = seg_b - seg_a
    h = np.clip(np.einsum("psk,sk->ps", probe[:, None] - seg_a[None], ab) / np.sum(ab * ab, 1), 0, 1)
    exact = np.linalg.norm(probe[:, None] - (seg_a[None] + h[..., None] * ab[None]), axis=-1).min(1)
    got = np.asarray(cr.sample_distance(st.texture, jnp.asarray(probe, jnp.float32), PARAMS.playfield))
    near_edge = np.abs(exact - PARAMS.track_width) < 3.0
    # bilinear interpolation of a distance field is exact on straight road; allow for curvature and quantization
    assert np.median(np.abs(got - exact)[near_edge]) < 0.3


def test_discrete_actions_follow_gymnasium():
    env = cr.CarRacing(discrete=True)
    np.testing.assert_allclose(np.asarray(env.continuous_action(jnp.int32(1))), [0.6, 0.0, 0.0])  # right
    np.testing.assert_allclose(np.asarray(env.continuous_action(jnp.int32(2))), [-0.6, 0.0, 0.0])  # left
    np.testing.assert_allclose(np.asarray(env.continuous_action(jnp.int32(3))), [0.0, 0.2, 0.0])  # gas
    np.testing.assert_allclose(np.asarray(env.continuous_action(jnp.int32(4))), [0.0, 0.0, 0.8])  # brake
    _, st = env.reset(jax.random.PRNGKey(0), PARAMS)
    gas = jax.lax.scan(lambda s, _: (env.step_env(jax.random.PRNGKey(0), s, jnp.int32(3), PARAMS)[1], None),
                       st, None, length=20)[0]
    assert float(jnp.linalg.norm(gas.vel)) > 1.0 and float(gas.gas) == pytest.approx(0.2)


def test_car_dynamics_steer_gas_brake(start):
    _, st = start

    def run(action, steps):
        def body(s, _):
            _, s, *_ = ENV.step_env(jax.random.PRNGKey(0), s, action, PARAMS)
            return s, None
        return jax.lax.scan(body, st, None, length=steps)[0]

    fast = run(jnp.array([0.0, 1.0, 0.0]), 40)
    speed = float(jnp.linalg.norm(fast.vel))
    assert 25.0 < speed < 60.0  # gymnasium's car reaches ~37 units/s after 40 steps of full gas
    fwd = np.array([-np.sin(float(st.angle)), np.cos(float(st.angle))])
    assert np.dot(np.asarray(fast.vel), fwd) > 0.95 * speed  # it went forward
    assert float(fast.wheel_omega[2]) * cr.WHEEL_R > speed  # driven rear wheels spin faster: wheelspin
    assert abs(float(fast.wheel_omega[0]) * cr.WHEEL_R - speed) < 0.15 * speed  # free front wheels roll along
    right = run(jnp.array([1.0, 0.3, 0.0]), 40)
    assert float(right.steer) == pytest.approx(-cr.STEER_LIMIT)  # steering joint at its limit, turned right
    assert float(right.angle) < float(st.angle) - 0.2  # heading turned clockwise (right)
    _, locked, *_ = ENV.step_env(jax.random.PRNGKey(0), fast, jnp.array([0.0, 0.0, 1.0]), PARAMS)
    # brake >= 0.9 zeroes the spin; only the step's own tire friction turns the wheels again: they skid
    assert np.all(np.abs(np.asarray(locked.wheel_omega)) * cr.WHEEL_R < 0.1 * speed)
    assert float(jnp.linalg.norm(locked.vel)) < speed


@pytest.mark.skipif(not HAS_BOX2D, reason="needs gymnasium[box2d]")
def test_straight_line_dynamics_match_gymnasium():
    import gymnasium as gym

    genv = gym.make("CarRacing-v3").unwrapped
    genv.reset(seed=3)
    ref = []
    for t in range(60):
        genv.step(np.array([0.0, 1.0, 0.0]) if t < 45 else np.array([0.0, 0.0, 0.5]))
        v = genv.car.hull.linearVelocity
        ref.append(np.hypot(v[0], v[1]))
    genv.close()
    _, st = _reset(jax.random.PRNGKey(3), PARAMS)
    acts = jnp.asarray([[0.0, 1.0, 0.0]] * 45 + [[0.0, 0.0, 0.5]] * 15)
    def body(s, a):
        s = ENV.step_env(jax.random.PRNGKey(0), s, a, PARAMS)[1]
        return s, jnp.linalg.norm(s.vel)

    _, ours = jax.lax.scan(body, st, acts)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0.03, atol=0.3)


@pytest.mark.skipif(not HAS_BOX2D, reason="needs gymnasium[box2d]")
@pytest.mark.parametrize("gas", [0.1, 0.25])
def test_light_throttle_speed_matches_gymnasium(gas):
    # the throttle trained controllers use (0.1-0.25 on average); gymnasium's gas rises 0.1 per step at most
    import gymnasium as gym

    genv = gym.make("CarRacing-v3").unwrapped
    genv.reset(seed=3)
    ref = []
    for _ in range(100):
        genv.step(np.array([0.0, gas, 0.0]))
        ref.append(np.hypot(*genv.car.hull.linearVelocity))
    genv.close()
    _, st = _reset(jax.random.PRNGKey(3), PARAMS)

    def body(s, a):
        s = ENV.step_env(jax.random.PRNGKey(0), s, a, PARAMS)[1]
        return s, jnp.linalg.norm(s.vel)

    _, ours = jax.lax.scan(body, st, jnp.tile(jnp.array([0.0, gas, 0.0]), (100, 1)))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0.01, atol=0.1)
    assert 25.0 < ref[-1] < 50.0  # well below full gas's 85 after 100 steps


class _RoadEverywhere:  # a stand-in tile: gymnasium's wheels take the best road_friction among their tiles
    road_friction = 1.0


@pytest.mark.skipif(not HAS_BOX2D, reason="needs gymnasium[box2d]")
@pytest.mark.parametrize("steer,gas", [(0.3, 0.1), (-1.0, 0.25)])
def test_turning_dynamics_match_gymnasium(steer, gas):
    # 60 steps of gas 0.25, then 60 of a constant turn; road friction under every wheel in both envs, so the
    # comparison is of the car alone, not of two different tracks. -1.0 drives the steering joint to its limit.
    import gymnasium as gym

    actions = np.array([[0.0, 0.25, 0.0]] * 60 + [[steer, gas, 0.0]] * 60)
    genv = gym.make("CarRacing-v3").unwrapped
    genv.reset(seed=3)
    start = genv.car.hull.angle
    ref = []
    for a in actions:
        for wheel in genv.car.wheels:
            wheel.tiles.add(_RoadEverywhere)
        genv.step(a)
        hull = genv.car.hull
        ref.append([np.hypot(*hull.linearVelocity), hull.angularVelocity, hull.angle - start])
    genv.close()
    params = PARAMS.replace(grass_friction=1.0)
    _, st = _reset(jax.random.PRNGKey(3), params)

    def body(s, a):
        s = ENV.step_env(jax.random.PRNGKey(0), s, a, params)[1]
        return s, jnp.stack([jnp.linalg.norm(s.vel), s.ang_vel, s.angle - st.angle])

    ours = np.asarray(jax.lax.scan(body, st, jnp.asarray(actions, jnp.float32))[1])
    ref = np.asarray(ref)
    np.testing.assert_allclose(ours[:60], ref[:60], rtol=0.01, atol=0.1)  # the straight run-up
    turning = slice(70, 120)  # from 10 steps into the turn: gymnasium's compliant steering joint lags ours at first
    np.testing.assert_allclose(ours[turning, 0], ref[turning, 0], rtol=0.02)  # speed
    np.testing.assert_allclose(ours[turning, 1], ref[turning, 1], rtol=0.05)  # yaw rate
    np.testing.assert_allclose(ours[turning, 2], ref[turning, 2], atol=0.1)  # heading
    assert abs(ref[-1, 2]) > 3.0 and np.sign(ref[-1, 2]) == -np.sign(steer)  # it really turned, the right way


def test_bad_configuration_and_actions_raise_clear_errors(start):
    with pytest.raises(ConfigError, match="max_tiles"):
        cr.CarRacing(max_tiles=0)
    with pytest.raises(ConfigError, match="texture_size"):
        cr.CarRacing(texture_size=512)
    with pytest.raises(ConfigError, match="track_width"):
        cr.check_params(PARAMS.replace(track_width=50.0))
    cr.check_params(PARAMS)
    _, st = start
    with pytest.raises(ShapeError, match="CarRacingDiscrete"):
        ENV.step_env(jax.random.PRNGKey(0), st, jnp.zeros(2), PARAMS)


# ---------------------------------------------------------------------------------------------------------
def _returns(policy: str, n_tracks: int, seed: int) -> np.ndarray:
    """Undiscounted return of the first episode on each of `n_tracks` tracks (vmapped whole-episode scans)."""

    def episode(key):
        k0, key = jax.random.split(key)
        _, st = ENV.reset(k0, PARAMS)

        def body(carry, k):
            st, alive, ret = carry
            ka, ks = jax.random.split(k)
            a = cr.scripted_driver(st, PARAMS) if policy == "scripted" else cr.random_policy(ka, ENV, PARAMS)
            _, st, r, term, trunc, _ = ENV.step(ks, st, a, PARAMS)
            return (st, alive & ~(term | trunc), ret + jnp.where(alive, r, 0.0)), None

        (_, _, ret), _ = jax.lax.scan(body, (st, jnp.bool_(True), jnp.float32(0.0)),
                                      jax.random.split(key, PARAMS.max_steps_in_episode))
        return ret

    return np.asarray(jax.jit(jax.vmap(episode))(jax.random.split(jax.random.PRNGKey(seed), n_tracks)))


@pytest.mark.slow
def test_scripted_driver_scores_800_on_90_percent_of_50_tracks():
    returns = _returns("scripted", 50, seed=123)
    assert np.mean(returns >= 800) >= 0.9, np.round(returns)


@pytest.mark.slow
def test_random_policy_scores_below_zero_on_average():
    returns = _returns("random", 16, seed=7)
    assert returns.mean() < 0.0, returns
