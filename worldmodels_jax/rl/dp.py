"""Dynamic programming on tabular MDPs given as (P, R).

An MDP here is `TabularMDP(P[S, A, S'], R[S, A], terminal[S])`:
    P[s, a, s'] = Pr(s' | s, a)
    R[s, a]     = E[r | s, a]                      (expected reward of the transition)
    terminal[s] = True if s is absorbing and worth 0 (a hole or the goal of FrozenLake)
Transitions out of terminal states are ignored (their value is 0 by definition), so the direct solve
v = (I - gamma P_pi)^-1 R_pi is well posed even for gamma = 1 as long as the policy reaches a terminal.

Every solver is a pure function whose loop is a `lax.while_loop` with a tolerance and an iteration cap,
and returns the number of iterations used and the final residual so that a caller can tell a converged
answer from a capped one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from worldmodels_jax.errors import ConfigError, EnvError, ShapeError, check


@struct.dataclass
class TabularMDP:
    """A finite MDP as arrays (a pytree, so it can be vmapped over, e.g. over slipperiness)."""

    P: jax.Array  # (S, A, S) transition probabilities
    R: jax.Array  # (S, A) expected immediate reward
    terminal: jax.Array  # (S,) bool: absorbing states of value 0

    @property
    def num_states(self) -> int:
        return self.P.shape[0]

    @property
    def num_actions(self) -> int:
        return self.P.shape[1]


def make_mdp(P, R, terminal=None) -> TabularMDP:
    """Validates shapes and that each P[s, a] is a distribution; returns a `TabularMDP` (host-side)."""
    P = np.asarray(P, dtype=np.float32)
    R = np.asarray(R, dtype=np.float32)
    check(P.ndim == 3 and P.shape[0] == P.shape[2], ShapeError, f"P must be (S, A, S), got {P.shape}")
    check(R.shape == P.shape[:2], ShapeError, f"R must be (S, A) = {P.shape[:2]}, got {R.shape}")
    check(bool(np.all(P >= 0)), ConfigError, "P has negative entries")
    check(bool(np.allclose(P.sum(-1), 1.0, atol=1e-5)), ConfigError, "every P[s, a, :] must sum to 1")
    terminal = np.zeros(P.shape[0], bool) if terminal is None else np.asarray(terminal, bool)
    check(terminal.shape == (P.shape[0],), ShapeError, f"terminal must be (S,), got {terminal.shape}")
    return TabularMDP(P=jnp.asarray(P), R=jnp.asarray(R), terminal=jnp.asarray(terminal))


def mrp_as_mdp(P, R, terminal=None) -> TabularMDP:
    """A Markov reward process (P[S, S], R[S]) as a one-action MDP."""
    P = np.asarray(P, dtype=np.float32)
    R = np.asarray(R, dtype=np.float32)
    return make_mdp(P[:, None, :], R[:, None], terminal)


class PolicyEvaluation(NamedTuple):
    v: jax.Array  # (S,) state values
    iterations: jax.Array  # sweeps used (0 for the direct solve)
    residual: jax.Array  # final max-norm change (0 for the direct solve)


class ControlResult(NamedTuple):
    v: jax.Array  # (S,) optimal state values
    q: jax.Array  # (S, A) optimal action values
    policy: jax.Array  # (S,) greedy deterministic policy (int32)
    iterations: jax.Array  # sweeps (value iteration) or improvement steps (policy iteration)
    residual: jax.Array  # final max-norm change of v; 0 once policy iteration is stable


def _check_gamma(gamma: float) -> None:
    if isinstance(gamma, (int, float)):
        check(0.0 <= float(gamma) <= 1.0, ConfigError, f"gamma must be in [0, 1], got {gamma}")


def policy_matrix(policy: jax.Array, num_actions: int) -> jax.Array:
    """A deterministic policy (S,) int as a stochastic one (S, A); a stochastic (S, A) one is returned as is."""
    policy = jnp.asarray(policy)
    if policy.ndim == 1:
        return jax.nn.one_hot(policy, num_actions, dtype=jnp.float32)
    if policy.ndim != 2 or policy.shape[-1] != num_actions:
        raise ShapeError(f"a stochastic policy must be (S, {num_actions}), got {policy.shape}")
    return policy


def induced_mrp(mdp: TabularMDP, policy: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(P_pi[S, S], R_pi[S]) under `policy`, with transitions out of terminal states removed."""
    pi = policy_matrix(policy, mdp.num_actions)
    live = (~mdp.terminal).astype(jnp.float32)
    P_pi = jnp.einsum("sa,sat->st", pi, mdp.P) * live[:, None]
    R_pi = jnp.einsum("sa,sa->s", pi, mdp.R) * live
    return P_pi, R_pi


