"""``Sigma`` and ``b`` along an ODE solution (theory/finite_size.md §4): the nodes, the fourth-order
Magnus step of ``dSigma/da = J Sigma + Sigma J^T + V`` and ``db/da = J b + H:Sigma/2 + f_1``, the
contraction ``H:Sigma`` and the cubics that carry node values to other times.

* :func:`node_grid`, :func:`refine_by_jacobian`: where the propagation takes its nodes;
* :func:`propagate`: ``Sigma`` and ``b`` at the nodes;
* :func:`rhs_curvature`: the bias forcing's ``H:Sigma``, in closed form where the field covariances are linear in
  the state (:func:`field_map`), elsewhere by :func:`hessian_contraction`, differences along the directions of
  ``Sigma`` (:func:`sigma_directions`);
* :func:`interpolation_plan`, :func:`interpolate`, :func:`interpolate_variance`: node values at the output times;
* :func:`path_parameter`: where the state is along its path, in which ``J`` and ``V`` are interpolated.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .derivatives import d_curvature, x_curvature
from .noise import delta_moments, field_covariances, finite_n_drift, noise_covariance
from .system import OdeSystem, triu_indices

_GAUSS = 0.5 + np.array([-1.0, 1.0]) * math.sqrt(3.0) / 6  # Gauss-Legendre points on [0, 1]
_MAGNUS = math.sqrt(3.0) / 12  # the fourth-order Magnus term's factor over h (eq. P1)


def sigma_directions(Sigma, cutoff):
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
    differences along the directions of :func:`sigma_directions` (all but ``cutoff`` of its trace): central
    second differences, or, given the Jacobian ``J`` at ``y``, the one-sided
    ``2 (f(y + h e) - f(y) - h J e) / h^2`` (half the evaluations). ``h = rel_step max(1, |y|)``,
    ``rel_step`` 1e-4 by default (one-sided, with the closed-form ``J``: 2e-4 to 6e-4 of the exact contraction
    at the nodes of a K = M = 3 run from small weights, theory/finite_size.md §4). ``f_many`` maps the rows of an array
    (:meth:`OdeSystem.rhs_many`)."""
    w, U = sigma_directions(Sigma, cutoff)
    rel_step = 1e-4 if rel_step is None else rel_step
    h = rel_step * max(1.0, float(np.max(np.abs(y))))
    E = h * U.T
    m = E.shape[0]
    if J is None:
        values = f_many(np.concatenate((y[None], y + E, y - E)))
        return w @ (values[1:m + 1] + values[m + 1:] - 2 * values[0]) / (h * h)
    values = f_many(np.concatenate((y[None], y + E)))
    return 2 * w @ (values[1:] - values[0] - E @ J.T) / (h * h)


def field_map(system: OdeSystem, d: int):
    """Where the field covariances are linear in the ``d``-dimensional state (only ``W`` or only ``Xi`` trained;
    else None): ``(M, e, ey)`` with the entries of ``Sig`` and (mode student) of ``Y = Cov(x, z)``
    (:func:`~onlinemdl.ode.noise.field_covariances`: ``Chf^T``) equal to ``M y + const``; ``e[p, q]`` is the row
    of ``M`` of ``Sig_pq`` (upper triangle), ``ey[b, m]`` that of ``Y_bm`` (for a full student ``e`` itself)."""
    if system.form == "reduced" or system.train not in (("w",), ("xi",)):
        return None
    n = system.K + system.M
    iu = triu_indices(n)
    e = np.zeros((n, n), dtype=np.int64)
    e[iu] = e[iu[::-1]] = np.arange(iu[0].size)
    modes = system.form == "modes"

    def entries(y):
        _, _, _, Sig, _, Chf = field_covariances(system, y)
        return np.concatenate((Sig[iu], Chf.T.ravel())) if modes else Sig[iu]

    base = entries(np.zeros(d))
    M = np.ascontiguousarray(np.stack([entries(u) - base for u in np.eye(d)], axis=1))
    ey = (iu[0].size + np.arange(M.shape[0] - iu[0].size).reshape(-1, n)) if modes else e
    return M, e, ey


