"""CarRacing as a gymnax environment, written in JAX (track, car dynamics and pixels).

A re-implementation of gymnasium's CarRacing-v3 that runs under `jit` and `vmap`:

- **Track**: gymnasium's recipe, ported step for step: 12 random checkpoints around a circle, a heading that
  chases them with a turn-rate limit (three laps here, five in gymnasium; the trace has converged), and the
  last complete lap cut out as a closed loop of tiles (about 250-350). Failed tracks are regenerated
  (`lax.while_loop`). Tiles live in fixed-size arrays of `max_tiles` rows with a valid count `n_tiles`.
- **Car**: a rigid body with four wheels, front steering with a rate-limited steering joint, rear-wheel
  drive, per-wheel spin, brakes that lock above 0.9, and a friction circle per wheel (grass has 60% of the
  road's grip), with gymnasium's `car_dynamics` constants. See docs/carracing.md for the equations.
- **Pixels**: the centre line is rasterized once per reset into a distance texture (128x128 uint8 texels
  over the playfield) and sampled bilinearly with the car's pose at every step, one 3x3-texel window per
  4x4-pixel block. The camera follows and rotates with the car, framed like the original's 96x96 frame
  cropped to rows 0:84 and resized to 64x64.
- **Reward and episode end**: -0.1 per frame, 1000/N per newly visited tile, -100 and termination when the
  car leaves the playfield, termination on lap completion, truncation at `max_steps_in_episode`.

Auto-reset is the expensive part (a track is a ~1500-step sequential loop plus a rasterization), so
`CarRacing.step` overrides gymnax's compute-both-and-select auto-reset: unbatched it uses `lax.cond`, and
under `vmap` a custom batching rule resets only the environments that are done, `reset_chunk` at a time.
Baselines: `random_policy` and `scripted_driver` (pure pursuit on the centre line).
"""

from __future__ import annotations

import math
from functools import partial
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from worldmodels_jax.envs.stepping import step_with_reset
from worldmodels_jax.errors import ConfigError, ShapeError

# ---------------------------------------------------------------------------------------------------------
# Constants from gymnasium/envs/box2d/car_racing.py and car_dynamics.py (world units = pixels / SCALE).
SCALE = 6.0
FPS = 50
NUM_CHECKPOINTS = 12
# gymnasium traces up to 2500 points and stops after 5 laps, keeping the last; the trace has converged by the
# third lap (60/60 random tracks: same tile count, points within 0.013 units), so we stop after 3 laps and
# scan 1500 points (3 laps of up to 400 tiles + the start), which makes resets ~40% cheaper.
GEN_STEPS = 1500
STOP_AFTER_LAPS = 3
BORDER_MIN_COUNT = 4

# car_dynamics
SIZE = 0.02
ENGINE_POWER = 100000000 * SIZE * SIZE  # 40000
WHEEL_MOMENT_OF_INERTIA = 4000 * SIZE * SIZE  # 1.6
FRICTION_LIMIT = 1000000 * SIZE * SIZE  # 400 on road
TIRE_STIFFNESS = 205000 * SIZE * SIZE  # 82: force per unit of slip speed
WHEEL_R = 27 * SIZE
WHEEL_HALF_W = 14 * SIZE
WHEELPOS = np.array([(-55, +80), (+55, +80), (-55, -82), (+55, -82)], np.float64) * SIZE
HULL_POLYS = [
    [(-60, +130), (+60, +130), (+60, +110), (-60, +110)],
    [(-15, +120), (+15, +120), (+20, +20), (-20, 20)],
    [(+25, +20), (+50, -10), (+50, -40), (+20, -90), (-20, -90), (-50, -40), (-50, -10), (-25, +20)],
    [(-50, -120), (+50, -120), (+50, -90), (-50, -90)],
]
WHEEL_POLY = np.array([(-WHEEL_HALF_W, WHEEL_R), (WHEEL_HALF_W, WHEEL_R), (WHEEL_HALF_W, -WHEEL_R),
                       (-WHEEL_HALF_W, -WHEEL_R)])
BRAKE_FORCE = 15.0  # rad/s removed from a wheel's spin per step at brake = 1
STEER_LIMIT = 0.4  # steering joint limit (rad)

# colours (gymnasium, domain_randomize=False)
ROAD_COLOR = (102.0, 102.0, 102.0)
BG_COLOR = (102.0, 204.0, 102.0)
GRASS_COLOR = (102.0, 230.0, 102.0)
HULL_COLOR = (204.0, 0.0, 0.0)
WHEEL_COLOR = (0.0, 0.0, 0.0)

# The original's camera after crop [0:84] and resize 96x84 -> 64x64: gymnasium draws at ZOOM*SCALE = 16.2
# window pixels per unit in a 1000x800 window, scaled to 96x96, with the car at (W/2, 3H/4).
OBS_SIZE = 64
_ZOOM_PX = 2.7 * SCALE
OBS_PX_PER_UNIT_X = _ZOOM_PX * 96 / 1000 * 64 / 96  # 1.0368
OBS_PX_PER_UNIT_Y = _ZOOM_PX * 96 / 800 * 64 / 84  # 1.4811
OBS_CAR_ROW = 72 * 64 / 84  # 54.86: the car's row in the 64x64 frame
OBS_CAR_COL = 32.0

MAX_WIDTH_FACTOR = 1.5  # track_width may be at most this times the default (static texture splat box)
DIST_QUANT = 8.0  # texture stores min(255, round(8 * distance)): 1/8 unit resolution up to ~32 units

