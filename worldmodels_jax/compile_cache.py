"""The persistent compilation cache of `wmj` and the experiment scripts: compiled XLA programs kept on disk, so that a
second run of a preset (another seed, a resumed or forked run, another τ) skips compiling them.

The programs take V's, M's and C's parameters as arguments rather than embedding them as constants, so they do not
depend on a run's weights and one run's programs serve the next (`Pipeline.controller_training`). Measured on the
2-core Zen 3 VM: `wmj run --preset tiny --env CarRacing-v0` takes 151 s without the cache and 55 s after a run with
another seed filled it (docs/benchmarks.md, "Compiling").

`--compilation-cache` (or WMJ_COMPILATION_CACHE) chooses:
- `auto` (default): JAX's own setting if one is made (JAX_COMPILATION_CACHE_DIR, or `jax_compilation_cache_dir`
  set in this process), else `$XDG_CACHE_HOME/worldmodels_jax/xla` (`~/.cache/...`), at most CACHE_MAX_BYTES;
- a directory: that one, at most CACHE_MAX_BYTES;
- `off`: no persistent cache.
The least recently used programs are deleted past the size limit. XLA's flags and version and the device kind are
part of each program's key, so one directory serves several machines and JAX versions.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from worldmodels_jax.errors import ConfigError

CACHE_MAX_BYTES = 2 * 1024**3
"""The cache's size limit (the least recently used programs go first)."""

MIN_COMPILE_SECONDS = 0.5
"""Programs that compile faster than this are not kept (JAX's default is 1 s)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "worldmodels_jax" / "xla"


def add_compilation_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compilation-cache", default=os.environ.get("WMJ_COMPILATION_CACHE", "auto"),
                        help="keep compiled programs on disk for later runs: auto (JAX_COMPILATION_CACHE_DIR if set, "
                             f"else {default_cache_dir()}), a directory, or off (default: $WMJ_COMPILATION_CACHE, "
                             "else auto)")


def use_compilation_cache(choice: str) -> Path | None:
    """Applies `--compilation-cache` `choice` to this process; returns the directory in use (None: off). Call it
    before the first compile: JAX reads the setting when it first compiles."""
    import jax

    if not isinstance(choice, str) or not choice.strip():
        raise ConfigError(f"--compilation-cache takes auto, off or a directory, got {choice!r}")
    if choice == "off":
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    if choice == "auto" and jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)  # JAX_COMPILATION_CACHE_DIR or a setting made here
    path = default_cache_dir() if choice == "auto" else Path(choice).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot use {path} as the compilation cache ({err}); pass --compilation-cache with a "
                          "writable directory, or --compilation-cache off") from err
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
