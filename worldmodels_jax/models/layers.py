"""Stride-2 convolution layers that are fast on XLA's CPU backend, with the maths of the plain Flax layers.

XLA's CPU convolutions are weak, and its stride-2 *transposed* convolutions are the weakest: it lowers them to a
convolution over an input with zeros inserted between the pixels (lhs dilation), so three quarters of the
multiply-adds hit zeros, and its backward passes go through Eigen's generic convolution code. On this project's
2-core CPU that makes the paper's ConvVAE train about 6x slower than PyTorch (see docs/fast_cpu_layers.md).

This module computes exactly the same functions as one large matmul per layer plus cheap copies, which XLA's CPU
backend runs well (its dots go to a tuned GEMM library):

* `conv_transpose_s2(x, kernel)` is `lax.conv_transpose(x, kernel, (2, 2), "VALID")` (Flax's
  `nn.ConvTranspose(..., strides=(2, 2), padding="VALID")`, `transpose_kernel=False`, output (in - 1) * 2 + k).
  Output pixel (2m+py, 2n+px) only ever sees the kernel taps kernel[qy::2, qx::2] with q = 1 - p (odd kernels
  are first padded with a leading zero tap). `conv_transpose_s2_fast` picks, per layer shape, the formulation
  that moves the least data:
  - a 1x1 input (the decoder's first layer) is a dense matmul;
  - *polyphase im2col* (`conv_transpose_s2_phase`): each output phase is a stride-1 correlation of the padded
    input with a sub-kernel; the four phases are stacked on the output-feature axis of ONE matmul over im2col
    patches and interleaved (depth-to-space). No zeros are inserted between pixels;
  - *col2im* (`conv_transpose_s2_col2im`, `conv_transpose_s2_col2im_s2d`): one matmul gives every input pixel's
    contribution to each of its k*k output taps (exactly the useful multiply-adds), then the taps are
    overlap-added per output phase and interleaved. This is how PyTorch computes transposed convolutions.
* `conv_s2(x, kernel)` is `lax.conv_general_dilated(x, kernel, (2, 2), "VALID")` (Flax's
  `nn.Conv(..., strides=(2, 2), padding="VALID")`), computed as space-to-depth (stride 2 -> stride 1 on 4x the
  channels, kernel k/2), then either an im2col matmul (`conv_s2_s2d_im2col`) or one matmul to per-tap outputs
  and shifted adds (`conv_s2_s2d_col2im`), whichever intermediate is smaller; odd kernels use strided im2col.

They use only slices, pads, concatenations, `lax.split`, reshapes/transposes and one `dot` per layer, so their
gradients (which JAX derives) are matmuls plus the mirror-image copies (`lax.split` is used where a slice's
transpose would otherwise materialise a full-size zero tensor per tap).

`ConvS2` and `ConvTransposeS2` are drop-in Linen modules: the same parameter names (`kernel` with shape
(kh, kw, in, out), `bias` with shape (out,)), the same initialisers (lecun_normal, zeros) and the same outputs
as `nn.Conv` / `nn.ConvTranspose` with stride 2 and VALID padding. Their `impl` field picks the formulation:

* "xla": XLA's native convolution ops (the same HLO as the plain Flax layers; cuDNN on GPU);
* "fast": the matmul formulations above;
* "auto" (default): "fast" on the CPU backend, "xla" elsewhere;
* "forward": for forward-only use (rollouts, encoding), per layer shape (`conv_s2_forward`): a narrow stride-2
  convolution (4 * in <= 16 and out <= 16 channels, the small V's RGB layer) laid out space-to-depth before
  XLA's op, one with at most 6x6 output pixels as the "fast" matmul, the rest XLA's op; "xla" off the CPU.

Use `make_conv` / `make_conv_transpose` to build them.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from worldmodels_jax.errors import ConfigError, ShapeError

Array = jax.Array
Initializer = Callable[..., Array]

IMPLS = ("auto", "xla", "fast", "forward")


def lecun_normal_flat() -> Initializer:
    """`nn.initializers.lecun_normal()` with its truncated normal drawn as a flat vector and reshaped.

    The values are bit for bit the same (JAX's counter-based random bits depend only on the flat index), but
    XLA's CPU backend compiles the flat draw of a 4-D kernel about 4x faster (0.3 s against 1.3-1.9 s each on
    this project's Zen 3 CPU): a small V's eager initialisation compiled for 28-33 s, most of it in these draws.
    """

    def init(key: Array, shape, dtype=jnp.float32) -> Array:
        shape = tuple(int(n) for n in shape)
        if len(shape) < 2:
            raise ShapeError(f"lecun_normal_flat needs a kernel of at least 2 dimensions (..., in, out), got {shape}")
        dtype = jax.dtypes.canonicalize_dtype(dtype)
        variance = jnp.array(1.0 / max(1, math.prod(shape[:-1])), dtype=dtype)  # 1 / fan_in
        stddev = jnp.sqrt(variance) / jnp.array(0.87962566103423978, dtype)
        return (jax.random.truncated_normal(key, -2, 2, (math.prod(shape),), dtype) * stddev).reshape(shape)

    return init


_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """Map "auto" | "xla" | "fast" | "forward" to the concrete formulation for `backend` (default: JAX's default
    backend).

    "auto" is "fast" on the CPU backend and "xla" elsewhere, where XLA calls cuDNN (or the TPU's native ops).
    "forward" stays "forward" on the CPU backend and is "xla" elsewhere.
    """
    if impl not in IMPLS:
        raise ConfigError(f"conv impl must be one of {IMPLS}, got {impl!r}")
    if impl in ("xla", "fast"):
        return impl
    backend = jax.default_backend() if backend is None else backend
    if impl == "forward":
        return "forward" if backend == "cpu" else "xla"
    return "fast" if backend == "cpu" else "xla"


def _check_nhwc(x: Array, kernel: Array, what: str) -> None:
    if x.ndim != 4:
        raise ShapeError(f"{what}: expected an NHWC batch (B, H, W, C), got shape {x.shape}")
    if kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ShapeError(
            f"{what}: kernel must be (kh, kw, in={x.shape[3]}, out), got kernel {kernel.shape} for input {x.shape}"
        )


def _patches(x: Array, ky: int, kx: int, stride: int, out_h: int, out_w: int) -> Array:
    """im2col: (B, H, W, C) -> (B, out_h, out_w, ky*kx*C), taps ordered (a, b, c) like a reshaped HWIO kernel."""
    cols = []
    for a in range(ky):
        for b in range(kx):
            cols.append(
                lax.slice(
                    x,
                    (0, a, b, 0),
                    (x.shape[0], a + stride * (out_h - 1) + 1, b + stride * (out_w - 1) + 1, x.shape[3]),
                    (1, stride, stride, 1),
                )
            )
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _matmul_last(p: Array, w2: Array, precision: Any) -> Array:
    """(..., K) @ (K, N) as a single 2-D dot (XLA's CPU backend runs 2-D dots best)."""
    lead = p.shape[:-1]
    y = jnp.dot(p.reshape(-1, p.shape[-1]), w2, precision=precision)
    return y.reshape(*lead, w2.shape[-1])


# --------------------------------------------------------------------------------------------------------------
# Stride-2 VALID convolution
# --------------------------------------------------------------------------------------------------------------


def conv_s2_xla(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Reference: XLA's native stride-2 VALID convolution (what `nn.Conv` emits)."""
    return lax.conv_general_dilated(x, kernel, (2, 2), "VALID", dimension_numbers=_DIMS, precision=precision)


def _conv_s2_shapes(x: Array, kernel: Array) -> tuple[int, int, int, int, int, int]:
    """(ky, kx, in, out, out_h, out_w) of a stride-2 VALID convolution; ShapeError for a bad input or kernel, or
    an input smaller than the kernel."""
    _check_nhwc(x, kernel, "conv_s2")
    ky, kx, cin, cout = kernel.shape
    out_h = (x.shape[1] - ky) // 2 + 1
    out_w = (x.shape[2] - kx) // 2 + 1
    if out_h < 1 or out_w < 1:
        raise ShapeError(f"conv_s2: input {x.shape} is smaller than the kernel {kernel.shape[:2]}")
    return ky, kx, cin, cout, out_h, out_w


def conv_s2_im2col(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Stride-2 VALID convolution as one im2col matmul: (B*Ho*Wo, k*k*C) @ (k*k*C, O)."""
    ky, kx, cin, cout, out_h, out_w = _conv_s2_shapes(x, kernel)
    p = _patches(x, ky, kx, 2, out_h, out_w)
    return _matmul_last(p, kernel.reshape(ky * kx * cin, cout), precision)


def _space_to_depth(x: Array, out_h: int, out_w: int, ky: int, kx: int) -> Array:
    """Crop x to the rows/cols a stride-2 VALID conv reads, then (B, 2H, 2W, C) -> (B, H, W, 4C) ordered (p, q, c)."""
    b, _, _, c = x.shape
    x = x[:, : 2 * (out_h - 1) + ky, : 2 * (out_w - 1) + kx, :]
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    return x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h2, w2, 4 * c)


def _s2d_kernel(kernel: Array) -> Array:
    """(2U, 2V, C, O) -> (U, V, 4C, O) with the 4C axis ordered (p, q, c) to match `_space_to_depth`."""
    ky, kx, cin, cout = kernel.shape
    k6 = kernel.reshape(ky // 2, 2, kx // 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    return k6.reshape(ky // 2, kx // 2, 4 * cin, cout)


def conv_s2_s2d_im2col(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Stride-2 VALID convolution (even kernel) as space-to-depth, then a stride-1 im2col matmul with k/2 x k/2 taps.

    Fewer, wider copies than strided im2col: k*k/4 slices of 4*in channels instead of k*k slices of in channels.
    """
    ky, kx, cin, cout, out_h, out_w = _conv_s2_shapes(x, kernel)
    if ky % 2 or kx % 2:
        return conv_s2_im2col(x, kernel, precision)
    xs = _space_to_depth(x, out_h, out_w, ky, kx)
    ks = _s2d_kernel(kernel)
    p = _patches(xs, ky // 2, kx // 2, 1, out_h, out_w)
    return _matmul_last(p, ks.reshape(-1, cout), precision)


def conv_s2_s2d_col2im(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Stride-2 VALID convolution (even kernel) as space-to-depth, ONE matmul to per-tap outputs, then shifted adds.

    After space-to-depth the conv is a stride-1 correlation with (k/2) x (k/2) taps of 4*in channels. Instead of
    copying k*k/4 shifted input windows (im2col), every space-to-depth pixel is multiplied by all taps at once,
    (B*Hs*Ws, 4*in) @ (4*in, taps*out), and out[i, j] = sum over taps (a, b) of T[i + a, j + b, tap]: the copies
    move output-sized (out-channel) data instead of input-sized (4*in) data. The backward pass is the mirror
    image: the taps' gradients are shifted (padded) copies of the output gradient, then two matmuls.
    """
    ky, kx, cin, cout, out_h, out_w = _conv_s2_shapes(x, kernel)
    if ky % 2 or kx % 2:
        return conv_s2_im2col(x, kernel, precision)
    taps_y, taps_x = ky // 2, kx // 2
    xs = _space_to_depth(x, out_h, out_w, ky, kx)  # (B, out_h + taps_y - 1, out_w + taps_x - 1, 4 * cin)
    ks = _s2d_kernel(kernel).transpose(2, 0, 1, 3).reshape(4 * cin, taps_y * taps_x * cout)
    t = _matmul_last(xs, ks, precision)
    # lax.split (whose transpose is one concatenate) rather than per-tap slices of t.
    per_tap = lax.split(t, [cout] * (taps_y * taps_x), axis=3)
    acc = None
    for a in range(taps_y):
        for b in range(taps_x):
            shifted = per_tap[a * taps_x + b][:, a : a + out_h, b : b + out_w, :]
            acc = shifted if acc is None else acc + shifted
    return acc


def conv_s2_s2d(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Stride-2 VALID convolution as space-to-depth + a stride-1 XLA convolution (even kernels only)."""
    _check_nhwc(x, kernel, "conv_s2")
    ky, kx, cin, cout = kernel.shape
    if ky % 2 or kx % 2:
        raise ShapeError("conv_s2_s2d needs even kernel sizes")
    out_h = (x.shape[1] - ky) // 2 + 1
    out_w = (x.shape[2] - kx) // 2 + 1
    b = x.shape[0]
    x = x[:, : 2 * (out_h - 1) + ky, : 2 * (out_w - 1) + kx, :]
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    xs = x.reshape(b, h2, 2, w2, 2, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, h2, w2, 4 * cin)
    ks = kernel.reshape(ky // 2, 2, kx // 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    ks = ks.reshape(ky // 2, kx // 2, 4 * cin, cout)
    return lax.conv_general_dilated(xs, ks, (1, 1), "VALID", dimension_numbers=_DIMS, precision=precision)


# --------------------------------------------------------------------------------------------------------------
# Stride-2 VALID transposed convolution (Flax / lax.conv_transpose convention, transpose_kernel=False)
# --------------------------------------------------------------------------------------------------------------


def conv_transpose_s2_xla(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Reference: XLA's native stride-2 VALID transposed convolution (what `nn.ConvTranspose` emits)."""
    return lax.conv_transpose(x, kernel, (2, 2), "VALID", dimension_numbers=_DIMS, precision=precision)


def _even_kernel(kernel: Array) -> tuple[Array, int, int]:
    """Pad an odd kernel with a leading zero row/column, so it is even; return it and the extra output rows/cols.

    In lax.conv_transpose's convention, out[o] = sum_i x[i] * kernel[k - 1 - (o - 2i)]. Prepending a zero tap
    makes a kernel of size k + 1 whose first (in-1)*2 + k outputs are the original ones, plus one trailing output.
    """
    ky, kx = kernel.shape[:2]
    pad_y, pad_x = ky % 2, kx % 2
    if pad_y or pad_x:
        kernel = jnp.pad(kernel, ((pad_y, 0), (pad_x, 0), (0, 0), (0, 0)))
    return kernel, pad_y, pad_x


def _phase_kernel(kernel: Array) -> Array:
    """(2Ly, 2Lx, C, O) even kernel -> (Ly, Lx, C, 4*O) with the phases (py, px) stacked on the last axis.

    Output phase p of a stride-2 transposed convolution (VALID, no kernel flip) is the stride-1 correlation of
    the input padded by L-1 on both sides with the sub-kernel kernel[1-p::2].
    """
    ly, lx = kernel.shape[0] // 2, kernel.shape[1] // 2
    c, o = kernel.shape[2], kernel.shape[3]
    # kernel[2a + q, 2b + r] -> (a, q, b, r); phase p uses q = 1 - p, so reverse q and r.
    k6 = kernel.reshape(ly, 2, lx, 2, c, o)[:, ::-1, :, ::-1]
    return k6.transpose(0, 2, 4, 1, 3, 5).reshape(ly, lx, c, 4 * o)


def _interleave(y: Array, out_h: int, out_w: int) -> Array:
    """(B, H, W, 4*O) with phases (py, px, o) -> (B, 2H, 2W, O) depth-to-space, cropped to (out_h, out_w)."""
    b, h, w, c4 = y.shape
    o = c4 // 4
    y = y.reshape(b, h, w, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, o)
    if (2 * h, 2 * w) != (out_h, out_w):
        y = y[:, :out_h, :out_w, :]
    return y


def conv_transpose_s2_phase(x: Array, kernel: Array, precision: Any = None, method: str = "im2col") -> Array:
    """Stride-2 VALID transposed convolution by polyphase decomposition (no zero insertion).

    method:
      "im2col": the four phases as one matmul over im2col patches, then depth-to-space (default);
      "conv":   the four phases as one stride-1 XLA convolution with 4*O features, then depth-to-space;
      "conv4":  four separate stride-1 XLA convolutions, then interleaved.
    A 1x1 input is always a dense matmul.
    """
    _check_nhwc(x, kernel, "conv_transpose_s2")
    b, h, w, cin = x.shape
    ky, kx, _, cout = kernel.shape
    out_h, out_w = 2 * (h - 1) + ky, 2 * (w - 1) + kx
    if h == 1 and w == 1:
        # out[y, x] = sum_c x[c] * kernel[ky-1-y, kx-1-x, c]: a dense layer.
        kf = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(cin, ky * kx * cout)
        return jnp.dot(x.reshape(b, cin), kf, precision=precision).reshape(b, ky, kx, cout)
    ke, _, _ = _even_kernel(kernel)
    ly, lx = ke.shape[0] // 2, ke.shape[1] // 2
    xp = jnp.pad(x, ((0, 0), (ly - 1, ly - 1), (lx - 1, lx - 1), (0, 0)))
    ph, pw = h + ly - 1, w + lx - 1
    if method == "im2col":
        kp = _phase_kernel(ke)
        y = _matmul_last(_patches(xp, ly, lx, 1, ph, pw), kp.reshape(ly * lx * cin, 4 * cout), precision)
    elif method == "conv":
        kp = _phase_kernel(ke)
        y = lax.conv_general_dilated(xp, kp, (1, 1), "VALID", dimension_numbers=_DIMS, precision=precision)
    elif method == "conv4":
        phases = []
        for py in range(2):
            for px in range(2):
                sub = ke[1 - py :: 2, 1 - px :: 2]
                phases.append(
                    lax.conv_general_dilated(xp, sub, (1, 1), "VALID", dimension_numbers=_DIMS, precision=precision)
                )
        y = jnp.concatenate(phases, axis=-1)
    else:
        raise ConfigError(f"conv_transpose_s2_phase: unknown method {method!r}")
    return _interleave(y, out_h, out_w)


def conv_transpose_s2_col2im(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Stride-2 VALID transposed convolution as one matmul to per-tap outputs, then overlap-add (col2im).

    taps[b, i, j, u, v] = x[b, i, j] @ kernel[ky-1-u, kx-1-v] (one (B*H*W, C) @ (C, ky*kx*O) matmul, exactly the
    useful multiply-adds), and out[2i+u, 2j+v] = sum of the taps landing there. The overlap-add is done per output
    phase as a sum of shifted (padded) tap slices, then the phases are interleaved.
    """
    _check_nhwc(x, kernel, "conv_transpose_s2")
    b, h, w, cin = x.shape
    ky, kx, _, cout = kernel.shape
    out_h, out_w = 2 * (h - 1) + ky, 2 * (w - 1) + kx
    kf = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(cin, ky * kx * cout)
    t = jnp.dot(x.reshape(b * h * w, cin), kf, precision=precision)
    if h == 1 and w == 1:
        return t.reshape(b, ky, kx, cout)
    # lax.split (whose transpose is a concatenate) keeps the backward pass a cheap gather.
    taps = lax.split(t.reshape(b, h, w, ky * kx * cout), [cout] * (ky * kx), axis=3)
    ly, lx = (ky + 1) // 2, (kx + 1) // 2
    phases = []
    for py in range(2):
        for px in range(2):
            acc = None
            for jy in range((ky - py + 1) // 2):
                for jx in range((kx - px + 1) // 2):
                    tap = taps[(py + 2 * jy) * kx + px + 2 * jx]
                    tap = jnp.pad(tap, ((0, 0), (jy, ly - 1 - jy), (jx, lx - 1 - jx), (0, 0)))
                    acc = tap if acc is None else acc + tap
            phases.append(acc)
    y = jnp.concatenate(phases, axis=-1)
    return _interleave(y, out_h, out_w)


def conv_transpose_s2_col2im_s2d(x: Array, kernel: Array, precision: Any = None) -> Array:
    """col2im with the taps grouped by output phase: one matmul, L*L shifted adds of 4*out channels, depth-to-space.

    Writing the tap index u = 2j + p (j: shift, p: output phase), taps[b, i, (jy, jx, py, px, o)] =
    x[b, i] @ kernel_flipped[2jy + py, 2jx + px] and the phase-stacked output is
    D[b, m, (py, px, o)] = sum_{jy, jx} taps[b, m - (jy, jx), (jy, jx, py, px, o)]: L*L shifted adds of 4*out-wide
    chunks. Its backward pass is the mirror image: a space-to-depth of the output gradient and L*L slices.
    Odd kernels are padded to even with a zero tap (some wasted multiply-adds).
    """
    _check_nhwc(x, kernel, "conv_transpose_s2")
    b, h, w, cin = x.shape
    ky, kx, _, cout = kernel.shape
    out_h, out_w = 2 * (h - 1) + ky, 2 * (w - 1) + kx
    ke, _, _ = _even_kernel(kernel)
    ly, lx = ke.shape[0] // 2, ke.shape[1] // 2
    kf = ke[::-1, ::-1].reshape(ly, 2, lx, 2, cin, cout).transpose(4, 0, 2, 1, 3, 5)
    kf = kf.reshape(cin, ly * lx * 4 * cout)
    t = jnp.dot(x.reshape(b * h * w, cin), kf, precision=precision).reshape(b, h, w, ly * lx * 4 * cout)
    chunks = lax.split(t, [4 * cout] * (ly * lx), axis=3)
    acc = None
    for jy in range(ly):
        for jx in range(lx):
            c = jnp.pad(chunks[jy * lx + jx], ((0, 0), (jy, ly - 1 - jy), (jx, lx - 1 - jx), (0, 0)))
            acc = c if acc is None else acc + c
    return _interleave(acc, out_h, out_w)


def to_phase_layout(y: Array) -> Array:
    """(B, 2H, 2W, C) -> (4*C, B, H, W), channels first, ordered (py, px, c): [(py, px, c), b, m, n] = y[b, 2m+py, 2n+px, c].

    The layout `conv_transpose_s2_phases` returns; a permutation, so a sum over all elements is unchanged.
    """
    b, hh, ww, c = y.shape
    if hh % 2 or ww % 2:
        raise ShapeError(f"to_phase_layout needs even height and width, got {y.shape}")
    return y.reshape(b, hh // 2, 2, ww // 2, 2, c).transpose(2, 4, 5, 0, 1, 3).reshape(4 * c, b, hh // 2, ww // 2)


def from_phase_layout(y: Array) -> Array:
    """The inverse of `to_phase_layout`: (4*C, B, H, W) -> (B, 2H, 2W, C)."""
    c4, b, h, w = y.shape
    c = c4 // 4
    return y.reshape(2, 2, c, b, h, w).transpose(3, 4, 0, 5, 1, 2).reshape(b, 2 * h, 2 * w, c)


def conv_transpose_s2_phases(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`to_phase_layout(conv_transpose_s2_xla(x, kernel))` for an even kernel, computed as a channels-first col2im.

    T[(jy, jx, py, px, o), (b, i, j)] = kernel_flipped[2jy + py, 2jx + px, :, o] . x[b, i, j] is ONE matmul with
    the pixels on the minor (lane) axis, and the output phase (py, px, o) at (m, n) is the sum of the L*L shifted
    chunks T[(jy, jx, ...), m - jy, n - jx] (L = k/2): the same multiply-adds as `conv_transpose_s2_col2im_s2d`,
    but the shifted adds run along rows of pixels instead of along a few output channels. That is what a layer
    with few output channels needs (the decoder's last, 3 channels): on the 2-core CPU its forward, sigmoid, loss
    and backward take 21 ms per 100 frames in this layout against 26 ms in NHWC. The training loss compares in
    this layout (`ConvVAE.decoder_phases`), so the output is never interleaved back.
    """
    _check_nhwc(x, kernel, "conv_transpose_s2_phases")
    b, h, w, cin = x.shape
    ky, kx, _, cout = kernel.shape
    if ky % 2 or kx % 2:
        raise ShapeError(f"conv_transpose_s2_phases needs an even kernel, got {kernel.shape[:2]}")
    ly, lx = ky // 2, kx // 2
    kf = kernel[::-1, ::-1].reshape(ly, 2, lx, 2, cin, cout).transpose(0, 2, 1, 3, 5, 4)
    kf = kf.reshape(ly * lx * 4 * cout, cin)
    t = lax.dot_general(kf, x.reshape(b * h * w, cin), (((1,), (1,)), ((), ())), precision=precision)
    chunks = lax.split(t.reshape(ly * lx, 4 * cout, b, h, w), [1] * (ly * lx), axis=0)
    acc = None
    for jy in range(ly):
        for jx in range(lx):
            c = jnp.pad(chunks[jy * lx + jx][0], ((0, 0), (0, 0), (jy, ly - 1 - jy), (jx, lx - 1 - jx)))
            acc = c if acc is None else acc + c
    return acc


def conv_s2(x: Array, kernel: Array, impl: str = "auto", precision: Any = None) -> Array:
    """Stride-2 VALID convolution, NHWC x HWIO, no bias. `impl`: "auto" | "xla" | "fast" | "forward"."""
    impl = resolve_impl(impl)
    if impl == "xla":
        return conv_s2_xla(x, kernel, precision)
    if impl == "forward":
        return conv_s2_forward(x, kernel, precision)
    return conv_s2_fast(x, kernel, precision)


FORWARD_S2D_MAX_CHANNELS = 16
"""`conv_s2_forward` lays a layer out space-to-depth when 4 * in and out are both at most this."""
FORWARD_MATMUL_MAX_OUTPUT_PIXELS = 36
"""`conv_s2_forward` computes a layer with at most this many output pixels (6x6) as `conv_s2_fast`'s matmul."""


def conv_s2_forward(x: Array, kernel: Array, precision: Any = None) -> Array:
    """The forward-only CPU formulation, per layer shape (even kernels; odd ones use XLA's op):

    - a narrow layer (4 * in <= 16 and out <= 16, the small V's RGB layer): space-to-depth, then XLA's
      convolution (a 2x2 stride-1 convolution over 4x the channels);
    - a layer with a small output (at most 6x6 pixels, the encoders' last two layers): `conv_s2_fast`'s single
      matmul (s2d im2col or col2im, whichever intermediate is smaller);
    - otherwise XLA's own convolution.

    XLA's CPU convolution is slow when both channel counts are small, and on small images. On the 2-core CPU,
    batch 128 inside a rollout's scan: the small V's RGB layer (64x64x3 -> 31x31x8) took 9.8 ms as XLA's op
    and 4.8 ms laid out space-to-depth, but the paper's (3 -> 32) 4.5 against 5.9 ms; its 14x14x16 -> 6x6x32
    layer took 3.2 ms as XLA's op and 1.3 ms as col2im. A CarRacing controller generation ran 1.33x faster with
    the first rule and 1.14x faster again with the second (docs/fast_cpu_layers.md, "Forward-only encoder").
    """
    _check_nhwc(x, kernel, "conv_s2")
    ky, kx, cin, cout = kernel.shape
    if ky % 2 or kx % 2:
        return conv_s2_xla(x, kernel, precision)
    out_h, out_w = (x.shape[1] - ky) // 2 + 1, (x.shape[2] - kx) // 2 + 1
    if 4 * cin <= FORWARD_S2D_MAX_CHANNELS and cout <= FORWARD_S2D_MAX_CHANNELS:
        return conv_s2_s2d(x, kernel, precision)
    if out_h * out_w <= FORWARD_MATMUL_MAX_OUTPUT_PIXELS:
        return conv_s2_fast(x, kernel, precision)
    return conv_s2_xla(x, kernel, precision)


def conv_s2_fast(x: Array, kernel: Array, precision: Any = None) -> Array:
    """The fast CPU formulation of a stride-2 VALID convolution: space-to-depth, then im2col or col2im.

    Like `conv_transpose_s2_fast`, it picks whichever intermediate is smaller: im2col's patches
    (Ho*Wo, taps*4*in) or col2im's per-tap outputs ((Ho+U-1)*(Wo+U-1), taps*out), U = k/2. For the paper's
    encoder this is im2col for 64->31 (3 input channels) and 6->2, col2im for 31->14 and 14->6, which measured
    fastest on the 2-core CPU (31->14: 2.4x faster fwd + bwd than im2col at batch 100, 1.7x at batch 20).
    Odd kernels use strided im2col.
    """
    ky, kx, cin, cout, out_h, out_w = _conv_s2_shapes(x, kernel)
    if ky % 2 or kx % 2:
        return conv_s2_im2col(x, kernel, precision)
    taps_y, taps_x = ky // 2, kx // 2
    im2col_size = out_h * out_w * taps_y * taps_x * 4 * cin
    col2im_size = (out_h + taps_y - 1) * (out_w + taps_x - 1) * taps_y * taps_x * cout
    if col2im_size < im2col_size:
        return conv_s2_s2d_col2im(x, kernel, precision)
    return conv_s2_s2d_im2col(x, kernel, precision)


def conv_transpose_s2(x: Array, kernel: Array, impl: str = "auto", precision: Any = None) -> Array:
    """Stride-2 VALID transposed convolution, Flax convention (no kernel flip). `impl`: "auto" | "xla" | "fast" |
    "forward" (XLA's op)."""
    if resolve_impl(impl) in ("xla", "forward") or min(kernel.shape[:2]) < 2:
        # Kernels smaller than the stride keep XLA's op (lax pads their output to 2*in; not worth a special case).
        return conv_transpose_s2_xla(x, kernel, precision)
    return conv_transpose_s2_fast(x, kernel, precision)


def conv_transpose_s2_fast(x: Array, kernel: Array, precision: Any = None) -> Array:
    """The fast CPU formulation: dense on a 1x1 input, else col2im or polyphase-im2col, whichever moves less data.

    col2im's intermediate is (H*W, kh*kw*out) and does exactly the useful multiply-adds; polyphase im2col's is
    ((H+L-1)*(W+L-1), L*L*in) with L = ceil(k/2). For the paper's decoder this picks col2im for 5->13 and 30->64
    and im2col for 13->30, which is what measured fastest on a 2-core CPU. Even kernels use the phase-grouped
    col2im (`conv_transpose_s2_col2im_s2d`, fewer and wider copies); odd ones the per-tap col2im (no zero taps).
    """
    _check_nhwc(x, kernel, "conv_transpose_s2")
    _, h, w, cin = x.shape
    ky, kx, _, cout = kernel.shape
    if h == 1 and w == 1:
        return conv_transpose_s2_col2im(x, kernel, precision)  # a dense matmul
    ly, lx = (ky + 1) // 2, (kx + 1) // 2
    col2im_size = h * w * ky * kx * cout
    im2col_size = (h + ly - 1) * (w + lx - 1) * ly * lx * cin
    if col2im_size > im2col_size:
        return conv_transpose_s2_phase(x, kernel, precision, method="im2col")
    if ky % 2 == 0 and kx % 2 == 0:
        return conv_transpose_s2_col2im_s2d(x, kernel, precision)
    return conv_transpose_s2_col2im(x, kernel, precision)


# --------------------------------------------------------------------------------------------------------------
# Linen modules (same parameter tree as nn.Conv / nn.ConvTranspose)
# --------------------------------------------------------------------------------------------------------------


def _kernel_hw(kernel_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(kernel_size, int):
        return kernel_size, kernel_size
    return tuple(kernel_size)  # type: ignore[return-value]


class ConvS2(nn.Module):
    """`nn.Conv(features, kernel_size, strides=(2, 2), padding="VALID")` with a selectable formulation.

    Parameters: `kernel` (kh, kw, in, features), lecun_normal; `bias` (features,), zeros. Input NHWC, unbatched
    (H, W, C) inputs are allowed like in Flax.
    """

    features: int
    kernel_size: int | tuple[int, int]
    impl: str = "auto"
    use_bias: bool = True
    precision: Any = None
    kernel_init: Initializer = lecun_normal_flat()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        unbatched = x.ndim == 3
        if unbatched:
            x = x[None]
        if x.ndim != 4:
            raise ShapeError(f"ConvS2 expects NHWC (B, H, W, C) or (H, W, C) input, got shape {x.shape}")
        kh, kw = _kernel_hw(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
        y = conv_s2(x, kernel.astype(x.dtype), self.impl, self.precision)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(y.dtype)
        return y[0] if unbatched else y


class ConvTransposeS2(nn.Module):
    """`nn.ConvTranspose(features, kernel_size, strides=(2, 2), padding="VALID")` with a selectable formulation.

    Parameters: `kernel` (kh, kw, in, features), lecun_normal; `bias` (features,), zeros. Output spatial size
    (in - 1) * 2 + k. Input NHWC; unbatched (H, W, C) inputs are allowed like in Flax.
    """

    features: int
    kernel_size: int | tuple[int, int]
    impl: str = "auto"
    use_bias: bool = True
    precision: Any = None
    kernel_init: Initializer = lecun_normal_flat()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array, phase_layout: bool = False) -> Array:
        """x (B, H, W, C) -> (B, 2(H-1)+k, 2(W-1)+k, features); with `phase_layout` (even kernels, batched input)
        the same values as `to_phase_layout(...)`: (4*features, B, H-1+k/2, W-1+k/2)."""
        unbatched = x.ndim == 3
        if unbatched and not phase_layout:
            x = x[None]
        if x.ndim != 4:
            raise ShapeError(f"ConvTransposeS2 expects NHWC (B, H, W, C) or (H, W, C) input, got shape {x.shape}")
        kh, kw = _kernel_hw(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        if phase_layout:
            if kh % 2 or kw % 2:
                raise ShapeError(f"ConvTransposeS2(phase_layout=True) needs an even kernel, got {(kh, kw)}")
            if resolve_impl(self.impl) == "fast":
                y = conv_transpose_s2_phases(x, kernel.astype(x.dtype), self.precision)
            else:
                y = to_phase_layout(conv_transpose_s2(x, kernel.astype(x.dtype), self.impl, self.precision))
            if bias is not None:
                y = y + jnp.tile(bias.astype(y.dtype), 4)[:, None, None, None]
            return y
        y = conv_transpose_s2(x, kernel.astype(x.dtype), self.impl, self.precision)
        if bias is not None:
            y = y + bias.astype(y.dtype)
        return y[0] if unbatched else y


def make_conv(features: int, kernel_size: int, impl: str = "auto", name: str | None = None) -> nn.Module:
    """A stride-2 VALID conv layer with nn.Conv's parameter tree; impl "auto" | "xla" | "fast" | "forward"."""
    resolve_impl(impl)  # validate early
    return ConvS2(features, kernel_size, impl=impl, name=name)


def make_conv_transpose(features: int, kernel_size: int, impl: str = "auto", name: str | None = None) -> nn.Module:
    """A stride-2 VALID transposed conv layer with nn.ConvTranspose's parameter tree; impl "auto" | "xla" | "fast" |
    "forward"."""
    resolve_impl(impl)
    return ConvTransposeS2(features, kernel_size, impl=impl, name=name)