# discrete actions exactly as gymnasium's step(): 0 nothing, 1 right, 2 left, 3 gas, 4 brake
DISCRETE_ACTIONS = np.array(
    [[0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [-0.6, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.8]], np.float32
)


def _polygon_mass(poly, density):
    """Mass, centroid and polar moment about the centroid of a convex polygon (Box2D's formulas)."""
    p = np.asarray(poly, np.float64)
    area, c, inertia = 0.0, np.zeros(2), 0.0
    for i in range(len(p)):
        e1, e2 = p[i], p[(i + 1) % len(p)]
        d = e1[0] * e2[1] - e1[1] * e2[0]
        a = 0.5 * d
        area += a
        c += a * (e1 + e2) / 3.0
        intx2 = e1[0] ** 2 + e2[0] * e1[0] + e2[0] ** 2
        inty2 = e1[1] ** 2 + e2[1] * e1[1] + e2[1] ** 2
        inertia += (0.25 / 3.0 * d) * (intx2 + inty2)
    area = abs(area)
    c = c / (area if np.sign(inertia) > 0 else -area)
    mass = density * area
    inertia_origin = density * abs(inertia)
    return mass, c, inertia_origin


def _car_mass_properties():
    """Total mass, centre of mass and yaw inertia about it of hull + four wheels (densities 1 and 0.1)."""
    parts = [(np.asarray(p, np.float64) * SIZE, 1.0) for p in HULL_POLYS]
    parts += [(WHEEL_POLY + w, 0.1) for w in WHEELPOS]
    masses, centroids, inertias = zip(*[_polygon_mass(p, d) for p, d in parts])
    m = float(sum(masses))
    com = sum(mi * ci for mi, ci in zip(masses, centroids)) / m
    inertia = float(sum(inertias) - m * float(com @ com))  # parallel-axis theorem back to the COM
    return m, com, inertia


CAR_MASS, CAR_COM, CAR_INERTIA = _car_mass_properties()
WHEEL_OFFSETS = (WHEELPOS - CAR_COM).astype(np.float32)  # wheel positions relative to the COM, car frame


def _car_sprite(size: int = OBS_SIZE, supersample: int = 4):
    """Static coverage (alpha) and colour of the car in the camera frame; the car never moves on screen."""
    n = size * supersample
    cols = (np.arange(n) + 0.5) / supersample
    u = (cols - OBS_CAR_COL) / OBS_PX_PER_UNIT_X  # right of the car, world units
    v = (OBS_CAR_ROW - cols) / OBS_PX_PER_UNIT_Y  # ahead of the car
    uu, vv = np.meshgrid(u, v)  # rows index v, columns index u
    pts = np.stack([uu, vv], -1)

    def inside(poly):
        poly = np.asarray(poly, np.float64)
        ok = np.ones(uu.shape, bool)
        sign = None
        for i in range(len(poly)):
            a, b = poly[i], poly[(i + 1) % len(poly)]
            cross = (b[0] - a[0]) * (pts[..., 1] - a[1]) - (b[1] - a[1]) * (pts[..., 0] - a[0])
            c = poly[(i + 2) % len(poly)]  # a third vertex gives the polygon's orientation
            s = np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
            sign = s if sign is None else sign
            ok &= cross * sign >= 0
        return ok

    hull = np.zeros(uu.shape, bool)
    for p in HULL_POLYS:
        hull |= inside(np.asarray(p) * SIZE)
    wheels = np.zeros(uu.shape, bool)
    for w in WHEELPOS:
        wheels |= inside(WHEEL_POLY + w)
    colour = np.zeros(uu.shape + (3,))
    colour[hull] = HULL_COLOR
    colour[wheels] = WHEEL_COLOR
    cover = (hull | wheels).astype(np.float64)

    def pool(x):
        return x.reshape(size, supersample, size, supersample, *x.shape[2:]).mean((1, 3))

    alpha = pool(cover)
    colour = pool(colour * cover[..., None]) / np.maximum(alpha[..., None], 1e-9)
    return alpha.astype(np.float32), colour.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
@struct.dataclass
class EnvParams(environment.EnvParams):
    """Dynamic parameters (vmappable). Defaults are gymnasium CarRacing-v3's."""

    max_steps_in_episode: int = 1000
    track_rad: float = 900 / SCALE  # radius of the morphed circle the checkpoints lie around
    playfield: float = 2000 / SCALE  # |x| or |y| beyond this: -100 and termination
    track_width: float = 40 / SCALE  # half-width of the road (gymnasium's TRACK_WIDTH)
    track_detail_step: float = 21 / SCALE  # tile length along the centre line
    track_turn_rate: float = 0.31  # max heading change per tile while generating
    lap_complete_percent: float = 0.95
    tile_reward_total: float = 1000.0  # paid out over all tiles, 1000/N each
    frame_penalty: float = 0.1
    off_playfield_penalty: float = 100.0
    grass_friction: float = 0.6  # grip on grass relative to road
    engine_power: float = ENGINE_POWER
    friction_limit: float = FRICTION_LIMIT


@struct.dataclass
class EnvState(environment.EnvState):
    """One environment's dynamic state: the car, the track of this episode, and its texture."""

    pos: jax.Array  # (2,) centre of mass, world units
    angle: jax.Array  # () heading: the car faces (-sin, cos)(angle), as Box2D's hull
    vel: jax.Array  # (2,) world frame
    ang_vel: jax.Array  # () yaw rate
    wheel_omega: jax.Array  # (4,) spin of FL, FR, RL, RR (rad/s)
    steer: jax.Array  # () steering joint angle of the front wheels (rad, + = left)
    gas: jax.Array  # () throttle actually applied to the rear wheels (rises at most 0.1 per step)
    track: jax.Array  # (max_tiles, 4): alpha, beta (road heading), x, y of each centre-line point
    n_tiles: jax.Array  # () number of valid rows in `track`
    tile_quads: jax.Array  # (max_tiles, 4, 2) the road polygon of each tile
    visited: jax.Array  # (max_tiles,) bool
    n_visited: jax.Array  # ()
    texture: jax.Array  # (S, S) uint8: 8 x distance to the centre line at texel centres (255 = far)


# ---------------------------------------------------------------------------------------------------------
# Track generation (gymnasium's _create_track, as a while_loop over fixed-size buffers)


def checkpoints_from_uniforms(noise_u: jax.Array, rad_u: jax.Array, params: EnvParams):
    """Checkpoints (alpha, x, y) from uniforms in [0, 1), drawn in gymnasium's order (noise, rad per c)."""
    c = jnp.arange(NUM_CHECKPOINTS, dtype=jnp.float32)
    noise = noise_u * (2 * math.pi / NUM_CHECKPOINTS)
    alpha = 2 * math.pi * c / NUM_CHECKPOINTS + noise
    rad = params.track_rad / 3 + rad_u * (params.track_rad - params.track_rad / 3)
    first, last = c == 0, c == NUM_CHECKPOINTS - 1
    alpha = jnp.where(first, 0.0, jnp.where(last, 2 * math.pi * (NUM_CHECKPOINTS - 1) / NUM_CHECKPOINTS, alpha))
    rad = jnp.where(first | last, 1.5 * params.track_rad, rad)
    return alpha, rad * jnp.cos(alpha), rad * jnp.sin(alpha)


def _ceil_pos(x):
    return jnp.maximum(jnp.ceil(x), 0.0)


def generate_track(noise_u: jax.Array, rad_u: jax.Array, params: EnvParams, max_tiles: int, unroll: int = 1):
    """One attempt at gymnasium's track: returns (track (max_tiles, 4), n_tiles, ok).

    Unbatched on the CPU the 1500-step scan compiles to one fused scalar loop (~0.1 ms per track, about 30x
    faster than the same scan vmapped over 8 tracks); `unroll` > 1 only helps where loop trips are costly.
    """
    cp_alpha, cp_x, cp_y = checkpoints_from_uniforms(noise_u, rad_u, params)
    idx12 = jnp.arange(NUM_CHECKPOINTS)
    two_pi = 2 * math.pi

    def body(c, _):
        x, y, beta = c["x"], c["y"], c["beta"]
        alpha = jnp.arctan2(y, x)
        lap = c["other"] & (alpha > 0)
        laps = c["laps"] + lap.astype(jnp.int32)
        other = (c["other"] & ~lap) | (alpha < 0)
        alpha = jnp.where(alpha < 0, alpha + two_pi, alpha)
        k = c["dest_i"] % NUM_CHECKPOINTS
        # the first checkpoint i >= k with cp_alpha[i] >= alpha; cp_alpha is strictly increasing, so it is a
        # count (a reduction and a one-hot select stay in one fused loop body; argmax and gathers do not)
        j = jnp.maximum(k, jnp.sum((cp_alpha < alpha).astype(jnp.int32)))
        found = j < NUM_CHECKPOINTS
        dest_i = jnp.where(found, c["dest_i"] + (j - k), c["dest_i"] + (NUM_CHECKPOINTS - k))
        alpha = jnp.where(found, alpha, alpha - two_pi)
        dest = idx12 == dest_i % NUM_CHECKPOINTS
        dest_x, dest_y = jnp.sum(jnp.where(dest, cp_x, 0.0)), jnp.sum(jnp.where(dest, cp_y, 0.0))
        r1x, r1y = jnp.cos(beta), jnp.sin(beta)
        p1x, p1y = -r1y, r1x
        proj = r1x * (dest_x - x) + r1y * (dest_y - y)
        beta = beta - two_pi * _ceil_pos((beta - alpha - 1.5 * math.pi) / two_pi)
        beta = beta + two_pi * _ceil_pos((alpha - beta - 1.5 * math.pi) / two_pi)
        prev_beta = beta
        proj = proj * SCALE
        turn = jnp.minimum(params.track_turn_rate, jnp.abs(0.001 * proj))
        beta = jnp.where(proj > 0.3, beta - turn, jnp.where(proj < -0.3, beta + turn, beta))
        x = x + p1x * params.track_detail_step
        y = y + p1y * params.track_detail_step
        row = jnp.stack([alpha, prev_beta * 0.5 + beta * 0.5, x, y]).astype(jnp.float32)
        # gymnasium appends, then stops once laps > 4 (we: laps >= STOP_AFTER_LAPS); count the points made
        t = c["t"] + (~c["stop"]).astype(jnp.int32)
        stop = c["stop"] | (laps >= STOP_AFTER_LAPS)
        return dict(x=x, y=y, beta=beta, dest_i=dest_i, laps=laps, other=other, t=t, stop=stop), row

    f32 = jnp.float32
    init = dict(x=(1.5 * jnp.asarray(params.track_rad, f32)).astype(f32), y=f32(0.0), beta=f32(0.0),
                dest_i=jnp.int32(0), laps=jnp.int32(0), other=jnp.bool_(False), t=jnp.int32(0),
                stop=jnp.bool_(False))
    out, rows = jax.lax.scan(body, init, None, length=GEN_STEPS, unroll=unroll)
    t = out["t"]
    buf = jnp.concatenate([rows, jnp.zeros((max_tiles, 4), jnp.float32)], 0)

    # the last two crossings of start_alpha, searched backwards as gymnasium does
    start_alpha = 2 * math.pi * (-0.5) / NUM_CHECKPOINTS
    i = jnp.arange(buf.shape[0])
    alpha_all = buf[:, 0]
    alpha_prev = jnp.roll(alpha_all, 1)
    crossing = (i >= 1) & (i < t) & (alpha_all > start_alpha) & (alpha_prev <= start_alpha)
    i2 = jnp.max(jnp.where(crossing, i, -1))
    i1 = jnp.max(jnp.where(crossing & (i < i2), i, -1))
    n = i2 - 1 - i1
    ok = i1 >= 1
    track = jax.lax.dynamic_slice(buf, (jnp.maximum(i1, 0), 0), (max_tiles, 4))
    ok &= (n >= 3) & (n <= max_tiles)
    n = jnp.clip(n, 3, max_tiles)
    last = track[n - 1]
    b0 = track[0, 1]
    glue = jnp.sqrt(jnp.square(jnp.cos(b0) * (track[0, 2] - last[2]))
                    + jnp.square(jnp.sin(b0) * (track[0, 3] - last[3])))
    ok &= glue <= params.track_detail_step
    valid = jnp.arange(max_tiles) < n
    track = jnp.where(valid[:, None], track, 0.0)
    return track, n, ok


def tile_quads(track: jax.Array, n_tiles: jax.Array, half_width) -> jax.Array:
    """Road polygon of tile i, gymnasium's [road1_l, road1_r, road2_r, road2_l] between points i and i-1."""
    idx = jnp.arange(track.shape[0])
    prev = track[jnp.where(idx == 0, n_tiles - 1, idx - 1)]
    def side(p, s):
        return jnp.stack([p[:, 2] + s * half_width * jnp.cos(p[:, 1]), p[:, 3] + s * half_width * jnp.sin(p[:, 1])], -1)
    return jnp.stack([side(track, -1.0), side(track, 1.0), side(prev, 1.0), side(prev, -1.0)], 1)


def points_in_tiles(points: jax.Array, quads: jax.Array, n_tiles: jax.Array) -> jax.Array:
    """(P, 2) points x (T, 4, 2) convex quads -> (T,) bool: some point lies inside tile t (and t is valid)."""
    a = quads  # (T, 4, 2)
    b = jnp.roll(quads, -1, axis=1)
    e = b - a  # (T, 4, 2)
    rel = points[:, None, None, :] - a[None]  # (P, T, 4, 2)
    cross = e[None, ..., 0] * rel[..., 1] - e[None, ..., 1] * rel[..., 0]  # (P, T, 4)
    inside = jnp.all(cross >= 0, -1) | jnp.all(cross <= 0, -1)
    valid = jnp.arange(quads.shape[0]) < n_tiles
    return jnp.any(inside, 0) & valid


# ---------------------------------------------------------------------------------------------------------
# Distance texture


SPLAT_GROUP = 8  # consecutive tiles rasterized together: one box of texels per group


def rasterize_distance(track, n_tiles, playfield, size: int, box: int) -> jax.Array:
    """Distance from texel centres to the centre line, (size, size) uint8 holding min(255, 8 * distance).

    Texel (row i, col j) sits at world (x, y) = -playfield + ((j, i) + 0.5) * cell. Tiles are taken
    SPLAT_GROUP at a time: the distance from each texel of a `box` x `box` square around the group to the
    group's segments is computed densely and min-scattered into the texture (~10k scattered texels per
    track instead of one box per tile). Texels beyond every box keep 255 (~32 units, i.e. grass).
    """
    cell = 2 * playfield / size
    t = track.shape[0]
    groups = -(-t // SPLAT_GROUP)
    pad = groups * SPLAT_GROUP - t
    idx = jnp.arange(t)
    prev = track[jnp.where(idx == 0, n_tiles - 1, idx - 1)]
    valid = jnp.pad(idx < n_tiles, (0, pad)).reshape(groups, SPLAT_GROUP)
    a = jnp.pad(prev[:, 2:4], ((0, pad), (0, 0))).reshape(groups, SPLAT_GROUP, 2)
    b = jnp.pad(track[:, 2:4], ((0, pad), (0, 0))).reshape(groups, SPLAT_GROUP, 2)
    big = jnp.float32(1e6)
    lo = jnp.min(jnp.where(valid[..., None], jnp.minimum(a, b), big), 1)
    hi = jnp.max(jnp.where(valid[..., None], jnp.maximum(a, b), -big), 1)
    centre = 0.5 * (lo + hi)  # (G, 2)
    base = jnp.floor((centre + playfield) / cell - 0.5).astype(jnp.int32) - (box // 2 - 1)  # (G, 2) col, row
    off = jnp.arange(box)
    cols = base[:, 0, None, None] + off[None, None, :]  # (G, 1, box)
    rows = base[:, 1, None, None] + off[None, :, None]  # (G, box, 1)
    px = (-playfield + (cols + 0.5) * cell)[..., None]  # (G, 1, box, 1)
    py = (-playfield + (rows + 0.5) * cell)[..., None]  # (G, box, 1, 1)
    ax, ay = a[:, None, None, :, 0], a[:, None, None, :, 1]  # (G, 1, 1, S)
    abx, aby = (b - a)[:, None, None, :, 0], (b - a)[:, None, None, :, 1]
    denom = jnp.maximum(abx * abx + aby * aby, 1e-9)
    h = jnp.clip(((px - ax) * abx + (py - ay) * aby) / denom, 0.0, 1.0)
    dx, dy = px - (ax + h * abx), py - (ay + h * aby)
    d2 = jnp.where(valid[:, None, None, :], dx * dx + dy * dy, big)
    q = jnp.minimum(jnp.round(jnp.sqrt(jnp.min(d2, -1)) * DIST_QUANT), 255.0).astype(jnp.uint8)  # (G, box, box)
    rows_b = jnp.broadcast_to(rows, q.shape)
    cols_b = jnp.broadcast_to(cols, q.shape)
    inb = valid.any(1)[:, None, None] & (rows_b >= 0) & (rows_b < size) & (cols_b >= 0) & (cols_b < size)
    rows_b = jnp.where(inb, rows_b, size)  # out of range: dropped
    tex = jnp.full((size, size), 255, jnp.uint8)
    return tex.at[rows_b.reshape(-1), cols_b.reshape(-1)].min(q.reshape(-1), mode="drop")


def _texel_coords(x: jax.Array, y: jax.Array, playfield, size: int):
    """Continuous texel coordinates (col, row) of world points, clamped to the texel-centre grid."""
    scale = size / (2 * playfield)
    fx = jnp.clip((x + playfield) * scale - 0.5, 0.0, size - 1.0)
    fy = jnp.clip((y + playfield) * scale - 0.5, 0.0, size - 1.0)
    return fx, fy


def sample_distance(texture: jax.Array, xy: jax.Array, playfield) -> jax.Array:
    """Bilinear distance to the centre line at a few world points `xy` (..., 2): four gathers per point."""
    size = texture.shape[0]
    fx, fy = _texel_coords(xy[..., 0], xy[..., 1], playfield, size)
    j = jnp.minimum(jnp.floor(fx), size - 2)
    i = jnp.minimum(jnp.floor(fy), size - 2)
    wx, wy = fx - j, fy - i
    flat = i.astype(jnp.int32) * size + j.astype(jnp.int32)
    tex = texture.reshape(-1).astype(jnp.float32)
    get = lambda f: tex.at[f].get(mode="promise_in_bounds")  # noqa: E731
    d00, d01, d10, d11 = get(flat), get(flat + 1), get(flat + size), get(flat + size + 1)
    top = d00 + wx * (d01 - d00)
    bot = d10 + wx * (d11 - d10)
    return (top + wy * (bot - top)) * (1.0 / DIST_QUANT)


RENDER_BLOCK = 4  # pixels per side of a render block; each block reads one 3x3 texel window
GRASS_SQUARES = 20  # gymnasium's lighter grass squares: playfield / 20 per side


def _tent_coefficients(win: jax.Array) -> jax.Array:
    """(..., 3, 3) texel windows -> (..., 3, 3) coefficients C of the bilinear interpolant in `_hinge` form.

    With lx, ly in [0, 2] the window's texel coordinates, m = clip(l, 0, 1) and p = clip(l, 1, 2) - 1, the
    bilinear interpolation of the window is sum_ab C[a, b] * X_a * Y_b over X = (1, mx, px), Y = (1, my, py):
    within [0, 1] only m moves, within [1, 2] only p, so this is exactly the piecewise-bilinear tent filter.
    """
    dx = jnp.stack([win[..., 0], win[..., 1] - win[..., 0], win[..., 2] - win[..., 1]], -1)  # (..., row, a)
    return jnp.stack([dx[..., 0, :], dx[..., 1, :] - dx[..., 0, :], dx[..., 2, :] - dx[..., 1, :]], -1)  # (..., a, b)


def _hinge(l: jax.Array):
    """(m, p) = (clip(l, 0, 1), clip(l, 1, 2) - 1): the two pieces of a coordinate in a 3-texel window."""
    return jnp.clip(l, 0.0, 1.0), jnp.clip(l, 1.0, 2.0) - 1.0


def _one_trip(fn, live: jax.Array):
    """`fn()` evaluated inside a one-iteration `while_loop` whose trip count XLA cannot see.

    A loop is a fusion boundary: the pixel planes it returns are materialized in their own (vectorized) layout.
    Without it XLA:CPU fuses the per-pixel work into the final (64, 64, 3) interleave, whose 3-wide minor
    dimension defeats vectorization, and rendering runs ~6x slower. `live` is any runtime int32 (the step
    counter); the loop runs once unless it equals -123456789.
    """
    out = jax.eval_shape(fn)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), out)
    trips = (live != -123456789).astype(jnp.int32)
    return jax.lax.while_loop(lambda c: c[0] < trips, lambda c: (c[0] + 1, fn()), (jnp.int32(0), zeros))[1]


# ---------------------------------------------------------------------------------------------------------
# Car dynamics


def _rot(angle):
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.array([[c, -s], [s, c]])


def car_step(state: EnvState, action: jax.Array, params: EnvParams, dt: float):
    """One step of the car: returns the new (pos, angle, vel, ang_vel, wheel_omega, steer, gas).

    `action` is (steer, gas, brake) with gymnasium's meaning (steer +1 = full right).
    """
    steer_target = -jnp.clip(action[0], -1.0, 1.0)
    gas_cmd = jnp.clip(action[1], 0.0, 1.0)
    brake = jnp.clip(action[2], 0.0, 1.0)

    # steering joint: motor speed sign(e) * min(50|e|, 3) rad/s, limits +-0.4
    err = steer_target - state.steer
    steer = state.steer + dt * jnp.sign(err) * jnp.minimum(50.0 * jnp.abs(err), 3.0)
    steer = jnp.clip(steer, -STEER_LIMIT, STEER_LIMIT)
    # rear-wheel gas rises by at most 0.1 per step, drops at once
    gas = state.gas + jnp.minimum(gas_cmd - state.gas, 0.1)

    rot = _rot(state.angle)
    offsets = jnp.asarray(WHEEL_OFFSETS) @ rot.T  # (4, 2) wheel positions relative to the COM, world
    wheel_pos = state.pos + offsets
    wheel_vel = state.vel + state.ang_vel * jnp.stack([-offsets[:, 1], offsets[:, 0]], -1)
    wheel_angle = state.angle + jnp.array([1.0, 1.0, 0.0, 0.0]) * steer
    forw = jnp.stack([-jnp.sin(wheel_angle), jnp.cos(wheel_angle)], -1)
    side = jnp.stack([jnp.cos(wheel_angle), jnp.sin(wheel_angle)], -1)
    vf = jnp.sum(forw * wheel_vel, -1)
    vs = jnp.sum(side * wheel_vel, -1)

    on_road = sample_distance(state.texture, wheel_pos, params.playfield) < params.track_width
    limit = params.friction_limit * jnp.where(on_road, 1.0, params.grass_friction)

    omega = state.wheel_omega
    drive = jnp.array([0.0, 0.0, 1.0, 1.0]) * gas
    omega = omega + dt * params.engine_power * drive / WHEEL_MOMENT_OF_INERTIA / (jnp.abs(omega) + 5.0)
    brake_val = jnp.minimum(BRAKE_FORCE * brake, jnp.abs(omega))
    omega = jnp.where(brake >= 0.9, 0.0, jnp.where(brake > 0, omega - jnp.sign(omega) * brake_val, omega))

    vr = omega * WHEEL_R
    f_force = (vr - vf) * TIRE_STIFFNESS
    p_force = -vs * TIRE_STIFFNESS
    force = jnp.sqrt(f_force * f_force + p_force * p_force)
    scale = jnp.where(force > limit, limit / jnp.maximum(force, 1e-9), 1.0)
    f_force, p_force = f_force * scale, p_force * scale
    omega = omega - dt * f_force * WHEEL_R / WHEEL_MOMENT_OF_INERTIA

    wheel_force = p_force[:, None] * side + f_force[:, None] * forw  # (4, 2)
    total = jnp.sum(wheel_force, 0)
    torque = jnp.sum(offsets[:, 0] * wheel_force[:, 1] - offsets[:, 1] * wheel_force[:, 0])
    vel = state.vel + dt * total / CAR_MASS
    ang_vel = state.ang_vel + dt * torque / CAR_INERTIA
    pos = state.pos + dt * vel
    angle = state.angle + dt * ang_vel
    return pos, angle, vel, ang_vel, omega, steer, gas


# ---------------------------------------------------------------------------------------------------------


class CarRacing(environment.Environment[EnvState, EnvParams]):
    """JAX CarRacing. Continuous actions (steer, gas, brake) or gymnasium's 5 discrete actions.

    Static settings (shapes) live here; everything vmappable lives in `EnvParams`.
    """

    def __init__(self, discrete: bool = False, max_tiles: int = 400, texture_size: int = 128,
                 reset_chunk: int | None = None, max_track_attempts: int = 16):
        super().__init__()
        checked = [("max_tiles", max_tiles, 16), ("texture_size", texture_size, 16),
                   ("max_track_attempts", max_track_attempts, 1)]
        if reset_chunk is not None:
            checked.append(("reset_chunk", reset_chunk, 1))
        for name, val, lo in checked:
            if not isinstance(val, int) or isinstance(val, bool) or val < lo:
                raise ConfigError(f"CarRacing({name}=...) must be an int >= {lo}, got {val!r}")
        if texture_size > 128:
            # a 4x4 pixel block must fit a 3x3 texel window: span 0.68 texel at 128, 1.36 at 256
            raise ConfigError(f"CarRacing(texture_size={texture_size}) must be <= 128 for the blocked renderer")
        if not isinstance(discrete, bool):
            raise ConfigError(f"CarRacing(discrete=...) must be a bool, got {discrete!r}")
        self.discrete = discrete
        self.max_tiles = max_tiles
        self.texture_size = texture_size
        self._reset_chunk = reset_chunk
        self.max_track_attempts = max_track_attempts
        d = EnvParams()
        cell = 2 * d.playfield / texture_size
        # the splat box around a group of tiles must cover the group (up to SPLAT_GROUP tiles in a straight
        # line) plus, either side, the widest allowed road half-width and one texel diagonal (bilinear reach)
        reach = MAX_WIDTH_FACTOR * d.track_width + math.sqrt(2) * cell
        self._splat = int(math.ceil((SPLAT_GROUP * d.track_detail_step + 2 * reach) / cell)) + 1
        self._splat += self._splat % 2
        alpha, colour = _car_sprite()
        self._sprite_alpha = alpha
        self._sprite_colour = colour
        r = np.arange(OBS_SIZE) + 0.5
        u = (r - OBS_CAR_COL) / OBS_PX_PER_UNIT_X
        v = (OBS_CAR_ROW - r) / OBS_PX_PER_UNIT_Y
        uu, vv = np.meshgrid(u, v)
        self._pixel_local = np.stack([uu, vv], -1).astype(np.float32)  # (64, 64, 2) car frame (right, ahead)
        nb = OBS_SIZE // RENDER_BLOCK
        def blocks(x):  # (64, 64, ...) -> (by, bx, 4, 4, ...)
            return x.reshape((nb, RENDER_BLOCK, nb, RENDER_BLOCK) + x.shape[2:]).swapaxes(1, 2)

        self._pixel_blocks = blocks(self._pixel_local)
        self._block_centres = self._pixel_blocks.mean((2, 3))
        self._sprite_alpha_blocks = blocks(alpha)
        self._sprite_colour_blocks = np.moveaxis(blocks(colour), -1, 0)
        covered = np.nonzero(self._sprite_alpha_blocks.max((2, 3)) > 0)  # blocks the car sprite touches
        self._sprite_box = (slice(int(covered[0].min()), int(covered[0].max()) + 1),
                            slice(int(covered[1].min()), int(covered[1].max()) + 1))

    @property
    def name(self) -> str:
        return "CarRacingDiscrete-v0" if self.discrete else "CarRacing-v0"

    @property
    def reset_chunk(self) -> int:
        """Environments reset together (vmapped) by the batched auto-reset. Default: 1 on the CPU, where a
        track's scalar scan is ~30x cheaper unbatched than vmapped and a chunk pays for its idle slots; 8
        elsewhere, where the 1500 sequential loop trips cost the same for 1 track or 8."""
        if self._reset_chunk is not None:
            return self._reset_chunk
        return 1 if jax.default_backend() == "cpu" else 8

    @property
    def track_unroll(self) -> int:
        """`generate_track`'s scan unroll: 1 on the CPU (one fused loop body), 8 elsewhere (fewer trips)."""
        return 1 if jax.default_backend() == "cpu" else 8

    @property
    def default_params(self) -> EnvParams:
        return EnvParams()

    @property
    def num_actions(self) -> int:
        return 5 if self.discrete else 3

    def action_space(self, params: EnvParams | None = None):
        if self.discrete:
            return spaces.Discrete(5)
        # numpy bounds stay concrete inside jit (action_spec reads them while tracing)
        return spaces.Box(np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32), (3,), jnp.float32)

    def observation_space(self, params: EnvParams | None = None):
        return spaces.Box(0, 255, (OBS_SIZE, OBS_SIZE, 3), jnp.uint8)

    # -- reset ------------------------------------------------------------------------------------------
    def new_track(self, key: jax.Array, params: EnvParams):
        """Gymnasium's track recipe, retried until it succeeds: (track, n_tiles)."""

        def attempt(key):
            k1, k2 = jax.random.split(key)
            u_noise = jax.random.uniform(k1, (NUM_CHECKPOINTS,))
            u_rad = jax.random.uniform(k2, (NUM_CHECKPOINTS,))
            return generate_track(u_noise, u_rad, params, self.max_tiles, self.track_unroll)

        def cond(c):
            return (~c[3]) & (c[4] < self.max_track_attempts)

        def body(c):
            key, _, _, _, tries = c
            key, sub = jax.random.split(key)
            track, n, ok = attempt(sub)
            return key, track, n, ok, tries + 1

        init = (key, jnp.zeros((self.max_tiles, 4), jnp.float32), jnp.int32(3), jnp.bool_(False), jnp.int32(0))
        _, track, n, _, _ = jax.lax.while_loop(cond, body, init)
        return track, n

    def reset_env(self, key: jax.Array, params: EnvParams):
        track, n = self.new_track(key, params)
        tex = rasterize_distance(track, n, params.playfield, self.texture_size, self._splat)
        beta0 = track[0, 1]
        start = track[0, 2:4]
        state = EnvState(
            pos=start.astype(jnp.float32),
            angle=beta0,
            vel=jnp.zeros(2, jnp.float32),
            ang_vel=jnp.float32(0.0),
            wheel_omega=jnp.zeros(4, jnp.float32),
            steer=jnp.float32(0.0),
            gas=jnp.float32(0.0),
            track=track,
            n_tiles=n,
            tile_quads=tile_quads(track, n, params.track_width),
            visited=jnp.zeros(self.max_tiles, bool),
            n_visited=jnp.int32(0),
            texture=tex,
            time=jnp.int32(0),
        )
        return self.render(state, params), state

    # -- step -------------------------------------------------------------------------------------------
    def continuous_action(self, action: jax.Array) -> jax.Array:
        """The (steer, gas, brake) vector behind an action of this env (discrete: gymnasium's table)."""
        if self.discrete:
            action = jnp.asarray(action)
            if action.shape != ():
                raise ShapeError(f"CarRacingDiscrete takes a scalar int action in [0, 5), got shape {action.shape}")
            return jnp.asarray(DISCRETE_ACTIONS)[jnp.clip(action.astype(jnp.int32), 0, 4)]
        action = jnp.asarray(action, jnp.float32)
        if action.shape != (3,):
            raise ShapeError(f"CarRacing takes a (3,) action (steer, gas, brake), got shape {action.shape}; "
                             "use CarRacingDiscrete-v0 for integer actions")
        return action

    def step_env(self, key: jax.Array, state: EnvState, action, params: EnvParams):
        del key
        act = self.continuous_action(action)
        pos, angle, vel, ang_vel, omega, steer, gas = car_step(state, act, params, 1.0 / FPS)

        touching = points_in_tiles(pos[None], state.tile_quads, state.n_tiles)
        newly = touching & ~state.visited
        visited = state.visited | touching
        n_new = jnp.sum(newly)
        n_visited = state.n_visited + n_new
        n = state.n_tiles
        on_start = touching[0]
        lap = (n_visited >= n) | (on_start & (n_visited > params.lap_complete_percent * n))
        reward = params.tile_reward_total / n * n_new - params.frame_penalty
        off = (jnp.abs(pos[0]) > params.playfield) | (jnp.abs(pos[1]) > params.playfield)
        reward = jnp.where(off, -params.off_playfield_penalty, reward).astype(jnp.float32)
        terminated = lap | off

        new_state = state.replace(pos=pos, angle=angle, vel=vel, ang_vel=ang_vel, wheel_omega=omega, steer=steer,
                                  gas=gas, visited=visited, n_visited=n_visited, time=state.time + 1)
        info = {"lap_finished": lap & ~off, "off_playfield": off, "tiles_visited": n_visited}
        return self.render(new_state, params), new_state, reward, terminated, info

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: EnvState, action, params: EnvParams | None = None):
        """gymnax's step contract, with an auto-reset that only pays for the environments that are done."""
        return step_with_reset(self, key, state, action, params, self._auto_reset())

    def _auto_reset(self):
        env = self

        @jax.custom_batching.custom_vmap
        def auto_reset(done, key, obs, state, params):
            return jax.lax.cond(done, lambda: env.reset_env(key, params), lambda: (obs, state))

        @auto_reset.def_vmap
        def rule(axis_size, in_batched, done, key, obs, state, params):
            args = (done, key, obs, state, params)
            args = jax.tree.map(lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x)),
                                args, tuple(in_batched))
            done, key, obs, state, params = args
            chunk = min(env.reset_chunk, axis_size)

            def body(c):
                remaining, obs, state = c
                idx = jnp.nonzero(remaining, size=chunk, fill_value=axis_size)[0]
                safe = jnp.minimum(idx, axis_size - 1)
                take = lambda x: x[safe]  # noqa: E731
                o_new, s_new = jax.vmap(env.reset_env)(key[safe], jax.tree.map(take, params))
                put = lambda x, y: x.at[idx].set(y, mode="drop")  # noqa: E731
                return remaining.at[idx].set(False, mode="drop"), put(obs, o_new), jax.tree.map(put, state, s_new)

            _, obs, state = jax.lax.while_loop(lambda c: jnp.any(c[0]), body, (done, obs, state))
            out = (obs, state)
            return out, jax.tree.map(lambda _: True, out)

        return auto_reset

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        n = state.n_tiles
        off = (jnp.abs(state.pos[0]) > params.playfield) | (jnp.abs(state.pos[1]) > params.playfield)
        return off | (state.n_visited >= n)

    # -- pixels -----------------------------------------------------------------------------------------
    def render(self, state: EnvState, params: EnvParams) -> jax.Array:
        """64x64x3 uint8 top-down view: camera on the car, rotating with it, the car near the bottom.

        Equal, up to float rounding, to `render_reference`. Every quantity is affine in a pixel's car-frame
        position (u, v), so texel and grass coordinates take two FMAs each. Each 4x4 pixel block reads one
        3x3 texel window (a 4x4 block spans under 0.7 texel at the default camera and texture), turned once per
        block into the coefficients of the road coverage as a polynomial in the pixel's window coordinates
        (`_tent_coefficients`). R and B are one plane (grass and road share R = B = 102); the car sprite is
        blended in its bounding box only.
        """
        size = self.texture_size
        pf = params.playfield
        c, s = jnp.cos(state.angle), jnp.sin(state.angle)
        scale = size / (2 * pf)
        grass = pf / GRASS_SQUARES
        u_all, v_all = (jnp.asarray(self._pixel_blocks[..., k]) for k in range(2))  # (by, bx, 4, 4)
        cu, cv = (jnp.asarray(self._block_centres[..., k]) for k in range(2))  # (by, bx)
        # texel coordinates f = origin + R(angle) (u, v) * scale, clamped to the texel-centre grid like sample_distance
        fx0, fy0 = (state.pos[0] + pf) * scale - 0.5, (state.pos[1] + pf) * scale - 0.5
        ux, vx, uy, vy = c * scale, -s * scale, s * scale, c * scale
        wox = jnp.clip(jnp.floor(fx0 + cu * ux + cv * vx - 0.5), 0, size - 3)  # (by, bx) window origin
        woy = jnp.clip(jnp.floor(fy0 + cu * uy + cv * vy - 0.5), 0, size - 3)
        win = jax.vmap(jax.vmap(lambda r, col: jax.lax.dynamic_slice(state.texture, (r, col), (3, 3))))(
            woy.astype(jnp.int32), wox.astype(jnp.int32)).astype(jnp.float32)
        # road coverage clip((width - d) * aa + 0.5, 0, 1) with d = texel / DIST_QUANT, folded into the coefficients
        aa = 0.5 * (OBS_PX_PER_UNIT_X + OBS_PX_PER_UNIT_Y)
        coef = _tent_coefficients(win) * (-aa / DIST_QUANT)
        coef = coef.at[..., 0, 0].add(params.track_width * aa + 0.5)
        kx, ky = fx0 - wox, fy0 - woy  # per block: window coordinates at the car's own position
        gx0, gy0 = state.pos[0] / grass, state.pos[1] / grass

        def shade(blocks):
            """Float G and R = B planes of the blocks `blocks` (a tuple of slices), before the sprite."""
            u, v = u_all[blocks], v_all[blocks]
            b = lambda x: x[blocks][..., None, None]  # noqa: E731 (per block -> per pixel)
            mx, px = _hinge(b(kx) + u * ux + v * vx)
            my, py = _hinge(b(ky) + u * uy + v * vy)
            k = coef[blocks]
            row = lambda a: k[..., a, 0, None, None] + my * k[..., a, 1, None, None] + py * k[..., a, 2, None, None]  # noqa: E731
            road = jnp.clip(row(0) + mx * row(1) + px * row(2), 0.0, 1.0)
            gx, gy = gx0 + u * (c / grass) - v * (s / grass), gy0 + u * (s / grass) + v * (c / grass)
            light = ((jnp.floor(gx).astype(jnp.int32) | jnp.floor(gy).astype(jnp.int32)) & 1) == 0
            green = jnp.where(light, GRASS_COLOR[1], BG_COLOR[1])
            inside = (jnp.abs(gx) <= GRASS_SQUARES) & (jnp.abs(gy) <= GRASS_SQUARES)
            g = jnp.where(inside, green + road * (ROAD_COLOR[1] - green), 0.0)
            return g, jnp.where(inside, ROAD_COLOR[0], 0.0)

        def planes():
            everywhere = (slice(None), slice(None))
            g, rb = shade(everywhere)
            g_box, rb_box = shade(self._sprite_box)
            alpha = jnp.asarray(self._sprite_alpha_blocks[self._sprite_box])
            colour = jnp.asarray(self._sprite_colour_blocks[(slice(None),) + self._sprite_box])
            to_u8 = lambda x: jnp.round(x).astype(jnp.uint8)  # noqa: E731
            blend = lambda v, k: to_u8(v + alpha * (colour[k] - v))  # noqa: E731
            return to_u8(g), to_u8(rb), blend(rb_box, 0), blend(g_box, 1), blend(rb_box, 2)

        g, rb, r_box, g_box, b_box = _one_trip(planes, state.time)
        r, g, b = rb.at[self._sprite_box].set(r_box), g.at[self._sprite_box].set(g_box), rb.at[self._sprite_box].set(b_box)
        return jnp.stack([r, g, b], -1).transpose(0, 2, 1, 3, 4).reshape(OBS_SIZE, OBS_SIZE, 3)

    def render_reference(self, state: EnvState, params: EnvParams) -> jax.Array:
        """`render` written plainly, pixel by pixel: world position, bilinear distance, colour, sprite blend."""
        c, s = jnp.cos(state.angle), jnp.sin(state.angle)
        local = jnp.asarray(self._pixel_local)  # (64, 64, 2)
        wx = state.pos[0] + local[..., 0] * c - local[..., 1] * s
        wy = state.pos[1] + local[..., 0] * s + local[..., 1] * c
        d = sample_distance(state.texture, jnp.stack([wx, wy], -1), params.playfield)
        aa = 0.5 * (OBS_PX_PER_UNIT_X + OBS_PX_PER_UNIT_Y)
        road = jnp.clip((params.track_width - d) * aa + 0.5, 0.0, 1.0)
        square = params.playfield / GRASS_SQUARES
        light = ((jnp.floor(wx / square).astype(jnp.int32) | jnp.floor(wy / square).astype(jnp.int32)) & 1) == 0
        green = jnp.where(light, GRASS_COLOR[1], BG_COLOR[1])
        grass = jnp.stack([jnp.full_like(green, BG_COLOR[0]), green, jnp.full_like(green, BG_COLOR[2])], -1)
        colour = grass + road[..., None] * (jnp.asarray(ROAD_COLOR) - grass)
        inside = (jnp.abs(wx) <= params.playfield) & (jnp.abs(wy) <= params.playfield)
        colour = jnp.where(inside[..., None], colour, 0.0)
        alpha = jnp.asarray(self._sprite_alpha)[..., None]
        colour = colour + alpha * (jnp.asarray(self._sprite_colour) - colour)
        return jnp.round(colour).astype(jnp.uint8)


