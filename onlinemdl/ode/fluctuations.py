"""Finite-N theory of on-line SGD: the fluctuations and the O(1/N) bias around the ODE.

One SGD run at finite N is written ``y_N(alpha) = y(alpha) + N^-1/2 xi(alpha) + N^-1 b(alpha)``
with ``y`` the ODE solution (linear-noise approximation, van Kampen's system-size expansion).
Derivations: ``theory/finite_size.md``; every equation there names its function here.

* :func:`increments`: N x (change of the state vector in one SGD step) at given field values
  (one sample), the random variable whose mean is the right-hand side;
* :func:`noise_covariance`: ``V(y)``, the covariance of that increment (per step, times N^2): the
  terms linear in ``delta`` in closed form (:func:`linear_noise`, Stein's lemma and Price's theorem),
  the rest by a randomised quasi-Monte Carlo cubature over the Gaussian fields (verified against
  plain Monte Carlo in ``tests/test_fluctuations.py``);
* :func:`finite_n_drift`: ``f_1(y)``, the O(1/N) part of the exact finite-N mean step (Gram
  chain), in closed form (Price's theorem for the ``|x|^2`` term), with the ``-J f / 2`` of
  the discrete time step;
* the Jacobian ``J`` is :meth:`OdeSystem.jacobian`, in closed form (``ode/derivatives.py``);
* :func:`propagate`: ``Sigma`` (``dSigma/da = J Sigma + Sigma J^T + V``) and ``b``
  (``db/da = J b + H:Sigma/2 + f_1``) along an ODE solution, exponential (Van Loan) steps;
* :func:`eps_g_moments`: the mean shift and the standard deviation of ``eps_g`` and of ``Q``,
  ``R`` across runs;
* :func:`escape_distribution`, :func:`escape_times`: the plateau lengths of runs near a saddle,
  predicted (states drawn from the linear-noise theory, followed by the ODE) and measured.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..dynamics import ACT, DECAY, ETA, ETA_A, ETA_LAM, ETA_V, INV_BATCH, SIGMA, TRAIN_A, TRAIN_LAM, TRAIN_N, TRAIN_V
from ..gaussian import LINEAR, dg, g, joint_covariance
from ..runsetup import check_int, check_number
from .derivatives import field_average_derivatives
from .system import OdeSystem, triu_indices

#: log2 of the quasi-Monte Carlo points of :func:`noise_covariance` for the part of ``V`` outside the closed form
#: (2^10: the predicted sd of eps_g and Q within 0.7% of 2^16 on the cases of benchmarks/bench_fluctuations.py) and
#: for the whole ``V`` (2^13), which it takes where that part is more than ``SPLIT_SHARE`` of ``V`` (theory §2).
QMC_LOG2 = 10
QMC_FULL = 13
SPLIT_SHARE = 0.05
_SQRT2 = math.sqrt(2.0)
_DG = math.sqrt(2.0 / math.pi)
_GAUSS = 0.5 + np.array([-1.0, 1.0]) * math.sqrt(3.0) / 6  # Gauss-Legendre points on [0, 1]
_MAGNUS = math.sqrt(3.0) / 12  # the fourth-order Magnus term's factor over h (eq. P1)
_POINTS: dict = {}


# --------------------------------------------------------------------------------------
# Field-space description of one state
# --------------------------------------------------------------------------------------
def _structure(system: OdeSystem, y):
    """Trained-vector Gram ``G`` (r x r), overlaps ``S`` (r x M), mixing ``C`` (K x r), and ``v``."""
    if system.form == "reduced":
        raise ValueError('fluctuations need form "full" or "modes" (the "reduced" form holds Q, not Rm)')
    st = system.unpack(np.asarray(y, float))
    if system.form == "modes":
        C = st["A"] * st["lam"]
        return st["Rm"], st["S"], C, st
    return st["Q"], st["R"], np.eye(system.K), st


def increments(system: OdeSystem, y, s, u, zeta=None) -> np.ndarray:
    """N x the change of the state vector in one SGD step of batch 1, at field values.

    ``s`` (n, r): fields of the trained N-dimensional vectors (rows of ``W``, columns of ``Xi``);
    ``u`` (n, M): teacher fields; ``zeta`` (n,): label-noise variates (None: no noise). The
    ``eta^2`` term carries ``1/b`` (one sample of a batch of ``b``); its ``|x|^2 / N`` is 1
    (its fluctuation is O(N^-1/2)). Returns (n, d), d the state size; mean = ``system.rhs(y)``.
    """
    s, u = np.atleast_2d(np.asarray(s, float)), np.atleast_2d(np.asarray(u, float))
    X = np.ascontiguousarray(np.hstack((s, u) if zeta is None else (s, u, np.asarray(zeta, float)[:, None])))
    noisy = zeta is not None
    L = np.eye(X.shape[1] - noisy)
    return _increment_rows(X, L, noisy, np.zeros((1, np.asarray(y).size)), False, *_increment_args(system, y))[0]


def _increment_args(system: OdeSystem, y) -> tuple:
    """The state-dependent arguments of :func:`_increment_rows` (after the fields):
    ``(C, G, S, v, vt, A, lam, rates, flags, modes, d)``."""
    G, S, C, st = _structure(system, y)
    modes, _, vt, _, A, lam, _, rates, flags = system.kernel_args
    if system.form == "modes":
        A, lam = np.ascontiguousarray(st["A"], float), np.ascontiguousarray(st["lam"], float)
    f8 = lambda a: np.ascontiguousarray(a, dtype=float)  # noqa: E731
    return f8(C), f8(G), f8(S), f8(st["v"]), vt, A, lam, rates, flags, modes, np.asarray(y).size


@njit(cache=True)
def _increment_rows(X, L, noisy, shift, split, C, G, S, v, vt, A, lam, rates, flags, modes, d):
    """Rows of :func:`increments` minus ``shift`` (theory/finite_size.md eq. of F^(1)), one per row
    of ``X``: the fields are ``(s, u) = L X[t, :k]`` (``k`` = columns of ``L``), the label-noise
    variate ``X[t, -1]`` when ``noisy``. Returns ``(F, F2)``: with ``split``, ``F`` holds the terms
    linear in ``delta`` (and the decay) minus ``shift[0]``, ``F2`` the rest (``(eta^2/b) dd^T`` and
    the ``v`` increments) minus ``shift[1]``; else ``F`` (= ``F2``) the whole increment minus ``shift[0]``."""
    n, k = X.shape[0], L.shape[1]
    r, K, M = G.shape[0], C.shape[0], vt.size
    eta, inv_b, kappa, sigma = rates[ETA], rates[INV_BATCH], rates[DECAY], rates[SIGMA]
    act = flags[ACT]
    F = np.zeros((n, d))
    F2 = np.zeros((n, d)) if split else F
    f, h, gh, delta, dd = np.empty(r + M), np.empty(K), np.empty(K), np.empty(K), np.empty(r)
    for t in range(n):
        for a in range(r + M):  # f = (s, u)
            acc = 0.0
            for j in range(k):
                acc += L[a, j] * X[t, j]
            f[a] = acc
        err = -sigma * X[t, k] if noisy else 0.0
        for m in range(M):
            err -= vt[m] * g(f[r + m], act)
        for i in range(K):
            acc = 0.0
            for a in range(r):
                acc += C[i, a] * f[a]
            h[i] = acc
            gh[i] = g(acc, act)
            err += v[i] * gh[i]
        for i in range(K):
            delta[i] = v[i] * dg(h[i], act) * err
        for a in range(r):
            acc = 0.0
            for i in range(K):
                acc += C[i, a] * delta[i]
            dd[a] = acc
        off = 0
        if flags[TRAIN_N]:
            for a in range(r):  # G block, upper triangle
                for b in range(a, r):
                    F[t, off] = -eta * (dd[a] * f[b] + f[a] * dd[b]) - 2.0 * eta * kappa * G[a, b]
                    F2[t, off] += eta * eta * inv_b * dd[a] * dd[b]
                    off += 1
            for a in range(r):  # S block
                for m in range(M):
                    F[t, off] = -eta * dd[a] * f[r + m] - eta * kappa * S[a, m]
                    off += 1
        else:
            off += r * (r + 1) // 2 + r * M
        if modes and flags[TRAIN_LAM]:
            for mu in range(r):
                acc = 0.0
                for i in range(K):
                    acc += A[i, mu] * delta[i]
                F[t, off] = -rates[ETA_LAM] * acc * f[mu]
                off += 1
        if modes and flags[TRAIN_A]:
            for i in range(K):
                for mu in range(r):
                    F[t, off] = -rates[ETA_A] * lam[mu] * delta[i] * f[mu]
                    off += 1
        if flags[TRAIN_V]:
            for i in range(K):
                F2[t, off] += -rates[ETA_V] * err * gh[i]
                off += 1
        for j in range(d):
            F[t, j] -= shift[0, j]
            if split:
                F2[t, j] -= shift[1, j]
    return F, F2


def _normal_points(dim: int, log2: int) -> np.ndarray:
    """Scrambled Sobol points mapped to N(0, I_dim), fixed seed, cached."""
    key = (dim, log2)
    if key not in _POINTS:
        from scipy.stats import norm, qmc

        u = qmc.Sobol(dim, scramble=True, seed=20240601 + dim).random_base2(log2)
        _POINTS[key] = norm.ppf(np.clip(u, 1e-12, 1 - 1e-12))
    return _POINTS[key]


def _rank_factor(C):
    """``L`` with ``C = L L^T`` from the eigenvalues of ``C`` above rounding (``C`` PSD)."""
    w, U = np.linalg.eigh(C)
    keep = w > 1e-12 * max(1.0, float(w.max()))
    return U[:, keep] * np.sqrt(w[keep])


def _field_factor(G, S, T):
    """``L`` with ``Cov((s, u)) = L L^T`` that varies smoothly with ``(G, S)``: the teacher's fields
    ``u = L_T z_u`` (``T`` is fixed along a run), the student's ``s = S T^+ u + chol(G - S T^+ S^T) z_s``.
    An eigendecomposition of the whole covariance would turn its eigenvectors from one state to
    the next and move the cubature's error with them (a few % of ``Sigma`` from node to node)."""
    LT = _rank_factor(T)
    W = (S @ LT) / np.sum(LT * LT, axis=0)  # S T^+ L_T (L_T's columns are orthogonal): Cov(s, u) = W L_T^T
    Gc = G - W @ W.T
    r = G.shape[0]
    try:  # rounding and a student in the teacher's span leave Gc barely PSD: a jitter far below the cubature error
        Ls = np.linalg.cholesky(Gc + 1e-12 * max(1.0, float(np.max(np.diag(G)))) * np.eye(r))
    except np.linalg.LinAlgError:
        Ls = _rank_factor((Gc + Gc.T) / 2)
    L = np.zeros((r + T.shape[0], Ls.shape[1] + LT.shape[1]))
    L[:r, :Ls.shape[1]], L[:r, Ls.shape[1]:], L[r:, Ls.shape[1]:] = Ls, W, LT
    return L


