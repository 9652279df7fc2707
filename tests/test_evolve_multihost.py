"""Multi-host evolution: 2 processes on this machine (CPU collectives over loopback) vs one process.

Each process is started with `jax.distributed.initialize(coordinator 127.0.0.1:PORT, 2, i)` through
`wmj evolve --coordinator ... --num-processes 2 --process-id i`; the population is sharded over the 2
global devices (one per process), the ES state replicated. The result must equal a single-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--env", "CartPole-v1", "--hidden", "8", "--strategy", "CMA_ES", "--population", "16", "--generations", "4",
        "--eval-every", "2", "--rollouts", "2", "--eval-episodes", "8", "--max-steps", "60", "--sigma", "0.5",
        "--normalize-obs", "--pop-chunk", "4", "--seed", "11", "--quiet", "--json"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(devices: int = 1) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           # The device count added to the suite's own flags (conftest.py), so both sides compile alike.
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()}
    # No persistent compilation cache here: two processes racing on one cache directory were seen to run
    # mismatched collectives (gloo "Received data size doesn't match expected size").
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, capsys):
    cli = [sys.executable, "-m", "worldmodels_jax.evolve_cli", *ARGS]
    port = _free_port()
    # Output goes to files, not pipes: an unread pipe that fills up would stall one process and the
    # coordination service would then declare it dead.
    logs = [(open(tmp_path / f"p{i}.out", "w"), open(tmp_path / f"p{i}.err", "w")) for i in range(2)]
    procs = [subprocess.Popen([*cli, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i), "--out", str(tmp_path / "multi")],
                              env=_env(), cwd=ROOT, stdout=logs[i][0], stderr=logs[i][1], text=True)
             for i in range(2)]
    try:
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for out, err in logs:
            out.close()
            err.close()
    outputs = [((tmp_path / f"p{i}.out").read_text(), (tmp_path / f"p{i}.err").read_text()) for i in range(2)]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    multi = _last_json(outputs[0][0])
    assert multi["processes"] == 2 and multi["devices"] == 2
    assert not [line for line in outputs[1][0].splitlines() if line.startswith("{")]  # only process 0 reports

    from worldmodels_jax.evolve_cli import main  # the reference: this (single-device) process

    assert main([*ARGS, "--out", str(tmp_path / "single")]) == 0
    one = _last_json(capsys.readouterr().out)
    assert one["processes"] == 1 and one["devices"] == 1
    assert multi["best_eval"] == pytest.approx(one["best_eval"], rel=1e-5)
    for key in ("eval_mean", "eval_std", "eval_min", "eval_max"):
        assert multi["last_eval"][key] == pytest.approx(one["last_eval"][key], rel=1e-5, abs=1e-4)
    assert multi["env_steps"] == one["env_steps"]
    rows_multi = [json.loads(x) for x in (tmp_path / "multi" / "metrics" / "evolve.jsonl").read_text().splitlines()]
    rows_one = [json.loads(x) for x in (tmp_path / "single" / "metrics" / "evolve.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows_multi] == [1, 2, 3, 4]
    for a, b in zip(rows_multi, rows_one):
        assert a["return_mean"] == pytest.approx(b["return_mean"], rel=1e-5)
