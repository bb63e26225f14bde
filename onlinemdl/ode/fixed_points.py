"""Fixed points of the order-parameter ODE, their stability, escape times and relaxation.

Criteria, tolerances and the derivation: ``theory/fixed_points.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..gaussian import joint_covariance
from ..trajectory import Trajectory
from .system import OdeSystem


@dataclass
class FixedPoint:
    """A fixed point of the order-parameter ODE and its linear stability.

    y, state : state vector and its unpacked order parameters.
    residual : max |d y / d alpha| there.
    eigenvalues, eigenvectors : of the Jacobian, ordered by decreasing real part.
    eps_g : generalisation error there.
    physical : whether the order parameters form a covariance (PSD ``[[Q, R], [R^T, T]]``).
    distance : ``|y - guess| / |guess|`` from the start of the root search.
    """

    y: np.ndarray
    state: dict
    residual: float
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    jacobian: np.ndarray
    eps_g: float
    physical: bool
    distance: float

    @property
    def mu_max(self) -> float:
        """Largest real part of the eigenvalues (the escape rate of a saddle)."""
        return float(self.eigenvalues.real[0])

    @property
    def unstable(self) -> int:
        """Number of unstable directions (real part above rounding)."""
        return int(np.sum(self.eigenvalues.real > self._tol))

    @property
    def _tol(self) -> float:
        return 1e-9 * max(1.0, float(np.max(np.abs(self.eigenvalues))))

    @property
    def kind(self) -> str:
        """"stable", "saddle" or "unstable" (neutral directions are not counted)."""
        n_up = self.unstable
        n_down = int(np.sum(self.eigenvalues.real < -self._tol))
        return "stable" if n_up == 0 else ("unstable" if n_down == 0 else "saddle")


def fixed_point(system: OdeSystem, guess, tol=1e-10, polish=8) -> FixedPoint:
    """Fixed point of ``system`` near ``guess`` (a state vector or a state dict).

    Root finding (Powell hybrid) followed by up to ``polish`` Newton steps, both with the
    Jacobian :meth:`OdeSystem.jacobian` (Richardson-extrapolated central differences). Raises RuntimeError when the
    residual ``max |rhs|`` does not fall below ``tol``.
    """
    from scipy.optimize import root  # SciPy is imported where it is used: it dominates start-up

    y0 = system.pack(guess) if isinstance(guess, dict) else np.asarray(guess, float).copy()
    sol = root(system.rhs, y0, jac=system.jacobian, method="hybr", options=dict(xtol=1e-14))
    y = sol.x
    f = system.rhs(y)
    for _ in range(polish):
        if np.max(np.abs(f)) < 1e-3 * tol:
            break
        step = np.linalg.lstsq(system.jacobian(y), f, rcond=None)[0]
        y_new = y - step
        f_new = system.rhs(y_new)
        if not np.max(np.abs(f_new)) < np.max(np.abs(f)):
            break
        y, f = y_new, f_new
    residual = float(np.max(np.abs(f)))
    if not residual < tol:
        raise RuntimeError(f"no fixed point near the guess: residual {residual:.3g} >= tol {tol:.3g}")
    J = system.jacobian(y)
    ev, V = np.linalg.eig(J)
    order = np.argsort(-ev.real, kind="stable")
    state = system.unpack(y)
    modes = system.form == "modes"
    cov = joint_covariance(state["Rm" if modes else "Q"], state["S" if modes else "R"], system.T)
    physical = bool(np.linalg.eigvalsh(cov)[0] >= -1e-9 * max(1.0, np.max(np.abs(cov))))
    return FixedPoint(y=y, state=state, residual=residual, eigenvalues=ev[order], eigenvectors=V[:, order],
                      jacobian=J, eps_g=system.eps_g(y), physical=physical,
                      distance=float(np.linalg.norm(y - y0) / max(np.linalg.norm(y0), 1e-300)))


def _symmetric_layout(system):
    """Check node-exchange symmetry; return the map z -> state of the symmetric subspace."""
    if system.form != "full":
        raise ValueError(f'symmetric_fixed_point needs a full-weight system (form "full"), got {system.form!r}')
    T, K, M = system.T, system.K, system.M
    off = T[~np.eye(M, dtype=bool)]
    if not (np.allclose(np.diag(T), T[0, 0]) and (off.size == 0 or np.allclose(off, off[0]))):
        raise ValueError("T must be symmetric under teacher-node exchange (equal diagonal, equal off-diagonal)")
    if not (np.allclose(system.vt, system.vt[0]) and np.allclose(system.v, system.v[0])):
        raise ValueError("v and vt must be uniform for a node-symmetric fixed point")
    train_v = "v" in system.train

    def state(z):
        q, z = z[0], z[1:]
        c, z = (z[0], z[1:]) if K > 1 else (0.0, z)
        Q = np.full((K, K), c)
        np.fill_diagonal(Q, q)
        v = np.full(K, z[1]) if train_v else system.v
        return {"Q": Q, "R": np.full((K, M), z[0]), "v": v}

    def coords(s):  # (Q_00[, Q_01], R_00[, v_0])
        return np.array([s["Q"][0, 0]] + ([s["Q"][0, 1]] if K > 1 else []) + [s["R"][0, 0]]
                        + ([s["v"][0]] if train_v else []))

    return state, coords


def symmetric_fixed_point(system: OdeSystem, start=(0.01, 0.0, 0.0), alpha_max=1e5, tol=1e-10) -> FixedPoint:
    """The symmetric (unspecialized) fixed point ``Q_ii = q, Q_ik = c, R_in = r``.

    The dynamics restricted to the symmetric subspace (exactly invariant there) are integrated
    from the symmetric ``start = (q, c, r)`` (for K = 1 only q and r are used; a trained ``v``
    starts from ``system.v``) until they come to rest, the root is found in that subspace, and
    then polished in the full space by :func:`fixed_point`. Needs a full-weight system with
    node-exchange symmetry (``T = a I + b``, uniform ``v`` and ``vt``).
    """
    from scipy.integrate import solve_ivp
    from scipy.optimize import root

    state, coords = _symmetric_layout(system)
    start = np.asarray(start, float).ravel()
    if start.shape != (3,):
        raise ValueError(f"start must be (q, c, r), got shape {start.shape}")
    z0 = start if system.K > 1 else start[[0, 2]]
    if "v" in system.train:
        z0 = np.append(z0, system.v[0])

    def F(z):  # the rhs restricted to the symmetric subspace
        return coords(system.unpack(system.rhs(system.pack(state(z)))))

    def at_rest(_, z):
        return np.max(np.abs(F(z))) - 1e-9

    at_rest.terminal = True
    path = solve_ivp(lambda _, z: F(z), (0.0, alpha_max), z0, method="LSODA", rtol=1e-8, atol=1e-12,
                     events=at_rest)
    z = root(F, path.y[:, -1], method="hybr", options=dict(xtol=1e-14)).x
    return fixed_point(system, state(z), tol=tol)


def escape_time(fp: FixedPoint, eps0) -> float:
    """Predicted time to leave a saddle from a symmetry breaking ``eps0``: ``ln(1/eps0) / mu_max``.

    Leading order in ``ln(1/eps0)``; the O(1) remainder is of order ``1/mu_max``
    (``theory/fixed_points.md``).
    """
    if not (0 < eps0 < 1):
        raise ValueError(f"eps0 must be in (0, 1), got {eps0!r}")
    if not fp.mu_max > 0:
        raise ValueError(f"the fixed point has no unstable direction (mu_max = {fp.mu_max:.3g})")
    return math.log(1.0 / eps0) / fp.mu_max


def state_at(traj: Trajectory, system: OdeSystem, alpha) -> np.ndarray:
    """State vector of ``system``'s layout at the grid point of ``traj`` nearest to ``alpha``."""
    t = traj.mean()
    i = t.at(alpha)
    keys = ("Rm", "S", "lam", "A") if system.form == "modes" else ("Q", "R")
    missing = [k for k in keys if getattr(t, k) is None]
    if missing:
        raise ValueError(f"the trajectory has no {missing} for a system of form {system.form!r}")
    s = {k: getattr(t, k)[i] for k in keys}
    s["v"] = t.v[i] if t.v is not None else system.v
    return system.pack(s)


