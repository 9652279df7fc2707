"""The fast stride-2 layers compute the same function, with the same parameters, as Flax's nn.Conv / nn.ConvTranspose.

Known answers: the plain Flax layers (XLA's native convolution ops) on the same inputs and parameters, forward and
gradients w.r.t. the input and every parameter, for every layer shape of the paper's V plus odd sizes; and a
hand-computed 1-D transposed convolution that pins Flax's kernel orientation.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models import layers as L

# (input H, W, in, out, kernel) of the paper's V (z = 32): encoder 64->31->14->6->2, decoder 1->5->13->30->64.
PAPER_CONVS = [(64, 64, 3, 32, 4), (31, 31, 32, 64, 4), (14, 14, 64, 128, 4), (6, 6, 128, 256, 4)]
PAPER_DECONVS = [(1, 1, 1024, 128, 5), (5, 5, 128, 64, 5), (13, 13, 64, 32, 6), (30, 30, 32, 3, 6)]
# Odd sizes: odd and even kernels, odd and even inputs, non-square inputs, kernel 2 and 3 and 7.
ODD_CONVS = [(9, 7, 3, 5, 3), (10, 11, 2, 4, 2), (12, 9, 3, 2, 5), (8, 8, 1, 3, 4), (15, 16, 4, 3, 7)]
ODD_DECONVS = [(4, 3, 3, 5, 3), (3, 5, 2, 4, 4), (2, 2, 3, 3, 2), (1, 3, 4, 2, 5), (6, 4, 2, 3, 7), (7, 7, 5, 1, 6)]

BATCH = 2


def _normal(seed: int, shape) -> jax.Array:
    """Standard normal test inputs from numpy: a jax.random draw compiles once per shape (~0.4 s each here)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _assert_close(actual, expected, rtol=2e-4):
    expected = np.asarray(expected)
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=rtol * scale)


def _pair(kind: str, out: int, k: int, impl: str):
    if kind == "conv":
        return nn.Conv(out, (k, k), strides=(2, 2), padding="VALID"), L.make_conv(out, k, impl=impl)
    return nn.ConvTranspose(out, (k, k), strides=(2, 2), padding="VALID"), L.make_conv_transpose(out, k, impl=impl)


def _check_same_function(kind, h, w, cin, cout, k, impl="fast"):
    ref_layer, fast_layer = _pair(kind, cout, k, impl)
    kp = jax.random.PRNGKey(h * 1000 + w * 10 + k)
    x = _normal(h * 1000 + w * 10 + k, (BATCH, h, w, cin))
    ref_params = jax.jit(ref_layer.init)(kp, x)
    fast_params = jax.jit(fast_layer.init)(kp, x)
    # Same parameter tree, shapes and (same initialisers, same key) values.
    assert jax.tree.structure(ref_params) == jax.tree.structure(fast_params)
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(fast_params)):
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Give the bias non-zero values so its gradient and broadcast are tested too.
    params = jax.tree.map(  # numpy: eager jnp ops here compiled once per parameter shape
        lambda p: np.asarray(p) + 0.1 * np.arange(p.size, dtype=p.dtype).reshape(p.shape) / p.size, ref_params)

    y_ref = jax.jit(ref_layer.apply)(params, x)
    y_fast = jax.jit(fast_layer.apply)(params, x)
    assert y_fast.shape == y_ref.shape
    _assert_close(y_fast, y_ref)

    # A loss that weights every output differently, so a transposed or shifted output would show.
    weights = _normal(7, y_ref.shape)

    def loss(layer, p, x):
        return jnp.sum(weights * jnp.tanh(layer.apply(p, x)))

    g_ref = jax.jit(jax.grad(lambda p, x: loss(ref_layer, p, x), argnums=(0, 1)))(params, x)
    g_fast = jax.jit(jax.grad(lambda p, x: loss(fast_layer, p, x), argnums=(0, 1)))(params, x)
    _assert_close(g_fast[1], g_ref[1])
    for a, b in zip(jax.tree.leaves(g_fast[0]), jax.tree.leaves(g_ref[0])):
        _assert_close(a, b)