def noise_covariance(system: OdeSystem, y, log2: int | None = None, return_mean: bool = False, split: bool = True,
                     moments=None):
    """``V(y)``: N^2 x the covariance of one SGD step's change of the state vector.

    ``V = Cov(F) / b`` with ``F`` = :func:`increments` of one sample. ``F = F1 + F2``: ``F1``, the
    terms linear in ``delta`` (``-eta (dd s^T + s dd^T)``, ``-eta dd u^T``, the ``lam`` and ``A``
    increments), has its covariance in closed form (:func:`linear_noise`); the cross covariance
    with the rest ``F2`` (``(eta^2/b) dd dd^T``, the ``v`` increments) and that of ``F2`` itself,
    which have none, come from randomised quasi-Monte Carlo (``2^log2`` scrambled Sobol points in
    ``r + rank(T)`` dimensions mapped to the fields by :func:`_field_factor`, plus one for the label
    noise; ``log2`` default :data:`QMC_LOG2`). Where that part exceeds :data:`SPLIT_SHARE` of ``V`` (small
    weights, large ``eta``), the whole ``V`` comes from the cubature instead (``2^QMC_FULL`` points): there
    ``F1`` and ``F2`` cancel in the directions that matter and the separate terms' errors do not. Between
    half that share and the share the two are blended linearly, so that ``V`` stays continuous in the state.
    ``split=False``: the whole ``Cov(F)`` by the cubature always (``2^QMC_FULL`` points by default).
    Fluctuations of ``|x|^2 / N`` and of the cross products of a batch enter at O(N^-1/2) and are
    left out. With ``return_mean``, also the cubature's mean of ``F`` (equal to ``system.rhs(y)`` up
    to the cubature error: a check). ``moments``: :func:`_delta_moments` at ``y`` when the caller has them.
    """
    args = _increment_args(system, y)
    d, b = args[-1], system.dynamics.batch
    weight = 0.0  # of the split
    if split:
        V1, m1, m2, rest = linear_noise(system, y, moments)
        weight, mean, V = 1.0, m1 + m2, V1
        if rest.size:
            dm, (cross, second) = _cubature(system, args, np.stack((m1, m2)), QMC_LOG2 if log2 is None else log2, rest)
            share = max(np.abs(cross).max(), np.abs(second).max()) / max(np.abs(V1).max(), 1e-300)
            weight = min(1.0, max(0.0, 2.0 - share / SPLIT_SHARE * 2.0))  # 1 up to SPLIT_SHARE / 2, 0 from SPLIT_SHARE
            V[:, rest] += cross
            V[rest, :] += cross.T
            V[np.ix_(rest, rest)] += second
            mean += dm
    if weight < 1.0:  # the whole V by the cubature, blended in where the share is between SPLIT_SHARE / 2 and SPLIT_SHARE
        rhs = system.rhs(y)
        dm, Vc = _cubature(system, args, np.stack((rhs, np.zeros(d))), QMC_FULL if log2 is None else log2)
        V = Vc if weight == 0.0 else weight * V + (1.0 - weight) * Vc
        mean = rhs + dm if weight == 0.0 else weight * mean + (1.0 - weight) * (rhs + dm)
    if weight > 0.0:
        V = _psd(V)
    return (V / b, mean) if return_mean else V / b


def _cubature(system, args, shift, log2, rest=None):
    """The cubature of :func:`noise_covariance` over ``2^log2`` points: ``(mean - shift, Cov(F))``, or with
    ``rest`` (the entries where ``F2`` is not zero) ``(mean - shift, (Cov(F1, F2), Cov(F2)))``."""
    G, S = args[1], args[2]
    L = _field_factor(G, S, system.T)
    noisy = system.dynamics.sigma > 0
    Z = _normal_points(L.shape[1] + noisy, log2)
    n, split = Z.shape[0], rest is not None
    t1, t2, cross, second = 0.0, 0.0, 0.0, 0.0
    for lo in range(0, n, 2048):  # in chunks that stay in cache
        F, F2 = _increment_rows(Z[lo:lo + 2048], L, noisy, shift, split, *args)
        t1 = t1 + F.sum(axis=0)
        if split:
            F2 = np.ascontiguousarray(F2[:, rest])
            t2 = t2 + F2.sum(axis=0)
            cross = cross + F.T @ F2
            second = second + F2.T @ F2
        else:
            second = second + F.T @ F
    dm1 = t1 / n
    if not split:
        return dm1, second / n - np.outer(dm1, dm1)
    dm2 = t2 / n
    dm = dm1.copy()
    dm[rest] += dm2
    return dm, (cross / n - np.outer(dm1, dm2), second / n - np.outer(dm2, dm2))


def _psd(V):
    """``V`` with its negative eigenvalues set to 0, where it has any beyond rounding: the sum of the closed
    form and the cubature's terms is positive semi-definite only up to the cubature's error, which in a
    degenerate direction (a symmetry of the state) can leave an eigenvalue of -1e-6 x ``|V|``."""
    scale = max(float(np.abs(V).max()), 1e-300)
    try:
        np.linalg.cholesky(V + 1e-12 * scale * np.eye(V.shape[0]))
        return V
    except np.linalg.LinAlgError:
        w, U = np.linalg.eigh(V)
        return (U * np.maximum(w, 0.0)) @ U.T


