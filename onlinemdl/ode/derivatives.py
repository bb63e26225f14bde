"""Derivatives of the right-hand sides in closed form: the Jacobian of every form of the ODE.

:func:`field_average_derivatives` differentiates the Gaussian averages of
:func:`~onlinemdl.ode.kernels.field_averages` with respect to the field covariance ``Sig`` and the
second-layer coefficients ``c`` (the chain rule through the closed forms of I2, I3, J2 and I4,
Saad & Solla 1995 eq. A6; theory/finite_size.md §4). :func:`jacobian` carries those derivatives through the
state's map to ``(Sig, c)`` and through the right-hand side's matrix algebra, for all state
directions at once. A gradient ``g`` with respect to the symmetric ``Sig`` is stored as a symmetric
matrix with ``d f = sum_pq g_pq dSig_pq`` (each off-diagonal entry counted twice).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..dynamics import DECAY, ETA, ETA_A, ETA_LAM, ETA_V, INV_BATCH, SIGMA, TRAIN_A, TRAIN_LAM, TRAIN_N, TRAIN_V
from ..gaussian import LINEAR

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
    omega = np.zeros((n, n))
    beta = np.zeros(n)
    total = 0.0
    for k in range(n):
        sak, sbk = Sig[a, k], Sig[b, k]
        for l in range(n):
            l0 = l4 * Sig[k, l] - sbk * Sig[b, l] * saa - sak * Sig[a, l] * sbb + sab * (sak * Sig[b, l] + Sig[a, l] * sbk)
            z = min(1.0, max(-1.0, l0 * rs[k] * rs[l]))
            i4 = _4PI2 * r4 * math.asin(z)
            total += c[k] * c[l] * i4
            u[k] += c[l] * i4
            q = c[k] * c[l] * _4PI2 * r4 / math.sqrt(max(1.0 - z * z, 1e-300))  # d/dz
            omega[k, l] = q * rs[k] * rs[l]  # d/dL0_kl
            beta[k] -= q * z * 0.5 * rs[k] * rs[k]  # d/dL1_k (the L1_l role: the pair (l, k))
            beta[l] -= q * z * 0.5 * rs[l] * rs[l]
    j2 = _2PI * r4
    gamma = -0.5 * (total + sigma * sigma * j2) / l4  # d/dL4 directly, through the prefactors
    # L0_kl = L4 S_kl - saa S_bk S_bl - sbb S_ak S_al + sab (S_ak S_bl + S_al S_bk)
    wa, wb = omega @ Sig[a], omega @ Sig[b]
    for k in range(n):
        sak, sbk = Sig[a, k], Sig[b, k]
        gamma += beta[k] * (1.0 + Sig[k, k])
        for l in range(n):
            gamma += omega[k, l] * Sig[k, l]
            g[k, l] += omega[k, l] * l4
        g[k, k] += beta[k] * l4
        # L0 through S_ak, S_bk (both slots of the pair), and L1_k = L4 (1 + S_kk) - saa S_bk^2 - sbb S_ak^2 + 2 sab S_ak S_bk
        ga = 2.0 * (sab * wb[k] - sbb * wa[k]) + 2.0 * beta[k] * (sab * sbk - sbb * sak)
        gb = 2.0 * (sab * wa[k] - saa * wb[k]) + 2.0 * beta[k] * (sab * sak - saa * sbk)
        g[a, k] += 0.5 * ga
        g[k, a] += 0.5 * ga
        g[b, k] += 0.5 * gb
        g[k, b] += 0.5 * gb
        g[a, a] -= beta[k] * sbk * sbk
        g[b, b] -= beta[k] * sak * sak
        g[a, b] += beta[k] * sak * sbk
        g[b, a] += beta[k] * sak * sbk
    g[a, a] -= Sig[b] @ wb
    g[b, b] -= Sig[a] @ wa
    cross = Sig[a] @ wb
    g[a, b] += cross
    g[b, a] += cross
    # L4 = saa sbb - sab^2
    g[a, a] += gamma * sbb
    g[b, b] += gamma * saa
    g[a, b] -= gamma * sab
    g[b, a] -= gamma * sab
    return total + sigma * sigma * j2


def averages_jvp(parts, Sig, c, dSig, dc, act):
    """Directional derivatives ``(dPhi, dpsi, dD, dIg)`` of the averages along ``m`` directions
    ``(dSig, dc)`` of shapes (m, n, n), (m, n); ``parts``: :func:`field_average_derivatives` at ``(Sig, c)``."""
    Phi, psi, D, Ig, phi0, dphi0, gD, Dc, gIg, I2m = parts
    K, n = Phi.shape
    m = dSig.shape[0]
    diag, ddiag = 1.0 + np.diag(Sig), np.einsum("mkk->mk", dSig)
    dl3 = diag[None, None, :] * ddiag[:, :K, None] + diag[None, :K, None] * ddiag[:, None, :] \
        - 2.0 * Sig[None, :K, :] * dSig[:, :K, :]
    dPhi = (c[:K, None] * c[None, :]) * dphi0 * dl3 \
        + (dc[:, :K, None] * c[None, None, :] + c[None, :K, None] * dc[:, None, :]) * phi0
    dpsi = np.zeros((m, K))
    if act != LINEAR:  # psi_i = sum_k Phi_ik Sig_ik / (1 + Sig_ii)
        dpsi = (np.einsum("mik,ik->mi", dPhi, Sig[:K]) + np.einsum("ik,mik->mi", Phi, dSig[:, :K])
                - psi * ddiag[:, :K]) / diag[:K]
    flat = dSig.reshape(m, n * n)
    dD = (flat @ gD.reshape(K * K, n * n).T + dc @ Dc.reshape(K * K, n).T).reshape(m, K, K)
    dIg = flat @ gIg.reshape(K, n * n).T + dc @ I2m.T
    return dPhi, dpsi, dD, dIg


def jacobian(system, y) -> np.ndarray:
    """Jacobian of ``system.rhs`` (an :class:`~onlinemdl.ode.OdeSystem`) at the state vector ``y``, in
    closed form (theory/finite_size.md §4).

    Every form: the state's directions are mapped to the field covariance ``Sig`` and the
    coefficients ``c = (v, -vt)``, the averages' derivatives (:func:`field_average_derivatives`)
    are contracted with them, and the right-hand side's matrix algebra is differentiated by the
    product rule. Checked against finite differences in ``tests/test_derivatives.py``.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # a state off the valid set gives NaN, as the rhs does
        return _jacobian(system, np.ascontiguousarray(y, dtype=float))


