"""The order-parameter system of one model: structure, dynamics and state layout."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ..dynamics import FULL_FACTORS, MODE_FACTORS, Dynamics
from ..gaussian import activation_code, covariance_check, eps_g as _eps_g, joint_covariance
from .derivatives import jacobian as exact_jacobian
from .kernels import rhs_any, rhs_many, unpack_sym

if TYPE_CHECKING:
    from ..model import Student, Teacher

FORMS = ("full", "modes", "reduced")


@lru_cache(maxsize=None)
def triu_indices(r: int) -> tuple:
    """``np.triu_indices(r)``, the layout of a symmetric block of the state vector (cached: the state is
    packed and unpacked at every node of the finite-N theory; read-only arrays)."""
    rows, cols = np.triu_indices(r)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


def finite_difference_jacobian(f, y, order: int = 4, rel_step=None, vectorized: bool = False) -> np.ndarray:
    """Jacobian of ``f`` at ``y`` by finite differences, steps ``h_j = rel_step max(1, |y_j|)``.

    ``order`` 4: central differences Richardson-extrapolated, ``(4 J(h/2) - J(h)) / 3``, error
    O(h^4), default ``rel_step = 1e-4`` (fixed points, stability); 2: central, O(h^2),
    ``eps^(1/3)``; 1: forward, O(h), ``eps^(1/2)``, ``n + 1`` evaluations (what the stiff
    integrators need). ``vectorized``: ``f`` maps the rows of an (m, n) array at once (one call
    for all the shifted points, e.g. :meth:`OdeSystem.rhs_many`).
    """
    y = np.asarray(y, dtype=float)
    if order == 4:
        h = 1e-4 if rel_step is None else rel_step
        return (4.0 * finite_difference_jacobian(f, y, 2, h / 2, vectorized)
                - finite_difference_jacobian(f, y, 2, h, vectorized)) / 3.0
    if order not in (1, 2):
        raise ValueError(f"order must be 1, 2 or 4, got {order!r}")
    h0 = (np.finfo(float).eps ** (1 / 3 if order == 2 else 1 / 2)) if rel_step is None else rel_step
    h = h0 * np.maximum(1.0, np.abs(y))
    shifts = np.diag(h)
    points = np.concatenate((y + shifts, y - shifts) if order == 2 else (y[None], y + shifts))
    values = f(points) if vectorized else np.array([f(x) for x in points])
    n = y.size
    if order == 2:
        return ((values[:n] - values[n:]) / (2 * h[:, None])).T
    return ((values[1:] - values[0]) / h[:, None]).T


@dataclass(frozen=True, eq=False)
class OdeSystem:
    """The order-parameter dynamics of one model (immutable).

    Build it with :meth:`from_networks` or :meth:`from_state` (or :func:`onlinemdl.integrate`
    does it for you). ``form`` is "full", "modes" or "reduced" (mode student with only ``Xi``
    trained, in ``(Q, R)``). The rates, noise, decay, batch and activation are those of
    ``dynamics`` (also readable as attributes: ``system.eta``, ``system.train``, ...).
    """

    form: str
    T: np.ndarray
    vt: np.ndarray
    v: np.ndarray
    dynamics: Dynamics
    A: np.ndarray | None = None
    lam: np.ndarray | None = None

    def __getattr__(self, name):  # the description's fields: system.eta, system.train, ...
        if name in Dynamics.__dataclass_fields__:
            return getattr(self.dynamics, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def K(self) -> int:
        return self.v.shape[0]

    @property
    def M(self) -> int:
        return self.T.shape[0]

    @property
    def p(self) -> int:
        return 0 if self.lam is None else self.lam.shape[0]

    @property
    def act(self) -> int:
        return activation_code(self.dynamics.activation)

    @property
    def P(self) -> np.ndarray:
        """``P = A L^2 A^T`` of the reduced form (identity for the other forms)."""
        if self.form != "reduced":
            return np.eye(self.K)
        C = self.A * self.lam
        return C @ C.T

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def from_networks(cls, student: Student, teacher: Teacher, *, eta: float, eta_lam: float | None = None,
                      eta_A: float | None = None, eta_v: float | None = None, max_norm: float = 1e2,
                      form: str | None = None) -> tuple[OdeSystem, dict]:
        """System and initial state of ``student`` learning from ``teacher``.

        Returns ``(system, state)`` with ``state`` a dict of order parameters.
        """
        dynamics = Dynamics.from_networks(student, teacher, eta=eta, eta_lam=eta_lam, eta_A=eta_A, eta_v=eta_v,
                                          max_norm=max_norm)
        op = student.order_parameters(teacher)
        if student.is_modes:
            state = dict(Rm=op["Rm"], S=op["S"], lam=student.lam, A=student.A)
        else:
            state = dict(Q=op["Q"], R=op["R"])
        state["v"] = student.v
        system = cls.from_state(state, T=op["T"], vt=teacher.vt, dynamics=dynamics, form=form)
        if system.form == "reduced":
            state = {"Q": op["Q"], "R": op["R"], "v": student.v}
        return system, state

    @classmethod
    def from_state(cls, state: dict, T: ArrayLike, vt: ArrayLike | None = None, train=None, eta: float = 1.0,
                   eta_lam: float | None = None, eta_A: float | None = None, eta_v: float | None = None,
                   sigma: float = 0.0, weight_decay: float = 0.0, batch: int = 1, activation: str = "erf",
                   form: str | None = None, max_norm: float = 1e2, dynamics: Dynamics | None = None) -> OdeSystem:
        """System for order parameters given directly.

        ``state`` holds ``Q``, ``R`` (full) or ``Rm``, ``S``, ``A``, ``lam`` (modes), and ``v``.
        ``dynamics`` (a :class:`Dynamics`) replaces ``train`` and the rates, noise, decay, batch,
        activation and ``max_norm`` given one by one.
        """
        T = covariance_check(T, "T")
        M = T.shape[0]
        vt = np.full(M, 1.0 / M) if vt is None else np.asarray(vt, float)
        if vt.shape != (M,):
            raise ValueError(f"vt must have length M={M}, got shape {vt.shape}")
        modes = "Rm" in state
        if modes:
            for key in ("Rm", "S", "A", "lam"):
                if key not in state:
                    raise ValueError(f"a mode state needs {key!r}")
            A = np.ascontiguousarray(state["A"], float)
            lam = np.ascontiguousarray(state["lam"], float)
            p = lam.shape[0]
            K = A.shape[0]
            if A.shape != (K, p):
                raise ValueError(f"A must be (K, p) with p={p}, got {A.shape}")
            if np.shape(state["S"]) != (p, M):
                raise ValueError(f"S must be (p, M) = ({p}, {M}), got {np.shape(state['S'])}")
            covariance_check(joint_covariance(state["Rm"], state["S"], T), "[[Rm, S], [S^T, T]]")
            allowed, default_train = MODE_FACTORS, ("xi", "lam", "A")
        else:
            if "Q" not in state or "R" not in state:
                raise ValueError("a full state needs 'Q' and 'R'")
            K = np.shape(state["Q"])[0]
            if np.shape(state["R"]) != (K, M):
                raise ValueError(f"R must be (K, M) = ({K}, {M}), got {np.shape(state['R'])}")
            covariance_check(joint_covariance(state["Q"], state["R"], T), "[[Q, R], [R^T, T]]")
            allowed, default_train = FULL_FACTORS, ("w",)
            A = lam = None
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        if dynamics is None:
            dynamics = Dynamics(train=default_train if train is None else train, eta=eta, eta_lam=eta_lam,
                                eta_A=eta_A, eta_v=eta_v, sigma=sigma, weight_decay=weight_decay, batch=batch,
                                activation=activation, max_norm=max_norm)
        if set(dynamics.train) - set(allowed):
            raise ValueError(f"train must be names from {allowed}, got {dynamics.train!r}")
        v = np.full(K, 1.0 / K) if state.get("v") is None else np.asarray(state["v"], float)
        if v.shape != (K,):
            raise ValueError(f"v must have length K={K}, got shape {v.shape}")
        form = ("modes" if modes else "full") if form is None else form
        if form not in FORMS:
            raise ValueError(f'form must be "full", "modes" or "reduced", got {form!r}')
        if form == "reduced" and not (modes and dynamics.train == ("xi",)):
            raise ValueError('form="reduced" needs a mode student with train=("xi",)')
        if form == "full" and modes:
            raise ValueError('form="full" needs a full-weight student')
        return cls(form=form, T=T, vt=vt, v=v, dynamics=dynamics, A=A, lam=lam)

    # ---- state layout ----------------------------------------------------------------
    def pack(self, state: dict) -> np.ndarray:
        """State dict -> state vector (symmetric matrices by their upper triangle)."""
        parts = []
        if self.form == "modes":
            iu = triu_indices(self.p)
            parts += [np.asarray(state["Rm"])[iu], np.ravel(state["S"])]
            if "lam" in self.train:
                parts.append(np.ravel(state["lam"]))
            if "A" in self.train:
                parts.append(np.ravel(state["A"]))
        else:
            iu = triu_indices(self.K)
            parts += [np.asarray(state["Q"])[iu], np.ravel(state["R"])]
        if "v" in self.train:
            parts.append(np.ravel(state["v"]))
        return np.ascontiguousarray(np.concatenate(parts), dtype=float)

    def unpack(self, y: ArrayLike) -> dict:
        """State vector -> dict with Q, R (and Rm, S, lam, A) and v."""
        K, M, p = self.K, self.M, self.p
        out = {}
        if self.form == "modes":
            nr = p * (p + 1) // 2
            Rm = unpack_sym(np.ascontiguousarray(y, dtype=float), 0, p)
            S = y[nr:nr + p * M].reshape(p, M)
            off = nr + p * M
            lam = self.lam
            if "lam" in self.train:
                lam = y[off:off + p]
                off += p
            A = self.A
            if "A" in self.train:
                A = y[off:off + K * p].reshape(K, p)
                off += K * p
            C = A * lam
            out.update(Rm=Rm, S=S, lam=np.array(lam), A=np.array(A), Q=C @ Rm @ C.T, R=C @ S)
        else:
            nq = K * (K + 1) // 2
            Q = unpack_sym(np.ascontiguousarray(y, dtype=float), 0, K)
            out.update(Q=Q, R=y[nq:nq + K * M].reshape(K, M))
            off = nq + K * M
        out["v"] = np.array(y[off:off + K]) if "v" in self.train else self.v.copy()
        return out

    # ---- dynamics --------------------------------------------------------------------
    @cached_property
    def kernel_args(self) -> tuple:
        """The system as the argument tuple of the Numba kernels (:func:`onlinemdl.ode.kernels.rhs_any`)."""
        f8 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
        modes = self.form == "modes"
        A = f8(self.A if modes else np.zeros((self.K, 1)))
        lam = f8(self.lam if modes else np.zeros(1))
        rates, flags = self.dynamics.pack()
        return (modes, f8(self.T), f8(self.vt), f8(self.v), A, lam, f8(self.P), rates, flags)

    def rhs(self, y: ArrayLike) -> np.ndarray:
        """d state / d alpha."""
        return rhs_any(np.ascontiguousarray(y, dtype=np.float64), self.kernel_args)

    def rhs_many(self, Y: ArrayLike) -> np.ndarray:
        """:meth:`rhs` of each row of ``Y`` (m, d), in one compiled call."""
        return rhs_many(np.ascontiguousarray(Y, dtype=np.float64), self.kernel_args)

    def jacobian(self, y: ArrayLike, order: int | None = None, rel_step: float | None = None) -> np.ndarray:
        """Jacobian of :meth:`rhs` at ``y``: in closed form (:func:`onlinemdl.ode.derivatives.jacobian`), or
        with ``order`` 1, 2 or 4 by finite differences (:func:`finite_difference_jacobian`, a check)."""
        if order is None:
            return exact_jacobian(self, y)
        return finite_difference_jacobian(self.rhs_many, y, order, rel_step, vectorized=True)

    def eps_g(self, y: ArrayLike) -> float:
        """Closed-form generalisation error of the state vector ``y`` (label noise excluded)."""
        s = self.unpack(y)
        return float(_eps_g(s["Q"], s["R"], self.T, s["v"], self.vt, self.act))

    def params(self) -> dict:
        """Parameters of the system, for a Trajectory's record."""
        out = dict(form=self.form, K=self.K, M=self.M, p=self.p, **self.dynamics.params(), vt=self.vt, T=self.T)
        if self.form == "reduced":
            out["P"] = self.P
        return out
