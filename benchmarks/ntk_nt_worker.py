"""neural-tangents side of benchmarks/ntk_generic.py; runs in its own venv (/work/nt-venv).

Usage: ``python ntk_nt_worker.py IMPLEMENTATION PROBLEM.npz REPEATS OUT.npy``; prints one JSON
line: first-call seconds (with jit compilation), median seconds after it, peak RSS in GB.
"""

import json
import os
import resource
import statistics
import sys
import time

if os.environ.get("OMP_NUM_THREADS") == "1":  # one thread, as torch's side
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                          "intra_op_parallelism_threads=1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    implementation, problem, repeats, out = sys.argv[1:]
    data = np.load(problem)
    x, w, a = (jnp.asarray(data[k]) for k in ("x", "w", "a"))
    m = a.shape[0]

    def f(params, x):
        return jax.nn.relu(x @ params.T) @ a / jnp.sqrt(m)

    kernel_fn = jax.jit(nt.empirical_ntk_fn(
        f, trace_axes=(-1,), vmap_axes=0,
        implementation=getattr(nt.NtkImplementation, implementation)))
    t0 = time.perf_counter()
    k = kernel_fn(x, None, w).block_until_ready()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(int(repeats) - 1):
        t0, c0 = time.perf_counter(), time.process_time()
        k = kernel_fn(x, None, w).block_until_ready()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    np.save(out, np.asarray(k))  # trace_axes averages over the traced output axis, as ours
    print(json.dumps({"first_s": first, "seconds": statistics.median(times) if times else first,
                      "cpu_s": statistics.median(cpu) if cpu else None,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


if __name__ == "__main__":
    main()
