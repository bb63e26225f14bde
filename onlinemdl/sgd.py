"""The on-line SGD engine (Numba): teacher-student simulations at finite N.

Two methods give the same process in distribution:

* ``"explicit"``: N-dimensional weights, one fresh Gaussian input per step; the forward
  pass and the update are fused in one sweep over the input.
* ``"gram"``: the exact reduced chain. SGD sees ``x`` only through the fields
  ``f = (u, s)`` (teacher, trained rows) and ``|x|^2``; given the Gram matrix ``G`` of the
  teacher and trained rows, ``f = L z`` with ``G = L L^T`` (semidefinite Cholesky, rank r),
  ``z ~ N(0, I_r)`` and ``|x|^2 = |z|^2 + chi^2_{N-r}``. The cost per step is independent of N.

Both treat the full-weight student as the mode student with ``C = A diag(lam) = I``: the
trained N-dimensional vectors are the rows of ``W`` (full) or the columns of ``Xi`` (modes),
with fields ``s``, and the hidden fields are ``h = C s``.
Replicas run on threads (the kernels release the GIL), each on its own random stream
spawned from ``seed``, so results do not depend on the number of threads.
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from .gaussian import activation_code, dg, eps_g as _eps_g, g, joint_covariance
from .model import Student, Teacher
from .ode import _check_alpha, _rate, alpha_grid
from .trajectory import Trajectory


# --------------------------------------------------------------------------------------
# One SGD step's gradient coefficients, shared by both methods
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _backprop(s, u, C, v, vt, sigma, zeta, act, h, delta, d):
    """Fill ``h = C s``, ``delta_i = v_i g'(h_i) err`` and ``d = C^T delta``; return err."""
    K, r = C.shape
    err = -sigma * zeta
    for i in range(K):
        acc = 0.0
        for a in range(r):
            acc += C[i, a] * s[a]
        h[i] = acc
        err += v[i] * g(acc, act)
    for n in range(u.shape[0]):
        err -= vt[n] * g(u[n], act)
    for i in range(K):
        delta[i] = v[i] * dg(h[i], act) * err
    for a in range(r):
        acc = 0.0
        for i in range(K):
            acc += C[i, a] * delta[i]
        d[a] = acc
    return err


@njit(cache=True, nogil=True)
def _accumulate_factor_gradients(A, lam, s, h, delta, err, act, train_lam, train_A, train_v, gl, gA, gv):
    """Add this sample's gradients of the trained O(1) factors: dL/dlam_mu = sum_i delta_i A_imu s_mu,
    dL/dA_imu = delta_i lam_mu s_mu, dL/dv_i = err g(h_i)."""
    K, r = A.shape
    if train_lam:
        for a in range(r):
            acc = 0.0
            for i in range(K):
                acc += delta[i] * A[i, a]
            gl[a] += acc * s[a]
    if train_A:
        for i in range(K):
            for a in range(r):
                gA[i, a] += delta[i] * lam[a] * s[a]
    if train_v:
        for i in range(K):
            gv[i] += err * g(h[i], act)


@njit(cache=True, nogil=True)
def _apply_factor_gradients(A, lam, v, C, gl, gA, gv, scale, eta_lam, eta_A, eta_v, train_lam, train_A, train_v):
    """lam -= (eta_lam / N) g_lam, A -= (eta_A / N) g_A, v -= (eta_v / N) g_v (``scale`` = 1/(N batch));
    then refresh ``C = A diag(lam)`` and clear the accumulators."""
    if train_lam:
        lam -= eta_lam * scale * gl
        gl[:] = 0.0
    if train_A:
        A -= eta_A * scale * gA
        gA[:] = 0.0
    if train_v:
        v -= eta_v * scale * gv
        gv[:] = 0.0
    if train_lam or train_A:
        _mixing(A, lam, C)


@njit(cache=True, nogil=True)
def _factor_workspace(A, lam):
    """``C = A diag(lam)``, buffers for h and delta, and zeroed gradient accumulators of lam, A, v."""
    K, r = A.shape
    C = np.empty((K, r))
    _mixing(A, lam, C)
    return C, np.empty(K), np.empty(K), np.zeros(r), np.zeros((K, r)), np.zeros(K)


@njit(cache=True, nogil=True)
def _mixing(A, lam, C):
    for i in range(C.shape[0]):
        for a in range(C.shape[1]):
            C[i, a] = A[i, a] * lam[a]


