#!/usr/bin/env bash
# The prepared GPU check: one call of the `device` tool on a lent GPU machine, at most about 7 minutes
# (each part has a time limit). A session has 15 minutes of device time, the machine's start included: one
# whole run, and a second try if the first stops early.
#
# Here, once (downloads the pure-Python packages that machine lacks into .whl/, which git ignores):
#     make device-wheels
# Then, with the device tool (the parts take at most 45 + 260 + 90 s, plus about 20 s of starts):
#     run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=450)
# What comes back under $OUT:
#     versions.txt       jax, flax, the devices, nvidia-smi
#     tests.txt          the env's core tests (determinism, tile accounting, rendering, resets), on the GPU
#     paper_costs.json   each stage of carracing-paper timed at its own sizes, and the preset's projected hours
#                        (benchmarks/bench_paper_costs.py; rows are written as they are measured)
#     carracing_env.txt  our CarRacing's steps/s, pixels included, at 1,024 and 16,384 parallel envs
#     log.txt            everything printed
# Each part has its own time limit, so one that hangs or fails leaves the others' figures.
# Off a GPU machine (to try the script on a CPU, the `tiny` preset at toy sizes):
#     DEVICE_CHECK_SIZE=toy DEVICE_CHECK_PYTHON=.venv/bin/python bash benchmarks/device_check.sh
set -u
OUT=${OUT:-/tmp/device_check}
SIZE=${DEVICE_CHECK_SIZE:-full}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
step() { echo "== $(date -u +%H:%M:%S) $*"; }

if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  step "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "the carried wheels did not install"; exit 2; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
PY=${DEVICE_CHECK_PYTHON:-python3}

step "versions"
{
  "$PY" -c "import importlib.metadata as m, jax, evosax, gymnax, tyro; \
print(*(f'{p} {m.version(p)}' for p in ('jax', 'jaxlib', 'flax', 'optax', 'chex', 'orbax-checkpoint', 'evosax', 'gymnax'))); \
print(jax.default_backend(), jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
} | tee "$OUT/versions.txt"

if [ "$SIZE" = toy ]; then PRESET=tiny ENVS="1 16"; else PRESET=carracing-paper ENVS="1024 16384"; fi

step "the env's core tests"
WMJ_SUITE_XLA_FLAGS=0 timeout 45 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" tests/test_carracing.py \
  -k "determinism or tile_accounting or golden or vmapped_step or playfield or truncation" > "$OUT/tests.txt" 2>&1
echo "pytest exit $? (124: cut at 45 s)"; tail -n 25 "$OUT/tests.txt"

step "$PRESET stage costs, size $SIZE"
timeout 260 "$PY" benchmarks/bench_paper_costs.py --preset "$PRESET" --size "$SIZE" --out "$OUT/paper_costs.json"
echo "bench_paper_costs exit $? (124: cut at 260 s; paper_costs.json holds the rows measured)"

step "CarRacing env steps/s"
timeout 90 "$PY" benchmarks/bench_carracing_env.py --quick --sizes $ENVS > "$OUT/carracing_env.txt" 2>&1
echo "bench_carracing_env exit $? (124: cut at 90 s)"; tail -n 8 "$OUT/carracing_env.txt"
step "done"