def rhs_curvature(system: OdeSystem, y, Sigma, J=None, fmap=None) -> np.ndarray:
    """``H : Sigma`` of the right-hand side (the bias forcing's, theory/finite_size.md eq. B3). Where the field
    covariances are linear in the state (:func:`field_map` ``fmap``), in closed form: the curvature of the
    ``eta^2 / b`` term's ``I_4`` sums (:func:`~onlinemdl.ode.derivatives.d_curvature`) and of the ``I_3`` terms
    ``E[delta x^T]`` (:func:`~onlinemdl.ode.derivatives.x_curvature`), contracted with ``W = M Sigma M^T``, the
    covariance of the covariances' entries (the work of a few right-hand sides, not of ``d``; decay is linear);
    elsewhere by differences along the directions of ``Sigma``, one-sided with the Jacobian ``J``
    (:func:`hessian_contraction`)."""
    y = np.ascontiguousarray(y, dtype=float)
    if fmap is None:
        return hessian_contraction(system.rhs_many, y, Sigma, J)
    M, e, ey = fmap
    _, C, st, Sig, _, Chf = field_covariances(system, y)
    W = M @ Sigma @ M.T
    c = np.concatenate((st["v"], -system.vt))
    dyn = system.dynamics
    _, HD = d_curvature(Sig, W, e, system.K, c, dyn.sigma, system.act)
    HX = x_curvature(Sig, np.ascontiguousarray(Chf.T), W, e, ey, system.K, c, system.act)
    r = C.shape[1]  # h = C s
    CX = C.T @ HX  # (r, r + M): the curvature of C^T E[delta x^T]
    gram = -dyn.eta * (CX[:, :r] + CX[:, :r].T) + dyn.eta ** 2 / dyn.batch * (C.T @ HD @ C)
    out = np.zeros(y.size)
    out[:r * (r + 1) // 2] = gram[triu_indices(r)]
    out[r * (r + 1) // 2:r * (r + 1) // 2 + r * system.M] = -dyn.eta * CX[:, r:].ravel()
    return out


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
    """How often to halve ``h`` so that ``h ||J||_1 <= 1/2``: the Taylor series of :func:`_taylor_step`
    and :func:`_horner_bias` then converge like ``1/k!`` and without cancellation (for
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
    """Terms of a Taylor series of ``e^x``-like growth that reach rounding (``x^n / n! <= 1e-15``: the rest is below
    ``e^x 1e-15`` of the sum, 6e-14 at the largest ``x = 4`` of :func:`_step`)."""
    n, term = 1, x
    while term > 1e-15:
        n += 1
        term *= x / n
    return n


@njit(cache=True)
def _horner_sigma(J, V, S0, h, n):
    """``e^{hL} S0 + int_0^h e^{tL} V dt = sum_k L^k (h^k / k! S0 + h^(k+1) / (k+1)! V)`` (``L X = J X + X J^T``)
    by Horner's scheme over ``n`` terms: one product per term, where Phi and Q would take two."""
    d = J.shape[0]
    a = np.empty(n + 1)
    a[0] = 1.0
    for k in range(1, n + 1):
        a[k] = a[k - 1] * h / k
    P = a[n] * S0 + a[n] * h / (n + 1) * V
    JP = np.empty((d, d))
    for k in range(n - 1, -1, -1):
        np.dot(J, P, JP)
        ak, bk = a[k], a[k] * h / (k + 1)
        for i in range(d):  # one pass, no temporaries: 10-18% of the sum's time
            for j in range(d):
                P[i, j] = JP[i, j] + JP[j, i] + ak * S0[i, j] + bk * V[i, j]
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
    ``Sigma_1 = e^{hL} Sigma_0 + int_0^h e^{tL} V dt`` (``L X = J X + X J^T``). Where ``h ||J||_1 <= 2``
    by Horner's scheme (:func:`_horner_sigma`, 23 to 31 products of d x d matrices where ``h ||J||_1`` is 1 to 2,
    against about 36 by the doublings); over longer steps ``Phi = e^{hJ}`` and
    ``Q = int_0^h e^{tJ} V e^{tJ^T} dt`` over ``h / 2^m`` (:func:`_halvings`), doubled ``m`` times
    (:func:`_taylor_step`), and ``Sigma_1 = Phi Sigma_0 Phi^T + Q``. Returns ``Sigma_1`` and the step's ``J``."""
    c = _MAGNUS * h
    J = 0.5 * (J1 + J2) + c * (J2 @ J1 - J1 @ J2)
    V = 0.5 * (V1 + V2) + c * (_lyap(J2, V1) - _lyap(J1, V2))
    x = 2 * h * _norm1(J)  # a bound on ||h L||
    if x <= 4.0:  # terms up to 4^k / k! <= 11: at most a digit lost to cancellation
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
    the node values' own errors; :func:`_lagrange_kernel`)."""
    t = np.atleast_1d(np.asarray(t, dtype=float))
    return _lagrange_kernel(np.ascontiguousarray(nodes, dtype=float), int(k), np.ascontiguousarray(t))


@njit(cache=True)
def _lagrange_kernel(nodes, k, t):
    """:func:`_lagrange`: ``w_j(t) = prod_{i != j} (t - x_i) / prod_{i != j} (x_j - x_i)`` for each stencil
    ``x = nodes[lo:lo + m]`` from ``max(0, k + 2 - m)`` to ``min(k, n - m)``; the one whose largest row sum of
    ``|w|`` is smallest (ties: the leftmost)."""
    n = nodes.size
    m = min(4, n)
    first = max(0, k + 2 - m)
    best_lo, best_score = first, np.inf
    best = np.zeros((t.size, m))
    W = np.empty((t.size, m))
    for lo in range(first, min(k, n - m) + 1):
        score = 0.0
        for q in range(t.size):
            row = 0.0
            for j in range(m):
                num, den = 1.0, 1.0
                for i in range(m):
                    if i != j:
                        num *= t[q] - nodes[lo + i]
                        den *= nodes[lo + j] - nodes[lo + i]
                W[q, j] = num / den
                row += abs(W[q, j])
            score = max(score, row)
        score *= 1.0 + 1e-12 * (lo - first)
        if score < best_score:
            best_lo, best_score = lo, score
            best[:] = W
    return best_lo, best


def _gauss_weights(nodes):
    """Per step ``k``, the stencil and weights (:func:`_lagrange`) that give a node quantity at the step's
    two Gauss-Legendre points ``nodes[k] + (1/2 -+ sqrt(3)/6) h``: the cubic through four nearby nodes (eq. P2),
    accurate to O(h^4) as the fourth-order Magnus step needs."""
    return [_lagrange(nodes, k, nodes[k] + _GAUSS * (nodes[k + 1] - nodes[k])) for k in range(len(nodes) - 1)]


def path_parameter(sol, nodes, sub: int = 16):
    """Where the state is along its path, at the ``nodes`` and at each step's two Gauss-Legendre points: the length
    of the polyline through the ODE solution ``sol`` at ``sub`` points a step and the Gauss points (eq. P3), plus
    1e-6 of the whole length times ``(alpha - alpha_0) / (alpha_n - alpha_0)`` (so that it keeps rising where the
    state stands still; ``alpha - alpha_0`` itself where it never moves). Returns ``(at_nodes (n,), at_gauss (n - 1, 2))``."""
    nodes = np.asarray(nodes, float)
    h = np.diff(nodes)
    fractions = np.concatenate((np.arange(sub) / sub, _GAUSS))
    inner = (nodes[:-1, None] + h[:, None] * fractions[None, :]).ravel()
    times, where = np.unique(np.concatenate((inner, nodes[-1:])), return_inverse=True)
    length = np.concatenate(([0.0], np.cumsum(np.linalg.norm(np.diff(np.asarray(sol(times)), axis=1), axis=0))))
    rise = (times - nodes[0]) / (nodes[-1] - nodes[0])
    tau = length + 1e-6 * rise * (length[-1] if length[-1] > 0 else nodes[-1] - nodes[0])
    tau = tau[where]
    at_nodes = np.concatenate((tau[:-1].reshape(h.size, -1)[:, 0], tau[-1:]))
    return at_nodes, tau[:-1].reshape(h.size, -1)[:, sub:]


def _at(weights, values):
    """A node quantity (``values[j]`` at node ``j``) at the points of ``weights = (lo, W)``."""
    lo, W = weights
    return np.tensordot(W, np.asarray(values[lo:lo + W.shape[1]]), 1)


def propagate(system: OdeSystem, nodes, ys, N: int, Sigma0=None, b0=None, bias: bool = True,
              log2: int | None = None, noise=None, jacobians=None, fmap=None, path=None):
    """``Sigma`` and ``b`` at the ``nodes`` (increasing alpha) of an ODE solution ``ys``.

    ``Sigma0``, ``b0``: their initial values (default 0: runs started from the very networks
    of the ODE). Each step is the fourth-order Magnus integrator (theory/finite_size.md eq. P1) of the
    linear systems for ``Sigma`` and ``b``, with ``J``, ``V`` and the forcing ``s = H:Sigma/2 + f_1`` of
    ``b`` at the step's two Gauss-Legendre points from the cubics through their four nearest node values
    (eq. P2). It is exact for constant coefficients (matrix exponentials), so stiff systems need no small
    steps, and its error falls like ``h^4``. ``b`` follows once ``Sigma`` is known at every node: its
    forcing needs ``Sigma``, and its cubics need the forcing two nodes ahead.
    ``path``: :func:`path_parameter` of the ODE solution; with it, ``J`` and ``V``, functions of the state alone, are
    interpolated in the position along the path instead of in alpha (eq. P3: late in a converging run they relax
    exponentially in alpha, several e-folds a step, and no cubic in alpha follows them; the forcing, which carries
    ``Sigma``, stays in alpha). ``noise``, ``jacobians``, ``fmap``: the node values of ``V`` and ``J`` and the
    :func:`field_map` when the caller has them (default: computed here).
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
    moments = [delta_moments(system, y) if shared else None for y in ys]
    Vs = [noise_covariance(system, y, log2, moments=m) for y, m in zip(ys, moments)] if noise is None else noise
    gauss = _gauss_weights(nodes)
    along = gauss if path is None else [_lagrange(path[0], k, at) for k, at in enumerate(path[1])]  # J, V: in the path
    Jg = [_at(weights, Js) for weights in along]  # J at each step's two Gauss points
    Jbar = []
    for k in range(n - 1):
        V1, V2 = _at(along[k], Vs)
        Sig[k + 1], J = _step(*Jg[k], V1, V2, nodes[k + 1] - nodes[k], Sig[k])
        Jbar.append(J)
    if not bias:
        return Sig, bb
    fmap = field_map(system, d) if fmap is None else fmap
    forcing = np.array([finite_n_drift(system, y, J, m) + (0.5 * rhs_curvature(system, y, S, J, fmap) if np.any(S) else 0.0)
                        for y, J, m, S in zip(ys, Js, moments, Sig)])  # s = H:Sigma / 2 + f_1
    for k in range(n - 1):
        h = nodes[k + 1] - nodes[k]
        s1, s2 = _at(gauss[k], forcing)
        bb[k + 1] = _bias_step(Jbar[k], bb[k], _mean_forcing(*Jg[k], s1, s2, h), h)
    return Sig, bb


# --------------------------------------------------------------------------------------
# Nodes and interpolation
# --------------------------------------------------------------------------------------
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


def interpolation_plan(nodes, alpha):
    """The plan of :func:`interpolate` to the times ``alpha``: per run of consecutive outputs in one node
    interval, ``(outputs, lo, W)`` from :func:`_lagrange`."""
    alpha = np.asarray(alpha, float)
    k = np.clip(np.searchsorted(nodes, alpha, side="right") - 1, 0, len(nodes) - 2)
    cuts = np.flatnonzero(np.diff(k)) + 1
    return [(slice(a, b), *_lagrange(nodes, k[a], alpha[a:b]))
            for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [k.size])))]


def interpolate_variance(nodes, alpha, values):
    """Variances (n_nodes, ...) at the output times ``alpha`` (``alpha[0] = nodes[0]``, the rest later): the cubic
    in ``log(value)`` over ``log(alpha - alpha_0)`` through the four nodes nearest each output (eq. P4) where those
    four are positive, else the plain cubic over ``log(alpha - alpha_0)``. Exact for a power law ``c (alpha -
    alpha_0)^p``, as the variances grow from a fixed start, where a cubic in ``alpha`` is off by 0.3% (full
    K = M = 8 run, 5 nodes a decade); for the exponential relaxation late in a run ``log(alpha - alpha_0)`` is as
    good as ``alpha``, its spacing nearly even there."""
    values = np.asarray(values, float)
    if len(nodes) < 3:
        return interpolate(interpolation_plan(nodes, alpha), values, geometric=True)
    later = interpolation_plan(np.log(nodes[1:] - nodes[0]), np.log(np.asarray(alpha[1:], float) - nodes[0]))
    return np.concatenate((values[:1], interpolate(later, values[1:], geometric=True)))


def interpolate(plan, values, geometric: bool = False):
    """Interpolation of ``values`` (n_nodes, ...) to the output times of ``plan`` (:func:`interpolation_plan`): the
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
