"""Numba kernels of the on-line SGD engine: one replica of the explicit simulation or of the
exact Gram chain, run to its recording steps.

Two methods give the same process in distribution:

* ``"explicit"``: N-dimensional weights, one fresh Gaussian input per step; the draw of the
  next input, this step's update and the next step's fields (trained and teacher rows) are
  fused in one pass over the weights, tiled by inputs.
* ``"gram"``: the exact reduced chain. SGD sees ``x`` only through the fields
  ``f = (u, s)`` (teacher, trained rows) and ``|x|^2``; given a factor ``F`` of the Gram matrix
  ``G = F F^T`` of the teacher and trained rows, ``f = F z`` with ``z ~ N(0, I_{K+M})`` and
  ``|x|^2 = |z|^2 + chi^2_{N-K-M}``. A step changes ``F`` by a low-rank amount, restored to
  triangular form by Givens rotations: the cost per step is O((K + M)^2), independent of N.

Both treat the full-weight student as the mode student with ``C = A diag(lam) = I``: the
trained N-dimensional vectors are the rows of ``W`` (full) or the columns of ``Xi`` (modes),
with fields ``s``, and the hidden fields are ``h = C s``.
Kernels release the GIL, so replicas run on threads. Rates, noise, decay, batch and
activation arrive packed (:meth:`onlinemdl.dynamics.Dynamics.pack`); recorded series go into
the tuple ``out = (G, S, A, lam, v, test)`` of preallocated arrays.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

from ..dynamics import ACT, BATCH, DECAY, ETA, ETA_A, ETA_LAM, ETA_V, SIGMA, TRAIN_A, TRAIN_LAM, TRAIN_N, TRAIN_V
from ..gaussian import dg, g


# --------------------------------------------------------------------------------------
# One SGD step's gradient coefficients, shared by both methods
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _backprop(s, u, C, ident, v, vt, sigma, zeta, act, h, delta, d):
    """Fill ``h = C s``, ``delta_i = v_i g'(h_i) err`` and ``d = C^T delta``; return err.
    ``ident``: C is the identity (full-weight student), h = s and d = delta."""
    K, r = C.shape
    err = -sigma * zeta
    for i in range(K):
        if ident:
            acc = s[i]
        else:
            acc = 0.0
            for a in range(r):
                acc += C[i, a] * s[a]
        h[i] = acc
        err += v[i] * g(acc, act)
    for n in range(u.shape[0]):
        err -= vt[n] * g(u[n], act)
    for i in range(K):
        delta[i] = v[i] * dg(h[i], act) * err
    if ident:
        d[:] = delta
        return err
    for a in range(r):
        acc = 0.0
        for i in range(K):
            acc += C[i, a] * delta[i]
        d[a] = acc
    return err


@njit(cache=True, nogil=True)
def _is_identity(C, flags):
    """Whether C = A diag(lam) is the identity and stays so (lam and A not trained)."""
    if flags[TRAIN_LAM] or flags[TRAIN_A] or C.shape[0] != C.shape[1]:
        return False
    for i in range(C.shape[0]):
        for a in range(C.shape[1]):
            if C[i, a] != (1.0 if i == a else 0.0):
                return False
    return True


@njit(cache=True, nogil=True)
def _accumulate_factor_gradients(A, lam, s, h, delta, err, flags, gl, gA, gv):
    """Add this sample's gradients of the trained O(1) factors: dL/dlam_mu = sum_i delta_i A_imu s_mu,
    dL/dA_imu = delta_i lam_mu s_mu, dL/dv_i = err g(h_i)."""
    K, r = A.shape
    train_lam, train_A, train_v, act = flags[TRAIN_LAM], flags[TRAIN_A], flags[TRAIN_V], flags[ACT]
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
def _apply_factor_gradients(A, lam, v, C, gl, gA, gv, scale, rates, flags):
    """lam -= (eta_lam / N) g_lam, A -= (eta_A / N) g_A, v -= (eta_v / N) g_v (``scale`` = 1/(N batch));
    then refresh ``C = A diag(lam)`` and clear the accumulators."""
    eta_lam, eta_A, eta_v = rates[ETA_LAM], rates[ETA_A], rates[ETA_V]
    train_lam, train_A, train_v = flags[TRAIN_LAM], flags[TRAIN_A], flags[TRAIN_V]
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
#: Inputs per tile of the sweep: the tile of the old and new inputs stays in L1 while every
#: weight row (trained and teacher) passes over it, so the weights are read once per step.
TILE = 512


@njit(cache=True, nogil=True)
def _draw(rng, X, j0, j1):
    for b in range(X.shape[0]):
        for j in range(j0, j1):
            X[b, j] = rng.standard_normal()


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _tile1(Wt, B, shrink, coef, xold, xnew, s, u, j0, j1):
    """One tile of :func:`_draw_and_sweep` for a batch of one (vectorises over j; the unsigned
    loop index spares the negative-index check that would keep it scalar)."""
    for a in range(Wt.shape[0]):
        ca = coef[a]
        acc = 0.0
        for j in range(uint64(j0), uint64(j1)):
            w = Wt[a, j] * shrink - ca * xold[j]
            Wt[a, j] = w
            acc += w * xnew[j]
        s[a] += acc
    for n in range(B.shape[0]):
        acc = 0.0
        for j in range(uint64(j0), uint64(j1)):
            acc += B[n, j] * xnew[j]
        u[n] += acc


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _tile(Wt, B, shrink, coef, Xold, Xnew, S, U, j0, j1):
    """One tile of :func:`_draw_and_sweep` for any batch."""
    batch = Xnew.shape[0]
    for a in range(Wt.shape[0]):
        for j in range(uint64(j0), uint64(j1)):
            w = Wt[a, j] * shrink
            for b in range(batch):
                w -= coef[b, a] * Xold[b, j]
            Wt[a, j] = w
            for b in range(batch):
                S[b, a] += w * Xnew[b, j]
    for n in range(B.shape[0]):
        for b in range(batch):
            acc = 0.0
            for j in range(uint64(j0), uint64(j1)):
                acc += B[n, j] * Xnew[b, j]
            U[b, n] += acc


@njit(cache=True, nogil=True)
def _draw_and_sweep(Wt, B, shrink, coef, Xold, Xnew, S, U, rng):
    """Draw the next inputs and, in one pass over the weights tiled by inputs, apply the pending
    update ``w_a <- shrink w_a - sum_b coef_ba x_b`` (old inputs) and accumulate the next fields
    ``S_ba = w_a . x_b``, ``U_bn = B_n . x_b`` (new inputs, not yet divided by sqrt N)."""
    N = Wt.shape[1]
    S[:] = 0.0
    U[:] = 0.0
    for j0 in range(0, N, TILE):
        j1 = min(N, j0 + TILE)
        _draw(rng, Xnew, j0, j1)
        if Xnew.shape[0] == 1:
            _tile1(Wt, B, shrink, coef[0], Xold[0], Xnew[0], S[0], U[0], j0, j1)
        else:
            _tile(Wt, B, shrink, coef, Xold, Xnew, S, U, j0, j1)


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
def explicit_replica(Wt, B, A, lam, v, vt, rates, flags, record, max_q, Xtest, rng, out):
    """Run one replica. ``Wt`` (r, N): trained N-dimensional vectors as rows; ``B`` (M, N).

    The update of step t is fused with the draw and the forward pass of step t + 1
    (:func:`_draw_and_sweep`).
    Returns the step at which the replica diverged, or -1.
    """
    out_G, out_S, out_A, out_lam, out_v, out_test = out
    eta, sigma, wd = rates[ETA], rates[SIGMA], rates[DECAY]
    train_w, act, batch = flags[TRAIN_N], flags[ACT], flags[BATCH]
    r, N = Wt.shape
    M = B.shape[0]
    rs = 1.0 / math.sqrt(N)
    C, h, delta, gl, gA, gv = _factor_workspace(A, lam)
    ident = _is_identity(C, flags)
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
            _draw_and_sweep(Wt, B, shrink, coef, Xold, Xnew, S, U, rng)
            for b in range(batch):
                for a in range(r):
                    S[b, a] *= rs
                for n in range(M):
                    U[b, n] *= rs
                zeta = rng.standard_normal() if sigma > 0.0 else 0.0
                err = _backprop(S[b], U[b], C, ident, v, vt, sigma, zeta, act, h, delta, coef[b])
                if not math.isfinite(err):
                    return step
                _accumulate_factor_gradients(A, lam, S[b], h, delta, err, flags, gl, gA, gv)
                for a in range(r):  # W_a -= (eta / b) d_a x / sqrt(N), applied in the next sweep
                    coef[b, a] = coef[b, a] * eta * rs / batch if train_w else 0.0
            _apply_factor_gradients(A, lam, v, C, gl, gA, gv, 1.0 / (N * batch), rates, flags)
            Xnew, Xold = Xold, Xnew
            shrink = decay if train_w else 1.0
            step += 1
        # flush the pending update, then record Gram, overlaps, factors and test error
        _flush_and_record(Wt, B, shrink, coef, Xold, out_G[o], out_S[o])
        shrink = 1.0
        coef[:] = 0.0
        out_A[o] = A
        out_lam[o] = lam
        out_v[o] = v
        if Xtest.shape[0] > 0:
            out_test[o] = _test_error(Xtest, Wt, B, C, v, vt, act)
        if not _max_q(C, out_G[o]) < max_q:
            return step
    return -1


@njit(cache=True, nogil=True)
def _flush_and_record(Wt, B, shrink, coef, Xold, G, S):
    """Apply the pending update and fill ``G = W W^T / N``, ``S = W B^T / N`` in one pass over
    the weights tiled by inputs (each row is read once, not once per product)."""
    r, N = Wt.shape
    G[:] = 0.0
    S[:] = 0.0
    for j0 in range(0, N, TILE):
        j1 = min(N, j0 + TILE)
        _record_tile(Wt, B, shrink, coef, Xold, G, S, j0, j1)
    for a in range(r):
        for c in range(a, r):
            G[a, c] /= N
            G[c, a] = G[a, c]
        for n in range(B.shape[0]):
            S[a, n] /= N


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _record_tile(Wt, B, shrink, coef, Xold, G, S, j0, j1):
    r = Wt.shape[0]
    for a in range(r):
        for j in range(uint64(j0), uint64(j1)):
            w = Wt[a, j] * shrink
            for b in range(Xold.shape[0]):
                w -= coef[b, a] * Xold[b, j]
            Wt[a, j] = w
    for a in range(r):
        for c in range(a, r):
            acc = 0.0
            for j in range(uint64(j0), uint64(j1)):
                acc += Wt[a, j] * Wt[c, j]
            G[a, c] += acc
        for n in range(B.shape[0]):
            acc = 0.0
            for j in range(uint64(j0), uint64(j1)):
                acc += Wt[a, j] * B[n, j]
            S[a, n] += acc


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _rowdot(X, a, Y, b):
    """X_a . Y_b in the replica's own thread (np.dot would call a multi-threaded BLAS, whose
    threads wait for cores on a busy machine and oversubscribe them when replicas run on threads)."""
    acc = 0.0
    for j in range(X.shape[1]):
        acc += X[a, j] * Y[b, j]
    return acc


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
            e += v[i] * g(_rowdot(C, i, S, t) * rs, act)
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
def gram_replica(Gfull, N, A, lam, v, vt, rates, flags, record, max_q, rng, out):
    """Run one replica of the exact reduced chain on ``Gfull = [[T, S^T], [S, G]]``.

    The chain is carried by a factor ``F = [[F_T, 0], [F_S, R^T]]`` of ``Gfull`` (``F F^T = Gfull``,
    ``R`` upper triangular): the fields are ``f = F z`` with ``z ~ N(0, I_{K+M})``, and one step
    changes ``F_S`` by a rank-``batch`` term and ``R`` by a rank-``batch`` term plus ``batch`` new
    columns, restored to triangular form by Givens rotations in O((K+M)^2) (theory/online_dynamics.md
    §6). For ``N < K + M + batch`` the Gram matrix is refactored every step instead.

    Returns the step at which the replica diverged, or -1.
    """
    if N < Gfull.shape[0] + flags[BATCH]:
        return _gram_refactor_replica(Gfull, N, A, lam, v, vt, rates, flags, record, max_q, rng, out)
    return _gram_factor_replica(Gfull, N, A, lam, v, vt, rates, flags, record, max_q, rng, out)


@njit(cache=True, nogil=True)
def _givens(a, b):
    """(c, s, t) with c a + s b = t = hypot(a, b) and -s a + c b = 0; (1, 0, a) when b = 0."""
    if b == 0.0:
        return 1.0, 0.0, a
    t = math.sqrt(a * a + b * b)
    return a / t, b / t, t


@njit(cache=True, nogil=True)
def _rotate_rows(X, i, k, c, s, j0):
    """Rows i, k of X from column j0 on: (x_i, x_k) <- (c x_i + s x_k, c x_k - s x_i)."""
    for j in range(j0, X.shape[1]):
        a, b = X[i, j], X[k, j]
        X[i, j] = c * a + s * b
        X[k, j] = c * b - s * a


@njit(cache=True, nogil=True)
def _triangular_update(R, E, q, d):
    """Left-orthogonal update: ``[R; 0] + E[q] d^T`` (R upper triangular r x r on top of an
    (r + b) x r buffer whose rows below r are zero) back to ``[R'; 0]`` with R'^T R' equal to the
    updated matrix's Gram matrix, in O(r^2) Givens rotations (Golub & Van Loan, §12.5.1). The
    same rotations are applied to the later vectors ``E[q + 1:]`` (the rest of the batch)."""
    rows, r = R.shape
    e = E[q]
    nb = E.shape[0]
    # fold e onto its first entry, bottom up; R becomes upper Hessenberg
    for k in range(rows - 2, -1, -1):
        c, s, t = _givens(e[k], e[k + 1])
        if s == 0.0:
            continue
        e[k] = t
        e[k + 1] = 0.0
        for p in range(q + 1, nb):
            a, b = E[p, k], E[p, k + 1]
            E[p, k] = c * a + s * b
            E[p, k + 1] = c * b - s * a
        if k < r:
            _rotate_rows(R, k, k + 1, c, s, k)
    e0 = e[0]
    e[0] = 0.0
    if e0 == 0.0:
        return
    for j in range(r):
        R[0, j] += e0 * d[j]
    # back to triangular: zero the subdiagonal top down
    for k in range(r):
        c, s, t = _givens(R[k, k], R[k + 1, k])
        if s == 0.0:
            continue
        R[k, k] = t
        R[k + 1, k] = 0.0
        _rotate_rows(R, k, k + 1, c, s, k + 1)
        for p in range(q + 1, nb):
            a, b = E[p, k], E[p, k + 1]
            E[p, k] = c * a + s * b
            E[p, k + 1] = c * b - s * a


@njit(cache=True, nogil=True)
def _gram_factor_replica(Gfull, N, A, lam, v, vt, rates, flags, record, max_q, rng, out):
    """:func:`gram_replica` on the factor (needs ``N >= K + M + batch``)."""
    out_G, out_S, out_A, out_lam, out_v, _ = out
    eta, sigma, wd = rates[ETA], rates[SIGMA], rates[DECAY]
    train_w, act, batch = flags[TRAIN_N], flags[ACT], flags[BATCH]
    M = vt.size
    n = Gfull.shape[0]
    r = n - M
    C, h, delta, gl, gA, gv = _factor_workspace(A, lam)
    ident = _is_identity(C, flags)
    tol_scale = 0.0
    for j in range(n):
        tol_scale = max(tol_scale, Gfull[j, j])
    L = np.zeros((n, n))
    _semidefinite_cholesky(Gfull, L, 1e-13 * tol_scale, 0)
    FTt = L[:M, :M].T.copy()  # teacher block (transposed: axpy order), fixed
    FSt = L[M:, :M].T.copy()  # trained rows against the teacher directions (transposed)
    R = np.zeros((r + batch, r))  # R^T: trained rows in their own directions; rows r.. are scratch
    for a in range(r):
        for c in range(a, r):
            R[a, c] = L[M + c, M + a]
    z = np.empty((batch, n))
    f = np.empty((batch, n))
    d = np.empty((batch, r))
    E = np.empty((batch, r + batch))
    Wb = np.zeros((batch, batch))
    rho = 1.0 - eta * wd / N
    beta = eta / (batch * N)
    dof = N - n
    step = 0
    for o in range(record.size):
        while step < record[o]:
            for b in range(batch):
                for j in range(n):
                    z[b, j] = rng.standard_normal()
                f[b, :] = 0.0
                for j in range(M):  # teacher fields u = F_T z_T, and F_S z_T
                    zj = z[b, j]
                    for m in range(j, M):
                        f[b, m] += FTt[j, m] * zj
                    for a in range(r):
                        f[b, M + a] += FSt[j, a] * zj
                for k in range(r):  # s += R^T z_S
                    zk = z[b, M + k]
                    for a in range(k, r):
                        f[b, M + a] += R[k, a] * zk
                zeta = rng.standard_normal() if sigma > 0.0 else 0.0
                s = f[b, M:]
                err = _backprop(s, f[b, :M], C, ident, v, vt, sigma, zeta, act, h, delta, d[b])
                if not math.isfinite(err):
                    return step
                _accumulate_factor_gradients(A, lam, s, h, delta, err, flags, gl, gA, gv)
            if train_w:
                # x_b = Q z_b + x_perp_b with x_perp_b . x_perp_c Wishart(N - K - M) (Bartlett)
                for b in range(batch):
                    for c in range(b):
                        Wb[b, c] = rng.standard_normal()
                    Wb[b, b] = math.sqrt(rng.chisquare(dof - b))
                # w_a' = rho w_a - (eta / b) sum_b d_ba x_b / sqrt(N):
                # F_S' = rho F_S - beta sum_b d_b z_bT^T;  [R'; 0] ~ [rho R; 0] + sum_b (-beta (z_bS, Wb_b)) d_b^T
                if rho != 1.0:
                    FSt *= rho
                    for a in range(r):
                        for c in range(a, r):
                            R[a, c] *= rho
                for b in range(batch):
                    for j in range(M):
                        bz = beta * z[b, j]
                        for a in range(r):
                            FSt[j, a] -= bz * d[b, a]
                    for k in range(r):
                        E[b, k] = -beta * z[b, M + k]
                    for c in range(batch):
                        E[b, r + c] = -beta * Wb[b, c]
                for b in range(batch):
                    _triangular_update(R, E, b, d[b])
            _apply_factor_gradients(A, lam, v, C, gl, gA, gv, 1.0 / (N * batch), rates, flags)
            step += 1
        for a in range(r):  # G = F_S F_S^T + R^T R, S = F_S F_T^T
            for c in range(a, r):
                acc = 0.0
                for j in range(M):
                    acc += FSt[j, a] * FSt[j, c]
                for k in range(a + 1):
                    acc += R[k, a] * R[k, c]
                out_G[o, a, c] = out_G[o, c, a] = acc
            for m in range(M):
                acc = 0.0
                for j in range(m + 1):
                    acc += FSt[j, a] * FTt[j, m]
                out_S[o, a, m] = acc
        out_A[o] = A
        out_lam[o] = lam
        out_v[o] = v
        if not _max_q(C, out_G[o]) < max_q:
            return step
    return -1


@njit(cache=True, nogil=True)
def _gram_refactor_replica(Gfull, N, A, lam, v, vt, rates, flags, record, max_q, rng, out):
    """:func:`gram_replica` when ``N < K + M + batch``: the chain on the Gram matrix itself,
    refactored every step (cost ~ (K + M)^3 per step). Returns the divergence step or -1."""
    out_G, out_S, out_A, out_lam, out_v, _ = out
    eta, sigma, wd = rates[ETA], rates[SIGMA], rates[DECAY]
    train_w, act, batch = flags[TRAIN_N], flags[ACT], flags[BATCH]
    M = vt.size
    n = Gfull.shape[0]
    r = n - M
    C, h, delta, gl, gA, gv = _factor_workspace(A, lam)
    ident = _is_identity(C, flags)
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
                err = _backprop(s, f[b, :M], C, ident, v, vt, sigma, zeta, act, h, delta, d[b])
                if not math.isfinite(err):
                    return step
                _accumulate_factor_gradients(A, lam, s, h, delta, err, flags, gl, gA, gv)
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
            _apply_factor_gradients(A, lam, v, C, gl, gA, gv, 1.0 / (N * batch), rates, flags)
            step += 1
        out_G[o] = Gfull[M:, M:]
        out_S[o] = Gfull[M:, :M]
        out_A[o] = A
        out_lam[o] = lam
        out_v[o] = v
        if not _max_q(C, out_G[o]) < max_q:
            return step
    return -1
