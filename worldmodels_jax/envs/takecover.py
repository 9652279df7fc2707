"""TakeCover: a JAX-native stand-in for VizDoom's DoomTakeCover (World Models, experiment 2).

The agent stands on the near side of a rectangular room and can only strafe (left, stay, right).
Monsters appear along the far wall, more of them as the episode goes on, and throw fireballs aimed at
where the agent stands when they throw. A fireball that reaches the agent's line within the hit radius
costs `params.damage` health; the episode terminates when health reaches 0. Reward is +1 for every
step (so the return is the number of steps survived), truncation at 2100 steps.

Everything is a pure function over fixed-size slot arrays (`num_monsters` monsters, `num_fireballs`
fireballs) so that `jit`, `vmap` and `lax.scan` apply directly. The observation is a 64×64×3 uint8
first-person image ray-cast per pixel (floor, ceiling, side and far walls), then monsters (rectangles)
and fireballs (discs) painted in depth order, all with screen size ∝ 1/depth.

World frame: x is lateral (room spans [-room_width/2, room_width/2]), y is depth (the agent's line is
y = 0, the far wall y = room_depth), z is height (floor 0, ceiling wall_height). The camera sits at
(agent_x, -camera_back, eye_height) looking along +y.

Also here: the paper's data-collection policies (`uniform_random_action`, `held_random_action`) and a
scripted state-reading dodger (`dodger_action`), all pure and usable under scan/vmap, plus
`survival_steps`, a render-free batched rollout used for calibration and tests. See docs/takecover.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from worldmodels_jax.errors import ConfigError, ShapeError, check

NUM_ACTIONS = 3  # 0 = left, 1 = stay, 2 = right
OBS_SIZE = 64

# Surface colours (RGB, 0..255 before distance shading).
CEILING_RGB = (72.0, 72.0, 88.0)
FLOOR_RGB = (120.0, 96.0, 64.0)
SIDE_WALL_RGB = (128.0, 128.0, 120.0)
FAR_WALL_RGB = (96.0, 104.0, 96.0)
MONSTER_RGB = (176.0, 40.0, 32.0)
FIREBALL_RGB = (255.0, 208.0, 48.0)  # emissive: not distance-shaded


@struct.dataclass
class EnvState(environment.EnvState):
    agent_x: jax.Array  # () lateral position of the agent
    health: jax.Array  # () remaining health; terminated when <= 0
    monster_x: jax.Array  # (M,) lateral position of each monster slot
    monster_alive: jax.Array  # (M,) bool
    monster_cooldown: jax.Array  # (M,) int32 steps until the monster may throw again
    fireball_xy: jax.Array  # (F, 2) position (x, y) of each fireball slot
    fireball_vel: jax.Array  # (F, 2) velocity per step
    fireball_alive: jax.Array  # (F,) bool
    hits: jax.Array  # () int32 number of hits taken this episode
    time: jax.Array  # () int32 steps taken this episode


@struct.dataclass
class EnvParams(environment.EnvParams):
    """Difficulty and geometry. Every field is a pytree leaf, so params can be vmapped."""

    room_width: float = 2.0  # lateral extent of the room; the agent's x is clipped to it
    room_depth: float = 4.0  # distance from the agent's line to the far wall (where monsters stand)
    wall_height: float = 1.0  # ceiling height (rendering only)
    eye_height: float = 0.5  # camera height; fireballs fly at this height (rendering only)
    camera_back: float = 0.5  # camera sits this far behind the agent's line (keeps depth > 0)
    agent_speed: float = 0.04  # lateral distance per step for left/right
    agent_radius: float = 0.08  # half-width of the agent's body for hit tests
    fireball_radius: float = 0.06  # fireball radius for hit tests and (×fireball_draw_scale) drawing
    fireball_speed: float = 0.1  # distance per step along the aimed direction
    aim_noise: float = 0.0  # std of the lateral error of the aimed point (0 = exact aim)
    damage: float = 20.0  # health lost per hit
    max_health: float = 100.0  # starting health
    initial_monsters: int = 2  # monsters present at reset (capped by the number of slots)
    spawn_prob: float = 0.004  # per-step probability of a new monster at t = 0
    spawn_prob_growth: float = 0.0001  # added to the spawn probability per step of episode time
    fire_prob: float = 0.06  # per-step probability that a ready monster throws
    fire_cooldown: int = 20  # steps a monster waits after throwing before it may throw again
    monster_height: float = 0.6  # rendering only
    monster_width: float = 0.3  # rendering only
    fireball_draw_scale: float = 1.5  # drawn radius = fireball_radius × this (rendering only)
    max_steps_in_episode: int = 2100  # truncation (the paper caps episodes at 2100 frames)


def check_params(params: EnvParams) -> None:
    """Host-side validation of concrete `EnvParams`; raises ConfigError naming the field and the fix."""
    positive = [
        "room_width", "room_depth", "wall_height", "eye_height", "camera_back", "agent_radius",
        "fireball_radius", "fireball_speed", "max_health", "monster_height", "monster_width",
        "fireball_draw_scale",
    ]
    for name in positive:
        value = float(np.asarray(getattr(params, name)).min())
        check(value > 0, ConfigError, f"EnvParams.{name} must be > 0, got {value}; use a positive value.")
    nonneg = ["agent_speed", "aim_noise", "damage", "spawn_prob", "spawn_prob_growth", "fire_prob",
              "fire_cooldown", "initial_monsters"]
    for name in nonneg:
        value = float(np.asarray(getattr(params, name)).min())
        check(value >= 0, ConfigError, f"EnvParams.{name} must be >= 0, got {value}.")
    for name in ["spawn_prob", "fire_prob"]:
        value = float(np.asarray(getattr(params, name)).max())
        check(value <= 1, ConfigError, f"EnvParams.{name} is a probability; got {value}, use 0..1.")
    eye, wall = np.asarray(params.eye_height), np.asarray(params.wall_height)
    check(bool(np.all(eye < wall)), ConfigError,
          f"EnvParams.eye_height ({eye}) must be below wall_height ({wall}).")
    steps = int(np.asarray(params.max_steps_in_episode).min())
    check(steps >= 1, ConfigError, f"EnvParams.max_steps_in_episode must be >= 1, got {steps}.")


class TakeCover(environment.Environment[EnvState, EnvParams]):
    """DoomTakeCover-like dodging task with a first-person 64×64×3 uint8 observation.

    Static settings (shapes) live here; difficulty lives in `EnvParams`.

    Args:
        num_monsters: number of monster slots (the most monsters alive at once).
        num_fireballs: number of fireball slots (the most fireballs in flight at once).
        fov_degrees: horizontal (and vertical) field of view of the camera.
    """

    def __init__(self, num_monsters: int = 8, num_fireballs: int = 16, fov_degrees: float = 45.0):
        super().__init__()
        check(isinstance(num_monsters, int) and num_monsters >= 1, ConfigError,
              f"num_monsters must be an int >= 1, got {num_monsters!r}.")
        check(isinstance(num_fireballs, int) and num_fireballs >= 1, ConfigError,
              f"num_fireballs must be an int >= 1, got {num_fireballs!r}.")
        check(0.0 < float(fov_degrees) < 170.0, ConfigError,
              f"fov_degrees must be in (0, 170), got {fov_degrees!r}.")
        self.num_monsters = num_monsters
        self.num_fireballs = num_fireballs
        self.fov_degrees = float(fov_degrees)
        self.obs_shape = (OBS_SIZE, OBS_SIZE, 3)
        # focal length in pixels: half the image spans tan(fov/2)
        self.focal = (OBS_SIZE / 2) / float(np.tan(np.deg2rad(self.fov_degrees) / 2))

    # ------------------------------------------------------------------ gymnax API
    @property
    def name(self) -> str:
        return "TakeCover-v0"

    @property
    def default_params(self) -> EnvParams:
        return EnvParams()

    @property
    def num_actions(self) -> int:
        return NUM_ACTIONS

    def action_space(self, params: EnvParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(NUM_ACTIONS)

    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        return spaces.Box(0, 255, self.obs_shape, jnp.uint8)

    def state_space(self, params: EnvParams | None = None) -> spaces.Dict:
        params = self.default_params if params is None else params
        half = params.room_width / 2
        m, f = self.num_monsters, self.num_fireballs
        return spaces.Dict({
            "agent_x": spaces.Box(-half, half, (), jnp.float32),
            "health": spaces.Box(-jnp.inf, params.max_health, (), jnp.float32),
            "monster_x": spaces.Box(-half, half, (m,), jnp.float32),
            "monster_alive": spaces.Discrete(2),
            "monster_cooldown": spaces.Box(0, jnp.iinfo(jnp.int32).max, (m,), jnp.int32),
            "fireball_xy": spaces.Box(-jnp.inf, jnp.inf, (f, 2), jnp.float32),
            "fireball_vel": spaces.Box(-jnp.inf, jnp.inf, (f, 2), jnp.float32),
            "fireball_alive": spaces.Discrete(2),
            "hits": spaces.Discrete(10**6),
            "time": spaces.Discrete(params.max_steps_in_episode + 1),
        })

    def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        state = self.init_state(key, params)
        return self.render(state, params), state

    def step_env(
        self, key: jax.Array, state: EnvState, action: int | jax.Array, params: EnvParams
    ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict[str, Any]]:
        new_state, hits_t = self.transition(key, state, action, params)
        terminated = self.is_terminated(new_state, params)
        reward = jnp.asarray(1.0, jnp.float32)
        info = {"hits": hits_t, "health": new_state.health}
        return self.render(new_state, params), new_state, reward, terminated, info

    def get_obs(self, state: EnvState, params: EnvParams | None = None, key=None) -> jax.Array:
        return self.render(state, self.default_params if params is None else params)

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        return state.health <= 0

    # ------------------------------------------------------------------ dynamics (no pixels)
    def init_state(self, key: jax.Array, params: EnvParams) -> EnvState:
        """The state at the start of an episode: agent centred, full health, `initial_monsters` monsters."""
        m, f = self.num_monsters, self.num_fireballs
        key_x, key_cd = jax.random.split(key)
        half = params.room_width / 2
        margin = params.monster_width / 2
        monster_x = jax.random.uniform(key_x, (m,), minval=-half + margin, maxval=half - margin)
        monster_alive = jnp.arange(m) < params.initial_monsters
        # stagger the first throws so the initial monsters do not fire in lockstep
        cooldown = jax.random.randint(key_cd, (m,), 0, jnp.maximum(params.fire_cooldown, 0) + 1)
        return EnvState(
            agent_x=jnp.zeros((), jnp.float32),
            health=jnp.asarray(params.max_health, jnp.float32),
            monster_x=monster_x.astype(jnp.float32),
            monster_alive=monster_alive,
            monster_cooldown=cooldown.astype(jnp.int32),
            fireball_xy=jnp.zeros((f, 2), jnp.float32),
            fireball_vel=jnp.zeros((f, 2), jnp.float32),
            fireball_alive=jnp.zeros((f,), bool),
            hits=jnp.zeros((), jnp.int32),
            time=jnp.zeros((), jnp.int32),
        )

    def transition(
        self, key: jax.Array, state: EnvState, action: int | jax.Array, params: EnvParams
    ) -> tuple[EnvState, jax.Array]:
        """One step of the dynamics without rendering; returns (next state, hits this step).

        Order: the agent strafes; fireballs in flight move and those crossing the agent's line are
        resolved (hit if within agent_radius + fireball_radius laterally, at the crossing point);
        a monster may spawn; ready monsters may throw, aiming at the agent's new position.
        """
        action = jnp.asarray(action)
        if action.shape != ():
            raise ShapeError(
                f"TakeCover takes one scalar action per env (0 left, 1 stay, 2 right), got shape "
                f"{action.shape}; vmap the env for a batch."
            )
        action = jnp.clip(action.astype(jnp.int32), 0, NUM_ACTIONS - 1)
        key_spawn, key_spawn_x, key_fire, key_aim, key_cd = jax.random.split(key, 5)
        half = params.room_width / 2

        # 1. agent strafes
        move = (action - 1).astype(jnp.float32) * params.agent_speed
        agent_x = jnp.clip(state.agent_x + move, -half + params.agent_radius, half - params.agent_radius)

        # 2. fireballs move; those that cross the agent's line (y <= 0) are resolved and removed
        xy, vel = state.fireball_xy, state.fireball_vel
        new_xy = xy + vel
        crossed = state.fireball_alive & (new_xy[:, 1] <= 0.0)
        frac = xy[:, 1] / jnp.maximum(-vel[:, 1], 1e-6)  # fraction of the step at which y reaches 0
        x_cross = xy[:, 0] + vel[:, 0] * jnp.clip(frac, 0.0, 1.0)
        hit = crossed & (jnp.abs(x_cross - agent_x) < params.agent_radius + params.fireball_radius)
        hits_t = jnp.sum(hit).astype(jnp.int32)
        health = state.health - params.damage * hits_t.astype(jnp.float32)
        fireball_alive = state.fireball_alive & ~crossed
        fireball_xy = jnp.where(fireball_alive[:, None], new_xy, 0.0)
        fireball_vel = jnp.where(fireball_alive[:, None], vel, 0.0)

        # 3. a monster may appear along the far wall, more often as time goes on
        p_spawn = jnp.clip(params.spawn_prob + params.spawn_prob_growth * state.time, 0.0, 1.0)
        free_monster = ~state.monster_alive
        spawn = jax.random.bernoulli(key_spawn, p_spawn) & jnp.any(free_monster)
        slot = jnp.argmax(free_monster)
        margin = params.monster_width / 2
        spawn_x = jax.random.uniform(key_spawn_x, (), minval=-half + margin, maxval=half - margin)
        new_monster = spawn & (jnp.arange(self.num_monsters) == slot)
        monster_x = jnp.where(new_monster, spawn_x, state.monster_x)
        monster_alive = state.monster_alive | new_monster
        spawn_cd = jax.random.randint(key_cd, (), 0, jnp.maximum(params.fire_cooldown, 0) + 1)
        cooldown = jnp.where(new_monster, spawn_cd, jnp.maximum(state.monster_cooldown - 1, 0))

        # 4. ready monsters throw with fire_prob; the k-th thrower takes the k-th free fireball slot
        ready = monster_alive & (cooldown == 0) & ~new_monster
        want = ready & jax.random.bernoulli(key_fire, params.fire_prob, (self.num_monsters,))
        free_fb = ~fireball_alive
        thrower_rank = jnp.cumsum(want) - 1
        slot_rank = jnp.cumsum(free_fb) - 1
        match = free_fb[:, None] & want[None, :] & (slot_rank[:, None] == thrower_rank[None, :])  # (F, M)
        fb_new = jnp.any(match, axis=1)
        src = jnp.argmax(match, axis=1)
        threw = jnp.any(match, axis=0)
        start_x = monster_x[src]
        start_y = jnp.asarray(params.room_depth, jnp.float32) * jnp.ones_like(start_x)
        aim_x = agent_x + params.aim_noise * jax.random.normal(key_aim, (self.num_fireballs,))
        dx, dy = aim_x - start_x, -start_y
        norm = jnp.sqrt(dx**2 + dy**2)
        v_new = jnp.stack([dx, dy], axis=-1) * (params.fireball_speed / norm)[:, None]
        fireball_xy = jnp.where(fb_new[:, None], jnp.stack([start_x, start_y], -1), fireball_xy)
        fireball_vel = jnp.where(fb_new[:, None], v_new, fireball_vel)
        fireball_alive = fireball_alive | fb_new
        cooldown = jnp.where(threw, params.fire_cooldown, cooldown).astype(jnp.int32)

        new_state = EnvState(
            agent_x=agent_x,
            health=health,
            monster_x=monster_x,
            monster_alive=monster_alive,
            monster_cooldown=cooldown,
            fireball_xy=fireball_xy.astype(jnp.float32),
            fireball_vel=fireball_vel.astype(jnp.float32),
            fireball_alive=fireball_alive,
            hits=state.hits + hits_t,
            time=state.time + 1,
        )
        return new_state, hits_t

    # ------------------------------------------------------------------ rendering
    def render(self, state: EnvState, params: EnvParams) -> jax.Array:
        """First-person 64×64×3 uint8 view of `state`.

        Painter's algorithm in four layers, each a per-pixel mask: the room (ray cast per pixel: the
        nearest of floor, ceiling, side walls and far wall, shaded by depth), fireballs behind the
        monsters' plane (only just after a throw), monsters (rectangles standing on the floor at the far
        wall), then the other fireballs (discs at eye height). Screen size ∝ 1/depth throughout. All
        fireballs share one colour and all monsters one depth, so the layer order is an exact z-buffer
        among sprites; sprites are inside the room, so the room never hides them.
        """
        f = self.focal
        centre = OBS_SIZE / 2
        coords = jnp.arange(OBS_SIZE, dtype=jnp.float32) + 0.5
        u = (coords - centre) / f  # (W,) rightwards, per unit of forward depth
        v = (centre - coords) / f  # (H,) upwards
        ax = state.agent_x
        half = params.room_width / 2
        eye = params.eye_height

        # the room: a wall depth per column, a floor/ceiling depth per row; the nearer one wins
        t_far = params.room_depth + params.camera_back
        t_side = jnp.where(u > 0, (half - ax) / u, (-half - ax) / u)  # (W,)
        is_side = t_side < t_far
        t_wall = jnp.where(is_side, t_side, t_far)
        wall_rgb = jnp.where(is_side[:, None], jnp.array(SIDE_WALL_RGB), jnp.array(FAR_WALL_RGB))
        wall_rgb = _to_uint8(wall_rgb * shade(t_wall)[:, None])  # (W, 3)
        t_flat = jnp.where(v < 0, eye / -v, (params.wall_height - eye) / v)  # (H,)
        flat_rgb = jnp.where((v < 0)[:, None], jnp.array(FLOOR_RGB), jnp.array(CEILING_RGB))
        flat_rgb = _to_uint8(flat_rgb * shade(t_flat)[:, None])  # (H, 3)
        is_flat = t_flat[:, None] < t_wall[None, :]  # (H, W)
        rgb = jnp.where(is_flat[..., None], flat_rgb[:, None, :], wall_rgb[None, :, :])

        # monsters: rectangles [left, right) × [bottom, top) in screen space, separable in rows/columns
        m_depth = params.room_depth - 0.05 + params.camera_back
        m_left = (state.monster_x - params.monster_width / 2 - ax) / m_depth  # (M,)
        m_right = (state.monster_x + params.monster_width / 2 - ax) / m_depth
        m_cols = state.monster_alive[None, :] & (u[:, None] >= m_left) & (u[:, None] < m_right)  # (W, M)
        m_rows = (v >= -eye / m_depth) & (v < (params.monster_height - eye) / m_depth)  # (H,)
        monster = m_rows[:, None] & jnp.any(m_cols, axis=-1)[None, :]  # (H, W)

        # fireballs: discs centred on the horizon (they fly at eye height), radius ∝ 1/depth, >= 1 px
        fb_depth = jnp.maximum(state.fireball_xy[:, 1] + params.camera_back, 1e-3)  # (F,)
        fb_u = (state.fireball_xy[:, 0] - ax) / fb_depth
        fb_rad = jnp.maximum(params.fireball_radius * params.fireball_draw_scale / fb_depth, 1.0 / f)
        # pixel (h, w) is inside disc k iff v_h² < ρ_k² - (u_w - u_k)², so "inside any disc" only needs
        # the per-column maximum of the right-hand side: O(W·F + H·W), not O(H·W·F)
        reach2 = jnp.where(state.fireball_alive, fb_rad**2, -1.0)[None, :] - (u[:, None] - fb_u) ** 2  # (W, F)
        behind = fb_depth >= m_depth
        far_reach2 = jnp.max(jnp.where(behind[None, :], reach2, -1.0), axis=-1)  # (W,)
        near_reach2 = jnp.max(jnp.where(behind[None, :], -1.0, reach2), axis=-1)
        fb_far = (v**2)[:, None] < far_reach2[None, :]  # (H, W)
        fb_near = (v**2)[:, None] < near_reach2[None, :]

        monster_rgb = _to_uint8(jnp.array(MONSTER_RGB) * shade(m_depth))
        fireball_rgb = jnp.array(FIREBALL_RGB, jnp.uint8)
        rgb = jnp.where(fb_far[..., None], fireball_rgb, rgb)
        rgb = jnp.where(monster[..., None], monster_rgb, rgb)
        return jnp.where(fb_near[..., None], fireball_rgb, rgb)


def _to_uint8(rgb: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round(rgb), 0, 255).astype(jnp.uint8)


def shade(depth: jax.Array) -> jax.Array:
    """Distance shading factor applied to surfaces and monsters: 1 / (1 + 0.15 · depth)."""
    return 1.0 / (1.0 + 0.15 * depth)


# ---------------------------------------------------------------------- policies
@struct.dataclass
class HeldAction:
    """Carry of the held-random policy: the action being held and how many more frames to hold it."""

    action: jax.Array  # () int32
    frames_left: jax.Array  # () int32


def uniform_random_action(key: jax.Array) -> jax.Array:
    """A uniformly random action in {0, 1, 2}, drawn afresh every step."""
    return jax.random.randint(key, (), 0, NUM_ACTIONS, dtype=jnp.int32)


def held_random_init() -> HeldAction:
    """Initial carry for `held_random_action` (nothing held: a new action is drawn on the first call)."""
    return HeldAction(action=jnp.ones((), jnp.int32), frames_left=jnp.zeros((), jnp.int32))


def held_random_action(
    key: jax.Array, held: HeldAction, min_hold: int = 1, max_hold: int = 10
) -> tuple[jax.Array, HeldAction]:
    """The paper's data-collection policy: a random action held for a random 1–10 frames.

    Returns (action for this step, carry for the next step). Pure; scan it with a fresh key per step.
    """
    key_a, key_n = jax.random.split(key)
    fresh = held.frames_left <= 0
    action = jnp.where(fresh, uniform_random_action(key_a), held.action)
    hold = jax.random.randint(key_n, (), min_hold, max_hold + 1, dtype=jnp.int32)
    frames_left = jnp.where(fresh, hold, held.frames_left) - 1
    return action, HeldAction(action=action.astype(jnp.int32), frames_left=frames_left.astype(jnp.int32))


def dodger_action(state: EnvState, params: EnvParams, margin: float = 0.05) -> jax.Array:
    """A scripted dodger that reads the state (not the pixels).

    For each of the three actions, it imagines holding that action until every fireball in flight has
    reached the agent's line and counts the fireballs that would hit (each weighted by how soon it
    arrives, with a safety `margin` on the hit radius). It picks the least dangerous action, prefers
    staying still over moving on ties, and otherwise drifts towards the centre of the room so it keeps
    room to dodge. Shows that the task rewards skill; not a learned policy.
    """
    half = params.room_width / 2
    lim = half - params.agent_radius
    vy = jnp.minimum(state.fireball_vel[:, 1], -1e-6)
    steps_to_line = jnp.maximum(state.fireball_xy[:, 1] / -vy, 0.0)  # (F,)
    x_cross = state.fireball_xy[:, 0] + state.fireball_vel[:, 0] * steps_to_line
    reach = params.agent_radius + params.fireball_radius + margin
    moves = jnp.array([-1.0, 0.0, 1.0]) * params.agent_speed  # (3,)
    x_at = jnp.clip(state.agent_x + moves[:, None] * jnp.ceil(steps_to_line)[None, :], -lim, lim)  # (3, F)
    danger_hit = state.fireball_alive[None, :] & (jnp.abs(x_at - x_cross[None, :]) < reach)
    weight = 1.0 / (1.0 + steps_to_line)
    danger = jnp.sum(jnp.where(danger_hit, weight[None, :], 0.0), axis=1)  # (3,)
    # tie-breaks: prefer staying, then moving towards the centre
    centre_pull = jnp.abs(state.agent_x + moves) * 1e-3
    stay_bonus = jnp.array([0.0, -1e-4, 0.0])
    return jnp.argmin(danger + centre_pull + stay_bonus).astype(jnp.int32)


def survival_steps(
    env: TakeCover,
    params: EnvParams,
    policy: str,
    key: jax.Array,
    num_episodes: int,
) -> jax.Array:
    """Episode lengths (= returns) of `num_episodes` episodes under a built-in policy, without pixels.

    policy: "uniform" (uniform random each step), "held" (random held for 1–10 frames), "dodger"
    (scripted, state-based) or "stay" (always action 1). Each episode runs until termination or
    `params.max_steps_in_episode`, in one compiled `lax.while_loop` over a vmapped batch that stops when
    every episode has ended. Episode i is not the same random stream as `env.step` would use.
    """
    check(policy in ("uniform", "held", "dodger", "stay"), ConfigError,
          f"policy must be 'uniform', 'held', 'dodger' or 'stay', got {policy!r}.")
    check(num_episodes >= 1, ConfigError, f"num_episodes must be >= 1, got {num_episodes}.")
    max_steps = int(params.max_steps_in_episode)
    return _survival_jit(env, policy, max_steps, num_episodes, params, key)


def _policy_step(policy: str, key: jax.Array, state: EnvState, held: HeldAction, params: EnvParams):
    if policy == "uniform":
        return uniform_random_action(key), held
    if policy == "held":
        return held_random_action(key, held)
    if policy == "dodger":
        return dodger_action(state, params), held
    return jnp.ones((), jnp.int32), held


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _survival_jit(env, policy, max_steps, num_episodes, params, key):
    """Batched render-free rollout; a `lax.while_loop` that stops once every episode has ended."""
    key_reset, key_run = jax.random.split(key)
    states = jax.vmap(env.init_state, in_axes=(0, None))(jax.random.split(key_reset, num_episodes), params)
    held = jax.vmap(lambda _: held_random_init())(jnp.arange(num_episodes))
    done = jnp.zeros((num_episodes,), bool)
    length = jnp.zeros((num_episodes,), jnp.int32)

    def one(key_t, state, held, params):
        key_pol, key_env = jax.random.split(key_t)
        action, held = _policy_step(policy, key_pol, state, held, params)
        state, _ = env.transition(key_env, state, action, params)
        return state, held, env.is_terminated(state, params)

    def body(carry):
        t, key, states, held, done, length = carry
        key, key_t = jax.random.split(key)
        keys = jax.random.split(key_t, num_episodes)
        states, held, dead = jax.vmap(one, in_axes=(0, 0, 0, None))(keys, states, held, params)
        length = length + (~done).astype(jnp.int32)
        return t + 1, key, states, held, done | dead, length

    def cond(carry):
        t, _, _, _, done, _ = carry
        return (t < max_steps) & ~jnp.all(done)

    init = (jnp.zeros((), jnp.int32), key_run, states, held, done, length)
    return jax.lax.while_loop(cond, body, init)[-1]