# --------------------------------------------------------------------------------------
# Explicit engine
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _sweep1(Wt, shrink, coef, xold, xnew, fields):
    """:func:`_sweep` for a batch of one (vectorises over j)."""
    r, N = Wt.shape
    for a in range(r):
        ca = coef[a]
        acc = 0.0
        for j in range(N):
            w = Wt[a, j] * shrink - ca * xold[j]
            Wt[a, j] = w
            acc += w * xnew[j]
        fields[a] = acc


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _sweep(Wt, shrink, coef, Xold, Xnew, fields):
    """Apply the pending update and compute the next fields in one pass over the weights:
    w_a <- shrink w_a - sum_b coef_ba x_b (old inputs), then s_ba = w_a . x_b (new inputs)."""
    r, N = Wt.shape
    batch = Xnew.shape[0]
    if batch == 1:
        _sweep1(Wt, shrink, coef[0], Xold[0], Xnew[0], fields[0])
        return
    for a in range(r):
        for b in range(batch):
            fields[b, a] = 0.0
        for j in range(N):
            w = Wt[a, j] * shrink
            for b in range(batch):
                w -= coef[b, a] * Xold[b, j]
            Wt[a, j] = w
            for b in range(batch):
                fields[b, a] += w * Xnew[b, j]


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _dots(B, X, out):
    """out[b, n] = B_n . x_b."""
    for b in range(X.shape[0]):
        for n in range(B.shape[0]):
            acc = 0.0
            for j in range(B.shape[1]):
                acc += B[n, j] * X[b, j]
            out[b, n] = acc


@njit(cache=True, nogil=True)
def _explicit_replica(Wt, B, A, lam, v, vt, eta, eta_lam, eta_A, eta_v, sigma, wd, batch,
                      train_w, train_lam, train_A, train_v, act, record, max_q, Xtest, rng,
                      out_G, out_S, out_A, out_lam, out_v, out_test):
    """Run one replica. ``Wt`` (r, N): trained N-dimensional vectors as rows; ``B`` (M, N).

    The update of step t is fused with the forward pass of step t + 1 (:func:`_sweep`).
    Returns the step at which the replica diverged, or -1.
    """
    r, N = Wt.shape
    M = B.shape[0]
    rs = 1.0 / math.sqrt(N)
    C, h, delta, gl, gA, gv = _factor_workspace(A, lam)
    Xnew = np.empty((batch, N))
    Xold = np.zeros((batch, N))
    S = np.empty((batch, r))
    U = np.empty((batch, M))
    coef = np.zeros((batch, r))
    decay = 1.0 - eta * wd / N
    shrink = 1.0
    step = 0
    for o in range(record.size):
        while step < record[o]:
            for b in range(batch):
                for j in range(N):
                    Xnew[b, j] = rng.standard_normal()
            _sweep(Wt, shrink, coef, Xold, Xnew, S)
            _dots(B, Xnew, U)
            for b in range(batch):
                for a in range(r):
                    S[b, a] *= rs
                for n in range(M):
                    U[b, n] *= rs
                zeta = rng.standard_normal() if sigma > 0.0 else 0.0
                err = _backprop(S[b], U[b], C, v, vt, sigma, zeta, act, h, delta, coef[b])
                if not math.isfinite(err):
                    return step
                _accumulate_factor_gradients(A, lam, S[b], h, delta, err, act, train_lam, train_A, train_v,
                                             gl, gA, gv)
                for a in range(r):  # W_a -= (eta / b) d_a x / sqrt(N), applied in the next sweep
                    coef[b, a] = coef[b, a] * eta * rs / batch if train_w else 0.0
            _apply_factor_gradients(A, lam, v, C, gl, gA, gv, 1.0 / (N * batch), eta_lam, eta_A, eta_v,
                                    train_lam, train_A, train_v)
            Xnew, Xold = Xold, Xnew
            shrink = decay if train_w else 1.0
            step += 1
        # flush the pending update, then record Gram, overlaps, factors and test error
        for a in range(r):
            for j in range(N):
                w = Wt[a, j] * shrink
                for b in range(batch):
                    w -= coef[b, a] * Xold[b, j]
                Wt[a, j] = w
        shrink = 1.0
        coef[:] = 0.0
        for a in range(r):
            for c in range(a, r):
                out_G[o, a, c] = out_G[o, c, a] = np.dot(Wt[a], Wt[c]) / N
            for n in range(M):
                out_S[o, a, n] = np.dot(Wt[a], B[n]) / N
        out_A[o] = A
        out_lam[o] = lam
        out_v[o] = v
        if Xtest.shape[0] > 0:
            out_test[o] = _test_error(Xtest, Wt, B, C, v, vt, act)
        if not _max_q(C, out_G[o]) < max_q:
            return step
    return -1


