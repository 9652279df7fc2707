"""TakeCover: gymnax contract, hit/health logic, truncation, rendering goldens, calibration."""

from __future__ import annotations

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import worldmodels_jax  # noqa: F401  (registers TakeCover-v0)
from worldmodels_jax.envs import takecover as tc
from worldmodels_jax.errors import ConfigError, ShapeError

ENV = tc.TakeCover()
PARAMS = ENV.default_params
# no new monsters and no throws: only what a test places in the state moves
QUIET = PARAMS.replace(spawn_prob=0.0, spawn_prob_growth=0.0, fire_prob=0.0, initial_monsters=0)
TRANSITION = jax.jit(ENV.transition)


def _empty_state(params=QUIET, agent_x=0.0, health=None, time=0):
    state = ENV.init_state(jax.random.PRNGKey(0), params)
    return state.replace(
        agent_x=jnp.float32(agent_x),
        health=jnp.float32(params.max_health if health is None else health),
        monster_alive=jnp.zeros_like(state.monster_alive),
        time=jnp.int32(time),
    )


def _with_fireball(state, slot, x, y, vx, vy):
    return state.replace(
        fireball_xy=state.fireball_xy.at[slot].set(jnp.array([x, y], jnp.float32)),
        fireball_vel=state.fireball_vel.at[slot].set(jnp.array([vx, vy], jnp.float32)),
        fireball_alive=state.fireball_alive.at[slot].set(True),
    )


def _with_monster(state, slot, x, cooldown=0):
    return state.replace(
        monster_x=state.monster_x.at[slot].set(x),
        monster_alive=state.monster_alive.at[slot].set(True),
        monster_cooldown=state.monster_cooldown.at[slot].set(cooldown),
    )


# ---------------------------------------------------------------- contract
def test_registered_and_spaces():
    env, params = gymnax.make("TakeCover-v0")
    assert isinstance(env, tc.TakeCover)
    assert params.max_steps_in_episode == 2100
    assert env.num_actions == 3 and env.action_space(params).n == 3
    assert env.observation_space(params).shape == (64, 64, 3)
    assert env.observation_space(params).dtype == jnp.uint8
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == (64, 64, 3) and obs.dtype == jnp.uint8
    assert float(state.health) == 100.0 and int(state.time) == 0
    assert int(state.monster_alive.sum()) == 2 and not bool(state.fireball_alive.any())


def test_jit_vmap_scan_and_determinism():
    n, steps = 4, 30

    @jax.jit
    def run(key):
        keys = jax.random.split(key, n)
        obs, state = jax.vmap(ENV.reset, in_axes=(0, None))(keys, PARAMS)

        def body(carry, key_t):
            state = carry
            k_act, k_env = jax.random.split(key_t)
            action = jax.vmap(tc.uniform_random_action)(jax.random.split(k_act, n))
            obs, state, reward, term, trunc, _ = jax.vmap(ENV.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_env, n), state, action, PARAMS
            )
            return state, (obs, reward, term, trunc, state.agent_x)

        return jax.lax.scan(body, state, jax.random.split(key, steps))[1]

    obs, reward, term, trunc, xs = run(jax.random.PRNGKey(3))
    assert obs.shape == (steps, n, 64, 64, 3) and obs.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(reward), 1.0)
    assert not bool(trunc.any())
    again = run(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(obs), np.asarray(again[0]))
    np.testing.assert_array_equal(np.asarray(xs), np.asarray(again[4]))
    other = run(jax.random.PRNGKey(4))
    assert not np.array_equal(np.asarray(xs), np.asarray(other[4]))
    # the agent strafes: positions are multiples of agent_speed, inside the room
    assert np.abs(np.asarray(xs)).max() <= PARAMS.room_width / 2 - PARAMS.agent_radius + 1e-6


