"""This machine's fp32 matmul peak: `jnp.dot` of two n×n matrices, in FLOP/s (2·n³ per product).

The "physical limit" other benchmarks quote a fraction of. Each size is compiled once (reported separately),
warmed up, then timed `repeats` times with `block_until_ready`; the figure is the median. The peak is the best
size's median.

    .venv/bin/python benchmarks/bench_matmul_peak.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def matmul_flops(n: int, repeats: int = 5, products: int | None = None) -> dict:
    """Median FLOP/s of an n×n fp32 matmul; each timed call chains `products` products to amortise dispatch."""
    products = products or max(1, min(8, (2048 // n) ** 3))
    ka, kb = jax.random.split(jax.random.PRNGKey(n))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32) / jnp.sqrt(n)

    @jax.jit
    def chain(a, b):
        def body(x, _):
            return jnp.dot(x, b, preferred_element_type=jnp.float32), None

        return jax.lax.scan(body, a, None, length=products)[0]

    start = time.perf_counter()
    jax.block_until_ready(chain(a, b))
    compile_s = time.perf_counter() - start
    jax.block_until_ready(chain(a, b))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(chain(a, b))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"n": n, "flop_per_s": 2.0 * n**3 * products / median, "seconds_per_call": median,
            "products_per_call": products, "compile_s": compile_s, "all_seconds": times}


def run(quick: bool = False, toy: bool = False) -> dict:
    sizes = (128, 256) if toy else ((1024, 2048) if quick else (1024, 2048, 4096))
    repeats = 2 if toy else (3 if quick else 5)
    rows = [matmul_flops(n, repeats) for n in sizes]
    for row in rows:
        print(f"matmul n={row['n']:5d}: {row['flop_per_s'] / 1e9:7.1f} GFLOP/s (compile {row['compile_s']:.2f}s)",
              flush=True)
    best = max(rows, key=lambda r: r["flop_per_s"])
    return {"benchmark": "matmul_peak", "quick": quick, "toy": toy, "device": str(jax.devices()[0]),
            "jax": jax.__version__, "sizes": rows, "peak_flop_per_s": best["flop_per_s"], "peak_n": best["n"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))
