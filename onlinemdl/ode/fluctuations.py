"""Finite-N theory of on-line SGD: the fluctuations and the O(1/N) bias around the ODE.

One SGD run at finite N is written ``y_N(alpha) = y(alpha) + N^-1/2 xi(alpha) + N^-1 b(alpha)``
with ``y`` the ODE solution (linear-noise approximation, van Kampen's system-size expansion).
Derivations: ``theory/finite_size.md``; every equation there names its function. The parts:
the statistics of one step (``V``, ``f_1``) in :mod:`onlinemdl.ode.noise`, the Jacobian ``J`` in
:meth:`OdeSystem.jacobian` (closed form, ``ode/derivatives.py``), ``Sigma`` and ``b`` along the ODE in
:mod:`onlinemdl.ode.propagation`, the plateau lengths in :mod:`onlinemdl.ode.escape`. Here:

* :func:`predict`: everything at the output times, the function behind ``integrate(..., fluctuations=True)``;
* :func:`eps_g_moments`: the mean shift and the standard deviation of ``eps_g`` and of ``Q``,
  ``R`` across runs (:func:`observables` of a batch of states);
* :func:`validity`: where the expansion holds;
* :func:`initial_covariance`: ``Sigma(0)`` of runs whose weights are drawn afresh.
"""
from __future__ import annotations

import math

import numpy as np

from ..gaussian import LINEAR
from .derivatives import eps_g_curvature
from .noise import field_covariances, state_structure
from .propagation import (
    field_map,
    interpolate,
    interpolate_variance,
    interpolation_plan,
    node_grid,
    path_parameter,
    propagate,
    refine_by_jacobian,
    sigma_directions,
)
from .system import OdeSystem, triu_indices


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


def observables(system: OdeSystem, Y):
    """eps_g (n,) and the entries of Q, R (n, K*K + K*M) for a batch of state vectors Y (n, d)."""
    Q, R, v = _batch_state(system, Y)
    T, vt, act = system.T, system.vt, system.act
    dq, dt = np.einsum("nii->ni", Q), np.diag(T)
    e = 0.5 * (np.einsum("ni,nij,nj->n", v, _I2(Q, dq, dq, act), v) + vt @ _I2(T, dt, dt, act) @ vt
               - 2 * np.einsum("ni,nim,m->n", v, _I2(R, dq, dt, act), vt))
    return e, np.concatenate((Q.reshape(len(Q), -1), R.reshape(len(R), -1)), axis=1)


def eps_g_moments(system: OdeSystem, ys, Sigmas, bs, N: int, rel_step: float = 1e-4, fmap=None):
    """Predicted moments across runs at the states ``ys`` (n, d) with ``Sigmas`` (n, d, d) and
    ``bs`` (n, d): ``(eps_sd, eps_bias, qr_sd, qr_bias)`` of shapes (n,), (n,), (n, nq), (n, nq).

    ``eps_sd = sqrt(grad e . Sigma grad e / N)``, ``eps_bias = (grad e . b + tr(Hess e Sigma)/2) / N``
    for ``e`` = eps_g of the state (label noise excluded); the same for the ``nq`` entries of ``Q``
    and ``R`` (flattened, ``Q`` first; linear in the state except for trained ``A``, ``lam``).
    In closed form where the field covariance is linear in the state (:func:`field_map` ``fmap``, computed
    when not given); elsewhere, with
    ``Sigma = sum_i w_i u_i u_i^T`` (:func:`sigma_directions`), ``grad e . Sigma grad e = sum_i w_i
    (grad e . u_i)^2`` and ``tr(Hess e Sigma) = sum_i w_i u_i^T Hess e u_i``: central first and second
    differences along each ``u_i`` and along ``b`` (step ``rel_step`` x the state's scale), all states'
    evaluations in one batch.
    """
    ys = np.atleast_2d(np.asarray(ys, float))
    fmap = field_map(system, ys.shape[1]) if fmap is None else fmap
    if fmap is not None:
        return _closed_form_moments(system, ys, Sigmas, bs, N, fmap)
    return _difference_moments(system, ys, Sigmas, bs, N, rel_step)


def _difference_moments(system: OdeSystem, ys, Sigmas, bs, N: int, rel_step: float):
    """:func:`eps_g_moments` by differences along the directions of ``Sigma`` and along ``b``."""
    n = len(ys)
    h = rel_step * np.maximum(1.0, np.max(np.abs(ys), axis=1))
    rows, parts = [], []
    for y, S_, b, hk in zip(ys, Sigmas, bs, h):  # per state: y, y +- h u_i, y +- h b / |b|
        w, U = sigma_directions(S_, 1e-6)
        nb = float(np.linalg.norm(b))
        P = np.concatenate((U, b[:, None] / nb), axis=1).T * hk if nb > 0 else U.T * hk
        rows.append(np.concatenate((y[None], y + P, y - P)))
        parts.append((w, nb))
    e_all, qr_all = observables(system, np.concatenate(rows))
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