@pytest.mark.parametrize("h,w,cin,cout,k", PAPER_CONVS + ODD_CONVS)
def test_conv_matches_flax(h, w, cin, cout, k):
    _check_same_function("conv", h, w, cin, cout, k)


@pytest.mark.parametrize("h,w,cin,cout,k", PAPER_DECONVS + ODD_DECONVS)
def test_conv_transpose_matches_flax(h, w, cin, cout, k):
    _check_same_function("deconv", h, w, cin, cout, k)


def test_paper_output_sizes():
    """64->31->14->6->2 and 1->5->13->30->64, i.e. (in - 1) * 2 + k for the transposed convolutions."""
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    for _, _, _, cout, k in PAPER_CONVS:
        kernel = jax.ShapeDtypeStruct((k, k, x.shape[-1], cout), jnp.float32)
        x = jax.eval_shape(lambda x, k: L.conv_s2(x, k, impl="fast"), x, kernel)
    assert x.shape == (1, 2, 2, 256)
    y = jax.ShapeDtypeStruct((1, 1, 1, 1024), jnp.float32)
    sizes = []
    for _, _, _, cout, k in PAPER_DECONVS:
        kernel = jax.ShapeDtypeStruct((k, k, y.shape[-1], cout), jnp.float32)
        y = jax.eval_shape(lambda y, k: L.conv_transpose_s2(y, k, impl="fast"), y, kernel)
        sizes.append(y.shape[1])
    assert sizes == [5, 13, 30, 64] and y.shape == (1, 64, 64, 3)


def test_kernel_orientation_known_answer():
    """Flax's ConvTranspose (transpose_kernel=False) is out[o] = sum_i x[i] * k[K-1-(o-2i)]; check by hand in 1-D."""
    x = jnp.array([1.0, 10.0]).reshape(1, 1, 2, 1)
    kernel = jnp.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)  # kh = 1 keeps it 1-D along W
    # Taps flipped: [3, 2, 1]; x[0] lands at 0..2, x[1] at 2..4 -> [3, 2, 1 + 30, 20, 10].
    expected = np.array([3.0, 2.0, 31.0, 20.0, 10.0])
    for impl in ("xla", "fast"):
        # kernel height 1 is below the stride, so build a (2, 3) kernel whose second row is zero and crop.
        k2 = jnp.concatenate([jnp.zeros_like(kernel), kernel], axis=0)  # rows: [0, taps]
        y = L.conv_transpose_s2(x, k2, impl=impl)
        assert y.shape == (1, 2, 5, 1)
        np.testing.assert_allclose(np.asarray(y[0, 0, :, 0]), expected)
        np.testing.assert_allclose(np.asarray(y[0, 1, :, 0]), 0.0)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, k: L.conv_transpose_s2_phase(x, k, method="im2col"),
        lambda x, k: L.conv_transpose_s2_phase(x, k, method="conv"),
        lambda x, k: L.conv_transpose_s2_phase(x, k, method="conv4"),
        L.conv_transpose_s2_col2im,
        L.conv_transpose_s2_fast,
    ],
    ids=["phase-im2col", "phase-conv", "phase-conv4", "col2im", "fast"],
)
@pytest.mark.parametrize("h,w,cin,cout,k", [(5, 5, 6, 4, 5), (4, 3, 3, 2, 6), (1, 1, 8, 3, 5), (3, 2, 2, 2, 3)])
def test_every_transpose_formulation(fn, h, w, cin, cout, k):
    x = _normal(0, (BATCH, h, w, cin))
    kernel = _normal(1, (k, k, cin, cout))
    _assert_close(jax.jit(fn)(x, kernel), L.conv_transpose_s2_xla(x, kernel))


@pytest.mark.parametrize("fn", [L.conv_s2_im2col, L.conv_s2_s2d, L.conv_s2_s2d_im2col, L.conv_s2_s2d_col2im,
                                L.conv_s2_fast, L.conv_s2_forward],
                         ids=["im2col", "s2d-conv", "s2d-im2col", "s2d-col2im", "fast", "forward"])
