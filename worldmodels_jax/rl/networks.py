"""Q-networks and policies: an MLP for classic control, the MinAtar CNN for 10x10xC grids."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from worldmodels_jax.models.layers import lecun_normal_flat


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


def conv_valid_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 VALID convolution (NHWC, HWIO kernel) as one im2col matmul.

    The same maths as `lax.conv_general_dilated`, but its backward pass is two matmuls. XLA's CPU
    convolution gradient is slow at MinAtar sizes: a batch-64 Double-DQN Adam step of the MinAtar CNN took
    29.6 ms with the native convolution and 5.2 ms with this one on this project's 2-core CPU (same run,
    load average ~7), and the native one made the gradient step the whole cost of a MinAtar run.
    """
    kh, kw, cin, cout = kernel.shape
    if x.ndim != 4 or x.shape[-1] != cin:
        raise ValueError(f"expected (B, H, W, {cin}) input for kernel {kernel.shape}, got {x.shape}")
    b, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = [lax.slice(x, (0, i, j, 0), (b, i + oh, j + ow, cin)) for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(cols, axis=-1).reshape(b * oh * ow, kh * kw * cin)
    return (patches @ kernel.reshape(kh * kw * cin, cout)).reshape(b, oh, ow, cout)


class Conv(nn.Module):
    """`nn.Conv` (stride 1, VALID) with the same parameters ("kernel" HWIO, "bias") and a choice of
    formulation: "xla" (native convolution, cuDNN on a GPU), "im2col" (matmul), or "auto" (im2col on
    the CPU backend, xla elsewhere)."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", lecun_normal_flat(),
                            (*self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        impl = self.impl
        if impl == "auto":
            impl = "im2col" if jax.default_backend() == "cpu" else "xla"
        if impl == "im2col":
            y = conv_valid_im2col(x, kernel)
        elif impl == "xla":
            y = lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:
            raise ValueError(f"conv impl must be 'auto', 'im2col' or 'xla', got {impl!r}")
        return y + bias


class MinAtarCNN(nn.Module):
    """The MinAtar paper's network: conv 16x3x3 (stride 1, valid) -> dense 128 -> outputs."""

    num_outputs: int
    channels: int = 16
    hidden: int = 128
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32)
        unbatched = x.ndim == 3
        if unbatched:
            x = x[None]
        x = nn.relu(Conv(self.channels, (3, 3), self.conv_impl, name="Conv_0")(x))
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