def _linear_map(system: OdeSystem, st, C, d):
    """``(d, K, r + M)``: the state's increment ``F1`` as a linear function of ``P = delta x^T``
    (``x = (s, u)``), as :func:`_increment_rows` builds it."""
    K, M = system.K, system.M
    r = C.shape[1]
    dyn = system.dynamics
    Mm = np.zeros((d, K, r + M))
    nq = r * (r + 1) // 2
    if dyn.trains_n:
        a, b = triu_indices(r)
        rows = np.arange(nq)
        Mm[rows, :, b] -= dyn.eta * C[:, a].T  # -eta (dd_a s_b + s_a dd_b), dd = C^T delta
        Mm[rows, :, a] -= dyn.eta * C[:, b].T
        a, m = np.divmod(np.arange(r * M), M)
        Mm[nq + np.arange(r * M), :, r + m] = -dyn.eta * C[:, a].T  # -eta dd_a u_m
    off = nq + r * M
    if system.form == "modes" and "lam" in dyn.train:  # -eta_lam sum_i A_imu delta_i s_mu
        Mm[off + np.arange(r), :, np.arange(r)] = -dyn.eta_lam * st["A"].T
        off += r
    if system.form == "modes" and "A" in dyn.train:  # -eta_A lam_mu delta_i s_mu
        i, mu = np.divmod(np.arange(K * r), r)
        Mm[off + np.arange(K * r), i, mu] = -dyn.eta_A * st["lam"][mu]
    return Mm


def linear_noise(system: OdeSystem, y, moments=None):
    """The part of :func:`noise_covariance` in closed form (theory/finite_size.md eq. V1).

    Returns ``(V1, m1, m2, rest)``: ``V1 = Cov(F1)`` (not divided by the batch), the means of ``F1``
    and of the rest ``F2``, and the state entries where ``F2`` is not zero. ``F1 = M vec(P)`` with
    ``P_ij = delta_i x_j`` (:func:`_linear_map`), and by Stein's lemma on ``x`` and Price's theorem
    ``E[delta_i x_j delta_k x_l] = Cov(x_j, x_l) D_ik + 2 sum_pq Cov(x_j, z_p) Cov(x_l, z_q) dD_ik/dSig_pq``
    (``z = (h, u)``; ``dD/dSig``: :func:`~onlinemdl.ode.derivatives.field_average_derivatives`).
    ``moments``: :func:`_delta_moments` at ``y`` when the caller has them.
    """
    y = np.asarray(y, float)
    G, C, st, Sig, parts, Cf, Chf, mP = _delta_moments(system, y) if moments is None else moments
    dyn = system.dynamics
    K, M, r, d = system.K, system.M, G.shape[0], y.size
    D, Ig, gD = parts[2], parts[3], parts[6]
    W = np.matmul(Chf.T, np.matmul(gD, Chf))  # (K, K, nx, nx): [i, k, j, l]
    nx = r + M
    second = (D[:, None, :, None] * Cf[None, :, None, :] + 2.0 * W.transpose(0, 2, 1, 3)).reshape(K * nx, K * nx)
    Mm = _linear_map(system, st, C, d).reshape(d, K * nx)
    mflat = mP.ravel()
    V1 = Mm @ (second - np.outer(mflat, mflat)) @ Mm.T
    m2 = np.zeros(d)
    rest = []
    if dyn.trains_n:
        nq = r * (r + 1) // 2
        m2[:nq] = (dyn.eta**2 / dyn.batch * C.T @ D @ C)[triu_indices(r)]
        rest += range(nq)
    if "v" in dyn.train:
        m2[d - K:] = -dyn.eta_v * Ig
        rest += range(d - K, d)
    m1 = system.rhs(y) - m2
    return (V1 + V1.T) / 2, m1, m2, np.array(rest, dtype=np.int64)


# --------------------------------------------------------------------------------------
# The O(1/N) part of the exact mean step
# --------------------------------------------------------------------------------------
def _delta_moments(system, y):
    """At the state ``y``: ``G``, ``C``, the state dict, the covariance ``Sig`` of ``z = (h, u)``, the averages
    and their derivatives there (:func:`~onlinemdl.ode.derivatives.field_average_derivatives`), the
    covariance ``Cf`` of ``x = (s, u)``, ``Chf = Cov(z, x)`` and ``E[delta x^T]`` (K, r + M)."""
    G, S, C, st = _structure(system, y)
    K, M, r = system.K, system.M, G.shape[0]
    Sig = joint_covariance(C @ G @ C.T, C @ S, system.T)
    c = np.ascontiguousarray(np.concatenate((st["v"], -system.vt)))
    parts = field_average_derivatives(Sig, K, c, system.dynamics.sigma, system.act)
    Cf = joint_covariance(G, S, system.T)
    Hmap = np.zeros((K + M, r + M))
    Hmap[:K, :r], Hmap[K:, r:] = C, np.eye(M)
    Chf = Hmap @ Cf
    return G, C, st, Sig, parts, Cf, Chf, parts[0] @ Chf - parts[1][:, None] * Chf[:K]


