#!/usr/bin/env bash
# Re-runs the measurements of benchmarks/README.md (PGD-AT steps, the
# PyTorch comparison, ticket costs, profiles). JSON lines go to
# $OUT/<name>.jsonl and every command is logged with the load average.
#
#   pip install -e '.[bench]'          # torch 2.13.0 (CPU wheel from PyPI)
#   bash benchmarks/run_all.sh         # everything, ~1.5 h on 2 idle cores
#   QUICK=1 bash benchmarks/run_all.sh # fewer pairs/repeats, no resnet18
#
# Run it on an otherwise idle machine: the ratios only count when nothing
# else competes for the cores (benchmarks/README.md, "awt against PyTorch").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/awt_bench}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
if [[ "$QUICK" == 1 ]]; then PAIRS=3; REPEATS=3; else PAIRS=5; REPEATS=10; fi

run() {  # run NAME ARGS...: appends the JSON lines of one command.
  local name=$1
  shift
  echo "$(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg): $*" >&2
  "$PY" -m "$@" >>"$OUT/$name.jsonl"
}

{
  echo "date: $(date -u +%F)"
  echo "uptime: $(uptime)"
  echo "nproc: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo || true
  "$PY" -c 'import sys, jax, jaxlib; print("python", sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__)'
  "$PY" -c 'import torch; print("torch", torch.__version__)' || echo "torch missing"
} >"$OUT/machine.txt"

# 1. awt's PGD-10 training step, fp32 and bf16, single steps and scanned.
for model in mlp lenet5 conv4; do
  reps=$REPEATS
  [[ $model == conv4 ]] && reps=3
  run train_step benchmarks.train_step --model=$model --repeats=$reps
  run train_step benchmarks.train_step --model=$model --repeats=$reps --dtype=bfloat16
done
run train_step benchmarks.train_step --model=mlp --repeats=$REPEATS --scan_length=10
if [[ "$QUICK" != 1 ]]; then
  # ResNet-18 at batch 128 takes minutes per step on 2 CPU cores.
  run train_step benchmarks.train_step --model=resnet18 --batch=16 --repeats=2
fi

# 2. The PyTorch peers on their own (eager and torch.compile).
for model in mlp lenet5 conv4; do
  reps=$REPEATS
  [[ $model == conv4 ]] && reps=3
  run torch_pgd_at benchmarks.peers.torch_pgd_at --model=$model --repeats=$reps
  run torch_pgd_at benchmarks.peers.torch_pgd_at --model=$model --repeats=$reps --compile
done
for model in mlp lenet5; do
  run torch_attacks benchmarks.peers.torch_attacks --model=$model
  run torch_attacks benchmarks.peers.torch_attacks --model=$model --compile
done

# 3. The targets: ours/peer ratios, timed alternately in one invocation.
#    Torch's OpenMP threads spin-wait by default; on a machine shared with
#    other jobs that costs torch up to 10x, so the comparison is run with
#    the default and with OMP_WAIT_POLICY=PASSIVE (torch's best there).
OMP_WAIT_POLICY=PASSIVE run compare benchmarks.compare --pairs=$PAIRS
run compare benchmarks.compare --pairs=$PAIRS \
  --tasks=train_step:mlp,train_step:lenet5,pgd_eval:mlp,pgd_eval:lenet5
#    The GEMM and convolution rates behind the ratios, layer by layer.
run matmul benchmarks.matmul

# 4. Cost of finding a 95%-sparse ticket on digits_mlp (config defaults).
run ticket_cost benchmarks.ticket_cost

# 5. Where the conv nets' steps go (per-op profiles, JAX and torch), the
#    input-gradient convolution inside a loop, autodiff vs a custom VJP, and
#    XLA:CPU's convolution libraries (YNNPACK vs Eigen, kernel gradients).
for fw in jax torch; do
  OMP_WAIT_POLICY=PASSIVE run profile_step benchmarks.profile_step \
    --model=lenet5 --framework=$fw
  OMP_WAIT_POLICY=PASSIVE run profile_step benchmarks.profile_step \
    --model=conv4 --framework=$fw --batch=32 --calls=1
done
run conv_grad benchmarks.conv_grad
run conv_backend benchmarks.conv_backend

# 6. Empirical and adversarial NTK: time, memory, the "auto" choice. The
#    n = 5000 MLP kernel takes ~20 min on 2 cores; the larger cells are
#    only compiled (XLA's memory analysis).
run ntk benchmarks.ntk --sizes=100,500 --batch_size=200 --repeats=3 \
  --implementations=jacobian_contraction,ntk_vector_products --models=mlp
run ntk benchmarks.ntk --sizes=100 --batch_size=200 --repeats=3 --models=lenet5
run ntk benchmarks.ntk --sizes=500 --batch_size=200 --repeats=3 --models=lenet5 \
  --implementations=jacobian_contraction
run ntk benchmarks.ntk --sizes=2000,5000 --kinds=empirical --batch_size=200 --noexecute
if [[ "$QUICK" != 1 ]]; then
  run ntk benchmarks.ntk --models=mlp --sizes=1000 --kinds=empirical --batch_size=200
  run ntk benchmarks.ntk --models=mlp --sizes=5000 --kinds=empirical \
    --implementations=ntk_vector_products --batch_size=200
fi
echo "$(date +%T) done: $OUT" >&2
