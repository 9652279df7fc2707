"""The foundation's demo: the whole World Models pipeline on pixel CartPole (what `make demo` runs).

    python experiments/cartpole_pixels.py [--out runs/demo] [--preset cpu-small] [config overrides]

Equivalent to `wmj run --env CartPolePixels-v1 --preset cpu-small --out runs/demo`.
"""

import sys

from worldmodels_jax.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "runs/demo"]
    if "--preset" not in args:
        args += ["--preset", "cpu-small"]
    sys.exit(main(["run", "--env", "CartPolePixels-v1", *args]))
