"""Numba kernels of the order-parameter ODEs: the Gaussian averages and the right-hand sides.

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

import numpy as np
from numba import njit, uint64

from ..dynamics import ACT, DECAY, ETA, ETA_A, ETA_LAM, ETA_V, INV_BATCH, SIGMA, TRAIN_A, TRAIN_LAM, TRAIN_N, TRAIN_V
from ..gaussian import I2, J2, LINEAR

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
            acc = _i4_sum(Sig, c, a, b, saa, sbb, sab, l4, rs)
            acc *= _4PI2 / math.sqrt(l4 + 1e-300)
            acc += sigma * sigma * J2(Sig[a, a], Sig[b, b], sab, act)
            D[a, b] = D[b, a] = c[a] * c[b] * acc
    return Phi, psi, D, Ig


# arcsin on [-1, 1] as Sun's fdlibm computes it (rational approximation on [0, 1/2], and
# asin x = pi/2 - 2 asin sqrt((1 - x)/2) above), branch-free so that the I4 sums vectorise
_PIO2_HI, _PIO2_LO = 1.57079632679489655800e+00, 6.12323399573676603587e-17
_PS0, _PS1, _PS2 = 1.66666666666666657415e-01, -3.25565818622400915405e-01, 2.01212532134862925881e-01
_PS3, _PS4, _PS5 = -4.00555345006794114027e-02, 7.91534994289814532176e-04, 3.47933107596021167570e-05
_QS1, _QS2, _QS3, _QS4 = -2.40339491173441421878e+00, 2.02094576023350569471e+00, -6.88283971605453293030e-01, \
    7.70381505559019352791e-02
_FM = {"reassoc", "contract", "nsz"}


@njit(cache=True, inline="always", error_model="numpy")
def asin_clipped(x):
    """arcsin of x clipped to [-1, 1], within 2 ulp of math.asin; no branches."""
    y = min(1.0, abs(x))
    big = y > 0.5
    t = (1.0 - y) * 0.5 if big else y * y
    r = math.sqrt(t)
    s = r if big else y
    p = t * (_PS0 + t * (_PS1 + t * (_PS2 + t * (_PS3 + t * (_PS4 + t * _PS5)))))
    q = 1.0 + t * (_QS1 + t * (_QS2 + t * (_QS3 + t * _QS4)))
    w = s + s * (p / q)
    out = _PIO2_HI - (2.0 * w - _PIO2_LO) if big else w
    return math.copysign(out, x)


@njit(cache=True, fastmath=_FM, error_model="numpy")  # no zero-division check: the l loop vectorises
def _i4_sum(Sig, c, a, b, saa, sbb, sab, l4, rs):
    """sum_kl c_k c_l sqrt(L4) I4(a,b,k,l) (pi^2/4): the arcsin terms of Saad & Solla (1995) eq. A6
    over the pairs k <= l, with the per-(a, b, k) parts of L0 hoisted out of the l loop."""
    n = Sig.shape[0]
    acc = 0.0
    for k in range(n):
        sak, sbk = Sig[a, k], Sig[b, k]
        ak, bk = sak * sbb, sbk * saa
        w = rs[k]
        u = l4 * Sig[k, k] - sbk * bk - sak * ak + 2.0 * sab * sak * sbk
        part = 0.5 * c[k] * asin_clipped(u * w * w)
        # L0(k, l) = l4 S_kl - S_bl (bk - sab S_ak) - S_al (ak - sab S_bk)
        l4w, pw, qw = l4 * w, (bk - sab * sak) * w, (ak - sab * sbk) * w
        for l in range(uint64(k + 1), uint64(n)):
            part += c[l] * asin_clipped((l4w * Sig[k, l] - pw * Sig[b, l] - qw * Sig[a, l]) * rs[l])
        acc += 2.0 * c[k] * part
    return acc


# --------------------------------------------------------------------------------------
# Right-hand sides
# --------------------------------------------------------------------------------------
@njit(cache=True)
def mm(X, Y, out=None):
    """X @ Y by loops: these products are small, and ``@`` would call a multi-threaded BLAS whose
    threads compete for the cores with scan workers and replica threads. Zero entries of ``X`` are skipped
    (the Jacobian's unit directions leave most of theirs zero). ``out``: an array to overwrite with the product
    (the Jacobian's loop over directions allocates none)."""
    n, k = X.shape
    m = Y.shape[1]
    if out is None:
        out = np.zeros((n, m))
    else:
        out[:] = 0.0
    for i in range(n):
        for q in range(k):
            x = X[i, q]
            if x != 0.0:
                for j in range(m):
                    out[i, j] += x * Y[q, j]
    return out


@njit(cache=True)
def unpack_sym(y, off, r):
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
def fields_cov(Q, R, T):
    K, M = R.shape
    Sig = np.empty((K + M, K + M))
    Sig[:K, :K] = Q
    Sig[:K, K:] = R
    Sig[K:, :K] = R.T
    Sig[K:, K:] = T
    return Sig


@njit(cache=True)
def rhs_full(y, T, vt, v0, P, rates, flags):
    """d(Q, R, v)/d alpha for a full-weight student (``P = I``) or the reduced mode form.

    ``rates``, ``flags``: :meth:`onlinemdl.dynamics.Dynamics.pack`.

    dQ/da = -eta (P E[delta h^T] + E[h delta^T] P) + (eta^2/b) P E[delta delta^T] P - 2 eta kappa Q
    dR/da = -eta P E[delta v^T] - eta kappa R
    dv_i/da = -eta_v E[err g(h_i)]
    """
    K, M = v0.size, vt.size
    eta, eta_v, sigma, wd, inv_b = rates[ETA], rates[ETA_V], rates[SIGMA], rates[DECAY], rates[INV_BATCH]
    train_w, train_v, act = flags[TRAIN_N], flags[TRAIN_V], flags[ACT]
    nq = K * (K + 1) // 2
    Q = unpack_sym(y, 0, K)
    R = y[nq:nq + K * M].copy().reshape((K, M))
    v = y[nq + K * M:nq + K * M + K].copy() if train_v else v0
    c = np.concatenate((v, -vt))
    Sig = fields_cov(Q, R, T)
    Phi, psi, D, Ig = field_averages(Sig, K, c, sigma, act)
    dy = np.zeros_like(y)
    if train_w:
        Xf = mm(Phi, Sig)  # E[delta_i f_k] before the psi correction
        Xh = Xf[:, :K] - psi.reshape((K, 1)) * Q  # E[delta h^T]
        Xv = Xf[:, K:] - psi.reshape((K, 1)) * R  # E[delta v^T]
        PXh = mm(P, Xh)
        dQ = -eta * (PXh + PXh.T) + (eta * eta * inv_b) * mm(mm(P, D), P) - 2.0 * eta * wd * Q
        off = _pack_sym(dQ, dy, 0)
        dR = -eta * mm(P, Xv) - eta * wd * R
        dy[off:off + K * M] = dR.ravel()
    if train_v:
        dy[nq + K * M:nq + K * M + K] = -eta_v * Ig
    return dy


@njit(cache=True)
def rhs_modes(y, T, vt, v0, A0, lam0, rates, flags):
    """d(Rm, S, lam, A, v)/d alpha for a mode student (``C = A diag(lam)``, ``h = C s``).

    ``rates``, ``flags``: :meth:`onlinemdl.dynamics.Dynamics.pack`.

    dRm/da = -eta (C^T X + X^T C) + (eta^2/b) C^T E[delta delta^T] C - 2 eta kappa Rm,  X = E[delta s^T]
    dS/da = -eta C^T E[delta v^T] - eta kappa S
    dlam_mu/da = -eta_lam sum_i A_imu X_imu;   dA_imu/da = -eta_A lam_mu X_imu
    dv_i/da = -eta_v E[err g(h_i)]
    """
    K, M, p = v0.size, vt.size, lam0.size
    eta, eta_lam, eta_A, eta_v = rates[ETA], rates[ETA_LAM], rates[ETA_A], rates[ETA_V]
    sigma, wd, inv_b = rates[SIGMA], rates[DECAY], rates[INV_BATCH]
    train_xi, train_lam, train_A, train_v, act = flags[TRAIN_N], flags[TRAIN_LAM], flags[TRAIN_A], flags[TRAIN_V], flags[ACT]
    nr = p * (p + 1) // 2
    Rm = unpack_sym(y, 0, p)
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
    CRm = mm(C, Rm)
    Q = mm(CRm, C.T)
    R = mm(C, S)
    c = np.concatenate((v, -vt))
    Sig = fields_cov(Q, R, T)
    Phi, psi, D, Ig = field_averages(Sig, K, c, sigma, act)
    # Cov(s_b, f_k): (Rm C^T | S)
    Cs = np.empty((p, K + M))
    Cs[:, :K] = CRm.T
    Cs[:, K:] = S
    X = mm(Phi, Cs.T) - psi.reshape((K, 1)) * CRm  # E[delta s^T], K x p
    dy = np.zeros_like(y)
    if train_xi:
        CX = mm(C.T, X)
        dRm = -eta * (CX + CX.T) + (eta * eta * inv_b) * mm(mm(C.T, D), C) - 2.0 * eta * wd * Rm
        _pack_sym(dRm, dy, 0)
        Xv = mm(Phi, Sig[:, K:]) - psi.reshape((K, 1)) * R  # E[delta v^T]
        dS = -eta * mm(C.T, Xv) - eta * wd * S
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
    """Dispatch to :func:`rhs_modes` or :func:`rhs_full`; ``args`` is ``OdeSystem.kernel_args``:
    ``(modes, T, vt, v, A, lam, P, rates, flags)``."""
    modes, T, vt, v0, A0, lam0, P, rates, flags = args
    if modes:
        return rhs_modes(y, T, vt, v0, A0, lam0, rates, flags)
    return rhs_full(y, T, vt, v0, P, rates, flags)


@njit(cache=True)
def rhs_many(Y, args):
    """:func:`rhs_any` of each row of ``Y``."""
    out = np.empty_like(Y)
    for i in range(Y.shape[0]):
        out[i] = rhs_any(Y[i], args)
    return out


@njit(cache=True)
def euler(y, t_out, dt, args, max_q):
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
