#!/bin/bash
# Run on the device machine from the repo root: bash .gpurun/gpu_bench.sh PART...
set -u
cd "$(dirname "$0")"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false BENCH_TORCH_DEVICE=cuda
export TOKENIZERS_PARALLELISM=false
O=${OUT:-/tmp/out}; mkdir -p $O
{ date; git log -1 --format=%h 2>/dev/null; nvidia-smi -L; nproc; python3 -c "import jax, flax, optax, orbax.checkpoint as oc, transformers, torch, trl; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__, 'trl', trl.__version__)"; } 2>&1 | tee $O/env.txt
for part in "$@"; do
  t0=$(date +%s)
  case $part in
    sampler) timeout 70 python3 experiments/bench_sampler.py 2>&1 | grep -v Warning | tee $O/sampler.txt ;;
    step) timeout 120 python3 experiments/bench_train_step.py 2>&1 | grep -v Warning | tee $O/train_step.txt ;;
    iter) timeout 200 python3 experiments/bench_iteration.py --no-hpt --iters 3 --scaling-iters 2 --json $O/iteration.json > $O/iteration.txt 2>&1; tail -30 $O/iteration.txt ;;
    main) (time timeout 190 python3 -m hpt_jax.train --workdir /tmp/mj --set model.config.dtype_policy=bfloat16) > $O/main_job.txt 2>&1; grep -v "^[IW]1" $O/main_job.txt | tail -25; cp /tmp/mj/summary.md $O/main_summary.md; cp /tmp/mj/plots/accuracy.png $O/main_accuracy.png ;;
  esac
  echo "== $part done in $(( $(date +%s) - t0 )) s"
done
