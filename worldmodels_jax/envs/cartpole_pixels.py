"""Pixel CartPole: gymnax CartPole-v1's dynamics, observed as a 64×64×3 image drawn in JAX.

The image shows the cart and pole with anti-aliased edges (coverage from signed distances), so
the pole angle and cart position are visible to sub-pixel precision, but velocities are not:
they are only knowable from memory, which is exactly what M's h is for.

Drawing (pixel units, 64×64): the track is a 1-pixel line at row 46; the cart is a 10×6 box
centred on the track, x ∈ [-2.4, 2.4] mapped to columns [8, 56]; the pole is a capsule 3 pixels
wide and 26 pixels long pivoting at the cart's top. The pole is drawn longer than gym's to make
its angle legible at this resolution. The background is light grey (224), not white: on a pure-white
background V's sigmoid output saturates towards 1 for the ~95% background pixels, its gradients
vanish, and training sticks at the mean image (measured: reconstruction loss 312 with white, 13
with grey, after the same 800 Adam steps).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from gymnax.environments import spaces
from gymnax.environments.classic_control.cartpole import CartPole, EnvParams, EnvState

from worldmodels_jax.envs.stepping import step_with_reset

SIZE = 64
TRACK_ROW = 46.5  # a pixel centre: the track is a crisp 1-pixel line
X_SCALE = 10.0  # pixels per world unit: ±2.4 → ±24 pixels
CART_HALF = (5.0, 3.0)  # half width, half height (pixels)
POLE_LENGTH = 26.0
POLE_HALF_WIDTH = 1.5
AXLE_RADIUS = 1.6

BACKGROUND = jnp.array([224.0, 224.0, 224.0])  # light grey, see the module docstring
TRACK = jnp.array([0.0, 0.0, 0.0])
CART = jnp.array([40.0, 40.0, 40.0])
POLE = jnp.array([202.0, 152.0, 101.0])
AXLE = jnp.array([129.0, 132.0, 203.0])

_rows, _cols = jnp.meshgrid(jnp.arange(SIZE, dtype=jnp.float32) + 0.5, jnp.arange(SIZE, dtype=jnp.float32) + 0.5, indexing="ij")


def _coverage(signed_distance: jax.Array) -> jax.Array:
    """Anti-aliased coverage of a pixel whose centre lies `signed_distance` pixels outside a shape."""
    return jnp.clip(0.5 - signed_distance, 0.0, 1.0)


def _box_sdf(cx, cy, half_w, half_h):
    dx = jnp.abs(_cols - cx) - half_w
    dy = jnp.abs(_rows - cy) - half_h
    outside = jnp.sqrt(jnp.square(jnp.maximum(dx, 0.0)) + jnp.square(jnp.maximum(dy, 0.0)))
    return outside + jnp.minimum(jnp.maximum(dx, dy), 0.0)


def _segment_sdf(x0, y0, x1, y1, radius):
    px, py = _cols - x0, _rows - y0
    vx, vy = x1 - x0, y1 - y0
    t = jnp.clip((px * vx + py * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return jnp.sqrt(jnp.square(px - t * vx) + jnp.square(py - t * vy)) - radius


def _disc_sdf(cx, cy, radius):
    return jnp.sqrt(jnp.square(_cols - cx) + jnp.square(_rows - cy)) - radius


def render(x: jax.Array, theta: jax.Array) -> jax.Array:
    """The 64×64×3 uint8 frame for cart position `x` and pole angle `theta` (radians, 0 = upright)."""
    cart_x = SIZE / 2 + X_SCALE * x
    cart_y = TRACK_ROW
    pivot_y = cart_y - CART_HALF[1]
    tip_x = cart_x + POLE_LENGTH * jnp.sin(theta)
    tip_y = pivot_y - POLE_LENGTH * jnp.cos(theta)
    image = jnp.broadcast_to(BACKGROUND, (SIZE, SIZE, 3))
    layers = (
        (_coverage(jnp.abs(_rows - TRACK_ROW) - 0.5), TRACK),
        (_coverage(_box_sdf(cart_x, cart_y, *CART_HALF)), CART),
        (_coverage(_segment_sdf(cart_x, pivot_y, tip_x, tip_y, POLE_HALF_WIDTH)), POLE),
        (_coverage(_disc_sdf(cart_x, pivot_y, AXLE_RADIUS)), AXLE),
    )
    for alpha, colour in layers:
        image = image * (1.0 - alpha[..., None]) + alpha[..., None] * colour
    return jnp.round(image).astype(jnp.uint8)


class CartPolePixels(CartPole):
    """gymnax CartPole-v1 whose observation is a 64×64×3 uint8 image (registered as CartPolePixels-v1)."""

    def __init__(self):
        super().__init__()
        self.obs_shape = (SIZE, SIZE, 3)

    def get_obs(self, state: EnvState, params=None, key=None) -> jax.Array:
        return render(state.x, state.theta)

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: EnvState, action, params: EnvParams | None = None):
        """gymnax's step contract, drawing the returned frame once.

        gymnax's default renders the stepped and the reset state and selects one frame; here the state is
        selected and then drawn. `info["final_observation"]` is the stepped state's frame: a caller that
        drops `info` (as the rollouts do) lets XLA remove that second drawing. The outputs equal gymnax's.
        """
        return step_with_reset(self, key, state, action, params, self._select_then_draw)

    def _select_then_draw(self, done, key, obs_stepped, state_stepped, params):
        _, state_reset = self.reset_env(key, params)
        state = jax.tree.map(lambda reset, stepped: jax.lax.select(done, reset, stepped), state_reset, state_stepped)
        return self.get_obs(state), state

    @property
    def name(self) -> str:
        return "CartPolePixels-v1"

    def observation_space(self, params: EnvParams) -> spaces.Box:
        return spaces.Box(0, 255, (SIZE, SIZE, 3), dtype=jnp.uint8)
