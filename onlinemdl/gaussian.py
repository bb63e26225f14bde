"""Closed-form Gaussian averages of the soft committee machine (Numba).

For jointly Gaussian fields with covariance entries ``C_ab`` the averages

    I2(a, b)       = E[g(a) g(b)]
    I3(a, b, c)    = E[g'(a) b g(c)]
    I4(a, b, c, d) = E[g'(a) g'(b) g(c) g(d)]
    J2(a, b)       = E[g'(a) g'(b)]

have closed forms for ``g(z) = erf(z / sqrt(2))`` (Saad & Solla 1995, Biehl &
Schwarze 1995) and for the linear ``g(z) = z``. Every function takes the
covariance entries it needs, in the argument order of its docstring, and an
integer ``act`` (:data:`ERF` or :data:`LINEAR`). Arcsin arguments are clipped to
[-1, 1] only within rounding, determinants at 0 for degenerate (perfectly
aligned) covariances, so no valid covariance gives NaN.
"""
import math

import numpy as np
from numba import njit

ERF = 0
LINEAR = 1
ACTIVATIONS = {"erf": ERF, "linear": LINEAR}

_TWO_OVER_PI = 2.0 / math.pi
_FOUR_OVER_PI2 = 4.0 / math.pi**2


def activation_code(name):
    """Return the integer code of the activation ``name`` ('erf' or 'linear')."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


@njit(cache=True, inline="always")
def _safe_asin(x):
    # arcsin of a ratio that can leave [-1, 1] by rounding only
    if x > 1.0:
        x = 1.0
    elif x < -1.0:
        x = -1.0
    return math.asin(x)


@njit(cache=True, inline="always")
def _pos(x):
    # a determinant that is >= 0 analytically
    return x if x > 0.0 else 0.0


@njit(cache=True)
def g(z, act):
    """Activation g(z): erf(z / sqrt 2) or z."""
    if act == LINEAR:
        return z
    return math.erf(z * 0.7071067811865476)


@njit(cache=True)
def dg(z, act):
    """Derivative g'(z): sqrt(2/pi) exp(-z^2 / 2) or 1."""
    if act == LINEAR:
        return 1.0
    return 0.7978845608028654 * math.exp(-0.5 * z * z)


@njit(cache=True)
def I2(caa, cbb, cab, act):
    """E[g(a) g(b)] = (2/pi) arcsin(C_ab / sqrt((1 + C_aa)(1 + C_bb)))."""
    if act == LINEAR:
        return cab
    return _TWO_OVER_PI * _safe_asin(cab / math.sqrt((1.0 + caa) * (1.0 + cbb)))


@njit(cache=True)
def J2(caa, cbb, cab, act):
    """E[g'(a) g'(b)] = (2/pi) / sqrt((1 + C_aa)(1 + C_bb) - C_ab^2)."""
    if act == LINEAR:
        return 1.0
    return _TWO_OVER_PI / math.sqrt(_pos((1.0 + caa) * (1.0 + cbb) - cab * cab) + 1e-300)


@njit(cache=True)
def I3(caa, ccc, cac, cab, cbc, act):
    """E[g'(a) b g(c)].

    erf: (2/pi) (C_bc (1 + C_aa) - C_ab C_ac) / ((1 + C_aa) sqrt(L3)),
    L3 = (1 + C_aa)(1 + C_cc) - C_ac^2. Linear in the covariances of ``b``,
    so ``b`` may be any Gaussian field (its variance is not needed).
    """
    if act == LINEAR:
        return cbc
    lam3 = _pos((1.0 + caa) * (1.0 + ccc) - cac * cac)
    return _TWO_OVER_PI * (cbc * (1.0 + caa) - cab * cac) / ((1.0 + caa) * math.sqrt(lam3 + 1e-300))


