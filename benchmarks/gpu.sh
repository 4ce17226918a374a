#!/usr/bin/env bash
# The GPU rows of benchmarks/README.md (issue 17) in one run: ResNet-18's
# PGD-10 adversarial-training step at batch 128, float32 and bfloat16,
# through awt (benchmarks/train_step.py) and through PyTorch eager, eager
# with channels-last, torch.compile with CUDA graphs (mode reduce-overhead)
# and plain torch.compile (benchmarks/peers/torch_pgd_at.py; bfloat16 is
# autocast there), each with its device's matmul rate in the
# compute dtype (--peak), then the table (benchmarks/step_table.py); last,
# if the budget allows, the tests of awt._nt, the bounded attacks and the
# training step on the GPU's JAX (pytest, $OUT/pytest.txt).
#
#   bash benchmarks/gpu.sh      # JSON lines and the table under $OUT
#   MODEL=mlp BATCH=8 DEVICE=cpu REPEATS=2 bash benchmarks/gpu.sh  # smoke run
#   PEERS="eager_cl graphs_cl" TESTS=0 bash benchmarks/gpu.sh  # a shorter rerun
#
# Sized for a lent GPU with minutes to spare: each command has a time limit,
# none starts whose limit would end after BUDGET seconds (default 540), and
# the most wanted run first, so that what finished comes back even when the
# rest is skipped. Packages the GPU's Python lacks (ml_collections on
# the project's H200 image; neural-tangents and frozendict for the tests)
# are installed from wheels in .whl/ when that folder exists; fetch them on
# a machine with an index, in the repo root (all three are pure Python):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     ml_collections==1.1.0 neural-tangents==0.6.5 frozendict==2.5.1
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/awt_gpu}
BUDGET=${BUDGET:-540}
REPEATS=${REPEATS:-20}
MODEL=${MODEL:-resnet18}
BATCH=${BATCH:-128}
DEVICE=${DEVICE:-cuda}
# The PyTorch configurations to run, in this order (a rerun may want fewer):
# eager, eager + channels-last, CUDA graphs (reduce-overhead) + channels-last,
# torch.compile + channels-last, torch.compile.
ALL_PEERS="eager eager_cl graphs_cl compile_cl compile"
PEERS=${PEERS:-$ALL_PEERS}
TESTS=${TESTS:-1}  # 0 skips the GPU pytest run at the end
in_list() { [[ " $1 " == *" $2 "* ]]; }  # in_list "A B C" B: is B a word of the list?
for peer in $PEERS; do
  in_list "$ALL_PEERS" "$peer" ||
    { echo "gpu.sh: unknown PEERS entry '$peer' ($ALL_PEERS)" >&2; exit 2; }
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/awt_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/awt_site${PYTHONPATH:+:$PYTHONPATH}
fi

{
  echo "date: $(date -u '+%F %T') UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv,noheader || echo "nvidia-smi failed"
  echo "nproc: $(nproc)"
  "$PY" -c 'import sys, jax; print("python", sys.version.split()[0], "jax", jax.__version__, jax.devices())'
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
} >"$OUT/machine.txt" 2>&1

start=$SECONDS
run() {  # run LIMIT NAME MODULE ARGS...: one command's JSON line, if in budget.
  local limit=$1 name=$2
  shift 2
  if ((SECONDS - start + limit > BUDGET)); then
    echo "$(date +%T) skipped (budget): $*" >>"$OUT/log.txt"
    return
  fi
  echo "$(date +%T) $*" >>"$OUT/log.txt"
  timeout "$limit" "$PY" -m "$@" >>"$OUT/$name.jsonl" 2>>"$OUT/log.txt" ||
    echo "$(date +%T) failed or timed out ($limit s): $*" >>"$OUT/log.txt"
}

common=(--model="$MODEL" --batch="$BATCH" --steps=10 --repeats="$REPEATS" --peak)
torch=(benchmarks.peers.torch_pgd_at "${common[@]}" --device="$DEVICE" --cudnn_benchmark)
wants() { in_list "$PEERS" "$1"; }  # wants NAME: is NAME in PEERS?
for dtype in bfloat16 float32; do
  run 200 steps benchmarks.train_step "${common[@]}" --dtype=$dtype
  wants eager && run 90 steps "${torch[@]}" --dtype=$dtype
  wants eager_cl && run 90 steps "${torch[@]}" --dtype=$dtype --channels_last
done
for dtype in bfloat16 float32; do
  wants graphs_cl && run 180 steps "${torch[@]}" --dtype=$dtype --channels_last \
    --compile_mode=reduce-overhead
done
for dtype in bfloat16 float32; do
  wants compile_cl && run 180 steps "${torch[@]}" --dtype=$dtype --channels_last --compile
done
wants compile && run 180 steps "${torch[@]}" --dtype=bfloat16 --compile

"$PY" -m benchmarks.step_table "$OUT/steps.jsonl" >"$OUT/table.md" 2>>"$OUT/log.txt"
if ((TESTS)) && ((SECONDS - start + 150 <= BUDGET)); then
  echo "$(date +%T) pytest on the GPU's JAX" >>"$OUT/log.txt"
  # Four processes share one GPU: no preallocation. Float32 products at full
  # precision, as on a CPU (a GPU's default may be TF32), so that the tests'
  # tolerances mean what they mean there. The pmap test wants 4 devices.
  XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest \
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider -n 4 -m "not slow" \
    -k "not four_devices_equal_one_device" \
    tests/test_nt.py tests/test_attacks_bounded.py tests/test_training.py \
    >"$OUT/pytest.txt" 2>&1 || echo "$(date +%T) pytest failed or timed out" >>"$OUT/log.txt"
  tail -n 15 "$OUT/pytest.txt"
fi
cat "$OUT/table.md" "$OUT/log.txt"
echo "done in $((SECONDS - start)) s"