def finite_n_drift(system: OdeSystem, y, J=None, moments=None) -> np.ndarray:
    """``f_1(y)``: the exact finite-N mean step is ``(rhs + f_1 / N) / N`` per step (Gram chain).

    Only the Gram block (``Q`` or ``Rm``) of the exact chain has an O(1/N^2) mean per step:
    ``eta^2 kappa^2 G + eta^2 kappa (X + X^T) + (eta^2/b) E[d d^T (|z|^2 - r)]
    + eta^2 (b-1)/b m m^T`` with ``X = E[d s^T]``, ``E[d d^T (|z|^2 - r)] = 2 d/dt E_{t Sigma}[d d^T]``
    at ``t = 1`` (Price's theorem; the label noise is not scaled) and ``m m^T = E[d f^T]
    Cov(f)^+ E[f d^T]`` (the cross products of two samples of a batch), with ``d/dt E_{t Sigma}[d d^T] =
    sum_pq Sigma_pq dE[d d^T]/dSigma_pq`` from the closed-form gradient. To it is added
    ``-J f / 2``: N Euler steps of size 1/N follow the flow of ``f + (f_1 - J f / 2) / N``.
    ``J`` (the Jacobian at ``y``) and ``moments`` (:func:`_delta_moments`) are computed when not given.
    """
    y = np.asarray(y, float)
    dyn = system.dynamics
    out = np.zeros(y.size)
    if dyn.trains_n:
        eta, kappa, b = dyn.eta, dyn.weight_decay, dyn.batch
        G, C, _, Sig, parts, Cf, _, mP = _delta_moments(system, y) if moments is None else moments
        r, gD = G.shape[0], parts[6]
        dY = C.T @ mP  # E[d (s, u)^T], r x (r + M)
        X = dY[:, :r]
        ddz = 2.0 * C.T @ np.einsum("abpq,pq->ab", gD, Sig) @ C  # 2 d/dt E_{t Sig}[d d^T] at t = 1 = 2 gD : Sig
        f1G = eta**2 * kappa**2 * G + eta**2 * kappa * (X + X.T) + eta**2 / b * ddz
        if b > 1:
            f1G = f1G + eta**2 * (b - 1) / b * dY @ np.linalg.pinv(Cf, rcond=1e-12, hermitian=True) @ dY.T
        out[:r * (r + 1) // 2] = f1G[triu_indices(r)]
    if J is None:
        J = system.jacobian(y)
    return out - 0.5 * J @ system.rhs(y)


def _directions(Sigma, cutoff):
    """Weights ``w`` and unit directions ``U`` (d, m) with ``Sigma = U diag(w) U^T`` for a symmetric PSD
    ``Sigma``, all but ``cutoff`` of its trace kept: the columns of its Cholesky factor (a jitter of 1e-13 x
    its largest entry makes a singular ``Sigma`` definite), or its eigenvectors where that fails. Any such
    factor gives ``H : Sigma = sum_i w_i u_i^T H u_i``; the Cholesky factor costs a tenth of an eigensolve."""
    S_ = (Sigma + Sigma.T) / 2
    scale = float(np.max(np.abs(S_)))
    if scale == 0.0:
        return np.zeros(0), np.zeros((S_.shape[0], 0))
    try:
        L = np.linalg.cholesky(S_ + 1e-13 * scale * np.eye(S_.shape[0]))
        w = np.sum(L * L, axis=0)
        U = L / np.sqrt(w)
    except np.linalg.LinAlgError:
        w, U = np.linalg.eigh(S_)
        w = np.maximum(w, 0.0)
    order = np.argsort(w)[::-1]
    n = int(np.searchsorted(np.cumsum(w[order]), (1 - cutoff) * w.sum())) + 1
    keep = order[:min(n, w.size)]
    return w[keep], U[:, keep]


def hessian_contraction(f_many, y, Sigma, J=None, rel_step: float | None = None, cutoff: float = 1e-4) -> np.ndarray:
    """``H : Sigma = sum_jk d^2 f / dy_j dy_k Sigma_jk`` for a symmetric PSD ``Sigma``, by finite
    differences along the directions of :func:`_directions` (all but ``cutoff`` of its trace): central
    second differences, or, given the Jacobian ``J`` at ``y``, the one-sided
    ``2 (f(y + h e) - f(y) - h J e) / h^2`` (half the evaluations). ``h = rel_step max(1, |y|)``,
    ``rel_step`` 1e-4 by default (with the closed-form ``J``: within 2e-5 of the exact contraction on the
    cases of ``benchmarks/bench_fluctuations.py``). ``f_many`` maps the rows of an array
    (:meth:`OdeSystem.rhs_many`)."""
    w, U = _directions(Sigma, cutoff)
    rel_step = 1e-4 if rel_step is None else rel_step
    h = rel_step * max(1.0, float(np.max(np.abs(y))))
    E = h * U.T
    m = E.shape[0]
    if J is None:
        values = f_many(np.concatenate((y[None], y + E, y - E)))
        return w @ (values[1:m + 1] + values[m + 1:] - 2 * values[0]) / (h * h)
    values = f_many(np.concatenate((y[None], y + E)))
    return 2 * w @ (values[1:] - values[0] - E @ J.T) / (h * h)


# --------------------------------------------------------------------------------------
# Propagation along the ODE
# --------------------------------------------------------------------------------------
def _lyap(J, V):
    """``J V + V J^T``."""
    JV = J @ V
    return JV + JV.T


def _norm1(J) -> float:
    """``||J||_1``, the largest column sum of ``|J|``."""
    return float(np.abs(J).sum(axis=0).max())


def _halvings(J, h) -> int:
    """How often to halve ``h`` so that ``h ||J||_1 <= 1/2``: the Taylor series of :func:`_taylor_step`,
    :func:`_horner_sigma` and :func:`_horner_bias` then converge like ``1/k!`` and without cancellation (for
    large ``h ||J||`` their terms would grow before they fall and swamp the result in rounding errors)."""
    return max(0, math.ceil(math.log2(max(2.0 * h * _norm1(J), 1.0))))


@njit(cache=True)
def _taylor_step(J, V, hs, halvings):
    """``Phi = e^{hs J}`` and ``Q = int_0^hs e^{tJ} V e^{tJ^T} dt`` for ``hs ||J||_1 <= 1/2``, from their
    Taylor series ``sum_k (hs J)^k / k!`` and ``sum_k hs^(k+1) L^k V / (k+1)!`` (``L X = J X + X J^T``,
    which keeps ``X`` symmetric: one product per term), each summed until its terms reach rounding; then
    doubled ``halvings`` times, ``Q(2t) = Q(t) + Phi(t) Q(t) Phi(t)^T``, ``Phi(2t) = Phi(t)^2``.
    Returns ``Phi`` and ``Q`` over ``hs 2^halvings``."""
    d = J.shape[0]
    Jh = hs * J
    Phi = np.eye(d) + Jh
    term = Jh.copy()
    for k in range(2, 40):
        term = (term @ Jh) / k
        Phi += term
        if np.abs(term).max() <= 1e-17 * np.abs(Phi).max():
            break
    X = hs * V
    Q = X.copy()
    for k in range(1, 40):
        JX = Jh @ X
        X = (JX + JX.T) / (k + 1)
        Q += X
        if np.abs(X).max() <= 1e-17 * np.abs(Q).max():
            break
    for i in range(halvings):
        Q = Q + (Phi @ Q) @ Phi.T
        Phi = Phi @ Phi
    return Phi, Q


def _terms(x) -> int:
    """Terms of a Taylor series of ``e^x``-like growth that reach rounding (``x^n / n! <= 1e-17``)."""
    n, term = 1, x
    while term > 1e-17:
        n += 1
        term *= x / n
    return n


@njit(cache=True)
def _horner_sigma(J, V, S0, h, n):
    """``e^{hL} S0 + int_0^h e^{tL} V dt = sum_k L^k (h^k / k! S0 + h^(k+1) / (k+1)! V)`` (``L X = J X + X J^T``)
    by Horner's scheme over ``n`` terms: one product per term, where Phi and Q would take two."""
    a = np.empty(n + 1)
    a[0] = 1.0
    for k in range(1, n + 1):
        a[k] = a[k - 1] * h / k
    P = a[n] * S0 + a[n] * h / (n + 1) * V
    for k in range(n - 1, -1, -1):
        JP = J @ P
        P = JP + JP.T + a[k] * S0 + a[k] * h / (k + 1) * V
    return P


@njit(cache=True)
def _horner_bias(J, b0, s, h, halvings, n):
    """``e^{hJ} b0 + int_0^h e^{tJ} s dt`` in ``2^halvings`` sub-steps ``hs`` (``hs ||J||_1 <= 1/2``), each
    ``sum_k J^k (hs^k / k! b + hs^(k+1) / (k+1)! s)`` by Horner's scheme over ``n`` terms: matrix-vector
    products only."""
    hs = h / 2.0**halvings
    a = np.empty(n + 1)
    a[0] = 1.0
    for k in range(1, n + 1):
        a[k] = a[k - 1] * hs / k
    b = b0.copy()
    for _ in range(2**halvings):
        P = a[n] * b + a[n] * hs / (n + 1) * s
        for k in range(n - 1, -1, -1):
            P = J @ P + a[k] * b + a[k] * hs / (k + 1) * s
        b = P
    return b


def _step(J1, J2, V1, V2, h, Sigma0):
    """One step of :func:`propagate` over ``h`` for ``Sigma`` from ``Sigma0``, from ``J`` and ``V`` at the
    step's two Gauss-Legendre points (:func:`_gauss_weights`): the fourth-order Magnus integrator
    (theory/finite_size.md eq. P1), exact for the step's constant ``J``, ``V``:
    ``Sigma_1 = e^{hL} Sigma_0 + int_0^h e^{tL} V dt`` (``L X = J X + X J^T``). Where ``h ||J||_1 <= 1``
    by Horner's scheme (:func:`_horner_sigma`); over longer steps ``Phi = e^{hJ}`` and
    ``Q = int_0^h e^{tJ} V e^{tJ^T} dt`` over ``h / 2^m`` (:func:`_halvings`), doubled ``m`` times
    (:func:`_taylor_step`), and ``Sigma_1 = Phi Sigma_0 Phi^T + Q``. Returns ``Sigma_1`` and the step's ``J``."""
    c = _MAGNUS * h
    J = 0.5 * (J1 + J2) + c * (J2 @ J1 - J1 @ J2)
    V = 0.5 * (V1 + V2) + c * (_lyap(J2, V1) - _lyap(J1, V2))
    x = 2 * h * _norm1(J)  # a bound on ||h L||
    if x <= 2.0:  # terms up to 2^k / k! <= 2: no cancellation to fear
        S = _horner_sigma(J, V, np.ascontiguousarray(Sigma0, dtype=float), h, _terms(x))
    else:
        halvings = _halvings(J, h)
        Phi, Q = _taylor_step(J, V, h / 2**halvings, halvings)
        S = Phi @ Sigma0 @ Phi.T + Q
    return (S + S.T) / 2, J


def _bias_step(J, b0, s, h):
    """``b`` over one step from ``b0`` for the step's ``J`` (:func:`_step`) and forcing ``s``
    (:func:`_mean_forcing`): ``e^{hJ} b0 + int_0^h e^{tJ} s dt`` (:func:`_horner_bias`)."""
    return _horner_bias(J, np.asarray(b0, float), np.asarray(s, float), h, _halvings(J, h), _terms(0.5))


def _mean_forcing(J1, J2, s1, s2, h):
    """The step's bias forcing from ``J`` and ``s`` at its Gauss-Legendre points:
    ``(s1 + s2) / 2 + sqrt(3) h / 12 (J2 s1 - J1 s2)`` (Magnus term of eq. P1)."""
    return 0.5 * (s1 + s2) + _MAGNUS * h * (J2 @ s1 - J1 @ s2)


def _lagrange(nodes, k, t):
    """Stencil start ``lo`` and weights (len(t), m) of the polynomial through ``m = min(4, n)`` consecutive
    nodes around the interval ``[nodes[k], nodes[k + 1]]``, evaluated at the times ``t`` in it: a node
    quantity's values at ``t`` are ``weights @ values[lo:lo + m]``. Of the stencils that contain the
    interval, the one with the smallest weights (its nodes least clustered: large weights would amplify
    the node values' own errors)."""
    n = len(nodes)
    m = min(4, n)
    t = np.atleast_1d(np.asarray(t, float))
    starts = np.arange(max(0, k + 2 - m), min(k, n - m) + 1)
    X = np.asarray(nodes, float)[starts[:, None] + np.arange(m)]  # (stencils, m)
    off = ~np.eye(m, dtype=bool)
    num = np.prod(np.where(off, (t[:, None] - X[:, None, :])[:, :, None, :], 1.0), axis=-1)  # prod_{i != j} (t - x_i)
    den = np.prod(np.where(off, X[:, :, None] - X[:, None, :], 1.0), axis=-1)  # prod_{i != j} (x_j - x_i)
    W = num / den[:, None, :]
    best = int(np.argmin(np.abs(W).sum(axis=-1).max(axis=-1) * (1 + 1e-12 * np.arange(starts.size))))  # ties: leftmost
    return int(starts[best]), W[best]


def _gauss_weights(nodes):
    """Per step ``k``, the stencil and weights (:func:`_lagrange`) that give a node quantity at the step's
    two Gauss-Legendre points ``nodes[k] + (1/2 -+ sqrt(3)/6) h``: the cubic through four nearby nodes (eq. P2),
    accurate to O(h^4) as the fourth-order Magnus step needs."""
    return [_lagrange(nodes, k, nodes[k] + _GAUSS * (nodes[k + 1] - nodes[k])) for k in range(len(nodes) - 1)]


def _at(weights, values):
    """A node quantity (``values[j]`` at node ``j``) at the points of ``weights = (lo, W)``."""
    lo, W = weights
    return np.tensordot(W, np.asarray(values[lo:lo + W.shape[1]]), 1)


def propagate(system: OdeSystem, nodes, ys, N: int, Sigma0=None, b0=None, bias: bool = True,
              log2: int | None = None, noise=None, jacobians=None):
    """``Sigma`` and ``b`` at the ``nodes`` (increasing alpha) of an ODE solution ``ys``.

    ``Sigma0``, ``b0``: their initial values (default 0: runs started from the very networks
    of the ODE). Each step is the fourth-order Magnus integrator (theory/finite_size.md eq. P1) of the
    linear systems for ``Sigma`` and ``b``, with ``J``, ``V`` and the forcing ``s = H:Sigma/2 + f_1`` of
    ``b`` at the step's two Gauss-Legendre points from the cubics through their four nearest node values
    (eq. P2). It is exact for constant coefficients (matrix exponentials), so stiff systems need no small
    steps, and its error falls like ``h^4``. ``b`` follows once ``Sigma`` is known at every node: its
    forcing needs ``Sigma``, and its cubics need the forcing two nodes ahead.
    ``noise``, ``jacobians``: the node values of ``V`` and ``J`` when the caller has them (default:
    computed here).
    Returns ``(Sigma, b)`` of shapes (n, d, d) and (n, d); ``b`` is zero when ``bias`` is False.
    """
    nodes, ys = np.asarray(nodes, float), np.asarray(ys, float)
    n, d = ys.shape
    Sig = np.zeros((n, d, d))
    bb = np.zeros((n, d))
    Sig[0] = 0 if Sigma0 is None else Sigma0
    bb[0] = 0 if b0 is None else b0
    Js = [system.jacobian(y) for y in ys] if jacobians is None else list(jacobians)
    shared = noise is None or (bias and system.dynamics.trains_n)  # V and the drift share the field moments
    moments = [_delta_moments(system, y) if shared else None for y in ys]
    Vs = [noise_covariance(system, y, log2, moments=m) for y, m in zip(ys, moments)] if noise is None else noise
    gauss = _gauss_weights(nodes)
    Jg = [_at(weights, Js) for weights in gauss]  # J at each step's two Gauss points
    Jbar = []
    for k in range(n - 1):
        V1, V2 = _at(gauss[k], Vs)
        Sig[k + 1], J = _step(*Jg[k], V1, V2, nodes[k + 1] - nodes[k], Sig[k])
        Jbar.append(J)
    if not bias:
        return Sig, bb
    forcing = np.array([finite_n_drift(system, y, J, m) + (0.5 * hessian_contraction(system.rhs_many, y, S, J)
                                                            if np.any(S) else 0.0)
                        for y, J, m, S in zip(ys, Js, moments, Sig)])  # s = H:Sigma / 2 + f_1
    for k in range(n - 1):
        h = nodes[k + 1] - nodes[k]
        s1, s2 = _at(gauss[k], forcing)
        bb[k + 1] = _bias_step(Jbar[k], bb[k], _mean_forcing(*Jg[k], s1, s2, h), h)
    return Sig, bb


# --------------------------------------------------------------------------------------
# Observables
# --------------------------------------------------------------------------------------
def _batch_state(system: OdeSystem, Y):
    """Q (n, K, K), R (n, K, M), v (n, K) of a batch of state vectors Y (n, d)."""
    Y = np.atleast_2d(Y)
    n, K, M = Y.shape[0], system.K, system.M
    train = system.train

    def sym(off, r):
        iu = triu_indices(r)
        X = np.zeros((n, r, r))
        X[:, iu[0], iu[1]] = Y[:, off:off + iu[0].size]
        X[:, iu[1], iu[0]] = Y[:, off:off + iu[0].size]
        return X, off + iu[0].size

    if system.form == "modes":
        p = system.p
        G, off = sym(0, p)
        S = Y[:, off:off + p * M].reshape(n, p, M)
        off += p * M
        lam = np.broadcast_to(system.lam, (n, p))
        if "lam" in train:
            lam, off = Y[:, off:off + p], off + p
        A = np.broadcast_to(system.A, (n, K, p))
        if "A" in train:
            A, off = Y[:, off:off + K * p].reshape(n, K, p), off + K * p
        C = A * lam[:, None, :]
        Q, R = np.einsum("nia,nab,njb->nij", C, G, C), np.einsum("nia,nam->nim", C, S)
    else:
        Q, off = sym(0, K)
        R = Y[:, off:off + K * M].reshape(n, K, M)
        off += K * M
    v = Y[:, off:off + K] if "v" in train else np.broadcast_to(system.v, (n, K))
    return Q, R, v


def _I2(C, da, db, act):
    if act == LINEAR:
        return C
    return (2 / np.pi) * np.arcsin(np.clip(C / np.sqrt((1 + da[..., :, None]) * (1 + db[..., None, :])), -1, 1))


def _observables(system: OdeSystem, Y):
    """eps_g (n,) and the entries of Q, R (n, K*K + K*M) for a batch of state vectors Y (n, d)."""
    Q, R, v = _batch_state(system, Y)
    T, vt, act = system.T, system.vt, system.act
    dq, dt = np.einsum("nii->ni", Q), np.diag(T)
    e = 0.5 * (np.einsum("ni,nij,nj->n", v, _I2(Q, dq, dq, act), v) + vt @ _I2(T, dt, dt, act) @ vt
               - 2 * np.einsum("ni,nim,m->n", v, _I2(R, dq, dt, act), vt))
    return e, np.concatenate((Q.reshape(len(Q), -1), R.reshape(len(R), -1)), axis=1)


def eps_g_moments(system: OdeSystem, ys, Sigmas, bs, N: int, rel_step: float = 1e-4):
    """Predicted moments across runs at the states ``ys`` (n, d) with ``Sigmas`` (n, d, d) and
    ``bs`` (n, d): ``(eps_sd, eps_bias, qr_sd, qr_bias)`` of shapes (n,), (n,), (n, nq), (n, nq).

    ``eps_sd = sqrt(grad e . Sigma grad e / N)``, ``eps_bias = (grad e . b + tr(Hess e Sigma)/2) / N``
    for ``e`` = eps_g of the state (label noise excluded); the same for the ``nq`` entries of ``Q``
    and ``R`` (flattened, ``Q`` first; linear in the state except for trained ``A``, ``lam``).
    With ``Sigma = sum_i w_i u_i u_i^T`` (:func:`_directions`), ``grad e . Sigma grad e = sum_i w_i
    (grad e . u_i)^2`` and ``tr(Hess e Sigma) = sum_i w_i u_i^T Hess e u_i``: central first and second
    differences along each ``u_i`` and along ``b`` (step ``rel_step`` x the state's scale), all states'
    evaluations in one batch.
    """
    ys = np.atleast_2d(np.asarray(ys, float))
    n, d = ys.shape
    h = rel_step * np.maximum(1.0, np.max(np.abs(ys), axis=1))
    rows, parts = [], []
    for y, S_, b, hk in zip(ys, Sigmas, bs, h):  # per state: y, y +- h u_i, y +- h b / |b|
        w, U = _directions(S_, 1e-6)
        nb = float(np.linalg.norm(b))
        P = np.concatenate((U, b[:, None] / nb), axis=1).T * hk if nb > 0 else U.T * hk
        rows.append(np.concatenate((y[None], y + P, y - P)))
        parts.append((w, nb))
    e_all, qr_all = _observables(system, np.concatenate(rows))
    nq = qr_all.shape[1]
    eps_sd, eps_bias, qr_sd, qr_bias = np.zeros(n), np.zeros(n), np.zeros((n, nq)), np.zeros((n, nq))
    lo = 0
    for k, (w, nb) in enumerate(parts):
        m, p = w.size, w.size + (nb > 0)
        e, qr = e_all[lo:lo + 1 + 2 * p], qr_all[lo:lo + 1 + 2 * p]
        lo += 1 + 2 * p
        de, dqr = (e[1:p + 1] - e[p + 1:]) / (2 * h[k]), (qr[1:p + 1] - qr[p + 1:]) / (2 * h[k])  # along u_i (and b)
        he = w @ (e[1:m + 1] + e[p + 1:p + 1 + m] - 2 * e[0]) / h[k] ** 2
        hqr = w @ (qr[1:m + 1] + qr[p + 1:p + 1 + m] - 2 * qr[0]) / h[k] ** 2
        eps_sd[k] = math.sqrt(w @ de[:m] ** 2 / N)
        qr_sd[k] = np.sqrt(w @ dqr[:m] ** 2 / N)
        eps_bias[k] = (nb * de[m:].sum() + 0.5 * he) / N
        qr_bias[k] = (nb * dqr[m:].sum(axis=0) + 0.5 * hqr) / N
    return eps_sd, eps_bias, qr_sd, qr_bias


def validity(ys, Sigma, N: int, T, tol: float = 0.1, b=None, bias_tol: float = 0.2) -> np.ndarray:
    """Per node, whether the expansion holds: every state entry's predicted standard deviation
    ``sqrt(Sigma_jj / N)`` stays below ``tol`` times the scale ``max(1, max_n T_nn)`` and, given the
    bias ``b``, its O(1/N) shift ``|b_j| / N`` below ``bias_tol`` times that standard deviation (the
    next order of the expansion small against the first; theory/finite_size.md §6)."""
    scale = max(1.0, float(np.max(np.diag(T))))
    var = np.maximum(np.einsum("kjj->kj", Sigma), 0.0)
    ok = np.all(np.sqrt(var / N) <= tol * scale, axis=1)
    if b is not None:
        noisy = var > 1e-12 * np.maximum(1.0, var.max(axis=1, keepdims=True))
        ratio = np.abs(b) / np.sqrt(N * np.where(noisy, var, 1.0))
        ok &= np.all(np.where(noisy, ratio, 0.0) <= bias_tol, axis=1)
    return ok


def initial_covariance(system: OdeSystem, y0, N: int, scale2: float) -> np.ndarray:
    """``Sigma(0)`` of runs whose N-dimensional weights are drawn afresh with i.i.d. entries of
    variance ``scale2`` (a full student's ``Student.full(init="large", scale=sqrt(scale2))``,
    a mode student's fresh ``Xi``): ``N Cov(G_ab, G_cd) = scale2^2 (d_ac d_bd + d_ad d_bc)``,
    ``N Cov(S_an, S_bm) = scale2 d_ab T_nm``, no G-S covariance. Other blocks are fixed."""
    G, S, C, st = _structure(system, y0)
    r, M = G.shape[0], system.M
    d = np.asarray(y0).size
    Sig = np.zeros((d, d))
    iu = list(zip(*triu_indices(r)))
    for x, (a, b) in enumerate(iu):
        for z, (c, e) in enumerate(iu):
            Sig[x, z] = scale2**2 * (int(a == c and b == e) + int(a == e and b == c))
    nq = len(iu)
    for a in range(r):
        for b in range(r):
            if a == b:
                Sig[nq + a * M:nq + (a + 1) * M, nq + b * M:nq + (b + 1) * M] = scale2 * system.T
    return Sig


def node_grid(sol, alpha, per_decade: int = 5, dy_tol: float = 0.05, max_depth: int = 6,
              max_outputs: int = 40) -> np.ndarray:
    """Nodes of :func:`propagate` for the output times ``alpha`` of the ODE solution ``sol`` (dense).

    ``per_decade`` log-spaced times from the first positive output (or ``alpha_max / 100``) to
    the last, the first and the last output, all outputs when there are at most
    ``max_outputs`` (a log-spaced time within a quarter of its spacing of one of those is left out:
    :func:`_lagrange` needs nodes that do not cluster), and points inserted by bisection (up to
    ``max_depth`` times) wherever the state moves by more than ``dy_tol`` x its scale between two nodes.
    """
    alpha = np.asarray(alpha, float)
    a0, a1 = alpha[0], alpha[-1]
    pos = alpha[alpha > a0]
    lo = min(pos[0] - a0, 1e-2 * (a1 - a0)) if pos.size else a1 - a0
    count = max(2, int(math.ceil(per_decade * math.log10(max((a1 - a0) / lo, 1.0)))) + 1)
    rel = np.geomspace(lo, a1 - a0, count)
    given = np.unique(np.concatenate(([a0, a1], alpha if alpha.size <= max_outputs else [])))
    spacing = rel * (1 - (lo / (a1 - a0)) ** (1 / (count - 1)))  # to the log-spaced time below
    apart = np.min(np.abs(a0 + rel[:, None] - given[None, :]), axis=1) > 0.25 * spacing
    base = np.unique(np.concatenate((given, a0 + rel[apart])))  # no log-spaced time next to a given one
    scale = max(1.0, float(np.max(np.abs(sol(a1)))), float(np.max(np.abs(sol(a0)))))
    nodes = [base[0]]
    for a, b in zip(base[:-1], base[1:]):
        stack = [(a, b, 0)]
        while stack:
            lo_, hi, depth = stack.pop()
            if depth < max_depth and np.max(np.abs(sol(hi) - sol(lo_))) > dy_tol * scale:
                mid = 0.5 * (lo_ + hi)
                stack += [(mid, hi, depth + 1), (lo_, mid, depth + 1)]
            else:
                nodes.append(hi)
    return np.array(nodes)


def refine_by_jacobian(system: OdeSystem, sol, nodes, jac_tol: float, y0=None, max_depth: int = 6):
    """``nodes`` with midpoints inserted (up to ``max_depth`` times) wherever the Magnus term of a step,
    ``h^2 ||[J(y_k+1), J(y_k)]||_F / 12``, exceeds ``jac_tol``: beyond it the step's Jacobian is not
    linear enough in alpha, and slow directions accumulate the error (theory/finite_size.md §4).
    Returns the nodes, the states ``sol(nodes)`` (``y0`` at the first) and the Jacobians there."""
    nodes = list(np.asarray(nodes, float))
    ys = [np.asarray(y0, float) if y0 is not None else sol(nodes[0])] + [sol(a) for a in nodes[1:]]
    Js = [system.jacobian(y) for y in ys]
    depth = [0] * len(nodes)
    k = 0
    while k < len(nodes) - 1:
        h = nodes[k + 1] - nodes[k]
        magnus = h * h / 12 * np.linalg.norm(Js[k + 1] @ Js[k] - Js[k] @ Js[k + 1])  # eq. P1
        if max(depth[k], depth[k + 1]) < max_depth and magnus > jac_tol:
            mid = 0.5 * (nodes[k] + nodes[k + 1])
            y = sol(mid)
            depth.insert(k + 1, max(depth[k], depth[k + 1]) + 1)
            nodes.insert(k + 1, mid), ys.insert(k + 1, y), Js.insert(k + 1, system.jacobian(y))
        else:
            k += 1
    return np.array(nodes), np.array(ys), Js


def _interpolation(nodes, alpha):
    """The plan of :func:`_interpolate` to the times ``alpha``: per run of consecutive outputs in one node
    interval, ``(outputs, lo, W)`` from :func:`_lagrange`."""
    alpha = np.asarray(alpha, float)
    k = np.clip(np.searchsorted(nodes, alpha, side="right") - 1, 0, len(nodes) - 2)
    cuts = np.flatnonzero(np.diff(k)) + 1
    return [(slice(a, b), *_lagrange(nodes, k[a], alpha[a:b]))
            for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [k.size])))]


