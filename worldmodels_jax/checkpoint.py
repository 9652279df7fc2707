"""Atomic, resumable checkpoints of arbitrary pytrees, via orbax.

orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-write leaves the previous checkpoint intact: a killed run loses at most one interval.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from worldmodels_jax.errors import CheckpointError

for _name in ("absl", "orbax", "orbax.checkpoint"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class Checkpointer:
    """Saves and restores `(step, pytree)` under one directory, keeping the newest `max_to_keep`."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        self._manager.reload()
        return self._manager.latest_step()

    def save(self, step: int, tree: Any) -> None:
        """Saves `tree` at `step` atomically (blocks until written). A step that exists is replaced: a stage
        killed after its final save but before it was marked done saves again when resumed."""
        tree = jax.device_get(tree)
        if int(step) in self._manager.all_steps():
            self._manager.delete(int(step))
        self._manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> tuple[int, Any] | None:
        """Restores the newest (or given) step into the structure of `template`; None if none exists."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = jax.tree.map(_abstract_leaf, template)
        try:
            tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax raises many types; report one clear error
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be restored ({type(err).__name__}: "
                f"{str(err)[:300]}). Delete that step's directory to fall back to an older one, "
                "or start the stage afresh with a new --out directory."
            ) from err
        return step, tree

    def close(self) -> None:
        self._manager.close()


def _abstract_leaf(x):
    x = np.asarray(x) if not hasattr(x, "shape") else x
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
