"""Pixel CartPole: gymnax CartPole's dynamics, an image observation, registered with gymnax."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

import worldmodels_jax  # noqa: F401
from worldmodels_jax.envs.cartpole_pixels import POLE, SIZE, TRACK_ROW, X_SCALE, render


def test_registered_and_image_observation(key):
    env, params = gymnax.make("CartPolePixels-v1")
    obs, state = env.reset(key, params)
    assert obs.shape == (64, 64, 3) and obs.dtype == jnp.uint8
    assert env.observation_space(params).shape == (64, 64, 3)


def test_dynamics_equal_gymnax_cartpole_step_by_step(key):
    pixel_env, params = gymnax.make("CartPolePixels-v1")
    state_env, _ = gymnax.make("CartPole-v1")
    _, s_pix = pixel_env.reset(key, params)
    _, s_ref = state_env.reset(key, params)
    step_pix = jax.jit(pixel_env.step)
    step_ref = jax.jit(state_env.step)
    for t in range(60):
        k = jax.random.fold_in(key, t)
        action = jnp.int32(t % 3 == 0)
        obs, s_pix, r1, term1, trunc1, _ = step_pix(k, s_pix, action, params)
        _, s_ref, r2, term2, trunc2, _ = step_ref(k, s_ref, action, params)
        for field in ("x", "x_dot", "theta", "theta_dot"):
            np.testing.assert_allclose(getattr(s_pix, field), getattr(s_ref, field), rtol=1e-6)
        assert float(r1) == float(r2) and bool(term1) == bool(term2) and bool(trunc1) == bool(trunc2)
        np.testing.assert_allclose(obs.astype(int), np.asarray(render(s_pix.x, s_pix.theta)).astype(int), atol=1)


def test_render_shows_cart_position_and_pole_angle():
    def pole_pixels(image):
        return np.all(np.abs(image.astype(int) - np.asarray(POLE, int)) < 20, axis=-1)

    centre = np.asarray(render(jnp.float32(0.0), jnp.float32(0.0)))
    right = np.asarray(render(jnp.float32(1.0), jnp.float32(0.0)))
    tilted = np.asarray(render(jnp.float32(0.0), jnp.float32(0.2)))
    cols = lambda img: np.nonzero(pole_pixels(img))[1]  # noqa: E731
    assert abs(cols(centre).mean() - SIZE / 2) < 1.0
    assert abs(cols(right).mean() - (SIZE / 2 + X_SCALE)) < 1.0
    # tilted right: the top of the pole is right of the pivot
    rows, columns = np.nonzero(pole_pixels(tilted))
    assert columns[rows.argmin()] > SIZE / 2 + 3
    # light-grey background above, dark track at its row
    assert (centre[2, 2] == 224).all() and centre[int(TRACK_ROW), 2].max() < 100


def test_render_is_antialiased_and_subpixel_sensitive():
    a = np.asarray(render(jnp.float32(0.0), jnp.float32(0.0))).astype(int)
    b = np.asarray(render(jnp.float32(0.03), jnp.float32(0.0))).astype(int)  # 0.3 pixel shift
    assert np.abs(a - b).sum() > 0
    intermediate = (a > 5) & (a < 220) & (a != 202) & (a != 152) & (a != 101) & (a != 40)
    assert intermediate.any()  # partial-coverage pixels exist


def test_vmap_and_jit_over_envs(key):
    env, params = gymnax.make("CartPolePixels-v1")
    keys = jax.random.split(key, 8)
    obs, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)
    assert obs.shape == (8, 64, 64, 3)
    obs2, *_ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, states, jnp.ones(8, jnp.int32), params)
    assert obs2.shape == (8, 64, 64, 3)


def test_single_render_step_equals_gymnax_default_step_through_auto_resets(key):
    from gymnax.environments.environment import Environment

    env, params = gymnax.make("CartPolePixels-v1")
    ours = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    reference = jax.jit(jax.vmap(lambda k, s, a, p: Environment.step(env, k, s, a, p), in_axes=(0, 0, 0, None)))
    _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, 16), params)
    resets = 0
    for t in range(80):
        keys = jax.random.split(jax.random.fold_in(key, t), 16)
        actions = (jnp.arange(16) + t) % 4 == 0  # mostly pushes left: episodes end and auto-reset
        a = ours(keys, state, actions.astype(jnp.int32), params)
        b = reference(keys, state, actions.astype(jnp.int32), params)
        for x, y in zip(jax.tree.leaves(a[:5]), jax.tree.leaves(b[:5])):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a[5]["final_observation"], b[5]["final_observation"])
        resets += int(jnp.sum(a[3] | a[4]))
        state = a[1]
    assert resets >= 16
