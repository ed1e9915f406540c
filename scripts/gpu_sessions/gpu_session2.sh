#!/usr/bin/env bash
# Second GPU session (after the speed fixes and the lr 3e-4 default), same set-up as gpu_sweep.sh, plus
# .devdata/covid-semiseg (a copy of the lesion-mask slices). Throughput on the GPU with the speed
# options, seeds 3 and 4 of the default recipe, the data-efficiency curve at the default recipe,
# and CAM numbers for the seed-3 and seed-4 models.
set -u
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
DATA=$PWD/.devdata/covid-ct
SWEEP=/tmp/sweep2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/machine2.txt"

OMP_NUM_THREADS=8 timeout 130 python3 benchmarks/throughput.py --device cuda --data-root "$DATA" \
  --num-workers 0,4,8 --options --overheads --repeats 2 --data-epochs 2 > "$OUT/bench_gpu2.txt" 2>&1

job() {
  timeout 200 python3 train.py -m hydra.sweep.dir=$SWEEP hydra.callbacks.sweep_report.enabled=false \
    data.root=$DATA trainer.accelerator=gpu ++callbacks.cam=null ++callbacks.step_checkpoint=null \
    callbacks.model_checkpoint.save_last=false "$@" > "/tmp/log2_$(echo "$*" | tr ' =/' '_-_').txt" 2>&1
}
for s in 3 4; do job init=scratch seed=$s & done
for s in 0 1 2; do for f in 0.25 0.5; do job init=scratch data.fraction=$f seed=$s & done; done
wait
python3 -m covidnet.report $SWEEP > "$OUT/report2_log.txt" 2>&1
a=$(ls -d $SWEEP/*seed=3*); b=$(ls -d $SWEEP/*seed=4*)
timeout 150 python3 visualize.py "ckpt=['$(ls $a/checkpoints/*.ckpt)','$(ls $b/checkpoints/*.ckpt)']" data.root=$DATA \
  localize=$PWD/.devdata/covid-semiseg device=cuda out_dir=/tmp/sweep2/cam > "$OUT/visualize_log.txt" 2>&1
tail -n 3 /tmp/log2_*.txt > "$OUT/job_logs_tail2.txt" 2>&1
tar czf "$OUT/sweep2.tgz" --exclude='*.ckpt' -C /tmp sweep2
