"""Finite-N theory of on-line SGD: the fluctuations and the O(1/N) bias around the ODE.

One SGD run at finite N is written ``y_N(alpha) = y(alpha) + N^-1/2 xi(alpha) + N^-1 b(alpha)``
with ``y`` the ODE solution (linear-noise approximation, van Kampen's system-size expansion).
Derivations: ``theory/finite_size.md``; every equation there names its function here.

* :func:`increments`: N x (change of the state vector in one SGD step) at given field values
  (one sample), the random variable whose mean is the right-hand side;
* :func:`noise_covariance`: ``V(y)``, the covariance of that increment (per step, times N^2),
  by a randomised quasi-Monte Carlo cubature over the Gaussian fields (verified against plain
  Monte Carlo in ``tests/test_fluctuations.py``);
* :func:`finite_n_drift`: ``f_1(y)``, the O(1/N) part of the exact finite-N mean step (Gram
  chain), in closed form (Price's theorem for the ``|x|^2`` term), with the ``-J f / 2`` of
  the discrete time step;
* :func:`propagate`: ``Sigma`` (``dSigma/da = J Sigma + Sigma J^T + V``) and ``b``
  (``db/da = J b + H:Sigma/2 + f_1``) along an ODE solution, exponential (Van Loan) steps;
* :func:`eps_g_moments`: the mean shift and the standard deviation of ``eps_g`` and of ``Q``,
  ``R`` across runs.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.linalg import expm
from scipy.special import erf

from ..gaussian import LINEAR, joint_covariance
from .kernels import field_averages
from .system import OdeSystem, finite_difference_jacobian

#: log2 of the number of quasi-Monte Carlo points of :func:`noise_covariance`: None chooses
#: ``floor(log2(5e7 / d^2))`` clipped to [13, 16] for a state of size d (a fixed cost per node).
QMC_LOG2 = None
_SQRT2 = math.sqrt(2.0)
_DG = math.sqrt(2.0 / math.pi)
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


def _g(z, act):
    return z if act == LINEAR else erf(z / _SQRT2)


def _dg(z, act):
    return np.ones_like(z) if act == LINEAR else _DG * np.exp(-0.5 * z * z)


def increments(system: OdeSystem, y, s, u, zeta=None) -> np.ndarray:
    """N x the change of the state vector in one SGD step of batch 1, at field values.

    ``s`` (n, r): fields of the trained N-dimensional vectors (rows of ``W``, columns of ``Xi``);
    ``u`` (n, M): teacher fields; ``zeta`` (n,): label-noise variates (None: no noise). The
    ``eta^2`` term carries ``1/b`` (one sample of a batch of ``b``); its ``|x|^2 / N`` is 1
    (its fluctuation is O(N^-1/2)). Returns (n, d), d the state size; mean = ``system.rhs(y)``.
    """
    G, S, C, st = _structure(system, y)
    act, dyn = system.act, system.dynamics
    v, vt = st["v"], system.vt
    eta, kappa, inv_b = dyn.eta, dyn.weight_decay, 1.0 / dyn.batch
    h = s @ C.T
    gh = _g(h, act)
    err = gh @ v - _g(u, act) @ vt
    if zeta is not None and dyn.sigma > 0:
        err = err - dyn.sigma * zeta
    delta = v * _dg(h, act) * err[:, None]
    d = delta @ C
    n, r = s.shape
    parts = []
    if dyn.trains_n:
        iu = np.triu_indices(r)
        ds = d[:, iu[0]] * s[:, iu[1]] + s[:, iu[0]] * d[:, iu[1]]
        dd = d[:, iu[0]] * d[:, iu[1]]
        parts.append(-eta * ds + eta * eta * inv_b * dd - 2 * eta * kappa * G[iu])
        parts.append((-eta * d[:, :, None] * u[:, None, :] - eta * kappa * S).reshape(n, -1))
    else:
        parts += [np.zeros((n, r * (r + 1) // 2)), np.zeros((n, S.size))]
    if system.form == "modes":
        X = delta[:, :, None] * s[:, None, :]  # delta_i u_mu
        if "lam" in system.train:
            parts.append(-dyn.eta_lam * np.einsum("im,cim->cm", st["A"], X))
        if "A" in system.train:
            parts.append((-dyn.eta_A * st["lam"] * X).reshape(n, -1))
    if "v" in system.train:
        parts.append(-dyn.eta_v * err[:, None] * gh)
    return np.concatenate(parts, axis=1)


def _normal_points(dim: int, log2: int) -> np.ndarray:
    """Scrambled Sobol points mapped to N(0, I_dim), fixed seed, cached."""
    key = (dim, log2)
    if key not in _POINTS:
        from scipy.stats import norm, qmc

        u = qmc.Sobol(dim, scramble=True, seed=20240601 + dim).random_base2(log2)
        _POINTS[key] = norm.ppf(np.clip(u, 1e-12, 1 - 1e-12))
    return _POINTS[key]


def _field_factor(G, S, T):
    """``L`` with ``Cov((s, u)) = L L^T``, rank-reduced (eigenvalues above rounding)."""
    cov = joint_covariance(G, S, T)
    w, U = np.linalg.eigh(cov)
    keep = w > 1e-12 * max(1.0, float(w.max()))
    return U[:, keep] * np.sqrt(w[keep])


def noise_covariance(system: OdeSystem, y, log2: int | None = QMC_LOG2, return_mean: bool = False):
    """``V(y)``: N^2 x the covariance of one SGD step's change of the state vector.

    ``V = Cov(F) / b`` with ``F`` = :func:`increments` of one sample, averaged over the Gaussian
    fields by randomised quasi-Monte Carlo (``2^log2`` scrambled Sobol points in the rank of the
    field covariance, plus one dimension for the label noise; default :data:`QMC_LOG2`). Fluctuations of ``|x|^2 / N`` and
    of the cross products of a batch enter at O(N^-1/2) and are left out. With
    ``return_mean``, also the cubature's mean of ``F`` (equal to ``system.rhs(y)`` up to the
    cubature error: a check).
    """
    G, S, C, st = _structure(system, y)
    if log2 is None:
        d = np.asarray(y).size
        log2 = int(np.clip(math.floor(math.log2(5e7 / d**2)), 13, 16))
    L = _field_factor(G, S, system.T)
    noisy = system.dynamics.sigma > 0
    Z = _normal_points(L.shape[1] + noisy, log2)
    f = Z[:, :L.shape[1]] @ L.T
    r = G.shape[0]
    F = increments(system, y, f[:, :r], f[:, r:], Z[:, -1] if noisy else None)
    mean = F.mean(axis=0)
    Fc = F - mean
    V = Fc.T @ Fc / (F.shape[0] * system.dynamics.batch)
    return (V, mean) if return_mean else V


# --------------------------------------------------------------------------------------
# The O(1/N) part of the exact mean step
# --------------------------------------------------------------------------------------
def _fields(system, st, G, S, C):
    """Covariance of (h, u) and the coefficient vector of err."""
    Q, R = C @ G @ C.T, C @ S
    Sig = np.ascontiguousarray(joint_covariance(Q, R, system.T))
    c = np.ascontiguousarray(np.concatenate((st["v"], -system.vt)))
    return Sig, c


def finite_n_drift(system: OdeSystem, y, J=None) -> np.ndarray:
    """``f_1(y)``: the exact finite-N mean step is ``(rhs + f_1 / N) / N`` per step (Gram chain).

    Only the Gram block (``Q`` or ``Rm``) of the exact chain has an O(1/N^2) mean per step:
    ``eta^2 kappa^2 G + eta^2 kappa (X + X^T) + (eta^2/b) E[d d^T (|z|^2 - r)]
    + eta^2 (b-1)/b m m^T`` with ``X = E[d s^T]``, ``E[d d^T (|z|^2 - r)] = 2 d/dt E_{t Sigma}[d d^T]``
    at ``t = 1`` (Price's theorem; the label noise is not scaled) and ``m m^T = E[d f^T]
    Cov(f)^+ E[f d^T]`` (the cross products of two samples of a batch). To it is added
    ``-J f / 2``: N Euler steps of size 1/N follow the flow of ``f + (f_1 - J f / 2) / N``.
    ``J`` (the Jacobian at ``y``) is computed when not given.
    """
    y = np.asarray(y, float)
    G, S, C, st = _structure(system, y)
    dyn = system.dynamics
    out = np.zeros(y.size)
    if dyn.trains_n:
        eta, kappa, b, act = dyn.eta, dyn.weight_decay, dyn.batch, system.act
        K, r, M = system.K, G.shape[0], system.M
        Sig, c = _fields(system, st, G, S, C)
        Phi, psi, D, _ = field_averages(Sig, K, c, dyn.sigma, act)
        # E[delta (s, u)^T]: Cov((h, u), (s, u)) and Cov(h_i, (s, u))
        Cf = joint_covariance(G, S, system.T)  # (s, u)
        Hmap = np.zeros((K + M, r + M))
        Hmap[:K, :r], Hmap[K:, r:] = C, np.eye(M)
        Chf = Hmap @ Cf  # Cov((h, u), (s, u))
        Y = Phi @ Chf - psi[:, None] * Chf[:K]
        dY = C.T @ Y  # E[d (s, u)^T], r x (r + M)
        X = dY[:, :r]
        # 2 d/dt E_{t Sig}[d d^T] at t = 1, central differences (Richardson)
        def dd(t):
            return C.T @ field_averages(np.ascontiguousarray(t * Sig), K, c, dyn.sigma, act)[2] @ C
        e = 1e-3
        d1 = (dd(1 + e) - dd(1 - e)) / (2 * e)
        d2 = (dd(1 + e / 2) - dd(1 - e / 2)) / e
        ddz = 2.0 * (4 * d2 - d1) / 3
        f1G = eta**2 * kappa**2 * G + eta**2 * kappa * (X + X.T) + eta**2 / b * ddz
        if b > 1:
            f1G = f1G + eta**2 * (b - 1) / b * dY @ np.linalg.pinv(Cf, rcond=1e-12, hermitian=True) @ dY.T
        out[:r * (r + 1) // 2] = f1G[np.triu_indices(r)]
    if J is None:
        J = finite_difference_jacobian(system.rhs, y, order=2)
    return out - 0.5 * J @ system.rhs(y)


def _leading(w, cutoff):
    """Mask of the largest eigenvalues ``w`` holding all but ``cutoff`` of their (positive) sum."""
    w = np.where(w > 0, w, 0.0)
    total = w.sum()
    if total <= 0:
        return np.zeros(w.shape, bool)
    order = np.argsort(w)[::-1]
    n = int(np.searchsorted(np.cumsum(w[order]), (1 - cutoff) * total)) + 1
    mask = np.zeros(w.shape, bool)
    mask[order[:n]] = True
    return mask


def hessian_contraction(f, y, Sigma, rel_step: float = 1e-4, cutoff: float = 1e-4) -> np.ndarray:
    """``H : Sigma = sum_jk d^2 f / dy_j dy_k Sigma_jk`` for a symmetric PSD ``Sigma``, by second
    central differences along its leading eigenvectors (all but ``cutoff`` of its trace)."""
    w, U = np.linalg.eigh((Sigma + Sigma.T) / 2)
    f0 = f(y)
    out = np.zeros_like(f0)
    scale = max(1.0, float(np.max(np.abs(y))))
    h = rel_step * scale
    for lam, e in zip(w[_leading(w, cutoff)], U.T[_leading(w, cutoff)]):
        out += lam * (f(y + h * e) + f(y - h * e) - 2 * f0) / (h * h)
    return out


# --------------------------------------------------------------------------------------
# Propagation along the ODE
# --------------------------------------------------------------------------------------
def _step(J, V, h):
    """``Phi = e^{hJ}``, ``Qh = int_0^h e^{tJ} V e^{tJ^T} dt`` (Van Loan), ``Ih = int_0^h e^{tJ} dt``."""
    d = J.shape[0]
    Bv = np.zeros((2 * d, 2 * d))
    Bv[:d, :d], Bv[:d, d:], Bv[d:, d:] = -J, V, J.T
    Ev = expm(Bv * h)
    Phi = Ev[d:, d:].T
    Qh = Phi @ Ev[:d, d:]
    Bi = np.zeros((2 * d, 2 * d))
    Bi[:d, :d], Bi[:d, d:] = J * h, np.eye(d) * h
    Ih = expm(Bi)[:d, d:]
    return Phi, (Qh + Qh.T) / 2, Ih


def propagate(system: OdeSystem, nodes, ys, N: int, Sigma0=None, b0=None, bias: bool = True,
              log2: int | None = QMC_LOG2):
    """``Sigma`` and ``b`` at the ``nodes`` (increasing alpha) of an ODE solution ``ys``.

    ``Sigma0``, ``b0``: their initial values (default 0: runs started from the very networks
    of the ODE). Between nodes, ``J`` and ``V`` are the averages of their node values and the
    forcing ``H:Sigma/2 + f_1`` of ``b`` is the trapezoid of its node values; each step is
    exact for constant coefficients (matrix exponentials), so stiff systems need no small steps.
    Returns ``(Sigma, b)`` of shapes (n, d, d) and (n, d); ``b`` is zero when ``bias`` is False.
    """
    ys = np.asarray(ys, float)
    n, d = ys.shape
    Sig = np.zeros((n, d, d))
    bb = np.zeros((n, d))
    Sig[0] = 0 if Sigma0 is None else Sigma0
    bb[0] = 0 if b0 is None else b0

    def node(k, Sigma):
        J = finite_difference_jacobian(system.rhs, ys[k], order=1)
        V = noise_covariance(system, ys[k], log2)
        if not bias:
            return J, V, np.zeros(d)
        force = finite_n_drift(system, ys[k], J)
        if np.any(Sigma):
            force = force + 0.5 * hessian_contraction(system.rhs, ys[k], Sigma)
        return J, V, force

    J0, V0, s0 = node(0, Sig[0])
    for k in range(n - 1):
        h = nodes[k + 1] - nodes[k]
        J1 = finite_difference_jacobian(system.rhs, ys[k + 1], order=1)
        V1 = noise_covariance(system, ys[k + 1], log2)
        Phi, Qh, Ih = _step(0.5 * (J0 + J1), 0.5 * (V0 + V1), h)
        Sig[k + 1] = Phi @ Sig[k] @ Phi.T + Qh
        if bias:
            s1 = finite_n_drift(system, ys[k + 1], J1) + 0.5 * hessian_contraction(system.rhs, ys[k + 1], Sig[k + 1])
            bb[k + 1] = Phi @ bb[k] + Ih @ (0.5 * (s0 + s1))
            s0 = s1
        J0, V0 = J1, V1
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
        iu = np.triu_indices(r)
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


def eps_g_moments(system: OdeSystem, y, Sigma, b, N: int, rel_step: float = 1e-5):
    """Predicted moments across runs at one time: ``(eps_sd, eps_bias, qr_sd, qr_bias)``.

    ``eps_sd = sqrt(grad e . Sigma grad e / N)``, ``eps_bias = (grad e . b + tr(Hess e Sigma)/2) / N``
    for ``e`` = eps_g of the state (label noise excluded); the same for the entries of ``Q`` and
    ``R`` (flattened, ``Q`` first; linear in the state except for trained ``A``, ``lam``).
    """
    y = np.asarray(y, float)
    d = y.size
    scale = max(1.0, float(np.max(np.abs(y))))
    h = rel_step * scale
    E = np.eye(d) * h
    e_p, qr_p = _observables(system, y + E)
    e_m, qr_m = _observables(system, y - E)
    e0, qr0 = _observables(system, y[None])
    ge = (e_p - e_m) / (2 * h)
    gqr = (qr_p - qr_m).T / (2 * h)  # (nq, d)
    eps_sd = math.sqrt(max(ge @ Sigma @ ge, 0.0) / N)
    qr_sd = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", gqr, Sigma, gqr), 0.0) / N)
    # second-order terms along the eigenvectors of Sigma
    w, U = np.linalg.eigh((Sigma + Sigma.T) / 2)
    keep = _leading(w, 1e-6)
    he, hqr = 0.0, np.zeros(qr0.shape[1])
    if keep.any():
        hh = 1e-3 * scale
        P = (U[:, keep] * hh).T
        ep, qp = _observables(system, y + P)
        em, qm = _observables(system, y - P)
        he = float(np.sum(w[keep] * (ep + em - 2 * e0[0]) / hh**2))
        hqr = np.sum(w[keep][:, None] * (qp + qm - 2 * qr0[0]) / hh**2, axis=0)
    eps_bias = (ge @ b + 0.5 * he) / N
    qr_bias = (gqr @ b + 0.5 * hqr) / N
    return eps_sd, eps_bias, qr_sd, qr_bias


def validity(ys, Sigma, N: int, T, tol: float = 0.1) -> np.ndarray:
    """Per node, whether the expansion holds: every state entry's predicted standard deviation
    ``sqrt(Sigma_jj / N)`` stays below ``tol`` times the scale ``max(1, max_n T_nn)``."""
    scale = max(1.0, float(np.max(np.diag(T))))
    sd = np.sqrt(np.maximum(np.einsum("kjj->kj", Sigma), 0.0) / N)
    return np.all(sd <= tol * scale, axis=1)


def initial_covariance(system: OdeSystem, y0, N: int, scale2: float) -> np.ndarray:
    """``Sigma(0)`` of runs whose N-dimensional weights are drawn afresh with i.i.d. entries of
    variance ``scale2`` (a full student's ``Student.full(init="large", scale=sqrt(scale2))``,
    a mode student's fresh ``Xi``): ``N Cov(G_ab, G_cd) = scale2^2 (d_ac d_bd + d_ad d_bc)``,
    ``N Cov(S_an, S_bm) = scale2 d_ab T_nm``, no G-S covariance. Other blocks are fixed."""
    G, S, C, st = _structure(system, y0)
    r, M = G.shape[0], system.M
    d = np.asarray(y0).size
    Sig = np.zeros((d, d))
    if not system.dynamics.trains_n:
        return Sig
    iu = list(zip(*np.triu_indices(r)))
    for x, (a, b) in enumerate(iu):
        for z, (c, e) in enumerate(iu):
            Sig[x, z] = scale2**2 * (int(a == c and b == e) + int(a == e and b == c))
    nq = len(iu)
    for a in range(r):
        for b in range(r):
            if a == b:
                Sig[nq + a * M:nq + (a + 1) * M, nq + b * M:nq + (b + 1) * M] = scale2 * system.T
    return Sig


def node_grid(sol, alpha, per_decade: int = 10, dy_tol: float = 0.02, max_depth: int = 6,
              max_outputs: int = 40) -> np.ndarray:
    """Nodes of :func:`propagate` for the output times ``alpha`` of the ODE solution ``sol`` (dense).

    ``per_decade`` log-spaced times from the first positive output (or ``alpha_max / 100``) to
    the last, the first and the last output, all outputs when there are at most
    ``max_outputs``, and points inserted by bisection (up to ``max_depth`` times) wherever the
    state moves by more than ``dy_tol`` x its scale between two nodes.
    """
    alpha = np.asarray(alpha, float)
    a0, a1 = alpha[0], alpha[-1]
    pos = alpha[alpha > a0]
    lo = min(pos[0] - a0, 1e-2 * (a1 - a0)) if pos.size else a1 - a0
    count = max(2, int(math.ceil(per_decade * math.log10(max((a1 - a0) / lo, 1.0)))) + 1)
    base = a0 + np.geomspace(lo, a1 - a0, count)
    base = np.unique(np.concatenate(([a0, a1], base, alpha if alpha.size <= max_outputs else [])))
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


def _interpolate(nodes, values, alpha):
    """Piecewise-linear interpolation of ``values`` (n_nodes, ...) to the times ``alpha``."""
    k = np.clip(np.searchsorted(nodes, alpha, side="right") - 1, 0, len(nodes) - 2)
    w = ((alpha - nodes[k]) / (nodes[k + 1] - nodes[k])).reshape((-1,) + (1,) * (values.ndim - 1))
    return (1 - w) * values[k] + w * values[k + 1]


def predict(system: OdeSystem, y0, alpha, N: int, Sigma0=None, b0=None, bias: bool = True, rtol: float = 1e-8,
            atol: float = 1e-10, log2: int | None = QMC_LOG2, dy_tol: float = 0.02, tol: float = 0.1,
            per_decade: int = 10) -> dict:
    """The finite-N predictions at the output times ``alpha`` (starting at the initial state).

    Returns a dict: ``cov`` (n, d, d) = ``Sigma / N``, the covariance of the state vector across
    runs; ``bias`` (n, d) = ``b / N``; ``eps_g_sd``, ``eps_g_bias`` (n,); ``Q_sd``, ``Q_bias``
    (n, K, K), ``R_sd``, ``R_bias`` (n, K, M); ``valid_until``: the first output time where
    :func:`validity` fails (inf when it never does); ``nodes``: the propagation's nodes.
    """
    from scipy.integrate import solve_ivp

    alpha = np.asarray(alpha, float)
    y0 = np.asarray(y0, float)
    if alpha[-1] > alpha[0]:
        sol = solve_ivp(lambda t, y: system.rhs(y), (alpha[0], alpha[-1]), y0, method="LSODA", rtol=rtol, atol=atol,
                        dense_output=True, jac=lambda t, y: finite_difference_jacobian(system.rhs, y, order=1))
        nodes = node_grid(sol.sol, alpha, per_decade, dy_tol)
        ys = np.array([sol.sol(a) for a in nodes])
        ys[0] = y0
        Sig, bb = propagate(system, nodes, ys, N, Sigma0, b0, bias, log2)
    else:
        nodes, ys = alpha[:1], y0[None]
        Sig, bb = propagate(system, nodes, ys, N, Sigma0, b0, bias, log2)
    bad = np.nonzero(~validity(ys, Sig, N, system.T, tol))[0]
    valid_until = float(nodes[bad[0]]) if bad.size else math.inf
    K, M = system.K, system.M
    mom = [eps_g_moments(system, y, S_, b_, N) for y, S_, b_ in zip(ys, Sig, bb)]
    var = np.array([m[0] ** 2 for m in mom]), np.array([m[2] ** 2 for m in mom])
    shift = np.array([m[1] for m in mom]), np.array([m[3] for m in mom])
    if nodes.size > 1:  # outputs between nodes: linear interpolation of variances and shifts
        Sig, bb = _interpolate(nodes, Sig, alpha), _interpolate(nodes, bb, alpha)
        var = tuple(_interpolate(nodes, x, alpha) for x in var)
        shift = tuple(_interpolate(nodes, x, alpha) for x in shift)
    n = alpha.size
    qs, qb = np.sqrt(var[1]), shift[1]
    out = dict(cov=Sig / N, bias=bb / N, eps_g_sd=np.sqrt(var[0]), eps_g_bias=shift[0],
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


def escape_distribution(system: OdeSystem, y0, N: int, fp=None, level: float = 0.5, alpha_max: float | None = None,
                        probe: float = 1e-6, samples: int = 200_000, seed: int = 0) -> dict:
    """Predicted distribution of the plateau length: the first alpha where eps_g falls below
    ``level`` x eps_g at the saddle ``fp`` (default: :func:`~onlinemdl.ode.symmetric_fixed_point`),
    for SGD runs at dimension N started from the state ``y0``.

    The unstable amplitudes ``c = l . (y - y*)`` (left eigenvectors ``l`` of the unstable
    eigenvalue ``mu``, all directions of its eigenspace) are taken at ``alpha_r``, where the ODE
    passes closest to the saddle: their mean is the ODE's own ``a``, their covariance
    ``(l Sigma(alpha_r) l^T + l V* l^T / (2 mu)) / N`` (the linear-noise covariance there plus the
    noise that the unstable directions will still amplify, V* at the saddle). A run with
    amplitude ``c`` escapes at ``alpha_ODE + ln(|a| / |c|) / mu`` (``alpha_ODE`` the ODE's own
    escape time); when the ODE does not escape (``a = 0``), at
    ``alpha_r + alpha_probe + ln(probe / |c|) / mu`` with ``alpha_probe`` the escape time of the
    ODE started at ``y* + probe u`` (u the right eigenvector along ``c``'s mean, or the first one).
    Returns a dict: ``mean``, ``sd``, ``samples`` (the escape times of ``samples`` draws of c), ``mu``, ``multiplicity``,
    ``alpha_ref``, ``ode`` (the ODE's own escape time), ``level_eps``.
    """
    from scipy.integrate import solve_ivp

    from .fixed_points import symmetric_fixed_point

    fp = symmetric_fixed_point(system) if fp is None else fp
    mu = fp.mu_max
    if not mu > 0:
        raise ValueError("the fixed point has no unstable direction")
    ystar = fp.y
    # the eigenspace of mu (degenerate for K > 2): null spaces of J - mu and its transpose,
    # the left basis made biorthogonal to the right one
    A_ = fp.jacobian - mu * np.eye(fp.y.size)
    sv_r, sv_l = np.linalg.svd(A_), np.linalg.svd(A_.T)
    tol_sv = 1e-5 * max(1.0, float(sv_r[1][0]))
    m = max(1, int(np.sum(sv_r[1] < tol_sv)))
    U = sv_r[2][-m:].T
    Lnull = sv_l[2][-m:]
    Lft = np.linalg.solve(Lnull @ U, Lnull)
    eps_level = level * fp.eps_g
    alpha_max = 50.0 / mu if alpha_max is None else alpha_max
    jac = lambda t, y: finite_difference_jacobian(system.rhs, y, order=1)  # noqa: E731
    sol = solve_ivp(lambda t, y: system.rhs(y), (0.0, alpha_max), np.asarray(y0, float), method="LSODA",
                    rtol=1e-9, atol=1e-12, dense_output=True, jac=jac)
    grid = np.linspace(0.0, sol.t[-1], 4001)
    ygrid = sol.sol(grid).T
    eps_grid = _observables(system, ygrid)[0]
    ode_escape = float(first_below(grid, eps_grid, eps_level)[0])
    rng = np.random.default_rng(seed)
    Vs = noise_covariance(system, ystar)
    if np.isfinite(ode_escape):
        # the linear-noise covariance along the path up to the ODE's escape; the reference time is
        # where the noise amplitude relative to the ODE's own unstable amplitude is largest (on the
        # plateau both grow like e^{mu alpha} and their ratio is frozen until the escape)
        times_r = np.linspace(0.0, ode_escape, 41)
        nodes = node_grid(sol.sol, times_r, max_outputs=41)
        Sig, _ = propagate(system, nodes, np.array([sol.sol(t) for t in nodes]), N, bias=False)
        Sig = _interpolate(nodes, Sig, times_r)
        amps = np.array([Lft @ (sol.sol(t) - ystar) for t in times_r])
        ratio = np.array([math.sqrt(max(np.trace(Lft @ S_ @ Lft.T), 0.0) / N) / max(np.linalg.norm(a_), 1e-300)
                          for S_, a_ in zip(Sig, amps)])
        early = times_r <= ode_escape - 2.0 / mu  # still near the saddle
        k_r = int(np.argmax(np.where(early, ratio, -1.0))) if early[1:].any() else int(np.argmax(ratio[:-1]))
        alpha_r, a = float(times_r[k_r]), amps[k_r]
        cov_c = Lft @ Sig[k_r] @ Lft.T / N
        c = _gaussian(rng, a, cov_c, samples)
        times = ode_escape + np.log(np.linalg.norm(a) / np.linalg.norm(c, axis=1)) / mu
        alpha_probe = math.nan
    else:
        # a symmetric ODE stays on the saddle: the noise alone breaks the symmetry; its amplitude
        # at the closest approach plus the noise the unstable directions will still amplify,
        # calibrated by the ODE from y* + probe u
        k_r = int(np.argmin(np.linalg.norm(ygrid - ystar, axis=1)))
        alpha_r = float(grid[k_r])
        nodes = node_grid(sol.sol, np.array([0.0, alpha_r]))
        Sig, _ = propagate(system, nodes, np.array([sol.sol(t) for t in nodes]), N, bias=False)
        a = Lft @ (ygrid[k_r] - ystar)
        cov_c = (Lft @ Sig[-1] @ Lft.T + Lft @ Vs @ Lft.T / (2 * mu)) / N
        u = U @ (a / np.linalg.norm(a)) if np.linalg.norm(a) > 0 else U[:, 0]
        u = u / np.linalg.norm(Lft @ u)
        ps = solve_ivp(lambda t, y: system.rhs(y), (0.0, alpha_max), ystar + probe * u, method="LSODA", rtol=1e-9,
                       atol=1e-13, dense_output=True, jac=jac)
        pg = np.linspace(0.0, ps.t[-1], 8001)
        alpha_probe = float(first_below(pg, _observables(system, ps.sol(pg).T)[0], eps_level)[0])
        c = _gaussian(rng, a, cov_c, samples)
        times = alpha_r + alpha_probe + np.log(probe / np.linalg.norm(c, axis=1)) / mu
    return dict(mean=float(times.mean()), sd=float(times.std()), samples=times, mu=mu, multiplicity=m,
                alpha_ref=alpha_r, ode=ode_escape, level_eps=eps_level, amplitude=a, amplitude_cov=cov_c,
                alpha_probe=alpha_probe)


def _gaussian(rng, mean, cov, n):
    w, E = np.linalg.eigh((cov + cov.T) / 2)
    return mean + rng.standard_normal((n, mean.size)) @ (E * np.sqrt(np.clip(w, 0, None))).T
