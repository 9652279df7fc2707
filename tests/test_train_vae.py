"""Training V: the micro-batched Adam step is the whole-batch step, and a short run learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.errors import ConfigError
from worldmodels_jax.models.vae import ConvVAE, VAEConfig, init_vae
from worldmodels_jax.train.vae import VAETrainConfig, make_vae_step, make_vae_trainer, resolve_microbatch

SMALL = VAEConfig(z_size=4, encoder_widths=(4, 8, 8, 8), decoder_widths=(8, 8, 4), decoder_dense=16)


@pytest.mark.parametrize(
    "batch, microbatch, backend, expected",
    [(100, 0, "cpu", 20), (64, 0, "cpu", 16), (32, 0, "cpu", 16), (20, 0, "cpu", 20), (7, 0, "cpu", 7),
     (101, 0, "cpu", 101), (100, 0, "gpu", 100), (100, 0, "tpu", 100), (100, 25, "cpu", 25), (100, 100, "cpu", 100)],
)
def test_resolve_microbatch(batch, microbatch, backend, expected):
    assert resolve_microbatch(batch, microbatch, backend) == expected


def test_microbatch_must_divide_the_batch():
    with pytest.raises(ConfigError, match="divide batch_size"):
        VAETrainConfig(batch_size=100, microbatch=30)
    with pytest.raises(ConfigError, match="microbatch"):
        VAETrainConfig(batch_size=100, microbatch=-1)


def test_reconstruct_with_the_keys_noise_is_call(key):
    params = init_vae(key, SMALL)
    images = jax.random.uniform(jax.random.PRNGKey(1), (3, 64, 64, 3))
    model = ConvVAE(SMALL)
    apply = jax.jit(model.apply, static_argnames="method")  # one compile, not one per op (eager: ~5x slower here)
    k = jax.random.PRNGKey(5)
    called = apply({"params": params}, images, k)
    noise = jax.random.normal(k, (3, SMALL.z_size))
    rebuilt = apply({"params": params}, images, noise, method="reconstruct")
    for a, b in zip(called, rebuilt):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("conv_impl", ["fast", "xla"])
def test_decoder_phases_is_the_decoded_image_in_the_last_layer_s_phase_layout(key, conv_impl):
    from worldmodels_jax.models.layers import to_phase_layout

    config = VAEConfig(z_size=4, encoder_widths=(4, 8, 8, 8), decoder_widths=(8, 8, 4), decoder_dense=16,
                       conv_impl=conv_impl)
    params = init_vae(key, config)
    apply = jax.jit(ConvVAE(config).apply, static_argnames="method")
    grid = apply({"params": params}, jax.random.normal(jax.random.PRNGKey(3), (3, 4)), method="decoder_grid")
    images = apply({"params": params}, grid, method="decoder_images")
    phases = apply({"params": params}, grid, method="decoder_phases")
    assert phases.shape == (12, 3, 32, 32)
    np.testing.assert_allclose(phases, to_phase_layout(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("microbatch", [4, 3])
def test_microbatched_step_equals_whole_batch_step(key, microbatch):
    """Same parameters after one Adam step, same metrics, whether the batch of 12 is split or not."""
    images = (jax.random.uniform(jax.random.PRNGKey(1), (12, 64, 64, 3)) * 255).astype(jnp.uint8)
    results = []
    for micro in (12, microbatch):
        init, update = make_vae_step(SMALL, VAETrainConfig(batch_size=12, learning_rate=1e-2, microbatch=micro))
        state = init(key)
        state, metrics = jax.jit(update)(state, images, jax.random.PRNGKey(2))
        results.append((state, metrics))
    (whole, whole_metrics), (split, split_metrics) = results
    for name in ("loss", "reconstruction_loss", "kl", "kl_floored", "grad_norm"):
        assert float(split_metrics[name]) == pytest.approx(float(whole_metrics[name]), rel=1e-5), name
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(whole.params), jax.tree.leaves(whole.params),
                          jax.tree.leaves(split.params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert int(split.step) == 1


def test_short_microbatched_run_learns(key):
    """Frames of 4 flat colours: 5 epochs of 32 micro-batched steps cut the reconstruction loss by 40 % or more."""
    colours = jnp.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]], jnp.uint8)
    frames = jnp.broadcast_to(colours[jnp.arange(256) % 4][:, None, None, :], (256, 64, 64, 3))
    config = VAETrainConfig(epochs=5, batch_size=8, learning_rate=3e-3, microbatch=4)
    init, train_epoch = make_vae_trainer(SMALL, config)
    state = init(key)
    losses = []
    for epoch in range(config.epochs):
        state, metrics = train_epoch(state, frames, jax.random.fold_in(key, epoch))
        losses.append(np.asarray(metrics["reconstruction_loss"]))
    first, last = float(losses[0][:4].mean()), float(losses[-1][-4:].mean())
    assert np.all(np.isfinite(np.concatenate(losses)))
    assert last < 0.6 * first, (first, last)
