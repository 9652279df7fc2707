"""Rollout datasets on disk: shards of equal-length sequences plus a manifest with shapes, counts and checksums.

Each shard `shard_XXXXX.npz` holds arrays shaped [num_envs, steps, ...] (one sequence per env,
episodes auto-reset inside it). Per step t: `obs` (the frame the action was taken on), `action`
(raw), `reward`, `terminated`, `truncated` and `first` (obs_t starts an episode). The manifest
lists every shard with its SHA-256, so a corrupt or missing shard is caught before it is used.
Encoded datasets use the same format, with `mu` and `logvar` in place of `obs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from worldmodels_jax.envs.actions import ActionSpec, action_spec, sample_action
from worldmodels_jax.errors import ConfigError, DatasetError, EnvError
from worldmodels_jax.rundir import write_json_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class Dataset:
    """A directory of shards and a manifest. Create with `Dataset.create`, read with `Dataset.open`."""

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: str | Path, meta: dict, num_shards: int) -> "Dataset":
        """Opens an existing dataset for appending if its meta matches, else starts a new one."""
        path = Path(path)
        if (path / MANIFEST).exists():
            existing = cls.open(path, verify=False)
            if existing.manifest["meta"] != json.loads(json.dumps(meta)):
                raise DatasetError(
                    f"{path} already holds a dataset made with different settings "
                    f"({existing.manifest['meta']} vs {meta}); use another directory or delete it"
                )
            return existing
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"format_version": FORMAT_VERSION, "meta": meta, "num_shards": num_shards,
                    "shards": [], "fields": {}}
        dataset = cls(path, manifest)
        dataset._write_manifest()
        return dataset

    def _write_manifest(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def write_shard(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Writes shard `index` atomically, then records it (with its checksum) in the manifest."""
        name = f"shard_{index:05d}.npz"
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        with tempfile.NamedTemporaryFile(dir=self.path, suffix=".tmp", delete=False) as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, self.path / name)
        first = next(iter(arrays.values()))
        entry = {
            "index": index, "file": name, "sha256": _sha256(self.path / name),
            "num_envs": int(first.shape[0]), "steps": int(first.shape[1]),
            "frames": int(first.shape[0] * first.shape[1]),
            "episodes_started": int(arrays["first"].sum()) if "first" in arrays else None,
            "terminated": int(arrays["terminated"].sum()) if "terminated" in arrays else None,
        }
        self.manifest["fields"] = {
            k: {"shape_per_step": list(v.shape[2:]), "dtype": str(v.dtype)} for k, v in arrays.items()
        }
        self.manifest["shards"] = [s for s in self.manifest["shards"] if s["index"] != index] + [entry]
        self.manifest["shards"].sort(key=lambda s: s["index"])
        self._write_manifest()

    # ----------------------------------------------------------------- reading
    @classmethod
    def open(cls, path: str | Path, verify: bool = True, require_complete: bool = False) -> "Dataset":
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise DatasetError(
                f"no dataset at {path}: {MANIFEST} is missing. Run the collect stage first "
                f"(`wmj collect --out RUN_DIR`), or point to the directory that holds {MANIFEST}."
            )
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path / MANIFEST} is not valid JSON ({err}); re-run the stage that wrote it") from err
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{path} has dataset format {manifest.get('format_version')}, expected {FORMAT_VERSION}")
        dataset = cls(path, manifest)
        if require_complete and not dataset.complete:
            raise DatasetError(
                f"{path} is incomplete: {len(manifest['shards'])} of {manifest['num_shards']} shards. "
                "Resume the stage that writes it to finish it."
            )
        if verify:
            for entry in manifest["shards"]:
                dataset._check_file(entry)
        return dataset

    @property
    def complete(self) -> bool:
        return len(self.manifest["shards"]) == self.manifest["num_shards"]

    @property
    def meta(self) -> dict:
        return self.manifest["meta"]

    @property
    def shard_indices(self) -> list[int]:
        return [s["index"] for s in self.manifest["shards"]]

    @property
    def num_frames(self) -> int:
        return sum(s["frames"] for s in self.manifest["shards"])

    def _entry(self, index: int) -> dict:
        for entry in self.manifest["shards"]:
            if entry["index"] == index:
                return entry
        raise DatasetError(f"shard {index} is not in {self.path / MANIFEST}; resume the stage that writes it")

    def _check_file(self, entry: dict) -> Path:
        file = self.path / entry["file"]
        if not file.exists():
            raise DatasetError(
                f"shard {entry['file']} listed in {self.path / MANIFEST} is missing. Re-run the stage "
                "that wrote this dataset (it resumes and rewrites missing shards)."
            )
        if _sha256(file) != entry["sha256"]:
            raise DatasetError(
                f"shard {file} is corrupt (SHA-256 mismatch with the manifest). Delete it and re-run the "
                "stage that wrote it; it will be rewritten."
            )
        return file

    def has_valid_shard(self, index: int) -> bool:
        try:
            self._check_file(self._entry(index))
            return True
        except DatasetError:
            return False

    def load_shard(self, index: int, fields: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        file = self._check_file(self._entry(index))
        try:
            with np.load(file) as archive:
                names = archive.files if fields is None else fields
                missing = [n for n in names if n not in archive.files]
                if missing:
                    raise DatasetError(f"shard {file} lacks fields {missing}; it has {archive.files}")
                return {name: archive[name] for name in names}
        except (OSError, ValueError) as err:
            raise DatasetError(f"shard {file} cannot be read ({err}); delete it and re-run its stage") from err

    def iter_shards(self, fields: tuple[str, ...] | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for index in self.shard_indices:
            yield index, self.load_shard(index, fields)

    def load_all(self, fields: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """All shards concatenated along the env axis: [sum(num_envs), steps, ...]."""
        parts = [arrays for _, arrays in self.iter_shards(fields)]
        if not parts:
            raise DatasetError(f"dataset {self.path} has no shards yet")
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


# --------------------------------------------------------------------- collection
def check_image_env(env, env_params) -> None:
    """Raises EnvError unless the env's observations are 64×64×3 images."""
    space = env.observation_space(env_params)
    shape = tuple(getattr(space, "shape", ()))
    if shape != (64, 64, 3):
        raise EnvError(
            f"{env.name} has observations shaped {shape}, but V needs 64×64×3 images. Use an image env "
            "such as CartPolePixels-v1, CarRacing-v0 or TakeCover-v0 (or wrap yours to render 64×64×3 frames)."
        )


def make_collect_shard(env, env_params, spec: ActionSpec, num_envs: int, steps: int,
                       hold_min: int = 1, hold_max: int = 1, policy=None, random_prob: float = 1.0):
    """Returns jitted `collect(key) -> arrays [num_envs, steps, ...]` of random-policy rollouts.

    The random action of each env is held for a uniform 1..`hold` frames (hold_min = hold_max = 1:
    a new random action every step), as the Doom data collection did. With an exploration `policy`
    `(key, episode_key, env_state, env_params) -> action`, each such segment is random with probability
    `random_prob` and otherwise driven by the policy, which then acts every step. `episode_key` stays the
    same for a whole episode and is fresh after each reset (for policies with per-episode parameters).
    """
    if not 1 <= hold_min <= hold_max:
        raise ConfigError(f"action hold must satisfy 1 <= hold_min <= hold_max, got {hold_min}, {hold_max}")
    if not 0.0 <= random_prob <= 1.0:
        raise ConfigError(f"random_prob must be in [0, 1], got {random_prob}")

    def one_env(key, random_prob):
        key_reset, key_loop = jax.random.split(key)
        obs, state = env.reset(key_reset, env_params)
        action0 = jnp.zeros(spec.raw_shape, spec.raw_dtype)

        def step(carry, key_t):
            obs, state, first, held, hold, use_random, episode_key = carry
            key_action, key_hold, key_step = jax.random.split(key_t, 3)
            episode_key = jnp.where(first, jax.random.fold_in(key_t, 2), episode_key)
            fresh = (hold <= 0) | first
            held = jnp.where(fresh, sample_action(key_action, spec), held)
            hold = jnp.where(fresh, jax.random.randint(key_hold, (), hold_min, hold_max + 1), hold) - 1
            if policy is None:
                action = held
            else:
                key_mix, key_policy = jax.random.split(jax.random.fold_in(key_t, 1))
                use_random = jnp.where(fresh, jax.random.bernoulli(key_mix, random_prob), use_random)
                driven = policy(key_policy, episode_key, state, env_params).astype(held.dtype)
                action = jnp.where(use_random, held, driven)
            next_obs, state, reward, terminated, truncated, _ = env.step(key_step, state, action, env_params)
            record = {"obs": obs, "action": action, "reward": reward.astype(jnp.float32),
                      "terminated": terminated, "truncated": truncated, "first": first}
            done = terminated | truncated
            return (next_obs, state, done, held, hold, use_random, episode_key), record

        carry = (obs, state, jnp.array(True), action0, jnp.array(0), jnp.array(True), jnp.zeros_like(key_loop))
        _, records = jax.lax.scan(step, carry, jax.random.split(key_loop, steps))
        return records

    # random_prob is an argument, not a constant: collections that differ only in it share one program.
    collect = jax.jit(lambda key, random_prob: jax.vmap(one_env, in_axes=(0, None))(jax.random.split(key, num_envs),
                                                                                     random_prob))
    return lambda key: collect(key, jnp.float32(random_prob))


def random_controller_policy(mapping, inputs: int, max_std: float = 0.01):
    """The original World Models' CarRacing data policy: an untrained controller, a new one per episode.

    Each episode draws s ~ U(0, `max_std`), then W ~ N(0, s²) of shape (outputs, `inputs`) and b ~ N(0, s²)
    (the original's `init_random_model_params(stdev=np.random.rand() * 0.01)`). Each step feeds it white
    N(0, 1) features, which stand in for the sampled z of an untrained V, and acts `mapping(tanh(W f + b))`.
    With such small weights the pre-activations stay within about ±0.2: on CarRacing that is gas near 0.5,
    little steering and a light brake on about half the steps, so the car drives off along the start straight.
    Returns a collection policy `(key, episode_key, env_state, env_params) -> action`.
    """
    if inputs < 1 or not max_std > 0:
        raise ConfigError(f"random_controller_policy needs inputs >= 1 and max_std > 0, got {inputs}, {max_std}")

    def policy(key, episode_key, env_state, env_params):
        del env_state, env_params
        key_std, key_w, key_b = jax.random.split(episode_key, 3)
        std = max_std * jax.random.uniform(key_std)
        weights = std * jax.random.normal(key_w, (mapping.num_outputs, inputs))
        bias = std * jax.random.normal(key_b, (mapping.num_outputs,))
        features = jax.random.normal(key, (inputs,))
        return mapping(jnp.tanh(weights @ features + bias))

    return policy


def make_env(env_id: str):
    """gymnax.make with a clear error for unknown ids."""
    import worldmodels_jax  # noqa: F401  (registers our envs)

    if env_id not in gymnax.registered_envs:
        raise EnvError(f"unknown env {env_id!r}. Registered gymnax envs include: "
                       f"{', '.join(sorted(gymnax.registered_envs))}")
    return gymnax.make(env_id)


__all__ = ["Dataset", "make_collect_shard", "random_controller_policy", "check_image_env", "make_env", "action_spec"]
