"""Order-parameter ODEs of on-line SGD and their integrators.

The right-hand sides are the N -> infinity limit of N x (expected change per SGD step);
derivations in ``theory/online_dynamics.md``. Three forms share one Numba kernel,
:func:`field_averages`, which returns every Gaussian average the dynamics need:

* ``"full"``: full-weight student, state ``(Q, R[, v])``;
* ``"modes"``: mode student, state ``(Rm, S[, lam][, A][, v])``, any subset trained;
* ``"reduced"``: mode student with only ``Xi`` trained, state ``(Q, R)``, the full-weight
  terms multiplied by ``P = A L^2 A^T``.

Symmetric matrices are stored once (upper triangle) in the state vector.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit
from scipy.integrate import solve_ivp

from .gaussian import I2, J2, LINEAR, activation_code, covariance_check, eps_g as _eps_g, joint_covariance
from .model import Student, Teacher
from .trajectory import Trajectory

_2PI = 2.0 / math.pi
_4PI2 = 4.0 / math.pi**2


# --------------------------------------------------------------------------------------
# The Gaussian averages of the dynamics
# --------------------------------------------------------------------------------------
@njit(cache=True)
def field_averages(Sig, K, c, sigma, act):
    """Averages over the fields ``f = (h_1..h_K, v_1..v_M)`` with covariance ``Sig``.

    With ``err = sum_k c_k g(f_k) - sigma zeta`` (``c = (v, -vt)``) and
    ``delta_i = v_i g'(h_i) err``, returns

    * ``Phi`` (K, K+M), ``psi`` (K): for any Gaussian field ``z``,
      ``E[delta_i z] = sum_k Phi_ik Cov(z, f_k) - psi_i Cov(z, h_i)`` (I3 is linear in z);
    * ``D`` (K, K): ``E[delta_i delta_j] = v_i v_j (sum_kl c_k c_l I4(i,j,k,l) + sigma^2 J2(i,j))``;
    * ``Ig`` (K): ``E[err g(h_i)] = sum_k c_k I2(i, k)``.
    """
    n = Sig.shape[0]
    Phi = np.empty((K, n))
    psi = np.zeros(K)
    D = np.empty((K, K))
    Ig = np.zeros(K)
    for i in range(K):
        sii = 1.0 + Sig[i, i]
        for k in range(n):
            if act == LINEAR:
                Phi[i, k] = c[i] * c[k]
            else:
                # I3(i, z, k) = (2/pi)(C_zk (1+C_ii) - C_zi C_ik) / ((1+C_ii) sqrt(L3_ik))
                l3 = sii * (1.0 + Sig[k, k]) - Sig[i, k] ** 2
                Phi[i, k] = c[i] * c[k] * _2PI / math.sqrt(max(l3, 0.0) + 1e-300)
                psi[i] += Phi[i, k] * Sig[i, k] / sii
            Ig[i] += c[k] * I2(Sig[i, i], Sig[k, k], Sig[i, k], act)
    rs = np.empty(n)
    for a in range(K):
        saa = 1.0 + Sig[a, a]
        for b in range(a, K):
            sbb = 1.0 + Sig[b, b]
            sab = Sig[a, b]
            if act == LINEAR:
                acc = sigma * sigma
                for k in range(n):
                    for l in range(n):
                        acc += c[k] * c[l] * Sig[k, l]
                D[a, b] = D[b, a] = c[a] * c[b] * acc
                continue
            # I4(a,b,k,l) = (4/pi^2) / sqrt(L4) asin(L0 / sqrt(L1_k L1_l)), Saad & Solla (1995) eq. A6
            l4 = max(saa * sbb - sab * sab, 0.0)
            for k in range(n):
                sak, sbk = Sig[a, k], Sig[b, k]
                l1 = l4 * (1.0 + Sig[k, k]) - sbk * sbk * saa - sak * sak * sbb + 2.0 * sab * sak * sbk
                rs[k] = 1.0 / math.sqrt(l1) if l1 > 0.0 else 0.0
            acc = 0.0
            for k in range(n):
                sak, sbk = Sig[a, k], Sig[b, k]
                ak, bk = sak * sbb, sbk * saa
                u, w = l4 * Sig[k, k] - sbk * bk - sak * ak + 2.0 * sab * sak * sbk, rs[k]
                part = 0.5 * c[k] * math.asin(min(1.0, max(-1.0, u * w * w)))
                for l in range(k + 1, n):
                    sal, sbl = Sig[a, l], Sig[b, l]
                    l0 = l4 * Sig[k, l] - bk * sbl - ak * sal + sab * (sak * sbl + sal * sbk)
                    part += c[l] * math.asin(min(1.0, max(-1.0, l0 * w * rs[l])))
                acc += 2.0 * c[k] * part
            acc *= _4PI2 / math.sqrt(l4 + 1e-300)
            acc += sigma * sigma * J2(Sig[a, a], Sig[b, b], sab, act)
            D[a, b] = D[b, a] = c[a] * c[b] * acc
    return Phi, psi, D, Ig


# --------------------------------------------------------------------------------------
# Right-hand sides
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _unpack_sym(y, off, r):
    out = np.empty((r, r))
    for a in range(r):
        for b in range(a, r):
            out[a, b] = out[b, a] = y[off]
            off += 1
    return out


@njit(cache=True)
def _pack_sym(X, dy, off):
    r = X.shape[0]
    for a in range(r):
        for b in range(a, r):
            dy[off] = X[a, b]
            off += 1
    return off


@njit(cache=True)
def _fields_cov(Q, R, T):
    K, M = R.shape
    Sig = np.empty((K + M, K + M))
    Sig[:K, :K] = Q
    Sig[:K, K:] = R
    Sig[K:, :K] = R.T
    Sig[K:, K:] = T
    return Sig


@njit(cache=True)
def rhs_full(y, K, M, T, vt, v0, P, eta, eta_v, sigma, wd, inv_b, train_w, train_v, act):
    """d(Q, R, v)/d alpha for a full-weight student (``P = I``) or the reduced mode form.

    dQ/da = -eta (P E[delta h^T] + E[h delta^T] P) + (eta^2/b) P E[delta delta^T] P - 2 eta kappa Q
    dR/da = -eta P E[delta v^T] - eta kappa R
    dv_i/da = -eta_v E[err g(h_i)]
    """
    nq = K * (K + 1) // 2
    Q = _unpack_sym(y, 0, K)
    R = y[nq:nq + K * M].copy().reshape((K, M))
    v = y[nq + K * M:nq + K * M + K].copy() if train_v else v0
    c = np.concatenate((v, -vt))
    Sig = _fields_cov(Q, R, T)
    Phi, psi, D, Ig = field_averages(Sig, K, c, sigma, act)
    dy = np.zeros_like(y)
    if train_w:
        Xf = Phi @ Sig  # E[delta_i f_k] before the psi correction
        Xh = Xf[:, :K] - psi.reshape((K, 1)) * Q  # E[delta h^T]
        Xv = Xf[:, K:] - psi.reshape((K, 1)) * R  # E[delta v^T]
        PXh = P @ Xh
        dQ = -eta * (PXh + PXh.T) + (eta * eta * inv_b) * (P @ D @ P) - 2.0 * eta * wd * Q
        off = _pack_sym(dQ, dy, 0)
        dR = -eta * (P @ Xv) - eta * wd * R
        dy[off:off + K * M] = dR.ravel()
    if train_v:
        dy[nq + K * M:nq + K * M + K] = -eta_v * Ig
    return dy


@njit(cache=True)
def rhs_modes(y, K, M, p, T, vt, v0, A0, lam0, eta, eta_lam, eta_A, eta_v, sigma, wd, inv_b,
              train_xi, train_lam, train_A, train_v, act):
    """d(Rm, S, lam, A, v)/d alpha for a mode student (``C = A diag(lam)``, ``h = C s``).

    dRm/da = -eta (C^T X + X^T C) + (eta^2/b) C^T E[delta delta^T] C - 2 eta kappa Rm,  X = E[delta s^T]
    dS/da = -eta C^T E[delta v^T] - eta kappa S
    dlam_mu/da = -eta_lam sum_i A_imu X_imu;   dA_imu/da = -eta_A lam_mu X_imu
    dv_i/da = -eta_v E[err g(h_i)]
    """
    nr = p * (p + 1) // 2
    Rm = _unpack_sym(y, 0, p)
    S = y[nr:nr + p * M].copy().reshape((p, M))
    off = nr + p * M
    if train_lam:
        lam = y[off:off + p].copy()
        off += p
    else:
        lam = lam0
    if train_A:
        A = y[off:off + K * p].copy().reshape((K, p))
        off += K * p
    else:
        A = A0
    v = y[off:off + K].copy() if train_v else v0
    C = A * lam.reshape((1, p))
    CRm = C @ Rm
    Q = CRm @ C.T
    R = C @ S
    c = np.concatenate((v, -vt))
    Sig = _fields_cov(Q, R, T)
    Phi, psi, D, Ig = field_averages(Sig, K, c, sigma, act)
    # Cov(s_b, f_k): (Rm C^T | S)
    Cs = np.empty((p, K + M))
    Cs[:, :K] = CRm.T
    Cs[:, K:] = S
    X = Phi @ Cs.T - psi.reshape((K, 1)) * CRm  # E[delta s^T], K x p
    dy = np.zeros_like(y)
    if train_xi:
        CX = C.T @ X
        dRm = -eta * (CX + CX.T) + (eta * eta * inv_b) * (C.T @ D @ C) - 2.0 * eta * wd * Rm
        _pack_sym(dRm, dy, 0)
        Xv = Phi @ np.ascontiguousarray(Sig[:, K:]) - psi.reshape((K, 1)) * R  # E[delta v^T]
        dS = -eta * (C.T @ Xv) - eta * wd * S
        dy[nr:nr + p * M] = dS.ravel()
    off = nr + p * M
    if train_lam:
        for mu in range(p):
            acc = 0.0
            for i in range(K):
                acc += A[i, mu] * X[i, mu]
            dy[off + mu] = -eta_lam * acc
        off += p
    if train_A:
        for i in range(K):
            for mu in range(p):
                dy[off + i * p + mu] = -eta_A * lam[mu] * X[i, mu]
        off += K * p
    if train_v:
        dy[off:off + K] = -eta_v * Ig
    return dy


@njit(cache=True)
def rhs_any(y, args):
    """Dispatch to :func:`rhs_modes` or :func:`rhs_full`; ``args`` is ``OdeSystem.args``."""
    (modes, K, M, p, T, vt, v0, A0, lam0, P, eta, eta_lam, eta_A, eta_v, sigma, wd, inv_b,
     txi, tlam, tA, tv, act) = args
    if modes:
        return rhs_modes(y, K, M, p, T, vt, v0, A0, lam0, eta, eta_lam, eta_A, eta_v, sigma, wd, inv_b,
                         txi, tlam, tA, tv, act)
    return rhs_full(y, K, M, T, vt, v0, P, eta, eta_v, sigma, wd, inv_b, txi, tv, act)


# --------------------------------------------------------------------------------------
# The system: structure, rates, state packing
# --------------------------------------------------------------------------------------
def _rate(name, value, default):
    value = default if value is None else value
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass
class OdeSystem:
    """The order-parameter dynamics of one model: structure, rates and state layout.

    Build it with :meth:`from_networks` (or :func:`integrate` does it for you). ``form``
    is "full", "modes" or "reduced" (mode student with only ``Xi`` trained, in ``(Q, R)``).
    """

    form: str
    K: int
    M: int
    T: np.ndarray
    vt: np.ndarray
    v: np.ndarray
    train: tuple
    eta: float
    eta_lam: float = 0.0
    eta_A: float = 0.0
    eta_v: float = 0.0
    sigma: float = 0.0
    weight_decay: float = 0.0
    batch: int = 1
    activation: str = "erf"
    A: np.ndarray | None = None
    lam: np.ndarray | None = None
    p: int = 0
    nrhs: int = field(default=0, compare=False)
    _args: tuple = field(default=None, init=False, repr=False, compare=False)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name not in ("_args", "nrhs"):
            object.__setattr__(self, "_args", None)  # the kernel arguments are rebuilt on next use

    @property
    def P(self) -> np.ndarray:
        """``P = A L^2 A^T`` of the reduced form (identity for the other forms)."""
        if self.form != "reduced":
            return np.eye(self.K)
        C = self.A * self.lam
        return C @ C.T

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def from_networks(cls, student: Student, teacher: Teacher, eta, eta_lam=None, eta_A=None, eta_v=None,
                      form=None):
        """System and initial state of ``student`` learning from ``teacher``.

        Returns ``(system, state)`` with ``state`` a dict of order parameters.
        """
        op = student.order_parameters(teacher)
        state = {k: op[k] for k in ("Q", "R")} if not student.is_modes else {k: op[k] for k in ("Rm", "S")}
        if student.is_modes:
            state.update(lam=student.lam, A=student.A)
        state["v"] = student.v
        system = cls.from_state(state, T=op["T"], vt=teacher.vt, train=student.train, eta=eta, eta_lam=eta_lam,
                                eta_A=eta_A, eta_v=eta_v, sigma=teacher.sigma, weight_decay=student.weight_decay,
                                batch=student.batch, activation=student.activation, form=form)
        if system.form == "reduced":
            state = {"Q": op["Q"], "R": op["R"], "v": student.v}
        return system, state

    @classmethod
    def from_state(cls, state, T, vt=None, train=None, eta=1.0, eta_lam=None, eta_A=None, eta_v=None,
                   sigma=0.0, weight_decay=0.0, batch=1, activation="erf", form=None):
        """System for order parameters given directly.

        ``state`` holds ``Q``, ``R`` (full) or ``Rm``, ``S``, ``A``, ``lam`` (modes), and ``v``.
        """
        T = covariance_check(T, "T")
        M = T.shape[0]
        vt = np.full(M, 1.0 / M) if vt is None else np.asarray(vt, float)
        if vt.shape != (M,):
            raise ValueError(f"vt must have length M={M}, got shape {vt.shape}")
        eta = _rate("eta", eta, None)
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
            allowed = ("xi", "lam", "A", "v")
            train = ("xi", "lam", "A") if train is None else tuple(train)
        else:
            if "Q" not in state or "R" not in state:
                raise ValueError("a full state needs 'Q' and 'R'")
            K = np.shape(state["Q"])[0]
            if np.shape(state["R"]) != (K, M):
                raise ValueError(f"R must be (K, M) = ({K}, {M}), got {np.shape(state['R'])}")
            covariance_check(joint_covariance(state["Q"], state["R"], T), "[[Q, R], [R^T, T]]")
            allowed = ("w", "v")
            train = ("w",) if train is None else tuple(train)
            A = lam = None
            p = 0
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        bad = [t for t in train if t not in allowed]
        if bad:
            raise ValueError(f"train must be names from {allowed}, got {train!r}")
        v = np.full(K, 1.0 / K) if state.get("v") is None else np.asarray(state["v"], float)
        if v.shape != (K,):
            raise ValueError(f"v must have length K={K}, got shape {v.shape}")
        if form is None:
            form = "modes" if modes else "full"
        if form not in ("full", "modes", "reduced"):
            raise ValueError(f'form must be "full", "modes" or "reduced", got {form!r}')
        if form == "reduced" and not (modes and set(train) <= {"xi"}):
            raise ValueError('form="reduced" needs a mode student with train=("xi",)')
        if form == "full" and modes:
            raise ValueError('form="full" needs a full-weight student')
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        if int(batch) != batch or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        system = cls(form=form, K=K, M=M, T=T, vt=vt, v=v, train=tuple(train), eta=eta,
                     eta_lam=_rate("eta_lam", eta_lam, eta), eta_A=_rate("eta_A", eta_A, eta),
                     eta_v=_rate("eta_v", eta_v, eta), sigma=float(sigma),
                     weight_decay=_rate("weight_decay", weight_decay, 0.0), batch=int(batch),
                     activation=activation, A=A, lam=lam, p=p)
        activation_code(activation)
        return system

    # ---- state layout ----------------------------------------------------------------
    @property
    def act(self) -> int:
        return activation_code(self.activation)

    def pack(self, state) -> np.ndarray:
        """State dict -> state vector (symmetric matrices by their upper triangle)."""
        parts = []
        if self.form == "modes":
            iu = np.triu_indices(self.p)
            parts += [np.asarray(state["Rm"])[iu], np.ravel(state["S"])]
            if "lam" in self.train:
                parts.append(np.ravel(state["lam"]))
            if "A" in self.train:
                parts.append(np.ravel(state["A"]))
        else:
            iu = np.triu_indices(self.K)
            parts += [np.asarray(state["Q"])[iu], np.ravel(state["R"])]
        if "v" in self.train:
            parts.append(np.ravel(state["v"]))
        return np.ascontiguousarray(np.concatenate(parts), dtype=float)

    def unpack(self, y) -> dict:
        """State vector -> dict with Q, R (and Rm, S, lam, A) and v."""
        K, M, p = self.K, self.M, self.p
        out = {}
        if self.form == "modes":
            nr = p * (p + 1) // 2
            Rm = np.zeros((p, p))
            Rm[np.triu_indices(p)] = y[:nr]
            Rm = Rm + np.triu(Rm, 1).T
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
            Q = np.zeros((K, K))
            Q[np.triu_indices(K)] = y[:nq]
            Q = Q + np.triu(Q, 1).T
            out.update(Q=Q, R=y[nq:nq + K * M].reshape(K, M))
            off = nq + K * M
        out["v"] = np.array(y[off:off + K]) if "v" in self.train else self.v.copy()
        return out

    # ---- dynamics --------------------------------------------------------------------
    @property
    def args(self) -> tuple:
        """The system as the argument tuple of the Numba kernels (:func:`rhs_any`)."""
        f8 = lambda a: np.ascontiguousarray(a, dtype=np.float64)
        modes = self.form == "modes"
        A = f8(self.A if modes else np.zeros((self.K, 1)))
        lam = f8(self.lam if modes else np.zeros(1))
        return (modes, self.K, self.M, self.p, f8(self.T), f8(self.vt), f8(self.v), A, lam, f8(self.P), self.eta,
                self.eta_lam, self.eta_A, self.eta_v, self.sigma, self.weight_decay, 1.0 / self.batch,
                "xi" in self.train or "w" in self.train, "lam" in self.train, "A" in self.train, "v" in self.train,
                self.act)

    def rhs(self, y) -> np.ndarray:
        """d state / d alpha."""
        self.nrhs += 1
        if self._args is None:
            self._args = self.args
        return rhs_any(np.ascontiguousarray(y, dtype=np.float64), self._args)

    def jacobian(self, y, rel_step=None, central=True) -> np.ndarray:
        """Finite-difference Jacobian of :meth:`rhs` (central by default, O(h^2))."""
        y = np.asarray(y, dtype=float)
        h0 = (np.finfo(float).eps ** (1 / 3 if central else 1 / 2)) if rel_step is None else rel_step
        J = np.empty((y.size, y.size))
        f0 = None if central else self.rhs(y)
        for j in range(y.size):
            h = h0 * max(1.0, abs(y[j]))
            yp = y.copy()
            yp[j] += h
            if central:
                ym = y.copy()
                ym[j] -= h
                J[:, j] = (self.rhs(yp) - self.rhs(ym)) / (2 * h)
            else:
                J[:, j] = (self.rhs(yp) - f0) / h
        return J

    def eps_g(self, y) -> float:
        """Closed-form generalisation error of the state vector ``y`` (label noise excluded)."""
        s = self.unpack(y)
        return float(_eps_g(s["Q"], s["R"], self.T, s["v"], self.vt, self.act))

    def params(self) -> dict:
        """Parameters of the system, for a Trajectory's record."""
        out = dict(form=self.form, K=self.K, M=self.M, p=self.p, train=list(self.train), eta=self.eta,
                   eta_lam=self.eta_lam, eta_A=self.eta_A, eta_v=self.eta_v, sigma=self.sigma,
                   weight_decay=self.weight_decay, batch=self.batch, activation=self.activation,
                   vt=self.vt, T=self.T)
        if self.form == "reduced":
            out["P"] = self.P
        return out


