"""Training V: minibatch epochs inside `scan`, Adam, stacked metrics."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models.layers import to_phase_layout
from worldmodels_jax.models.vae import (IMAGE_SHAPE, ConvVAE, VAEConfig, floored_kl, init_vae, stage_parameters,
                                        to_float, vae_loss)


@dataclasses.dataclass(frozen=True)
class VAETrainConfig:
    """How V is trained."""

    epochs: int = 10
    """Passes over the dataset (the original's code ran 10; the paper says 1)."""
    batch_size: int = 100
    learning_rate: float = 1e-4
    max_frames: int = 0
    """Train on at most this many frames per shard (0: all)."""
    microbatch: int = 0
    """Frames per micro-batch of V's convolution stages. The batch's gradient is the same (equal to float
    rounding): the convolutions run micro-batch by micro-batch so their activations stay in the CPU's caches,
    the dense stages on the whole batch (`make_vae_step`); it is not gradient accumulation over steps.
    0: automatic (`resolve_microbatch`: 20 of 100 on the CPU backend, the whole batch elsewhere); otherwise it
    must divide batch_size (batch_size: no split)."""

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError(
                f"train_vae needs epochs >= 1, batch_size >= 1, learning_rate > 0; got {self.epochs}, "
                f"{self.batch_size}, {self.learning_rate}"
            )
        if self.microbatch < 0 or (self.microbatch and self.batch_size % self.microbatch):
            raise ConfigError(
                f"train_vae.microbatch must be 0 (automatic) or divide batch_size ({self.batch_size}), "
                f"got {self.microbatch}; for example {resolve_microbatch(self.batch_size, 0, 'cpu')}"
            )


AUTO_MICROBATCH_CPU = 20
"""Largest micro-batch the CPU backend uses automatically: on the 2-core CPU the paper's V steps 1.18x faster at
batch 100 in micro-batches of 20 (10 and 25 alike) than in one piece, and 1.16x at batch 64 in micro-batches of
16 (8 and 32 slower); benchmarks/bench_vm_training.py."""


def resolve_microbatch(batch_size: int, microbatch: int = 0, backend: str | None = None) -> int:
    """The micro-batch size `microbatch` means for `batch_size` on `backend` (default: JAX's default backend).

    0 picks, on the CPU, the largest divisor of batch_size up to AUTO_MICROBATCH_CPU (the whole batch when that
    is under 8, or when the batch is that small anyway); on GPU and TPU the whole batch, whose activations are
    the accelerator's to cache.
    """
    if microbatch:
        return microbatch
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu" or batch_size <= AUTO_MICROBATCH_CPU:
        return batch_size
    divisor = max(d for d in range(1, AUTO_MICROBATCH_CPU + 1) if batch_size % d == 0)
    return divisor if divisor >= 8 else batch_size


@struct.dataclass
class VAETrainState:
    params: dict
    opt_state: optax.OptState
    step: jax.Array


def make_vae_step(vae_config: VAEConfig, config: VAETrainConfig):
    """Returns `(init(key) -> state, update(state, images, key) -> (state, metrics))`: one Adam step on a batch.

    z is sampled with noise drawn for the whole batch from `key`, so the step is the same whatever the
    micro-batch size (`config.microbatch`).
    """
    model = ConvVAE(vae_config)
    optimizer = optax.adam(config.learning_rate)

    def init(key: jax.Array) -> VAETrainState:
        params = init_vae(key, vae_config)
        return VAETrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))

    def loss_fn(params, images, noise):
        reconstruction, mu, logvar, _ = model.apply({"params": params}, images, noise, method="reconstruct")
        return vae_loss(images, reconstruction, mu, logvar, vae_config.kl_tolerance)

    def gradients(params, images, noise):
        batch = images.shape[0]
        micro = resolve_microbatch(batch, config.microbatch)
        if batch % micro:
            raise ConfigError(f"train_vae.microbatch ({micro}) must divide the batch ({batch})")
        if micro == batch:
            return jax.grad(loss_fn, has_aux=True)(params, images, noise)
        return microbatched_gradients(params, images, noise, micro)

    def stage(name):
        return lambda params, *args: model.apply({"params": params}, *args, method=name)

    names = stage_parameters(vae_config)

    def encoder_conv(i):  # the i-th encoder convolution (before its ReLU), given that layer's parameters only
        name = names["encoder_features"][i]
        return lambda layer, x: model.apply({"params": {name: layer}}, x, method=lambda m, x: m.encoder_convs[i](x))

    def microbatched_gradients(params, images, noise, micro):
        """loss_fn's gradient and metrics, with V's convolution stages run micro-batch by micro-batch.

        1. encoder convolutions, forward only, per micro-batch, keeping each layer's output (after its ReLU);
        2. the dense stages (μ/log σ² heads, the KL term, the dense layer and the 1×1 → 5×5 transposed
           convolution) on the whole batch, so their 3.4 M parameters are read once;
        3. decoder convolutions and the reconstruction loss, forward and backward, per micro-batch (its
           activations stay in cache);
        4. the dense stages' backward, then the encoder's per micro-batch, layer by layer from the kept outputs:
           the ReLU's mask from the layer's output, then the convolution's pullback at its kept input. The
           pullback's own forward matmul is unused, and XLA drops it. Keeping the outputs (20 MB at batch 100)
           instead of recomputing the encoder (about 10 % of the step's multiply-adds) made the step 4-7 % faster
           in an A/B in one process; keeping whole pullbacks (their im2col patches) had been no faster than
           recomputing (docs/fast_cpu_layers.md).
        Each stage is differentiated with respect to its own parameters only (`stage_parameters`).
        """
        batch = images.shape[0]
        pieces = batch // micro
        split = lambda x: x.reshape((pieces, micro, *x.shape[1:]))  # noqa: E731
        tree_sum = lambda *trees: jax.tree.map(lambda *x: sum(x), *trees)  # noqa: E731
        encoder = {k: params[k] for k in names["encoder_features"]}
        decoder = {k: params[k] for k in names["decoder_images"]}
        dense_names = names["encoder_heads"] + names["decoder_grid"]

        layer_names = names["encoder_features"]

        def encoder_outputs(piece):  # every layer's output, as stage("encoder_features") computes them
            outputs = [to_float(piece)]
            for i, name in enumerate(layer_names):
                outputs.append(jax.nn.relu(encoder_conv(i)(encoder[name], outputs[-1])))
            return outputs[1:]

        outputs = jax.lax.map(encoder_outputs, split(images))
        features = outputs[-1].reshape((pieces, micro, -1))

        def dense(dense_params, features):
            mu, logvar = stage("encoder_heads")(dense_params, features)
            kl_floored, kl = floored_kl(mu, logvar, vae_config.kl_tolerance)
            grid = stage("decoder_grid")(dense_params, mu + jnp.exp(0.5 * logvar) * noise)
            return (grid, kl_floored), kl

        (grid, kl_floored), dense_pullback, kl = jax.vjp(
            dense, {k: params[k] for k in dense_names}, features.reshape(batch, -1), has_aux=True)

        def decode_piece(total, piece):
            grid_piece, target = piece

            def reconstruction_loss(decoder, grid_piece):  # this piece's share of the batch mean
                # the same sum, in the last layer's phase layout (layers.conv_transpose_s2_phases): 2-3 % faster
                error = to_phase_layout(to_float(target)) - stage("decoder_phases")(decoder, grid_piece)
                return jnp.sum(jnp.square(error)) / batch

            loss, (d_decoder, d_grid) = jax.value_and_grad(reconstruction_loss, argnums=(0, 1))(decoder, grid_piece)
            return tree_sum(total, (loss, d_decoder)), d_grid

        zeros = (jnp.zeros((), grid.dtype), jax.tree.map(jnp.zeros_like, decoder))
        (reconstruction, decoder_grads), d_grid = jax.lax.scan(decode_piece, zeros, (split(grid), split(images)))
        dense_grads, d_features = dense_pullback((d_grid.reshape(grid.shape), jnp.ones((), grid.dtype)))

        def encoder_backward(total, piece):
            images_piece, outputs_piece, d_features_piece = piece
            inputs = [to_float(images_piece), *outputs_piece[:-1]]
            d_output = d_features_piece.reshape(outputs_piece[-1].shape)
            grads = {}
            for i in reversed(range(len(layer_names))):
                d_conv = jnp.where(outputs_piece[i] > 0, d_output, 0.0)  # ReLU's pullback (0 at 0, as jax's)
                if i:
                    _, pullback = jax.vjp(encoder_conv(i), encoder[layer_names[i]], inputs[i])
                    grads[layer_names[i]], d_output = pullback(d_conv)
                else:  # no gradient for the images
                    _, pullback = jax.vjp(lambda layer: encoder_conv(0)(layer, inputs[0]), encoder[layer_names[0]])
                    (grads[layer_names[0]],) = pullback(d_conv)
            return tree_sum(total, grads), None

        encoder_grads, _ = jax.lax.scan(encoder_backward, jax.tree.map(jnp.zeros_like, encoder),
                                        (split(images), outputs, split(d_features)))
        metrics = {"loss": reconstruction + kl_floored, "reconstruction_loss": reconstruction, "kl": kl,
                   "kl_floored": kl_floored}
        grads = {**dense_grads, **decoder_grads, **encoder_grads}
        return {k: grads[k] for k in params}, metrics

    def update(state: VAETrainState, images: jax.Array, key: jax.Array):
        noise = jax.random.normal(key, (images.shape[0], vae_config.z_size))
        grads, metrics = gradients(state.params, images, noise)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        return VAETrainState(params, opt_state, state.step + 1), metrics

    return init, update