def test_vmap_over_params():
    params = jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * 2), QUIET)
    params = params.replace(damage=jnp.array([10.0, 35.0]))
    state = _with_fireball(_empty_state(), 0, 0.0, 0.05, 0.0, -0.1)
    out = jax.vmap(ENV.step, in_axes=(None, None, None, 0))(jax.random.PRNGKey(0), state, 1, params)
    np.testing.assert_allclose(np.asarray(out[1].health), [90.0, 65.0])


# ---------------------------------------------------------------- dynamics
def test_agent_moves_and_is_clipped_at_walls():
    state = _empty_state(agent_x=0.0)
    for action, dx in [(0, -0.04), (1, 0.0), (2, 0.04)]:
        nxt, _ = TRANSITION(jax.random.PRNGKey(0), state, action, QUIET)
        assert float(nxt.agent_x) == pytest.approx(dx, abs=1e-7)
    wall = QUIET.room_width / 2 - QUIET.agent_radius
    nxt, _ = TRANSITION(jax.random.PRNGKey(0), _empty_state(agent_x=wall), 2, QUIET)
    assert float(nxt.agent_x) == pytest.approx(wall)


def test_fireball_on_collision_course_costs_exactly_the_damage():
    state = _with_fireball(_empty_state(agent_x=0.3), 0, 0.3, 0.05, 0.0, -0.1)
    obs, nxt, reward, term, trunc, info = ENV.step(jax.random.PRNGKey(0), state, 1, QUIET)
    assert float(nxt.health) == 100.0 - QUIET.damage
    assert int(info["hits"]) == 1 and int(nxt.hits) == 1
    assert not bool(nxt.fireball_alive.any())  # consumed
    assert not bool(term) and not bool(trunc) and float(reward) == 1.0


def test_hit_radius_boundary_and_misses():
    reach = QUIET.agent_radius + QUIET.fireball_radius  # 0.14
    for offset, expect_hit in [(reach - 0.01, True), (-(reach - 0.01), True), (reach + 0.01, False)]:
        state = _with_fireball(_empty_state(), 0, offset, 0.05, 0.0, -0.1)
        nxt, hits = TRANSITION(jax.random.PRNGKey(0), state, 1, QUIET)
        assert int(hits) == int(expect_hit), offset
        assert float(nxt.health) == 100.0 - QUIET.damage * expect_hit
        assert not bool(nxt.fireball_alive.any())  # crossed the line either way
    # the agent dodges by stepping out of the way in the same step: 0.12 + 0.04 = 0.16 > 0.14
    state = _with_fireball(_empty_state(), 0, -0.12, 0.05, 0.0, -0.1)
    assert int(TRANSITION(jax.random.PRNGKey(0), state, 2, QUIET)[1]) == 0
    # lateral velocity: resolved at the crossing point (x = 0.5 - 0.5·0.1·... reaches 0.3 at y = 0)
    state = _with_fireball(_empty_state(agent_x=0.0), 0, 0.5, 0.05, -0.4, -0.1)
    assert int(TRANSITION(jax.random.PRNGKey(0), state, 1, QUIET)[1]) == 0  # crosses at 0.3
    state = _with_fireball(_empty_state(agent_x=0.2), 0, 0.5, 0.05, -0.4, -0.1)
    assert int(TRANSITION(jax.random.PRNGKey(0), state, 1, QUIET)[1]) == 1  # 0.3 - 0.2 < 0.14


def test_two_hits_in_one_step_and_fireball_in_flight_untouched():
    state = _with_fireball(_empty_state(), 0, 0.0, 0.05, 0.0, -0.1)
    state = _with_fireball(state, 5, 0.05, 0.08, 0.0, -0.1)
    state = _with_fireball(state, 7, 0.0, 1.0, 0.0, -0.1)
    nxt, hits = TRANSITION(jax.random.PRNGKey(0), state, 1, QUIET)
    assert int(hits) == 2 and float(nxt.health) == 100.0 - 2 * QUIET.damage
    assert np.asarray(nxt.fireball_alive).tolist() == [i == 7 for i in range(ENV.num_fireballs)]
    np.testing.assert_allclose(np.asarray(nxt.fireball_xy[7]), [0.0, 0.9], atol=1e-6)