def q_from_v(mdp: TabularMDP, v: jax.Array, gamma: float) -> jax.Array:
    """One-step look-ahead q[s, a] = R[s, a] + gamma sum_s' P[s, a, s'] v[s'] (0 at terminal states)."""
    live = (~mdp.terminal).astype(jnp.float32)
    return (mdp.R + gamma * jnp.einsum("sat,t->sa", mdp.P, v)) * live[:, None]


def evaluate_policy_direct(mdp: TabularMDP, policy: jax.Array, gamma: float) -> PolicyEvaluation:
    """v_pi by the linear solve (I - gamma P_pi) v = R_pi."""
    _check_gamma(gamma)
    P_pi, R_pi = induced_mrp(mdp, policy)
    eye = jnp.eye(mdp.num_states, dtype=P_pi.dtype)
    v = jnp.linalg.solve(eye - gamma * P_pi, R_pi)
    return PolicyEvaluation(v=v, iterations=jnp.int32(0), residual=jnp.float32(0.0))


def evaluate_policy_iterative(
    mdp: TabularMDP, policy: jax.Array, gamma: float, tol: float = 1e-6, max_iters: int = 10_000
) -> PolicyEvaluation:
    """v_pi by repeated Bellman expectation backups until max |v_k+1 - v_k| < tol or `max_iters` sweeps."""
    _check_gamma(gamma)
    P_pi, R_pi = induced_mrp(mdp, policy)

    def cond(carry):
        _, i, delta = carry
        return jnp.logical_and(i < max_iters, delta >= tol)

    def body(carry):
        v, i, _ = carry
        v_new = R_pi + gamma * P_pi @ v
        return v_new, i + 1, jnp.max(jnp.abs(v_new - v))

    v0 = jnp.zeros(mdp.num_states, jnp.float32)
    v, iterations, residual = jax.lax.while_loop(cond, body, (v0, jnp.int32(0), jnp.float32(jnp.inf)))
    return PolicyEvaluation(v=v, iterations=iterations, residual=residual)


def value_iteration(
    mdp: TabularMDP, gamma: float, tol: float = 1e-6, max_iters: int = 10_000
) -> ControlResult:
    """Bellman optimality backups v <- max_a q(v) until the max-norm change is below `tol`."""
    _check_gamma(gamma)

    def cond(carry):
        _, i, delta = carry
        return jnp.logical_and(i < max_iters, delta >= tol)

    def body(carry):
        v, i, _ = carry
        v_new = q_from_v(mdp, v, gamma).max(axis=1)
        return v_new, i + 1, jnp.max(jnp.abs(v_new - v))

    v0 = jnp.zeros(mdp.num_states, jnp.float32)
    v, iterations, residual = jax.lax.while_loop(cond, body, (v0, jnp.int32(0), jnp.float32(jnp.inf)))
    q = q_from_v(mdp, v, gamma)
    return ControlResult(v=v, q=q, policy=greedy(q), iterations=iterations, residual=residual)


def greedy(q: jax.Array, tie_tol: float = 1e-5) -> jax.Array:
    """argmax_a q[s, a], breaking near-ties (within `tie_tol`) towards the lowest action index."""
    return jnp.argmax(q >= q.max(axis=-1, keepdims=True) - tie_tol, axis=-1).astype(jnp.int32)


def policy_iteration(
    mdp: TabularMDP,
    gamma: float,
    max_iters: int = 1_000,
    eval_tol: float | None = None,
    eval_max_iters: int = 10_000,
    tie_tol: float = 1e-5,
) -> ControlResult:
    """Alternates exact evaluation and greedy improvement until the policy is stable.

    Evaluation is the direct solve when `eval_tol` is None, otherwise iterative with that tolerance.
    Improvement keeps the current action unless another is better by more than `tie_tol`, so ties
    cannot make the loop cycle.
    """
    _check_gamma(gamma)

    def evaluate(policy):
        if eval_tol is None:
            return evaluate_policy_direct(mdp, policy, gamma).v
        return evaluate_policy_iterative(mdp, policy, gamma, eval_tol, eval_max_iters).v

    def improve(policy, v):
        q = q_from_v(mdp, v, gamma)
        q_current = jnp.take_along_axis(q, policy[:, None], axis=1)[:, 0]
        candidate = greedy(q, tie_tol)
        better = q.max(axis=1) > q_current + tie_tol
        return jnp.where(better, candidate, policy)

    def cond(carry):
        _, _, i, stable = carry
        return jnp.logical_and(i < max_iters, ~stable)

    def body(carry):
        policy, _, i, _ = carry
        v = evaluate(policy)
        new_policy = improve(policy, v)
        return new_policy, v, i + 1, jnp.all(new_policy == policy)

    policy0 = jnp.zeros(mdp.num_states, jnp.int32)
    v0 = jnp.zeros(mdp.num_states, jnp.float32)
    policy, v, iterations, stable = jax.lax.while_loop(
        cond, body, (policy0, v0, jnp.int32(0), jnp.bool_(False))
    )
    v = evaluate(policy)
    q = q_from_v(mdp, v, gamma)
    residual = jnp.where(stable, 0.0, jnp.inf).astype(jnp.float32)
    return ControlResult(v=v, q=q, policy=policy, iterations=iterations, residual=residual)


