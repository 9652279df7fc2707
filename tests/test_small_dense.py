"""Small Dense layers as multiply-adds (models.small_dense): the same function and gradients as nn.Dense."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.errors import ConfigError
from worldmodels_jax.models.small_dense import (SMALL_DENSE_MAX_ENTRIES, all_dense_small, dense_as_multiply_adds,
                                                is_small, resolve_small_dense, small_dense)


class Policy(nn.Module):
    hidden: tuple = (32,)
    outputs: int = 2
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = jnp.tanh(nn.Dense(width, use_bias=self.use_bias)(x))
        return nn.Dense(self.outputs)(x)


def _dots(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("dot_general")


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 4, 5)])
def test_multiply_adds_equal_a_matmul(shape):
    kx, kk, kb = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, shape)
    kernel, bias = jax.random.normal(kk, (5, 7)), jax.random.normal(kb, (7,))
    np.testing.assert_allclose(dense_as_multiply_adds(x, kernel, bias), x @ kernel + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dense_as_multiply_adds(x, kernel), x @ kernel, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expects 5"):
        dense_as_multiply_adds(x[..., :4], kernel)


@pytest.mark.parametrize("hidden,use_bias", [((32,), True), ((16, 8), False), ((64,), True)])
def test_a_population_of_policies_gives_the_same_outputs_and_gradients(hidden, use_bias):
    """vmapped over members' parameters (how the engine evaluates a population), values and parameter gradients
    equal plain Linen's; only the layers within the limits lose their dot."""
    policy = Policy(hidden, 2, use_bias)
    obs = jax.random.normal(jax.random.PRNGKey(1), (6, 4, 4))  # members × rollouts × obs
    params = jax.vmap(lambda k: policy.init(k, obs[0]))(jax.random.split(jax.random.PRNGKey(2), 6))

    def outputs(p, o):
        return jax.vmap(policy.apply)(p, o)

    def small(p, o):
        with small_dense():
            return outputs(p, o)

    np.testing.assert_allclose(small(params, obs), outputs(params, obs), rtol=1e-5, atol=1e-5)
    loss = lambda fn: jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(fn(p, obs)))))(params)  # noqa: E731
    for a, b in zip(jax.tree.leaves(loss(small)), jax.tree.leaves(loss(outputs))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    sizes = list(zip((4, *hidden), (*hidden, 2)))
    kept = sum(not is_small(k, n, SMALL_DENSE_MAX_ENTRIES) for k, n in sizes)
    assert _dots(small, params, obs) == kept < len(sizes) and _dots(outputs, params, obs) == len(sizes)


def test_limits_custom_dots_and_off():
    x = jnp.ones((3, 4))
    assert is_small(4, 32, 256) and is_small(32, 2, 256) and is_small(4, 64, 256)
    assert not is_small(32, 32, 256) and not is_small(33, 1, 10_000) and not is_small(4, 32, 0)
    custom = nn.Dense(8, dot_general=jax.lax.dot_general)
    params = custom.init(jax.random.PRNGKey(0), x)

    def apply_custom(p):
        with small_dense():
            return custom.apply(p, x)

    assert _dots(apply_custom, params) == 1  # a custom dot_general is the user's choice

    def apply_off(p):
        with small_dense(0):
            return nn.Dense(8).apply(p, x)

    assert _dots(apply_off, params) == 1


def test_a_fused_policy_is_one_whose_every_layer_is_small():
    x = jnp.ones((4,))
    params = lambda module: module.init(jax.random.PRNGKey(0), x)  # noqa: E731
    assert all_dense_small(params(Policy((32,))), 256)
    assert not all_dense_small(params(Policy((32,))), 0)  # off
    assert not all_dense_small(params(Policy((32, 32))), 256)  # 32 × 32 stays a dot
    conv = nn.Conv(4, (3,)).init(jax.random.PRNGKey(0), jnp.ones((1, 5, 2)))
    assert not all_dense_small(conv, 10_000)  # not a Dense layer
    assert not all_dense_small({}, 256)


def test_resolve_per_backend_and_bad_values():
    assert resolve_small_dense(None, "cpu") == SMALL_DENSE_MAX_ENTRIES
    assert resolve_small_dense(None, "gpu") == 0 and resolve_small_dense(None, "tpu") == 0
    assert resolve_small_dense(64, "gpu") == 64 and resolve_small_dense(0, "cpu") == 0
    with pytest.raises(ConfigError, match="small_dense"):
        resolve_small_dense(-1)
    with pytest.raises(ConfigError, match="max_entries >= 0"):
        small_dense(-5)
