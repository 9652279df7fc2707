"""V: the convolutional VAE of World Models (Ha & Schmidhuber 2018).

Encoder: 4 convolutions, kernel 4, stride 2, VALID, ReLU (32, 64, 128, 256 filters), 64→31→14→6→2,
flattened to 1024 features and two dense heads, μ and log σ². Decoder: dense z→1024, reshaped to
1×1×1024, then transposed convolutions of stride 2 (128 k5, 64 k5, 32 k6, 3 k6 + sigmoid), 1→5→13→30→64.
With the paper's widths it has exactly 4,348,547 parameters at z = 32 and 4,446,915 at z = 64.
Smaller widths are an option for CPU presets.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models.layers import IMPLS as CONV_IMPLS

IMAGE_SHAPE = (64, 64, 3)
ENCODER_KERNEL = 4
DECODER_KERNELS = (5, 5, 6, 6)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture of V."""

    z_size: int = 32
    """Latent size (32 for CarRacing, 64 for Doom)."""
    encoder_widths: tuple[int, ...] = (32, 64, 128, 256)
    """Filters of the four stride-2 encoder convolutions."""
    decoder_widths: tuple[int, ...] = (128, 64, 32)
    """Filters of the first three transposed convolutions (the fourth outputs 3 channels)."""
    decoder_dense: int = 1024
    """Width of the dense layer that feeds the decoder (reshaped to 1×1×decoder_dense)."""
    kl_tolerance: float = 0.5
    """The KL term is floored at kl_tolerance · z_size per example."""
    conv_impl: str = "auto"
    """Convolution formulation: 'auto' (fastest for the backend), 'xla' (plain XLA ops), 'fast' (the CPU matmul
    formulations) or 'forward' (forward-only CPU use; see `for_inference`)."""

    def __post_init__(self):
        # tuples, so the config hashes (init_vae takes it as a static argument) whether widths came as lists or not
        object.__setattr__(self, "encoder_widths", tuple(self.encoder_widths))
        object.__setattr__(self, "decoder_widths", tuple(self.decoder_widths))
        if self.z_size < 1:
            raise ConfigError(f"vae.z_size must be >= 1, got {self.z_size}")
        if len(self.encoder_widths) != 4 or min(self.encoder_widths) < 1:
            raise ConfigError(
                f"vae.encoder_widths must be 4 positive ints (the paper's is (32, 64, 128, 256)), "
                f"got {self.encoder_widths}"
            )
        if len(self.decoder_widths) != 3 or min(self.decoder_widths) < 1:
            raise ConfigError(
                f"vae.decoder_widths must be 3 positive ints (the paper's is (128, 64, 32)), "
                f"got {self.decoder_widths}"
            )
        if self.decoder_dense < 1:
            raise ConfigError(f"vae.decoder_dense must be >= 1, got {self.decoder_dense}")
        if not 0.0 <= self.kl_tolerance:
            raise ConfigError(f"vae.kl_tolerance must be >= 0, got {self.kl_tolerance}")
        if self.conv_impl not in CONV_IMPLS:
            raise ConfigError(f"vae.conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")

    @property
    def encoder_flops(self) -> int:
        """FLOPs (2 per multiply-add) of encoding one frame: the four convolutions and the μ, log σ² heads. The
        paper's V: 29.4 M; `carracing-cpu-small`'s: 2.4 M."""
        flops, size, channels = 0, IMAGE_SHAPE[0], IMAGE_SHAPE[-1]
        for width in self.encoder_widths:
            size = (size - ENCODER_KERNEL) // 2 + 1
            flops += 2 * size * size * ENCODER_KERNEL * ENCODER_KERNEL * channels * width
            channels = width
        return flops + 2 * 2 * (size * size * channels) * self.z_size


def _conv(features: int, kernel: int, impl: str, name: str) -> nn.Module:
    try:
        from worldmodels_jax.models import layers
    except ImportError:  # fast layers not available: plain XLA
        layers = None
    if layers is not None and hasattr(layers, "make_conv"):
        return layers.make_conv(features, kernel, impl=impl, name=name)
    return nn.Conv(features, (kernel, kernel), strides=(2, 2), padding="VALID", name=name)


def _conv_transpose(features: int, kernel: int, impl: str, name: str) -> nn.Module:
    try:
        from worldmodels_jax.models import layers
    except ImportError:
        layers = None
    if layers is not None and hasattr(layers, "make_conv_transpose"):
        return layers.make_conv_transpose(features, kernel, impl=impl, name=name)
    return nn.ConvTranspose(features, (kernel, kernel), strides=(2, 2), padding="VALID", name=name)