def test_health_reaching_zero_terminates_and_auto_resets():
    state = _with_fireball(_empty_state(health=QUIET.damage), 0, 0.0, 0.05, 0.0, -0.1)
    obs, nxt, reward, term, trunc, info = ENV.step(jax.random.PRNGKey(0), state, 1, QUIET)
    assert bool(term) and not bool(trunc) and bool(info["terminated"])
    assert float(info["health"]) == 0.0
    assert float(nxt.health) == QUIET.max_health and int(nxt.time) == 0  # auto-reset
    assert info["final_observation"].shape == (64, 64, 3)
    # one point of health more survives the same hit
    state = state.replace(health=jnp.float32(QUIET.damage + 1))
    _, nxt, _, term, _, _ = ENV.step(jax.random.PRNGKey(0), state, 1, QUIET)
    assert not bool(term) and float(nxt.health) == 1.0


def test_truncation_at_2100():
    state = _empty_state(params=PARAMS, time=2098)
    _, nxt, _, term, trunc, _ = ENV.step(jax.random.PRNGKey(0), state, 1, PARAMS)
    assert not bool(term) and not bool(trunc) and int(nxt.time) == 2099
    _, nxt, reward, term, trunc, _ = ENV.step(jax.random.PRNGKey(0), nxt, 1, PARAMS)
    assert bool(trunc) and not bool(term) and float(reward) == 1.0
    assert int(nxt.time) == 0  # auto-reset after truncation


def test_monster_throws_at_where_the_agent_is():
    params = QUIET.replace(fire_prob=1.0, fire_cooldown=1000)
    state = _with_monster(_empty_state(agent_x=-0.3), 0, 0.5)
    nxt, _ = TRANSITION(jax.random.PRNGKey(0), state, 1, params)
    assert int(nxt.fireball_alive.sum()) == 1 and int(nxt.monster_cooldown[0]) == 1000
    xy, vel = np.asarray(nxt.fireball_xy[0]), np.asarray(nxt.fireball_vel[0])
    np.testing.assert_allclose(xy, [0.5, params.room_depth])
    np.testing.assert_allclose(np.linalg.norm(vel), params.fireball_speed, rtol=1e-5)
    np.testing.assert_allclose(vel / np.linalg.norm(vel), np.array([-0.8, -4.0]) / np.hypot(0.8, 4.0), rtol=1e-5)

    # standing still, it lands exactly once, after depth / speed_y steps, for exactly `damage`
    def body(state, key):
        state, hits = ENV.transition(key, state, 1, params)
        return state, hits

    final, hits = jax.lax.scan(body, nxt, jax.random.split(jax.random.PRNGKey(1), 60))
    steps_to_land = int(np.ceil(params.room_depth / -vel[1]))
    assert np.asarray(hits).tolist() == [int(t == steps_to_land - 1) for t in range(60)]
    assert float(final.health) == 100.0 - params.damage


def test_throwers_limited_by_free_fireball_slots():
    env = tc.TakeCover(num_monsters=4, num_fireballs=2)
    params = QUIET.replace(fire_prob=1.0, fire_cooldown=7)
    state = env.init_state(jax.random.PRNGKey(0), params)
    state = state.replace(monster_alive=jnp.ones(4, bool), monster_cooldown=jnp.zeros(4, jnp.int32))
    nxt, _ = jax.jit(env.transition)(jax.random.PRNGKey(0), state, 1, params)
    assert int(nxt.fireball_alive.sum()) == 2
    # the first two ready monsters threw; the others wait for a free slot, still ready
    assert np.asarray(nxt.monster_cooldown).tolist() == [7, 7, 0, 0]
    np.testing.assert_allclose(np.asarray(nxt.fireball_xy[:, 0]), np.asarray(state.monster_x[:2]))