# --------------------------------------------------------------------------------------
# Integration
# --------------------------------------------------------------------------------------
def alpha_grid(alpha_max, points=200, alpha_min=None):
    """Default output grid: 0 and ``points`` log-spaced values up to ``alpha_max``."""
    if not (np.isfinite(alpha_max) and alpha_max > 0):
        raise ValueError(f"alpha_max must be a finite number > 0, got {alpha_max!r}")
    if int(points) != points or points < 2:
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    lo = min(1e-2, alpha_max / 10) if alpha_min is None else alpha_min
    return np.concatenate(([0.0], np.geomspace(lo, alpha_max, int(points))))


def _check_alpha(alpha):
    alpha = np.asarray(alpha, dtype=float).ravel()
    if alpha.size < 1 or not np.all(np.isfinite(alpha)) or alpha[0] < 0 or np.any(np.diff(alpha) <= 0):
        raise ValueError("alpha must be a non-empty, finite, strictly increasing sequence of values >= 0")
    return alpha


@njit(cache=True)
def _euler(y, t_out, dt, args, max_q):
    """Fixed-step Euler to each output time; stops once some |state entry| exceeds ``max_q``."""
    ys = np.full((t_out.size, y.size), np.nan)
    t = 0.0
    n = 0
    for o in range(t_out.size):
        while t < t_out[o] - 1e-12 * max(1.0, t_out[o]):
            h = min(dt, t_out[o] - t)
            y = y + h * rhs_any(y, args)
            t += h
            n += 1
            if not np.max(np.abs(y)) < max_q:
                return ys, n, t, True
        ys[o] = y
    return ys, n, t, False