@njit(cache=True, nogil=True)
def _max_q(C, G):
    """max_i Q_ii with Q = C G C^T."""
    qmax = 0.0
    K, r = C.shape
    for i in range(K):
        acc = 0.0
        for a in range(r):
            for c in range(r):
                acc += C[i, a] * G[a, c] * C[i, c]
        qmax = max(qmax, acc)
    return qmax


@njit(cache=True, nogil=True)
def _test_error(X, Wt, B, C, v, vt, act):
    """0.5 mean over held-out inputs of (yhat - y_clean)^2."""
    n = X.shape[0]
    S = np.empty((n, Wt.shape[0]))
    U = np.empty((n, B.shape[0]))
    _dots(Wt, X, S)
    _dots(B, X, U)
    rs = 1.0 / math.sqrt(X.shape[1])
    tot = 0.0
    for t in range(n):
        e = 0.0
        for i in range(C.shape[0]):
            e += v[i] * g(np.dot(C[i], S[t]) * rs, act)
        for m in range(B.shape[0]):
            e -= vt[m] * g(U[t, m] * rs, act)
        tot += e * e
    return 0.5 * tot / n


# --------------------------------------------------------------------------------------
# Gram engine
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _semidefinite_cholesky(G, L, tol, start):
    """Rows ``start..n-1`` of the lower-triangular L with L L^T = G for a PSD G (rows above
    are kept: the teacher block never changes). Pivots below ``tol`` give zero columns.

    Returns the rank.
    """
    n = G.shape[0]
    for i in range(start, n):
        for j in range(i):
            if L[j, j] == 0.0:
                L[i, j] = 0.0
                continue
            t = G[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / L[j, j]
        d = G[i, i]
        for k in range(i):
            d -= L[i, k] * L[i, k]
        L[i, i] = math.sqrt(d) if d > tol else 0.0
    rank = 0
    for i in range(n):
        rank += L[i, i] != 0.0
    return rank


@njit(cache=True, nogil=True)
def _gram_replica(Gfull, N, M, A, lam, v, vt, eta, eta_lam, eta_A, eta_v, sigma, wd, batch,
                  train_w, train_lam, train_A, train_v, act, record, max_q, rng,
                  out_G, out_S, out_A, out_lam, out_v):
    """Run one replica of the exact reduced chain on ``Gfull = [[T, S^T], [S, G]]``.

    Returns the step at which the replica diverged, or -1.
    """
    n = Gfull.shape[0]
    r = n - M
    C, h, delta, gl, gA, gv = _factor_workspace(A, lam)
    L = np.zeros((n, n))
    z = np.empty((batch, n))
    f = np.empty((batch, n))
    d = np.empty((batch, r))
    XX = np.empty((batch, batch))
    Wb = np.zeros((batch, batch))
    tol_scale = 0.0
    for j in range(n):
        tol_scale = max(tol_scale, Gfull[j, j])
    shrink = 1.0 - eta * wd / N
    tol = 1e-13 * tol_scale
    _semidefinite_cholesky(Gfull, L, tol, 0)
    step = 0
    for o in range(record.size):
        while step < record[o]:
            rank = _semidefinite_cholesky(Gfull, L, tol, M)
            for b in range(batch):
                for j in range(n):
                    z[b, j] = rng.standard_normal() if L[j, j] != 0.0 else 0.0
                for i in range(n):
                    acc = 0.0
                    for j in range(i + 1):
                        acc += L[i, j] * z[b, j]
                    f[b, i] = acc
                zeta = rng.standard_normal() if sigma > 0.0 else 0.0
                s = f[b, M:]
                err = _backprop(s, f[b, :M], C, v, vt, sigma, zeta, act, h, delta, d[b])
                if not math.isfinite(err):
                    return step
                _accumulate_factor_gradients(A, lam, s, h, delta, err, act, train_lam, train_A, train_v,
                                             gl, gA, gv)
            if train_w:
                # x_b . x_c = z_b . z_c + Wishart(N - rank) (Bartlett), exact for isotropic inputs
                dof = N - rank
                for b in range(batch):
                    for c in range(b):
                        Wb[b, c] = rng.standard_normal() if dof > 0 else 0.0
                    Wb[b, b] = math.sqrt(rng.chisquare(dof - b)) if dof - b > 0 else 0.0
                for b in range(batch):
                    for c in range(b + 1):
                        acc = 0.0
                        for j in range(n):
                            acc += z[b, j] * z[c, j]
                        for k in range(c + 1):
                            acc += Wb[b, k] * Wb[c, k]
                        XX[b, c] = XX[c, b] = acc
                # w_a' = shrink w_a - (eta / b) sum_b d_ba x_b / sqrt(N)
                c1 = eta / (batch * N)
                c2 = (eta / batch) ** 2 / (N * N)
                for a in range(r):
                    ia = M + a
                    for c in range(a + 1):
                        ic = M + c
                        lin = 0.0
                        for b in range(batch):
                            lin += d[b, a] * f[b, ic] + d[b, c] * f[b, ia]
                        quad = 0.0
                        for b in range(batch):
                            for e in range(batch):
                                quad += d[b, a] * d[e, c] * XX[b, e]
                        val = shrink * shrink * Gfull[ia, ic] - shrink * c1 * lin + c2 * quad
                        Gfull[ia, ic] = val
                        Gfull[ic, ia] = val
                    for m in range(M):
                        lin = 0.0
                        for b in range(batch):
                            lin += d[b, a] * f[b, m]
                        val = shrink * Gfull[ia, m] - c1 * lin
                        Gfull[ia, m] = val
                        Gfull[m, ia] = val
            _apply_factor_gradients(A, lam, v, C, gl, gA, gv, 1.0 / (N * batch), eta_lam, eta_A, eta_v,
                                    train_lam, train_A, train_v)
            step += 1
        out_G[o] = Gfull[M:, M:]
        out_S[o] = Gfull[M:, :M]
        out_A[o] = A
        out_lam[o] = lam
        out_v[o] = v
        if not _max_q(C, out_G[o]) < max_q:
            return step
    return -1


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------
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


def simulate(student: Student, teacher: Teacher, *, eta, alpha_max=None, alpha=None, replicas=1, seed=0,
             method="explicit", eta_lam=None, eta_A=None, eta_v=None, points=200, threads=None, test_set=0,
             max_norm=1e2) -> Trajectory:
    """On-line SGD of ``student`` on labels of ``teacher``, replicas in parallel.

    Parameters
    ----------
    eta : learning rate of the N-dimensional weights; ``eta_lam``, ``eta_A``, ``eta_v`` (default
        ``eta``) those of the O(1) factors, applied as ``eta_x / N`` per step.
    alpha_max, alpha : end time with the default log grid (as :func:`onlinemdl.integrate`), or
        the recording times; both are rounded to whole steps, ``alpha = steps / N``.
    replicas : independent runs from the same initial weights, each on its own random stream
        spawned from ``seed`` (results do not depend on ``threads``).
    method : "explicit" (N-dimensional weights) or "gram" (exact reduced chain, cost independent of N).
    threads : worker threads (default: all cores).
    test_set : size of a fixed held-out set of Gaussian inputs per replica on which the error is
        also measured (``eps_test``; explicit method only; 0 = none).
    max_norm : a replica is marked diverged once some ``Q_ii`` exceeds ``max_norm`` times its scale.

    Returns
    -------
    Trajectory (kind "sgd") with a leading replica axis on the series when ``replicas > 1``;
    diverged replicas are flagged in ``diverged`` and hold NaN after ``alpha_diverged``.
    """
    op = student.order_parameters(teacher)  # also checks that N and the activation agree
    if method not in ("explicit", "gram"):
        raise ValueError(f'method must be "explicit" or "gram", got {method!r}')
    if not isinstance(replicas, (int, np.integer)) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
    if not isinstance(test_set, (int, np.integer)) or test_set < 0:
        raise ValueError(f"test_set must be an integer >= 0, got {test_set!r}")
    if test_set and method != "explicit":
        raise ValueError('test_set needs method="explicit"')
    if not (np.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
    threads = os.cpu_count() if threads is None else threads
    if not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    eta = _rate("eta", eta, None)
    rates = dict(eta_lam=_rate("eta_lam", eta_lam, eta), eta_A=_rate("eta_A", eta_A, eta),
                 eta_v=_rate("eta_v", eta_v, eta))
    N = student.N
    if alpha is None:
        if alpha_max is None:
            raise ValueError("give alpha_max or alpha")
        alpha = alpha_grid(alpha_max, points)
    record = np.unique(np.rint(_check_alpha(alpha) * N).astype(np.int64))
    act = activation_code(student.activation)
    train = student.train
    K, M = student.K, teacher.M
    if student.is_modes:
        A0, lam0, W0 = student.A, student.lam, student.Xi.T
    else:
        A0, lam0, W0 = np.eye(K), np.ones(K), student.W
    r = W0.shape[0]
    T = op["T"]
    scale = max(1.0, float(np.max(np.diag(T))), float(np.max(np.abs(op["Q"]))))
    max_q = max_norm * scale
    flags = ("w" in train or "xi" in train, "lam" in train, "A" in train, "v" in train)
    n_rec = record.size
    if method == "gram":  # Gram matrix of the teacher rows, then the trained rows
        G, S = (op["Rm"], op["S"]) if student.is_modes else (op["Q"], op["R"])
        Gfull = np.ascontiguousarray(joint_covariance(T, S.T, G))
    streams = [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(replicas)]
    outs = [dict(G=np.full((n_rec, r, r), np.nan), S=np.full((n_rec, r, M), np.nan),
                 A=np.full((n_rec, K, r), np.nan), lam=np.full((n_rec, r), np.nan), v=np.full((n_rec, K), np.nan),
                 test=np.full(n_rec, np.nan)) for _ in range(replicas)]


    def run(k):
        rng, o = streams[k], outs[k]
        A, lam, v = A0.copy(), lam0.copy(), student.v.copy()
        common = (eta, rates["eta_lam"], rates["eta_A"], rates["eta_v"], teacher.sigma, student.weight_decay,
                  student.batch, *flags, act, record, max_q)
        if method == "explicit":
            Xtest = rng.standard_normal((test_set, N)) if test_set else np.empty((0, N))
            return _explicit_replica(np.array(W0, order="C"), teacher.B, A, lam, v,
                                     teacher.vt, *common, Xtest, rng, o["G"], o["S"], o["A"], o["lam"], o["v"],
                                     o["test"])
        return _gram_replica(Gfull.copy(), N, M, A, lam, v, teacher.vt, *common, rng,
                             o["G"], o["S"], o["A"], o["lam"], o["v"])

    t0 = time.perf_counter()
    if threads == 1 or replicas == 1:
        div_steps = [run(k) for k in range(replicas)]
    else:
        with ThreadPoolExecutor(max_workers=min(threads, replicas)) as pool:
            div_steps = list(pool.map(run, range(replicas)))
    wall = time.perf_counter() - t0
    return _assemble(student, teacher, method, record, outs, div_steps, T, act, seed, eta, rates, wall, test_set,
                     max_norm, threads)


def _assemble(student, teacher, method, record, outs, div_steps, T, act, seed, eta, rates, wall, test_set,
              max_norm, threads):
    N = student.N
    series = {k: [] for k in ("eps_g", "Q", "R", "Rm", "S", "lam", "A", "v", "eps_test")}
    for o in outs:
        Q, R, eps = _eps_series(o["G"], o["S"], o["A"], o["lam"], o["v"], T, teacher.vt, act)
        series["eps_g"].append(eps)
        series["Q"].append(Q)
        series["R"].append(R)
        series["v"].append(o["v"])
        series["eps_test"].append(o["test"])
        if student.is_modes:
            series["Rm"].append(o["G"])
            series["S"].append(o["S"])
            series["lam"].append(o["lam"])
            series["A"].append(o["A"])
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
    params = dict(N=N, K=student.K, M=teacher.M, p=student.p or 0, train=list(student.train), eta=eta, **rates,
                  sigma=teacher.sigma, weight_decay=student.weight_decay, batch=student.batch,
                  activation=student.activation, method=method, seed=seed, replicas=len(outs), vt=teacher.vt,
                  T=T, wall_time=wall, max_norm=max_norm, test_set=test_set, threads=threads,
                  form="modes" if student.is_modes else "full")
    return Trajectory(alpha=alpha, steps=record.copy(), T=T.copy(), kind="sgd", params=params, status=status,
                      message=message, nfev=int(record[-1]) * len(outs), diverged=diverged, alpha_diverged=alpha_div,
                      **arrays)