# ---------------------------------------------------------------------------------------------------------
# Baselines


def random_policy(key: jax.Array, env: CarRacing, params: EnvParams | None = None) -> jax.Array:
    """A uniformly random action from the env's action space (the 'Random' row of the paper's table)."""
    return env.action_space(params).sample(key)


def nearest_tile(state: EnvState) -> jax.Array:
    """Index of the centre-line point nearest the car."""
    d2 = jnp.sum(jnp.square(state.track[:, 2:4] - state.pos), -1)
    d2 = jnp.where(jnp.arange(d2.shape[0]) < state.n_tiles, d2, jnp.inf)
    return jnp.argmin(d2)


def scripted_driver(state: EnvState, params: EnvParams, lookahead: float = 2.0, lookahead_per_speed: float = 0.05,
                    lateral_accel: float = 100.0, brake_decel: float = 70.0, preview_tiles: int = 40,
                    gas_gain: float = 0.1, brake_gain: float = 0.05, max_brake: float = 0.4) -> jax.Array:
    """Pure pursuit on the centre line with a braking-distance speed profile. A pure function of the state.

    Returns a continuous action (steer, gas, brake). Steering aims at the centre-line point
    `lookahead + lookahead_per_speed * speed` tiles ahead of the nearest one. Each tile within
    `preview_tiles` allows sqrt(lateral_accel / curvature); the speed target is the highest speed from which
    every one of them can still be reached braking at `brake_decel`. Gas and brake are proportional to the speed
    error; the brake stays at or below `max_brake` (0.15 brakes at ~180 units/s^2 without locking the wheels).
    """
    n = state.n_tiles
    k = nearest_tile(state)
    speed = jnp.sqrt(jnp.sum(jnp.square(state.vel)))
    ahead = jnp.round(lookahead + lookahead_per_speed * speed).astype(jnp.int32)
    target = state.track[(k + ahead) % n, 2:4]
    rel = target - state.pos
    c, s = jnp.cos(state.angle), jnp.sin(state.angle)
    lateral = c * rel[0] + s * rel[1]  # to the car's right
    forward = -s * rel[0] + c * rel[1]
    dist2 = jnp.maximum(lateral * lateral + forward * forward, 1e-6)
    curvature = 2.0 * lateral / dist2
    wheelbase = float(WHEELPOS[0, 1] - WHEELPOS[2, 1])
    steer_angle = jnp.arctan(wheelbase * curvature)  # + = right
    steer = jnp.clip(steer_angle / STEER_LIMIT, -1.0, 1.0)

    j = (k + jnp.arange(preview_tiles + 3)) % n
    dbeta = jnp.diff(state.track[j, 1])
    dbeta = jnp.abs((dbeta + math.pi) % (2 * math.pi) - math.pi)
    dbeta = (dbeta[:-2] + dbeta[1:-1] + dbeta[2:]) / 3.0  # smoothed heading change per tile
    curv = dbeta / params.track_detail_step
    v_allow = jnp.sqrt(lateral_accel / jnp.maximum(curv, 1e-4))
    dist = jnp.arange(preview_tiles) * params.track_detail_step
    v_target = jnp.min(jnp.sqrt(v_allow * v_allow + 2.0 * brake_decel * dist))
    gas = jnp.clip(gas_gain * (v_target - speed), 0.0, 1.0)
    brk = jnp.clip(brake_gain * (speed - v_target), 0.0, max_brake)
    return jnp.stack([steer, gas, brk]).astype(jnp.float32)


