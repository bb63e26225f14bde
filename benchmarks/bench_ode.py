"""ODE speed, printed as ratios measured side by side in one run (medians of repeats).

(i)   one right-hand side, K = M = 8: Numba kernel vs a vectorised NumPy evaluation of the same formulas;
(ii)  K = M = 8 to alpha = 1000: adaptive (default) vs our Euler at step 0.01;
(iii) the published mode-learning run (N = 30, K = M = 8, p = 3, only Xi trained, eta = 5, alpha to 1e5):
      adaptive vs Euler at step 1/N (Euler timed over a shorter span and scaled);
(iv)  one right-hand side against K = M = 8, 16, 32, 64 (its I4 sums grow as K^2 (K + M)^2);
(v)   the Jacobian at K = M = 8 (d = 100): closed form vs forward differences (d + 1 right-hand sides in one
      compiled call) and vs Richardson-extrapolated central differences (4d, the fixed points' old Jacobian).

Run: python benchmarks/bench_ode.py
"""
import time

import numpy as np

import onlinemdl as om
from onlinemdl.ode import OdeSystem


def median_time(fn, repeat=5, number=1, clock=time.perf_counter):
    fn()  # compile / warm up outside the timing
    out = []
    for _ in range(repeat):
        t0 = clock()
        for _ in range(number):
            fn()
        out.append((clock() - t0) / number)
    return float(np.median(out))


def numpy_rhs(Q, R, T, v, vt, eta):
    """Straightforward vectorised NumPy dQ, dR of the full-weight student (erf, no noise)."""
    K = Q.shape[0]
    S = np.block([[Q, R], [R.T, T]])
    c = np.concatenate([v, -vt])
    d = 1 + np.diag(S)
    a, b = np.arange(K), np.arange(K)
    # I3(i, z, k) for z in all fields: (2/pi) (C_zk (1+C_ii) - C_zi C_ik) / ((1+C_ii) sqrt(L3))
    L3 = d[:K, None] * d[None, :] - S[:K, :] ** 2
    I3 = (2 / np.pi) * ((S[None, :, :] * d[:K, None, None]) - S[:K, :, None] * S[:K, None, :]) / (
        d[:K, None, None] * np.sqrt(L3)[:, None, :])  # [i, z, k]
    E_dz = v[:, None] * np.einsum("izk,k->iz", I3, c)  # E[delta_i f_z]
    # I4(i, j, k, l)
    Saa, Sbb = d[a][:, None, None, None], d[b][None, :, None, None]
    Sab = S[np.ix_(a, b)][:, :, None, None]
    Sak, Sbk = S[a][:, None, :, None], S[b][None, :, :, None]
    Sal, Sbl = S[a][:, None, None, :], S[b][None, :, None, :]
    Skk, Sll, Skl = d[None, None, :, None], d[None, None, None, :], S[None, None, :, :]
    L4 = Saa * Sbb - Sab**2
    L0 = L4 * Skl - Sbk * Sbl * Saa - Sak * Sal * Sbb + Sab * Sak * Sbl + Sab * Sal * Sbk
    L1 = L4 * Skk - Sbk**2 * Saa - Sak**2 * Sbb + 2 * Sab * Sak * Sbk
    L2 = L4 * Sll - Sbl**2 * Saa - Sal**2 * Sbb + 2 * Sab * Sal * Sbl
    I4 = 4 / np.pi**2 / np.sqrt(L4) * np.arcsin(L0 / np.sqrt(L1 * L2))
    D = np.outer(v, v) * np.einsum("ijkl,k,l->ij", I4, c, c)
    Xh, Xv = E_dz[:, :K], E_dz[:, K:]
    return -eta * (Xh + Xh.T) + eta**2 * D, -eta * Xv


def rhs_case(K, M=None):
    """(system.rhs, y) of a full-weight student, K hidden units, M = K teacher units, N = 1000."""
    teacher = om.Teacher.orthonormal(1000, M or K, seed=0)
    student = om.Student.full(1000, K, init="small", seed=1, scale=2.0)
    system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
    return system.rhs, system.pack(state)


def rhs_cost(K, repeat=5, clock=time.process_time):
    """CPU seconds of one right-hand side at K = M (median of ``repeat``, each over ~0.05 s)."""
    rhs, y = rhs_case(K)
    rhs(y)
    t0 = clock()
    rhs(y)
    number = max(1, int(0.05 / max(clock() - t0, 1e-7)))
    return [median_time(lambda: rhs(y), repeat=1, number=number, clock=clock) for _ in range(repeat)]


