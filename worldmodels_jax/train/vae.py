"""Training V: minibatch epochs inside `scan`, Adam, stacked metrics."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models.vae import IMAGE_SHAPE, ConvVAE, VAEConfig, init_vae, vae_loss


@dataclasses.dataclass(frozen=True)
class VAETrainConfig:
    """How V is trained."""

    epochs: int = 10
    """Passes over the dataset (the original's code ran 10; the paper says 1)."""
    batch_size: int = 100
    learning_rate: float = 1e-4
    max_frames: int = 0
    """Train on at most this many frames per shard (0: all)."""

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError(
                f"train_vae needs epochs >= 1, batch_size >= 1, learning_rate > 0; got {self.epochs}, "
                f"{self.batch_size}, {self.learning_rate}"
            )


@struct.dataclass
class VAETrainState:
    params: dict
    opt_state: optax.OptState
    step: jax.Array


def make_vae_trainer(vae_config: VAEConfig, config: VAETrainConfig):
    """Returns `(init(key) -> state, train_epoch(state, frames, key) -> (state, metrics))`.

    `train_epoch` shuffles `frames` [N, 64, 64, 3] (uint8) and scans Adam steps over N // batch
    minibatches; metrics come back stacked, one entry per minibatch.
    """
    model = ConvVAE(vae_config)
    optimizer = optax.adam(config.learning_rate)

    def init(key: jax.Array) -> VAETrainState:
        params = init_vae(key, vae_config)
        return VAETrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))

    def loss_fn(params, images, key):
        reconstruction, mu, logvar, _ = model.apply({"params": params}, images, key)
        return vae_loss(images, reconstruction, mu, logvar, vae_config.kl_tolerance)

    def update(state: VAETrainState, batch_and_key):
        images, key = batch_and_key
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, images, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        return VAETrainState(params, opt_state, state.step + 1), metrics

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
            return update(state, (frames[index], step_key))

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
