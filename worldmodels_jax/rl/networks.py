"""Q-networks and policies: an MLP for classic control, the MinAtar CNN for 10x10xC grids."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """obs (D,) or (B, D) -> (num_outputs,); ReLU hidden layers."""

    num_outputs: int
    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_outputs)(x)


class MinAtarCNN(nn.Module):
    """The MinAtar paper's network: conv 16x3x3 (stride 1, valid) -> dense 128 -> outputs."""

    num_outputs: int
    channels: int = 16
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32)
        unbatched = x.ndim == 3
        if unbatched:
            x = x[None]
        x = nn.relu(nn.Conv(self.channels, (3, 3), padding="VALID")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.Dense(self.num_outputs)(x)
        return x[0] if unbatched else x


def make_network(kind: str, obs_shape: tuple[int, ...], num_outputs: int, hidden: Sequence[int]):
    """'mlp', 'cnn' or 'auto' (cnn for image-like (H, W, C) observations, mlp otherwise)."""
    from worldmodels_jax.errors import ConfigError

    if kind == "auto":
        kind = "cnn" if len(obs_shape) == 3 else "mlp"
    if kind == "mlp":
        return MLP(num_outputs=num_outputs, hidden=tuple(hidden))
    if kind == "cnn":
        if len(obs_shape) != 3:
            raise ConfigError(f"network 'cnn' needs (H, W, C) observations, got shape {obs_shape}")
        return MinAtarCNN(num_outputs=num_outputs, hidden=hidden[0] if hidden else 128)
    raise ConfigError(f"network must be 'auto', 'mlp' or 'cnn', got {kind!r}")
