#!/bin/bash
# Cells of docs/runs/paper on a lent GPU (docs/runs/PLAN.md). JOBS (a file, default
# docs/runs/device_jobs/mnist.txt): one process per line, "NAME EXPERIMENT PATTERN
# [EXPERIMENT PATTERN …]", whose cells run in that order in /tmp/o/NAME (one network cache per
# line); at most PROCS lines at once; a cell starts only before DEADLINE (BUDGET seconds from the
# start). Committed cells are copied in first, so they do not run again. Every finished cell
# JSON and the logs come back as $OUT/cells.tgz (snapshotted every 30 s).
# Data: .dev/data (carried) holds the MNIST sets and .dev/whl the wheels of pooch and
# platformdirs. CIFAR-10's 82 MB cannot travel in one call beside the 19 MB of tracked files
# (64 MiB a call), so it takes two: `STAGE=1 bash docs/runs/device_cells.sh` with carry
# [".dev/cifar/part-aa"] leaves that half in the machine's /tmp; the next call, within the 30 s
# the machine stays warm, carries .dev/cifar/part-ab, .dev/cifar/SHA256 and .dev/whl, and this
# script assembles and checks the archive (made here by `split -n 2 -a 2`, docs/runs/PLAN.md).
# A later call while the machine is warm finds /tmp/o, /tmp/data (CIFAR-10 included) and
# /tmp/site as the earlier call left them: it may carry .dev/data and .dev/whl for MNIST jobs and
# still read CIFAR-10, and its cells.tgz holds every call's cells (session q, docs/runs/PLAN.md).
# A cell cut at the deadline leaves its trainings' states in /tmp/o/NAME/cache/partial/ (saved
# at most a minute apart): the same JOBS in a later call while the machine is warm go on from
# them instead of starting the cell over (session t).
ROOT=$PWD; T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET:-480}))
if [ "${STAGE:-}" = 1 ]; then
  mkdir -p /tmp/stage && cp .dev/cifar/part-aa /tmp/stage/ && ls -l /tmp/stage; exit
fi
PY=${PY:-python3}; DEV=${DEV:-cuda}; PROCS=${PROCS:-15}
JOBS=${JOBS:-docs/runs/device_jobs/mnist.txt}
if [ -z "${NOPIP:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .dev/whl/*.whl || exit 1
fi
D=${DATA:-/tmp/data}; mkdir -p $D
for d in .dev/data/*; do [ -e "$d" ] && ln -sfn $ROOT/$d $D/; done
if [ -f .dev/cifar/part-ab ]; then
  mkdir -p $D/cifar-10-subset
  cat /tmp/stage/part-aa .dev/cifar/part-ab > $D/cifar-10-subset/cifar-10-python.tar.gz
  (cd $D/cifar-10-subset && sha256sum -c $ROOT/.dev/cifar/SHA256) || {
    echo "CIFAR-10: the two parts do not make the archive (the machine changed between calls?)"
    exit 3; }
fi
export PYTHONPATH=$ROOT/src:/tmp/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MALLEABILITY_DATA=$D
O=${O:-/tmp/o}; L=$O/logs; mkdir -p $L
nvidia-smi > $L/nvidia-smi.txt 2>&1
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available())" > $L/torch.txt 2>&1
( MALLEABILITY_TEST_DEVICE=$DEV timeout 150 $PY -m pytest -q -p no:cacheprovider \
    tests/test_device.py > $L/test_device.txt 2>&1; echo "rc=$?" >> $L/test_device.txt ) &
R() {  # out-folder log experiment pattern
  local left=$((DEADLINE - $(date +%s)))
  [ $left -gt 15 ] || { echo "skip $3 $4" >> $2; return; }
  echo "$(date +%s) start $3 $4" >> $2
  timeout $left $PY -m malleability.cli reproduce --preset paper --out $1 --only $3 \
    --cells "$4" --device $DEV --threads 1 --quiet >> $2 2>&1
  local rc=$?
  echo "$(date +%s) end rc=$rc $3 $4" >> $2
}
W() {  # NAME EXPERIMENT PATTERN [EXPERIMENT PATTERN …]
  set +f
  local o=$O/$1 log=$L/$1.log i; shift
  local args=("$@")
  mkdir -p $o; cp docs/runs/paper/settings.json $o/
  for ((i = 0; i < ${#args[@]}; i += 2)); do
    mkdir -p $o/${args[i]}; cp docs/runs/paper/${args[i]}/${args[i+1]}.json $o/${args[i]}/ 2>/dev/null
  done
  for ((i = 0; i < ${#args[@]}; i += 2)); do R $o $log ${args[i]} "${args[i+1]}"; done
}
SNAP() { (cd $O && find . -path './*/*/*.json' -not -name settings.json \
    -not -path '*/cache/*' > files.txt
  tar czf ${OUT:-/tmp}/.cells.tgz -T files.txt logs && mv ${OUT:-/tmp}/.cells.tgz ${OUT:-/tmp}/cells.tgz); }
( while sleep 30; do SNAP; done ) & SNAPPER=$!
running=0
while read -r line; do
  case "$line" in ""|"#"*) continue ;; esac
  set -f; W $line & set +f
  running=$((running + 1))
  if [ $running -ge $PROCS ]; then wait -n; running=$((running - 1)); fi
done < $JOBS
wait $(jobs -p | grep -v "^$SNAPPER$")
kill $SNAPPER
nvidia-smi >> $L/nvidia-smi.txt 2>&1
SNAP
cd $O && echo "cells: $(grep -c . files.txt) in $(( $(date +%s) - T0 )) s"
grep -h "end rc" logs/*.log | cut -d" " -f3- | sort | uniq -c
tail -3 logs/test_device.txt
cat logs/torch.txt; head -12 logs/nvidia-smi.txt | tail -4
