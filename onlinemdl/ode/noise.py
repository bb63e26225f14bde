"""The statistics of one SGD step at finite N, the inputs of the finite-N theory (theory/finite_size.md §2-3).

* :func:`increments`: N x (change of the state vector in one SGD step) at given field values
  (one sample), the random variable whose mean is the right-hand side;
* :func:`noise_covariance`: ``V(y)``, the covariance of that increment (per step, times N^2): the
  terms linear in ``delta`` in closed form (:func:`linear_noise`, Stein's lemma and Price's theorem),
  the rest by a randomised quasi-Monte Carlo cubature over the Gaussian fields (verified against
  plain Monte Carlo in ``tests/test_fluctuations.py``);
* :func:`finite_n_drift`: ``f_1(y)``, the O(1/N) part of the exact finite-N mean step (Gram
  chain), in closed form (Price's theorem for the ``|x|^2`` term), with the ``-J f / 2`` of
  the discrete time step;
* :func:`state_structure`, :func:`field_covariances`, :func:`delta_moments`: the field-space description of a
  state and the averages at it, shared by the above and by :mod:`onlinemdl.ode.propagation` and
  :mod:`onlinemdl.ode.fluctuations`.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..dynamics import ACT, DECAY, ETA, ETA_A, ETA_LAM, ETA_V, INV_BATCH, SIGMA, TRAIN_A, TRAIN_LAM, TRAIN_N, TRAIN_V
from ..gaussian import dg, g, joint_covariance
from .derivatives import field_average_derivatives
from .kernels import mm
from .system import OdeSystem, triu_indices

#: log2 of the quasi-Monte Carlo points of :func:`noise_covariance` for the part of ``V`` outside the closed form
#: (2^10: the predicted sd of eps_g and Q within 0.7% of 2^16 on the cases of benchmarks/bench_fluctuations.py) and
#: for the whole ``V`` (2^13), which it takes where that part is more than ``SPLIT_SHARE`` of ``V`` (theory §2).
QMC_LOG2 = 10
QMC_FULL = 13
SPLIT_SHARE = 0.05
_POINTS: dict = {}


# --------------------------------------------------------------------------------------
# Field-space description of one state
# --------------------------------------------------------------------------------------
def state_structure(system: OdeSystem, y):
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
    d = np.asarray(y).size
    return _increment_rows(X, L, noisy, np.zeros((1, d)), np.arange(d), False, *_increment_args(system, y))[0]


def _increment_args(system: OdeSystem, y) -> tuple:
    """The state-dependent arguments of :func:`_increment_rows` (after the fields):
    ``(C, G, S, v, vt, A, lam, rates, flags, modes, d)``."""
    G, S, C, st = state_structure(system, y)
    modes, _, vt, _, A, lam, _, rates, flags = system.kernel_args
    if system.form == "modes":
        A, lam = np.ascontiguousarray(st["A"], float), np.ascontiguousarray(st["lam"], float)
    f8 = lambda a: np.ascontiguousarray(a, dtype=float)  # noqa: E731
    return f8(C), f8(G), f8(S), f8(st["v"]), vt, A, lam, rates, flags, modes, np.asarray(y).size


@njit(cache=True)
def _increment_rows(X, L, noisy, shift, rest, split, C, G, S, v, vt, A, lam, rates, flags, modes, d):
    """Rows of :func:`increments` minus ``shift`` (theory/finite_size.md eq. of F^(1)), one per row
    of ``X``: the fields are ``(s, u) = L X[t, :k]`` (``k`` = columns of ``L``), the label-noise
    variate ``X[t, -1]`` when ``noisy``. Returns ``(F, F2)``: with ``split``, ``F`` holds the terms
    linear in ``delta`` (and the decay) minus ``shift[0]``, ``F2`` the rest (``(eta^2/b) dd^T`` and
    the ``v`` increments) minus ``shift[1]``, in its columns the state entries ``rest`` (the only ones
    where it is not zero); else ``F`` (= ``F2``) the whole increment minus ``shift[0]`` (``rest``: all entries)."""
    n, k = X.shape[0], L.shape[1]
    r, K, M = G.shape[0], C.shape[0], vt.size
    eta, inv_b, kappa, sigma = rates[ETA], rates[INV_BATCH], rates[DECAY], rates[SIGMA]
    act = flags[ACT]
    F = np.zeros((n, d))
    F2 = np.zeros((n, rest.size)) if split else F
    col = np.zeros(d, dtype=np.int64)  # the column of F2 of a state entry in rest
    for j in range(rest.size):
        col[rest[j]] = j
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
                    F2[t, col[off]] += eta * eta * inv_b * dd[a] * dd[b]
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
                F2[t, col[off]] += -rates[ETA_V] * err * gh[i]
                off += 1
        for j in range(d):
            F[t, j] -= shift[0, j]
        if split:
            for j in range(rest.size):
                F2[t, j] -= shift[1, rest[j]]
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
    to the cubature error: a check). ``moments``: :func:`delta_moments` at ``y`` when the caller has them.
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
    columns = rest if split else np.arange(args[-1])
    t1, t2, cross, second = 0.0, 0.0, 0.0, 0.0
    for lo in range(0, n, 2048):  # in chunks that stay in cache
        F, F2 = _increment_rows(Z[lo:lo + 2048], L, noisy, shift, columns, split, *args)
        t1 = t1 + F.sum(axis=0)
        if split:
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
    ``moments``: :func:`delta_moments` at ``y`` when the caller has them.
    """
    y = np.asarray(y, float)
    G, C, st, Sig, parts, Cf, Chf, mP = delta_moments(system, y) if moments is None else moments
    dyn = system.dynamics
    K, M, r, d = system.K, system.M, G.shape[0], y.size
    D, Ig, gD = parts[2], parts[3], parts[6]
    W = np.matmul(Chf.T, np.matmul(gD, Chf))  # (K, K, nx, nx): [i, k, j, l]
    nx = r + M
    second = (D[:, None, :, None] * Cf[None, :, None, :] + 2.0 * W.transpose(0, 2, 1, 3)).reshape(K * nx, K * nx)
    Mm = _linear_map(system, st, C, d).reshape(d, K * nx)
    mflat = mP.ravel()
    X = second - np.outer(mflat, mflat)  # symmetric: Cov(vec P)
    V1 = mm(Mm, np.ascontiguousarray(mm(Mm, X).T))  # Mm X Mm^T; mm skips the zeros of Mm (2 or 2K a row of K(r + M))
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
def field_covariances(system: OdeSystem, y):
    """At the state ``y``: ``G``, ``C``, the state dict (:func:`state_structure`), the covariance ``Sig`` of
    ``z = (h, u)``, the covariance ``Cf`` of ``x = (s, u)`` and ``Chf = Cov(z, x)`` (for a full student
    ``x = z``: ``Chf`` is ``Sig``)."""
    G, S, C, st = state_structure(system, y)
    Cf = joint_covariance(G, S, system.T)
    if system.form != "modes":  # C = I: z = x
        return G, C, st, Cf, Cf, Cf
    r = G.shape[0]
    Chf = np.vstack((C @ Cf[:r], Cf[r:]))  # h = C s, u = u
    K = system.K
    return G, C, st, joint_covariance(Chf[:K, :r] @ C.T, Chf[:K, r:], system.T), Cf, Chf  # C G C^T, C S