def make_vae_trainer(vae_config: VAEConfig, config: VAETrainConfig):
    """Returns `(init(key) -> state, train_epoch(state, frames, key) -> (state, metrics))`.

    `train_epoch` shuffles `frames` [N, 64, 64, 3] (uint8) and scans Adam steps (`make_vae_step`) over
    N // batch minibatches; metrics come back stacked, one entry per minibatch.
    """
    init, update = make_vae_step(vae_config, config)

    @jax.jit
    def train_epoch(state: VAETrainState, frames: jax.Array, key: jax.Array):
        if frames.ndim != 4 or tuple(frames.shape[1:]) != IMAGE_SHAPE:
            raise ShapeError(f"train_epoch expects frames [N, 64, 64, 3], got {tuple(frames.shape)}")
        num_batches = frames.shape[0] // config.batch_size
        if num_batches < 1:
            raise ConfigError(f"{frames.shape[0]} frames cannot fill one batch of {config.batch_size}")
        key_perm, key_steps = jax.random.split(key)
        order = jax.random.permutation(key_perm, frames.shape[0])[: num_batches * config.batch_size]
        order = order.reshape((num_batches, config.batch_size))
        keys = jax.random.split(key_steps, num_batches)

        def body(state, inputs):
            index, step_key = inputs
            return update(state, frames[index], step_key)

        return jax.lax.scan(body, state, (order, keys))

    return init, train_epoch


def make_train(vae_config: VAEConfig, config: VAETrainConfig):
    """The whole run as one function: `train(key, frames) -> (state, metrics [epochs, batches])`."""
    init, train_epoch = make_vae_trainer(vae_config, config)

    def train(key: jax.Array, frames: jax.Array):
        key_init, key_epochs = jax.random.split(key)
        state = init(key_init)
        return jax.lax.scan(lambda s, k: train_epoch(s, frames, k), state,
                            jax.random.split(key_epochs, config.epochs))

    return train
