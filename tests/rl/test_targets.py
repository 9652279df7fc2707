"""TD targets against hand-computed values, without jit, under jit and under vmap; the bootstrap rule."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.rl import targets

Q_TM1 = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
A_TM1 = jnp.array([0, 1])
R_T = jnp.array([1.0, -1.0])
DISCOUNT_T = jnp.array([0.9, 0.0])
Q_T = jnp.array([[2.0, 4.0, 1.0], [10.0, 0.0, 5.0]])
A_T = jnp.array([2, 0])
Q_T_SELECTOR = jnp.array([[9.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

# Hand computed:
# Q-learning: 1 + 0.9*4 - 1 = 3.6;   -1 + 0*10 - (-1) = 0
# SARSA:      1 + 0.9*1 - 1 = 0.9;   -1 + 0*10 + 1 = 0
# Double:     argmax selector = 0 -> 1 + 0.9*2 - 1 = 1.8;  argmax = 2 -> -1 + 0 + 1 = 0
EXPECTED = {
    "q_learning": np.array([3.6, 0.0]),
    "sarsa": np.array([0.9, 0.0]),
    "double_q_learning": np.array([1.8, 0.0]),
}


def _args(name):
    if name == "q_learning":
        return (Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T)
    if name == "sarsa":
        return (Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T, A_T)
    return (Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T, Q_T_SELECTOR)


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("mode", ["plain", "jit"])
def test_td_error_single_transition(name, mode):
    fn = getattr(targets, name)
    fn = jax.jit(fn) if mode == "jit" else fn
    for i in range(2):
        args = [x[i] for x in _args(name)]
        np.testing.assert_allclose(fn(*args), EXPECTED[name][i], atol=1e-6)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_td_error_vmapped_under_jit(name):
    fn = jax.jit(jax.vmap(getattr(targets, name)))
    np.testing.assert_allclose(fn(*_args(name)), EXPECTED[name], atol=1e-6)


def test_double_q_differs_from_q_learning_when_nets_disagree():
    # Online net prefers action 0 (value 2 under target net) while the max of the target net is 4.
    q = targets.q_learning(Q_TM1[0], A_TM1[0], R_T[0], DISCOUNT_T[0], Q_T[0])
    d = targets.double_q_learning(Q_TM1[0], A_TM1[0], R_T[0], DISCOUNT_T[0], Q_T[0], Q_T_SELECTOR[0])
    assert float(q - d) == pytest.approx(0.9 * (4.0 - 2.0))


def test_targets_have_no_gradient_through_bootstrap():
    grad = jax.grad(lambda q_t: targets.q_learning(Q_TM1[0], A_TM1[0], R_T[0], DISCOUNT_T[0], q_t))(Q_T[0])
    np.testing.assert_array_equal(grad, 0.0)


def test_huber_values():
    x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(targets.huber(x), [2.5, 0.5, 0.125, 0.0, 0.125, 1.5])


def test_bootstrap_discount_only_terminated_zeroes():
    terminated = jnp.array([False, True, False, True])
    truncated = jnp.array([False, False, True, True])
    del truncated  # by construction it has no say
    np.testing.assert_allclose(targets.bootstrap_discount(0.99, terminated), [0.99, 0.0, 0.99, 0.0])


def test_truncation_bootstraps_from_final_observation():
    """A CartPole step that hits the time limit: gymnax resets `obs`; we must use the pre-reset one."""
    env, params = gymnax.make("CartPole-v1")
    params = params.replace(max_steps_in_episode=3)
    obs, state = env.reset(jax.random.key(0), params)
    keys = jax.random.split(jax.random.key(1), 3)
    for k in keys:
        prev_state = state
        obs, state, reward, terminated, truncated, info = env.step(k, state, 0, params)
    assert bool(truncated) and not bool(terminated)
    boot = targets.bootstrap_observation(obs, info)
    # The real next state continues the physics (x moved), while the reset obs is a fresh start.
    assert not np.allclose(boot, obs)
    expected_x = prev_state.x + 0.02 * prev_state.x_dot
    np.testing.assert_allclose(boot[0], expected_x, atol=1e-6)
    # And the discount stays gamma on truncation, so the TD target uses Q(final_observation).
    assert float(targets.bootstrap_discount(0.99, terminated)) == pytest.approx(0.99)
