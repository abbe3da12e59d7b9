#!/bin/bash
# Step 1 of the GPU recipe (docs/runs/PLAN.md), run here in a new checkout before the first
# `run`: fills the ignored .dev/ that docs/runs/device_cells.sh reads on the device.
# .dev/data: the MNIST sets; .dev/cifar: CIFAR-10's archive in two halves and its SHA-256;
# .dev/whl: the wheels of the two pure-Python dependencies the device's image lacks.
set -euo pipefail
SHARED=${SHARED:-../shared/data}
for d in mnist fashion-mnist cifar-10-subset/cifar-10-python.tar.gz; do
  [ -e "$SHARED/$d" ] || { echo "device_prepare: $SHARED/$d is missing (SHARED=the data root)"; exit 2; }
done
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo /.dev/ >> .git/info/exclude
mkdir -p .dev/data .dev/cifar .dev/whl
cp -r "$SHARED/mnist" "$SHARED/fashion-mnist" .dev/data/
rm -f .dev/cifar/part-*
split -n 2 -a 2 "$SHARED/cifar-10-subset/cifar-10-python.tar.gz" .dev/cifar/part-
(cd "$SHARED/cifar-10-subset" && sha256sum cifar-10-python.tar.gz) > .dev/cifar/SHA256
pip download -q --no-deps --only-binary=:all: -d .dev/whl pooch==1.9.0 platformdirs==4.14.9
du -sh .dev/data .dev/cifar/part-aa .dev/cifar/part-ab .dev/whl