def _interpolate(plan, values, geometric: bool = False):
    """Interpolation of ``values`` (n_nodes, ...) to the output times of ``plan`` (:func:`_interpolation`): the
    cubic through the four nodes nearest each output's interval, or with ``geometric`` (for variances) the
    cubic in ``log(value)`` where those four values are positive (exact for the exponential relaxation of a
    converging run; the plain cubic elsewhere). Not in log for signed quantities: near a zero crossing
    their logarithm bends sharply and its cubic overshoots."""
    values = np.asarray(values, float)
    n_out = plan[-1][0].stop
    out = np.empty((n_out,) + values.shape[1:])
    flat = out.reshape(n_out, -1)
    for at, lo, W in plan:
        v = values[lo:lo + W.shape[1]].reshape(W.shape[1], -1)
        np.matmul(W, v, out=flat[at])
        if geometric:
            positive = np.all(v > 0, axis=0)
            flat[at] = np.where(positive, np.exp(W @ np.log(np.where(positive, v, 1.0))), flat[at])
    return out


def predict(system: OdeSystem, y0, alpha, N: int, Sigma0=None, b0=None, bias: bool = True, rtol: float = 1e-8,
            atol: float = 1e-10, log2: int | None = None, dy_tol: float = 0.05, tol: float = 0.1,
            per_decade: int = 5, jac_tol: float = 3e-4, sol=None) -> dict:
    """The finite-N predictions at the output times ``alpha`` (starting at the initial state).

    Returns a dict: ``cov`` (n, d, d) = ``Sigma / N``, the covariance of the state vector across
    runs; ``bias`` (n, d) = ``b / N``; ``eps_g_sd``, ``eps_g_bias`` (n,); ``Q_sd``, ``Q_bias``
    (n, K, K), ``R_sd``, ``R_bias`` (n, K, M); ``valid_until``: the first output time where
    :func:`validity` fails (inf when it never does); ``nodes``: the propagation's nodes.
    The nodes: :func:`node_grid` (``per_decade``, ``dy_tol``), then :func:`refine_by_jacobian` (``jac_tol``),
    on the dense output ``sol`` of the ODE from ``y0`` to ``alpha[-1]`` (default: solved here by LSODA
    with ``rtol``, ``atol``).
    """
    from scipy.integrate import solve_ivp

    alpha = np.asarray(alpha, float)
    if alpha.ndim != 1 or alpha.size == 0 or np.any(np.diff(alpha) <= 0):
        raise ValueError("alpha must be a non-empty, strictly increasing sequence (the output times)")
    y0 = np.asarray(y0, float)
    if alpha[-1] > alpha[0]:
        if sol is None:
            sol = solve_ivp(lambda t, y: system.rhs(y), (alpha[0], alpha[-1]), y0, method="LSODA", rtol=rtol,
                            atol=atol, dense_output=True, jac=lambda t, y: system.jacobian(y)).sol
        nodes = node_grid(sol, alpha, per_decade, dy_tol)
        nodes, ys, Js = refine_by_jacobian(system, sol, nodes, jac_tol, y0=y0)
        Sig, bb = propagate(system, nodes, ys, N, Sigma0, b0, bias, log2, jacobians=Js)
    else:
        nodes, ys = alpha[:1], y0[None]
        Sig, bb = propagate(system, nodes, ys, N, Sigma0, b0, bias, log2)
    bad = np.nonzero(~validity(ys, Sig, N, system.T, tol, bb if bias else None))[0]
    valid_until = float(nodes[bad[0]]) if bad.size else math.inf
    K, M = system.K, system.M
    eps_sd, eps_bias, qr_sd, qr_bias = eps_g_moments(system, ys, Sig, bb, N)
    var, shift = (eps_sd ** 2, qr_sd ** 2), (eps_bias, qr_bias)
    if nodes.size > 1:  # outputs between nodes: cubics, in log for the observables' variances
        plan = _interpolation(nodes, alpha)
        Sig, bb = _interpolate(plan, Sig), _interpolate(plan, bb)
        var = tuple(_interpolate(plan, x, geometric=True) for x in var)
        shift = tuple(_interpolate(plan, x) for x in shift)
    n = alpha.size
    qs, qb = np.sqrt(np.maximum(var[1], 0.0)), shift[1]
    out = dict(cov=Sig / N, bias=bb / N, eps_g_sd=np.sqrt(np.maximum(var[0], 0.0)), eps_g_bias=shift[0],
               Q_sd=qs[:, :K * K].reshape(n, K, K), R_sd=qs[:, K * K:].reshape(n, K, M),
               Q_bias=qb[:, :K * K].reshape(n, K, K), R_bias=qb[:, K * K:].reshape(n, K, M), nodes=nodes)
    out["valid_until"] = valid_until
    return out