def _max_q(system, state, max_norm):
    scale = max(1.0, float(np.max(np.diag(system.T))), float(np.max(np.abs(state.get("Q", state.get("Rm"))))))
    return max_norm * scale


def integrate(student: Student | None = None, teacher: Teacher | None = None, *, eta=None, alpha_max=None, alpha=None,
              eta_lam=None, eta_A=None, eta_v=None, method="auto", rtol=1e-8, atol=1e-10, step=None, points=200,
              state=None, system=None, form=None, max_norm=1e2) -> Trajectory:
    """Integrate the order-parameter ODEs from the networks' own order parameters.

    Parameters
    ----------
    student, teacher : the networks (their order parameters are the initial condition).
    eta : learning rate of the N-dimensional weights (``W`` or ``Xi``).
    alpha_max, alpha : end time with the default log-spaced grid, or the output times.
    eta_lam, eta_A, eta_v : rates of the O(1) factors (default ``eta``).
    method : "auto" (LSODA: switches between Adams and BDF with the stiffness, for both the
        fast and the stiff regime), any other ``scipy.integrate.solve_ivp`` method name
        ("Radau", "BDF", "RK45", "DOP853"), or "euler" (fixed step ``step``, default 1/N,
        mirroring discrete SGD).
    rtol, atol : tolerances of the adaptive methods.
    state, system : instead of networks, order parameters given directly and the
        :class:`OdeSystem` built by ``OdeSystem.from_state`` (its rates are used; ``eta`` and the
        other rates must then not be given).
    form : "full", "modes" or "reduced" (default: the networks' own form).
    max_norm : the run is marked "diverged" once a squared weight norm (``Q_ii`` or an entry of
        the mode state) exceeds ``max_norm`` times its scale (1, ``T_nn``, initial ``Q``).

    Returns
    -------
    Trajectory with ``kind="ode"``; ``status`` is "ok", "diverged" (trajectory up to the
    divergence) or "failed" (solver failure, message says why).
    """
    if system is None:
        if student is None or teacher is None:
            raise ValueError("give student and teacher, or state= and system=")
        if eta is None:
            raise ValueError("eta must be given (the learning rate of the N-dimensional weights)")
        system, state = OdeSystem.from_networks(student, teacher, eta, eta_lam, eta_A, eta_v, form=form)
        N = student.N
    else:
        if state is None:
            raise ValueError("system= needs state=")
        if any(r is not None for r in (eta, eta_lam, eta_A, eta_v)):
            raise ValueError("eta, eta_lam, eta_A, eta_v come from system=; set them in OdeSystem.from_state")
        N = None
    if alpha is None:
        if alpha_max is None:
            raise ValueError("give alpha_max or alpha")
        alpha = alpha_grid(alpha_max, points)
    alpha = _check_alpha(alpha)
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got {rtol!r}, {atol!r}")
    if not (np.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
    y0 = system.pack(state)
    max_q = _max_q(system, state, max_norm)
    t0 = time.perf_counter()
    system.nrhs = 0
    status, message = "ok", ""
    if method == "euler":
        dt = (1.0 / N if N else 1e-2) if step is None else float(step)
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"step must be a finite number > 0, got {step!r}")
        ys, nfev, t_end, div = _euler(y0, alpha, dt, system.args, max_q)
        n_ok = int(np.sum(np.all(np.isfinite(ys), axis=1)))
        ys = ys[:n_ok]
        if div:
            status, message = "diverged", f"diverged at alpha = {t_end:.6g} (weights ran away; eta too large?)"
    else:
        ys, nfev, status, message = _run_adaptive(system, y0, alpha, method, rtol, atol, max_q)
    wall = time.perf_counter() - t0
    if status == "ok":
        message = f"integrated to alpha = {alpha[-1]:.6g}"
    return _trajectory(system, alpha[:len(ys)], ys, N, status, message, nfev, method, wall,
                       dict(rtol=rtol, atol=atol, step=step, max_norm=max_norm))