def _closed_form_moments(system: OdeSystem, ys, Sigmas, bs, N: int, fmap):
    """:func:`eps_g_moments` where the field covariance is linear in the state (:func:`field_map`): ``Q``
    and ``R`` are entries of it (no curvature), and ``eps_g``'s gradient and contracted second derivative
    come in closed form (:func:`~onlinemdl.ode.derivatives.eps_g_curvature`) with ``W = M Sigma M^T``."""
    M, e = fmap[0], fmap[1]
    K = system.K
    E = int(e.max()) + 1
    Ms = M[:E]  # the rows of Sig's entries
    at = np.concatenate((e[:K, :K].ravel(), e[:K, K:].ravel()))  # Q (K x K), then R (K x M)
    n = len(ys)
    eps_sd, eps_bias, qr_sd, qr_bias = np.zeros(n), np.zeros(n), np.zeros((n, at.size)), np.zeros((n, at.size))
    for k, (y, S_, b) in enumerate(zip(ys, Sigmas, bs)):
        _, _, st, Sig, _, _ = field_covariances(system, y)
        W = Ms @ S_ @ Ms.T
        Mb = Ms @ b
        g, hess = eps_g_curvature(Sig, W, e, np.concatenate((st["v"], -system.vt)), system.act)
        eps_sd[k] = math.sqrt(max(g @ W @ g, 0.0) / N)
        eps_bias[k] = (g @ Mb + 0.5 * hess) / N
        qr_sd[k] = np.sqrt(np.maximum(np.diag(W)[at], 0.0) / N)
        qr_bias[k] = Mb[at] / N
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
    G, S, C, st = state_structure(system, y0)
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


def predict(system: OdeSystem, y0, alpha, N: int, Sigma0=None, b0=None, bias: bool = True, rtol: float = 1e-8,
            atol: float = 1e-10, log2: int | None = None, dy_tol: float = 0.05, tol: float = 0.1,
            per_decade: int = 3, jac_tol: float = 1e-3, sol=None, covariance: bool = True) -> dict:
    """The finite-N predictions at the output times ``alpha`` (starting at the initial state).

    Returns a dict: ``cov`` (n, d, d) = ``Sigma / N``, the covariance of the state vector across
    runs (None with ``covariance=False``: not interpolated to the outputs); ``bias`` (n, d) = ``b / N``;
    ``eps_g_sd``, ``eps_g_bias`` (n,); ``Q_sd``, ``Q_bias`` (n, K, K), ``R_sd``, ``R_bias`` (n, K, M);
    ``valid_until``: the first output time where :func:`validity` fails (inf when it never does); ``nodes``: the
    propagation's nodes.
    The nodes: :func:`node_grid` (``per_decade``, ``dy_tol``), then :func:`refine_by_jacobian` (``jac_tol``),
    on the dense output ``sol`` of the ODE from ``y0`` to ``alpha[-1]`` (default: solved here by LSODA
    with ``rtol``, ``atol``); ``J`` and ``V`` between them along the state's path (:func:`path_parameter`),
    the observables' variances at the outputs in log-log (:func:`interpolate_variance`). The defaults keep the
    predictions within 0.75% of a grid 20 times denser (theory/finite_size.md §4).
    """
    from scipy.integrate import solve_ivp

    alpha = np.asarray(alpha, float)
    if alpha.ndim != 1 or alpha.size == 0 or np.any(np.diff(alpha) <= 0):
        raise ValueError("alpha must be a non-empty, strictly increasing sequence (the output times)")
    y0 = np.asarray(y0, float)
    fmap = field_map(system, y0.size)  # shared by the bias forcing and the moments
    if alpha[-1] > alpha[0]:
        if sol is None:
            sol = solve_ivp(lambda t, y: system.rhs(y), (alpha[0], alpha[-1]), y0, method="LSODA", rtol=rtol,
                            atol=atol, dense_output=True, jac=lambda t, y: system.jacobian(y)).sol
        nodes = node_grid(sol, alpha, per_decade, dy_tol)
        nodes, ys, Js = refine_by_jacobian(system, sol, nodes, jac_tol, y0=y0)
        Sig, bb = propagate(system, nodes, ys, N, Sigma0, b0, bias, log2, jacobians=Js, fmap=fmap,
                            path=path_parameter(sol, nodes))
    else:
        nodes, ys = alpha[:1], y0[None]
        Sig, bb = propagate(system, nodes, ys, N, Sigma0, b0, bias, log2, fmap=fmap)
    bad = np.nonzero(~validity(ys, Sig, N, system.T, tol, bb if bias else None))[0]
    valid_until = float(nodes[bad[0]]) if bad.size else math.inf
    K, M = system.K, system.M
    eps_sd, eps_bias, qr_sd, qr_bias = eps_g_moments(system, ys, Sig, bb, N, fmap=fmap)
    var, shift = (eps_sd ** 2, qr_sd ** 2), (eps_bias, qr_bias)
    Sig /= N  # at the nodes: no pass over the outputs' covariances (250 MB at K = M = 16, 201 outputs)
    if nodes.size > 1:  # outputs between nodes: cubics, in log-log for the observables' variances (eq. P4)
        plan = interpolation_plan(nodes, alpha)
        Sig, bb = interpolate(plan, Sig) if covariance else None, interpolate(plan, bb)  # 16 MB at K = M = 8
        var = tuple(interpolate_variance(nodes, alpha, x) for x in var)
        shift = tuple(interpolate(plan, x) for x in shift)
    n = alpha.size
    qs, qb = np.sqrt(np.maximum(var[1], 0.0)), shift[1]
    out = dict(cov=Sig if covariance else None, bias=bb / N, eps_g_sd=np.sqrt(np.maximum(var[0], 0.0)), eps_g_bias=shift[0],
               Q_sd=qs[:, :K * K].reshape(n, K, K), R_sd=qs[:, K * K:].reshape(n, K, M),
               Q_bias=qb[:, :K * K].reshape(n, K, K), R_bias=qb[:, K * K:].reshape(n, K, M), nodes=nodes)
    out["valid_until"] = valid_until
    return out
