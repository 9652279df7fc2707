"""The MinAtar CNN's im2col convolution is the same function as XLA's native one, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.rl.networks import MinAtarCNN, conv_valid_im2col


def test_im2col_conv_matches_lax_conv_and_its_gradient():
    x = jax.random.normal(jax.random.key(0), (5, 10, 10, 4))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 16))

    def ref(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    np.testing.assert_allclose(conv_valid_im2col(x, kernel), ref(x, kernel), rtol=1e-5, atol=1e-4)
    g_ours = jax.grad(lambda x, k: jnp.sum(jnp.sin(conv_valid_im2col(x, k))), (0, 1))(x, kernel)
    g_ref = jax.grad(lambda x, k: jnp.sum(jnp.sin(ref(x, k))), (0, 1))(x, kernel)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_minatar_cnn_impls_share_params_and_outputs():
    x = jax.random.uniform(jax.random.key(2), (3, 10, 10, 4))
    fast, native = MinAtarCNN(num_outputs=3, conv_impl="im2col"), MinAtarCNN(num_outputs=3, conv_impl="xla")
    params = fast.init(jax.random.key(0), x[0])
    assert params["params"]["Conv_0"]["kernel"].shape == (3, 3, 4, 16)  # nn.Conv's layout and name
    np.testing.assert_allclose(fast.apply(params, x), native.apply(params, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.apply(params, x[0]), native.apply(params, x)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="conv impl"):
        MinAtarCNN(num_outputs=3, conv_impl="fft").init(jax.random.key(0), x[0])