@pytest.mark.parametrize("h,w,cin,cout,k", [(31, 31, 4, 5, 4), (10, 9, 3, 2, 2), (9, 12, 2, 3, 4)])
def test_every_conv_formulation(fn, h, w, cin, cout, k):
    x = _normal(0, (BATCH, h, w, cin))
    kernel = _normal(1, (k, k, cin, cout))
    _assert_close(jax.jit(fn)(x, kernel), L.conv_s2_xla(x, kernel))


@settings(max_examples=8, deadline=None)
@given(
    h=st.integers(1, 7), w=st.integers(1, 7), k=st.integers(2, 7), cin=st.integers(1, 4), cout=st.integers(1, 4)
)
def test_conv_transpose_any_size(h, w, k, cin, cout):
    x = _normal(h + 10 * w, (1, h, w, cin))
    kernel = _normal(k, (k, k, cin, cout))
    y = jax.jit(L.conv_transpose_s2, static_argnames="impl")(x, kernel, impl="fast")
    assert y.shape == (1, 2 * (h - 1) + k, 2 * (w - 1) + k, cout)
    _assert_close(y, L.conv_transpose_s2_xla(x, kernel))


@settings(max_examples=8, deadline=None)
@given(extra_h=st.integers(0, 6), extra_w=st.integers(0, 6), k=st.integers(1, 6), cin=st.integers(1, 4))
def test_conv_any_size(extra_h, extra_w, k, cin):
    x = _normal(extra_h + 7 * extra_w, (1, k + extra_h, k + extra_w, cin))
    kernel = _normal(k, (k, k, cin, 3))
    fast = jax.jit(L.conv_s2, static_argnames="impl")(x, kernel, impl="fast")
    _assert_close(fast, L.conv_s2_xla(x, kernel))


def test_jit_vmap_and_unbatched_inputs():
    layer = L.make_conv_transpose(4, 5, impl="fast")
    x = _normal(0, (3, 2, 5, 5, 6))  # two leading batch axes
    params = layer.init(jax.random.PRNGKey(1), x[0])
    batched = jax.jit(layer.apply)(params, x.reshape(6, 5, 5, 6)).reshape(3, 2, 13, 13, 4)
    mapped = jax.jit(jax.vmap(layer.apply, in_axes=(None, 0)))(params, x)
    _assert_close(mapped, batched)
    single = layer.apply(params, x[0, 0])  # (H, W, C) like Flax
    assert single.shape == (13, 13, 4)
    _assert_close(single, batched[0, 0])
    ref = nn.ConvTranspose(4, (5, 5), strides=(2, 2), padding="VALID").apply(params, x[0, 0])
    _assert_close(single, ref)

    conv = L.make_conv(3, 4, impl="fast")
    cparams = conv.init(jax.random.PRNGKey(2), jnp.zeros((1, 14, 14, 2)))
    xc = _normal(3, (4, 1, 14, 14, 2))
    _assert_close(jax.vmap(conv.apply, in_axes=(None, 0))(cparams, xc)[:, 0], conv.apply(cparams, xc[:, 0]))


def test_impl_selection():
    assert L.resolve_impl("auto", backend="cpu") == "fast"
    assert L.resolve_impl("auto", backend="gpu") == "xla"
    assert L.resolve_impl("auto", backend="tpu") == "xla"
    assert L.resolve_impl("xla", backend="cpu") == "xla"
    assert L.resolve_impl("fast", backend="gpu") == "fast"
    assert L.resolve_impl("forward", backend="cpu") == "forward"
    assert L.resolve_impl("forward", backend="gpu") == "xla"
    assert L.resolve_impl("auto") == ("fast" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ConfigError, match="conv impl"):
        L.resolve_impl("cudnn")
    with pytest.raises(ConfigError):
        L.make_conv(4, 3, impl="nope")