def noisy_scripted_driver(key: jax.Array, state: EnvState, params: EnvParams, steer_noise: float = 0.3,
                          speed_noise: float = 0.3) -> jax.Array:
    """An exploration policy for data collection: the scripted driver with Gaussian noise.

    Steering gets N(0, steer_noise) added; gas and brake come from the driver with its speed target
    scaled by a per-step factor exp(N(0, speed_noise)) (faster and slower than the driver likes), so the
    car wanders across the road, sometimes onto the grass, and recovers. It is *not* a random policy:
    World Models collected CarRacing data with random actions, which on this env rarely leave the start
    (see docs/carracing.md, "Data collection").
    """
    k_steer, k_speed = jax.random.split(key)
    scale = jnp.exp(speed_noise * jax.random.normal(k_speed, ()))
    action = scripted_driver(state, params, lateral_accel=100.0 * scale * scale, brake_decel=70.0 * scale)
    steer = jnp.clip(action[0] + steer_noise * jax.random.normal(k_steer, ()), -1.0, 1.0)
    return action.at[0].set(steer)

def check_params(params: EnvParams) -> None:
    """Host-side validation of concrete params (raises ConfigError naming the field and the fix)."""
    d = EnvParams()
    checks = [
        ("max_steps_in_episode", params.max_steps_in_episode, lambda v: v >= 1, "must be >= 1"),
        ("track_width", params.track_width, lambda v: 0 < v <= MAX_WIDTH_FACTOR * d.track_width,
         f"must be in (0, {MAX_WIDTH_FACTOR * d.track_width:.2f}]: the texture splat box is sized for at most "
         f"{MAX_WIDTH_FACTOR} times the default"),
        ("playfield", params.playfield, lambda v: v > 1.5 * params.track_rad, "must exceed 1.5 * track_rad"),
        ("track_detail_step", params.track_detail_step, lambda v: v > 0, "must be > 0"),
        ("lap_complete_percent", params.lap_complete_percent, lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ]
    for name, val, ok, why in checks:
        arr = np.asarray(val)
        if not np.all(ok(arr)):
            raise ConfigError(f"EnvParams.{name}={val!r} {why}")


__all__ = ["CarRacing", "EnvParams", "EnvState", "random_policy", "scripted_driver", "noisy_scripted_driver", "generate_track",
           "checkpoints_from_uniforms", "tile_quads", "check_params"]
