"""Derivatives of the right-hand sides in closed form: the Jacobian of every form of the ODE.

:func:`field_average_derivatives` differentiates the Gaussian averages of
:func:`~onlinemdl.ode.kernels.field_averages` with respect to the field covariance ``Sig`` and the
second-layer coefficients ``c`` (the chain rule through the closed forms of I2, I3, J2 and I4,
Saad & Solla 1995 eq. A6; theory/finite_size.md §4). :func:`jacobian_kernel` carries those derivatives
through the state's map to ``(Sig, c)`` and through the right-hand side's matrix algebra, one state
direction (column) at a time. A gradient ``g`` with respect to the symmetric ``Sig`` is stored as a symmetric
matrix with ``d f = sum_pq g_pq dSig_pq`` (each off-diagonal entry counted twice).
:func:`d_curvature` contracts the second derivative of ``D``'s I4 sums with a covariance of ``Sig``'s entries (the
bias forcing's ``H:Sigma``, theory/finite_size.md eq. B3).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..dynamics import ACT, DECAY, ETA, ETA_A, ETA_LAM, ETA_V, INV_BATCH, SIGMA, TRAIN_A, TRAIN_LAM, TRAIN_N, TRAIN_V
from ..gaussian import LINEAR
from .kernels import asin_clipped, fields_cov, mm, unpack_sym

_2PI = 2.0 / math.pi
_4PI2 = 4.0 / math.pi**2


@njit(cache=True)
def field_average_derivatives(Sig, K, c, sigma, act):
    """The averages of :func:`~onlinemdl.ode.kernels.field_averages` and their derivatives.

    Returns ``(Phi, psi, D, Ig, phi0, dphi0, gD, Dc, gIg, I2m)``: the averages; ``phi0`` (K, n) with
    ``Phi_ik = c_i c_k phi0_ik`` and ``dphi0 = d phi0 / d l3_ik`` (``l3_ik = (1 + Sig_ii)(1 + Sig_kk)
    - Sig_ik^2``); ``gD`` (K, K, n, n), the gradient of ``D_ab`` with respect to ``Sig``; ``Dc``
    (K, K, n) = ``d D_ab / d c_k``; ``gIg`` (K, n, n), the gradient of ``Ig_i``; ``I2m`` (K, n) =
    ``I2(i, k) = d Ig_i / d c_k``.
    """
    n = Sig.shape[0]
    phi0, dphi0 = np.zeros((K, n)), np.zeros((K, n))
    Phi, psi, Ig = np.zeros((K, n)), np.zeros(K), np.zeros(K)
    I2m, gIg = np.zeros((K, n)), np.zeros((K, n, n))
    for i in range(K):
        sii = 1.0 + Sig[i, i]
        for k in range(n):
            skk = 1.0 + Sig[k, k]
            if act == LINEAR:
                phi0[i, k] = 1.0
                I2m[i, k] = Sig[i, k]
                gIg[i, i, k] += 0.5 * c[k]
                gIg[i, k, i] += 0.5 * c[k]
            else:
                l3 = max(sii * skk - Sig[i, k] ** 2, 0.0) + 1e-300
                phi0[i, k] = _2PI / math.sqrt(l3)
                dphi0[i, k] = -0.5 * phi0[i, k] / l3
                # I2 = (2/pi) asin(z), z = Sig_ik / sqrt(sii skk)
                root = math.sqrt(sii * skk)
                z = min(1.0, max(-1.0, Sig[i, k] / root))
                I2m[i, k] = _2PI * math.asin(z)
                w = c[k] * _2PI / math.sqrt(max(1.0 - z * z, 1e-300))
                gIg[i, i, k] += 0.5 * w / root
                gIg[i, k, i] += 0.5 * w / root
                gIg[i, i, i] -= 0.5 * w * z / sii
                gIg[i, k, k] -= 0.5 * w * z / skk
            Phi[i, k] = c[i] * c[k] * phi0[i, k]
            Ig[i] += c[k] * I2m[i, k]
            if act != LINEAR:
                psi[i] += Phi[i, k] * Sig[i, k] / sii
    D, gD, Dc = np.zeros((K, K)), np.zeros((K, K, n, n)), np.zeros((K, K, n))
    for a in range(K):
        for b in range(a, K):
            g = gD[a, b]
            u = np.zeros(n)  # u_k = sum_l c_l E[g'(h_a) g'(h_b) g(f_k) g(f_l)]
            if act == LINEAR:
                inner = sigma * sigma
                for k in range(n):
                    for l in range(n):
                        u[k] += c[l] * Sig[k, l]
                        g[k, l] = c[a] * c[b] * c[k] * c[l]
                    inner += c[k] * u[k]
            else:
                inner = _i4_sum_derivatives(Sig, c, a, b, sigma, g, u)
                for p in range(n):
                    for q in range(n):
                        g[p, q] *= c[a] * c[b]
            D[a, b] = D[b, a] = c[a] * c[b] * inner
            for k in range(n):
                Dc[a, b, k] = 2.0 * c[a] * c[b] * u[k]
            Dc[a, b, a] += c[b] * inner
            Dc[a, b, b] += c[a] * inner
            if b != a:
                gD[b, a] = g
                Dc[b, a] = Dc[a, b]
    return Phi, psi, D, Ig, phi0, dphi0, gD, Dc, gIg, I2m


@njit(cache=True)
def _i4_sum_derivatives(Sig, c, a, b, sigma, g, u):
    """``sum_kl c_k c_l I4(a, b, k, l) + sigma^2 J2(a, b)`` (erf), its gradient with respect to
    ``Sig`` added to ``g`` (symmetric) and its halved derivatives ``d/dc_k / 2`` in ``u``.

    I4 = (4/pi^2) L4^-1/2 asin(z_kl), z_kl = L0_kl (L1_k L1_l)^-1/2 (Saad & Solla 1995, eq. A6, with
    L1_k = L0_kk + L4); the chain rule through L0, L1 and L4, whose gradients are collected per pair
    (``omega``), per ``k`` (``beta``) and once (``gamma``).
    """
    n = Sig.shape[0]
    saa, sbb, sab = 1.0 + Sig[a, a], 1.0 + Sig[b, b], Sig[a, b]
    l4 = max(saa * sbb - sab * sab, 0.0) + 1e-300
    r4 = 1.0 / math.sqrt(l4)
    l1 = np.empty(n)
    rs = np.empty(n)
    for k in range(n):
        sak, sbk = Sig[a, k], Sig[b, k]
        l1[k] = l4 * (1.0 + Sig[k, k]) - sbk * sbk * saa - sak * sak * sbb + 2.0 * sab * sak * sbk
        rs[k] = 1.0 / math.sqrt(l1[k]) if l1[k] > 0.0 else 0.0
    beta, wa, wb = np.zeros(n), np.zeros(n), np.zeros(n)  # wa = omega Sig[a], wb = omega Sig[b]
    total, gamma = 0.0, 0.0
    for k in range(n):  # the pairs k <= l; (l, k) is the same term
        sak, sbk = Sig[a, k], Sig[b, k]
        for l in range(k, n):
            skl, sal, sbl = Sig[k, l], Sig[a, l], Sig[b, l]
            l0 = l4 * skl - sbk * sbl * saa - sak * sal * sbb + sab * (sak * sbl + sal * sbk)
            z = min(1.0, max(-1.0, l0 * rs[k] * rs[l]))
            i4 = _4PI2 * r4 * asin_clipped(z)
            q = c[k] * c[l] * _4PI2 * r4 / math.sqrt(max(1.0 - z * z, 1e-300))  # d/dz
            omega = q * rs[k] * rs[l]  # d/dL0_kl
            beta[k] -= q * z * rs[k] * rs[k]  # d/dL1_k, from both slots of the pair (the L1_k and the L1_l role)
            u[k] += c[l] * i4
            g[k, l] += omega * l4  # L0_kl = L4 S_kl - saa S_bk S_bl - sbb S_ak S_al + sab (S_ak S_bl + S_al S_bk)
            wa[k] += omega * sal
            wb[k] += omega * sbl
            if l == k:
                total += c[k] * c[k] * i4
                gamma += omega * skl
            else:
                total += 2.0 * c[k] * c[l] * i4
                gamma += 2.0 * omega * skl
                u[l] += c[k] * i4
                beta[l] -= q * z * rs[l] * rs[l]
                g[l, k] += omega * l4
                wa[l] += omega * sak
                wb[l] += omega * sbk
    j2 = _2PI * r4
    gamma -= 0.5 * (total + sigma * sigma * j2) / l4  # d/dL4 directly, through the prefactors
    aa, bb, ab = 0.0, 0.0, 0.0
    for k in range(n):
        sak, sbk = Sig[a, k], Sig[b, k]
        gamma += beta[k] * (1.0 + Sig[k, k])
        g[k, k] += beta[k] * l4
        # L0 through S_ak, S_bk (both slots of the pair), and L1_k = L4 (1 + S_kk) - saa S_bk^2 - sbb S_ak^2 + 2 sab S_ak S_bk
        ga = 2.0 * (sab * wb[k] - sbb * wa[k]) + 2.0 * beta[k] * (sab * sbk - sbb * sak)
        gb = 2.0 * (sab * wa[k] - saa * wb[k]) + 2.0 * beta[k] * (sab * sak - saa * sbk)
        g[a, k] += 0.5 * ga
        g[k, a] += 0.5 * ga
        g[b, k] += 0.5 * gb
        g[k, b] += 0.5 * gb
        aa -= beta[k] * sbk * sbk + sbk * wb[k]
        bb -= beta[k] * sak * sak + sak * wa[k]
        ab += beta[k] * sak * sbk + sak * wb[k]
    g[a, a] += aa
    g[b, b] += bb
    g[a, b] += ab
    g[b, a] += ab
    # L4 = saa sbb - sab^2
    g[a, a] += gamma * sbb
    g[b, b] += gamma * saa
    g[a, b] -= gamma * sab
    g[b, a] -= gamma * sab
    return total + sigma * sigma * j2


@njit(cache=True)
def jacobian_kernel(y, T, vt, v0, A0, lam0, P, rates, flags, modes):
    """Jacobian of :func:`~onlinemdl.ode.kernels.rhs_any` at ``y`` (arguments as there), column by column:
    each unit direction of the state mapped to ``(dSig, dc)``, contracted with the averages' derivatives
    (:func:`field_average_derivatives`; ``dSig``'s nonzero entries only) and carried through the right-hand
    side's algebra by the product rule. ``C = A diag(lam)`` and the left factor ``Lm = C^T`` (modes) or ``P``
    (full and reduced forms)."""
    K, M = v0.size, vt.size
    n = K + M
    eta, inv_b, kappa = rates[ETA], rates[INV_BATCH], rates[DECAY]
    train_n, train_lam, train_A, train_v, act = flags[TRAIN_N], flags[TRAIN_LAM], flags[TRAIN_A], flags[TRAIN_V], flags[ACT]
    p = lam0.size
    if modes:
        r = p
        nq = r * (r + 1) // 2
        G = unpack_sym(y, 0, r)
        S = y[nq:nq + r * M].copy().reshape((r, M))
        off = nq + r * M
        lam = lam0
        if train_lam:
            lam = y[off:off + p].copy()
            off += p
        A = A0
        if train_A:
            A = y[off:off + K * p].copy().reshape((K, p))
            off += K * p
        C = A * lam.reshape((1, p))
        Lm = np.ascontiguousarray(C.T)
    else:
        r = K
        nq = r * (r + 1) // 2
        G = unpack_sym(y, 0, r)
        S = y[nq:nq + r * M].copy().reshape((r, M))
        off = nq + r * M
        lam, A = lam0, A0
        C = np.eye(K)
        Lm = P
    v = y[off:off + K].copy() if train_v else v0
    moving = modes and (train_lam or train_A)
    CG = mm(C, G)
    CT, LmT = np.ascontiguousarray(C.T), np.ascontiguousarray(Lm.T)
    Q, R = mm(CG, CT), mm(C, S)
    Sig = fields_cov(Q, R, T)
    c = np.concatenate((v, -vt))
    Phi, psi, D, Ig, phi0, dphi0, gD, Dc, gIg, I2m = field_average_derivatives(Sig, K, c, rates[SIGMA], act)
    Zs = np.empty((n, r))  # Cov(z, s)
    Zs[:K], Zs[K:] = CG, S.T
    X = mm(Phi, Zs)  # E[delta s^T]
    Su = np.ascontiguousarray(Sig[:, K:])  # Cov(z, u)
    Xv = mm(Phi, Su)  # E[delta u^T]
    for i in range(K):
        X[i] -= psi[i] * CG[i]
        Xv[i] -= psi[i] * R[i]
    d = y.size
    Jt = np.zeros((d, d))
    dG, dS, dlam, dA, dv = np.zeros((r, r)), np.zeros((r, M)), np.zeros(p), np.zeros((K, p)), np.zeros(K)
    dC, dSig, dc = np.zeros((K, r)), np.zeros((n, n)), np.zeros(n)
    dPhi, dpsi, dD, dIg = np.zeros((K, n)), np.zeros(K), np.zeros((K, K)), np.zeros(K)
    dZs = np.zeros((n, r))
    dX, dXv, LX, LXv, LmD, LD = (np.empty((K, r)), np.empty((K, M)), np.empty((r, r)), np.empty((r, M)),
                                 np.empty((r, K)), np.empty((r, r)))
    bCG, bQ, bR = np.empty((K, r)), np.empty((K, K)), np.empty((K, M))  # dCG, dQ, dR unless C moves
    for j in range(d):
        dG[:], dS[:], dlam[:], dA[:], dv[:] = 0.0, 0.0, 0.0, 0.0, 0.0
        if j < nq:  # the unit direction j of the state
            a = 0
            k = j
            while k >= r - a:
                k -= r - a
                a += 1
            dG[a, a + k] = dG[a + k, a] = 1.0
        elif j < nq + r * M:
            dS[(j - nq) // M, (j - nq) % M] = 1.0
        else:
            k = j - nq - r * M
            if modes and train_lam:
                if k < p:
                    dlam[k] = 1.0
                k -= p
            if modes and train_A:
                if 0 <= k < K * p:
                    dA[k // p, k % p] = 1.0
                k -= K * p
            if 0 <= k < K:
                dv[k] = 1.0
        if moving:
            dC = dA * lam.reshape((1, p)) + A * dlam.reshape((1, p))
            dCG = mm(dC, G) + mm(C, dG)
            dQ = mm(dCG, CT) + mm(CG, dC.T)
            dR = mm(dC, S) + mm(C, dS)
        else:
            dCG = mm(C, dG, bCG)
            dQ = mm(dCG, CT, bQ)
            dR = mm(C, dS, bR)
        dSig[:K, :K], dSig[:K, K:], dSig[K:, :K] = dQ, dR, dR.T
        dc[:K] = dv
        # the averages along (dSig, dc)
        dD[:], dIg[:] = 0.0, 0.0
        for i in range(K):
            acc = 0.0
            for k in range(n):
                dl3 = (1.0 + Sig[k, k]) * dSig[i, i] + (1.0 + Sig[i, i]) * dSig[k, k] - 2.0 * Sig[i, k] * dSig[i, k]
                dPhi[i, k] = c[i] * c[k] * dphi0[i, k] * dl3 + (dc[i] * c[k] + c[i] * dc[k]) * phi0[i, k]
                acc += dPhi[i, k] * Sig[i, k] + Phi[i, k] * dSig[i, k]
            dpsi[i] = 0.0 if act == LINEAR else (acc - psi[i] * dSig[i, i]) / (1.0 + Sig[i, i])
        for a in range(n):
            for b in range(n):
                if dSig[a, b] != 0.0:
                    for i in range(K):
                        dIg[i] += gIg[i, a, b] * dSig[a, b]
                        for k in range(K):
                            dD[i, k] += gD[i, k, a, b] * dSig[a, b]
        for k in range(K):
            if dc[k] != 0.0:
                for i in range(K):
                    dIg[i] += I2m[i, k] * dc[k]
                    for l in range(K):
                        dD[i, l] += Dc[i, l, k] * dc[k]
        dZs[:K], dZs[K:] = dCG, dS.T
        mm(dPhi, Zs, dX)  # dX = dPhi Zs + Phi dZs, dXv = dPhi Su + Phi dSig[:, K:]: the zeros of a unit direction skipped
        mm(dPhi, Su, dXv)
        for k in range(n):
            for a in range(r):
                if dZs[k, a] != 0.0:
                    for i in range(K):
                        dX[i, a] += Phi[i, k] * dZs[k, a]
            for m in range(M):
                if dSig[k, K + m] != 0.0:
                    for i in range(K):
                        dXv[i, m] += Phi[i, k] * dSig[k, K + m]
        for i in range(K):  # element by element: row expressions would allocate three arrays each, 48 a direction
            for a in range(r):
                dX[i, a] -= dpsi[i] * CG[i, a] + psi[i] * dCG[i, a]
            for m in range(M):
                dXv[i, m] -= dpsi[i] * R[i, m] + psi[i] * dR[i, m]
        if train_n:  # dG/da = -eta (Lm X + (Lm X)^T) + (eta^2/b) Lm D Lm^T - 2 eta kappa G; dS/da = -eta Lm Xv - eta kappa S
            mm(Lm, dX, LX)
            mm(Lm, dXv, LXv)
            mm(mm(Lm, dD, LmD), LmT, LD)
            if moving:
                dLm = dC.T
                LX += mm(dLm, X)
                LXv += mm(dLm, Xv)
                half = mm(mm(dLm, D), LmT)
                LD += half + half.T
            o = 0
            for a in range(r):
                for b in range(a, r):
                    Jt[j, o] = -eta * (LX[a, b] + LX[b, a]) + eta * eta * inv_b * LD[a, b] - 2.0 * eta * kappa * dG[a, b]
                    o += 1
            for a in range(r):
                for m in range(M):
                    Jt[j, o] = -eta * LXv[a, m] - eta * kappa * dS[a, m]
                    o += 1
        o = nq + r * M
        if modes and train_lam:  # dlam_mu/da = -eta_lam sum_i A_imu X_imu
            for mu in range(p):
                acc = 0.0
                for i in range(K):
                    acc += dA[i, mu] * X[i, mu] + A[i, mu] * dX[i, mu]
                Jt[j, o + mu] = -rates[ETA_LAM] * acc
            o += p
        if modes and train_A:  # dA_imu/da = -eta_A lam_mu X_imu
            for i in range(K):
                for mu in range(p):
                    Jt[j, o + i * p + mu] = -rates[ETA_A] * (dlam[mu] * X[i, mu] + lam[mu] * dX[i, mu])
            o += K * p
        if train_v:  # dv_i/da = -eta_v E[err g(h_i)]
            for i in range(K):
                Jt[j, o + i] = -rates[ETA_V] * dIg[i]
    return np.ascontiguousarray(Jt.T)


def jacobian(system, y) -> np.ndarray:
    """Jacobian of ``system.rhs`` (an :class:`~onlinemdl.ode.OdeSystem`) at the state vector ``y``, in
    closed form (theory/finite_size.md §4; :func:`jacobian_kernel`). Checked against finite differences in
    ``tests/test_derivatives.py``."""
    modes, T, vt, v, A, lam, P, rates, flags = system.kernel_args
    return jacobian_kernel(np.ascontiguousarray(y, dtype=float), T, vt, v, A, lam, P, rates, flags, modes)


@njit(cache=True, error_model="numpy")
def d_curvature(Sig, W, e, K, c, sigma, act):
    """``D`` (K, K) of :func:`~onlinemdl.ode.kernels.field_averages` and its second derivative contracted with
    a covariance of the field covariance's entries, ``sum_{pq, rs} d^2 D_ab / dSig_pq dSig_rs W_(pq)(rs)``
    (theory/finite_size.md eq. B3; ``W[e[p, q], e[r, s]] = Cov(Sig_pq, Sig_rs)``, each entry of the symmetric
    ``Sig`` one variable). The curvature of the ``I_4`` sums without a sum over state directions: each term
    ``c_k c_l asin(x_kl) / sqrt(L4)``, ``x_kl = L0_kl / sqrt(L1_k L1_l)``, through its intermediates
    ``L4``, ``L1_k``, ``L1_l``, ``L0_kl`` (polynomials in the entries, Saad & Solla 1995 eq. A6):
    ``d^2 F : W = sum_uv F_uv (grad z_u . W grad z_v) + sum_u F_u (d^2 z_u : W)``. Linear activation: ``D`` is
    linear in ``Sig``, no curvature."""
    n = Sig.shape[0]
    D = np.zeros((K, K))
    HD = np.zeros((K, K))
    if act == LINEAR:
        acc = sigma * sigma
        for k in range(n):
            for l in range(n):
                acc += c[k] * c[l] * Sig[k, l]
        for a in range(K):
            for b in range(K):
                D[a, b] = c[a] * c[b] * acc
        return D, HD
    E = W.shape[0]
    wk = np.empty((n, E))  # W grad L1_k
    Wp = np.empty((n, E))  # W p_k, W q_k: grad L0_kl = S_bl p_k + S_al q_k + S_kl grad L4 + (terms in S_kl, S_bl, S_al)
    Wq = np.empty((n, E))
    L1, h1, C11, C41 = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    al_, be_, pw, qw, p4, q4, k2, k3 = (np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n),
                                        np.empty(n), np.empty(n), np.empty(n))
    w4 = np.empty(E)
    M3 = np.empty((n, 2, 2))
    P4 = np.empty((n, 2))
    G1 = np.empty((n, 6))
    for a in range(K):
        for b in range(a, K):
            eaa, ebb, eab = e[a, a], e[b, b], e[a, b]
            A1, B1, sab = 1.0 + Sig[a, a], 1.0 + Sig[b, b], Sig[a, b]
            l4 = A1 * B1 - sab * sab
            for j in range(E):  # W grad L4
                w4[j] = B1 * W[eaa, j] + A1 * W[ebb, j] - 2.0 * sab * W[eab, j]
            C44 = B1 * w4[eaa] + A1 * w4[ebb] - 2.0 * sab * w4[eab]
            h4 = 2.0 * W[eaa, ebb] - 2.0 * W[eab, eab]
            for k in range(n):
                eak, ebk, ekk = e[a, k], e[b, k], e[k, k]
                sak, sbk, K1 = Sig[a, k], Sig[b, k], 1.0 + Sig[k, k]
                L1[k] = l4 * K1 - sbk * sbk * A1 - sak * sak * B1 + 2.0 * sab * sak * sbk
                g = G1[k]  # grad L1_k at (kk, aa, bb, ab, ak, bk)
                g[0], g[1], g[2] = l4, B1 * K1 - sbk * sbk, A1 * K1 - sak * sak
                g[3], g[4], g[5] = -2.0 * sab * K1 + 2.0 * sak * sbk, -2.0 * sak * B1 + 2.0 * sab * sbk, \
                    -2.0 * sbk * A1 + 2.0 * sab * sak
                for j in range(E):  # W grad L1_k, W p_k, W q_k
                    waa, wbb, wab, wak, wbk = W[eaa, j], W[ebb, j], W[eab, j], W[eak, j], W[ebk, j]
                    wk[k, j] = g[0] * W[ekk, j] + g[1] * waa + g[2] * wbb + g[3] * wab + g[4] * wak + g[5] * wbk
                    Wp[k, j] = -A1 * wbk + sab * wak - sbk * waa + sak * wab
                    Wq[k, j] = sab * wbk - B1 * wak - sak * wbb + sbk * wab
                w = wk[k]
                C11[k] = g[0] * w[ekk] + g[1] * w[eaa] + g[2] * w[ebb] + g[3] * w[eab] + g[4] * w[eak] + g[5] * w[ebk]
                C41[k] = B1 * w[eaa] + A1 * w[ebb] - 2.0 * sab * w[eab]
                h1[k] = (2.0 * (K1 * W[eaa, ebb] + B1 * W[eaa, ekk] + A1 * W[ebb, ekk] - 2.0 * sab * W[eab, ekk]
                                - 2.0 * sbk * W[ebk, eaa] - 2.0 * sak * W[eak, ebb] + 2.0 * sbk * W[eab, eak]
                                + 2.0 * sak * W[eab, ebk] + 2.0 * sab * W[eak, ebk])
                         - 2.0 * K1 * W[eab, eab] - 2.0 * A1 * W[ebk, ebk] - 2.0 * B1 * W[eak, eak])
                al_[k], be_[k] = sak * B1 - sab * sbk, sbk * A1 - sab * sak  # dL0_kl/dS_al = -al, dL0_kl/dS_bl = -be
                # p_k at (bk, ak, aa, ab) = (-A1, sab, -sbk, sak); q_k at (bk, ak, bb, ab) = (sab, -B1, -sak, sbk)
                pw[k] = -A1 * w[ebk] + sab * w[eak] - sbk * w[eaa] + sak * w[eab]
                qw[k] = sab * w[ebk] - B1 * w[eak] - sak * w[ebb] + sbk * w[eab]
                p4[k] = -A1 * w4[ebk] + sab * w4[eak] - sbk * w4[eaa] + sak * w4[eab]
                q4[k] = sab * w4[ebk] - B1 * w4[eak] - sak * w4[ebb] + sbk * w4[eab]
                M3[k, 0, 0] = -A1 * Wp[k, ebk] + sab * Wp[k, eak] - sbk * Wp[k, eaa] + sak * Wp[k, eab]
                M3[k, 0, 1] = M3[k, 1, 0] = -A1 * Wq[k, ebk] + sab * Wq[k, eak] - sbk * Wq[k, eaa] + sak * Wq[k, eab]
                M3[k, 1, 1] = sab * Wq[k, ebk] - B1 * Wq[k, eak] - sak * Wq[k, ebb] + sbk * Wq[k, eab]
                P4[k, 0], P4[k, 1] = p4[k], q4[k]
                k2[k] = -2.0 * W[ebk, eaa] + 2.0 * W[eab, eak]
                k3[k] = -2.0 * W[eak, ebb] + 2.0 * W[eab, ebk]
            A0 = 0.0
            A4 = 0.0
            AH = 0.0
            for k in range(n):
                if L1[k] <= 0.0:
                    continue
                eak, ebk = e[a, k], e[b, k]
                alk, bek = al_[k], be_[k]
                for l in range(k, n):
                    if L1[l] <= 0.0:
                        continue
                    ekl, eal, ebl, ell = e[k, l], e[a, l], e[b, l], e[l, l]
                    skl, sal, sbl = Sig[k, l], Sig[a, l], Sig[b, l]
                    L0 = l4 * skl - sbl * bek - sal * alk
                    rho = 1.0 / math.sqrt(L1[k] * L1[l])
                    x = L0 * rho
                    wl = wk[l]
                    # Cov-forms of the intermediates (z = L0, L1_k, L1_l) through W
                    C0k = sbl * pw[k] + sal * qw[k] + skl * C41[k] + l4 * wk[k, ekl] - bek * wk[k, ebl] - alk * wk[k, eal]
                    pwl = -A1 * wl[ebk] + sab * wl[eak] - Sig[b, k] * wl[eaa] + Sig[a, k] * wl[eab]
                    qwl = sab * wl[ebk] - B1 * wl[eak] - Sig[a, k] * wl[ebb] + Sig[b, k] * wl[eab]
                    C0l = sbl * pwl + sal * qwl + skl * C41[l] + l4 * wl[ekl] - bek * wl[ebl] - alk * wl[eal]
                    C04 = sbl * P4[k, 0] + sal * P4[k, 1] + skl * C44 + l4 * w4[ekl] - bek * w4[ebl] - alk * w4[eal]
                    g2p = l4 * Wp[k, ekl] - bek * Wp[k, ebl] - alk * Wp[k, eal]
                    g2q = l4 * Wq[k, ekl] - bek * Wq[k, ebl] - alk * Wq[k, eal]
                    g24 = l4 * w4[ekl] - bek * w4[ebl] - alk * w4[eal]
                    g22 = (l4 * l4 * W[ekl, ekl] + bek * bek * W[ebl, ebl] + alk * alk * W[eal, eal]
                           - 2.0 * l4 * bek * W[ekl, ebl] - 2.0 * l4 * alk * W[ekl, eal] + 2.0 * alk * bek * W[ebl, eal])
                    C00 = (sbl * sbl * M3[k, 0, 0] + 2.0 * sbl * sal * M3[k, 0, 1] + sal * sal * M3[k, 1, 1]
                           + 2.0 * skl * (sbl * p4[k] + sal * q4[k]) + skl * skl * C44
                           + 2.0 * (sbl * g2p + sal * g2q + skl * g24) + g22)
                    g = G1[l]
                    C12 = (g[0] * wk[k, ell] + g[1] * wk[k, eaa] + g[2] * wk[k, ebb] + g[3] * wk[k, eab]
                           + g[4] * wk[k, eal] + g[5] * wk[k, ebl])
                    h0 = skl * h4 + sbl * k2[k] + sal * k3[k] + 2.0 * (w4[ekl] + Wp[k, ebl] + Wq[k, eal])
                    # derivatives of x = L0 (L1_k L1_l)^(-1/2) in its intermediates
                    ik, il = 1.0 / L1[k], 1.0 / L1[l]
                    x0, x1, x2 = rho, -0.5 * x * ik, -0.5 * x * il
                    xWx = (x0 * x0 * C00 + x1 * x1 * C11[k] + x2 * x2 * C11[l]
                           + 2.0 * (x0 * x1 * C0k + x0 * x2 * C0l + x1 * x2 * C12))
                    xH = (2.0 * (-0.5 * rho * ik * C0k - 0.5 * rho * il * C0l + 0.25 * x * ik * il * C12)
                          + 0.75 * x * ik * ik * C11[k] + 0.75 * x * il * il * C11[l]
                          + x0 * h0 + x1 * h1[k] + x2 * h1[l])
                    x4 = x0 * C04 + x1 * C41[k] + x2 * C41[l]
                    xc = min(1.0, max(-1.0, x))
                    d1 = 1.0 / math.sqrt(max(1.0 - xc * xc, 1e-300))
                    wgt = (2.0 if l > k else 1.0) * c[k] * c[l]
                    A0 += wgt * math.asin(xc)
                    A4 += wgt * d1 * x4
                    AH += wgt * (xc * d1 * d1 * d1 * xWx + d1 * xH)
            A = _4PI2 * A0 + _2PI * sigma * sigma
            q0 = 1.0 / math.sqrt(l4)
            q1, q2 = -0.5 * q0 / l4, 0.75 * q0 / (l4 * l4)
            HG = A * (q2 * C44 + q1 * h4) + 2.0 * q1 * _4PI2 * A4 + q0 * _4PI2 * AH
            D[a, b] = D[b, a] = c[a] * c[b] * q0 * A
            HD[a, b] = HD[b, a] = c[a] * c[b] * HG
    return D, HD


@njit(cache=True, error_model="numpy")
def x_curvature(Sig, Y, W, e, ey, K, c, act):
    """The second derivative of ``X_ib = E[delta_i x_b]`` (K, nx) contracted with a covariance ``W`` of the entries
    it depends on (theory/finite_size.md eq. B3): ``Sig_pq`` at row ``e[p, q]`` of ``W`` and the cross covariances
    ``Y_bm = Cov(x_b, f_m)`` at row ``ey[b, m]``. ``X_ib = sum_m c_i c_m T_ibm``,
    ``T_ibm = (2/pi) (Y_bm u_i - Sig_im Y_bi) / (u_i sqrt(l3_im))`` (I3 with Stein's lemma, ``u_i = 1 + Sig_ii``,
    ``l3_im = u_i (1 + Sig_mm) - Sig_im^2``), through its intermediates ``N = Y_bm u_i - Sig_im Y_bi``, ``u_i``,
    ``l3_im``. Linear activation: ``X`` is linear, no curvature."""
    n, nx = Sig.shape[0], Y.shape[0]
    HX = np.zeros((K, nx))
    if act == LINEAR:
        return HX
    for i in range(K):
        eii = e[i, i]
        u = 1.0 + Sig[i, i]
        Wii = W[eii, eii]
        for m in range(n):
            emm, eim = e[m, m], e[i, m]
            sim = Sig[i, m]
            l3 = u * (1.0 + Sig[m, m]) - sim * sim
            if l3 <= 0.0:
                continue
            # grad l3 at (ii, mm, im) = (1 + Sig_mm, u, -2 Sig_im); d^2 l3 : W = 2 W[ii, mm] - 2 W[im, im]
            g1, g2, g3 = 1.0 + Sig[m, m], u, -2.0 * sim
            Cll = (g1 * g1 * Wii + g2 * g2 * W[emm, emm] + g3 * g3 * W[eim, eim]
                   + 2.0 * (g1 * g2 * W[eii, emm] + g1 * g3 * W[eii, eim] + g2 * g3 * W[emm, eim]))
            Cul = g1 * Wii + g2 * W[eii, emm] + g3 * W[eii, eim]
            hl = 2.0 * W[eii, emm] - 2.0 * W[eim, eim]
            s = 1.0 / math.sqrt(l3)
            for b in range(nx):
                ybm, ybi = Y[b, m], Y[b, i]
                fbm, fbi = ey[b, m], ey[b, i]
                # grad N at (ybm, ii, im, ybi) = (u, Y_bm, -Y_bi, -Sig_im); d^2 N : W = 2 W[ybm, ii] - 2 W[im, ybi]
                n1, n2, n3, n4 = u, ybm, -ybi, -sim
                wn_ii = n1 * W[fbm, eii] + n2 * Wii + n3 * W[eim, eii] + n4 * W[fbi, eii]
                wn_mm = n1 * W[fbm, emm] + n2 * W[eii, emm] + n3 * W[eim, emm] + n4 * W[fbi, emm]
                wn_im = n1 * W[fbm, eim] + n2 * W[eii, eim] + n3 * W[eim, eim] + n4 * W[fbi, eim]
                CNu = wn_ii  # grad N . W grad u (T is linear in N: no N-N term)
                CNl = g1 * wn_ii + g2 * wn_mm + g3 * wn_im
                hN = 2.0 * W[fbm, eii] - 2.0 * W[eim, fbi]
                N = ybm * u - sim * ybi
                t = _2PI * s / u  # dT/dN
                T = t * N
                # T(N, u, l3) = (2/pi) N u^-1 l3^-1/2: its derivatives (u is linear in Sig_ii: no d^2 u term)
                Tl = -0.5 * T / l3
                TNu, TNl = -t / u, -0.5 * t / l3
                Tuu, Tul, Tll = 2.0 * T / (u * u), 0.5 * T / (u * l3), 0.75 * T / (l3 * l3)
                HX[i, b] += c[i] * c[m] * (2.0 * (TNu * CNu + TNl * CNl + Tul * Cul) + Tuu * Wii + Tll * Cll
                                           + t * hN + Tl * hl)
    return HX


@njit(cache=True, error_model="numpy")
def eps_g_curvature(Sig, W, e, c, act):
    """The gradient ``g`` (over the entries ``e`` of ``Sig``) of ``eps_g = sum_ab c_a c_b I2(a, b) / 2`` (label noise
    excluded) and its second derivative contracted with ``W`` (theory/finite_size.md eq. B3): each
    ``I2(a, b) = (2/pi) asin(z)``, ``z = Sig_ab / sqrt((1 + Sig_aa)(1 + Sig_bb))``, through ``z``. Linear
    activation: ``I2(a, b) = Sig_ab``, no curvature."""
    n = Sig.shape[0]
    g = np.zeros(W.shape[0])
    hess = 0.0
    for a in range(n):
        for b in range(n):
            w = 0.5 * c[a] * c[b]
            eab, eaa, ebb = e[a, b], e[a, a], e[b, b]
            if act == LINEAR:
                g[eab] += w
                continue
            ua, ub = 1.0 + Sig[a, a], 1.0 + Sig[b, b]
            rho = 1.0 / math.sqrt(ua * ub)
            z = Sig[a, b] * rho
            d1 = 1.0 / math.sqrt(max(1.0 - z * z, 1e-300))
            z1, z2, z3 = rho, -0.5 * z / ua, -0.5 * z / ub  # dz / d(Sig_ab, Sig_aa, Sig_bb)
            g[eab] += w * _2PI * d1 * z1
            g[eaa] += w * _2PI * d1 * z2
            g[ebb] += w * _2PI * d1 * z3
            zWz = (z1 * z1 * W[eab, eab] + z2 * z2 * W[eaa, eaa] + z3 * z3 * W[ebb, ebb]
                   + 2.0 * (z1 * z2 * W[eab, eaa] + z1 * z3 * W[eab, ebb] + z2 * z3 * W[eaa, ebb]))
            zH = (2.0 * (-0.5 * rho / ua * W[eab, eaa] - 0.5 * rho / ub * W[eab, ebb] + 0.25 * z / (ua * ub) * W[eaa, ebb])
                  + 0.75 * z / (ua * ua) * W[eaa, eaa] + 0.75 * z / (ub * ub) * W[ebb, ebb])
            hess += w * _2PI * (z * d1 * d1 * d1 * zWz + d1 * zH)
    return g, hess
