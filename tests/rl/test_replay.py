"""The on-device replay ring: wraparound, sizes and uniform sampling of valid slots only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.errors import ConfigError
from worldmodels_jax.rl.replay import replay_add, replay_add_batch, replay_init, replay_sample


def example():
    return {"obs": jnp.zeros(2, jnp.float32), "action": jnp.int32(0)}


def batch(values):
    values = jnp.asarray(values)
    return {"obs": jnp.stack([values, -values], 1).astype(jnp.float32), "action": values.astype(jnp.int32)}


def test_wraparound_overwrites_oldest():
    add = jax.jit(replay_add_batch)
    state = replay_init(example(), capacity=5)
    state = add(state, batch([0, 1, 2]))
    assert (int(state.insert), int(state.size)) == (3, 3)
    state = add(state, batch([3, 4, 5]))
    # 3, 4 fill slots 3, 4; 5 wraps to slot 0 and overwrites the oldest item (0).
    np.testing.assert_array_equal(state.data["action"], [5, 1, 2, 3, 4])
    np.testing.assert_array_equal(state.data["obs"][:, 1], [-5, -1, -2, -3, -4])
    assert (int(state.insert), int(state.size)) == (1, 5)
    state = add(state, batch([6, 7, 8, 9, 10]))  # a full lap
    np.testing.assert_array_equal(state.data["action"], [10, 6, 7, 8, 9])
    assert (int(state.insert), int(state.size)) == (1, 5)


def test_single_adds_in_a_scan():
    def body(state, i):
        return replay_add(state, {"obs": jnp.stack([i, -i]).astype(jnp.float32), "action": i}), None

    state, _ = jax.lax.scan(body, replay_init(example(), 4), jnp.arange(7))
    np.testing.assert_array_equal(state.data["action"], [4, 5, 6, 3])
    assert (int(state.insert), int(state.size)) == (3, 4)


def test_sampling_only_valid_slots_and_uniform():
    state = replay_add_batch(replay_init(example(), capacity=10), batch([10, 11, 12, 13]))
    sample = jax.jit(replay_sample, static_argnums=2)(state, jax.random.key(0), 40_000)
    actions = np.asarray(sample["action"])
    assert set(np.unique(actions)) == {10, 11, 12, 13}  # never an empty (zero) slot
    np.testing.assert_array_equal(sample["obs"][:, 0], actions)  # leaves stay aligned
    freq = np.bincount(actions - 10) / actions.size
    np.testing.assert_allclose(freq, 0.25, atol=0.01)  # std ~0.002


def test_sampling_keys_differ():
    state = replay_add_batch(replay_init(example(), 100), batch(np.arange(100)))
    a = replay_sample(state, jax.random.key(0), 32)["action"]
    b = replay_sample(state, jax.random.key(1), 32)["action"]
    assert not np.array_equal(a, b)


def test_vmapped_buffers_are_independent():
    states = jax.vmap(lambda v: replay_add_batch(replay_init(example(), 3), batch(v)))(
        jnp.array([[1, 2], [7, 8]])
    )
    np.testing.assert_array_equal(states.data["action"], [[1, 2, 0], [7, 8, 0]])
    np.testing.assert_array_equal(states.size, [2, 2])


def test_bad_sizes():
    with pytest.raises(ConfigError):
        replay_init(example(), 0)
    with pytest.raises(ConfigError, match="at once"):
        replay_add_batch(replay_init(example(), 2), batch([1, 2, 3]))