def _run_adaptive(system, y0, alpha, method, rtol, atol, max_q):
    def runaway(t, y):
        return max_q - np.max(np.abs(y)) if np.all(np.isfinite(y)) else -1.0

    runaway.terminal = True
    runaway.direction = -1
    name = "LSODA" if method == "auto" else method
    kw = {}
    if name in ("LSODA", "BDF", "Radau"):
        kw["jac"] = lambda t, y: system.jacobian(y, central=False)
    if alpha[-1] == 0:
        return y0[None, :], 0, "ok", ""
    try:
        sol = solve_ivp(lambda t, y: system.rhs(y), (0.0, alpha[-1]), y0, method=name, t_eval=alpha, rtol=rtol,
                        atol=atol, events=runaway, **kw)
    except ValueError as err:
        raise ValueError(f"method: {err}") from None
    ys = np.asarray(sol.y, dtype=float).reshape(y0.size, -1).T  # (0, n) when stopped before the first output
    finite = np.all(np.isfinite(ys), axis=1)
    ys = ys[: int(np.argmin(finite)) if not finite.all() else len(ys)]
    if sol.status == 1:
        t_div = float(sol.t_events[0][0])
        return ys, system.nrhs, "diverged", f"diverged at alpha = {t_div:.6g} (weights ran away; eta too large?)"
    if sol.status < 0:
        return ys, system.nrhs, "failed", f"solver failed at alpha = {sol.t[-1]:.6g}: {sol.message}"
    return ys, system.nrhs, "ok", ""


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
