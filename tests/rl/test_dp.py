"""Dynamic programming against MDPs solved by hand, and the FrozenLake model against the env itself."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.errors import ConfigError, EnvError
from worldmodels_jax.rl import dp

# Silver's student MRP: C1 C2 C3 Pass Pub FB Sleep (Sleep terminal).
STUDENT_P = np.array(
    [
        [0, 0.5, 0, 0, 0, 0.5, 0],
        [0, 0, 0.8, 0, 0, 0, 0.2],
        [0, 0, 0, 0.6, 0.4, 0, 0],
        [0, 0, 0, 0, 0, 0, 1.0],
        [0.2, 0.4, 0.4, 0, 0, 0, 0],
        [0.1, 0, 0, 0, 0, 0.9, 0],
        [0, 0, 0, 0, 0, 0, 1.0],
    ]
)
STUDENT_R = np.array([-2, -2, -2, 10, 1, -1, 0.0])
STUDENT_TERMINAL = np.array([0, 0, 0, 0, 0, 0, 1], bool)
# Solved by hand for gamma = 1 (see the derivation in docs/rl.md): Pub = 65/81, C2 = 118/81, ...
STUDENT_V_GAMMA1 = np.array([-1016, 118, 350, 810, 65, -1826, 0]) / 81.0


def student():
    return dp.mrp_as_mdp(STUDENT_P, STUDENT_R, STUDENT_TERMINAL)


def test_student_mrp_direct_solve_gamma1():
    result = jax.jit(lambda m: dp.evaluate_policy_direct(m, jnp.zeros(7, jnp.int32), 1.0))(student())
    np.testing.assert_allclose(result.v, STUDENT_V_GAMMA1, atol=1e-4)


def test_student_mrp_iterative_matches_and_reports_iterations():
    result = dp.evaluate_policy_iterative(student(), jnp.zeros(7, jnp.int32), 1.0, tol=1e-7, max_iters=5000)
    np.testing.assert_allclose(result.v, STUDENT_V_GAMMA1, atol=1e-3)
    assert 10 < int(result.iterations) < 5000
    assert float(result.residual) < 1e-7


def test_iterative_evaluation_respects_cap():
    result = dp.evaluate_policy_iterative(student(), jnp.zeros(7, jnp.int32), 1.0, tol=0.0, max_iters=3)
    assert int(result.iterations) == 3
    # After 3 sweeps from v0 = 0: v(Pass) = 10, v(Sleep) = 0, v(C3) = -2 + 0.6*10 + 0.4*v2(Pub)
    # v1 = R; v2(Pub) = 1 + 0.2*-2 + 0.4*-2 + 0.4*-2 = -1; v3(C3) = -2 + 6 - 0.4 = 3.6
    np.testing.assert_allclose(result.v[3], 10.0)
    np.testing.assert_allclose(result.v[2], 3.6, atol=1e-6)


def test_student_mrp_discounted_closed_form():
    gamma = 0.9
    expected = np.linalg.solve(np.eye(7) - gamma * STUDENT_P * (~STUDENT_TERMINAL)[:, None], STUDENT_R)
    # Pass -> Sleep: v(Pass) = 10 exactly, whatever gamma.
    assert expected[3] == pytest.approx(10.0)
    got = dp.evaluate_policy_direct(student(), jnp.zeros(7, jnp.int32), gamma).v
    np.testing.assert_allclose(got, expected, atol=1e-4)


def two_state_mdp():
    # s0: a0 stay (+1), a1 -> s1 (0); s1: a0 stay (+2), a1 -> s0 (0).
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[0, 1, 1] = P[1, 0, 1] = P[1, 1, 0] = 1.0
    R = np.array([[1.0, 0.0], [2.0, 0.0]])
    return dp.make_mdp(P, R)


@pytest.mark.parametrize("solver", ["vi", "pi", "pi_iterative"])
def test_two_state_control_by_hand(solver):
    # v*(s1) = 2 / (1 - 0.9) = 20; v*(s0) = max(1 / 0.1, 0.9 * 20) = 18; pi* = [go, stay].
    mdp = two_state_mdp()
    if solver == "vi":
        result = jax.jit(lambda m: dp.value_iteration(m, 0.9, tol=1e-6))(mdp)
    elif solver == "pi":
        result = jax.jit(lambda m: dp.policy_iteration(m, 0.9))(mdp)
    else:
        result = dp.policy_iteration(mdp, 0.9, eval_tol=1e-6)
    np.testing.assert_allclose(result.v, [18.0, 20.0], atol=1e-3)
    np.testing.assert_allclose(result.q, [[1 + 0.9 * 18, 18.0], [20.0, 0.9 * 18]], atol=1e-3)
    np.testing.assert_array_equal(result.policy, [1, 0])


def test_value_iteration_cap_and_residual():
    result = dp.value_iteration(two_state_mdp(), 0.9, tol=0.0, max_iters=2)
    assert int(result.iterations) == 2
    # v1 = [1, 2]; v2 = [max(1 + 0.9, 0 + 1.8), max(2 + 1.8, 0.9)] = [1.9, 3.8]; residual = 1.8
    np.testing.assert_allclose(result.v, [1.9, 3.8], atol=1e-6)
    np.testing.assert_allclose(result.residual, 1.8, atol=1e-6)


def test_make_mdp_rejects_bad_rows():
    with pytest.raises(ConfigError, match="sum to 1"):
        dp.make_mdp(np.full((2, 1, 2), 0.4), np.zeros((2, 1)))
    with pytest.raises(ConfigError, match="gamma"):
        dp.value_iteration(two_state_mdp(), 1.5)


@pytest.mark.parametrize("map_name", ["4x4", "8x8"])
@pytest.mark.parametrize("slippery", [True, False])
def test_frozen_lake_value_iteration_equals_policy_iteration(map_name, slippery):
    model = dp.tabular_model("FrozenLake-misc", map_name=map_name, is_slippery=slippery)
    vi = dp.value_iteration(model.mdp, 0.99, tol=1e-7)
    pi = dp.policy_iteration(model.mdp, 0.99)
    np.testing.assert_allclose(vi.v, pi.v, atol=1e-4)
    # Same greedy values; policies may differ only where actions tie.
    q_at_vi = jnp.take_along_axis(pi.q, vi.policy[:, None], 1)[:, 0]
    np.testing.assert_allclose(q_at_vi, pi.q.max(1), atol=1e-4)
    if not slippery:
        # Deterministic lake: v*(start) = gamma^(shortest path length - 1) (6 moves on 4x4, 14 on 8x8).
        steps = 6 if map_name == "4x4" else 14
        np.testing.assert_allclose(vi.v[model.start], 0.99 ** (steps - 1), atol=1e-5)


def test_frozen_lake_4x4_known_optimum():
    # Gymnasium FrozenLake 4x4 slippery, gamma 0.99: the optimal start value is the well-known 0.542
    # (e.g. Sutton & Barto-style solutions; it is also what policy iteration gives).
    model = dp.tabular_model("FrozenLake-misc", map_name="4x4", is_slippery=True)
    vi = dp.value_iteration(model.mdp, 0.99, tol=1e-8)
    assert float(vi.v[model.start]) == pytest.approx(0.542, abs=2e-3)
    # The optimal policy's success probability within 100 steps (exact, by propagating the state law).
    success = dp.success_probability(model.mdp, vi.policy, model.start, model.goal, model.horizon)
    assert 0.7 < float(success) < 0.8


def test_frozen_lake_model_matches_env_transitions():
    """Empirical next-state frequencies of the gymnax env match P[s, a] (4x4, slippery)."""
    env, params = gymnax.make("FrozenLake-misc", map_name="4x4", is_slippery=True)
    model = dp.frozen_lake_model(env, params)
    s, a, n = 6, 1, 3000  # a frozen tile, action "down"
    _, state = env.reset(jax.random.key(0), params)
    state = state.replace(position=jnp.int32(s))

    def one(key):
        obs, _, reward, terminated, _, info = env.step(key, state, a, params)
        return info["final_observation"], reward

    nxt, rew = jax.vmap(one)(jax.random.split(jax.random.key(1), n))
    freq = np.bincount(np.asarray(nxt), minlength=16) / n
    np.testing.assert_allclose(freq, model.mdp.P[s, a], atol=0.035)
    assert set(np.flatnonzero(model.mdp.P[s, a])) == {5, 7, 10}  # left, right, down from (1, 2)
    np.testing.assert_allclose(float(np.mean(rew)), float(model.mdp.R[s, a]), atol=1e-6)
    # Goal reward: from 14 moving right reaches 15 w.p. 1/3.
    np.testing.assert_allclose(model.mdp.R[14, 2], 1 / 3, atol=1e-6)
    assert bool(model.mdp.terminal[5]) and bool(model.mdp.terminal[15]) and not bool(model.mdp.terminal[0])


def test_no_tabular_model_is_a_clear_error():
    with pytest.raises(EnvError, match="no tabular"):
        dp.tabular_model("CartPole-v1")
