"""Fits used by the analyses: ``p_min = a + b ln N`` and a continuous piecewise power law."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import numpy as np
from scipy.optimize import minimize


class ResultMixin:
    """Mixin of the modenet result dataclasses: attributes, ``as_dict()`` for storage, and
    ``r["name"]`` read access with ``keys()`` (so ``{**r}`` works, as with earlier dict results)."""

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def keys(self):
        return [f.name for f in fields(self)]

    def __getitem__(self, name):
        if name not in self.keys():
            raise KeyError(f"{type(self).__name__} has no field {name!r}; fields: {self.keys()}")
        return getattr(self, name)


@dataclass
class LogFit(ResultMixin):
    """``p_min = a + b ln N``: a, b, their standard errors a_err, b_err, R^2 r2, number of points n."""

    a: float
    b: float
    a_err: float
    b_err: float
    r2: float
    n: int


def fit_log(N, p_min):
    """Least-squares fit ``p_min = a + b ln N`` over the finite points.

    Returns a :class:`LogFit`: a, b, their standard errors a_err, b_err, the coefficient of
    determination r2, and the number of points n (a, b NaN with fewer than 2 points;
    errors NaN with fewer than 3).
    """
    N, p_min = np.asarray(N, float), np.asarray(p_min, float)
    ok = np.isfinite(p_min)
    x, y = np.log(N[ok]), p_min[ok]
    n = len(x)
    out = {"a": np.nan, "b": np.nan, "a_err": np.nan, "b_err": np.nan, "r2": np.nan, "n": n}
    if n < 2 or np.ptp(x) == 0:
        return LogFit(**out)
    D = np.column_stack([np.ones(n), x])
    coef, *_ = np.linalg.lstsq(D, y, rcond=None)
    res = y - D @ coef
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    out.update(a=coef[0], b=coef[1], r2=1.0 - float(res @ res) / ss_tot if ss_tot > 0 else 1.0)
    if n > 2:
        cov = float(res @ res) / (n - 2) * np.linalg.inv(D.T @ D)  # s^2 (D^T D)^(-1)
        out.update(a_err=np.sqrt(cov[0, 0]), b_err=np.sqrt(cov[1, 1]))
    return LogFit(**{k: float(v) if k != "n" else int(v) for k, v in out.items()})


@dataclass
class PowerLawFit(ResultMixin):
    """Continuous piecewise power law ``tau ~ rank^slope_j`` on the segments between breakpoints.

    Attributes
    ----------
    breaks : (k,) breakpoints in rank; breaks_err their bootstrap standard deviation.
    slopes : (k + 1,) exponents of the segments (d ln tau / d ln rank); slopes_err likewise.
    intercept : ln tau at rank 1 of the first segment.
    rss, bic : residual sum of squares in ln tau and the Bayesian information criterion
        that chose k.
    """

    breaks: np.ndarray
    breaks_err: np.ndarray
    slopes: np.ndarray
    slopes_err: np.ndarray
    intercept: float
    rss: float
    bic: float

    def __call__(self, rank):
        """Fitted tau at ``rank``."""
        x = np.log(np.asarray(rank, float))
        return np.exp(_design(x, np.log(self.breaks)) @ self._coef())

    def _coef(self):
        return np.concatenate([[self.intercept, self.slopes[0]], np.diff(self.slopes)])


def _design(x, c):
    # y = a + b0 x + sum_j d_j max(0, x - c_j)
    return np.column_stack([np.ones_like(x), x] + [np.maximum(0.0, x - cj) for cj in c])


def _lstsq(x, y, c):
    D = _design(x, c)
    coef, *_ = np.linalg.lstsq(D, y, rcond=None)
    r = y - D @ coef
    return float(r @ r), coef


def _fit_breaks(x, y, k, min_points, start=None):
    """Best k breakpoints: exhaustive over data points, then refined continuously."""
    if k == 0:
        return np.zeros(0)
    if start is None:
        # breakpoints on data points, at least min_points points on every segment
        idx = range(min_points - 1, len(x) - min_points + 1)
        best = None
        for c in itertools.combinations(idx, k):
            if k > 1 and min(np.diff(c)) < min_points:
                continue
            rss = _lstsq(x, y, x[list(c)])[0]
            if best is None or rss < best[0]:
                best = (rss, x[list(c)])
        if best is None:
            return None
        start = best[1]
    lo, hi = x[min_points - 1], x[-min_points]

    def rss(c):
        c = np.sort(np.clip(c, lo, hi))
        return _lstsq(x, y, c)[0]

    res = minimize(rss, start, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-12})
    return np.sort(np.clip(res.x, lo, hi))


def piecewise_power_law(tau, max_breaks=2, n_boot=100, min_points=3, seed=0):
    """Fit ``ln tau`` against ``ln rank`` (rank = 1, 2, ...) by a continuous piecewise line.

    The number of breakpoints (0 .. ``max_breaks``) is chosen by BIC; breakpoints and slopes
    come from least squares, their uncertainty from ``n_boot`` residual-bootstrap refits.
    ``tau`` must be positive and sorted in decreasing order (as :func:`mode_importance` gives).
    """
    tau = np.asarray(tau, float)
    if tau.ndim != 1 or np.any(tau <= 0) or not np.all(np.isfinite(tau)):
        raise ValueError("tau must be a 1-d array of positive finite values")
    x, y = np.log(np.arange(1, len(tau) + 1, dtype=float)), np.log(tau)
    n = len(x)
    best = None
    for k in range(0, max_breaks + 1):
        if n < (k + 1) * min_points:
            break
        c = _fit_breaks(x, y, k, min_points)
        if c is None:
            break
        rss, coef = _lstsq(x, y, c)
        bic = n * np.log(max(rss, 1e-300) / n) + (2 + 3 * k) * np.log(n)  # a breakpoint counts as 2 parameters
        if best is None or bic < best[0] - 1e-9:
            best = (bic, rss, c, coef)
    bic, rss, c, coef = best
    k = len(c)
    fitted = _design(x, c) @ coef
    resid = y - fitted
    rng = np.random.default_rng(seed)
    boots_c, boots_s = [], []
    for _ in range(n_boot):
        yb = fitted + rng.choice(resid, size=n, replace=True)
        cb = _fit_breaks(x, yb, k, min_points, start=c) if k else c
        _, cf = _lstsq(x, yb, cb)
        boots_c.append(cb)
        boots_s.append(np.cumsum(cf[1:]))
    sd = (lambda a: np.std(np.asarray(a), axis=0, ddof=1)) if n_boot > 1 else (lambda a: np.full(np.shape(a[0]), np.nan))
    return PowerLawFit(breaks=np.exp(c), breaks_err=np.exp(c) * sd(boots_c) if k else np.zeros(0),
                       slopes=np.cumsum(coef[1:]), slopes_err=sd(boots_s), intercept=float(coef[0]),
                       rss=rss, bic=float(bic))


# --- the least number of modes against width ------------------------------------------------
def crossing(ps, acc, target):
    """The least p at which the accuracy curve ``acc(ps)`` reaches ``target``, interpolated
    linearly in ln p between the last grid point below and the first at or above the target.

    Returns ``ps[0]`` when the first point already reaches it (p_min <= ps[0]: censored below)
    and NaN when no point does (p_min > ps[-1]: censored above).
    """
    ps, acc = np.asarray(ps, float), np.asarray(acc, float)
    if ps.ndim != 1 or ps.shape != acc.shape or len(ps) < 1 or np.any(np.diff(ps) <= 0) or np.any(ps <= 0):
        raise ValueError("ps must be increasing positive values and acc one accuracy per p")
    hit = np.flatnonzero(acc >= target)
    if hit.size == 0:
        return np.nan
    j = hit[0]
    if j == 0:
        return float(ps[0])
    a0, a1 = acc[j - 1], acc[j]
    t = (target - a0) / (a1 - a0)  # a1 >= target > a0
    return float(np.exp(np.log(ps[j - 1]) + t * (np.log(ps[j]) - np.log(ps[j - 1]))))


@dataclass
class LawFit(ResultMixin):
    """A law ``p_min(N)`` fitted by weighted least squares.

    Attributes
    ----------
    name : "ln N", "ln N then constant" or "power law".
    params : fitted parameters (a, b), (a, b, N_c) or (a, b) of the formula in ``formula``.
    formula : the law in words.
    chi2 : weighted residual sum of squares, sum ((p - f(N)) / sd)^2.
    k : number of parameters; aic = chi2 + 2k; bic = chi2 + k ln n.
    """

    name: str
    params: tuple
    formula: str
    chi2: float
    k: int
    n: int
    aic: float
    bic: float

    def __call__(self, N):
        return _LAWS[self.name][0](np.asarray(N, float), *self.params)


def _ln(N, a, b):
    return a + b * np.log(N)


def _ln_const(N, a, b, Nc):
    return a + b * np.log(np.minimum(N, Nc))


def _power(N, a, b):
    return a * N**b


_LAWS = {"ln N": (_ln, "p = a + b ln N"), "ln N then constant": (_ln_const, "p = a + b ln min(N, N_c)"),
         "power law": (_power, "p = a N^b")}


def compare_laws(N, p, sd):
    """Fit the three laws of ``p_min`` against width (ln N; ln N then constant beyond N_c; a power
    law) to points ``p`` with standard deviations ``sd`` (weights 1/sd^2) and return the
    :class:`LawFit` of each, sorted by AIC (best first). Points with non-finite p or sd are left out."""
    from scipy.optimize import curve_fit
    N, p, sd = (np.asarray(a, float) for a in (N, p, sd))
    ok = np.isfinite(p) & np.isfinite(sd) & (sd > 0)
    N, p, sd = N[ok], p[ok], sd[ok]
    n = len(N)
    if n < 4:
        raise ValueError(f"compare_laws needs at least 4 points with finite p and sd > 0, got {n}")
    fits = []
    x = np.log(N)
    starts = {"ln N": [(p.mean(), 0.0)], "power law": [(max(p.mean(), 1e-3), 0.1)],
              "ln N then constant": [(p[0], (p[-1] - p[0]) / max(np.ptp(x), 1e-9), float(Nc)) for Nc in N[1:-1]]}
    bounds = {"ln N then constant": ([-np.inf, -np.inf, N.min()], [np.inf, np.inf, N.max()])}
    for name, (f, formula) in _LAWS.items():
        best = None
        for p0 in starts[name]:
            try:
                params, _ = curve_fit(f, N, p, p0=p0, sigma=sd, absolute_sigma=True, maxfev=20000,
                                      **({"bounds": bounds[name]} if name in bounds else {}))
            except (RuntimeError, ValueError):
                continue
            chi2 = float(np.sum(((p - f(N, *params)) / sd) ** 2))
            if best is None or chi2 < best[0]:
                best = (chi2, params)
        if best is None:
            continue
        chi2, params = best
        k = len(params)
        fits.append(LawFit(name, tuple(float(v) for v in params), formula, chi2, k, n, chi2 + 2 * k,
                           chi2 + k * np.log(n)))
    return sorted(fits, key=lambda f: f.aic)
