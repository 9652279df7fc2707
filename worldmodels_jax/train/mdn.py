"""Training M: teacher forcing on windows of encoded rollouts, z resampled from (μ, log σ²) every batch.

Adam with gradient clipping by value (±1, as the original), optional exponential learning-rate
decay to a floor (the Doom model: ×0.99999 per step down to 1e-5).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct

from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models.mdnrnn import MDNRNN, done_loss, mdn_nll
from worldmodels_jax.models.memory import init_memory
from worldmodels_jax.models.vae import sample_z


@dataclasses.dataclass(frozen=True)
class MDNTrainConfig:
    """How M is trained."""

    steps: int = 4000
    """Adam steps."""
    batch_size: int = 100
    seq_len: int = 999
    """Length of the training windows (the original used whole 1000-frame episodes)."""
    learning_rate: float = 1e-3
    lr_decay: float = 1.0
    """Multiplicative decay per step (Doom: 0.99999); 1 disables it."""
    lr_min: float = 1e-5
    grad_clip: float = 1.0
    """Clip every gradient entry to ±grad_clip (0 disables)."""
    done_pos_weight: float = 10.0
    """Weight of positive examples in the done loss (Doom: 10)."""
    reward_weight: float = 1.0
    chunk_steps: int = 100
    """Steps per compiled call: metrics and checkpoints happen between chunks. Must divide `steps`."""

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 1 or self.chunk_steps < 1:
            raise ConfigError("train_mdn.steps, batch_size, seq_len and chunk_steps must all be >= 1")
        if self.steps % self.chunk_steps:
            # the trainer runs whole chunks: 400 steps in chunks of 300 would silently train 600
            raise ConfigError(f"train_mdn.steps ({self.steps}) must be a multiple of train_mdn.chunk_steps "
                              f"({self.chunk_steps}); set chunk_steps to a divisor of steps")
        if self.learning_rate <= 0 or not 0 < self.lr_decay <= 1:
            raise ConfigError(f"train_mdn needs learning_rate > 0 and 0 < lr_decay <= 1, got "
                              f"{self.learning_rate}, {self.lr_decay}")


@struct.dataclass
class SequenceData:
    """Encoded rollouts on the device, [num_sequences, steps, ...]."""

    mu: jax.Array
    logvar: jax.Array
    action: jax.Array  # encoded for M: [N, T, action_size]
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    first: jax.Array


@struct.dataclass
class MDNTrainState:
    params: dict
    opt_state: optax.OptState
    step: jax.Array


def make_optimizer(config: MDNTrainConfig) -> optax.GradientTransformation:
    if config.lr_decay < 1.0:
        schedule = optax.exponential_decay(config.learning_rate, 1, config.lr_decay, end_value=config.lr_min)
    else:
        schedule = config.learning_rate
    parts = [optax.clip(config.grad_clip)] if config.grad_clip > 0 else []
    return optax.chain(*parts, optax.adam(schedule))


def sample_windows(key: jax.Array, data: SequenceData, batch: int, length: int):
    """Random windows of `length + 1` steps: inputs are steps [s, s+length), targets [s+1, s+length]."""
    num_seq, steps = data.mu.shape[:2]
    key_seq, key_start, key_z = jax.random.split(key, 3)
    seq = jax.random.randint(key_seq, (batch,), 0, num_seq)
    start = jax.random.randint(key_start, (batch,), 0, steps - length)
    index = start[:, None] + jnp.arange(length + 1)[None, :]

    def take(x):
        return x[seq[:, None], index]

    window = jax.tree.map(take, data)
    z = sample_z(key_z, window.mu, window.logvar)
    return z, window


def make_mdn_trainer(model, config: MDNTrainConfig):
    """Returns `(init(key) -> state, train_chunk(state, data, key) -> (state, metrics [chunk_steps]))`.

    `model` is M's memory module (an `MDNRNN`, or any module with the same interface); an
    `MDNRNNConfig` is accepted too and builds the MDN-RNN.
    """
    model = MDNRNN(model) if not hasattr(model, "apply") else model
    model_config = model.config
    optimizer = make_optimizer(config)

    def init(key):
        params = init_memory(key, model)
        return MDNTrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def loss_fn(params, z, window: SequenceData):
        inputs_z, target_z = z[:, :-1], z[:, 1:]
        action = window.action[:, :-1]
        reset = window.first[:, :-1].at[:, 0].set(True)  # windows start from a fresh carry
        ended = window.terminated[:, :-1] | window.truncated[:, :-1]
        if hasattr(model, "observe_nll"):  # the LSTM: mixture head and loss fused (same numbers, faster)
            nll, reward, done_logit = model.apply({"params": params}, inputs_z, action, reset, target_z, ~ended,
                                                  method="observe_nll")
        else:
            output, _, _ = model.apply({"params": params}, inputs_z, action, reset, method="observe")
            nll = mdn_nll(output, target_z, mask=~ended)  # z_{t+1} belongs to the same episode
            reward, done_logit = output.reward, output.done_logit
        metrics = {"nll": nll}
        loss = nll
        if model_config.done_head:
            d_loss = done_loss(done_logit, window.terminated[:, :-1], config.done_pos_weight)
            loss = loss + d_loss
            metrics["done_loss"] = d_loss
        if model_config.reward_head:
            r_loss = jnp.mean(jnp.square(reward - window.reward[:, :-1]))
            loss = loss + config.reward_weight * r_loss
            metrics["reward_loss"] = r_loss
        metrics["loss"] = loss
        return loss, metrics

    def update(state: MDNTrainState, data: SequenceData, key):
        z, window = sample_windows(key, data, config.batch_size, config.seq_len)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, z, window)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.global_norm(grads)
        return MDNTrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), metrics

    @jax.jit
    def train_chunk(state: MDNTrainState, data: SequenceData, key: jax.Array):
        steps = data.mu.shape[1]
        if steps <= config.seq_len:
            raise ConfigError(
                f"train_mdn.seq_len ({config.seq_len}) must be shorter than the recorded sequences "
                f"({steps} steps); lower seq_len or collect longer sequences"
            )
        if data.action.shape[-1] != model_config.action_size:
            raise ShapeError(f"encoded actions have {data.action.shape[-1]} dims, M expects {model_config.action_size}")
        return jax.lax.scan(lambda s, k: update(s, data, k), state, jax.random.split(key, config.chunk_steps))

    return init, train_chunk


def make_evaluate_nll(model):
    """Returns jitted `nll(params, data)`: next-z NLL per dimension over whole sequences, z = μ (no sampling)."""
    model = MDNRNN(model) if not hasattr(model, "apply") else model

    @jax.jit
    def nll(params, data: SequenceData):
        reset = data.first.at[:, 0].set(True)
        output, _, _ = model.apply({"params": params}, data.mu[:, :-1], data.action[:, :-1], reset[:, :-1],
                                   method="observe")
        ended = data.terminated[:, :-1] | data.truncated[:, :-1]
        return mdn_nll(output, data.mu[:, 1:], mask=~ended)

    return nll
