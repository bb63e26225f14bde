"""Cost of the finite-N theory: ``integrate(..., fluctuations=True)`` against the plain ODE of the
same run, measured side by side (interleaved rounds, CPU time, median ratio and its range), and the
share of each part of the propagation.

Cases: the full committee K = M = 8 (N = 1000, large initial weights, eta = 1, 201 outputs to
alpha = 100) and the published mode setting (N = 30, K = M = 8, p = 3, only Xi trained, eta = 5,
201 outputs to alpha = 100); with ``--sizes``, the full committee at other K = M too.

BLAS: the propagation's matrices are small (d = 100 for K = M = 8) and multi-threaded BLAS only adds
contention; run with OPENBLAS_NUM_THREADS=1 (or the equivalent of your BLAS) on a shared machine.

Run: python benchmarks/bench_fluctuations.py [--repeat 5] [--sizes 4 12 16]
"""
import argparse
import cProfile
import os
import pstats
import time

import numpy as np
from fluctuation_check import published_modes

import onlinemdl as om


def full_case(K=8):
    return om.Student.full(1000, K, seed=2), om.Teacher.random(1000, K, seed=1), 1.0


def mode_case():
    return (*published_modes(30), 5.0)


def cpu(fn):
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def measure(name, student, teacher, eta, alpha, repeat):
    """Print the plain ODE's and ``fluctuations=True``'s CPU times, interleaved, and their ratio."""
    plain = lambda: om.integrate(student, teacher, eta=eta, alpha=alpha)  # noqa: E731
    fluct = lambda: om.integrate(student, teacher, eta=eta, alpha=alpha, fluctuations=True)  # noqa: E731
    plain(), fluct()  # compile / load the kernels outside the timing
    tp, tf = [], []
    for _ in range(repeat):
        tp.append(cpu(plain)[0])
        t, traj = cpu(fluct)
        tf.append(t)
    ratio = np.array(tf) / np.array(tp)
    print(f"{name}: plain ODE {np.median(tp) * 1e3:.0f} ms, fluctuations=True {np.median(tf) * 1e3:.0f} ms, "
          f"ratio {np.median(ratio):.1f} (range {ratio.min():.1f}-{ratio.max():.1f}), "
          f"{traj.params['fluct_nodes']} nodes, state size {traj.cov.shape[1]}")
    return fluct


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="*", default=[],
                    help="also the full committee at these K = M (e.g. 4 12 16: how the cost grows with K)")
    args = ap.parse_args()
    alpha = np.linspace(0, 100, 201)
    print(f"BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    for K in args.sizes:
        measure(f"full K = M = {K}", *full_case(K), alpha, args.repeat)
    for name, make in (("full K = M = 8", full_case), ("modes K = M = 8, p = 3", mode_case)):
        fluct = measure(name, *make(), alpha, args.repeat)
        prof = cProfile.Profile()
        prof.runcall(fluct)
        stats = pstats.Stats(prof)
        total = stats.total_tt
        parts = {"noise covariance V": "noise_covariance", "Jacobians": "jacobian_kernel", "H:Sigma": "rhs_curvature",
                 "finite-N drift": "finite_n_drift", "propagation step": "_step", "bias step": "_bias_step",
                 "moments of eps_g, Q, R": "eps_g_moments", "ODE solve (LSODA)": "solve_ivp"}
        shares = []
        for label, fn in parts.items():
            cum = sum(v[3] for k, v in stats.stats.items() if k[2] == fn)
            shares.append(f"{label} {100 * cum / total:.0f}%")
        print("   shares of the profiled time (parts overlap: the drift calls a Jacobian):", ", ".join(shares))


if __name__ == "__main__":
    main()
