"""Training throughput of V and M on this machine: JAX (XLA layers), JAX (fast CPU layers) and PyTorch, side by side.

V: the paper's ConvVAE (64x64x3, z 32, 4,348,547 parameters), one Adam step (lr 1e-4) on a batch of 100 frames,
   in frames/s. The JAX contestants run the library's step (`train.vae.make_vae_step`): plain XLA layers, the fast
   CPU layers on the whole batch, and the CPU default (fast layers in micro-batches of 20).
M: the MDN-RNN (LSTM 256, K 5, z 32, action 3), one Adam step (lr 1e-3, gradients clipped to +-1) on 100
   sequences of T steps, in sequence-steps/s (100 * T per step), with the training loss (`MDNRNN.observe_nll`).

All contestants are measured in the same process, interleaved round-robin (one timed repeat of each in turn),
after a warm-up; the figure is the median over repeats, with JAX results `block_until_ready`. Then the goal's
pair (the library's default against PyTorch) runs alone for 15 more rounds, and the median of the per-round
ratios is reported as "paired": each ratio compares two back-to-back measurements, so drifting load cancels.
JAX's compile time (the first call) is reported separately. Before timing, each side loads the same parameters and the benchmark
checks that JAX and PyTorch give the same loss, so the maths compared is the same.

    .venv/bin/python -m benchmarks.bench_vm_training          # full run
    .venv/bin/python -m benchmarks.bench_vm_training --quick  # a smoke run (a minute or two)

Needs torch==2.13.0 (CPU wheel): `.venv/bin/pip install torch==2.13.0`. Without torch, only JAX is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from worldmodels_jax.models import mdnrnn as mdn
from worldmodels_jax.models import vae as vae_mod
from worldmodels_jax.train import vae as train_vae

try:  # benchmark-only dependency
    import torch

    from benchmarks import torch_reference as tref
except ImportError:  # pragma: no cover - torch missing
    torch = None
    tref = None

BATCH = 100
Z = 32
ACTION = 3
PAIRED_REPEATS = {False: (15, 2), True: (5, 1)}  # (rounds, steps per round) of the goal's pair, full / quick


# ----------------------------------------------------------------------------------------------------------------
# timing helpers
# ----------------------------------------------------------------------------------------------------------------


def _round_robin(
    contestants: dict[str, Callable[[], Any]], repeats: int, steps: int
) -> dict[str, tuple[list[float], list[float]]]:
    """(wall, process CPU) seconds per step for each contestant; `steps` steps of each in turn, `repeats` times.

    The process CPU time (all threads) is less sensitive than wall time to other load on a shared machine.
    """
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in contestants}
    for _ in range(repeats):
        for name, step in contestants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            times[name][0].append((time.perf_counter() - t0) / steps)
            times[name][1].append((time.process_time() - c0) / steps)
    return times


def _paired(ours: Callable[[], Any], torch_step: Callable[[], Any], repeats: int, steps: int) -> dict[str, Any]:
    """The goal's pair alone, interleaved: per round, PyTorch's time / ours for the same `steps` steps.

    Each ratio compares two measurements taken back to back, so load that drifts over the run (this machine is a
    shared VM) cancels out of it; the median and quartiles of the per-round ratios are the figure with the least
    spread. The ablation contestants are left out of these rounds.
    """
    times = _round_robin({"ours": ours, "torch": torch_step}, repeats, steps)
    ratios = [t / o for o, t in zip(times["ours"][0], times["torch"][0])]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {
        "repeats": repeats, "steps": steps, "ratio_median": statistics.median(ratios), "ratio_q1": q1,
        "ratio_q3": q3, "ratios": ratios, "ours_ms_median": 1e3 * statistics.median(times["ours"][0]),
        "torch_ms_median": 1e3 * statistics.median(times["torch"][0]),
    }


def _summary(seconds: tuple[list[float], list[float]], items_per_step: int) -> dict[str, float]:
    wall, cpu = seconds
    med = statistics.median(wall)
    return {
        "items_per_s": items_per_step / med,
        "ms_per_step": 1e3 * med,
        "ms_per_step_min": 1e3 * min(wall),
        "ms_per_step_max": 1e3 * max(wall),
        "cpu_ms_per_step": 1e3 * statistics.median(cpu),
        "repeats": len(wall),
    }


# ----------------------------------------------------------------------------------------------------------------
# V
# ----------------------------------------------------------------------------------------------------------------


def _jax_vae_step(impl: str, microbatch: int, images: jax.Array, key: jax.Array, check_key: jax.Array):
    """The library's jitted V step (`train.vae.make_vae_step`, Adam lr 1e-4) with conv_impl `impl`.

    Returns (step closure, compile seconds, loss at the initial parameters with noise drawn from `check_key`).
    """
    vae_config = vae_mod.VAEConfig(z_size=Z, conv_impl=impl)
    train_config = train_vae.VAETrainConfig(batch_size=BATCH, learning_rate=1e-4, microbatch=microbatch)
    init, update = train_vae.make_vae_step(vae_config, train_config)
    state = {"state": init(key), "key": key}  # init(key) draws the same parameters as init_vae(key, ...)
    t0 = time.perf_counter()
    compiled = jax.jit(update).lower(state["state"], images, key).compile()
    compile_s = time.perf_counter() - t0
    initial_loss = float(compiled(state["state"], images, check_key)[1]["loss"])

    def run_one():
        state["key"], sub = jax.random.split(state["key"])
        state["state"], metrics = compiled(state["state"], images, sub)
        jax.block_until_ready(metrics["loss"])
        return metrics["loss"]

    return run_one, compile_s, initial_loss


def _torch_vae_step(params0, images_nhwc: np.ndarray):
    model = tref.TorchConvVAE(Z)
    tref.load_vae_params(model, params0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.from_numpy(np.array(images_nhwc.transpose(0, 3, 1, 2)))

    def run_one():
        eps = torch.randn(x.shape[0], Z)
        optimizer.zero_grad(set_to_none=True)
        recon, mu, logvar = model(x, eps)
        loss = tref.vae_loss(x, recon, mu, logvar)
        loss.backward()
        optimizer.step()
        return loss

    return run_one, model


# (name, conv_impl, micro-batch): plain Flax layers on whole batches, the fast layers on whole batches, and the
# library's CPU default (fast layers, automatic micro-batches: 20 of 100 on the CPU).
VAE_CONTESTANTS = (("jax_xla", "xla", BATCH), ("jax_fast_whole_batch", "fast", BATCH), ("jax_fast", "auto", 0))


def bench_vae(quick: bool) -> dict:
    key = jax.random.PRNGKey(0)
    params0 = vae_mod.init_vae(key, vae_mod.VAEConfig(z_size=Z))
    n_params = vae_mod.param_count(params0)
    images_np = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (BATCH, 64, 64, 3)), np.float32)
    images = jnp.asarray(images_np)
    check_key = jax.random.PRNGKey(2)

    result: dict[str, Any] = {
        "param_count": n_params, "batch": BATCH,
        "jax_fast_microbatch": train_vae.resolve_microbatch(BATCH, 0),
    }
    contestants: dict[str, Callable[[], Any]] = {}
    losses = {}
    for name, impl, microbatch in VAE_CONTESTANTS:
        run_one, compile_s, losses[name] = _jax_vae_step(impl, microbatch, images, key, check_key)
        contestants[name] = run_one
        result[f"{name}_compile_s"] = compile_s

    # Same maths: identical parameters and noise give the same loss in every contestant.
    eps_np = np.asarray(jax.random.normal(check_key, (BATCH, Z)), np.float32)
    if torch is not None:
        run_torch, tmodel = _torch_vae_step(params0, images_np)
        with torch.no_grad():
            x_t = torch.from_numpy(np.array(images_np.transpose(0, 3, 1, 2)))
            recon, mu, logvar = tmodel(x_t, torch.from_numpy(np.array(eps_np)))
            losses["torch"] = float(tref.vae_loss(x_t, recon, mu, logvar))
        contestants["torch"] = run_torch
        result["torch_param_count"] = sum(p.numel() for p in tmodel.parameters())
    result["loss_check"] = losses
    ref = losses["jax_xla"]
    result["loss_max_rel_diff"] = max(abs(v - ref) / abs(ref) for v in losses.values())

    for step in contestants.values():  # warm-up
        step()
    repeats, steps = (3, 1) if quick else (5, 2)
    times = _round_robin(contestants, repeats, steps)
    for name, secs in times.items():
        result[name] = _summary(secs, BATCH)
    _ratios(result, contestants)
    if torch is not None:
        result["paired"] = {"contestant": "jax_fast",
                            **_paired(contestants["jax_fast"], contestants["torch"], *PAIRED_REPEATS[quick])}
    return result


# ----------------------------------------------------------------------------------------------------------------
# M
# ----------------------------------------------------------------------------------------------------------------


def _jax_mdn_step(z: jax.Array, a: jax.Array, z_next: jax.Array, params0):
    config = mdn.MDNRNNConfig(z_size=Z, action_size=ACTION)
    model = mdn.MDNRNN(config)
    optimizer = optax.chain(optax.clip(1.0), optax.adam(1e-3))
    reset = jnp.zeros(z.shape[:2], bool).at[:, 0].set(True)
    valid = jnp.ones(z.shape[:2], bool)  # training masks steps whose episode ended; none here

    def loss_fn(params, z, a, z_next):  # the training loss (train.mdn): observe_nll, the fused head and NLL
        return model.apply({"params": params}, z, a, reset, z_next, valid, method="observe_nll")[0]

    @jax.jit
    def step(params, opt_state, z, a, z_next):
        loss, grads = jax.value_and_grad(loss_fn)(params, z, a, z_next)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params0, "opt": optimizer.init(params0)}
    t0 = time.perf_counter()
    compiled = step.lower(state["params"], state["opt"], z, a, z_next).compile()
    compile_s = time.perf_counter() - t0

    def run_one():
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], z, a, z_next)
        jax.block_until_ready(loss)
        return loss

    return run_one, compile_s, jax.jit(loss_fn)


def _torch_mdn_step(params0, z, a, z_next):
    model = tref.TorchMDNRNN(Z, ACTION, 256, 5)
    tref.load_mdnrnn_params(model, params0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(np.concatenate([z, a], axis=-1))
    target = torch.from_numpy(np.array(z_next))

    def run_one():
        optimizer.zero_grad(set_to_none=True)
        loss = tref.mdn_nll(*model(x), target)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    return run_one, model, x, target


def bench_mdn(quick: bool, seq_len: int | None = None) -> dict:
    seq_len = seq_len or (50 if quick else 200)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    z_np = np.asarray(jax.random.normal(k1, (BATCH, seq_len, Z)), np.float32)
    a_np = np.asarray(jax.random.uniform(k2, (BATCH, seq_len, ACTION), minval=-1, maxval=1), np.float32)
    zn_np = np.asarray(jax.random.normal(k3, (BATCH, seq_len, Z)), np.float32)
    z, a, zn = map(jnp.asarray, (z_np, a_np, zn_np))
    params0 = mdn.init_mdnrnn(jax.random.PRNGKey(4), mdn.MDNRNNConfig(z_size=Z, action_size=ACTION))

    result: dict[str, Any] = {"param_count": vae_mod.param_count(params0), "batch": BATCH, "seq_len": seq_len}
    run_jax, compile_s, loss_fn = _jax_mdn_step(z, a, zn, params0)
    contestants: dict[str, Callable[[], Any]] = {"jax": run_jax}
    result["jax_compile_s"] = compile_s
    losses = {"jax": float(loss_fn(params0, z, a, zn))}
    if torch is not None:
        run_torch, tmodel, x_t, target_t = _torch_mdn_step(params0, z_np, a_np, zn_np)
        with torch.no_grad():
            losses["torch"] = float(tref.mdn_nll(*tmodel(x_t), target_t))
        contestants["torch"] = run_torch
        result["torch_param_count"] = sum(p.numel() for p in tmodel.parameters())
    result["loss_check"] = losses
    result["loss_max_rel_diff"] = max(abs(v - losses["jax"]) / abs(losses["jax"]) for v in losses.values())

    for step in contestants.values():
        step()
    repeats, steps = (3, 1) if quick else (7, 2)
    times = _round_robin(contestants, repeats, steps)
    for name, secs in times.items():
        result[name] = _summary(secs, BATCH * seq_len)
    _ratios(result, contestants)
    if torch is not None:
        result["paired"] = {"contestant": "jax", **_paired(run_jax, run_torch, *PAIRED_REPEATS[quick])}
    return result


def _ratios(result: dict, contestants: dict) -> None:
    if "torch" not in result:
        return
    torch_rate = result["torch"]["items_per_s"]
    result["ratio_vs_torch"] = {
        name: result[name]["items_per_s"] / torch_rate for name in contestants if name != "torch"
    }
    torch_cpu = result["torch"]["cpu_ms_per_step"]
    result["cpu_time_ratio_vs_torch"] = {  # > 1: needs less CPU time per step than torch
        name: torch_cpu / result[name]["cpu_ms_per_step"] for name in contestants if name != "torch"
    }


# ----------------------------------------------------------------------------------------------------------------


def run(quick: bool = False) -> dict:
    """Both benchmarks; returns a JSON-able dict with throughputs, ms per step, compile times and ratios."""
    info = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "torch": getattr(torch, "__version__", None),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "quick": quick,
        "loadavg_start": os.getloadavg(),
    }
    res = {"info": info, "vae": bench_vae(quick), "mdnrnn": bench_mdn(quick)}
    info["loadavg_end"] = os.getloadavg()
    return res


def _print(res: dict) -> None:
    print(json.dumps(res["info"]))
    for what, unit in (("vae", "frames/s"), ("mdnrnn", "seq-steps/s")):
        r = res[what]
        print(
            f"\n{what}: params {r['param_count']}, loss check {r['loss_check']} "
            f"(max rel diff {r['loss_max_rel_diff']:.1e})"
        )
        for name in [k for k in r if isinstance(r[k], dict) and "items_per_s" in r[k]]:
            s = r[name]
            ratio = r.get("ratio_vs_torch", {}).get(name)
            cpu_ratio = r.get("cpu_time_ratio_vs_torch", {}).get(name)
            extra = f"  {ratio:.2f}x torch (CPU time {cpu_ratio:.2f}x)" if ratio is not None else ""
            compile_s = r.get(f"{name}_compile_s")
            comp = f"  (compile {compile_s:.1f} s)" if compile_s is not None else ""
            print(
                f"  {name:10s} {s['items_per_s']:10.0f} {unit}  {s['ms_per_step']:8.1f} ms/step "
                f"(min {s['ms_per_step_min']:.0f}, CPU {s['cpu_ms_per_step']:.0f} ms){extra}{comp}"
            )
        if "paired" in r:
            p = r["paired"]
            print(
                f"  paired, {p['contestant']} vs torch alone, {p['repeats']} rounds of {p['steps']} steps: "
                f"{p['ratio_median']:.2f}x torch (quartiles {p['ratio_q1']:.2f}-{p['ratio_q3']:.2f}; "
                f"{p['ours_ms_median']:.1f} vs {p['torch_ms_median']:.1f} ms/step)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter sequences")
    parser.add_argument("--json", type=str, default=None, help="also write the result dict to this file")
    args = parser.parse_args()
    result = run(args.quick)
    _print(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
