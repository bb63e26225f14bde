"""The finite-N theory against the exact Gram chain, case by case: the measured / predicted standard
deviations of eps_g, Q and R across replicas, and the predicted bias of eps_g against the measured gap
(SGD mean minus ODE), at every output time where the expansion is declared valid
(:func:`onlinemdl.analysis.check_fluctuations`). Prints one Markdown row per case
(theory/finite_size.md section 8).

Run: python benchmarks/fluctuation_check.py [--quick] [--threads 2] [--match LABEL] [--N 30 100]
(about 5 CPU minutes; --quick: N <= 1000 and 300 replicas;
--match, --N: only some cases).
"""
import argparse
import time

import numpy as np

import onlinemdl as om
from onlinemdl.analysis import check_fluctuations
from onlinemdl.model import mode_scale


def classic(K, N, init="large"):
    if init == "small":
        return (om.Student.full(N, K, seed=1, init="small", v=np.ones(K)),
                om.Teacher.orthonormal(N, K, seed=0, vt=np.ones(K)))
    return om.Student.full(N, K, seed=1), om.Teacher.random(N, K, seed=0)


def noisy(N):
    return (om.Student.full(N, 2, seed=1, weight_decay=0.1, batch=2, train=("w", "v")),
            om.Teacher.random(N, 2, seed=0, sigma=0.3))


def published_modes(N):
    """The paper's on-line setting (K = M = 8, p = 3, only Xi trained), its factors fixed at N = 30."""
    scale = mode_scale(30)
    rng = np.random.default_rng(0)
    A, lam = scale * rng.standard_normal((8, 3)), scale * rng.standard_normal(3)
    Xi_t, Xi = scale * rng.standard_normal((N, 3)), scale * rng.standard_normal((N, 3))
    teacher = om.Teacher((A * lam) @ Xi_t.T, A=A, lam=lam, Xi=Xi_t)
    return om.Student(A=A.copy(), lam=lam.copy(), Xi=Xi, train=("xi",), v=teacher.vt.copy()), teacher


CASES = [  # label, eta, networks(N), Ns, alpha (at N = 10^4 only alpha <= 5)
    ("K = M = 2, large init", 1.0, lambda N: classic(2, N), (30, 100, 1000, 10_000), [0, 0.5, 1, 2, 5, 10, 20]),
    ("K = M = 3, large init", 1.0, lambda N: classic(3, N), (30, 100, 1000, 10_000), [0, 0.5, 1, 2, 5, 10]),
    ("K = M = 2, small init, onto the plateau", 1.0, lambda N: classic(2, N, "small"), (30, 100, 1000, 10_000),
     [0, 1, 2, 5, 10, 20]),
    ("K = M = 3, small init, onto the plateau", 1.0, lambda N: classic(3, N, "small"), (30, 100, 1000, 10_000),
     [0, 1, 2, 5, 10, 20]),
    ("K = M = 2, sigma 0.3, decay 0.1, batch 2, trained v, eta = 1.5", 1.5, noisy, (50, 1000), [0, 0.5, 1, 2, 5, 10]),
    ("published mode setting (K = M = 8, p = 3, Xi only, eta = 5)", 5.0, published_modes, (30, 100, 1000, 10_000),
     [0, 0.5, 1, 2, 5, 10]),
    ("K = M = 2, large init, eta = 4 (bias many s.e.)", 4.0, lambda N: classic(2, N), (50,), [0, 2, 5, 10, 20, 50]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--match", default="", help="only the cases whose label contains this")
    ap.add_argument("--N", type=int, nargs="+", default=None, help="only these N")
    args = ap.parse_args()
    print("| case | N | replicas | times | sd ratio eps_g | sd ratio Q | sd ratio R | max abs(gap - bias) / s.e. "
          "| max abs(gap) / s.e. |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for label, eta, networks, Ns, alpha in CASES:
        for N in Ns:
            if (args.quick and N > 1000) or args.match not in label or (args.N and N not in args.N):
                continue
            replicas = 300 if args.quick else (3000 if eta == 4.0 else 1000)
            times = [a for a in alpha if a <= 5] if N >= 10_000 else alpha  # 10^4 steps per unit alpha
            student, teacher = networks(N)
            t0 = time.process_time()
            theory = om.integrate(student, teacher, eta=eta, alpha=times, fluctuations=True)
            t_theory = time.process_time() - t0
            valid = int(np.sum((theory.alpha > 0) & (theory.alpha < theory.fluct_valid_until)))
            if not valid:
                print(f"| {label} | {N} | - | 0 of {len(times) - 1} (valid until alpha = {theory.fluct_valid_until:.2g}) "
                      "| - | - | - | - | - |", flush=True)
                continue
            sim = om.simulate(student, teacher, eta=eta, alpha=theory.alpha, replicas=replicas, seed=N,
                              threads=args.threads)
            c = check_fluctuations(theory, sim)
            r = {k: f"{np.nanmin(v):.3f}-{np.nanmax(v):.3f}" for k, v in c.sd_ratio.items()}
            print(f"| {label} | {N} | {replicas} | {c.alpha.size} of {len(times) - 1} (alpha <= {times[-1]:g}) | "
                  f"{r['eps_g']} | {r['Q']} | {r['R']} | {np.max(np.abs(c.z)):.1f} | "
                  f"{np.max(np.abs(c.gap / c.se)):.1f} |  <!-- theory {t_theory:.1f} s CPU -->", flush=True)


if __name__ == "__main__":
    main()