def check_images(x: jax.Array, what: str = "V's input") -> None:
    """Raises ShapeError unless `x` is [..., 64, 64, 3]."""
    if x.ndim < 3 or tuple(x.shape[-3:]) != IMAGE_SHAPE:
        raise ShapeError(
            f"{what} must be images shaped [..., 64, 64, 3] (HWC), got {tuple(x.shape)}. "
            "V needs an environment with 64×64×3 image observations (e.g. CartPolePixels-v1, "
            "CarRacing-v0, TakeCover-v0); state-vector envs such as CartPole-v1 cannot be encoded."
        )


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] images → float32 [0, 1]; float images pass through."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def for_inference(vae: "ConvVAE") -> "ConvVAE":
    """V for forward-only use (rollouts, the encode stage, reports): same parameters, same maths.

    With conv_impl 'auto' this picks 'forward': XLA's own convolutions, which win when no gradient is taken (on
    the 2-core CPU the encoder's forward pass was 1.7× faster with them at batch 100 and 4.7× faster inside a
    rollout's scan at batch 128, while the fast formulation wins for training, fwd+bwd 1.2–2.4×), except that a
    narrow layer (the small V's RGB layer) is laid out space-to-depth first and a layer with a 6×6 or smaller
    output is one matmul (`layers.conv_s2_forward`): a CarRacing controller generation 1.56× faster than with
    XLA's op everywhere. Off the CPU 'forward' is 'xla'.
    """
    if vae.config.conv_impl != "auto":
        return vae
    return ConvVAE(dataclasses.replace(vae.config, conv_impl="forward"))


class ConvVAE(nn.Module):
    """V. `encode` → (μ, log σ²); `decode` z → image in [0, 1]; `__call__` does both with z sampled."""

    config: VAEConfig = VAEConfig()

    def setup(self):
        cfg = self.config
        self.encoder_convs = [
            _conv(width, ENCODER_KERNEL, cfg.conv_impl, name=f"enc_conv{i}")
            for i, width in enumerate(cfg.encoder_widths)
        ]
        self.mu_head = nn.Dense(cfg.z_size, name="enc_mu")
        self.logvar_head = nn.Dense(cfg.z_size, name="enc_logvar")
        self.decoder_dense = nn.Dense(cfg.decoder_dense, name="dec_dense")
        widths = (*cfg.decoder_widths, IMAGE_SHAPE[-1])
        self.decoder_convs = [
            _conv_transpose(width, kernel, cfg.conv_impl, name=f"dec_deconv{i}")
            for i, (width, kernel) in enumerate(zip(widths, DECODER_KERNELS))
        ]

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images [..., 64, 64, 3] (uint8 or float in [0, 1]) → (μ, log σ²), each [..., z]."""
        check_images(images)
        batch_shape = images.shape[:-3]
        mu, logvar = self.encoder_heads(self.encoder_features(images.reshape((-1, *IMAGE_SHAPE))))
        return mu.reshape((*batch_shape, -1)), logvar.reshape((*batch_shape, -1))

    def decode(self, z: jax.Array) -> jax.Array:
        """z [..., z_size] → images [..., 64, 64, 3] in [0, 1]."""
        if z.shape[-1] != self.config.z_size:
            raise ShapeError(f"decode expects z [..., {self.config.z_size}], got {tuple(z.shape)}")
        batch_shape = z.shape[:-1]
        x = self.decoder_images(self.decoder_grid(z.reshape((-1, self.config.z_size))))
        return x.reshape((*batch_shape, *IMAGE_SHAPE))

    # V in four stages, [B, ...] each: encode = encoder_heads ∘ encoder_features, decode = decoder_images ∘
    # decoder_grid. The convolution stages hold the activations; the dense stages hold most of the parameters
    # (the 1×1 → 5×5 transposed convolution is a dense layer with 3.3 M of them), so a micro-batched training
    # step runs the former per micro-batch and the latter on the whole batch (`train.vae`).

    def encoder_features(self, images: jax.Array) -> jax.Array:
        """[B, 64, 64, 3] → the convolutions' features [B, 2·2·256] (flattened HWC)."""
        x = to_float(images)
        for conv in self.encoder_convs:
            x = nn.relu(conv(x))
        return x.reshape((x.shape[0], -1))

    def encoder_heads(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, 1024] features → (μ, log σ²) [B, z]."""
        return self.mu_head(features), self.logvar_head(features)

    def decoder_grid(self, z: jax.Array) -> jax.Array:
        """[B, z] → the first transposed convolution's output [B, 5, 5, decoder_widths[0]] (after its ReLU)."""
        x = nn.relu(self.decoder_dense(z))
        return nn.relu(self.decoder_convs[0](x.reshape((x.shape[0], 1, 1, self.config.decoder_dense))))

    def decoder_images(self, grid: jax.Array) -> jax.Array:
        """[B, 5, 5, C] → images [B, 64, 64, 3] in [0, 1] (the remaining transposed convolutions)."""
        x = grid
        last = len(self.decoder_convs) - 1
        for i, deconv in enumerate(self.decoder_convs[1:], start=1):
            x = deconv(x)
            x = nn.sigmoid(x) if i == last else nn.relu(x)
        return x

    def decoder_phases(self, grid: jax.Array) -> jax.Array:
        """`decoder_images` in the last layer's phase layout: `layers.to_phase_layout(decoder_images(grid))`,
        [12, B, 32, 32], computed without interleaving the output back (the training loss compares in it)."""
        x = grid
        for deconv in self.decoder_convs[1:-1]:
            x = nn.relu(deconv(x))
        return nn.sigmoid(self.decoder_convs[-1](x, phase_layout=True))

    def __call__(self, images: jax.Array, key: jax.Array):
        """Reconstruction with a sampled z: returns (reconstruction, μ, log σ², z)."""
        mu, logvar = self.encode(images)
        z = sample_z(key, mu, logvar)
        return self.decode(z), mu, logvar, z

    def reconstruct(self, images: jax.Array, noise: jax.Array):
        """Reconstruction with z = μ + σ·noise for given standard-normal `noise` [..., z]: (reconstruction, μ, log σ², z).

        `__call__(images, key)` equals `reconstruct(images, jax.random.normal(key, (*batch, z_size)))`.
        """
        mu, logvar = self.encode(images)
        if noise.shape != mu.shape:
            raise ShapeError(f"reconstruct needs noise shaped like μ {tuple(mu.shape)}, got {tuple(noise.shape)}")
        z = mu + jnp.exp(0.5 * logvar) * noise
        return self.decode(z), mu, logvar, z


