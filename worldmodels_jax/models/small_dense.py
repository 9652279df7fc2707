"""Small `nn.Dense` layers computed as multiply-adds, for populations of tiny policies on XLA's CPU backend.

A population of policies evaluated with `vmap` turns every Dense layer into a *batched* dot: one [R, K] × [K, N]
product per member, with R the member's rollouts (4) and K·N a few hundred. XLA's CPU backend runs each as a
separate GEMM call per step, far below the machine's throughput, and the call splits the step into separate
kernels (dot, then bias + tanh, then the next dot, then the env's arithmetic). Written as K broadcast
multiply-adds instead, y = Σₖ x[..., k] · kernel[k] + bias, a small layer is plain elementwise arithmetic that XLA
fuses with the activation, the next small layer and the env step into one loop.

Measured on the 2-core CPU (CartPole-v1, 4 rollouts × 500 steps, CMA-ES, one device; docs/evolve.md): an MLP
4-32-2 steps 1.7-2.8x faster per generation at populations 64-4096, 4-16-2 2.25x, 4-32-32-2 1.55x (its
32 × 32 layer stays a dot: as multiply-adds that one is slower), and env-bound Acrobot/Pendulum 1.1x.
Larger layers lose (64 × 64: 0.65x), hence the limits below.

`small_dense(max_entries)` is a context manager (a Linen method interceptor, active while a module is applied
or traced) that computes every plain `nn.Dense` with at most `SMALL_DENSE_MAX_INPUTS` inputs and at most
`max_entries` kernel entries this way. It is the same function up to float rounding (the sum's order), with the
same parameters; Dense layers with a custom `dot_general` are left alone.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from worldmodels_jax.errors import ConfigError

SMALL_DENSE_MAX_INPUTS = 32
"""Inputs (K) beyond which a Dense layer stays a dot: each output is a chain of K multiply-adds."""
SMALL_DENSE_MAX_ENTRIES = 256
"""Default kernel size (K · N) up to which `resolve_small_dense` computes a Dense layer as multiply-adds on the CPU.
On the 2-core CPU 4 × 32, 4 × 64 and 32 × 2 gained or held; 32 × 32 (1,024) and 64 × 64 lost."""


def dense_as_multiply_adds(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """x @ kernel (+ bias) over the last axis of x, as K broadcast multiply-adds (no dot)."""
    inputs, features = kernel.shape
    if x.shape[-1] != inputs:
        raise ValueError(f"x has {x.shape[-1]} features on its last axis but the kernel expects {inputs}")
    y = x[..., 0:1] * kernel[0]
    for k in range(1, inputs):
        y = y + x[..., k:k + 1] * kernel[k]
    return y if bias is None else y + bias


def is_small(inputs: int, features: int, max_entries: int) -> bool:
    """Whether a Dense layer of this shape is computed as multiply-adds under `small_dense(max_entries)`."""
    return 0 < inputs <= SMALL_DENSE_MAX_INPUTS and inputs * features <= max_entries


def all_dense_small(params, max_entries: int) -> bool:
    """Whether every parameter of a Linen parameter tree belongs to a Dense layer that `small_dense(max_entries)`
    computes as multiply-adds (2-D `kernel`s within the limits, and their biases): a fused policy."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves or not max_entries:
        return False
    for path, leaf in leaves:
        name = getattr(path[-1], "key", None)
        if name == "kernel":
            if jnp.ndim(leaf) != 2 or not is_small(*jnp.shape(leaf), max_entries):
                return False
        elif name != "bias":
            return False
    return True


def _interceptor(max_entries: int):
    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if (type(module) is not nn.Dense or context.method_name != "__call__" or len(args) != 1 or kwargs
                or module.dot_general is not None or module.dot_general_cls is not None):
            return next_fun(*args, **kwargs)
        inputs = args[0]
        if not is_small(jnp.shape(inputs)[-1], module.features, max_entries):
            return next_fun(*args, **kwargs)
        # nn.Dense.__call__, with its dot replaced
        kernel = module.param("kernel", module.kernel_init, (jnp.shape(inputs)[-1], module.features),
                              module.param_dtype)
        bias = module.param("bias", module.bias_init, (module.features,), module.param_dtype) if module.use_bias else None
        inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias, dtype=module.dtype)
        return dense_as_multiply_adds(inputs, kernel, bias)

    return intercept


def small_dense(max_entries: int = SMALL_DENSE_MAX_ENTRIES):
    """Context manager: inside it, small plain `nn.Dense` layers are computed as multiply-adds (0: a no-op)."""
    if max_entries < 0:
        raise ConfigError(f"small_dense needs max_entries >= 0 (0: off), got {max_entries}")
    return nn.intercept_methods(_interceptor(max_entries)) if max_entries else contextlib.nullcontext()


def resolve_small_dense(max_entries: int | None, backend: str | None = None) -> int:
    """None (automatic): SMALL_DENSE_MAX_ENTRIES on the CPU backend, 0 (off: XLA's dots) on GPU and TPU, where it
    has not been measured. An int is used as given (0: off)."""
    if max_entries is not None:
        if max_entries < 0:
            raise ConfigError(f"small_dense must be None (automatic), 0 (off) or a kernel size > 0, got {max_entries}")
        return max_entries
    backend = jax.default_backend() if backend is None else backend
    return SMALL_DENSE_MAX_ENTRIES if backend == "cpu" else 0