def _jacobian(system, y):
    d = y.size
    K, M = system.K, system.M
    _, _, vt, _, _, _, _, rates, flags = system.kernel_args
    st = system.unpack(y)
    eye = np.eye(d)
    off = 0

    def take(shape):  # the unit directions of the next block of the state (symmetric blocks: both halves)
        nonlocal off
        if shape[0] == "sym":
            r = shape[1]
            iu = np.triu_indices(r)
            out = np.zeros((d, r, r))
            out[:, iu[0], iu[1]] = eye[:, off:off + iu[0].size]
            out[:, iu[1], iu[0]] = eye[:, off:off + iu[0].size]
            off += iu[0].size
            return out
        size = int(np.prod(shape))
        out = eye[:, off:off + size].reshape((d,) + shape)
        off += size
        return out

    modes = system.form == "modes"
    if modes:
        p = system.p
        G, S, lam, A = st["Rm"], st["S"], st["lam"], st["A"]
        dG, dS = take(("sym", p)), take((p, M))
        dlam = take((p,)) if flags[TRAIN_LAM] else np.zeros((d, p))
        dA = take((K, p)) if flags[TRAIN_A] else np.zeros((d, K, p))
        C = A * lam
        dC = dA * lam + A[None] * dlam[:, None, :]
        Lm, dLm = C.T, dC.transpose(0, 2, 1)
    else:
        G, S = st["Q"], st["R"]
        dG, dS = take(("sym", K)), take((K, M))
        C, Lm = np.eye(K), system.P
    moving = modes and bool(flags[TRAIN_LAM] or flags[TRAIN_A])  # C = A diag(lam) changes with the state
    v = st["v"]
    dv = take((K,)) if flags[TRAIN_V] else np.zeros((d, K))
    CG = C @ G
    Q, R = CG @ C.T, C @ S
    if moving:
        dCG = dC @ G + C @ dG
        dQ = dCG @ C.T + CG @ dC.transpose(0, 2, 1)
        dR = dC @ S + C @ dS
    elif modes:
        dCG = C @ dG
        dQ, dR = dCG @ C.T, C @ dS
    else:
        dCG, dQ, dR = dG, dG, dS
    Sig = np.block([[Q, R], [R.T, system.T]])
    dSig = np.zeros((d, K + M, K + M))
    dSig[:, :K, :K], dSig[:, :K, K:], dSig[:, K:, :K] = dQ, dR, dR.transpose(0, 2, 1)
    c = np.concatenate((v, -vt))
    dc = np.concatenate((dv, np.zeros((d, M))), axis=1)
    parts = field_average_derivatives(np.ascontiguousarray(Sig), K, c, rates[SIGMA], system.act)
    Phi, psi, D = parts[:3]
    dPhi, dpsi, dD, dIg = averages_jvp(parts, Sig, c, dSig, dc, system.act)
    # X = E[delta s^T] = Phi Cov(z, s) - psi (C G), Xv = E[delta u^T] (rhs_full, rhs_modes)
    Zs, dZs = np.vstack((CG, S.T)), np.concatenate((dCG, dS.transpose(0, 2, 1)), axis=1)
    X = Phi @ Zs - psi[:, None] * CG
    dX = dPhi @ Zs + Phi @ dZs - dpsi[:, :, None] * CG - psi[None, :, None] * dCG
    Xv = Phi @ Sig[:, K:] - psi[:, None] * R
    dXv = dPhi @ Sig[:, K:] + Phi @ dSig[:, :, K:] - dpsi[:, :, None] * R - psi[None, :, None] * dR
    eta, inv_b, kappa = rates[ETA], rates[INV_BATCH], rates[DECAY]
    out = []
    if flags[TRAIN_N]:  # dG/da = -eta (Lm X + (Lm X)^T) + (eta^2/b) Lm D Lm^T - 2 eta kappa G
        LX, LD, LXv = Lm @ dX, Lm @ dD @ Lm.T, Lm @ dXv
        if moving:
            LX, LXv = LX + dLm @ X, LXv + dLm @ Xv
            LD = LD + dLm @ D @ Lm.T + (dLm @ D @ Lm.T).transpose(0, 2, 1)
        dGo = -eta * (LX + LX.transpose(0, 2, 1)) + eta * eta * inv_b * LD - 2.0 * eta * kappa * dG
        iu = np.triu_indices(G.shape[0])
        out += [dGo[:, iu[0], iu[1]], (-eta * LXv - eta * kappa * dS).reshape(d, -1)]
    else:
        out.append(np.zeros((d, G.shape[0] * (G.shape[0] + 1) // 2 + S.size)))
    if modes and flags[TRAIN_LAM]:  # dlam_mu/da = -eta_lam sum_i A_imu X_imu
        out.append(-rates[ETA_LAM] * np.einsum("mip,ip->mp", dA, X) - rates[ETA_LAM] * np.einsum("ip,mip->mp", A, dX))
    if modes and flags[TRAIN_A]:  # dA_imu/da = -eta_A lam_mu X_imu
        out.append((-rates[ETA_A] * (dlam[:, None, :] * X + lam * dX)).reshape(d, -1))
    if flags[TRAIN_V]:  # dv_i/da = -eta_v E[err g(h_i)]
        out.append(-rates[ETA_V] * dIg)
    return np.ascontiguousarray(np.concatenate(out, axis=1).T)