def test_spawning_fills_slots_and_respects_zero_rate():
    params = QUIET.replace(spawn_prob=1.0)
    state = _empty_state()

    def body(state, key):
        state, _ = ENV.transition(key, state, 1, params)
        return state, state.monster_alive.sum()

    _, counts = jax.lax.scan(body, state, jax.random.split(jax.random.PRNGKey(0), 12))
    assert np.asarray(counts).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8]
    _, counts = jax.lax.scan(
        lambda s, k: (ENV.transition(k, s, 1, QUIET)[0],) * 2, state, jax.random.split(jax.random.PRNGKey(0), 50)
    )
    assert int(counts.monster_alive.sum(axis=1).max()) == 0


def test_invariants_along_a_held_random_rollout():
    """Health, positions, slots and speeds stay consistent over a long episode of the paper's data policy."""
    params = PARAMS.replace(max_health=1e6)  # no death: the full 600 steps, up to 8 monsters

    def body(carry, key):
        state, held = carry
        key_pol, key_env = jax.random.split(key)
        action, held = tc.held_random_action(key_pol, held)
        nxt, hits = ENV.transition(key_env, state, action, params)
        return (nxt, held), (nxt, hits, action)

    state0 = ENV.init_state(jax.random.PRNGKey(7), params)
    rollout = jax.jit(lambda k: jax.lax.scan(body, (state0, tc.held_random_init()), jax.random.split(k, 600)))
    _, (traj, hits, actions) = rollout(jax.random.PRNGKey(8))
    traj = jax.tree.map(np.asarray, traj)
    hits, actions = np.asarray(hits), np.asarray(actions)
    np.testing.assert_array_equal(traj.time, np.arange(1, 601))
    np.testing.assert_array_equal(traj.hits, np.cumsum(hits))
    np.testing.assert_allclose(traj.health, params.max_health - params.damage * traj.hits)
    assert 5 <= traj.hits[-1] <= 150  # a random policy does get hit, but dodges some
    lim = params.room_width / 2 - params.agent_radius
    assert np.all(np.abs(traj.agent_x) <= lim + 1e-6)
    dx = np.diff(np.concatenate([[0.0], traj.agent_x]))
    free = (np.abs(traj.agent_x) < lim - 1e-4) & (np.abs(np.concatenate([[0.0], traj.agent_x[:-1]])) < lim - 1e-4)
    np.testing.assert_allclose(dx[free], ((actions - 1) * params.agent_speed)[free], atol=1e-5)
    alive = traj.fireball_alive
    assert alive.any(axis=1).mean() > 0.5 and alive.sum(axis=1).max() <= ENV.num_fireballs
    y = traj.fireball_xy[..., 1]
    assert np.all((y[alive] > 0) & (y[alive] <= params.room_depth + 1e-6))
    np.testing.assert_allclose(np.linalg.norm(traj.fireball_vel[alive], axis=-1), params.fireball_speed, rtol=1e-4)
    assert np.all(traj.fireball_xy[~alive] == 0) and np.all(traj.fireball_vel[~alive] == 0)
    count = traj.monster_alive.sum(axis=1)
    assert np.all(np.diff(count) >= 0) and count[0] >= 2 and count[-1] == ENV.num_monsters


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="num_monsters"):
        tc.TakeCover(num_monsters=0)
    with pytest.raises(ShapeError, match="scalar action"):
        ENV.step(jax.random.PRNGKey(0), _empty_state(), jnp.array([1, 2]), QUIET)
    with pytest.raises(ConfigError, match="fireball_speed"):
        tc.check_params(PARAMS.replace(fireball_speed=-1.0))
    with pytest.raises(ConfigError, match="eye_height"):
        tc.check_params(PARAMS.replace(eye_height=2.0))
    with pytest.raises(ConfigError, match="policy"):
        tc.survival_steps(ENV, PARAMS, "greedy", jax.random.PRNGKey(0), 4)
    tc.check_params(PARAMS)