def delta_moments(system, y):
    """At the state ``y``: ``G``, ``C``, the state dict, ``Sig``, the averages and their derivatives there
    (:func:`~onlinemdl.ode.derivatives.field_average_derivatives`), ``Cf``, ``Chf`` (:func:`field_covariances`)
    and ``E[delta x^T]`` (K, r + M)."""
    G, C, st, Sig, Cf, Chf = field_covariances(system, y)
    c = np.ascontiguousarray(np.concatenate((st["v"], -system.vt)))
    parts = field_average_derivatives(Sig, system.K, c, system.dynamics.sigma, system.act)
    return G, C, st, Sig, parts, Cf, Chf, parts[0] @ Chf - parts[1][:, None] * Chf[:system.K]


def finite_n_drift(system: OdeSystem, y, J=None, moments=None) -> np.ndarray:
    """``f_1(y)``: the exact finite-N mean step is ``(rhs + f_1 / N) / N`` per step (Gram chain).

    Only the Gram block (``Q`` or ``Rm``) of the exact chain has an O(1/N^2) mean per step:
    ``eta^2 kappa^2 G + eta^2 kappa (X + X^T) + (eta^2/b) E[d d^T (|z|^2 - r)]
    + eta^2 (b-1)/b m m^T`` with ``X = E[d s^T]``, ``E[d d^T (|z|^2 - r)] = 2 d/dt E_{t Sigma}[d d^T]``
    at ``t = 1`` (Price's theorem; the label noise is not scaled) and ``m m^T = E[d f^T]
    Cov(f)^+ E[f d^T]`` (the cross products of two samples of a batch), with ``d/dt E_{t Sigma}[d d^T] =
    sum_pq Sigma_pq dE[d d^T]/dSigma_pq`` from the closed-form gradient. To it is added
    ``-J f / 2``: N Euler steps of size 1/N follow the flow of ``f + (f_1 - J f / 2) / N``.
    ``J`` (the Jacobian at ``y``) and ``moments`` (:func:`delta_moments`) are computed when not given.
    """
    y = np.asarray(y, float)
    dyn = system.dynamics
    out = np.zeros(y.size)
    if dyn.trains_n:
        eta, kappa, b = dyn.eta, dyn.weight_decay, dyn.batch
        G, C, _, Sig, parts, Cf, _, mP = delta_moments(system, y) if moments is None else moments
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
