#!/bin/bash
# The lent-GPU run of session o (docs/runs/PLAN.md), kept to be run again: seeds 5-9 of
# flip_rates (MNIST, MNIST 3 vs 8, Fashion-MNIST) and interventions (MNIST, Fashion-MNIST), one
# process per task and seed until DEADLINE (BUDGET seconds), every finished cell JSON and the
# logs back as $OUT/cells.tgz (snapshotted every 30 s). Run from the repository root with .dev/
# (ignored, carried) holding data/mnist, data/fashion-mnist and the wheels of pooch and
# platformdirs: `run` with carry [".dev"] and command `BUDGET=330 bash docs/runs/device_seeds.sh`.
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET:-480}))
PY=${PY:-python3}; DEV=${DEV:-cuda}; SEEDS=${SEEDS:-"5 6 7 8 9"}
if [ -z "$NOPIP" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .dev/whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MALLEABILITY_DATA=$PWD/.dev/data
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
W() {  # task seed
  local o=$O/$1-$2 log=$L/$1-$2.log e
  for e in flip_rates interventions; do  # committed cells are not run again
    mkdir -p $o/$e; cp docs/runs/paper/$e/task=${1}__*__seed=$2.json $o/$e/ 2>/dev/null
  done
  cp docs/runs/paper/settings.json $o/
  R $o $log flip_rates "task=${1}__*__seed=$2"
  [ $1 = mnist-3-8 ] && return
  R $o $log interventions "task=${1}__*__intervention=transformed__seed=$2"
  R $o $log interventions "task=${1}__*__intervention=curated__seed=$2"
}
SNAP() { (cd $O && { find . -path '*/flip_rates/*.json' -o -path '*/interventions/*.json'; } > files.txt
  tar czf ${OUT:-/tmp}/.cells.tgz -T files.txt logs && mv ${OUT:-/tmp}/.cells.tgz ${OUT:-/tmp}/cells.tgz); }
( while sleep 30; do SNAP; done ) & SNAPPER=$!
for s in $SEEDS; do for t in fashion-mnist mnist mnist-3-8; do W $t $s & done; done
wait $(jobs -p | grep -v "^$SNAPPER$")
kill $SNAPPER
nvidia-smi >> $L/nvidia-smi.txt 2>&1
cd $O && find . -path '*/flip_rates/*.json' -o -path '*/interventions/*.json' > files.txt
tar czf ${OUT:-/tmp}/cells.tgz -T files.txt logs
echo "cells: $(grep -c . files.txt) in $(( $(date +%s) - T0 )) s"
grep -h "end rc" logs/*.log | cut -d" " -f3- | sort | uniq -c
tail -3 logs/test_device.txt
cat logs/torch.txt; head -12 logs/nvidia-smi.txt | tail -4