# ---------------------------------------------------------------- rendering goldens
def _render(state, params=QUIET):
    return np.asarray(jax.jit(ENV.render)(state, params)).astype(int)


def _expected(rgb, depth):
    return np.round(np.array(rgb) * float(tc.shade(depth))).astype(int)


def _is_fireball(img):
    return np.all(img == np.array(tc.FIREBALL_RGB, int), axis=-1)


def test_render_empty_room_golden_pixels():
    img = _render(_empty_state())
    f = ENV.focal
    # bottom row: floor at forward depth eye / |v|; top row: ceiling at (wall - eye) / v
    v_bottom = (32 - 63.5) / f
    np.testing.assert_array_equal(img[63, 32], _expected(tc.FLOOR_RGB, QUIET.eye_height / -v_bottom))
    ceiling_depth = (QUIET.wall_height - QUIET.eye_height) / -v_bottom
    np.testing.assert_array_equal(img[0, 32], _expected(tc.CEILING_RGB, ceiling_depth))
    # the whole bottom band is floor (brown: red > blue), the whole top band ceiling (blue > red)
    assert np.all(img[56:, :, 0] > img[56:, :, 2]) and np.all(img[:8, :, 2] > img[:8, :, 0])
    # centre of the view: the far wall at depth room_depth + camera_back
    np.testing.assert_array_equal(img[32, 32], _expected(tc.FAR_WALL_RGB, QUIET.room_depth + QUIET.camera_back))
    # leftmost column at the horizon: the left side wall at depth (room_width/2) / |u|
    u_left = (0.5 - 32) / f
    np.testing.assert_array_equal(img[32, 0], _expected(tc.SIDE_WALL_RGB, (QUIET.room_width / 2) / -u_left))
    # strafing shifts the far wall on screen: exactly the columns whose ray misses it show a side wall
    for agent_x in [0.0, 0.5, -0.7]:
        row = _render(_empty_state(agent_x=agent_x))[32]
        side = row[:, 0] == row[:, 1]  # side wall is grey (R == G), the far wall greenish (G > R)
        u = (np.arange(64) + 0.5 - 32) / f
        t_far = QUIET.room_depth + QUIET.camera_back
        expect = (u < (-1.0 - agent_x) / t_far) | (u > (1.0 - agent_x) / t_far)
        np.testing.assert_array_equal(side, expect)


def test_fireball_grows_as_it_approaches():
    f, r = ENV.focal, QUIET.fireball_radius * QUIET.fireball_draw_scale
    counts = []
    for y in [3.5, 2.5, 1.5, 0.8, 0.3]:
        img = _render(_with_fireball(_empty_state(agent_x=0.2), 0, 0.2, y, 0.0, -0.1))
        count = int(_is_fireball(img).sum())
        radius_px = r * f / (y + QUIET.camera_back)
        area = np.pi * radius_px**2
        assert abs(count - area) <= 2 * np.pi * radius_px + 4, (y, count, area)
        ys, xs = np.nonzero(_is_fireball(img))
        assert abs(xs.mean() - 31.5) < 0.6 and abs(ys.mean() - 31.5) < 0.6  # centred: dead ahead
        counts.append(count)
    assert counts == sorted(counts) and counts[-1] > 15 * counts[0]  # ideal (4.0 / 0.8)² = 25


