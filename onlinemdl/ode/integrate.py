"""Integration of the order-parameter ODEs into a Trajectory."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ..gaussian import eps_g as _eps_g
from ..runsetup import (
    check_flag,
    check_fluctuation_mode,
    check_int,
    check_number,
    diverged_message,
    divergence_threshold,
    output_times,
)
from ..trajectory import Trajectory
from .kernels import euler
from .system import OdeSystem

if TYPE_CHECKING:
    from ..model import Student, Teacher

#: ``method`` values besides "euler" and "auto" (LSODA): those of ``scipy.integrate.solve_ivp``.
SOLVE_IVP_METHODS = ("RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA")


def integrate(student: Student | None = None, teacher: Teacher | None = None, *, eta: float | None = None,
              alpha_max: float | None = None, alpha: ArrayLike | None = None, eta_lam: float | None = None,
              eta_A: float | None = None, eta_v: float | None = None, method: str = "auto", rtol: float = 1e-8,
              atol: float = 1e-10, step: float | None = None, points: int = 200, state: dict | None = None,
              system: OdeSystem | None = None, form: str | None = None, max_norm: float = 1e2,
              fluctuations: bool | str = False, N: int | None = None,
              init_variance: float | None = None, covariance: bool = True) -> Trajectory:
    """Integrate the order-parameter ODEs from the networks' own order parameters.

    Parameters
    ----------
    student, teacher : the networks (their order parameters are the initial condition).
    eta : learning rate of the N-dimensional weights (``W`` or ``Xi``).
    alpha_max, alpha : end time with the default log-spaced grid, or the output times (one of them).
    eta_lam, eta_A, eta_v : rates of the O(1) factors (default ``eta``).
    method : "auto" (LSODA: switches between Adams and BDF with the stiffness, for both the
        fast and the stiff regime), any other ``scipy.integrate.solve_ivp`` method name
        ("Radau", "BDF", "RK45", "DOP853"), or "euler" (fixed step ``step``, default 1/N,
        mirroring discrete SGD).
    rtol, atol : tolerances of the adaptive methods.
    state, system : instead of networks, order parameters given directly and the
        :class:`OdeSystem` built by ``OdeSystem.from_state`` (its dynamics are used; ``eta``, the
        other rates and ``max_norm`` must then not be given).
    form : "full", "modes" or "reduced" (default: the networks' own form).
    max_norm : the run is marked "diverged" once a squared weight norm (``Q_ii`` or an entry of
        the mode state) exceeds ``max_norm`` times its scale (1, ``T_nn``, initial ``Q``).
    fluctuations : finite-N theory of SGD at the networks' N (``theory/finite_size.md``):
        True (or "fixed") for SGD runs started from these very networks (zero initial
        covariance); "fresh" for runs whose N-dimensional weights are drawn afresh with i.i.d.
        entries of variance ``init_variance / N`` (``Student.full(init="large", scale=s)``: ``s^2``;
        a fresh ``Xi``): the ODE then starts from the ensemble mean of the initial order parameters
        (``G = init_variance I``, overlaps with the teacher 0) with their O(1/N) covariance. The
        Trajectory then also carries ``eps_g_sd``, ``eps_g_bias``, ``Q_sd``, ``R_sd``, ``cov``,
        ``bias`` and ``fluct_valid_until`` (see :func:`onlinemdl.ode.fluctuations.predict`).
        Forms "full" and "modes".
    N : input dimension of the prediction when the system is given by ``state=``, ``system=``.
    init_variance : with ``fluctuations="fresh"``, the initializer's ``E[G_aa]`` (the squared norm
        of a fresh N-dimensional weight vector over N). None estimates it as ``tr(G) / r`` of the
        given networks, whose own O(N^-1/2) sampling error then shifts the predicted mean by more
        than the O(1/N) bias: give it when the bias matters.
    covariance : with ``fluctuations``, whether the Trajectory carries ``cov``, the state covariance at
        every output (n x d x d: 16 MB at K = M = 8 with 201 outputs, 250 MB at K = M = 16); False leaves it
        None and keeps the rest (for scans that store many runs).

    Returns
    -------
    Trajectory with ``kind="ode"``; ``status`` is "ok", "diverged" (trajectory up to the
    divergence) or "failed" (solver failure, message says why).
    """
    if system is None:
        if student is None or teacher is None:
            raise ValueError("give student and teacher, or state= and system=")
        system, state = OdeSystem.from_networks(student, teacher, eta=eta, eta_lam=eta_lam, eta_A=eta_A,
                                                eta_v=eta_v, max_norm=max_norm, form=form)
        N = student.N if N is None else check_int("N", N)
    else:
        if state is None:
            raise ValueError("system= needs state=")
        if student is not None or teacher is not None:
            raise ValueError("give student and teacher, or state= and system=, not both")
        if any(r is not None for r in (eta, eta_lam, eta_A, eta_v)) or max_norm != 1e2:
            raise ValueError("eta, eta_lam, eta_A, eta_v and max_norm come from system=; set them in "
                             "OdeSystem.from_state")
        N = None if N is None else check_int("N", N)
    alpha = output_times(alpha, alpha_max, points)
    if method not in ("auto", "euler") + SOLVE_IVP_METHODS:
        raise ValueError(f"method must be one of 'auto', 'euler', {', '.join(map(repr, SOLVE_IVP_METHODS))}, "
                         f"got {method!r}")
    rtol, atol = check_number("rtol", rtol, strict=True), check_number("atol", atol, strict=True)
    check_fluctuation_mode(fluctuations)
    covariance = check_flag("covariance", covariance)
    if fluctuations and not N:
        raise ValueError("fluctuations need the input dimension: give networks, or N= with state=, system=")
    sigma0 = None
    if init_variance is not None:
        if fluctuations != "fresh":
            raise ValueError('init_variance is used with fluctuations="fresh" only')
        init_variance = check_number("init_variance", init_variance, strict=True)
    if fluctuations == "fresh":
        state, sigma0 = _fresh_start(system, state, N, init_variance)
    y0 = system.pack(state)
    max_q = divergence_threshold(system.dynamics.max_norm, system.T, state.get("Q", state.get("Rm")))
    t0 = time.perf_counter()
    status, message = "ok", ""
    dense = None  # the dense LSODA solution, which the finite-N theory reuses
    if method == "euler":
        dt = (1.0 / N if N else 1e-2) if step is None else check_number("step", step, strict=True)
        ys, nfev, t_end, div = euler(y0, alpha, dt, system.kernel_args, max_q)
        ys = ys[:int(np.sum(np.all(np.isfinite(ys), axis=1)))]
        if div:
            status, message = "diverged", diverged_message(t_end)
    else:
        ys, nfev, status, message, dense = _run_adaptive(system, y0, alpha, method, rtol, atol, max_q,
                                                         dense=bool(fluctuations) and method == "auto")
    wall = time.perf_counter() - t0
    if status == "ok":
        message = f"integrated to alpha = {alpha[-1]:.6g}"
    traj = _trajectory(system, alpha[:len(ys)], ys, N, status, message, nfev, method, wall,
                       dict(rtol=rtol, atol=atol, step=step))
    if fluctuations and len(ys):
        traj = _with_fluctuations(traj, system, y0, N, sigma0, rtol, atol, fluctuations, dense, bool(covariance))
    return traj


def _fresh_start(system, state, N, init_variance=None):
    """Ensemble mean of the initial order parameters of i.i.d. weights and their N x covariance."""
    from .fluctuations import initial_covariance

    key, other = ("Rm", "S") if system.form == "modes" else ("Q", "R")
    if system.form == "reduced":
        raise ValueError('fluctuations="fresh" needs form "full" or "modes"')
    G = np.asarray(state[key], float)
    scale2 = float(np.trace(G)) / G.shape[0] if init_variance is None else init_variance
    state = dict(state, **{key: scale2 * np.eye(G.shape[0]), other: np.zeros_like(np.asarray(state[other]))})
    y0 = system.pack(state)
    return state, initial_covariance(system, y0, N, scale2)


def _with_fluctuations(traj, system, y0, N, sigma0, rtol, atol, mode, dense, covariance):
    from dataclasses import replace

    from .fluctuations import predict

    t0 = time.perf_counter()
    late = traj.alpha[0] > 0  # the runs start at alpha = 0 whatever the first output
    alpha = np.concatenate(([0.0], traj.alpha)) if late else traj.alpha
    P = predict(system, y0, alpha, N, Sigma0=sigma0, rtol=rtol, atol=atol, sol=dense, covariance=covariance)
    out = slice(int(late), None)  # the trajectory's own output times
    params = dict(traj.params, fluctuations="fresh" if mode == "fresh" else "fixed",
                  fluct_wall_time=time.perf_counter() - t0, fluct_nodes=int(P["nodes"].size))
    return replace(traj, **{k: None if P[k] is None else P[k][out]
                            for k in ("eps_g_sd", "eps_g_bias", "Q_sd", "R_sd", "cov", "bias")},
                   fluct_valid_until=P["valid_until"], params=params)


def _run_adaptive(system, y0, alpha, method, rtol, atol, max_q, dense=False):
    """``solve_ivp`` to the output times; returns ``(ys, nfev, status, message, sol)``, ``sol`` the dense
    output when ``dense`` (else None)."""
    from scipy.integrate import solve_ivp  # imported here: it costs a third of the package's import time

    nfev = 0

    def rhs(y):
        nonlocal nfev
        nfev += 1
        return system.rhs(y)

    def runaway(t, y):
        return max_q - np.max(np.abs(y)) if np.all(np.isfinite(y)) else -1.0

    runaway.terminal = True
    runaway.direction = -1
    name = "LSODA" if method == "auto" else method
    kw = {}
    if name in ("LSODA", "BDF", "Radau"):
        kw["jac"] = lambda t, y: system.jacobian(y)  # closed form: no right-hand-side evaluations
    if alpha[-1] == 0:
        return y0[None, :], 0, "ok", "", None
    sol = solve_ivp(lambda t, y: rhs(y), (0.0, alpha[-1]), y0, method=name, t_eval=alpha, rtol=rtol, atol=atol,
                    events=runaway, dense_output=dense, **kw)
    ys = np.asarray(sol.y, dtype=float).reshape(y0.size, -1).T  # (0, n) when stopped before the first output
    finite = np.all(np.isfinite(ys), axis=1)
    ys = ys[: int(np.argmin(finite)) if not finite.all() else len(ys)]
    if sol.status == 1:
        return ys, nfev, "diverged", diverged_message(float(sol.t_events[0][0])), sol.sol
    if sol.status < 0:
        return ys, nfev, "failed", f"solver failed at alpha = {sol.t[-1]:.6g}: {sol.message}", sol.sol
    return ys, nfev, "ok", "", sol.sol


def _trajectory(system, alpha, ys, N, status, message, nfev, method, wall, extra):
    states = [system.unpack(y) for y in ys]
    template = system.unpack(np.zeros(ys.shape[1]))

    def stack(key):
        return np.array([s[key] for s in states]) if states else np.empty((0,) + np.shape(template[key]))

    Q, R, v = stack("Q"), stack("R"), stack("v")
    eps = np.array([_eps_g(s["Q"], s["R"], system.T, s["v"], system.vt, system.act) for s in states])
    params = system.params()
    params.update(method=method, N=N if N else 0, wall_time=wall,
                  **{k: val for k, val in extra.items() if val is not None})
    steps = np.rint(alpha * N).astype(np.int64) if N else np.zeros(len(alpha), np.int64)
    modes = system.form == "modes"
    return Trajectory(alpha=np.asarray(alpha, float), steps=steps, eps_g=eps, Q=Q, R=R, T=system.T.copy(),
                      Rm=stack("Rm") if modes else None, S=stack("S") if modes else None,
                      lam=stack("lam") if modes else None, A=stack("A") if modes else None, v=v,
                      kind="ode", params=params, status=status, message=message, nfev=int(nfev))
