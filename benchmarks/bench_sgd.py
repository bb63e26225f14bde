"""SGD engine speed, printed as ratios measured side by side in one run (medians of repeats).

For N = 1000, K = M = 8 full weights and for the mode student (p = 7, only Xi trained):
steps per second of a plain per-sample NumPy loop, the explicit engine on one core and on
all cores (one replica per core), the gram engine, and the cost floor (drawing the N
Gaussian inputs alone with a numpy.random.Generator inside Numba). Then the gram engine's
cost against N, and the published on-line run end to end (4 replicas of 3e6 steps + ODE).

Run: python benchmarks/bench_sgd.py
"""
import os
import time

import numpy as np
from numba import njit

import onlinemdl as om


@njit(cache=True)
def draw_floor(rng, N, steps):
    acc = 0.0
    for _ in range(steps):
        for _ in range(N):
            acc += rng.standard_normal()
    return acc


def numpy_loop(student, teacher, eta, steps, rng):
    """The per-sample NumPy loop a researcher writes first (full or Xi-only mode student, erf)."""
    from scipy.special import erf
    N = student.N
    B, vt, v = teacher.B, teacher.vt, student.v
    modes = student.is_modes
    W = (student.Xi.T if modes else student.W).copy()
    C = student.A * student.lam if modes else np.eye(student.K)
    for _ in range(steps):
        x = rng.standard_normal(N)
        s = W @ x / np.sqrt(N)
        h = C @ s
        u = B @ x / np.sqrt(N)
        err = v @ erf(h / np.sqrt(2)) - vt @ erf(u / np.sqrt(2))
        delta = v * np.sqrt(2 / np.pi) * np.exp(-h**2 / 2) * err
        W -= eta * np.outer(C.T @ delta, x) / np.sqrt(N)
    return W


def median(fn, repeat=3):
    fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def rates(label, student, teacher, eta, cores):
    N = student.N
    steps = 20_000
    alpha = [0.0, steps / N]
    rng = np.random.default_rng(0)
    t_np = median(lambda: numpy_loop(student, teacher, eta, 2000, rng)) / 2000
    t_floor = median(lambda: draw_floor(rng, N, steps)) / steps
    t_one = median(lambda: om.simulate(student, teacher, eta=eta, alpha=alpha, replicas=1, threads=1)) / steps
    t_all = median(lambda: om.simulate(student, teacher, eta=eta, alpha=alpha, replicas=cores, threads=cores)) / (
        steps * cores)
    t_gram = median(lambda: om.simulate(student, teacher, eta=eta, alpha=[0.0, 10 * steps / N], replicas=1,
                                        method="gram")) / (10 * steps)
    print(f"{label}")
    print(f"  numpy loop      {1 / t_np:12,.0f} steps/s")
    print(f"  floor (draws)   {1 / t_floor:12,.0f} steps/s")
    print(f"  explicit 1 core {1 / t_one:12,.0f} steps/s   {t_np / t_one:5.1f}x numpy (target >= 3)   "
          f"{t_one / t_floor:4.2f}x floor cost (target <= 2)")
    print(f"  explicit {cores} cores{1 / t_all:12,.0f} steps/s   {t_one / t_all:5.2f}x one core = "
          f"{t_one / t_all / cores:4.2f} x cores (target >= 0.85)")
    print(f"  gram            {1 / t_gram:12,.0f} steps/s   {t_np / t_gram:5.1f}x numpy (target >= 30)")


def main():
    cores = os.cpu_count()
    print(f"cores: {cores}")
    N = 1000
    teacher = om.Teacher.orthonormal(N, 8, seed=0)
    rates("full weights, N = 1000, K = M = 8", om.Student.full(N, 8, seed=1), teacher, 1.0, cores)
    mteacher = om.Teacher.modes(N, 8, p=7, seed=0)
    rates("mode student, N = 1000, K = M = 8, p = 7, Xi trained", om.Student.from_teacher_modes(mteacher, seed=1),
          mteacher, 1.0, cores)

    print("gram engine against N (K = M = 8 full weights, 2e5 steps):")
    base = None
    for N in (100, 1000, 10_000, 100_000, 1_000_000):
        t = om.Teacher.random(N, 8, seed=0)
        s = om.Student.full(N, 8, init="small", seed=1)
        dt = median(lambda: om.simulate(s, t, eta=1.0, alpha=[0.0, 2e5 / N], method="gram")) / 2e5
        base = base or dt
        print(f"  N = {N:>9,}: {1 / dt:12,.0f} steps/s   cost relative to N = 100: {dt / base:4.2f}")

    teacher = om.Teacher.modes(30, 8, seed=0)
    student = om.Student.from_teacher_modes(teacher, seed=1)
    t0 = time.perf_counter()
    om.integrate(student, teacher, eta=5.0, alpha_max=1e5)
    sim = om.simulate(student, teacher, eta=5.0, alpha_max=1e5, replicas=4, seed=0, method="explicit")
    wall = time.perf_counter() - t0
    print(f"published on-line run (N = 30, K = M = 8, p = 3, eta = 5, 4 replicas x {int(sim.steps[-1]):,} steps "
          f"+ ODE, explicit engine): {wall:.1f} s (target < 60 s; reference code ~1.5 h)")


if __name__ == "__main__":
    main()