def plateau_fixed_points(traj: Trajectory, system: OdeSystem, plateaus, near=0.25, tol=1e-10) -> list:
    """For each plateau, the fixed point the dynamics pass near, or None.

    The root search starts from the state at the plateau's flattest point; a fixed point counts
    when it is found (residual below ``tol``), physical, and within relative distance ``near``
    of that state. Its ``kind`` says what the plateau is: "saddle" (escape at rate ``mu_max``,
    :func:`escape_time`) or "stable" (a relaxation plateau: the slow eigen-directions of a
    stable point, see :func:`relaxation`).
    """
    out = []
    for p in plateaus:
        try:
            fp = fixed_point(system, state_at(traj, system, p.center), tol=tol)
        except RuntimeError:
            fp = None
        out.append(fp if fp is not None and fp.physical and fp.distance <= near else None)
    return out


def relaxation(fp: FixedPoint, system: OdeSystem, y0, alpha) -> np.ndarray:
    """``eps_g`` along the linearised flow ``y = y* + exp(J (alpha - alpha_0)) (y0 - y*)``.

    ``alpha`` starts at ``alpha_0`` (the time of ``y0``). Compared with the ODE it tests whether
    a plateau and its end are the linear relaxation around ``fp``.
    """
    from scipy.linalg import expm

    alpha = np.asarray(alpha, float)
    d0 = np.asarray(y0, float) - fp.y
    return np.array([system.eps_g(fp.y + expm(fp.jacobian * (a - alpha[0])) @ d0) for a in alpha])