def test_xla_impl_is_flax_hlo():
    """impl='xla' emits XLA's native convolution ops (cuDNN on GPU); impl='fast' emits none."""
    x = jnp.zeros((2, 13, 13, 8))
    for make, params_shape in ((L.make_conv_transpose, (6, 6, 8, 4)), (L.make_conv, (4, 4, 8, 4))):
        params = {"params": {"kernel": jnp.zeros(params_shape), "bias": jnp.zeros((4,))}}
        hlo_xla = jax.jit(make(4, params_shape[0], impl="xla").apply).lower(params, x).as_text()
        hlo_fast = jax.jit(make(4, params_shape[0], impl="fast").apply).lower(params, x).as_text()
        assert "convolution" in hlo_xla
        assert "convolution" not in hlo_fast and "dot_general" in hlo_fast


def test_shape_errors():
    layer = L.make_conv(4, 4, impl="fast")
    with pytest.raises(ShapeError, match="NHWC"):
        layer.init(jax.random.PRNGKey(0), jnp.zeros((8, 8)))
    with pytest.raises(ShapeError, match="kernel"):
        L.conv_s2(jnp.zeros((1, 8, 8, 3)), jnp.zeros((4, 4, 2, 5)), impl="fast")
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        L.conv_s2(jnp.zeros((1, 3, 3, 2)), jnp.zeros((4, 4, 2, 5)), impl="fast")
    with pytest.raises(ShapeError, match="kernel"):
        L.conv_transpose_s2(jnp.zeros((1, 3, 3, 3)), jnp.zeros((4, 4, 2, 5)), impl="fast")


def test_paper_vae_same_loss_and_gradients_with_fast_layers():
    """The whole paper V (4,348,547 params) gives the same loss and gradients with conv_impl 'fast' and 'xla'."""
    vae = pytest.importorskip("worldmodels_jax.models.vae")
    config_xla = vae.VAEConfig(z_size=32, conv_impl="xla")
    config_fast = vae.VAEConfig(z_size=32, conv_impl="fast")
    params = vae.init_vae(jax.random.PRNGKey(0), config_fast)
    assert vae.param_count(params) == 4_348_547
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))

    def loss(config):
        model = vae.ConvVAE(config)

        def f(p):
            recon, mu, logvar, _ = model.apply({"params": p}, images, jax.random.PRNGKey(2))
            return vae.vae_loss(images, recon, mu, logvar, config.kl_tolerance)[0]

        return jax.jit(jax.value_and_grad(f))(params)

    (l_xla, g_xla), (l_fast, g_fast) = loss(config_xla), loss(config_fast)
    _assert_close(l_fast, l_xla, rtol=1e-5)
    assert jax.tree.structure(g_xla) == jax.tree.structure(g_fast)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_xla)):
        _assert_close(a, b, rtol=1e-3)


# ------------------------------------------------------------------------------------------ phase layout
def test_phase_layout_is_a_permutation_and_round_trips():
    y = _normal(0, (2, 6, 4, 3))
    p = L.to_phase_layout(y)
    assert p.shape == (12, 2, 3, 2)
    # [(py, px, c), b, m, n] = y[b, 2m+py, 2n+px, c]
    np.testing.assert_array_equal(np.asarray(p[(1 * 2 + 0) * 3 + 2, 1, 2, 1]), np.asarray(y[1, 5, 2, 2]))
    np.testing.assert_array_equal(np.asarray(L.from_phase_layout(p)), np.asarray(y))
    np.testing.assert_allclose(float(jnp.sum(p ** 2)), float(jnp.sum(y ** 2)), rtol=1e-6)
    with pytest.raises(ShapeError, match="even height and width"):
        L.to_phase_layout(jnp.zeros((1, 5, 4, 3)))


