"""Process settings applied before torch loads its OpenMP runtime.

torch's OpenMP threads spin while they wait; when anything else shares the cores, LAPACK calls
with many barriers (eigvalsh, cholesky_inverse) slow down by up to 100× (benchmarks/README.md).
Passive waiting avoids that at no cost on an idle machine; OMP_WAIT_POLICY=ACTIVE overrides.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