def stage_parameters(config: VAEConfig) -> dict[str, tuple[str, ...]]:
    """The top-level parameter names each stage of `ConvVAE` reads (the four sets are disjoint)."""
    return {
        "encoder_features": tuple(f"enc_conv{i}" for i in range(len(config.encoder_widths))),
        "encoder_heads": ("enc_mu", "enc_logvar"),
        "decoder_grid": ("dec_dense", "dec_deconv0"),
        "decoder_images": tuple(f"dec_deconv{i}" for i in range(1, len(config.decoder_widths) + 1)),
    }


def sample_z(key: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """z = μ + σ·ε with σ = exp(log σ² / 2)."""
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over the latent dimension: [..., z] → [...]."""
    return -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)


def floored_kl(mu: jax.Array, logvar: jax.Array, kl_tolerance: float) -> tuple[jax.Array, jax.Array]:
    """The loss's KL term, max(KL, kl_tolerance · z) averaged over examples, and the plain mean KL."""
    kl = kl_divergence(mu, logvar)
    return jnp.mean(jnp.maximum(kl, kl_tolerance * mu.shape[-1])), jnp.mean(kl)


def vae_loss(
    images: jax.Array,
    reconstruction: jax.Array,
    mu: jax.Array,
    logvar: jax.Array,
    kl_tolerance: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The original's loss: Σ squared pixel error + max(KL, kl_tolerance·z), each averaged over the batch."""
    target = to_float(images)
    if target.shape != reconstruction.shape:
        raise ShapeError(
            f"images {tuple(target.shape)} and reconstruction {tuple(reconstruction.shape)} differ"
        )
    reconstruction_loss = jnp.mean(
        jnp.sum(jnp.square(target - reconstruction), axis=(-3, -2, -1))
    )
    kl_floored, kl = floored_kl(mu, logvar, kl_tolerance)
    loss = reconstruction_loss + kl_floored
    return loss, {
        "loss": loss,
        "reconstruction_loss": reconstruction_loss,
        "kl": kl,
        "kl_floored": kl_floored,
    }


@functools.partial(jax.jit, static_argnums=1)  # one compiled program, not one per op
def init_vae(key: jax.Array, config: VAEConfig) -> dict:
    """Initial parameters of V (the `params` collection)."""
    model = ConvVAE(config)
    dummy = jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)
    return model.init({"params": key}, dummy, jax.random.PRNGKey(0))["params"]


def param_shapes(init, *config):
    """The tree `init(key, *config)` returns, as shapes and dtypes only: nothing is computed or compiled.

    For restore targets and parameter counts (an eager `init` compiles every layer's ops one by one).
    """
    return jax.eval_shape(lambda key: init(key, *config), jax.ShapeDtypeStruct((2,), jnp.uint32))


def param_count(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


__all__: Sequence[str] = (
    "VAEConfig", "ConvVAE", "stage_parameters", "sample_z", "kl_divergence", "floored_kl", "vae_loss", "init_vae", "param_count", "param_shapes",
    "check_images", "to_float",
)