def test_fireball_screen_position_and_occlusion():
    f = ENV.focal
    depth = 2.0 + QUIET.camera_back
    img = _render(_with_fireball(_empty_state(), 0, 0.4, 2.0, 0.0, -0.1))
    ys, xs = np.nonzero(_is_fireball(img))
    assert abs(xs.mean() - (32 + 0.4 * f / depth - 0.5)) < 0.6
    # a monster dead ahead is drawn as a rectangle of monster colour on the floor line
    state = _with_monster(_empty_state(), 0, 0.0)
    img = _render(state)
    m_depth = QUIET.room_depth - 0.05 + QUIET.camera_back
    monster = np.all(img == _expected(tc.MONSTER_RGB, m_depth), axis=-1)
    width_px, height_px = QUIET.monster_width * f / m_depth, QUIET.monster_height * f / m_depth
    assert abs(monster.any(axis=0).sum() - width_px) <= 1 and abs(monster.any(axis=1).sum() - height_px) <= 1
    assert monster[32 + int(QUIET.eye_height * f / m_depth) - 1, 32]  # stands on the floor
    # a near fireball in front of the monster occludes it
    img = _render(_with_fireball(state, 3, 0.0, 1.0, 0.0, -0.1))
    assert _is_fireball(img)[32, 32] and not np.all(img == _expected(tc.MONSTER_RGB, m_depth), axis=-1)[32, 32]


def test_dead_slots_are_not_drawn():
    state = _with_fireball(_empty_state(), 0, 0.0, 1.0, 0.0, -0.1)
    state = state.replace(fireball_alive=jnp.zeros_like(state.fireball_alive))
    np.testing.assert_array_equal(_render(state), _render(_empty_state()))


# ---------------------------------------------------------------- policies and calibration
def test_held_random_policy_holds_for_1_to_10_frames():
    def body(held, key):
        action, nxt = tc.held_random_action(key, held)
        return nxt, (action, held.frames_left, nxt.frames_left)

    _, (actions, left_before, left_after) = jax.lax.scan(
        body, tc.held_random_init(), jax.random.split(jax.random.PRNGKey(0), 5000)
    )
    actions, before, after = map(np.asarray, (actions, left_before, left_after))
    fresh = before == 0
    holds = after[fresh] + 1  # length of each newly drawn hold
    assert holds.min() == 1 and holds.max() == 10 and abs(holds.mean() - 5.5) < 0.3
    np.testing.assert_array_equal(actions[1:][~fresh[1:]], actions[:-1][~fresh[1:]])  # held
    assert set(np.unique(actions).tolist()) == {0, 1, 2}
    uniform = np.asarray(jax.vmap(tc.uniform_random_action)(jax.random.split(jax.random.PRNGKey(1), 3000)))
    assert np.all(np.abs(np.bincount(uniform, minlength=3) / 3000 - 1 / 3) < 0.04)


def test_random_policies_survive_like_the_original():
    # the original DoomTakeCover random policy: 210 ± 108 steps
    uniform = np.asarray(tc.survival_steps(ENV, PARAMS, "uniform", jax.random.PRNGKey(0), 256))
    held = np.asarray(tc.survival_steps(ENV, PARAMS, "held", jax.random.PRNGKey(1), 256))
    assert 150 <= uniform.mean() <= 300, uniform.mean()
    assert 150 <= held.mean() <= 300, held.mean()
    assert uniform.max() < PARAMS.max_steps_in_episode and uniform.min() >= 5 * 2  # 5 hits, ≥ 2 throws' flight


@pytest.mark.slow  # ~10 s of CPU, over 20 s wall on a busy 2-core machine
def test_scripted_dodger_survives_at_least_3x_random():
    # capped at 1000 steps to keep the test short; uncapped it reaches 2100 (docs/takecover.md)
    params = PARAMS.replace(max_steps_in_episode=1000)
    uniform = np.asarray(tc.survival_steps(ENV, params, "uniform", jax.random.PRNGKey(3), 64))
    dodger = np.asarray(tc.survival_steps(ENV, params, "dodger", jax.random.PRNGKey(4), 32))
    assert dodger.mean() >= 3 * uniform.mean(), (dodger.mean(), uniform.mean())
    assert dodger.max() == 1000  # the cap: survival_steps stops at max_steps_in_episode