# --------------------------------------------------------------------------------------
# Escape from a saddle (the symmetric plateau)
# --------------------------------------------------------------------------------------
def first_below(alpha, eps, level) -> np.ndarray:
    """Per row of ``eps`` (replicas, n), the first ``alpha`` where it falls below ``level`` (NaN: never)."""
    eps = np.atleast_2d(eps)
    below = eps < level
    idx = np.argmax(below, axis=1)
    return np.where(below.any(axis=1), np.asarray(alpha)[idx], np.nan)


def escape_times(alpha, eps, level, window: float) -> np.ndarray:
    """Plateau lengths of runs: per row of ``eps`` (replicas, n) on the (nearly) evenly spaced ``alpha``, the
    first ``alpha`` where eps_g averaged over a centred window of ``window`` (in alpha) falls below
    ``level`` (NaN: never). The average removes the fast O(N^-1/2) fluctuations of eps_g across
    the level, which would otherwise decide the crossing at small N (theory/finite_size.md §7)."""
    from scipy.ndimage import uniform_filter1d

    alpha = np.asarray(alpha, float)
    steps = np.diff(alpha)
    if steps.size and not np.allclose(steps, steps.mean(), rtol=0.1, atol=0):  # SGD records at whole steps
        raise ValueError("alpha must be evenly spaced")
    width = 1 + 2 * int(round(0.5 * window / steps.mean())) if steps.size else 1
    return first_below(alpha, uniform_filter1d(np.atleast_2d(eps), width, axis=1, mode="nearest"), level)


