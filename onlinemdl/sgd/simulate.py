"""The SGD driver: replicas of on-line SGD on threads, assembled into a Trajectory.

Two methods give the same process in distribution:

* ``"explicit"``: N-dimensional weights, one fresh Gaussian input per step; the draw, the
  update and the next forward pass are fused in one pass over the weights.
* ``"gram"``: the exact reduced chain. SGD sees ``x`` only through the fields
  ``f = (u, s)`` (teacher, trained rows) and ``|x|^2``; given a factor ``F`` of the Gram matrix
  ``G = F F^T`` of the teacher and trained rows, ``f = F z``, ``z ~ N(0, I_{K+M})`` and
  ``|x|^2 = |z|^2 + chi^2_{N-K-M}``; each step updates ``F`` in O((K + M)^2), independent of N.

Both treat the full-weight student as the mode student with ``C = A diag(lam) = I``: the
trained N-dimensional vectors are the rows of ``W`` (full) or the columns of ``Xi`` (modes),
with fields ``s``, and the hidden fields are ``h = C s``. Replicas run on threads, each on
its own random stream spawned from ``seed``, so results do not depend on the number of threads.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ..dynamics import Dynamics
from ..gaussian import activation_code, eps_g as _eps_g, joint_covariance
from ..runsetup import check_choice, check_int, divergence_threshold, output_times, record_steps, replica_streams
from ..trajectory import Trajectory
from .kernels import explicit_replica, gram_replica

if TYPE_CHECKING:
    from ..model import Student, Teacher

#: The SGD methods; the default of :func:`simulate`, the scan recipes and the command line.
METHODS = ("gram", "explicit")


def simulate(student: Student, teacher: Teacher, *, eta: float, alpha_max: float | None = None,
             alpha: ArrayLike | None = None, replicas: int = 1, seed: int = 0, method: str = "gram",
             eta_lam: float | None = None, eta_A: float | None = None, eta_v: float | None = None, points: int = 200,
             threads: int | None = None, test_set: int = 0, max_norm: float = 1e2) -> Trajectory:
    """On-line SGD of ``student`` on labels of ``teacher``, replicas in parallel.

    Parameters
    ----------
    eta : learning rate of the N-dimensional weights; ``eta_lam``, ``eta_A``, ``eta_v`` (default
        ``eta``) those of the O(1) factors, applied as ``eta_x / N`` per step.
    alpha_max, alpha : end time with the default log grid (as :func:`onlinemdl.integrate`), or
        the recording times; both are rounded to whole steps, ``alpha = steps / N``.
    replicas : independent runs from the same initial weights, each on its own random stream
        spawned from ``seed`` (an integer >= 0; results do not depend on ``threads``).
    method : "gram" (exact reduced chain, cost independent of N) or "explicit" (N-dimensional
        weights; needed for ``test_set``).
    threads : worker threads (default: all cores).
    test_set : size of a fixed held-out set of Gaussian inputs per replica on which the error is
        also measured (``eps_test``; explicit method only; 0 = none).
    max_norm : a replica is marked diverged once some ``Q_ii`` exceeds ``max_norm`` times its scale.

    Returns
    -------
    Trajectory (kind "sgd") with a leading replica axis on the series when ``replicas > 1``;
    diverged replicas are flagged in ``diverged`` and hold NaN after ``alpha_diverged``.
    """
    dynamics = Dynamics.from_networks(student, teacher, eta=eta, eta_lam=eta_lam, eta_A=eta_A, eta_v=eta_v,
                                      max_norm=max_norm)
    op = student.order_parameters(teacher)
    method = check_choice("method", method, METHODS)
    replicas = check_int("replicas", replicas)
    test_set = check_int("test_set", test_set, 0)
    if test_set and method != "explicit":
        raise ValueError('test_set needs method="explicit"')
    threads = check_int("threads", os.cpu_count() if threads is None else threads)
    streams = replica_streams(seed, replicas)
    N = student.N
    record = record_steps(output_times(alpha, alpha_max, points), N)
    K, M = student.K, teacher.M
    if student.is_modes:
        A0, lam0, W0 = student.A, student.lam, student.Xi.T
    else:
        A0, lam0, W0 = np.eye(K), np.ones(K), student.W
    r = W0.shape[0]
    T = op["T"]
    max_q = divergence_threshold(dynamics.max_norm, T, op["Q"])
    rates, flags = dynamics.pack()
    n_rec = record.size
    if method == "gram":  # Gram matrix of the teacher rows, then the trained rows
        G, S = (op["Rm"], op["S"]) if student.is_modes else (op["Q"], op["R"])
        Gfull = np.ascontiguousarray(joint_covariance(T, S.T, G))
    outs = [(np.full((n_rec, r, r), np.nan), np.full((n_rec, r, M), np.nan), np.full((n_rec, K, r), np.nan),
             np.full((n_rec, r), np.nan), np.full((n_rec, K), np.nan), np.full(n_rec, np.nan))
            for _ in range(replicas)]

    def run(k):
        rng, out = streams[k], outs[k]
        A, lam, v = A0.copy(), lam0.copy(), student.v.copy()
        if method == "explicit":
            Xtest = rng.standard_normal((test_set, N)) if test_set else np.empty((0, N))
            return explicit_replica(np.array(W0, order="C"), teacher.B, A, lam, v, teacher.vt, rates, flags, record,
                                    max_q, Xtest, rng, out)
        return gram_replica(Gfull.copy(), N, A, lam, v, teacher.vt, rates, flags, record, max_q, rng, out)

    t0 = time.perf_counter()
    if threads == 1 or replicas == 1:
        div_steps = [run(k) for k in range(replicas)]
    else:
        with ThreadPoolExecutor(max_workers=min(threads, replicas)) as pool:
            div_steps = list(pool.map(run, range(replicas)))
    wall = time.perf_counter() - t0
    params = dict(N=N, K=K, M=M, p=student.p or 0, form="modes" if student.is_modes else "full",
                  **dynamics.params(), method=method, seed=seed, replicas=replicas, vt=teacher.vt, T=T,
                  wall_time=wall, test_set=test_set, threads=threads)
    return _assemble(student.is_modes, record, outs, div_steps, T, teacher.vt, dynamics, params, test_set)


def _eps_series(G, S, A, lam, v, T, vt, act):
    n = G.shape[0]
    Q = np.empty((n, A.shape[1], A.shape[1]))
    R = np.empty((n, A.shape[1], T.shape[0]))
    eps = np.full(n, np.nan)
    for o in range(n):
        C = A[o] * lam[o]
        Q[o] = C @ G[o] @ C.T
        R[o] = C @ S[o]
        if np.all(np.isfinite(Q[o])):
            eps[o] = _eps_g(Q[o], R[o], T, v[o], vt, act)
    return Q, R, eps


def _assemble(modes, record, outs, div_steps, T, vt, dynamics, params, test_set):
    N = params["N"]
    act = activation_code(dynamics.activation)
    series = {k: [] for k in ("eps_g", "Q", "R", "Rm", "S", "lam", "A", "v", "eps_test")}
    for G, S, A, lam, v, test in outs:
        Q, R, eps = _eps_series(G, S, A, lam, v, T, vt, act)
        for name, value in (("eps_g", eps), ("Q", Q), ("R", R), ("v", v), ("eps_test", test)):
            series[name].append(value)
        if modes:
            for name, value in (("Rm", G), ("S", S), ("lam", lam), ("A", A)):
                series[name].append(value)
    single = len(outs) == 1
    arrays = {k: (None if not val else (val[0] if single else np.stack(val))) for k, val in series.items()}
    if not test_set:
        arrays["eps_test"] = None
    diverged = np.array([s >= 0 for s in div_steps])
    alpha_div = np.array([s / N if s >= 0 else np.nan for s in div_steps])
    status = "diverged" if diverged.any() else "ok"
    alpha = record / N
    message = (f"{int(diverged.sum())} of {len(outs)} replicas diverged (first at alpha = {np.nanmin(alpha_div):.6g})"
               if diverged.any() else f"simulated to alpha = {alpha[-1]:.6g}")
    return Trajectory(alpha=alpha, steps=record.copy(), T=T.copy(), kind="sgd", params=params, status=status,
                      message=message, nfev=int(record[-1]) * len(outs), diverged=diverged, alpha_diverged=alpha_div,
                      **arrays)
