"""M's memory, selected by config: the MDN-RNN (`lstm`) or the causal transformer (`transformer`).

Both modules expose the same interface: `observe(z, a, reset)` over sequences (teacher forcing),
`step(carry, z, a, reset)` for one imagined step, `initial_carry(batch_shape)`, `feature_size`,
and a carry whose `h` is the feature vector the controller sees. Call them by method *name*
(`method="step"`), so the same code drives either.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from worldmodels_jax.errors import ConfigError
from worldmodels_jax.models.mdnrnn import MDNRNN, MDNRNNConfig

MEMORIES = ("lstm", "transformer")


@dataclasses.dataclass(frozen=True)
class TransformerSettings:
    """Architecture of the transformer M (used when memory = 'transformer')."""

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 128
    window: int = 32
    """Tokens each layer attends to (the KV cache's size)."""
    chunk_size: int = 32


def make_memory(kind: str, mdn: MDNRNNConfig, transformer: TransformerSettings | None = None) -> nn.Module:
    """The memory module; `mdn` holds the shared sizes and heads (z, action, K, reward/done heads)."""
    if kind == "lstm":
        return MDNRNN(mdn)
    if kind == "transformer":
        from worldmodels_jax.models.transformer_m import TransformerM, TransformerMConfig

        settings = transformer or TransformerSettings()
        return TransformerM(TransformerMConfig.from_mdnrnn_config(mdn, **dataclasses.asdict(settings)))
    raise ConfigError(f"memory must be one of {MEMORIES}, got {kind!r}")


def init_memory(key: jax.Array, module: nn.Module) -> dict:
    cfg = module.config
    z = jnp.zeros((1, 2, cfg.z_size))
    a = jnp.zeros((1, 2, cfg.action_size))
    return module.init({"params": key}, z, a, jnp.zeros((1, 2), bool))["params"]


def has_cell_state(module: nn.Module) -> bool:
    """True for the LSTM, whose carry also has c (needed by the Doom controller mode 'z_c_h')."""
    return isinstance(module, MDNRNN)