def main():
    K = M = 8
    teacher = om.Teacher.orthonormal(1000, M, seed=0)
    student = om.Student.full(1000, K, init="small", seed=1, scale=2.0)
    system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
    y = system.pack(state)
    op = student.order_parameters(teacher)
    dQ_np, dR_np = numpy_rhs(op["Q"], op["R"], op["T"], student.v, teacher.vt, 1.0)
    d = system.unpack(system.rhs(y))
    assert np.allclose(d["Q"], dQ_np, rtol=1e-9, atol=1e-14) and np.allclose(d["R"], dR_np, rtol=1e-9, atol=1e-14)
    t_nb = median_time(lambda: system.rhs(y), repeat=7, number=200)
    t_np = median_time(lambda: numpy_rhs(op["Q"], op["R"], op["T"], student.v, teacher.vt, 1.0), repeat=7, number=20)
    print(f"(i)   one RHS, K = M = 8:  Numba {t_nb * 1e6:8.1f} us   NumPy {t_np * 1e6:8.1f} us   "
          f"ratio {t_np / t_nb:6.1f}x  (target >= 20x)")

    alpha = np.array([0.0, 1000.0])
    ad = om.integrate(student, teacher, eta=1.0, alpha=alpha)
    eu = om.integrate(student, teacher, eta=1.0, alpha=alpha, method="euler", step=0.01)
    t_ad = median_time(lambda: om.integrate(student, teacher, eta=1.0, alpha=alpha), repeat=3)
    t_eu = median_time(lambda: om.integrate(student, teacher, eta=1.0, alpha=alpha, method="euler", step=0.01),
                       repeat=3)
    print(f"(ii)  K = M = 8 to alpha 1000: adaptive {t_ad:7.3f} s ({ad.nfev} RHS)   Euler(0.01) {t_eu:7.3f} s   "
          f"ratio {t_eu / t_ad:6.1f}x  (target >= 30x)")
    print(f"      final eps_g adaptive {ad.eps_g[-1]:.10e}  Euler {eu.eps_g[-1]:.10e}  "
          f"relative difference {abs(ad.eps_g[-1] / eu.eps_g[-1] - 1):.2e}")

    teacher = om.Teacher.modes(30, 8, seed=0)
    student = om.Student.from_teacher_modes(teacher, seed=1)
    t_ad = median_time(lambda: om.integrate(student, teacher, eta=5.0, alpha_max=1e5), repeat=3)
    ad = om.integrate(student, teacher, eta=5.0, alpha_max=1e5)
    span = 1e3
    t_eu = median_time(lambda: om.integrate(student, teacher, eta=5.0, alpha=[0, span], method="euler"), repeat=3)
    t_eu_full = t_eu * 1e5 / span
    print(f"(iii) published mode run to alpha 1e5: adaptive {t_ad:7.3f} s ({ad.nfev} RHS, final eps_g "
          f"{ad.eps_g[-1]:.3e})   Euler(1/N) {t_eu_full:7.1f} s (timed to alpha {span:g}, scaled x{1e5 / span:g})   "
          f"ratio {t_eu_full / t_ad:6.0f}x  (target >= 200x)")

    costs = {K: float(np.median(rhs_cost(K, repeat=3))) for K in (8, 16, 32, 64)}
    print("(iv)  one RHS (CPU time): " + "   ".join(f"K = M = {K}: {1e3 * t:8.3f} ms" for K, t in costs.items())
          + f"   growth exponent 32 -> 64: {np.log2(costs[64] / costs[32]):.2f}")
    jacobian_cost()


def jacobian_cost():
    """(v): the closed-form Jacobian against finite differences, K = M = 8."""
    student, teacher = om.Student.full(1000, 8, seed=2), om.Teacher.random(1000, 8, seed=1)
    system, state = OdeSystem.from_networks(student, teacher, eta=1.0)
    y = system.pack(state)
    exact, fd1, fd4 = (median_time(lambda o=o: system.jacobian(y, order=o), repeat=7, number=5) for o in (None, 1, 4))
    diff = np.abs(system.jacobian(y) - system.jacobian(y, order=4)).max() / np.abs(system.jacobian(y)).max()
    print(f"(v)   Jacobian, K = M = 8 (d = {y.size}): closed form {exact * 1e3:6.2f} ms   forward differences "
          f"{fd1 * 1e3:6.2f} ms (ratio {fd1 / exact:4.1f}x)   order 4 {fd4 * 1e3:6.2f} ms (ratio {fd4 / exact:4.1f}x);   "
          f"closed form - order 4: {diff:.1e} of the largest entry")


if __name__ == "__main__":
    main()