@njit(cache=True)
def I4(caa, cbb, ccc, cdd, cab, cac, cad, cbc, cbd, ccd, act):
    """E[g'(a) g'(b) g(c) g(d)] (Saad & Solla 1995, eq. A6).

    erf: (4/pi^2) / sqrt(L4) arcsin(L0 / sqrt(L1 L2)) with
    L4 = (1 + C_aa)(1 + C_bb) - C_ab^2,
    L0 = L4 C_cd - C_bc C_bd (1 + C_aa) - C_ac C_ad (1 + C_bb) + C_ab C_ac C_bd + C_ab C_ad C_bc,
    L1 = L4 (1 + C_cc) - C_bc^2 (1 + C_aa) - C_ac^2 (1 + C_bb) + 2 C_ab C_ac C_bc,
    L2 = L4 (1 + C_dd) - C_bd^2 (1 + C_aa) - C_ad^2 (1 + C_bb) + 2 C_ab C_ad C_bd.
    """
    if act == LINEAR:
        return ccd
    l4 = _pos((1.0 + caa) * (1.0 + cbb) - cab * cab)
    l0 = l4 * ccd - cbc * cbd * (1.0 + caa) - cac * cad * (1.0 + cbb) + cab * cac * cbd + cab * cad * cbc
    l1 = _pos(l4 * (1.0 + ccc) - cbc * cbc * (1.0 + caa) - cac * cac * (1.0 + cbb) + 2.0 * cab * cac * cbc)
    l2 = _pos(l4 * (1.0 + cdd) - cbd * cbd * (1.0 + caa) - cad * cad * (1.0 + cbb) + 2.0 * cab * cad * cbd)
    den = math.sqrt(l1 * l2)
    if den == 0.0:
        return 0.0
    return _FOUR_OVER_PI2 / math.sqrt(l4 + 1e-300) * _safe_asin(l0 / den)


@njit(cache=True)
def eps_g(Q, R, T, v, vt, act):
    """Generalisation error 0.5 E[(yhat - y_clean)^2] from the order parameters.

    Label noise is excluded (add ``sigma^2 / 2`` for the test error on noisy labels). The
    result is clipped at 0: near perfect alignment the arcsin arguments sit at +-1, where
    rounding of the order parameters (1e-16) is amplified to about 1e-12 and could make the
    sum of cancelling terms slightly negative.
    """
    K = Q.shape[0]
    M = T.shape[0]
    e = 0.0
    for i in range(K):
        for j in range(K):
            e += v[i] * v[j] * I2(Q[i, i], Q[j, j], Q[i, j], act)
    for n in range(M):
        for m in range(M):
            e += vt[n] * vt[m] * I2(T[n, n], T[m, m], T[n, m], act)
    for i in range(K):
        for n in range(M):
            e -= 2.0 * v[i] * vt[n] * I2(Q[i, i], T[n, n], R[i, n], act)
    return max(0.5 * e, 0.0)


def joint_covariance(G, S, T):
    """Covariance ``[[G, S], [S^T, T]]`` of the student-side fields and the teacher's fields."""
    G, S, T = np.asarray(G, float), np.asarray(S, float), np.asarray(T, float)
    r = G.shape[0]
    out = np.empty((r + T.shape[0], r + T.shape[0]))
    out[:r, :r], out[:r, r:], out[r:, :r], out[r:, r:] = G, S, S.T, T
    return out


def covariance_check(C, name="C"):
    """Raise ValueError unless ``C`` is a finite symmetric positive semi-definite matrix."""
    C = np.asarray(C, dtype=float)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {C.shape}")
    if not np.all(np.isfinite(C)):
        raise ValueError(f"{name} must be finite")
    scale = max(1.0, float(np.max(np.abs(C))))
    if not np.allclose(C, C.T, atol=1e-10 * scale, rtol=0):
        raise ValueError(f"{name} must be symmetric")
    if C.size and np.linalg.eigvalsh(0.5 * (C + C.T))[0] < -1e-9 * scale:
        raise ValueError(f"{name} must be positive semi-definite (the covariance of the fields)")
    return C