@pytest.mark.parametrize("h,w,cin,cout,k", [(30, 30, 32, 3, 6), (4, 3, 3, 2, 6), (3, 5, 2, 4, 4), (2, 2, 3, 3, 2)])
def test_conv_transpose_phases_is_the_xla_layer_in_phase_layout_values_and_gradients(h, w, cin, cout, k):
    x = _normal(h + 10 * k, (BATCH, h, w, cin))
    kernel = _normal(h + 10 * k + 1, (k, k, cin, cout))
    ref = L.to_phase_layout(L.conv_transpose_s2_xla(x, kernel))
    _assert_close(jax.jit(L.conv_transpose_s2_phases)(x, kernel), ref)
    weights = _normal(h + 10 * k + 2, ref.shape)

    def loss(fn):
        return lambda x, kernel: jnp.sum(weights * jnp.tanh(fn(x, kernel)))

    g_ref = jax.jit(jax.grad(loss(lambda x, k: L.to_phase_layout(L.conv_transpose_s2_xla(x, k))), (0, 1)))(x, kernel)
    g_new = jax.jit(jax.grad(loss(L.conv_transpose_s2_phases), (0, 1)))(x, kernel)
    for a, b in zip(g_new, g_ref):
        _assert_close(a, b)


def test_forward_impl_picks_per_layer_shape_and_keeps_values_and_gradients():
    """'forward': a narrow layer (the small V's RGB layer 3 -> 8) is XLA's convolution after space-to-depth, a wide
    one (the paper's RGB layer 3 -> 32) XLA's convolution as is, and one with a 6x6 output (14x14x16 -> 32) the
    "fast" matmul with no convolution; values and gradients are nn.Conv's in every case."""
    cases = ((16, 3, 8, "tensor<2x2x12x8xf32>"), (16, 3, 32, "tensor<4x4x3x32xf32>"), (14, 16, 32, None))
    for size, cin, cout, kernel in cases:
        x = _normal(0, (BATCH, size, size, cin))
        layer, ref = L.make_conv(cout, 4, impl="forward"), nn.Conv(cout, (4, 4), strides=(2, 2), padding="VALID")
        params = ref.init(jax.random.PRNGKey(1), x)
        hlo = jax.jit(layer.apply).lower(params, x).as_text()
        convs = [line for line in hlo.splitlines() if "convolution" in line]
        if kernel is None:
            assert not convs and "dot_general" in hlo
        else:
            # Space-to-depth turns the 4x4 stride-2 kernel into a 2x2 stride-1 one over 4x the channels.
            assert len(convs) == 1 and kernel in convs[0]
        _assert_close(layer.apply(params, x), ref.apply(params, x))
        grads = [jax.grad(lambda p, x, m=m: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1))(params, x)
                 for m in (layer, ref)]
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
            _assert_close(a, b)


@pytest.mark.parametrize("impl", ["fast", "xla", "forward"])
def test_conv_transpose_module_phase_layout_equals_its_nhwc_output(impl):
    layer = L.make_conv_transpose(3, 6, impl=impl)
    x = _normal(0, (BATCH, 5, 4, 8))
    params = layer.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * np.arange(p.size, dtype=p.dtype).reshape(p.shape) / p.size,
                          params)
    _assert_close(layer.apply(params, x, phase_layout=True), L.to_phase_layout(layer.apply(params, x)))
    with pytest.raises(ShapeError, match="even kernel"):
        odd = L.make_conv_transpose(3, 5, impl=impl)
        odd.init(jax.random.PRNGKey(1), x, phase_layout=True)


def test_flat_drawn_lecun_normal_is_flax_s_bit_for_bit():
    """`lecun_normal_flat` (the layers' kernel initialiser) draws flat and reshapes: Flax's values exactly."""
    for shape in [(4, 4, 3, 32), (4, 4, 64, 128), (5, 5, 32, 3), (6, 6, 64, 32), (1024, 32), (3, 3, 1, 16)]:
        for seed in range(2):
            key = jax.random.PRNGKey(seed)
            ours, flax_s = L.lecun_normal_flat()(key, shape), nn.initializers.lecun_normal()(key, shape)
            assert ours.shape == flax_s.shape and ours.dtype == flax_s.dtype
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(flax_s))
    module = L.ConvS2(8, 4)
    params = module.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))["params"]
    reference = nn.Conv(8, (4, 4), strides=(2, 2), padding="VALID").init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
    np.testing.assert_array_equal(np.asarray(params["kernel"]), np.asarray(reference["params"]["kernel"]))
    with pytest.raises(ShapeError, match="at least 2 dimensions"):
        L.lecun_normal_flat()(jax.random.PRNGKey(0), (7,))
