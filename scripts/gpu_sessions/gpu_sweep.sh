#!/usr/bin/env bash
# The GPU session behind docs/results.md: run on a lent GPU machine from the repository root, with
#   .whl/      wheels of the packages that machine lacks (hydra-core, omegaconf, antlr4, grad-cam, ttach)
#   .devdata/  COVID-CT with every image stored as the 224x224 grey PNG that the data module caches
#              (bit-identical tensors to decoding the originals; made by tools/export_cache.py)
# and OUT set to a folder for the results. Jobs run in parallel, one CPU thread each; CAM logging and
# last.ckpt are off (the best checkpoint is still kept, and dropped from what comes back).
set -u
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
DATA=$PWD/.devdata/covid-ct
SWEEP=/tmp/sweep
# nproc --all: plain nproc honours OMP_NUM_THREADS=1 above and printed 1 in the committed machine.txt
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; echo "cpus $(nproc --all)"
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; } > "$OUT/machine.txt" 2>&1

OMP_NUM_THREADS=4 timeout 100 python3 benchmarks/throughput.py --device cuda --data-root "$DATA" > "$OUT/bench_gpu.txt" 2>&1

job() {  # one Hydra job per process, all in one sweep directory
  timeout "${LIMIT:-380}" python3 train.py -m hydra.sweep.dir=$SWEEP hydra.callbacks.sweep_report.enabled=false \
    data.root=$DATA trainer.accelerator=gpu ++callbacks.cam=null ++callbacks.step_checkpoint=null \
    callbacks.model_checkpoint.save_last=false "$@" > "/tmp/log_$(echo "$*" | tr ' =/' '_-_').txt" 2>&1
}
for s in 0 1 2; do
  for lr in 3e-4 1e-3 3e-3; do job init=scratch model.optimizer.lr=$lr seed=$s & done
  # these ran at lr 1e-3, the default when this session ran (now 3e-4): pinned so the script reproduces the committed sweep
  job init=scratch model.optimizer.lr=1e-3 trainer.max_epochs=100 seed=$s &
  for f in 0.25 0.5; do job init=scratch model.optimizer.lr=1e-3 data.fraction=$f seed=$s & done
done
wait
python3 -m covidnet.report $SWEEP > "$OUT/report_log.txt" 2>&1
tail -n 5 /tmp/log_*.txt > "$OUT/job_logs_tail.txt" 2>&1
tar czf "$OUT/sweep.tgz" --exclude='*.ckpt' -C /tmp sweep