def success_probability(
    mdp: TabularMDP, policy: jax.Array, start: int, goal: jax.Array, horizon: int
) -> jax.Array:
    """Exact probability that `policy` started in `start` is in a `goal` state after `horizon` steps.

    With absorbing goal states this is the success rate of an episode truncated at `horizon` steps,
    the number a rollout estimate of FrozenLake's success rate converges to.
    """
    pi = policy_matrix(policy, mdp.num_actions)
    P_pi = jnp.einsum("sa,sat->st", pi, mdp.P)
    # Absorbing terminal states keep their mass (the env would reset; the episode has ended).
    P_pi = jnp.where(mdp.terminal[:, None], jnp.eye(mdp.num_states), P_pi)
    d0 = jax.nn.one_hot(start, mdp.num_states, dtype=jnp.float32)
    d = jax.lax.fori_loop(0, horizon, lambda _, d: d @ P_pi, d0)
    return jnp.sum(d * goal.astype(jnp.float32))


# --------------------------------------------------------------------------------------------------
# Exact models of gymnax environments
# --------------------------------------------------------------------------------------------------

TABULAR_ENVS = ("FrozenLake-misc",)


class FrozenLakeModel(NamedTuple):
    mdp: TabularMDP
    start: int  # start state index
    goal: np.ndarray  # (S,) bool
    horizon: int  # the env's max_steps_in_episode


def frozen_lake_model(env, params=None) -> FrozenLakeModel:
    """The exact (P, R) of a gymnax `FrozenLake` instance, read off its map, slipperiness and rewards.

    Mirrors `FrozenLake.step_env`: the chosen move is the intended action with probability
    `success_rate` and otherwise one of the two perpendicular actions (a - 1) % 4, (a + 1) % 4 with
    equal probability (only when slippery); moves are clipped at the walls; the reward is that of the
    landing tile (goal, hole, other); holes and the goal are absorbing terminal states.
    """
    from gymnax.environments.misc.frozen_lake import _DIRECTIONS, GOAL, HOLE, FrozenLake

    if not isinstance(env, FrozenLake):
        raise EnvError(f"frozen_lake_model needs a gymnax FrozenLake, got {type(env).__name__}")
    params = env.default_params if params is None else params
    desc = np.asarray(env.desc)
    nrow, ncol = desc.shape
    S, A = nrow * ncol, 4
    directions = np.asarray(_DIRECTIONS)
    rewards = np.asarray(env.reward_schedule, dtype=np.float64)  # goal, hole, other
    tile_reward = np.where(desc == GOAL, rewards[0], np.where(desc == HOLE, rewards[1], rewards[2]))
    terminal = np.isin(desc.reshape(-1), (HOLE, GOAL))
    if env.is_slippery:
        sr = env.success_rate
        outcomes = lambda a: ((a, sr), ((a - 1) % A, (1 - sr) / 2), ((a + 1) % A, (1 - sr) / 2))  # noqa: E731
    else:
        outcomes = lambda a: ((a, 1.0),)  # noqa: E731
    P = np.zeros((S, A, S))
    R = np.zeros((S, A))
    for s in range(S):
        row, col = divmod(s, ncol)
        for a in range(A):
            if terminal[s]:
                P[s, a, s] = 1.0
                continue
            for move, prob in outcomes(a):
                r = min(max(row + directions[move][0], 0), nrow - 1)
                c = min(max(col + directions[move][1], 0), ncol - 1)
                P[s, a, r * ncol + c] += prob
                R[s, a] += prob * tile_reward[r, c]
    start = int(np.argmax(desc.reshape(-1) == 0))
    return FrozenLakeModel(
        mdp=make_mdp(P, R, terminal),
        start=start,
        goal=desc.reshape(-1) == GOAL,
        horizon=int(params.max_steps_in_episode),
    )


def tabular_model(env_id: str, **env_kwargs) -> FrozenLakeModel:
    """The exact tabular model of a gymnax env id, or a clear `EnvError` if it has none."""
    import gymnax

    if env_id not in TABULAR_ENVS:
        raise EnvError(
            f"{env_id!r} has no tabular (P, R) model; dynamic programming supports {list(TABULAR_ENVS)} "
            "(e.g. --env FrozenLake-misc with map_name 4x4 or 8x8, slippery or not)."
        )
    env, params = gymnax.make(env_id, **env_kwargs)
    return frozen_lake_model(env, params)
