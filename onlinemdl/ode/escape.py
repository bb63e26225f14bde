"""Escape from a saddle (the symmetric plateau, theory/finite_size.md §7): the plateau lengths of runs,
measured (:func:`escape_times` of their eps_g) and predicted (:func:`escape_distribution`: states drawn
from the linear-noise theory near the saddle, followed by the ODE)."""
from __future__ import annotations

import math

import numpy as np

from ..runsetup import check_int, check_number
from .fluctuations import observables, validity
from .noise import noise_covariance
from .propagation import node_grid, propagate
from .system import OdeSystem


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
    ode_escape = float(escape_times(grid, observables(system, ygrid)[0], eps_level, window)[0])
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
        return float(np.max(observables(system, z.reshape(n, d))[0])) - eps_level

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
    eps = observables(system, Z.reshape(n, d, -1).transpose(0, 2, 1).reshape(-1, d))[0].reshape(n, -1)
    return escape_times(grid, eps, eps_level, window)


def _gaussian(rng, mean, cov, n):
    w, E = np.linalg.eigh((cov + cov.T) / 2)
    return mean + rng.standard_normal((n, mean.size)) @ (E * np.sqrt(np.clip(w, 0, None))).T