def _unstable_space(fp):
    """Right basis ``U`` (d, m) and biorthogonal left basis ``L`` (m, d) of the eigenvalue ``mu_max``
    of the fixed point's Jacobian (degenerate for K > 2): the null spaces of ``J - mu`` and its transpose."""
    A_ = fp.jacobian - fp.mu_max * np.eye(fp.y.size)
    sv_r, sv_l = np.linalg.svd(A_), np.linalg.svd(A_.T)
    m = max(1, int(np.sum(sv_r[1] < 1e-5 * max(1.0, float(sv_r[1][0])))))
    U, Lnull = sv_r[2][-m:].T, sv_l[2][-m:]
    return U, np.linalg.solve(Lnull @ U, Lnull)


def escape_distribution(system: OdeSystem, y0, N: int, fp=None, level: float = 0.5, window: float | None = None,
                        alpha_max: float | None = None, samples: int = 500, seed: int = 0) -> dict:
    """Predicted distribution of the plateau length of SGD runs at dimension N started from the state
    ``y0``: the :func:`escape_times` (level ``level`` x eps_g at the saddle ``fp``, default
    :func:`~onlinemdl.ode.symmetric_fixed_point`; centred average over ``window``, default
    ``1 / (2 mu)``) of runs near the saddle.

    The runs' states at a reference time ``alpha_r`` are Gaussian: mean the ODE's state plus the
    bias ``b / N``, covariance ``Sigma(alpha_r) / N`` (:func:`propagate`) plus the noise that the unstable directions
    will still amplify, ``U (L V L^T / (2 mu)) U^T / N`` (``U``, ``L``: right and left eigenvectors of
    the unstable eigenvalue ``mu``, all of its eigenspace; ``V`` the noise at ``alpha_r``).
    ``alpha_r`` is where that unstable variance, discounted by ``e^{2 mu alpha}``, is largest
    (the noise has been gathered and not yet outgrown by the flow) before the ODE escapes and
    while the linear-noise expansion holds (:func:`validity`). Each of
    ``samples`` draws of that state is followed by the ODE: the nonlinear flow away from the
    saddle decides when and in which direction it escapes. Returns a dict: ``mean``, ``sd``,
    ``samples`` (the escape times; NaN: not escaped by ``alpha_max``, default ``alpha_r + 50 / mu``),
    ``mu``, ``multiplicity``, ``alpha_ref``, ``ode`` (the ODE's own escape time), ``level_eps``,
    ``window``.
    """
    from scipy.integrate import solve_ivp

    from .fixed_points import symmetric_fixed_point

    N, samples = check_int("N", N), check_int("samples", samples, low=2)
    seed = check_int("seed", seed, low=0)
    if not 0 < check_number("level", level) < 1:
        raise ValueError(f"level must be in (0, 1) (a fraction of the saddle's eps_g), got {level!r}")
    fp = symmetric_fixed_point(system) if fp is None else fp
    mu = fp.mu_max
    if not mu > 0:
        raise ValueError("the fixed point has no unstable direction")
    U, L = _unstable_space(fp)
    window = 0.5 / mu if window is None else check_number("window", window, strict=True)
    eps_level = level * fp.eps_g
    jac = lambda t, y: system.jacobian(y)  # noqa: E731
    horizon = 50.0 / mu
    sol = solve_ivp(lambda t, y: system.rhs(y), (0.0, horizon), np.asarray(y0, float), method="LSODA",
                    rtol=1e-9, atol=1e-12, dense_output=True, jac=jac)
    grid = np.linspace(0.0, sol.t[-1], 4001)
    ygrid = sol.sol(grid).T
    ode_escape = float(escape_times(grid, _observables(system, ygrid)[0], eps_level, window)[0])
    # the reference time: where the unstable amplitude's noise variance, with the noise still to be
    # amplified, is largest relative to e^{2 mu alpha}, within the expansion's validity
    stop = ode_escape if np.isfinite(ode_escape) else grid[-1]
    nodes = node_grid(sol.sol, np.linspace(0.0, stop, 41), max_outputs=41)
    ys = np.array([sol.sol(t) for t in nodes])
    Vs = [noise_covariance(system, y) for y in ys]
    Sig, bb = propagate(system, nodes, ys, N, bias=True, noise=Vs)
    growth = np.array([np.trace(L @ (S_ + V_ / (2 * mu)) @ L.T) for S_, V_ in zip(Sig, Vs)]) * np.exp(-2 * mu * nodes)
    k = int(np.argmax(np.where(np.cumprod(validity(ys, Sig, N, system.T)) > 0, growth, -np.inf)))
    alpha_r = float(nodes[k])
    amplified = U @ (L @ Vs[k] @ L.T / (2 * mu)) @ U.T
    start = _gaussian(np.random.default_rng(seed), ys[k] + bb[k] / N, (Sig[k] + amplified) / N, samples)
    alpha_max = alpha_r + horizon if alpha_max is None else float(alpha_max)
    times = _escape_of_samples(system, start, alpha_r, alpha_max, eps_level, window)
    return dict(mean=float(np.nanmean(times)), sd=float(np.nanstd(times)), samples=times, mu=mu,
                multiplicity=U.shape[1], alpha_ref=alpha_r, ode=ode_escape, level_eps=eps_level, window=window)


