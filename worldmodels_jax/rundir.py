"""Run directories: the resolved config, metrics as JSONL, checkpoints and stage markers.

Layout of a run directory:
    config.json                 resolved configuration of the run
    metrics/<stage>.jsonl       one JSON object per logged record
    checkpoints/<stage>/        orbax checkpoints (see `worldmodels_jax.checkpoint`)
    stages/<stage>.json         written last by a finished stage: its outputs and timing
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels_jax.checkpoint import Checkpointer


def to_jsonable(value: Any) -> Any:
    """Converts dataclasses, numpy/jax arrays and scalars into plain JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        array = np.asarray(value)
        return array.item() if array.ndim == 0 else array.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Writes JSON to a temporary file in the same directory, then renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(to_jsonable(payload), handle, indent=2, sort_keys=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


class RunDir:
    """A run directory; every stage of every learner writes through one of these."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "metrics").mkdir(exist_ok=True)
        (self.path / "stages").mkdir(exist_ok=True)

    def save_config(self, config: Any, name: str = "config.json") -> Path:
        target = self.path / name
        write_json_atomic(target, config)
        return target

    def log_metrics(self, stage: str, records: dict | list[dict]) -> None:
        """Appends one record or a list of records to `metrics/<stage>.jsonl`."""
        records = [records] if isinstance(records, dict) else records
        with open(self.path / "metrics" / f"{stage}.jsonl", "a") as handle:
            for record in records:
                handle.write(json.dumps(to_jsonable(record)) + "\n")

    def read_metrics(self, stage: str) -> list[dict]:
        target = self.path / "metrics" / f"{stage}.jsonl"
        if not target.exists():
            return []
        return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]

    def reset_metrics(self, stage: str) -> None:
        (self.path / "metrics" / f"{stage}.jsonl").unlink(missing_ok=True)

    def checkpointer(self, stage: str, max_to_keep: int = 2) -> Checkpointer:
        return Checkpointer(self.path / "checkpoints" / stage, max_to_keep=max_to_keep)

    def stage_done(self, stage: str) -> dict | None:
        """The finished-stage record, or None if the stage has not finished."""
        marker = self.path / "stages" / f"{stage}.json"
        return json.loads(marker.read_text()) if marker.exists() else None

    def mark_done(self, stage: str, record: dict) -> None:
        write_json_atomic(self.path / "stages" / f"{stage}.json", record)