def _escape_of_samples(system, start, alpha_r, alpha_max, eps_level, window):
    """:func:`escape_times` of the ODE solutions from the rows of ``start`` at ``alpha_r``: all
    integrated as one system until every one is ``window`` past its crossing (or ``alpha_max``)."""
    from scipy.integrate import solve_ivp

    n, d = start.shape

    def rhs(t, z):
        return system.rhs_many(z.reshape(n, d)).ravel()

    def all_below(t, z):
        return float(np.max(_observables(system, z.reshape(n, d))[0])) - eps_level

    all_below.terminal = True
    first = solve_ivp(rhs, (alpha_r, alpha_max), start.ravel(), method="RK45", rtol=1e-7, atol=1e-10,
                      dense_output=True, events=all_below)
    pieces = [first.sol]
    end = first.t[-1]
    if first.status == 1 and end < alpha_max:  # run on for the centred average past the crossing
        tail_end = min(end + window, alpha_max)
        tail = solve_ivp(rhs, (end, tail_end), first.y[:, -1], method="RK45", rtol=1e-7, atol=1e-10,
                         dense_output=True)
        pieces.append(tail.sol)
        end = tail_end
    grid = np.linspace(alpha_r, end, max(2, int(math.ceil(20 * (end - alpha_r) / window)) + 1))
    cut = first.t[-1]
    Z = np.concatenate([pieces[0](grid[grid <= cut])] + ([pieces[1](grid[grid > cut])] if len(pieces) > 1 else []),
                       axis=1)
    eps = _observables(system, Z.reshape(n, d, -1).transpose(0, 2, 1).reshape(-1, d))[0].reshape(n, -1)
    return escape_times(grid, eps, eps_level, window)


def _gaussian(rng, mean, cov, n):
    w, E = np.linalg.eigh((cov + cov.T) / 2)
    return mean + rng.standard_normal((n, mean.size)) @ (E * np.sqrt(np.clip(w, 0, None))).T
